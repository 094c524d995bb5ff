"""The demo's live progress: app.progress's view on a terminal, plain lines of totals otherwise."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console

from app import logs, progress, runs
from app import settings as settings_module

PLAIN_LINE_SECONDS = 5.0
PLAIN_WIDTH = 120


@dataclass
class Dashboard:
    """The daemon's finished runs and its `tracker` (fed by the daemon's hooks), shown as a
    view or as lines."""

    project_ids: Sequence[str]
    duration: float
    interval: float
    metrics_url: str | None = None
    finished_results: list[runs.RunResult] = field(default_factory=list)
    tracker: progress.Tracker = field(init=False)

    def __post_init__(self) -> None:
        self.tracker = progress.Tracker(self.project_ids)

    def on_finished(self, result: runs.RunResult) -> None:
        if result.project_id in self.tracker.lines and result.status != "skipped":
            self.finished_results.append(result)
        self.tracker.on_finished(result)

    def view(self) -> progress.View:
        """The live view: one row per project, the demo's time as the overall bar."""
        return progress.View(
            tracker=self.tracker,
            columns=progress.DEMO_COLUMNS,
            title="snapsync demo",
            overall=lambda tracker: (
                min(tracker.elapsed(), self.duration),
                self.duration,
                f"{tracker.elapsed():.0f}s of {self.duration:g}s",
            ),
            notes=lambda tracker: (
                f"a sync of each project every {self.interval:g}s; Ctrl-C ends the demo early"
                + (f"; metrics at {self.metrics_url}" if self.metrics_url else "")
            ),
        )

    def plain_line(self) -> str:
        """One line of totals, for output that is not a terminal (CI logs)."""
        lines = self.tracker.lines.values()
        names = progress.short_ids(list(self.tracker.lines))
        syncing = [
            f"{names[x.project_id]} page {x.pages}/{x.pages_expected or '?'}"
            for x in lines
            if x.syncing
        ]
        ok = sum(x.succeeded for x in lines)
        failed = sum(x.failed for x in lines)
        transitions = sum(x.transitions + x.run_transitions for x in lines)
        return (
            f"[{self.tracker.elapsed():4.0f}s/{self.duration:g}s] runs {ok} ok, {failed} failed; "
            f"transitions {transitions:,}; "
            + (f"syncing: {', '.join(syncing)}" if syncing else "no sync running")
        )


async def show_progress(dashboard: Dashboard, console: Console) -> None:
    """Until cancelled: the live view on a terminal, else a line of totals every few seconds."""
    if console.is_terminal:
        async with progress.shown(dashboard.view(), console):
            await asyncio.Event().wait()
    seen = 0
    try:
        while True:
            await asyncio.sleep(PLAIN_LINE_SECONDS)
            seen = _print_finished(dashboard, console, seen)
            console.print(dashboard.plain_line(), markup=False, highlight=False)
    finally:
        _print_finished(dashboard, console, seen)


def _print_finished(dashboard: Dashboard, console: Console, seen: int) -> int:
    for result in dashboard.finished_results[seen:]:
        console.print(result.summary(), markup=False, highlight=False, soft_wrap=True)
    return len(dashboard.finished_results)


def make_console() -> Console:
    """The demo's console: PLAIN_WIDTH columns when not a terminal (unless COLUMNS says)."""
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PLAIN_WIDTH
    return console


def setup_logging(settings: settings_module.Settings, secrets: list[str]) -> None:
    """Warnings and errors only, unless SNAPSYNC_LOG_LEVEL was set: the live view is the output."""
    level = settings.log_level if "log_level" in settings.model_fields_set else "WARNING"
    logs.setup(fmt=settings.log_format, level=level, secrets=secrets)
    progress.follow_stderr()
