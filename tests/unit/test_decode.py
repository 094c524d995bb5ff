"""Decoding answers: fast, but exact, and unusable bodies refused with a reason. Pure."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest

from app import client, items


def test_long_integers_stay_exact() -> None:
    body = b'{"total_count": 1, "desktop_snapshots": [{"x": 123456789012345678901234567890}]}'
    assert client.decode_json(body)["desktop_snapshots"][0]["x"] == 123456789012345678901234567890


def test_nan_and_infinity_literals_are_refused() -> None:
    for body in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}'):
        with pytest.raises(ValueError):
            client.decode_json(body)


def test_an_out_of_range_number_rejects_only_its_item() -> None:
    page = client.decode_json(
        b'[{"snapshot_id": "a", "status": "creating", "extra": 1e400},'
        b' {"snapshot_id": "b", "status": "creating"}]'
    )
    snapshots, rejections = items.parse_page(page)
    assert [s.snapshot_id for s in snapshots] == ["b"]
    assert rejections[0].snapshot_id == "a"


def test_an_escaped_lone_surrogate_rejects_only_its_item() -> None:
    page = client.decode_json(
        b'[{"snapshot_id": "a", "status": "x", "description": "\\ud800"},'
        b' {"snapshot_id": "b", "status": "x", "description": "\\ud83d\\ude00"}]'
    )
    snapshots, rejections = items.parse_page(page)
    assert [s.snapshot_id for s in snapshots] == ["b"]
    assert json.loads(snapshots[0].json)["description"] == "\U0001f600"
    assert "surrogate" in rejections[0].reason


def test_canonical_form_is_what_the_api_sent() -> None:
    item = {"snapshot_id": "a", "status": "creating", "nested": {"z": [1, 2.5, None], "a": "é"}}
    snap = items.parse_item(item)
    assert json.loads(snap.json) == item


@pytest.mark.parametrize("body", [b"", b"<html>", b'{"a": 1', b"\xff\xfe"])
def test_garbage_raises_value_error(body: bytes) -> None:
    with pytest.raises(ValueError):
        client.decode_json(body)


def test_the_fast_decoder_says_when_its_answer_may_be_rounded() -> None:
    body = b'{"total_count": 1, "desktop_snapshots": [{"x": 123456789012345678901234567890}]}'
    payload, exact = client.decode_json_fast(body)
    assert not exact and isinstance(payload["desktop_snapshots"][0]["x"], float)
    page = dataclasses.replace(
        client.decode_page(
            payload,
            project_id="p",
            offset=0,
            limit=1000,
            request_id=None,
            fetched_at=datetime.now(UTC),
        ),
        body=body,
    )
    assert page.exact().items == [{"x": 123456789012345678901234567890}]
    assert page.exact().body is None
    # What orjson refuses but JSON allows goes to the exact decoder at once.
    payload, exact = client.decode_json_fast(b'{"a": "\\ud800"}')
    assert exact and payload == {"a": "\ud800"}
