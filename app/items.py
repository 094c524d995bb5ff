"""Turning one API item into a typed snapshot value, or a reason to reject it. Pure."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from xxhash import xxh3_64_intdigest

STRING_FIELDS = (
    "snapshot_name",
    "desktop_id",
    "desktop_name",
    "desktop_sid",
    "desktop_pool_id",
    "description",
    "create_type",
    "restore_fail_reason",
)
TIME_FIELDS = ("create_time", "last_restore_time")
TRANSIENT_STATUSES = frozenset({"creating", "restoring"})
MAX_ID_LENGTH = 1024


class ItemRejected(ValueError):
    """The item cannot be stored as a snapshot; the message says why."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One validated snapshot: its key, its status and its JSON exactly as it will be stored.

    The typed columns (times, flags, names) are taken from `json` by PostgreSQL when the row is
    written (store.UPSERT_PAGE); validation here guarantees that every one of them converts.
    """

    snapshot_id: str
    status: str
    json: bytes
    content_hash: int
    # A float somewhere in the item: it may stand for an integer the fast decoder rounded.
    holds_float: bool = False


def parse_time(value: object, field: str) -> datetime | None:
    """`yyyy-MM-ddTHH:mm:ssZ` (or any ISO 8601 time with an offset) to an aware UTC datetime."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ItemRejected(f"{field} is {type(value).__name__}, expected a time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        try:
            parsed = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise ItemRejected(
                f"{field} {value[:64]!r} is not a yyyy-MM-ddTHH:mm:ssZ time"
            ) from None
    if parsed.tzinfo is None:
        # The API documents UTC; a time without an offset is read as UTC, not local time.
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ItemRejected(f"{field} {value[:64]!r} is outside the representable range") from None


def _check_storable(value: object, path: str, depth: int = 0) -> None:
    """PostgreSQL cannot store NUL characters or lone surrogates in text or jsonb."""
    if depth > 200:
        raise ItemRejected(f"{path} is nested more than 200 levels deep")
    if isinstance(value, str):
        if "\x00" in value:
            raise ItemRejected(f"{path} contains a NUL character, which PostgreSQL cannot store")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ItemRejected(f"{path} contains an unpaired UTF-16 surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_storable(key, f"{path} key", depth + 1)
            _check_storable(item, f"{path}.{key}", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_storable(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ItemRejected(f"{path} is {value}, which JSON cannot carry")


def _optional_str(item: dict[str, Any], field: str) -> str | None:
    value = item.get(field)
    if value is None or isinstance(value, str):
        return value
    raise ItemRejected(f"{field} is {type(value).__name__}, expected a string")


def content_hash(dumped: bytes) -> int:
    """A 64-bit signed digest of the item's JSON, to skip unchanged rows cheaply (XXH3)."""
    digest = xxh3_64_intdigest(dumped)
    return digest - (1 << 64) if digest >= 1 << 63 else digest


def item_json(item: object) -> bytes:
    """The item as compact JSON, its keys in the order the API sent them.

    The same item always gives the same bytes (and hash). Key order is kept rather than sorted
    because sorting costs more than everything else done to an unchanged item; an API that
    reorders keys makes every row's hash differ once, which rewrites the hash and nothing else
    (PostgreSQL compares the stored jsonb, which ignores key order).

    Raises ItemRejected for what PostgreSQL's jsonb cannot hold: unpaired surrogates, nesting
    deeper than the encoder allows, NUL characters.
    """
    try:
        dumped = orjson.dumps(item)
    except orjson.JSONEncodeError as exc:
        if "64-bit" in str(exc):
            # orjson's integers stop at 64 bits; jsonb's numbers do not.
            try:
                return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            except (TypeError, ValueError, RecursionError):
                pass
        # Find the exact place for the message (slow path, bad items only).
        _check_storable(item, "item")
        raise ItemRejected(f"item cannot be stored as JSON: {exc}") from None
    if b"\\u0000" in dumped:
        _check_storable(item, "item")  # confirms (a literal backslash-u0000 is fine)
    return dumped


def parse_item(item: object) -> Snapshot:
    """Validate one element of `desktop_snapshots`; raise ItemRejected saying what is wrong."""
    if not isinstance(item, dict):
        raise ItemRejected(f"item is {type(item).__name__}, expected an object")
    snapshot_id = item.get("snapshot_id")
    if snapshot_id is None:
        raise ItemRejected("snapshot_id is missing")
    if not isinstance(snapshot_id, str):
        raise ItemRejected(f"snapshot_id is {type(snapshot_id).__name__}, expected a string")
    if not snapshot_id.strip():
        raise ItemRejected("snapshot_id is empty")
    if len(snapshot_id) > MAX_ID_LENGTH:
        raise ItemRejected(f"snapshot_id is {len(snapshot_id)} characters long")
    status = item.get("status")
    if status is None:
        raise ItemRejected("status is missing")
    if not isinstance(status, str):
        raise ItemRejected(f"status is {type(status).__name__}, expected a string")
    if not status:
        raise ItemRejected("status is empty")
    is_system_disk = item.get("is_system_disk")
    if is_system_disk is not None and not isinstance(is_system_disk, bool):
        raise ItemRejected(
            f"is_system_disk is {type(is_system_disk).__name__}, expected true or false"
        )
    process = item.get("process")
    if process is not None:
        if isinstance(process, bool) or not isinstance(process, int):
            raise ItemRejected(f"process is {type(process).__name__}, expected an integer or null")
        if not 0 <= process <= 100:
            raise ItemRejected(f"process is {process}, expected 0..100 or null")
    for field in STRING_FIELDS:
        _optional_str(item, field)
    for field in TIME_FIELDS:
        parse_time(item.get(field), field)
    floats = False
    for key, value in item.items():
        if type(value) is float:
            if not math.isfinite(value):
                raise ItemRejected(f"{key} is {value}, which JSON cannot carry")
            floats = True
    dumped = item_json(item)
    if not floats:
        # Nested values, once item_json has bounded the depth.
        floats = any(_holds_float(v) for v in item.values() if type(v) in (dict, list))
    return Snapshot(
        snapshot_id=snapshot_id,
        status=status,
        json=dumped,
        content_hash=content_hash(dumped),
        holds_float=floats,
    )


def _holds_float(value: object) -> bool:
    if type(value) is float:
        return True
    if type(value) is dict:
        return any(_holds_float(v) for v in value.values())
    if type(value) is list:
        return any(_holds_float(v) for v in value)
    return False


@dataclass(frozen=True, slots=True)
class Rejection:
    """An item that failed validation: where it was and why."""

    index: int
    snapshot_id: str | None
    reason: str


@dataclass
class PageTriage:
    """A page sorted out against what is stored: unchanged ids, changed snapshots, rejections."""

    ids: list[str]
    changed: list[Snapshot]
    rejections: list[Rejection]
    # Full ids of rejected items that carried one: listed, so never evidence of deletion.
    rejected_ids: list[str]
    # A changed item holds a float: decode the page exactly before storing it (client.Page).
    holds_float: bool = False


def triage(items: list[Any], known: Mapping[str, int | None]) -> PageTriage:
    """Validate the items of a page whose content differs from `known` (id -> stored hash).

    An item whose JSON hashes to the stored value is unchanged: it was valid when it was
    stored, so it is not validated again. A repeated id keeps its last occurrence.
    """
    ids: list[str] = []
    by_id: dict[str, Snapshot] = {}
    rejections: list[Rejection] = []
    rejected_ids: list[str] = []
    dumps = orjson.dumps
    lookup = known.get
    for index, item in enumerate(items):
        if type(item) is dict:
            sid = item.get("snapshot_id")
            if isinstance(sid, str) and (stored := lookup(sid)) is not None:
                # The hot path of a resync: content_hash(item_json(item)), inlined.
                digest: int | None
                try:
                    digest = xxh3_64_intdigest(dumps(item))
                except orjson.JSONEncodeError:
                    try:
                        digest = content_hash(item_json(item))  # integers beyond 64 bits
                    except ItemRejected:
                        digest = None
                else:
                    if digest >= 1 << 63:
                        digest -= 1 << 64
                if stored == digest:
                    ids.append(sid)
                    if by_id:
                        by_id.pop(sid, None)  # the last occurrence wins: this one, unchanged
                    continue
        try:
            snapshot = parse_item(item)
        except ItemRejected as exc:
            sid = item.get("snapshot_id") if isinstance(item, dict) else None
            rejections.append(
                Rejection(
                    index=index,
                    snapshot_id=sid[:128] if isinstance(sid, str) else None,
                    reason=str(exc),
                )
            )
            if isinstance(sid, str) and sid:
                # Listed, though malformed now: it must not count as missing from the listing.
                rejected_ids.append(sid)
            continue
        ids.append(snapshot.snapshot_id)
        by_id.pop(snapshot.snapshot_id, None)
        by_id[snapshot.snapshot_id] = snapshot
    changed = list(by_id.values())
    return PageTriage(
        ids=ids,
        changed=changed,
        rejections=rejections,
        rejected_ids=rejected_ids,
        holds_float=any(s.holds_float for s in changed),
    )


def parse_page(items: list[Any]) -> tuple[list[Snapshot], list[Rejection]]:
    """Validate a whole page: valid snapshots (last of a repeated id) and rejections."""
    result = triage(items, {})
    return result.changed, result.rejections
