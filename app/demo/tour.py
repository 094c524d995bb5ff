"""The demo itself: the database migrated, the simulator resumed, the daemon run for a while
with live progress, then the report and how to explore the data."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr
from rich.console import Console

from app import daemon as daemon_module
from app import db, health, store
from app import settings as settings_module
from app.demo import explore, report, saved
from app.demo.dashboard import Dashboard, show_progress
from app.simulator import auth as simulator_auth
from app.simulator import population as population_module
from app.simulator import server as simulator
from app.simulator import state

# Used unless the user set SNAPSYNC_SYNC_INTERVAL / SNAPSYNC_PAGE_SIZE: several syncs a minute,
# and enough pages per sync for the progress bars to move.
DEMO_SYNC_INTERVAL = 10.0
DEMO_PAGE_SIZE = 250
# 0.2 % of all snapshots created, restored or deleted per second: a few dozen status changes
# between two syncs of a project, most creations done within seconds, some within a minute.
DEMO_CHANGE_RATE = 0.002
SHUTDOWN_GRACE = 10.0


@dataclass(frozen=True)
class DemoOptions:
    """What `snapsync demo` was asked for."""

    duration: float
    projects: int
    snapshots: int
    seed: int


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
    state_path = base.data_dir / saved.FILENAME
    wanted = saved.SavedSimulation(
        seed=options.seed,
        projects=options.projects,
        snapshots=options.snapshots,
        change_rate=DEMO_CHANGE_RATE,
        start_time=state.SimulatorOptions().start(),
        ticks=0,
    )
    resumed = saved.resume_state(wanted, saved.SavedSimulation.load(state_path))
    sim_options = state.SimulatorOptions(
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
        url, server = await stack.enter_async_context(db.open_database(base))
        where = (
            f"embedded PostgreSQL in {server.data_dir}"
            if server is not None
            else f"the configured database {explore.libpq_url(url)[0]} (SNAPSYNC_DATABASE_URL)"
        )
        console.print(f"snapsync demo: {where}: migrating …", highlight=False, soft_wrap=True)
        engine = db.make_engine(url, pool_size=2)
        stack.push_async_callback(engine.dispose)
        with store.database_errors("migration failed: "):
            await db.migrate(engine)

        population = await asyncio.to_thread(_build_population, sim_options, resumed.ticks)
        sim = await stack.enter_async_context(simulator.running(sim_options, population=population))
        stack.callback(lambda: resumed.save(state_path, population.ticks))
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
            on_progress=dashboard.tracker.on_progress,
            on_finished=dashboard.on_finished,
            on_request=dashboard.tracker.on_request,
            on_retry=dashboard.tracker.on_retry,
            on_wait=dashboard.tracker.on_wait,
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

        with store.database_errors("cannot read the report: "):
            found = await report.collect_report(
                engine,
                project_ids=sim.project_ids,
                since=since,
                stale_after=health.STALE_INTERVALS * settings.sync_interval,
            )
        for renderable in report.render_report(found, seconds=seconds, stopped_by=stopped_by):
            console.print(renderable)
        console.print()
        console.print(
            explore.explore_lines(url, server), markup=False, highlight=False, soft_wrap=True
        )


def _build_population(options: state.SimulatorOptions, ticks: int) -> population_module.Population:
    population = state.build_population(options)
    # Replays the previous demos' evolution (deterministic for a seed), so the API shows
    # what the database last saw plus what changed since, not the population of tick 0.
    population.tick(ticks)
    return population


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
        dashboard.tracker.started = time.monotonic()
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
