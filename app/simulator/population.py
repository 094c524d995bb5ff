"""The simulated snapshots of every project, and how they change from one tick to the next.

Pure and deterministic: the same seed, sizes and sequence of calls give the same snapshots,
byte for byte. Nothing here reads the wall clock; simulated time starts at `start` and moves by
`step_seconds` per tick.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import operator
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
_ORDER_FIELDS = frozenset({"snapshot_id", "snapshot_name", "create_time"})

SortField = Literal["create_time", "snapshot_name"]

DEFAULT_START = datetime(2024, 4, 20, 8, 0, 0, tzinfo=UTC)
# Real Workspace regions the projects are spread over, round-robin: with the default three
# projects, two regions and a sub-project of the first, as a small real tenant has.
DEFAULT_REGIONS: tuple[str, ...] = ("cn-north-4", "ap-southeast-1")
REGION_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
SNAPSHOTS_PER_DESKTOP = 5
HISTORY_DAYS = 28
MAX_BATCH = 100
_DAY = 86_400
# Hours (UTC) at which the scheduled snapshot policies of a project fire.
_SCHEDULE_HOURS = (1, 2, 3, 12, 18, 22)

_DESKTOP_PREFIXES = ("xzx", "dev", "ops", "fin", "hr", "lab", "AA", "sales", "qa")
# A few names outside ASCII, as real tenants have, so clients meet them in tests.
_UNICODE_PREFIXES = ("研发-", "财务-")
_DESCRIPTIONS_AUTO = ("", "Description.", "Created by the scheduled snapshot policy.")
_DESCRIPTIONS_MANUAL = ("", "Description.", "before patch", "manual backup", "升级前备份")
RESTORE_FAIL_REASONS = (
    "The desktop is not in the stopped state.",
    "Insufficient EVS disk quota.",
    "The snapshot is being used by another task.",
    "Internal error. Contact technical support.",
    "还原失败：磁盘状态异常。",  # noqa: RUF001 - real Chinese punctuation, on purpose
)

# Shares of the per-tick change budget (see Population.tick).
_CREATE_SHARE = 0.4
_RESTORE_SHARE = 0.2
_DELETE_SHARE = 0.4
_CREATE_FAIL_RATE = 0.07
_RESTORE_FAIL_RATE = 0.12


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


def _uuid4(rng: random.Random) -> str:
    digits = f"{rng.getrandbits(128):032x}"
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def _stochastic_round(rng: random.Random, value: float) -> int:
    # Rounds 0.3 up three times in ten, so small populations still get their share on average.
    return int(value + rng.random())


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


_TIME_KEY: Callable[[Snapshot], tuple[str, str]] = operator.attrgetter("create_time", "snapshot_id")
_NAME_KEY: Callable[[Snapshot], tuple[str, str]] = operator.attrgetter(
    "snapshot_name", "snapshot_id"
)


class _Project:
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
        bisect.insort(self.by_time, snap, key=_TIME_KEY)
        if self._by_name is not None:
            bisect.insort(self._by_name, snap, key=_NAME_KEY)
        self.version += 1

    def remove(self, snap: Snapshot) -> None:
        del self.by_id[snap.snapshot_id]
        _remove_sorted(self.by_time, snap, _TIME_KEY)
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


@dataclass(slots=True)
class TickReport:
    """What a number of ticks changed."""

    ticks: int = 0
    created: int = 0
    create_success: int = 0
    create_failed: int = 0
    restores_started: int = 0
    restore_success: int = 0
    restore_failed: int = 0
    deleted: int = 0
    progressed: int = 0
    touched_projects: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "ticks": self.ticks,
            "created": self.created,
            "create_success": self.create_success,
            "create_failed": self.create_failed,
            "restores_started": self.restores_started,
            "restore_success": self.restore_success,
            "restore_failed": self.restore_failed,
            "deleted": self.deleted,
            "progressed": self.progressed,
        }


class Population:
    """Every simulated project and its snapshots; `tick()` moves simulated time on.

    Per tick, about `change_rate` x (snapshots in total) snapshots are created, start a restore
    or are deleted, in the proportions 40/20/40, so the total stays roughly where it started.
    Creations and restorations then run for some ticks, their `process` rising, and end in
    success or failure. Snapshots added or changed by the scripted methods are "pinned": the
    evolution leaves them alone, so a test keeps control of what it set.
    """

    def __init__(
        self,
        *,
        projects: int = 3,
        snapshots: int = 1000,
        seed: int = 1,
        change_rate: float = 0.002,
        start: datetime = DEFAULT_START,
        step_seconds: float = 1.0,
        regions: Sequence[str] = DEFAULT_REGIONS,
    ) -> None:
        if not regions:
            raise ValueError("regions must name at least one region")
        if projects < 0 or snapshots < 0:
            raise ValueError("projects and snapshots must be >= 0")
        if not 0 <= change_rate <= 1:
            raise ValueError("change_rate must be between 0 and 1")
        if step_seconds <= 0:
            raise ValueError("step_seconds must be > 0")
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self.seed = seed
        self.snapshots_per_project = snapshots
        self.change_rate = change_rate
        self.step_seconds = step_seconds
        self.ticks = 0
        self._clock = start.timestamp()
        self._evolution_rng = random.Random(f"{seed}:evolution")
        self._scripted_rng = random.Random(f"{seed}:scripted")
        self._carry = {"create": 0.0, "restore": 0.0, "delete": 0.0}
        # Snapshots with a running task, in the order their tasks started (deterministic).
        self._active: dict[int, tuple[_Project, Snapshot]] = {}
        self._projects: dict[str, _Project] = {}
        self._regions: dict[str, str] = {}
        # Projects IAM lists but Workspace does not serve (not in use there): id -> region.
        self._iam_only: dict[str, str] = {}
        self._next_index = projects
        for index in range(projects):
            project = self._build_project(index)
            self._projects[project.project_id] = project
            self._regions[project.project_id] = regions[index % len(regions)]
        self._total = sum(len(p.by_id) for p in self._projects.values())

    # ---- reading -------------------------------------------------------------------------

    @property
    def project_ids(self) -> list[str]:
        """Project ids in creation order (the order `--forbidden-projects` counts in)."""
        return list(self._projects)

    @property
    def now(self) -> datetime:
        """The simulated time."""
        return datetime.fromtimestamp(self._clock, UTC)

    @property
    def total(self) -> int:
        """Snapshots over all projects."""
        return self._total

    def has_project(self, project_id: str) -> bool:
        """Whether the simulator knows this project."""
        return project_id in self._projects

    def iam_only(self) -> dict[str, str]:
        """Projects of the account without Workspace (id -> region), in creation order."""
        return dict(self._iam_only)

    def region(self, project_id: str) -> str:
        """The region a project lives in (its IAM project is named after it)."""
        self._project(project_id)
        return self._regions[project_id]

    def count(self, project_id: str) -> int:
        """Snapshots in one project."""
        return len(self._project(project_id).by_id)

    def version(self, project_id: str) -> int:
        """A number that changes whenever anything in the project changes."""
        return self._project(project_id).version

    def get_snapshot(self, project_id: str, snapshot_id: str) -> Snapshot:
        """One snapshot; raises UnknownProjectError or UnknownSnapshotError."""
        project = self._project(project_id)
        try:
            return project.by_id[snapshot_id]
        except KeyError:
            raise UnknownSnapshotError(
                f"project {project_id} has no snapshot {snapshot_id}"
            ) from None

    def snapshots(self, project_id: str) -> list[Snapshot]:
        """A project's snapshots in the default order (create_time, then snapshot_id)."""
        return list(self._project(project_id).by_time)

    def ordered(self, project_id: str, sort_field: SortField) -> Sequence[Snapshot]:
        """The live sorted list (ascending, ties by snapshot_id); read it, do not keep it."""
        project = self._project(project_id)
        return project.by_name if sort_field == "snapshot_name" else project.by_time

    def desktops(self, project_id: str) -> list[Desktop]:
        """The desktops a project's snapshots are taken from."""
        return list(self._project(project_id).desktops)

    # ---- projects ------------------------------------------------------------------------

    def add_project(self, region: str, *, workspace: bool = True) -> str:
        """A new project in `region` with the usual number of snapshots (or, without
        `workspace`, one IAM lists but Workspace does not know); returns its id."""
        index = self._next_index
        self._next_index += 1
        if not workspace:
            project_id = project_id_for(self.seed, index)
            self._iam_only[project_id] = region
            return project_id
        project = self._build_project(index)
        self._projects[project.project_id] = project
        self._regions[project.project_id] = region
        self._total += len(project.by_id)
        return project.project_id

    def remove_project(self, project_id: str) -> None:
        """Make a project vanish from the account (Workspace and IAM alike)."""
        if self._iam_only.pop(project_id, None) is not None:
            return
        project = self._project(project_id)
        for key, (owner, _) in list(self._active.items()):
            if owner is project:
                del self._active[key]
        self._total -= len(project.by_id)
        del self._projects[project_id]
        del self._regions[project_id]

    # ---- scripted control ----------------------------------------------------------------

    def add_snapshot(self, project_id: str, fields: Mapping[str, Any] | None = None) -> Snapshot:
        """Add a snapshot: the fields given, the rest generated (a fresh `create_success`)."""
        project = self._project(project_id)
        given = validate_fields(fields or {})
        rng = self._scripted_rng
        desktop = rng.choice(project.desktops) if project.desktops else _make_desktop(rng, 0)
        is_system = bool(given.get("is_system_disk", rng.random() < 0.6))
        snap = _new_snapshot(
            rng,
            desktop,
            is_system=is_system,
            epoch=self._clock,
            create_type="MANUALLY",
            name=None,
            status="create_success",
        )
        if given.get("snapshot_id") in project.by_id:
            raise FieldError(f"snapshot_id {given['snapshot_id']} already exists")
        for name, value in given.items():
            setattr(snap, name, value)
        snap.pinned = True
        project.insert(snap)
        self._total += 1
        return snap

    def set_fields(self, project_id: str, snapshot_id: str, fields: Mapping[str, Any]) -> Snapshot:
        """Overwrite fields of one snapshot (any API field; None unsets an optional one)."""
        project = self._project(project_id)
        snap = self.get_snapshot(project_id, snapshot_id)
        given = validate_fields(fields)
        new_id = given.get("snapshot_id", snapshot_id)
        if new_id != snapshot_id and new_id in project.by_id:
            raise FieldError(f"snapshot_id {new_id} already exists")
        self._cancel_task(snap)
        snap.pinned = True
        if _ORDER_FIELDS.isdisjoint(given):
            for name, value in given.items():
                setattr(snap, name, value)
            self._touch(project, snap)
            return snap
        project.remove(snap)
        for name, value in given.items():
            setattr(snap, name, value)
        snap.rendered = None
        project.insert(snap)
        return snap

    def delete_snapshot(self, project_id: str, snapshot_id: str) -> Snapshot:
        """Remove one snapshot; returns it."""
        project = self._project(project_id)
        snap = self.get_snapshot(project_id, snapshot_id)
        self._delete(project, snap)
        return snap

    # ---- evolution -----------------------------------------------------------------------

    def tick(self, n: int = 1) -> TickReport:
        """Advance simulated time by `n` steps; returns what changed."""
        if n < 0:
            raise ValueError("n must be >= 0")
        report = TickReport()
        for _ in range(n):
            self._step(report)
        return report

    def _step(self, report: TickReport) -> None:
        self.ticks += 1
        report.ticks += 1
        self._clock += self.step_seconds
        self._advance_tasks(report)
        budget = self.change_rate * self.snapshots_per_project * len(self._projects)
        rng = self._evolution_rng
        self._carry["create"] += budget * _CREATE_SHARE
        while self._carry["create"] >= 1:
            self._carry["create"] -= self._create_event(rng, report)
        self._carry["restore"] += budget * _RESTORE_SHARE
        while self._carry["restore"] >= 1:
            self._carry["restore"] -= 1
            self._restore_event(rng, report)
        self._carry["delete"] += budget * _DELETE_SHARE
        while self._carry["delete"] >= 1:
            self._carry["delete"] -= 1
            self._delete_event(rng, report)

    def _advance_tasks(self, report: TickReport) -> None:
        now = format_time(self._clock)
        rng = self._evolution_rng
        for key, (project, snap) in list(self._active.items()):
            snap.task_left -= 1
            if snap.task_left > 0:
                done = snap.task_total - snap.task_left
                snap.process = max(snap.process or 0, min(99, 100 * done // snap.task_total))
                report.progressed += 1
            else:
                del self._active[key]
                self._finish_task(rng, snap, now, report)
            self._touch(project, snap)
            report.touched_projects.add(project.project_id)

    @staticmethod
    def _finish_task(rng: random.Random, snap: Snapshot, now: str, report: TickReport) -> None:
        snap.process = None
        if snap.status == "creating":
            snap.status = "create_failed" if snap.task_fails else "create_success"
            if snap.task_fails:
                report.create_failed += 1
            else:
                report.create_success += 1
        else:
            if snap.task_fails:
                snap.status = "restore_failed"
                snap.restore_fail_reason = rng.choice(RESTORE_FAIL_REASONS)
                report.restore_failed += 1
            else:
                snap.status = "restore_success"
                snap.last_restore_time = now
                snap.restore_fail_reason = None
                report.restore_success += 1
        snap.task_total = snap.task_left = 0
        snap.task_fails = False

    def _create_event(self, rng: random.Random, report: TickReport) -> int:
        """Create one snapshot, a system+data pair, or a scheduled batch; returns how many."""
        project = self._pick_project(rng, grow=True)
        if project is None or not project.desktops:
            return 1
        cap = self._batch_cap()
        pairs: list[tuple[Desktop, bool]]
        if cap > 2 and rng.random() < 0.15:
            create_type = "AUTO"
            pairs = _batch_disks(rng, project.desktops, rng.randint(2, cap))
        else:
            create_type = "MANUALLY"
            desktop = rng.choice(project.desktops)
            pairs = [(desktop, True)]
            if desktop.has_data_disk and rng.random() < 0.3:
                pairs.append((desktop, False))
        names = _event_names(rng, pairs, self._clock, create_type)
        for desktop, is_system in pairs:
            snap = _new_snapshot(
                rng,
                desktop,
                is_system=is_system,
                epoch=self._clock,
                create_type=create_type,
                name=names[desktop.desktop_id],
                status="creating",
            )
            snap.process = 0
            # Most creations take a few ticks; some take tens, so clients see long in-flights.
            total = rng.randint(2, 5) if rng.random() < 0.7 else rng.randint(20, 60)
            self._start_task(project, snap, total, rng.random() < _CREATE_FAIL_RATE)
            project.insert(snap)
            self._total += 1
            report.created += 1
        report.touched_projects.add(project.project_id)
        return len(pairs)

    def _restore_event(self, rng: random.Random, report: TickReport) -> None:
        project = self._pick_project(rng, grow=None)
        if project is None:
            return
        snap = _pick_settled(rng, project.by_time, oldest=False)
        if snap is None or snap.status == "create_failed":
            return
        snap.status = "restoring"
        snap.process = 0
        self._start_task(project, snap, rng.randint(3, 30), rng.random() < _RESTORE_FAIL_RATE)
        self._touch(project, snap)
        report.restores_started += 1
        report.touched_projects.add(project.project_id)

    def _delete_event(self, rng: random.Random, report: TickReport) -> None:
        project = self._pick_project(rng, grow=False)
        if project is None:
            return
        # Retention policies mostly remove the oldest snapshots; people remove any.
        snap = _pick_settled(rng, project.by_time, oldest=rng.random() < 0.7)
        if snap is None:
            return
        self._delete(project, snap)
        report.deleted += 1
        report.touched_projects.add(project.project_id)

    def _pick_project(self, rng: random.Random, *, grow: bool | None) -> _Project | None:
        """A random project; for growth one not well above its target, for deletion one not
        well below it, so every project stays near `snapshots_per_project`."""
        projects = list(self._projects.values())
        if not projects:
            return None
        target = self.snapshots_per_project
        for _ in range(4):
            project = rng.choice(projects)
            size = len(project.by_id)
            if grow is None:
                return project
            if grow and size < target * 1.05 + 1:
                return project
            if not grow and size > target * 0.95:
                return project
        return None

    def _batch_cap(self) -> int:
        # A batch of 100 in a project of 50 would swamp it; scale batches to the population.
        return max(1, min(MAX_BATCH, self.snapshots_per_project // 10))

    def _start_task(self, project: _Project, snap: Snapshot, total: int, fails: bool) -> None:
        snap.task_total = snap.task_left = total
        snap.task_fails = fails
        self._active[id(snap)] = (project, snap)

    def _cancel_task(self, snap: Snapshot) -> None:
        self._active.pop(id(snap), None)
        snap.task_total = snap.task_left = 0
        snap.task_fails = False

    def _delete(self, project: _Project, snap: Snapshot) -> None:
        self._cancel_task(snap)
        project.remove(snap)
        self._total -= 1

    @staticmethod
    def _touch(project: _Project, snap: Snapshot) -> None:
        snap.rendered = None
        project.version += 1

    def _project(self, project_id: str) -> _Project:
        try:
            return self._projects[project_id]
        except KeyError:
            raise UnknownProjectError(f"no project {project_id}") from None

    # ---- generation ----------------------------------------------------------------------

    def _build_project(self, index: int) -> _Project:
        # One generator per project: a project's snapshots do not depend on how many exist.
        rng = random.Random(f"{self.seed}:project:{index}")
        size = self.snapshots_per_project
        desktops = _make_desktops(rng, max(1, math.ceil(size / SNAPSHOTS_PER_DESKTOP)))
        project = _Project(project_id_for(self.seed, index), index, desktops)
        start = self._clock
        creating = min(size, _stochastic_round(rng, size * 0.002))
        items: list[Snapshot] = []
        cap = self._batch_cap()
        auto = 0
        while len(items) < size - creating:
            remaining = size - creating - len(items)
            # About 70% of a tenant's snapshots come from scheduled policies.
            scheduled = cap > 1 and auto <= 0.7 * len(items)
            event = _history_event(rng, desktops, start, min(remaining, cap), scheduled=scheduled)
            auto += len(event) if scheduled else 0
            items.extend(event)
        for _ in range(creating):
            desktop = rng.choice(desktops)
            epoch = start - rng.randint(1, 900)
            snap = _new_snapshot(
                rng,
                desktop,
                is_system=rng.random() < 0.7,
                epoch=epoch,
                create_type="MANUALLY",
                name=None,
                status="creating",
            )
            snap.process = rng.randint(0, 90)
            total = rng.randint(5, 60)
            left = max(1, round(total * (100 - snap.process) / 100))
            items.append(snap)
            self._start_task(project, snap, total, rng.random() < _CREATE_FAIL_RATE)
            snap.task_left = left
        items.sort(key=_TIME_KEY)
        for _ in range(_stochastic_round(rng, size * 0.001)):
            chosen = _pick_settled(rng, items, oldest=False)
            if chosen is not None and chosen.status != "create_failed":
                chosen.status = "restoring"
                chosen.process = rng.randint(0, 90)
                total = rng.randint(3, 30)
                self._start_task(project, chosen, total, rng.random() < _RESTORE_FAIL_RATE)
                chosen.task_left = max(1, round(total * (100 - chosen.process) / 100))
        project.by_time = items
        project.by_id = {snap.snapshot_id: snap for snap in items}
        return project


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


def _make_desktop(rng: random.Random, number: int) -> Desktop:
    prefixes = _UNICODE_PREFIXES if rng.random() < 0.02 else _DESKTOP_PREFIXES
    return Desktop(
        desktop_id=_uuid4(rng),
        desktop_name=f"{rng.choice(prefixes)}{number:04d}",
        desktop_sid=_uuid4(rng),
        desktop_pool_id=None,
        has_data_disk=rng.random() < 0.6,
    )


def _make_desktops(rng: random.Random, count: int) -> list[Desktop]:
    pools = [_uuid4(rng) for _ in range(max(1, count // 40))]
    desktops = []
    for number in range(count):
        desktop = _make_desktop(rng, number)
        # Pooled desktops report their pool; personal desktops have none (field omitted).
        if rng.random() < 0.5:
            desktop = Desktop(
                desktop_id=desktop.desktop_id,
                desktop_name=desktop.desktop_name,
                desktop_sid=desktop.desktop_sid,
                desktop_pool_id=rng.choice(pools),
                has_data_disk=desktop.has_data_disk,
            )
        desktops.append(desktop)
    return desktops


def _batch_disks(
    rng: random.Random, desktops: Sequence[Desktop], size: int
) -> list[tuple[Desktop, bool]]:
    """Up to `size` (desktop, is_system_disk) pairs of a scheduled batch, distinct desktops."""
    chosen = rng.sample(desktops, min(len(desktops), size))
    pairs: list[tuple[Desktop, bool]] = []
    for desktop in chosen:
        pairs.append((desktop, True))
        if desktop.has_data_disk:
            pairs.append((desktop, False))
        if len(pairs) >= size:
            break
    return pairs[:size]


def _event_names(
    rng: random.Random, pairs: Iterable[tuple[Desktop, bool]], epoch: float, create_type: str
) -> dict[str, str]:
    """One record name per desktop of an event: its disks' snapshots share it, as in Workspace."""
    names: dict[str, str] = {}
    disks: dict[str, set[bool]] = {}
    for desktop, is_system in pairs:
        disks.setdefault(desktop.desktop_id, set()).add(is_system)
    for desktop, _ in pairs:
        if desktop.desktop_id in names:
            continue
        millis = int(epoch) * 1000 + rng.randrange(1000)
        if create_type == "AUTO":
            names[desktop.desktop_id] = f"AUTOCREATED_{desktop.desktop_name}_{millis}"
        else:
            kinds = disks[desktop.desktop_id]
            prefix = "snap" if len(kinds) == 2 else ("sys" if True in kinds else "data")
            day = time.strftime("%m%d", time.gmtime(epoch))
            names[desktop.desktop_id] = f"{prefix}{day}_{desktop.desktop_name}_{millis}"
    return names


def _new_snapshot(
    rng: random.Random,
    desktop: Desktop,
    *,
    is_system: bool,
    epoch: float,
    create_type: str,
    name: str | None,
    status: str,
) -> Snapshot:
    if name is None:
        name = _event_names(rng, [(desktop, is_system)], epoch, create_type)[desktop.desktop_id]
    descriptions = _DESCRIPTIONS_AUTO if create_type == "AUTO" else _DESCRIPTIONS_MANUAL
    return Snapshot(
        snapshot_id=_uuid4(rng),
        snapshot_name=name,
        desktop_id=desktop.desktop_id,
        desktop_name=desktop.desktop_name,
        desktop_sid=desktop.desktop_sid,
        desktop_pool_id=desktop.desktop_pool_id,
        is_system_disk=is_system,
        status=status,
        process=None,
        description=rng.choice(descriptions),
        create_time=format_time(epoch),
        create_type=create_type,
    )


def _history_event(
    rng: random.Random, desktops: Sequence[Desktop], start: float, cap: int, *, scheduled: bool
) -> list[Snapshot]:
    """Settled snapshots of one past event: a scheduled batch (one second) or a manual one."""
    if scheduled:
        create_type = "AUTO"
        day = math.floor(start / _DAY) - rng.randint(1, HISTORY_DAYS)
        epoch = float(day * _DAY + rng.choice(_SCHEDULE_HOURS) * 3600 + rng.randrange(3600))
        pairs = _batch_disks(rng, desktops, rng.randint(1, cap))
    else:
        create_type = "MANUALLY"
        epoch = float(int(start - rng.uniform(600, HISTORY_DAYS * _DAY)))
        desktop = rng.choice(desktops)
        pairs = [(desktop, rng.random() < 0.7)]
        if cap > 1 and desktop.has_data_disk and rng.random() < 0.25:
            pairs = [(desktop, True), (desktop, False)]
    names = _event_names(rng, pairs, epoch, create_type)
    items = []
    for desktop, is_system in pairs:
        snap = _new_snapshot(
            rng,
            desktop,
            is_system=is_system,
            epoch=epoch,
            create_type=create_type,
            name=names[desktop.desktop_id],
            status="create_success",
        )
        _settle(rng, snap, epoch, start)
        items.append(snap)
    return items


def _settle(rng: random.Random, snap: Snapshot, created: float, start: float) -> None:
    """Give a past snapshot the status its history would have left."""
    roll = rng.random()
    if roll < 0.86:
        return
    if roll < 0.90:
        snap.status = "create_failed"
        return
    restored = format_time(rng.uniform(created + 60, max(created + 61, start - 1)))
    if roll < 0.97:
        snap.status = "restore_success"
        snap.last_restore_time = restored
    else:
        snap.status = "restore_failed"
        snap.restore_fail_reason = rng.choice(RESTORE_FAIL_REASONS)
        if rng.random() < 0.3:
            snap.last_restore_time = restored


def _pick_settled(
    rng: random.Random, items: Sequence[Snapshot], *, oldest: bool
) -> Snapshot | None:
    """A random snapshot with no task, not pinned; among the oldest 5% when `oldest`."""
    if not items:
        return None
    span = max(1, len(items) // 20) if oldest else len(items)
    for _ in range(6):
        snap = items[rng.randrange(span)]
        if not snap.pinned and not snap.in_task and snap.status not in IN_FLIGHT:
            return snap
    return None
