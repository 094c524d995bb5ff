"""The simulated snapshots of every project, and how they change from one tick to the next.

`Population` holds them, reads them and takes scripted changes; its base `evolution.Evolution`
moves them on per tick, `generation` makes them up and `model` is their data.

Pure and deterministic: the same seed, sizes and sequence of calls give the same snapshots,
byte for byte. Nothing here reads the wall clock; simulated time starts at `start` and moves by
`step_seconds` per tick.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from app.simulator.evolution import Evolution
from app.simulator.generation import (
    build_project,
    make_desktop,
    new_snapshot,
)
from app.simulator.model import (
    ORDER_FIELDS,
    Desktop,
    FieldError,
    ProjectSnapshots,
    Snapshot,
    SortField,
    UnknownProjectError,
    UnknownSnapshotError,
    project_id_for,
    validate_fields,
)

DEFAULT_START = datetime(2024, 4, 20, 8, 0, 0, tzinfo=UTC)
# Real Workspace regions the projects are spread over, round-robin: with the default three
# projects, two regions and a sub-project of the first, as a small real tenant has.
DEFAULT_REGIONS: tuple[str, ...] = ("cn-north-4", "ap-southeast-1")
REGION_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


class Population(Evolution):
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
        self._active: dict[int, tuple[ProjectSnapshots, Snapshot]] = {}
        self._projects: dict[str, ProjectSnapshots] = {}
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
        desktop = rng.choice(project.desktops) if project.desktops else make_desktop(rng, 0)
        is_system = bool(given.get("is_system_disk", rng.random() < 0.6))
        snap = new_snapshot(
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
        if ORDER_FIELDS.isdisjoint(given):
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

    def _project(self, project_id: str) -> ProjectSnapshots:
        try:
            return self._projects[project_id]
        except KeyError:
            raise UnknownProjectError(f"no project {project_id}") from None

    def _build_project(self, index: int) -> ProjectSnapshots:
        return build_project(
            self.seed, index, self.snapshots_per_project, self._clock, self._start_task
        )
