"""Item validation: pure, no I/O."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import items

GOOD = {
    "snapshot_id": "eed156d9-02a5-46f5-8eb1-54f09ab9fbae",
    "snapshot_name": "sys0420_xzx03_1713602176593",
    "desktop_id": "7163a7ba-fc09-4238-ab73-0689ea7f54c3",
    "desktop_name": "xzx03",
    "desktop_sid": "22ad6780-3236-4838-b509-8068d254e9de",
    "is_system_disk": True,
    "status": "create_success",
    "description": "Description.",
    "create_time": "2024-04-20T08:36:16Z",
    "create_type": "MANUALLY",
}


def test_documented_example_item_is_valid_and_kept_as_sent() -> None:
    snap = items.parse_item(GOOD)
    assert snap.snapshot_id == GOOD["snapshot_id"]
    assert snap.status == "create_success"
    assert json.loads(snap.json) == GOOD
    assert list(json.loads(snap.json)) == list(GOOD)  # the API's key order
    assert snap.content_hash == items.content_hash(snap.json)


def test_times_with_offsets_are_converted_to_utc() -> None:
    assert items.parse_time("2024-04-20T10:00:00+02:00", "t") == datetime(
        2024, 4, 20, 8, 0, tzinfo=UTC
    )
    assert items.parse_time("2024-04-20T08:36:16Z", "t") == datetime(
        2024, 4, 20, 8, 36, 16, tzinfo=UTC
    )
    assert items.parse_time("2024-04-20T08:36:16", "t") == datetime(
        2024, 4, 20, 8, 36, 16, tzinfo=UTC
    )
    assert items.parse_time("", "t") is None


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ("not an object", "expected an object"),
        ([GOOD], "expected an object"),
        ({k: v for k, v in GOOD.items() if k != "snapshot_id"}, "snapshot_id is missing"),
        ({**GOOD, "snapshot_id": 42}, "snapshot_id is int"),
        ({**GOOD, "snapshot_id": "  "}, "snapshot_id is empty"),
        ({**GOOD, "status": None}, "status is missing"),
        ({**GOOD, "status": ["x"]}, "status is list"),
        ({**GOOD, "is_system_disk": "true"}, "is_system_disk is str"),
        ({**GOOD, "is_system_disk": 1}, "is_system_disk is int"),
        ({**GOOD, "process": True}, "process is bool"),
        ({**GOOD, "process": 50.5}, "process is float"),
        ({**GOOD, "process": 101}, "process is 101"),
        ({**GOOD, "process": -1}, "process is -1"),
        ({**GOOD, "create_time": "yesterday"}, "create_time 'yesterday'"),
        ({**GOOD, "create_time": 1713602176}, "create_time is int"),
        ({**GOOD, "desktop_name": {"a": 1}}, "desktop_name is dict"),
        ({**GOOD, "description": "a\x00b"}, "NUL character"),
        ({**GOOD, "description": "\ud800"}, "surrogate"),
        ({**GOOD, "extra": float("nan")}, "JSON cannot carry"),
    ],
)
def test_invalid_items_are_rejected_with_a_reason(item: object, reason: str) -> None:
    with pytest.raises(items.ItemRejected, match=None) as info:
        items.parse_item(item)
    assert reason in str(info.value)


def test_strings_are_kept_verbatim() -> None:
    hostile = "'; DROP TABLE snapshots; --\"\\ \u202e\u200b 😀 " + "x" * 100_000
    snap = items.parse_item({**GOOD, "description": hostile, "snapshot_name": "Robert'); --"})
    assert json.loads(snap.json)["description"] == hostile


def test_unknown_status_is_kept_as_it_comes() -> None:
    assert items.parse_item({**GOOD, "status": "frozen_by_admin"}).status == "frozen_by_admin"


def test_process_only_change_changes_the_hash() -> None:
    a = items.parse_item({**GOOD, "status": "creating", "process": 10})
    b = items.parse_item({**GOOD, "status": "creating", "process": 20})
    assert a.content_hash != b.content_hash


def test_the_hash_is_stable_and_fits_a_bigint() -> None:
    # Stored in a bigint column and compared across processes and releases: a fixed function
    # of the bytes, not Python's per-process hash(). This value is XXH3-64 of the bytes.
    assert items.content_hash(b"{}") == items.content_hash(b"{}")
    digests = [items.content_hash(bytes([i]) * i) for i in range(200)]
    assert all(-(1 << 63) <= d < (1 << 63) for d in digests)
    assert any(d < 0 for d in digests) and any(d > 0 for d in digests)
    assert items.content_hash(b"") == 0x2D06800538D394C2


def test_an_integer_beyond_64_bits_is_kept_exact() -> None:
    snap = items.parse_item({**GOOD, "extra": 2**80})
    assert json.loads(snap.json)["extra"] == 2**80
    known = {GOOD["snapshot_id"]: snap.content_hash}
    sorted_out = items.triage([{**GOOD, "extra": 2**80}], known)
    assert sorted_out.changed == [] and sorted_out.ids == [GOOD["snapshot_id"]]


def test_triage_skips_items_whose_hash_is_stored() -> None:
    changed = {**GOOD, "snapshot_id": "b", "status": "create_failed"}
    stored = items.parse_item({**changed, "status": "creating"})
    known = {GOOD["snapshot_id"]: items.parse_item(GOOD).content_hash, "b": stored.content_hash}
    sorted_out = items.triage([GOOD, changed, {**GOOD, "snapshot_id": "new"}], known)
    assert sorted_out.ids == [GOOD["snapshot_id"], "b", "new"]
    assert [s.snapshot_id for s in sorted_out.changed] == ["b", "new"]
    # A known row whose hash is None (missed by a listing) is written again even if unchanged.
    again = items.triage([GOOD], {GOOD["snapshot_id"]: None})
    assert [s.snapshot_id for s in again.changed] == [GOOD["snapshot_id"]]


def test_parse_page_keeps_valid_items_and_reports_the_rest() -> None:
    page = [GOOD, {"status": "creating"}, 7, {**GOOD, "snapshot_id": "b"}]
    snaps, rejections = items.parse_page(page)
    assert [s.snapshot_id for s in snaps] == [GOOD["snapshot_id"], "b"]
    assert [r.index for r in rejections] == [1, 2]


def test_parse_page_keeps_the_last_of_a_repeated_id() -> None:
    snaps, _ = items.parse_page([GOOD, {**GOOD, "status": "create_failed"}])
    assert len(snaps) == 1
    assert snaps[0].status == "create_failed"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from([*GOOD, "process", "x"]), json_values) | json_values)
def test_parse_item_never_raises_anything_but_item_rejected(item: object) -> None:
    try:
        snap = items.parse_item(item)
    except items.ItemRejected:
        return
    assert isinstance(snap.snapshot_id, str) and snap.snapshot_id.strip()
    assert isinstance(snap.status, str)
    assert isinstance(item, dict)
    assert item.get("process") is None or 0 <= item["process"] <= 100
    assert json.loads(snap.json) == json.loads(json.dumps(item))
