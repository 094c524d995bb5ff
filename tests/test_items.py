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


def test_documented_example_item_parses_to_typed_values() -> None:
    snap = items.parse_item(GOOD)
    assert snap.snapshot_id == GOOD["snapshot_id"]
    assert snap.is_system_disk is True
    assert snap.create_time == datetime(2024, 4, 20, 8, 36, 16, tzinfo=UTC)
    assert snap.process is None
    assert snap.last_restore_time is None
    assert json.loads(snap.raw_json) == GOOD


def test_times_with_offsets_are_converted_to_utc() -> None:
    snap = items.parse_item({**GOOD, "last_restore_time": "2024-04-20T10:00:00+02:00"})
    assert snap.last_restore_time == datetime(2024, 4, 20, 8, 0, tzinfo=UTC)


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
    assert snap.description == hostile
    assert json.loads(snap.raw_json)["description"] == hostile


def test_unknown_status_is_kept_as_it_comes() -> None:
    assert items.parse_item({**GOOD, "status": "frozen_by_admin"}).status == "frozen_by_admin"


def test_process_only_change_changes_the_hash() -> None:
    a = items.parse_item({**GOOD, "status": "creating", "process": 10})
    b = items.parse_item({**GOOD, "status": "creating", "process": 20})
    assert a.content_hash != b.content_hash


def test_key_order_does_not_change_the_hash() -> None:
    reordered = dict(reversed(list(GOOD.items())))
    assert items.parse_item(GOOD).content_hash == items.parse_item(reordered).content_hash


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
    assert snap.process is None or 0 <= snap.process <= 100
