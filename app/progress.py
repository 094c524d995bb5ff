"""Live progress of syncing projects on a terminal, for `snapsync sync` and `snapsync demo`.

A Tracker collects the hooks of the runtime (a run's progress, every request, retry and wait,
a finished run) into one ProjectLine per project; a View draws them with rich as a table of
one line per project and an overall bar beneath. The table fits the width it is given: project
ids are shortened to the fewest characters that still tell them apart, the bar takes the
columns left over, and when that is not enough whole columns drop, least important first,
before any cell would be cut or wrapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import (
    Console,
    ConsoleOptions,
    Group,
    JustifyMethod,
    RenderableType,
    RenderResult,
)
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from app import runs

REFRESH_SECONDS = 0.25
SHORT_ID_MIN = 6
BAR_MIN = 8


@dataclass
class ProjectLine:
    """What the view shows of one project."""

    project_id: str
    syncing: bool = False
    pages: int = 0
    pages_expected: int | None = None
    snapshots: int = 0
    run_transitions: int = 0
    transitions: int = 0
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    waits: int = 0
    waiting: str | None = None
    wait_until: float | None = None
    last_seconds: float | None = None
    finished_at: float | None = None
    error: str | None = None


@dataclass
class Tracker:
    """The runtime's hooks, collected per project (ids not in `project_ids` are ignored)."""

    project_ids: Sequence[str]
    clock: Callable[[], float] = time.monotonic
    lines: dict[str, ProjectLine] = field(default_factory=dict)
    started: float | None = None

    def __post_init__(self) -> None:
        self.lines = {pid: ProjectLine(pid) for pid in self.project_ids}

    def on_progress(self, progress: runs.Progress) -> None:
        line = self.lines.get(progress.project_id)
        if line is None:
            return
        line.syncing = True
        line.pages = progress.pages
        line.pages_expected = progress.pages_expected
        line.snapshots = progress.snapshots_seen
        line.run_transitions = progress.transitions

    def on_request(self, project_id: str, status: int) -> None:
        line = self.lines.get(project_id)
        if line is not None:
            line.syncing = True
            line.waiting = line.wait_until = None

    def on_retry(self, project_id: str, attempt: int) -> None:
        line = self.lines.get(project_id)
        if line is not None:
            line.retries += 1

    def on_wait(self, project_id: str, reason: str, seconds: float | None) -> None:
        """A request waits for the rate limit, a 429's Retry-After or a retry's backoff."""
        line = self.lines.get(project_id)
        if line is None:
            return
        if reason != "backoff":
            line.waits += 1
        line.waiting = reason
        line.wait_until = None if seconds is None else self.clock() + seconds

    def on_finished(self, result: runs.RunResult) -> None:
        line = self.lines.get(result.project_id)
        if line is None or result.status == "skipped":
            return
        line.syncing = False
        line.waiting = line.wait_until = None
        line.pages = result.counts.pages
        line.pages_expected = result.counts.pages
        line.snapshots = result.counts.snapshots_seen
        line.run_transitions = 0
        line.transitions += result.counts.transitions
        line.last_seconds = result.seconds
        line.finished_at = self.clock()
        if result.status == "succeeded":
            line.succeeded += 1
            line.error = None
        else:
            line.failed += 1
            line.error = result.error

    def elapsed(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started


def short_ids(project_ids: Sequence[str], minimum: int = SHORT_ID_MIN) -> dict[str, str]:
    """Each id as its first (or, when that is shorter, last) characters: the fewest, at least
    `minimum`, that still tell every id of `project_ids` apart. A suffix starts with "…"."""
    unique = list(dict.fromkeys(project_ids))
    longest = max((len(p) for p in unique), default=0)

    def length(cut: Callable[[str, int], str]) -> int:
        for n in range(minimum, longest + 1):
            if len({cut(p, n) for p in unique}) == len(unique):
                return n
        return longest

    prefix = length(lambda p, n: p[:n])
    suffix = length(lambda p, n: p[-n:])
    if suffix < prefix:
        return {p: p if len(p) <= suffix else "…" + p[-suffix:] for p in unique}
    return {p: p[:prefix] for p in unique}


Cell = Callable[[ProjectLine, float], str | Text]


@dataclass(frozen=True)
class Column:
    """A column of the table; a column with `bar` set is the flexible progress bar."""

    header: str
    cell: Cell
    justify: JustifyMethod = "right"
    bar: bool = False
    reserve: int = 0  # room kept whatever the cells hold now, so that the layout stays put


def fit(needed: Sequence[int], width: int, *, bar: int | None = None) -> list[int | None]:
    """The width of each column (None: dropped) of a table `width` columns wide.

    `needed[i]` is what column i needs to show every cell whole; columns come most important
    first, and `bar` is the index of the flexible bar, which needs BAR_MIN and takes what is
    left. Columns drop from the least important until the rest fit; the first never drops.
    """
    kept = list(range(len(needed)))

    def total(columns: list[int]) -> int:
        cells = sum(BAR_MIN if i == bar else needed[i] for i in columns)
        return cells + 3 * (len(columns) - 1)  # padding and the divider between two columns

    while len(kept) > 1 and total(kept) > width:
        kept.pop()
    widths: list[int | None] = [needed[i] if i in kept else None for i in range(len(needed))]
    if bar is not None and bar in kept:
        widths[bar] = BAR_MIN + max(0, width - total(kept))
    return widths


def _state(line: ProjectLine, now: float) -> Text:
    if line.waiting is not None:
        label = {"rate limit": "rate limit", "Retry-After": "429 wait"}.get(line.waiting, "retry")
        if line.wait_until is not None:
            label += f" {math.ceil(max(0.0, line.wait_until - now))}s"
        return Text(label, style="yellow")
    if line.syncing:
        return Text("syncing", style="cyan")
    if line.error is not None:
        return Text("failed", style="red")
    if line.finished_at is None:
        return Text("starting", style="dim")
    return Text("done", style="green")


def _pages(line: ProjectLine, now: float) -> str:
    if not line.syncing:
        return str(line.pages) if line.finished_at is not None else "-"
    return f"{line.pages}/{line.pages_expected or '?'}"


def _last(line: ProjectLine, now: float) -> str:
    if line.finished_at is None or line.last_seconds is None:
        return "-"
    return f"{line.last_seconds:.1f}s {now - line.finished_at:.0f}s ago"


STATE = Column("state", _state, justify="left")
BAR = Column("progress", lambda line, now: "", bar=True)
PAGES = Column("pages", _pages)
SNAPSHOTS = Column("seen", lambda line, now: f"{line.snapshots:,}")
CHANGES = Column("changes", lambda line, now: f"{line.transitions + line.run_transitions:,}")
RETRIES = Column("retries", lambda line, now: str(line.retries))
WAITS = Column("waits", lambda line, now: str(line.waits))
RUNS = Column("ok/failed", lambda line, now: f"{line.succeeded}/{line.failed}")
LAST = Column("last sync", _last)

# After the project, most important first: the view drops columns from the end. In a sync,
# the state may be a wait ("429 wait 1s"): its room is kept so that columns do not come and go.
SYNC_COLUMNS = (
    dataclasses.replace(STATE, reserve=len("429 wait 1s")),
    PAGES,
    BAR,
    SNAPSHOTS,
    CHANGES,
    RETRIES,
    WAITS,
)
DEMO_COLUMNS = (STATE, PAGES, BAR, SNAPSHOTS, CHANGES, RUNS, LAST, RETRIES, WAITS)

Footer = Callable[[Tracker], tuple[float, float, str]]


@dataclass
class View:
    """Draws a Tracker: a table of `columns` and an overall bar from `overall`."""

    tracker: Tracker
    columns: Sequence[Column]
    overall: Footer
    title: str | None = None
    notes: Callable[[Tracker], str | None] = lambda tracker: None

    def table(self, width: int) -> Table:
        lines = list(self.tracker.lines.values())
        now = self.tracker.clock()
        names = short_ids([line.project_id for line in lines])
        cells = [
            [Text(names[line.project_id]), *(_text(c.cell(line, now)) for c in self.columns)]
            for line in lines
        ]
        headers = ["project", *(c.header for c in self.columns)]
        reserve = [0, *(c.reserve for c in self.columns)]
        needed = [
            max([len(header), reserve[i], *(row[i].cell_len for row in cells)])
            for i, header in enumerate(headers)
        ]
        bar = next((i + 1 for i, c in enumerate(self.columns) if c.bar), None)
        widths = fit(needed, width, bar=bar)
        table = Table(
            box=box.SIMPLE_HEAD,
            show_edge=False,
            pad_edge=False,
            title=self.title,
            title_justify="left",
        )
        justify: list[JustifyMethod] = ["left", *(c.justify for c in self.columns)]
        kept = [i for i, w in enumerate(widths) if w is not None]
        for i in kept:
            table.add_column(
                headers[i],
                justify=justify[i],
                width=widths[i],
                no_wrap=True,
                overflow="ellipsis",
            )
        for line, row in zip(lines, cells, strict=True):
            shown: list[RenderableType] = []
            for i in kept:
                if i == bar:
                    shown.append(_bar(line, widths[i] or BAR_MIN))
                else:
                    shown.append(row[i])
            table.add_row(*shown)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.render(options.max_width)

    def render(self, width: int) -> RenderableType:
        """The table, the overall bar, and the notes if any."""
        completed, total, text = self.overall(self.tracker)
        label = Text(text, no_wrap=True, overflow="ellipsis")
        room = width - label.cell_len - 1
        overall: RenderableType = label
        if room >= BAR_MIN:
            grid = Table.grid(padding=(0, 1))
            grid.add_column(width=room, no_wrap=True)
            grid.add_column(no_wrap=True)
            grid.add_row(ProgressBar(total=max(total, 1.0), completed=completed, width=room), label)
            overall = grid
        parts: list[RenderableType] = [self.table(width), overall]
        note = self.notes(self.tracker)
        if note:
            parts.append(Text(note, style="dim"))
        return Group(*parts)


def _text(value: str | Text) -> Text:
    return value if isinstance(value, Text) else Text(value)


def _bar(line: ProjectLine, width: int) -> RenderableType:
    if line.syncing:
        return ProgressBar(
            total=float(line.pages_expected or 1), completed=float(line.pages), width=width
        )
    if line.finished_at is not None and line.error is None:
        return ProgressBar(total=1.0, completed=1.0, width=width)
    return Text("")


def sync_overall(tracker: Tracker) -> tuple[float, float, str]:
    """Pages done of pages expected, and projects done, of one `snapsync sync`."""
    lines = tracker.lines.values()
    done = sum(1 for x in lines if x.finished_at is not None)
    pages = sum(x.pages for x in lines)
    expected = sum(x.pages_expected or 0 for x in lines)
    # A project that has not answered yet counts as one page still to come.
    expected += sum(1 for x in lines if x.pages_expected is None and x.finished_at is None)
    text = f"{pages}/{expected} pages, {done}/{len(lines)} projects, {tracker.elapsed():.0f}s"
    return float(pages), float(max(expected, 1)), text


def sync_view(tracker: Tracker) -> View:
    return View(tracker=tracker, columns=SYNC_COLUMNS, overall=sync_overall)


@contextlib.asynccontextmanager
async def shown(view: View, console: Console) -> AsyncIterator[None]:
    """Draw `view` live on `console` while the block runs, and once more when it ends."""
    with Live(view, console=console, auto_refresh=False, transient=False) as live:
        refresher = asyncio.create_task(_refresh(live))
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            live.refresh()


async def _refresh(live: Live) -> None:
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        live.refresh()


def follow_stderr() -> None:
    """Point the log handlers at whatever sys.stderr is when they write, so that rich.live
    (which swaps sys.stderr while it draws) prints log lines above the view, not through it."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(_CurrentStderr())


class _CurrentStderr:
    """A stream that forwards to the sys.stderr of the moment."""

    def write(self, data: str) -> int:
        return sys.stderr.write(data)

    def flush(self) -> None:
        sys.stderr.flush()
