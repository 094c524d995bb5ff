"""The list query of GET /v2/{project_id}/snapshots: parsing, filtering, sorting and paging.

Pure: the server hands in the query pairs and gets back a page, or a QueryError whose message
becomes the 400 answer.
"""

from __future__ import annotations

import random
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from app.simulator import model
from app.simulator import population as pop

MAX_LIMIT = 1000
DISK_TYPES = ("SYSTEM_DISK", "DATA_DISKS", "ALL")
SORT_FIELDS = ("create_time", "snapshot_name")
SORT_TYPES = ("ASC", "DESC")

# Keys that take one value, and the current API version's list filters, given as repeated keys
# (`desktop_ids=a&desktop_ids=b`, as the official SDK sends them). Within a list the values are
# alternatives; across parameters every filter must hold.
_SINGLE_KEYS = frozenset(
    {
        "desktop_id",
        "desktop_name",
        "snapshot_name",
        "disk_type",
        "create_type",
        "status",
        "sort_field",
        "sort_type",
        "offset",
        "limit",
    }
)
_LIST_KEYS = frozenset({"snapshot_names", "desktop_ids", "desktop_names"})
_DIGITS = re.compile(r"[0-9]+")


class QueryError(ValueError):
    """A query parameter is missing, repeated or out of range; the message says which."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"Invalid parameter {parameter}: {problem}")
        self.parameter = parameter
        self.problem = problem


@dataclass(frozen=True, slots=True)
class SnapshotQuery:
    """A parsed list query. Filters are exact matches; None means "not filtered"."""

    desktop_id: str | None = None
    desktop_name: str | None = None
    snapshot_name: str | None = None
    is_system_disk: bool | None = None
    create_type: str | None = None
    status: str | None = None
    snapshot_names: frozenset[str] | None = None
    desktop_ids: frozenset[str] | None = None
    desktop_names: frozenset[str] | None = None
    sort_field: model.SortField = "create_time"
    descending: bool = False
    offset: int = 0
    limit: int = MAX_LIMIT

    @property
    def filtered(self) -> bool:
        """Whether any filter is set."""
        return any(value is not None for value in self.filter_key())

    def filter_key(self) -> tuple[object, ...]:
        """The filters alone, hashable: equal keys select equal sets."""
        return (
            self.desktop_id,
            self.desktop_name,
            self.snapshot_name,
            self.is_system_disk,
            self.create_type,
            self.status,
            self.snapshot_names,
            self.desktop_ids,
            self.desktop_names,
        )

    def matches(self, snap: model.Snapshot) -> bool:
        """Whether a snapshot passes every filter."""
        return (
            (self.desktop_id is None or snap.desktop_id == self.desktop_id)
            and (self.desktop_name is None or snap.desktop_name == self.desktop_name)
            and (self.snapshot_name is None or snap.snapshot_name == self.snapshot_name)
            and (self.is_system_disk is None or snap.is_system_disk is self.is_system_disk)
            and (self.create_type is None or snap.create_type == self.create_type)
            and (self.status is None or snap.status == self.status)
            and (self.snapshot_names is None or snap.snapshot_name in self.snapshot_names)
            and (self.desktop_ids is None or snap.desktop_id in self.desktop_ids)
            and (self.desktop_names is None or snap.desktop_name in self.desktop_names)
        )


def parse_query(pairs: Iterable[tuple[str, str]], *, list_filters: bool = True) -> SnapshotQuery:
    """Parse the (already percent-decoded) query pairs; raises QueryError.

    Unknown keys are ignored, as the API gateway does. A single-valued key given twice is an
    error rather than a guess at which value was meant. Without `list_filters` the query is
    answered as an older API version that refuses the list filters (`desktop_ids`,
    `desktop_names`, `snapshot_names`) with 400.
    """
    single: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for key, value in pairs:
        if key in _SINGLE_KEYS:
            if key in single:
                raise QueryError(key, "given more than once")
            single[key] = value
        elif key in _LIST_KEYS:
            if not list_filters:
                raise QueryError(key, "is not supported by this API version")
            lists.setdefault(key, []).append(value)

    for key, value in (*single.items(), *((k, v) for k, vs in lists.items() for v in vs)):
        if value == "":
            raise QueryError(key, "must not be empty")

    sort_field = single.get("sort_field")
    sort_type = single.get("sort_type")
    if (sort_field is None) != (sort_type is None):
        given, missing = (
            ("sort_field", "sort_type") if sort_type is None else ("sort_type", "sort_field")
        )
        raise QueryError(missing, f"must be used together with {given}")
    disk_type = _choice(single, "disk_type", DISK_TYPES)
    return SnapshotQuery(
        desktop_id=single.get("desktop_id"),
        desktop_name=single.get("desktop_name"),
        snapshot_name=single.get("snapshot_name"),
        is_system_disk=None if disk_type in (None, "ALL") else disk_type == "SYSTEM_DISK",
        create_type=_choice(single, "create_type", model.CREATE_TYPES),
        status=_choice(single, "status", model.STATUSES),
        snapshot_names=frozenset(lists["snapshot_names"]) if "snapshot_names" in lists else None,
        desktop_ids=frozenset(lists["desktop_ids"]) if "desktop_ids" in lists else None,
        desktop_names=frozenset(lists["desktop_names"]) if "desktop_names" in lists else None,
        sort_field="snapshot_name"
        if _choice(single, "sort_field", SORT_FIELDS) == "snapshot_name"
        else "create_time",
        descending=_choice(single, "sort_type", SORT_TYPES) == "DESC",
        offset=_integer(single, "offset", default=0, low=0, high=None),
        limit=_integer(single, "limit", default=MAX_LIMIT, low=1, high=MAX_LIMIT),
    )


def _choice(single: dict[str, str], key: str, allowed: Sequence[str]) -> str | None:
    value = single.get(key)
    if value is not None and value not in allowed:
        raise QueryError(key, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _integer(single: dict[str, str], key: str, *, default: int, low: int, high: int | None) -> int:
    text = single.get(key)
    if text is None:
        return default
    bounds = f"between {low} and {high}" if high is not None else f">= {low}"
    # int() would also take "+5", " 5" and "5_0"; the API wants plain digits.
    if not _DIGITS.fullmatch(text) or len(text) > 18 or not _within(int(text), low, high):
        raise QueryError(key, f"must be an integer {bounds}, got {text!r}")
    return int(text)


def _within(value: int, low: int, high: int | None) -> bool:
    return value >= low and (high is None or value <= high)


@dataclass(frozen=True, slots=True)
class PageSlice:
    """One answer: how many snapshots match, and the ones on this page."""

    total_count: int
    items: list[model.Snapshot]

    def to_json(self) -> str:
        """The response body, built from the items' cached JSON."""
        body = ",".join(snap.to_json() for snap in self.items)
        return f'{{"total_count":{self.total_count},"desktop_snapshots":[{body}]}}'


class Selector:
    """Answers list queries against a Population, caching filtered results per project version.

    A client pages through one filtered query many times in a row; the filtering is done once
    and reused until the project changes.
    """

    def __init__(self, population: pop.Population, *, cache_size: int = 64) -> None:
        self._population = population
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[object, ...], tuple[int, list[model.Snapshot]]] = (
            OrderedDict()
        )

    def select(
        self, project_id: str, query: SnapshotQuery, *, shuffle_ties: random.Random | None = None
    ) -> PageSlice:
        """The page `query` asks for. With `shuffle_ties`, snapshots with equal sort keys come
        in a random order on each call, as the real API allows (it promises no order in a tie).
        """
        matching = self._matching(project_id, query)
        key: Callable[[model.Snapshot], str] = (
            _name_of if query.sort_field == "snapshot_name" else _time_of
        )
        items = page_window(
            matching,
            query.offset,
            query.limit,
            descending=query.descending,
            tie_key=key,
            rng=shuffle_ties,
        )
        return PageSlice(total_count=len(matching), items=items)

    def _matching(self, project_id: str, query: SnapshotQuery) -> Sequence[model.Snapshot]:
        ordered = self._population.ordered(project_id, query.sort_field)
        if not query.filtered:
            return ordered
        cache_key = (project_id, query.sort_field, query.filter_key())
        version = self._population.version(project_id)
        hit = self._cache.get(cache_key)
        if hit is not None and hit[0] == version:
            self._cache.move_to_end(cache_key)
            return hit[1]
        matching = [snap for snap in ordered if query.matches(snap)]
        self._cache[cache_key] = (version, matching)
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return matching


def _time_of(snap: model.Snapshot) -> str:
    return snap.create_time


def _name_of(snap: model.Snapshot) -> str:
    return snap.snapshot_name


def page_window(
    ordered: Sequence[model.Snapshot],
    offset: int,
    limit: int,
    *,
    descending: bool,
    tie_key: Callable[[model.Snapshot], str],
    rng: random.Random | None,
) -> list[model.Snapshot]:
    """Items [offset, offset+limit) of `ordered` (read backwards when descending).

    Descending is the exact reverse of ascending, ties included. With `rng`, each run of equal
    `tie_key` touching the page is shuffled first, so the page is cut from a fresh order.
    """
    size = len(ordered)
    start, stop = offset, min(size, offset + limit)
    if start >= stop:
        return []

    def at(index: int) -> model.Snapshot:
        return ordered[size - 1 - index] if descending else ordered[index]

    if rng is None:
        if descending:
            return list(reversed(ordered[size - stop : size - start]))
        return list(ordered[start:stop])
    low, high = start, stop
    first, last = tie_key(at(start)), tie_key(at(stop - 1))
    while low > 0 and tie_key(at(low - 1)) == first:
        low -= 1
    while high < size and tie_key(at(high)) == last:
        high += 1
    window = [at(index) for index in range(low, high)]
    run_start = 0
    while run_start < len(window):
        run_end = run_start + 1
        run_key = tie_key(window[run_start])
        while run_end < len(window) and tie_key(window[run_end]) == run_key:
            run_end += 1
        run = window[run_start:run_end]
        rng.shuffle(run)
        window[run_start:run_end] = run
        run_start = run_end
    return window[start - low : stop - low]
