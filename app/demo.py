"""`snapsync demo`: embedded PostgreSQL, the simulator and the daemon for a minute, then a report.

The tour of a fresh clone: nothing to configure and nothing left running afterwards. The data
stays in SNAPSYNC_DATA_DIR (or in the configured database), and the simulator resumes where the
previous demo left it, so a second demo continues the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from pydantic import SecretStr
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app import daemon as daemon_module
from app import db, embedded, errors, health, logs, status, sync
from app import settings as settings_module
from app.simulator import auth as simulator_auth
from app.simulator import population as population_module
from app.simulator import server as simulator

log = logging.getLogger("app.demo")

DEFAULT_DURATION = 60.0
DEFAULT_PROJECTS = 4
DEFAULT_SNAPSHOTS = 2000
# Used unless the user set SNAPSYNC_SYNC_INTERVAL / SNAPSYNC_PAGE_SIZE: several syncs a minute,
# and enough pages per sync for the progress bars to move.
DEMO_SYNC_INTERVAL = 10.0
DEMO_PAGE_SIZE = 250
# 0.2 % of all snapshots created, restored or deleted per second: a few dozen status changes
# between two syncs of a project, most creations done within seconds, some within a minute.
DEMO_CHANGE_RATE = 0.002
SHUTDOWN_GRACE = 10.0
REFRESH_SECONDS = 0.25
PLAIN_LINE_SECONDS = 5.0
SLOWEST_CREATIONS = 5
STATE_FILENAME = "demo-simulator.json"
MAX_RESUME_TICKS = 20_000
PLAIN_WIDTH = 120

TRANSITIONS_SINCE = text(
    """
SELECT from_status, to_status, count(*) AS n
FROM snapshot_status_history
WHERE observed_at >= :since AND project_id = ANY(CAST(:project_ids AS text[]))
GROUP BY from_status, to_status
ORDER BY n DESC, from_status, to_status
"""
)

RUNS_SINCE = text(
    """
SELECT status, count(*) AS n
FROM sync_runs
WHERE kind = 'full' AND started_at >= :since AND project_id = ANY(CAST(:project_ids AS text[]))
GROUP BY status
ORDER BY status
"""
)

# A snapshot first seen creating at `seen` was still creating at `previous_observed_at` and seen
# done at `observed_at`: it was creating for at least `previous_observed_at - seen`, and the
# stretch in which it was seen creating, before it was seen done, is at most `observed_at - seen`.
SLOWEST_CREATIONS_QUERY = text(
    """
SELECT done.project_id, done.snapshot_id, s.snapshot_name, s.desktop_name, done.to_status,
       EXTRACT(EPOCH FROM done.previous_observed_at - seen.observed_at) AS at_least,
       EXTRACT(EPOCH FROM done.observed_at - seen.observed_at) AS at_most
FROM snapshot_status_history AS done
JOIN LATERAL (
    SELECT h.observed_at
    FROM snapshot_status_history AS h
    WHERE h.project_id = done.project_id AND h.snapshot_id = done.snapshot_id
      AND h.to_status = 'creating' AND h.observed_at < done.observed_at
    ORDER BY h.observed_at DESC
    LIMIT 1
) AS seen ON true
LEFT JOIN snapshots AS s
       ON s.project_id = done.project_id AND s.snapshot_id = done.snapshot_id
WHERE done.from_status = 'creating'
  AND done.to_status IN ('create_success', 'create_failed')
  AND done.project_id = ANY(CAST(:project_ids AS text[]))
ORDER BY at_least DESC, at_most DESC
LIMIT :limit
"""
)

DELETED_COUNT = text(
    """
SELECT count(*)
FROM snapshots
WHERE deleted_at IS NOT NULL AND project_id = ANY(CAST(:project_ids AS text[]))
"""
)


# -- the simulator, resumed where the previous demo left it -----------------------------------


@dataclass(frozen=True)
class SimulatorState:
    """What a demo remembers of its simulator, so the next one resumes instead of rewinding."""

    seed: int
    projects: int
    snapshots: int
    change_rate: float
    start_time: datetime
    ticks: int

    def matches(self, other: SimulatorState) -> bool:
        """Same population (ticks and start aside)."""
        return (self.seed, self.projects, self.snapshots, self.change_rate) == (
            other.seed,
            other.projects,
            other.snapshots,
            other.change_rate,
        )

    @classmethod
    def load(cls, path: Path) -> SimulatorState | None:
        """The saved state, or None when there is none or it is unreadable."""
        try:
            raw = json.loads(path.read_text())
            start_time = datetime.fromisoformat(raw["start_time"])
            if start_time.tzinfo is None:
                raise ValueError("start_time has no time zone")
            return cls(
                seed=int(raw["seed"]),
                projects=int(raw["projects"]),
                snapshots=int(raw["snapshots"]),
                change_rate=float(raw["change_rate"]),
                start_time=start_time,
                ticks=max(0, int(raw["ticks"])),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        pending = path.with_name(path.name + ".tmp")
        pending.write_text(
            json.dumps(
                {
                    "seed": self.seed,
                    "projects": self.projects,
                    "snapshots": self.snapshots,
                    "change_rate": self.change_rate,
                    "start_time": self.start_time.isoformat(),
                    "ticks": self.ticks,
                },
                indent=2,
            )
        )
        pending.replace(path)


def resume_state(wanted: SimulatorState, saved: SimulatorState | None) -> SimulatorState:
    """The saved state when it describes the same population, else `wanted` (a fresh start).

    Replaying takes about half a second per thousand ticks; past MAX_RESUME_TICKS (hours of
    demos) a fresh start is quicker, at the cost of one demo that sees the population rewind.
    """
    if saved is not None and saved.matches(wanted) and saved.ticks <= MAX_RESUME_TICKS:
        return saved
    return wanted


# -- live progress ----------------------------------------------------------------------------


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


# -- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Creation:
    """One finished creation, with how long it was observed in `creating`."""

    project_id: str
    snapshot_name: str | None
    desktop_name: str | None
    outcome: str
    at_least: float
    at_most: float


@dataclass(frozen=True)
class Report:
    """What the demo left in the database, for the closing report."""

    by_status: dict[str, int]
    deleted: int
    runs: dict[str, int]
    first_sightings: int
    transitions: list[tuple[str, str, int]]
    slowest: list[Creation]
    stale: list[health.StaleProject]
    projects_known: int


async def collect_report(
    engine: AsyncEngine,
    *,
    project_ids: Sequence[str],
    since: datetime,
    stale_after: float,
) -> Report:
    """Read the report from the tables; `since` is when this demo's daemon started."""
    statuses = await status.collect(engine)
    ids = list(project_ids)
    async with engine.connect() as conn:
        transition_rows = (
            await conn.execute(TRANSITIONS_SINCE, {"since": since, "project_ids": ids})
        ).all()
        run_rows = (await conn.execute(RUNS_SINCE, {"since": since, "project_ids": ids})).all()
        slow_rows = (
            await conn.execute(
                SLOWEST_CREATIONS_QUERY, {"project_ids": ids, "limit": SLOWEST_CREATIONS}
            )
        ).mappings()
        slowest = [
            Creation(
                project_id=row["project_id"],
                snapshot_name=row["snapshot_name"],
                desktop_name=row["desktop_name"],
                outcome=row["to_status"],
                at_least=float(row["at_least"] or 0),
                at_most=float(row["at_most"] or 0),
            )
            for row in slow_rows
        ]
        deleted = await conn.scalar(DELETED_COUNT, {"project_ids": ids})
    by_status: dict[str, int] = {}
    for st in statuses:
        if st.project_id in project_ids:
            for name, n in st.snapshots_by_status.items():
                by_status[name] = by_status.get(name, 0) + n
    now = datetime.now(UTC)
    stale = [
        health.StaleProject(st.project_id, st.last_success_at, st.success_age_seconds(now))
        for st in statuses
        if st.last_success_at is None or (st.success_age_seconds(now) or 0) > stale_after
    ]
    return Report(
        by_status=dict(sorted(by_status.items(), key=lambda kv: -kv[1])),
        deleted=int(deleted or 0),
        runs={row[0]: int(row[1]) for row in run_rows},
        first_sightings=sum(int(n) for f, _, n in transition_rows if f is None),
        transitions=[(f, t, int(n)) for f, t, n in transition_rows if f is not None],
        slowest=slowest,
        stale=stale,
        projects_known=len(statuses),
    )


def render_report(report: Report, *, seconds: float, stopped_by: str) -> list[RenderableType]:
    """The closing report as rich renderables (tables render as text off a terminal too)."""
    out: list[RenderableType] = []
    runs = ", ".join(f"{n} {name}" for name, n in report.runs.items()) or "none"
    out.append(Text(f"\nThe daemon ran {seconds:.0f}s ({stopped_by}); sync runs: {runs}.", "bold"))

    by_status = Table()
    by_status.add_column("status")
    by_status.add_column("snapshots", justify="right")
    for name, n in report.by_status.items():
        by_status.add_row(name, f"{n:,}")
    by_status.add_row(Text("deleted (kept, with deleted_at)", "dim"), f"{report.deleted:,}")
    out += [_heading("Snapshots by status (the demo's projects)"), by_status]

    out.append(_heading("Status transitions seen by this demo"))
    if report.transitions or report.first_sightings:
        transitions = Table()
        transitions.add_column("from")
        transitions.add_column("to")
        transitions.add_column("count", justify="right")
        for from_status, to_status, n in report.transitions:
            transitions.add_row(from_status, to_status, f"{n:,}")
        if report.first_sightings:
            transitions.add_row(Text("(first sighting)", "dim"), "", f"{report.first_sightings:,}")
        out.append(transitions)
    else:
        out.append(Text("none yet"))

    out.append(_heading("Slowest creations (how long each was seen creating: at least-at most)"))
    if report.slowest:
        slowest = Table()
        slowest.add_column("project")
        slowest.add_column("snapshot")
        slowest.add_column("desktop")
        slowest.add_column("outcome")
        slowest.add_column("creating for", justify="right")
        for c in report.slowest:
            slowest.add_row(
                short_id(c.project_id),
                c.snapshot_name or "",
                c.desktop_name or "",
                c.outcome,
                f"{c.at_least:.0f}-{c.at_most:.0f}s",
            )
        out.append(slowest)
    else:
        out.append(Text("none yet: a creation must be seen creating, then done (run longer)"))

    if report.stale:
        stale = Table()
        stale.add_column("project")
        stale.add_column("last success")
        for s in report.stale:
            stale.add_row(
                s.project_id,
                "never" if s.age_seconds is None else f"{status.format_age(s.age_seconds)} ago",
            )
        out += [_heading("Stale projects (no successful sync lately)"), stale]
    else:
        out.append(Text(f"\nStale projects: none of the {report.projects_known} known."))
    return out


def _heading(title: str) -> Text:
    return Text("\n" + title, style="bold")


# -- how to explore the data afterwards ----------------------------------------------------------


def self_command() -> str:
    """How the user invoked snapsync, to print commands they can paste."""
    argv0 = sys.argv[0]
    if Path(argv0).name == "snapsync":
        on_path = shutil.which("snapsync")
        if on_path and Path(on_path).resolve() == Path(argv0).resolve():
            return "snapsync"
        return shlex.quote(argv0)
    return f"{shlex.quote(sys.executable)} -m app"


def libpq_url(url: str) -> tuple[str, str | None]:
    """A psql-usable URL without its password, and the password apart (for PGPASSWORD)."""
    parsed = make_url(settings_module.to_asyncpg_url(url))
    password = parsed.password
    plain = URL.create(
        drivername="postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return plain.render_as_string(hide_password=False), (
        None if password is None else str(password)
    )


def explore_lines(
    settings: settings_module.Settings, server: embedded.EmbeddedPostgres | None
) -> str:
    """The commands that open psql on the data the demo left."""
    me = self_command()
    example = '"SELECT status, count(*) FROM snapshots GROUP BY 1"'
    if server is None:
        configured = settings.async_database_url()
        assert configured is not None
        url, password = libpq_url(configured)
        hint = " (it asks for the password)" if password else ""
        return (
            f"Explore the data{hint}:\n  {shlex.join(['psql', url])}\n"
            f"  {me} demo --psql -- -c {example}"
        )
    return (
        "Explore the data with psql (the embedded PostgreSQL stops with the demo; this starts\n"
        "it for the psql session and stops it afterwards):\n"
        f"  {me} demo --psql\n"
        f"  {me} demo --psql -- -c {example}\n"
        "While a snapsync process keeps the embedded server running, psql itself works too:\n"
        f"  {server.psql_command}"
    )


def open_psql(settings: settings_module.Settings, psql_args: Sequence[str]) -> int:
    """Run psql on the demo's database (starting the embedded server for it); its exit code."""
    configured = settings.async_database_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if configured is not None:
        url, password = libpq_url(configured)
        if password:
            env["PGPASSWORD"] = password
        psql = shutil.which("psql") or str(embedded._bin_dir() / "psql")
        return _run_foreground([psql, url, *psql_args], env)
    if not (settings.data_dir / embedded.PGDATA_DIRNAME / "PG_VERSION").exists():
        raise errors.ConfigError(
            "SNAPSYNC_DATA_DIR",
            f"no embedded PostgreSQL in {settings.data_dir.resolve()}: run `snapsync demo` first",
        )
    with embedded.EmbeddedPostgres(settings.data_dir) as server:
        return _run_foreground([*shlex.split(server.psql_command), *psql_args], env)


def _run_foreground(command: list[str], env: dict[str, str]) -> int:
    # psql handles Ctrl-C itself (it cancels the query); this process must not die of it
    # while psql runs, or the embedded server would be stopped under it. A Python handler
    # (unlike SIG_IGN) is reset to the default in the child.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return subprocess.run(command, env=env, check=False).returncode  # noqa: S603
    finally:
        signal.signal(signal.SIGINT, previous)


# -- the demo ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    """What `snapsync demo` was asked for."""

    duration: float = DEFAULT_DURATION
    projects: int = DEFAULT_PROJECTS
    snapshots: int = DEFAULT_SNAPSHOTS
    seed: int = 1


def demo_settings(
    base: settings_module.Settings, *, database_url: str, endpoint: str, project_ids: Sequence[str]
) -> settings_module.Settings:
    """The user's settings pointed at the demo's simulator and database.

    The user's projects and credentials are dropped: the demo talks to its own simulator only.
    """
    update: dict[str, Any] = {
        "database_url": SecretStr(database_url),
        "projects": ",".join(project_ids),
        "workspace_endpoint": endpoint,
        "iam_endpoint": endpoint,
        "auth": "token",
        "auth_token": SecretStr(simulator_auth.DEFAULT_AUTH_TOKEN),
        "access_key": None,
        "secret_key": None,
        "security_token": None,
        "iam_user": None,
        "iam_password": None,
        "iam_domain": None,
        "http_host": "127.0.0.1",
        "http_port": 0,
    }
    if "sync_interval" not in base.model_fields_set:
        update["sync_interval"] = DEMO_SYNC_INTERVAL
    if "page_size" not in base.model_fields_set:
        update["page_size"] = DEMO_PAGE_SIZE
    return base.model_copy(update=update)


async def run_demo(base: settings_module.Settings, options: DemoOptions, console: Console) -> None:
    """Start everything, run the daemon for `options.duration`, print the report."""
    state_path = base.data_dir / STATE_FILENAME
    wanted = SimulatorState(
        seed=options.seed,
        projects=options.projects,
        snapshots=options.snapshots,
        change_rate=DEMO_CHANGE_RATE,
        start_time=simulator.SimulatorOptions().start(),
        ticks=0,
    )
    resumed = resume_state(wanted, SimulatorState.load(state_path))
    sim_options = simulator.SimulatorOptions(
        host="127.0.0.1",
        port=0,
        projects=options.projects,
        snapshots=options.snapshots,
        seed=options.seed,
        tick_seconds=1.0,
        change_rate=DEMO_CHANGE_RATE,
        start_time=resumed.start_time,
    )

    async with contextlib.AsyncExitStack() as stack:
        url, server = await _enter_database(stack, base)
        where = (
            f"embedded PostgreSQL in {server.data_dir}"
            if server is not None
            else f"the configured database {libpq_url(url)[0]} (SNAPSYNC_DATABASE_URL)"
        )
        console.print(f"snapsync demo: {where}: migrating …", highlight=False, soft_wrap=True)
        engine = db.make_engine(url, pool_size=2)
        stack.push_async_callback(engine.dispose)
        try:
            await db.migrate(engine)
        except (SQLAlchemyError, OSError) as exc:
            raise errors.DatabaseError(f"migration failed: {db.describe_db_error(exc)}") from None

        population = await asyncio.to_thread(_build_population, sim_options, resumed.ticks)
        sim = await stack.enter_async_context(simulator.running(sim_options, population=population))
        stack.callback(
            lambda: _save_state(state_path, resumed, population.ticks),
        )
        settings = demo_settings(
            base, database_url=url, endpoint=sim.url, project_ids=sim.project_ids
        )
        dashboard = Dashboard(
            project_ids=sim.project_ids,
            duration=options.duration,
            interval=settings.sync_interval,
        )
        daemon = daemon_module.Daemon(
            settings,
            projects=settings.project_list(),
            shutdown_grace=SHUTDOWN_GRACE,
            on_progress=dashboard.on_progress,
            on_finished=dashboard.on_finished,
            serve_http=True,
            handle_signals=True,
        )
        console.print(
            f"snapsync demo: simulator at {sim.url}: {options.projects} projects x "
            f"{options.snapshots:,} snapshots (seed {options.seed}, resumed at tick "
            f"{resumed.ticks}); the daemon syncs each project every {settings.sync_interval:g}s "
            f"for {options.duration:g}s.",
            highlight=False,
        )
        since = datetime.now(UTC)
        began = time.monotonic()
        run = asyncio.create_task(daemon.run(), name="snapsync-demo-daemon")
        stopped_by = await _run_for(daemon, run, dashboard, console, options.duration)
        seconds = time.monotonic() - began

        try:
            report = await collect_report(
                engine,
                project_ids=sim.project_ids,
                since=since,
                stale_after=health.STALE_INTERVALS * settings.sync_interval,
            )
        except (SQLAlchemyError, OSError) as exc:
            raise errors.DatabaseError(
                f"cannot read the report: {db.describe_db_error(exc)}"
            ) from None
        for renderable in render_report(report, seconds=seconds, stopped_by=stopped_by):
            console.print(renderable)
        console.print()
        console.print(explore_lines(base, server), markup=False, highlight=False, soft_wrap=True)


async def _enter_database(
    stack: contextlib.AsyncExitStack, settings: settings_module.Settings
) -> tuple[str, embedded.EmbeddedPostgres | None]:
    configured = settings.async_database_url()
    if configured is not None:
        return configured, None
    server = embedded.EmbeddedPostgres(settings.data_dir)
    url = await asyncio.to_thread(server.start)
    stack.push_async_callback(asyncio.to_thread, server.stop)
    return url, server


def _build_population(
    options: simulator.SimulatorOptions, ticks: int
) -> population_module.Population:
    population = simulator.build_population(options)
    # Replays the previous demos' evolution (deterministic for a seed), so the API shows
    # what the database last saw plus what changed since, not the population of tick 0.
    population.tick(ticks)
    return population


def _save_state(path: Path, resumed: SimulatorState, ticks: int) -> None:
    state = SimulatorState(
        seed=resumed.seed,
        projects=resumed.projects,
        snapshots=resumed.snapshots,
        change_rate=resumed.change_rate,
        start_time=resumed.start_time,
        ticks=ticks,
    )
    try:
        state.save(path)
    except OSError as exc:
        log.warning("could not save the simulator's state in %s: %s", path, exc)


async def _run_for(
    daemon: daemon_module.Daemon,
    run: asyncio.Task[None],
    dashboard: Dashboard,
    console: Console,
    duration: float,
) -> str:
    """Show progress while the daemon runs; stop it after `duration` s. Returns why it stopped."""
    expired = False

    async def stop_later() -> None:
        nonlocal expired
        await daemon.started.wait()
        dashboard.started = time.monotonic()
        if daemon.http_port is not None:
            dashboard.metrics_url = f"http://127.0.0.1:{daemon.http_port}/metrics"
            if not console.is_terminal:
                console.print(f"metrics: {dashboard.metrics_url}", highlight=False)
        await asyncio.sleep(duration)
        expired = True
        daemon.stop()

    timer = asyncio.create_task(stop_later())
    display = asyncio.create_task(show_progress(dashboard, console))
    try:
        await asyncio.wait({run, timer}, return_when=asyncio.FIRST_COMPLETED)
        await run  # raises the daemon's error (a bad schema, an unusable port)
    finally:
        for task in (timer, display):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not run.done():
            daemon.stop()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await run
    return "the duration ended" if expired else "stopped by a signal"


# -- the command ------------------------------------------------------------------------------


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PLAIN_WIDTH
    return console


def _setup_logging(settings: settings_module.Settings, secrets: list[str]) -> None:
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


@click.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(min=1.0),
    default=DEFAULT_DURATION,
    show_default=True,
    help="Seconds the daemon runs before the report.",
)
@click.option(
    "--projects",
    type=click.IntRange(1, 64),
    default=DEFAULT_PROJECTS,
    show_default=True,
    help="Simulated projects.",
)
@click.option(
    "--snapshots",
    type=click.IntRange(0, 200_000),
    default=DEFAULT_SNAPSHOTS,
    show_default=True,
    help="Snapshots per simulated project.",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same projects.")
@click.option(
    "--psql",
    "psql",
    is_flag=True,
    help="Instead of the demo: open psql on the data it left (extra arguments after --).",
)
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def demo_command(
    *,
    duration: float,
    projects: int,
    snapshots: int,
    seed: int,
    psql: bool,
    psql_args: tuple[str, ...],
) -> None:
    """The one-command tour: embedded PostgreSQL, the API simulator and the daemon for a
    minute, with live progress, then a report and the psql command to explore the data.

    SNAPSYNC_PROJECTS and the credentials are ignored: the demo syncs its own simulator.
    SNAPSYNC_DATABASE_URL, when set, is used instead of the embedded PostgreSQL.
    """
    from app import cli  # app.cli imports this module to register the command

    if psql_args and not psql:
        raise click.UsageError(f"unexpected argument {psql_args[0]!r} (psql arguments need --psql)")
    with cli.reported_errors():
        base = settings_module.load_settings()
        _setup_logging(base, cli.secret_values(base))
        if psql:
            sys.exit(open_psql(base, psql_args))
        options = DemoOptions(duration=duration, projects=projects, snapshots=snapshots, seed=seed)
        console = _console()
        cli.run_async(lambda: run_demo(base, options, console))
