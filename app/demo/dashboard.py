"""The demo's live progress: a table on a terminal, plain lines of totals otherwise."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from app import logs, sync
from app import settings as settings_module

REFRESH_SECONDS = 0.25
PLAIN_LINE_SECONDS = 5.0
PLAIN_WIDTH = 120


@dataclass
class ProjectLine:
    """What the live table shows of one project."""

    project_id: str
    syncing: bool = False
    pages: int = 0
    pages_expected: int | None = None
    snapshots: int = 0
    run_transitions: int = 0
    transitions: int = 0
    succeeded: int = 0
    failed: int = 0
    last_seconds: float | None = None
    finished_at: float | None = None
    error: str | None = None


@dataclass
class Dashboard:
    """Collects the daemon's progress and finished callbacks; renders them as a table or lines."""

    project_ids: Sequence[str]
    duration: float
    interval: float
    lines: dict[str, ProjectLine] = field(default_factory=dict)
    started: float | None = None
    metrics_url: str | None = None
    finished_results: list[sync.RunResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines = {pid: ProjectLine(pid) for pid in self.project_ids}

    def on_progress(self, progress: sync.Progress) -> None:
        line = self.lines.get(progress.project_id)
        if line is None:
            return
        line.syncing = True
        line.pages = progress.pages
        line.pages_expected = progress.pages_expected
        line.snapshots = progress.snapshots_seen
        line.run_transitions = progress.transitions

    def on_finished(self, result: sync.RunResult) -> None:
        line = self.lines.get(result.project_id)
        if line is None or result.status == "skipped":
            return
        self.finished_results.append(result)
        line.syncing = False
        line.pages = result.counts.pages
        line.pages_expected = result.counts.pages
        line.snapshots = result.counts.snapshots_seen
        line.run_transitions = 0
        line.transitions += result.counts.transitions
        line.last_seconds = result.seconds
        line.finished_at = time.monotonic()
        if result.status == "succeeded":
            line.succeeded += 1
            line.error = None
        else:
            line.failed += 1
            line.error = result.error

    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    def render(self) -> RenderableType:
        """The live view: one row per project, then a line of totals."""
        table = Table(title="snapsync demo", title_justify="left", expand=False)
        table.add_column("project")
        table.add_column("state")
        table.add_column("progress", width=24)
        table.add_column("pages", justify="right")
        table.add_column("snapshots", justify="right")
        table.add_column("transitions", justify="right")
        table.add_column("runs ok/failed", justify="right")
        table.add_column("last sync", justify="right")
        now = time.monotonic()
        for line in self.lines.values():
            if line.syncing:
                state = Text("syncing", style="cyan")
                bar: RenderableType = ProgressBar(
                    total=float(line.pages_expected or 1), completed=float(line.pages), width=24
                )
            elif line.error is not None:
                state, bar = Text("failed", style="red"), Text(line.error[:24], style="red")
            elif line.finished_at is None:
                state, bar = Text("waiting", style="dim"), Text("")
            else:
                state, bar = Text("idle", style="green"), Text("")
            pages = (
                f"{line.pages}/{line.pages_expected or '?'}" if line.syncing else str(line.pages)
            )
            last = (
                "-"
                if line.finished_at is None or line.last_seconds is None
                else f"{line.last_seconds:.1f}s, {now - line.finished_at:.0f}s ago"
            )
            table.add_row(
                short_id(line.project_id),
                state,
                bar,
                pages,
                f"{line.snapshots:,}",
                f"{line.transitions + line.run_transitions:,}",
                f"{line.succeeded}/{line.failed}",
                last,
            )
        footer = Text(
            f"{self.elapsed():.0f}s of {self.duration:g}s, a sync of each project every "
            f"{self.interval:g}s; Ctrl-C ends the demo early"
            + (f"; metrics at {self.metrics_url}" if self.metrics_url else ""),
            style="dim",
        )
        return Group(table, footer)

    def plain_line(self) -> str:
        """One line of totals, for output that is not a terminal (CI logs)."""
        syncing = [
            f"{short_id(x.project_id)} page {x.pages}/{x.pages_expected or '?'}"
            for x in self.lines.values()
            if x.syncing
        ]
        ok = sum(x.succeeded for x in self.lines.values())
        failed = sum(x.failed for x in self.lines.values())
        transitions = sum(x.transitions + x.run_transitions for x in self.lines.values())
        return (
            f"[{self.elapsed():4.0f}s/{self.duration:g}s] runs {ok} ok, {failed} failed; "
            f"transitions {transitions:,}; "
            + (f"syncing: {', '.join(syncing)}" if syncing else "no sync running")
        )


def short_id(project_id: str) -> str:
    """Project ids are 32 hex digits; 8 tell the demo's projects apart."""
    return project_id[:8] + "…" if len(project_id) > 9 else project_id


async def show_progress(dashboard: Dashboard, console: Console) -> None:
    """Until cancelled: a live table on a terminal, else a line of totals every few seconds."""
    if console.is_terminal:
        with Live(dashboard.render(), console=console, auto_refresh=False, transient=False) as live:
            try:
                while True:
                    await asyncio.sleep(REFRESH_SECONDS)
                    live.update(dashboard.render(), refresh=True)
            finally:
                live.update(dashboard.render(), refresh=True)
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
    """Warnings and errors only, unless SNAPSYNC_LOG_LEVEL was set: the live table is the output.

    The handler writes to whatever sys.stderr is when it writes, so that rich.live (which
    swaps sys.stderr while it draws) prints log lines above the table instead of through it.
    """
    level = settings.log_level if "log_level" in settings.model_fields_set else "WARNING"
    logs.setup(fmt=settings.log_format, level=level, secrets=secrets)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(_CurrentStderr())


class _CurrentStderr:
    """A stream that forwards to the sys.stderr of the moment."""

    def write(self, data: str) -> int:
        return sys.stderr.write(data)

    def flush(self) -> None:
        sys.stderr.flush()
