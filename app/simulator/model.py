"""The simulated snapshots' data: the API's fields and statuses, `Snapshot` and `Desktop`, a
project's snapshots kept in listing order, and the errors of scripted changes.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import operator
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app import errors

STATUSES: tuple[str, ...] = (
    "creating",
    "restoring",
    "create_success",
    "create_failed",
    "restore_success",
    "restore_failed",
)
IN_FLIGHT: frozenset[str] = frozenset({"creating", "restoring"})
CREATE_TYPES: tuple[str, ...] = ("AUTO", "MANUALLY")

# The fields of a DesktopSnapshotDetailInfo, in the order the API renders them.
API_FIELDS: tuple[str, ...] = (
    "snapshot_id",
    "snapshot_name",
    "desktop_id",
    "desktop_name",
    "desktop_sid",
    "desktop_pool_id",
    "is_system_disk",
    "status",
    "process",
    "description",
    "create_time",
    "create_type",
    "last_restore_time",
    "restore_fail_reason",
)
_REQUIRED_STR_FIELDS = frozenset(
    {
        "snapshot_id",
        "snapshot_name",
        "desktop_id",
        "desktop_name",
        "desktop_sid",
        "status",
        "create_time",
        "create_type",
    }
)
_OPTIONAL_STR_FIELDS = frozenset(
    {"desktop_pool_id", "description", "last_restore_time", "restore_fail_reason"}
)
# Fields that decide the position of a snapshot in a sorted listing.
ORDER_FIELDS = frozenset({"snapshot_id", "snapshot_name", "create_time"})

SortField = Literal["create_time", "snapshot_name"]


class PopulationError(errors.SnapsyncError):
    """A scripted change to the population was refused."""


class UnknownProjectError(PopulationError):
    """The simulator has no project with this id."""


class UnknownSnapshotError(PopulationError):
    """The project has no snapshot with this id."""


class FieldError(PopulationError):
    """A field name, type or value given to add or set is unusable."""


def project_id_for(seed: int, index: int) -> str:
    """The id of the `index`-th project of a seed: 32 lowercase hex digits, as Huawei's."""
    return hashlib.md5(f"{seed}:{index}".encode(), usedforsecurity=False).hexdigest()


def format_time(epoch: float) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ` in UTC, the API's time format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@dataclass(slots=True, eq=False)
class Snapshot:
    """One desktop snapshot: the API fields, plus the simulator's private task state.

    Owned by its Population: change it through `Population.set_fields`, never directly, or the
    listing order and the rendered-JSON cache go stale.
    """

    snapshot_id: str
    snapshot_name: str
    desktop_id: str
    desktop_name: str
    desktop_sid: str
    desktop_pool_id: str | None
    is_system_disk: bool
    status: str
    process: int | None
    description: str | None
    create_time: str
    create_type: str
    last_restore_time: str | None = None
    restore_fail_reason: str | None = None
    # Simulation state, never rendered.
    task_total: int = 0
    task_left: int = 0
    task_fails: bool = False
    pinned: bool = False
    rendered: str | None = None

    def to_api(self) -> dict[str, Any]:
        """The item as the API renders it: unset optional strings omitted, process null."""
        item: dict[str, Any] = {
            "snapshot_id": self.snapshot_id,
            "snapshot_name": self.snapshot_name,
            "desktop_id": self.desktop_id,
            "desktop_name": self.desktop_name,
            "desktop_sid": self.desktop_sid,
        }
        if self.desktop_pool_id is not None:
            item["desktop_pool_id"] = self.desktop_pool_id
        item["is_system_disk"] = self.is_system_disk
        item["status"] = self.status
        item["process"] = self.process
        if self.description is not None:
            item["description"] = self.description
        item["create_time"] = self.create_time
        item["create_type"] = self.create_type
        if self.last_restore_time is not None:
            item["last_restore_time"] = self.last_restore_time
        if self.restore_fail_reason is not None:
            item["restore_fail_reason"] = self.restore_fail_reason
        return item

    def to_json(self) -> str:
        """The item as compact JSON, cached until the snapshot changes."""
        if self.rendered is None:
            self.rendered = json.dumps(self.to_api(), ensure_ascii=False, separators=(",", ":"))
        return self.rendered

    @property
    def in_task(self) -> bool:
        """Whether the evolution is running a creation or restoration on it."""
        return self.task_left > 0


@dataclass(frozen=True, slots=True)
class Desktop:
    """A simulated desktop; its snapshots copy these fields."""

    desktop_id: str
    desktop_name: str
    desktop_sid: str
    desktop_pool_id: str | None
    has_data_disk: bool


TIME_KEY: Callable[[Snapshot], tuple[str, str]] = operator.attrgetter("create_time", "snapshot_id")
_NAME_KEY: Callable[[Snapshot], tuple[str, str]] = operator.attrgetter(
    "snapshot_name", "snapshot_id"
)


class ProjectSnapshots:
    """A project's snapshots, indexed by id and kept in listing order."""

    __slots__ = ("_by_name", "by_id", "by_time", "desktops", "index", "project_id", "version")

    def __init__(self, project_id: str, index: int, desktops: list[Desktop]) -> None:
        self.project_id = project_id
        self.index = index
        self.desktops = desktops
        self.by_id: dict[str, Snapshot] = {}
        self.by_time: list[Snapshot] = []
        # Built on the first listing sorted by name, then maintained; most clients never ask.
        self._by_name: list[Snapshot] | None = None
        # Bumped on every change of membership, order or content; caches key on it.
        self.version = 0

    @property
    def by_name(self) -> list[Snapshot]:
        if self._by_name is None:
            self._by_name = sorted(self.by_time, key=_NAME_KEY)
        return self._by_name

    def insert(self, snap: Snapshot) -> None:
        self.by_id[snap.snapshot_id] = snap
        bisect.insort(self.by_time, snap, key=TIME_KEY)
        if self._by_name is not None:
            bisect.insort(self._by_name, snap, key=_NAME_KEY)
        self.version += 1

    def remove(self, snap: Snapshot) -> None:
        del self.by_id[snap.snapshot_id]
        _remove_sorted(self.by_time, snap, TIME_KEY)
        if self._by_name is not None:
            _remove_sorted(self._by_name, snap, _NAME_KEY)
        self.version += 1


def _remove_sorted(
    items: list[Snapshot], snap: Snapshot, key: Callable[[Snapshot], tuple[str, str]]
) -> None:
    index = bisect.bisect_left(items, key(snap), key=key)
    # Keys are unique (the snapshot id breaks ties), so the bisect lands on it.
    if index < len(items) and items[index] is snap:
        del items[index]
        return
    items.remove(snap)  # pragma: no cover - only if a caller mutated a key behind our back


def validate_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Check names and JSON types of API fields for add/set; raises FieldError.

    Values are not checked against the documented enums on purpose: tests use this to make the
    simulator answer with statuses or times a client must cope with.
    """
    clean: dict[str, Any] = {}
    for name, value in fields.items():
        if name not in API_FIELDS:
            raise FieldError(f"unknown field {name!r}; fields are {', '.join(API_FIELDS)}")
        if name in _REQUIRED_STR_FIELDS:
            ok = isinstance(value, str)
        elif name in _OPTIONAL_STR_FIELDS:
            ok = value is None or isinstance(value, str)
        elif name == "is_system_disk":
            ok = isinstance(value, bool)
        else:  # process
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise FieldError(f"field {name!r} has the wrong type: {value!r}")
        clean[name] = value
    return clean
