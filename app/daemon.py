"""`snapsync run`: every project synced on its interval, by a fleet of any size, until a signal.

Each process schedules one APScheduler job per project. A job decides from the database whether
the project is due (the newest run of the project, by any replica, started an interval ago)
while it holds the project's *schedule lock*, an advisory lock kept until the sync ends, so a
fleet syncs each project about once per interval and never twice at once. The Syncer's own
project lock still guards against `snapsync sync` running beside the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.ext.asyncio import AsyncEngine

from app import (
    client,
    dbwatch,
    discovery,
    errors,
    health,
    lifecycle,
    logs,
    metrics,
    pruner,
    runs,
    runtime,
    store,
    sync,
)
from app import settings as settings_module
from app.dbwatch import DB_CHECK_TIMEOUT

log = logging.getLogger("app.daemon")

GRACE_VARIABLE = "SNAPSYNC_SHUTDOWN_GRACE"
DEFAULT_SHUTDOWN_GRACE = 30.0
HOT_LANE_JOB = "hot-lane"
HOT_LANE_CONCURRENCY = 4


# -- the schedule policy (pure) ----------------------------------------------------------------


def jitter_for(interval: float) -> float:
    """The random delay added to every firing: spreads projects and replicas apart."""
    return min(interval * 0.05, 10.0)


def slack_for(interval: float) -> float:
    """How much earlier than a full interval a project counts as due.

    It absorbs the jitter and the lateness of firings, so one replica alone syncs a project on
    every firing, while a fleet never syncs it much more often than once per interval.
    """
    return min(interval * 0.2, 30.0)


def is_due(newest_start: datetime | None, now: datetime, interval: float) -> bool:
    """Whether a project whose newest run started at `newest_start` should be synced now."""
    if newest_start is None:
        return True
    return (now - newest_start).total_seconds() >= interval - slack_for(interval)


def shutdown_grace(settings: settings_module.Settings) -> float:
    """SNAPSYNC_SHUTDOWN_GRACE: seconds running syncs get to finish after a signal."""
    return float(settings.shutdown_grace)


# -- the daemon ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _overrun_warnings_dropped() -> Iterator[None]:
    overrun_filter = _DropOverrunWarning()
    logging.getLogger("apscheduler.scheduler").addFilter(overrun_filter)
    try:
        yield
    finally:
        logging.getLogger("apscheduler.scheduler").removeFilter(overrun_filter)


class _DropOverrunWarning(logging.Filter):
    """APScheduler warns on every firing skipped because the previous sync still runs; the
    daemon reports long syncs itself, once per sync."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


class Daemon:
    """Syncs the configured projects on their interval until `stop()` or SIGTERM/SIGINT.

    With SNAPSYNC_PROJECTS=auto (and no `projects` given) the projects come from a discovery
    at start and again every SNAPSYNC_DISCOVERY_INTERVAL (app/discovery.py's Refresher)."""

    def __init__(
        self,
        settings: settings_module.Settings,
        *,
        projects: Sequence[settings_module.Project] | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        on_progress: runs.ProgressHook | None = None,
        on_finished: Callable[[runs.RunResult], None] | None = None,
        on_request: client.RequestHook | None = None,
        on_retry: client.RequestHook | None = None,
        on_wait: client.WaitHook | None = None,
        serve_http: bool = True,
        handle_signals: bool = True,
    ) -> None:
        self._settings = settings
        chosen = list(projects) if projects is not None else settings.require_projects()
        self._extra_progress = on_progress
        self._extra_finished = on_finished
        self._extra_request, self._extra_retry, self._extra_wait = on_request, on_retry, on_wait
        self._serve_http = serve_http
        self._handle_signals = handle_signals
        self._interval = settings.sync_interval
        self.metrics = metrics.Metrics([p.project_id for p in chosen])
        self._watch = dbwatch.DatabaseWatch(
            project_ids=lambda: [p.project_id for p in self._known.projects],
            metrics=self.metrics,
            interval=self._interval,
        )
        self._lifecycle = lifecycle.Lifecycle(grace=shutdown_grace)
        self._pruner = pruner.Pruner(
            policy=settings.retention_policy,
            interval=settings.prune_interval,
            watch=self._watch,
            tasks=self._lifecycle,
        )
        self._known = discovery.Refresher(
            settings,
            projects=chosen,
            discovering=projects is None and settings.discovers,
            metrics=self.metrics,
            tasks=self._lifecycle,
            add_job=self._add_sync_job,
            forget=lambda pid: self._watch.last_success.pop(pid, None),
        )
        self._syncer: sync.Syncer | None = None
        self._client: client.WorkspaceClient | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._prune_task: asyncio.Task[None] | None = None
        self._server: health.Server | None = None
        self._gate = asyncio.Semaphore(settings.max_concurrent_projects)
        self._started_at = time.monotonic()
        self.started = asyncio.Event()
        """Set once the scheduler runs (the schema was checked and the first syncs are due)."""

    # -- public ---------------------------------------------------------------------------------

    @property
    def http_port(self) -> int | None:
        """The port the endpoints listen on, once they do (useful with SNAPSYNC_HTTP_PORT=0)."""
        return None if self._server is None else self._server.port

    def stop(self) -> None:
        """Ask the daemon to stop: no new syncs, running ones get the grace period.

        Call it from the daemon's event loop (from another thread: loop.call_soon_threadsafe).
        """
        self._lifecycle.request_stop()

    async def run(self) -> None:
        """Run until stopped; raise ConfigError when the schema or the configuration is wrong."""
        self._started_at = time.monotonic()
        with self._lifecycle.handling_signals(self._handle_signals), _overrun_warnings_dropped():
            async with contextlib.AsyncExitStack() as stack:
                if self._serve_http:
                    self._server = health.Server(
                        health.create_app(self, self.metrics),
                        host=self._settings.http_host,
                        port=self._settings.http_port,
                    )
                    await self._server.start()
                    stack.push_async_callback(self._server.stop)

                async def ready(engine: AsyncEngine) -> bool:
                    self._watch.engine = engine
                    ok = await self._watch.wait_for_schema(engine, self._lifecycle.stopped_within)
                    return ok and not self._lifecycle.stop_requested.is_set()

                built = await stack.enter_async_context(
                    runtime.open_runtime(
                        self._settings,
                        ready=ready,
                        on_request=self._on_request,
                        on_retry=self._on_retry,
                        on_wait=self._on_wait,
                        on_progress=self._on_progress,
                        on_finished=self._on_finished,
                    )
                )
                if built is None:
                    return
                engine, self._client, self._syncer = built.engine, built.client, built.syncer
                await self._known.start(built)
                watching = self._watch.monitor(
                    engine, stopping=lambda: self._lifecycle.stopping, on_back=self._run_jobs_now
                )
                monitor = asyncio.create_task(watching, name="snapsync-db-monitor")
                try:
                    self._scheduler = self._start_scheduler()
                    self.started.set()
                    await self._lifecycle.stop_requested.wait()
                    await self._lifecycle.drain(self._scheduler)
                finally:
                    # Also when run() itself is cancelled: no sync outlives the engine.
                    self._lifecycle.stopping = True
                    await self._lifecycle.abort_leftovers(self._scheduler)
                    monitor.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await monitor
            log.info("stopped")

    # -- endpoints ------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """For /healthz: the process answers and the scheduler is alive (not stuck)."""
        return health.liveness(
            self._scheduler,
            uptime=time.monotonic() - self._started_at,
            in_progress=len(self._lifecycle.active),
            stopping=self._lifecycle.stopping,
            interval=self._interval,
        )

    def readiness(self) -> health.Readiness:
        """For /readyz: the database answers, there are projects, and every one succeeded
        recently."""
        return health.assess(
            now=datetime.now(UTC),
            project_ids=[p.project_id for p in self._known.projects],
            last_success=self._watch.last_success,
            database_ok=self._watch.ok,
            database_error=self._watch.error,
            stale_after=health.STALE_INTERVALS * self._interval,
            stopping=self._lifecycle.stopping,
            discovery=self._known.unready(),
        )

    async def refresh_metrics(self) -> None:
        """Before a scrape: database gauges, re-read when older than a few seconds."""
        self.metrics.database_up.set(1 if self._watch.ok else 0)
        self.metrics.syncs_in_progress.set(len(self._lifecycle.active))
        await self._watch.refresh_counts()

    # -- scheduling -----------------------------------------------------------------------------

    def _start_scheduler(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone=UTC)
        jitter = jitter_for(self._interval)
        now = datetime.now(UTC)
        for project in self._known.projects:
            self._add_sync_job(scheduler, project, now)
        self._known.schedule(scheduler, now)
        scheduler.add_job(
            self._hot_job,
            IntervalTrigger(seconds=self._settings.hot_interval, timezone=UTC),
            id=HOT_LANE_JOB,
            name="hot lane",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=now + timedelta(seconds=self._settings.hot_interval),
        )
        self._prune_task = asyncio.create_task(self._pruner.loop(), name="retention")
        scheduler.start()
        log.info(
            "syncing %d project(s) every %gs (jitter %gs), at most %d at once",
            len(self._known.projects),
            self._interval,
            jitter,
            self._settings.max_concurrent_projects,
        )
        return scheduler

    def _add_sync_job(
        self, scheduler: AsyncIOScheduler, project: settings_module.Project, now: datetime
    ) -> None:
        jitter = jitter_for(self._interval)
        scheduler.add_job(
            self._job,
            IntervalTrigger(seconds=self._interval, jitter=jitter or None, timezone=UTC),
            args=[project],
            id=project.project_id,
            name=f"sync {project.project_id}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=now + timedelta(seconds=random.uniform(0, jitter)),
        )

    async def _hot_job(self) -> None:
        """The fast lane: every SNAPSYNC_HOT_INTERVAL, re-read the in-flight snapshots of the
        projects that have some. It yields to the full syncs when the API throttles: while the
        client's rate is below its configured value (a recent 429), it makes no request."""
        engine, syncer, workspace = self._watch.engine, self._syncer, self._client
        if self._lifecycle.stopping or not self._watch.ok or engine is None or syncer is None:
            return
        assert workspace is not None
        with self._lifecycle.tracked("the hot lane"):
            try:
                async with asyncio.timeout(DB_CHECK_TIMEOUT), store.connect(engine) as conn:
                    counts = await store.in_flight_counts(conn)
            except (errors.DatabaseError, TimeoutError) as exc:
                self._watch.failed(exc)
                return
            for project in self._known.projects:
                self.metrics.in_flight.labels(project.project_id).set(
                    counts.get(project.project_id, 0)
                )
            hot = [p for p in self._known.projects if counts.get(p.project_id)]
            limiter = workspace.limiter
            if hot and not limiter.unlimited and limiter.rate < limiter.max_rate:
                for project in hot:
                    self.metrics.hot_polls.labels(project.project_id, "throttled").inc()
                return
            gate = asyncio.Semaphore(HOT_LANE_CONCURRENCY)

            async def poll(project: settings_module.Project) -> None:
                async with gate:
                    if self._lifecycle.stopping:
                        return
                    try:
                        result = await syncer.poll_in_flight(project)
                    except errors.DatabaseError as exc:
                        self._watch.failed(exc)
                        return
                if result is None:
                    return
                self.metrics.hot_polls.labels(project.project_id, result.status).inc()
                if result.counts.transitions:
                    self._watch.counts_dirty = True
                    await self._watch.count_transitions(project, result)

            await asyncio.gather(*(poll(p) for p in hot), return_exceptions=False)

    def _run_jobs_now(self) -> None:
        """Bring every job's next firing forward (after the database came back)."""
        for project in self._known.projects:
            self._run_job_now(project.project_id)

    def _run_job_now(self, project_id: str) -> None:
        """Bring a project's next firing forward to now (plus the jitter)."""
        scheduler = self._scheduler
        if scheduler is None or self._lifecycle.stopping:
            return
        job = scheduler.get_job(project_id)
        if job is not None:
            delay = random.uniform(0, jitter_for(self._interval))
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=delay))

    async def _job(self, project: settings_module.Project) -> None:
        """One firing of a project's job."""
        if self._lifecycle.stopping:
            return
        tracked = self._lifecycle.tracked("a scheduled sync")
        with logs.context(project_id=project.project_id), tracked:
            async with self._gate:
                if self._lifecycle.stopping:
                    return
                await self._sync_if_due(project)

    async def _sync_if_due(self, project: settings_module.Project) -> None:
        pid = project.project_id
        checks = self.metrics.sync_checks
        if not self._watch.ok:
            checks.labels(pid, "database_down").inc()
            return
        engine, syncer = self._watch.engine, self._syncer
        assert engine is not None and syncer is not None
        try:
            async with store.advisory_lock(engine, store.SCHEDULE_LOCK_CLASS, pid) as conn:
                if conn is None:
                    checks.labels(pid, "busy").inc()
                    return
                with store.database_errors():
                    newest = await store.newest_full_run_started(conn, pid)
                    await conn.commit()
                if self._lifecycle.stopping:
                    return
                if not is_due(newest, datetime.now(UTC), self._interval):
                    checks.labels(pid, "not_due").inc()
                    return
                checks.labels(pid, "synced").inc()
                self.metrics.syncs_in_progress.inc()
                try:
                    result = await syncer.sync_project(project, wait_for_lock=False)
                finally:
                    self.metrics.syncs_in_progress.dec()
        except errors.DatabaseError as exc:
            # Only the lock and the newest run's start raise it: sync_project never does.
            self._watch.failed(exc)
            checks.labels(pid, "database_down").inc()
            return
        await self._after_sync(project, result)

    async def _after_sync(self, project: settings_module.Project, result: runs.RunResult) -> None:
        self._watch.counts_dirty = True
        if result.status == "failed":
            # A database error shows here first; let the monitor look at once.
            self._watch.wake.set()
        if result.seconds > self._interval and result.status == "succeeded":
            # The firings during the sync were skipped; waiting for the next one would sync
            # the project at most every second interval. (A failed sync waits: the API may
            # be struggling.)
            with logs.context(run_id=result.run_id):
                log.info(
                    "the sync took %.1fs, longer than SNAPSYNC_SYNC_INTERVAL (%gs); "
                    "the next one starts now",
                    result.seconds,
                    self._interval,
                )
            task = asyncio.current_task()
            if task is not None:
                # After APScheduler's own done callback, which ends this job's instance:
                # a firing while it still runs would be skipped.
                pid = project.project_id
                task.add_done_callback(lambda _: self._run_job_now(pid))
        await self._watch.count_transitions(project, result)

    # -- hooks ------------------------------------------------------------------------------------

    def _on_request(self, project_id: str, status: int) -> None:
        self.metrics.on_request(project_id, status)
        _call_hook(self._extra_request, "request", project_id, status)

    def _on_retry(self, project_id: str, attempt: int) -> None:
        self.metrics.on_retry(project_id, attempt)
        _call_hook(self._extra_retry, "retry", project_id, attempt)

    def _on_wait(self, project_id: str, reason: str, seconds: float | None) -> None:
        _call_hook(self._extra_wait, "wait", project_id, reason, seconds)

    def _on_progress(self, progress: runs.Progress) -> None:
        _call_hook(self._extra_progress, "progress", progress)

    def _on_finished(self, result: runs.RunResult) -> None:
        self.metrics.on_finished(result)
        if result.status == "succeeded":
            self._watch.last_success[result.project_id] = datetime.now(UTC)
        _call_hook(self._extra_finished, "finished", result)


def _call_hook(hook: Callable[..., None] | None, name: str, *args: Any) -> None:
    """Call a caller's hook; its error is logged, never the daemon's."""
    if hook is not None:
        try:
            hook(*args)
        except Exception:
            log.exception("the %s callback failed", name)
