"""How a population changes from one tick to the next: the random creations, restorations and
deletions of each tick, and the tasks that then run for some ticks and end in success or failure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from app.simulator.generation import (
    CREATE_FAIL_RATE,
    RESTORE_FAIL_RATE,
    RESTORE_FAIL_REASONS,
    batch_cap,
    batch_disks,
    event_names,
    new_snapshot,
    pick_settled,
)
from app.simulator.model import Desktop, ProjectSnapshots, Snapshot, format_time

# Shares of the per-tick change budget (see Population.tick).
_CREATE_SHARE = 0.4
_RESTORE_SHARE = 0.2
_DELETE_SHARE = 0.4


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


class Evolution:
    """The evolution over time of a Population (its base class), and the bookkeeping of the
    tasks it runs."""

    snapshots_per_project: int
    change_rate: float
    step_seconds: float
    ticks: int
    _clock: float
    _evolution_rng: random.Random
    _carry: dict[str, float]
    _active: dict[int, tuple[ProjectSnapshots, Snapshot]]
    _projects: dict[str, ProjectSnapshots]
    _total: int

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
        cap = batch_cap(self.snapshots_per_project)
        pairs: list[tuple[Desktop, bool]]
        if cap > 2 and rng.random() < 0.15:
            create_type = "AUTO"
            pairs = batch_disks(rng, project.desktops, rng.randint(2, cap))
        else:
            create_type = "MANUALLY"
            desktop = rng.choice(project.desktops)
            pairs = [(desktop, True)]
            if desktop.has_data_disk and rng.random() < 0.3:
                pairs.append((desktop, False))
        names = event_names(rng, pairs, self._clock, create_type)
        for desktop, is_system in pairs:
            snap = new_snapshot(
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
            self._start_task(project, snap, total, rng.random() < CREATE_FAIL_RATE)
            project.insert(snap)
            self._total += 1
            report.created += 1
        report.touched_projects.add(project.project_id)
        return len(pairs)

    def _restore_event(self, rng: random.Random, report: TickReport) -> None:
        project = self._pick_project(rng, grow=None)
        if project is None:
            return
        snap = pick_settled(rng, project.by_time, oldest=False)
        if snap is None or snap.status == "create_failed":
            return
        snap.status = "restoring"
        snap.process = 0
        self._start_task(project, snap, rng.randint(3, 30), rng.random() < RESTORE_FAIL_RATE)
        self._touch(project, snap)
        report.restores_started += 1
        report.touched_projects.add(project.project_id)

    def _delete_event(self, rng: random.Random, report: TickReport) -> None:
        project = self._pick_project(rng, grow=False)
        if project is None:
            return
        # Retention policies mostly remove the oldest snapshots; people remove any.
        snap = pick_settled(rng, project.by_time, oldest=rng.random() < 0.7)
        if snap is None:
            return
        self._delete(project, snap)
        report.deleted += 1
        report.touched_projects.add(project.project_id)

    def _pick_project(self, rng: random.Random, *, grow: bool | None) -> ProjectSnapshots | None:
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

    def _start_task(
        self, project: ProjectSnapshots, snap: Snapshot, total: int, fails: bool
    ) -> None:
        snap.task_total = snap.task_left = total
        snap.task_fails = fails
        self._active[id(snap)] = (project, snap)

    def _cancel_task(self, snap: Snapshot) -> None:
        self._active.pop(id(snap), None)
        snap.task_total = snap.task_left = 0
        snap.task_fails = False

    def _delete(self, project: ProjectSnapshots, snap: Snapshot) -> None:
        self._cancel_task(snap)
        project.remove(snap)
        self._total -= 1

    @staticmethod
    def _touch(project: ProjectSnapshots, snap: Snapshot) -> None:
        snap.rendered = None
        project.version += 1
