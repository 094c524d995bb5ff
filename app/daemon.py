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
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.ext.asyncio import AsyncEngine

from app import client, db, discovery, errors, health, logs, metrics, runtime, store, sync
from app import settings as settings_module

log = logging.getLogger("app.daemon")

GRACE_VARIABLE = "SNAPSYNC_SHUTDOWN_GRACE"
DEFAULT_SHUTDOWN_GRACE = 30.0
# How often the database is probed while it answers, and the longest pause while it does not.
PROBE_SECONDS = 5.0
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
DB_CHECK_TIMEOUT = 5.0
HOT_LANE_JOB = "hot-lane"
DISCOVERY_JOB = "discovery"
# While no discovery has found a project yet, the next one comes this soon at the latest.
DISCOVERY_RETRY_SECONDS = 60.0
HOT_LANE_CONCURRENCY = 4
# /metrics re-reads the snapshot counts at most this often (and after syncs).
SNAPSHOT_COUNTS_CACHE = 10.0
# After the grace period, how long cancelled syncs get to write their run rows.
CANCEL_TIMEOUT = 10.0


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


def retry_delay(failures: int) -> float:
    """Backoff between database probes after `failures` consecutive failures (>= 1)."""
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2.0 ** max(0, failures - 1))


def shutdown_grace(settings: settings_module.Settings) -> float:
    """SNAPSYNC_SHUTDOWN_GRACE: seconds running syncs get to finish after a signal."""
    return float(settings.shutdown_grace)


# -- the daemon ---------------------------------------------------------------------------------


class _DropOverrunWarning(logging.Filter):
    """APScheduler warns on every firing skipped because the previous sync still runs; the
    daemon reports long syncs itself, once per sync."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances" not in record.getMessage()


class Daemon:
    """Syncs the configured projects on their interval until `stop()` or SIGTERM/SIGINT.

    With SNAPSYNC_PROJECTS=auto (and no `projects` given) the projects come from a discovery
    at start and again every SNAPSYNC_DISCOVERY_INTERVAL (see `_discover`)."""

    def __init__(
        self,
        settings: settings_module.Settings,
        *,
        projects: Sequence[settings_module.Project] | None = None,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        on_progress: sync.ProgressHook | None = None,
        on_finished: Callable[[sync.RunResult], None] | None = None,
        serve_http: bool = True,
        handle_signals: bool = True,
    ) -> None:
        self._settings = settings
        self._projects = list(projects) if projects is not None else settings.require_projects()
        self._discovering = projects is None and settings.discovers
        self._grace = shutdown_grace
        self._extra_progress = on_progress
        self._extra_finished = on_finished
        self._serve_http = serve_http
        self._handle_signals = handle_signals
        self._interval = settings.sync_interval
        self.metrics = metrics.Metrics([p.project_id for p in self._projects])
        self.metrics.show_projects(self._projects, "configured")
        self._runtime: runtime.Runtime | None = None
        self._engine: AsyncEngine | None = None
        self._syncer: sync.Syncer | None = None
        self._client: client.WorkspaceClient | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._scheduler_stopped = False
        self._prune_task: asyncio.Task[None] | None = None
        self._server: health.Server | None = None
        self._gate = asyncio.Semaphore(settings.max_concurrent_projects)
        self._active: set[asyncio.Task[Any]] = set()
        self._stop_requested = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._wake_monitor = asyncio.Event()
        self._stopping = False
        self._started_at = time.monotonic()
        self._db_ok = False
        self._db_error: str | None = "not checked yet"
        self._last_success: dict[str, datetime | None] = {}
        self._counts_dirty = True
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
        self._stop_requested.set()

    async def run(self) -> None:
        """Run until stopped; raise ConfigError when the schema or the configuration is wrong."""
        loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        if self._handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._on_signal, signum)
        overrun_filter = _DropOverrunWarning()
        logging.getLogger("apscheduler.scheduler").addFilter(overrun_filter)
        try:
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
                    self._engine = engine
                    return await self._wait_for_schema(engine) and not self._stop_requested.is_set()

                built = await stack.enter_async_context(
                    runtime.open_runtime(
                        self._settings,
                        ready=ready,
                        on_request=self.metrics.on_request,
                        on_retry=self.metrics.on_retry,
                        on_progress=self._on_progress,
                        on_finished=self._on_finished,
                    )
                )
                if built is None:
                    return
                engine, self._client, self._syncer = built.engine, built.client, built.syncer
                self._runtime = built
                if self._discovering:
                    await self._discover()
                monitor = asyncio.create_task(self._monitor(engine), name="snapsync-db-monitor")
                try:
                    self._scheduler = self._start_scheduler()
                    self.started.set()
                    await self._stop_requested.wait()
                    await self._shutdown(self._scheduler)
                finally:
                    # Also when run() itself is cancelled: no sync outlives the engine.
                    self._stopping = True
                    await self._abort_leftovers()
                    monitor.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await monitor
            log.info("stopped")
        finally:
            logging.getLogger("apscheduler.scheduler").removeFilter(overrun_filter)
            if self._handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)

    # -- endpoints ------------------------------------------------------------------------------

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """For /healthz: the process answers and the scheduler is alive (not stuck)."""
        scheduler = self._scheduler
        body: dict[str, Any] = {
            "uptime_seconds": round(time.monotonic() - self._started_at, 1),
            "syncs_in_progress": len(self._active),
        }
        if self._stopping:
            body.update(status="stopping", scheduler="paused")
            return True, body
        if scheduler is None:
            body.update(status="starting", scheduler="not started (waiting for the database)")
            return True, body
        if not scheduler.running:
            body.update(status="scheduler stopped", scheduler="stopped")
            return False, body
        jobs = scheduler.get_jobs()
        now = datetime.now(UTC)
        allowed = timedelta(seconds=max(60.0, 2 * self._interval))
        overdue = [
            j.id for j in jobs if j.next_run_time is not None and now - j.next_run_time > allowed
        ]
        body.update(scheduler="running", jobs=len(jobs))
        if overdue:
            body.update(status="scheduler stuck", overdue_jobs=overdue)
            return False, body
        body.update(status="ok")
        return True, body

    def readiness(self) -> health.Readiness:
        """For /readyz: the database answers and every project succeeded recently."""
        return health.assess(
            now=datetime.now(UTC),
            project_ids=[p.project_id for p in self._projects],
            last_success=self._last_success,
            database_ok=self._db_ok,
            database_error=self._db_error,
            stale_after=health.STALE_INTERVALS * self._interval,
            stopping=self._stopping,
        )

    async def refresh_metrics(self) -> None:
        """Before a scrape: database gauges, re-read when older than a few seconds."""
        self.metrics.database_up.set(1 if self._db_ok else 0)
        self.metrics.syncs_in_progress.set(len(self._active))
        view = self.metrics.data
        engine = self._engine
        if engine is None or not self._db_ok:
            return
        read_at = view.by_status_read_at
        fresh = read_at is not None and time.monotonic() - read_at < SNAPSHOT_COUNTS_CACHE
        if fresh and not self._counts_dirty:
            return
        self._counts_dirty = False
        try:
            async with asyncio.timeout(DB_CHECK_TIMEOUT), store.connect(engine) as conn:
                await view.refresh_by_status(conn)
        except (errors.DatabaseError, TimeoutError) as exc:
            self._database_failed(exc)

    # -- scheduling -----------------------------------------------------------------------------

    def _start_scheduler(self) -> AsyncIOScheduler:
        scheduler = AsyncIOScheduler(timezone=UTC)
        jitter = jitter_for(self._interval)
        now = datetime.now(UTC)
        for project in self._projects:
            self._add_sync_job(scheduler, project, now)
        if self._discovering:
            every = self._settings.discovery_interval
            first = every if self._projects else min(every, DISCOVERY_RETRY_SECONDS)
            scheduler.add_job(
                self._discovery_job,
                IntervalTrigger(seconds=every, timezone=UTC),
                id=DISCOVERY_JOB,
                name="discovery",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
                next_run_time=now + timedelta(seconds=first),
            )
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
        self._prune_task = asyncio.create_task(self._prune_loop(), name="retention")
        scheduler.start()
        log.info(
            "syncing %d project(s) every %gs (jitter %gs), at most %d at once",
            len(self._projects),
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

    # -- discovery (SNAPSYNC_PROJECTS=auto) -------------------------------------------------------

    async def _discovery_job(self) -> None:
        """One firing of the discovery job, counted as running work for the shutdown."""
        if self._stopping:
            return
        with self._tracked("the discovery"):
            await self._discover()

    async def _discover(self) -> None:
        """Ask IAM for the projects again: a new one gets a sync job, one no longer listed
        stops being synced (its data stays). When IAM does not list them, or lists none
        Workspace serves, the projects known so far keep being synced."""
        built = self._runtime
        assert built is not None
        try:
            found = await discovery.discover(built, self._settings)
        except errors.DiscoveryError as exc:
            self.metrics.show_discovery(None)
            self._discovery_failed(str(exc))
            return
        self.metrics.show_discovery(found.skipped)
        nothing = found.nothing_served()
        if nothing is not None:
            self._discovery_failed(str(nothing))
            return
        self._use_projects(found.projects)

    def _discovery_failed(self, problem: str) -> None:
        log.error(
            "%s; still syncing the %d project(s) known before, asking again in %gs",
            problem,
            len(self._projects),
            self._settings.discovery_interval
            if self._projects
            else min(self._settings.discovery_interval, DISCOVERY_RETRY_SECONDS),
        )
        job = self._scheduler.get_job(DISCOVERY_JOB) if self._scheduler is not None else None
        if job is not None and not self._projects:
            soon = min(self._settings.discovery_interval, DISCOVERY_RETRY_SECONDS)
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=soon))

    def _use_projects(self, projects: Sequence[settings_module.Project]) -> None:
        """Sync `projects` from now on: jobs for the new ones, none for those gone."""
        before = {p.project_id: p for p in self._projects}
        after = {p.project_id: p for p in projects}
        scheduler = self._scheduler
        for pid, project in before.items():
            if after.get(pid) == project:
                continue
            if scheduler is not None and scheduler.get_job(pid) is not None:
                scheduler.remove_job(pid)
            if pid not in after:
                self._last_success.pop(pid, None)
                with logs.context(project_id=pid):
                    log.info("no longer listed by IAM: not synced any more, its data is kept")
        self._projects = list(projects)
        self.metrics.show_projects(self._projects, "discovered")
        now = datetime.now(UTC)
        for pid, project in after.items():
            if before.get(pid) != project:
                with logs.context(project_id=pid):
                    log.info("discovered in %s: synced from now on", project.region)
                if scheduler is not None:
                    self._add_sync_job(scheduler, project, now)

    async def _hot_job(self) -> None:
        """The fast lane: every SNAPSYNC_HOT_INTERVAL, re-read the in-flight snapshots of the
        projects that have some. It yields to the full syncs when the API throttles: while the
        client's rate is below its configured value (a recent 429), it makes no request."""
        engine, syncer, workspace = self._engine, self._syncer, self._client
        if self._stopping or not self._db_ok or engine is None or syncer is None:
            return
        assert workspace is not None
        with self._tracked("the hot lane"):
            try:
                async with asyncio.timeout(DB_CHECK_TIMEOUT), store.connect(engine) as conn:
                    counts = await store.in_flight_counts(conn)
            except (errors.DatabaseError, TimeoutError) as exc:
                self._database_failed(exc)
                return
            for project in self._projects:
                self.metrics.in_flight.labels(project.project_id).set(
                    counts.get(project.project_id, 0)
                )
            hot = [p for p in self._projects if counts.get(p.project_id)]
            limiter = workspace.limiter
            if hot and not limiter.unlimited and limiter.rate < limiter.max_rate:
                for project in hot:
                    self.metrics.hot_polls.labels(project.project_id, "throttled").inc()
                return
            gate = asyncio.Semaphore(HOT_LANE_CONCURRENCY)

            async def poll(project: settings_module.Project) -> None:
                async with gate:
                    if self._stopping:
                        return
                    try:
                        result = await syncer.poll_in_flight(project)
                    except errors.DatabaseError as exc:
                        self._database_failed(exc)
                        return
                if result is None:
                    return
                self.metrics.hot_polls.labels(project.project_id, result.status).inc()
                if result.counts.transitions:
                    self._counts_dirty = True
                    await self._count_transitions(project, result)

            await asyncio.gather(*(poll(p) for p in hot), return_exceptions=False)

    # -- retention ----------------------------------------------------------------------------

    async def _prune_loop(self) -> None:
        """Retention beside the scheduler's jobs: a minute after start (or the interval, when
        shorter), then every SNAPSYNC_PRUNE_INTERVAL, until the daemon stops."""
        interval = self._settings.prune_interval
        if await self._stopped_within(min(interval, 60.0)):
            return
        while True:
            await self._prune_job()
            if await self._stopped_within(interval):
                return

    async def _prune_job(self) -> None:
        """Apply the retention settings in small batches (app/retention.py); every replica may
        run it: batches take their rows with SKIP LOCKED."""
        from app import retention

        engine = self._engine
        if self._stopping or not self._db_ok or engine is None:
            return
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        try:
            with store.database_errors():
                await retention.prune(
                    engine, self._settings.retention_policy(), stopping=lambda: self._stopping
                )
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        except errors.DatabaseError as exc:
            log.warning("retention failed, will try again: %s", exc)
        except Exception:
            log.exception("unexpected error in retention")
        finally:
            self._active.discard(task)

    def _run_jobs_now(self) -> None:
        """Bring every job's next firing forward (after the database came back)."""
        for project in self._projects:
            self._run_job_now(project.project_id)

    def _run_job_now(self, project_id: str) -> None:
        """Bring a project's next firing forward to now (plus the jitter)."""
        scheduler = self._scheduler
        if scheduler is None or self._stopping:
            return
        job = scheduler.get_job(project_id)
        if job is not None:
            delay = random.uniform(0, jitter_for(self._interval))
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=delay))

    async def _job(self, project: settings_module.Project) -> None:
        """One firing of a project's job."""
        if self._stopping:
            return
        with logs.context(project_id=project.project_id), self._tracked("a scheduled sync"):
            async with self._gate:
                if self._stopping:
                    return
                await self._sync_if_due(project)

    @contextlib.contextmanager
    def _tracked(self, what: str) -> Iterator[None]:
        """Count the task among the running ones, log its error; an interruption by the shutdown
        after the grace period ends it quietly (the Syncer closed a sync's run row)."""
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        except Exception:
            log.exception("unexpected error in %s", what)
        finally:
            self._active.discard(task)

    async def _sync_if_due(self, project: settings_module.Project) -> None:
        pid = project.project_id
        checks = self.metrics.sync_checks
        if not self._db_ok:
            checks.labels(pid, "database_down").inc()
            return
        engine, syncer = self._engine, self._syncer
        assert engine is not None and syncer is not None
        try:
            async with store.advisory_lock(engine, store.SCHEDULE_LOCK_CLASS, pid) as conn:
                if conn is None:
                    checks.labels(pid, "busy").inc()
                    return
                with store.database_errors():
                    newest = await store.newest_full_run_started(conn, pid)
                    await conn.commit()
                if self._stopping:
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
            self._database_failed(exc)
            checks.labels(pid, "database_down").inc()
            return
        await self._after_sync(project, result)

    async def _after_sync(self, project: settings_module.Project, result: sync.RunResult) -> None:
        self._counts_dirty = True
        if result.status == "failed":
            # A database error shows here first; let the monitor look at once.
            self._wake_monitor.set()
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
        await self._count_transitions(project, result)

    async def _count_transitions(
        self, project: settings_module.Project, result: sync.RunResult
    ) -> None:
        engine = self._engine
        if engine is None or result.run_id is None or result.counts.transitions == 0:
            return
        try:
            async with asyncio.timeout(DB_CHECK_TIMEOUT), store.connect(engine) as conn:
                await self.metrics.count_transitions(conn, result)
        except (errors.DatabaseError, TimeoutError) as exc:
            with logs.context(project_id=project.project_id, run_id=result.run_id):
                log.warning("could not count the status transitions of the run: %s", _describe(exc))

    # -- hooks ------------------------------------------------------------------------------------

    def _on_progress(self, progress: sync.Progress) -> None:
        if self._extra_progress is not None:
            try:
                self._extra_progress(progress)
            except Exception:
                log.exception("the progress callback failed")

    def _on_finished(self, result: sync.RunResult) -> None:
        self.metrics.on_finished(result)
        if result.status == "succeeded":
            self._last_success[result.project_id] = datetime.now(UTC)
        if self._extra_finished is not None:
            try:
                self._extra_finished(result)
            except Exception:
                log.exception("the finished callback failed")

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self._stop_requested.is_set():
            log.info(
                "received %s: stopping (running syncs get up to %gs; send it again to "
                "interrupt them now)",
                name,
                self._grace,
            )
            self.stop()
        else:
            log.warning("received %s again: interrupting the running syncs now", name)
            self._interrupt.set()

    # -- database state ---------------------------------------------------------------------------

    async def _wait_for_schema(self, engine: AsyncEngine) -> bool:
        """Check the schema, waiting with backoff while the database does not answer.

        Returns False when stopped while waiting; raises ConfigError on a wrong schema.
        """
        failures = 0
        while True:
            try:
                await db.check_schema(engine)
            except errors.DatabaseError as exc:
                failures += 1
                self._db_ok, self._db_error = False, str(exc)
                delay = retry_delay(failures)
                log.warning("database not reachable at start (%s); retrying in %gs", exc, delay)
                if await self._stopped_within(delay):
                    log.info("stopped before the database answered")
                    return False
                continue
            self._db_ok, self._db_error = True, None
            with contextlib.suppress(errors.DatabaseError, TimeoutError):
                await self._observe(engine)
            return True

    async def _stopped_within(self, seconds: float) -> bool:
        await _wait_event(self._stop_requested, seconds)
        return self._stop_requested.is_set()

    async def _observe(self, engine: AsyncEngine) -> None:
        """One probe: the database answers, and when each project last succeeded."""
        async with asyncio.timeout(DB_CHECK_TIMEOUT), store.connect(engine) as conn:
            found = await store.last_successes(conn, [p.project_id for p in self._projects])
        for pid, when in found.items():
            mine = self._last_success.get(pid)
            if mine is None or (when is not None and when > mine):
                self._last_success[pid] = when
        self.metrics.data.set_last_success(found)

    async def _monitor(self, engine: AsyncEngine) -> None:
        """Probe the database forever: every few seconds, with backoff while it is away."""
        failures = 0
        while not self._stopping:
            try:
                await self._observe(engine)
            except (errors.DatabaseError, TimeoutError) as exc:
                failures += 1
                self._database_failed(exc)
                delay = retry_delay(failures)
            else:
                if not self._db_ok:
                    log.info("the database answers again; syncing the due projects now")
                    self._db_ok, self._db_error = True, None
                    self._run_jobs_now()
                failures = 0
                delay = min(PROBE_SECONDS, self._interval)
            self.metrics.database_up.set(1 if self._db_ok else 0)
            self._wake_monitor.clear()
            await _wait_event(self._wake_monitor, delay)

    def _database_failed(self, exc: BaseException) -> None:
        description = _describe(exc)
        if self._db_ok:
            log.warning("the database does not answer (%s); syncs wait until it does", description)
            self._wake_monitor.set()
        self._db_ok, self._db_error = False, description

    # -- shutdown ---------------------------------------------------------------------------------

    async def _shutdown(self, scheduler: AsyncIOScheduler) -> None:
        """Start no new sync, give running ones the grace period, then interrupt them."""
        self._stopping = True
        scheduler.pause()
        running = {t for t in self._active if not t.done()}
        if running:
            log.info(
                "waiting up to %gs for %d running sync(s) to finish", self._grace, len(running)
            )
            pending = await self._wait_or_interrupt(running, self._grace)
            if pending:
                log.warning(
                    "interrupting %d sync(s) still running; their runs end as failed",
                    len(pending),
                )
                for task in pending:
                    task.cancel()
                _, left = await asyncio.wait(pending, timeout=CANCEL_TIMEOUT)
                if left:
                    log.error(
                        "%d sync(s) did not end %gs after being interrupted; the next sync of "
                        "their projects marks their runs abandoned",
                        len(left),
                        CANCEL_TIMEOUT,
                    )
        self._stop_scheduler()

    def _stop_scheduler(self) -> None:
        # AsyncIOScheduler.shutdown() takes effect on the next loop iteration: call it once.
        if self._scheduler is not None and not self._scheduler_stopped:
            self._scheduler_stopped = True
            self._scheduler.shutdown(wait=False)

    async def _abort_leftovers(self) -> None:
        self._stop_scheduler()
        left = {t for t in self._active if not t.done()}
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=CANCEL_TIMEOUT)

    async def _wait_or_interrupt(
        self, tasks: set[asyncio.Task[Any]], seconds: float
    ) -> set[asyncio.Task[Any]]:
        """Wait for `tasks` for `seconds` or until a second signal; return those still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        interrupt = asyncio.ensure_future(self._interrupt.wait())
        pending = set(tasks)
        try:
            while pending and not self._interrupt.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait(
                    {*pending, interrupt}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
                pending = {t for t in pending if not t.done()}
        finally:
            interrupt.cancel()
        return pending


async def _wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until `event` is set or `seconds` pass.

    Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as the
    event is set, and a task that ignores its cancellation never ends.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def _describe(exc: BaseException) -> str:
    return f"no answer within {DB_CHECK_TIMEOUT:g}s" if isinstance(exc, TimeoutError) else str(exc)
