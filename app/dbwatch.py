"""The daemon's view of the database: whether it answers, and what the endpoints read from it.

At start, `wait_for_schema` checks the schema, retrying with backoff while the database does not
answer. Then `monitor` probes it every few seconds (with backoff while it is away) and reads when
each project last succeeded; a sync that meets a database error reports it through `failed`, and
the syncs wait until a probe sees the database again. `refresh_counts` and `count_transitions`
read what /metrics shows from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app import db, errors, logs, runs, store
from app import metrics as metrics_module
from app import settings as settings_module

# The daemon's messages, wherever its parts live.
log = logging.getLogger("app.daemon")

# How often the database is probed while it answers, and the longest pause while it does not.
PROBE_SECONDS = 5.0
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
DB_CHECK_TIMEOUT = 5.0
# /metrics re-reads the snapshot counts at most this often (and after syncs).
SNAPSHOT_COUNTS_CACHE = 10.0


def retry_delay(failures: int) -> float:
    """Backoff between database probes after `failures` consecutive failures (>= 1)."""
    return min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2.0 ** max(0, failures - 1))


def describe(exc: BaseException) -> str:
    return f"no answer within {DB_CHECK_TIMEOUT:g}s" if isinstance(exc, TimeoutError) else str(exc)


async def wait_event(event: asyncio.Event, seconds: float) -> None:
    """Wait until `event` is set or `seconds` pass.

    Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives as the
    event is set, and a task that ignores its cancellation never ends.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


class DatabaseWatch:
    """Whether the database answers (`ok`, `error`), and when each project last succeeded."""

    def __init__(
        self,
        *,
        project_ids: Callable[[], Sequence[str]],
        metrics: metrics_module.Metrics,
        interval: float,
    ) -> None:
        self._project_ids = project_ids
        self._metrics = metrics
        self._interval = interval
        self.engine: AsyncEngine | None = None
        self.ok = False
        self.error: str | None = "not checked yet"
        self.last_success: dict[str, datetime | None] = {}
        self.counts_dirty = True
        """Set after a sync changed statuses: the next scrape re-reads the snapshot counts."""
        self.wake = asyncio.Event()
        """Set to make the monitor probe at once."""

    async def wait_for_schema(
        self, engine: AsyncEngine, stopped_within: Callable[[float], Awaitable[bool]]
    ) -> bool:
        """Check the schema, waiting with backoff while the database does not answer.

        Returns False when stopped while waiting; raises ConfigError on a wrong schema.
        """
        failures = 0
        while True:
            try:
                await db.check_schema(engine)
            except errors.DatabaseError as exc:
                failures += 1
                self.ok, self.error = False, str(exc)
                delay = retry_delay(failures)
                log.warning("database not reachable at start (%s); retrying in %gs", exc, delay)
                if await stopped_within(delay):
                    log.info("stopped before the database answered")
                    return False
                continue
            self.ok, self.error = True, None
            with contextlib.suppress(errors.DatabaseError, TimeoutError):
                await self._observe(engine)
            return True

    async def _observe(self, engine: AsyncEngine) -> None:
        """One probe: the database answers, and when each project last succeeded."""
        async with asyncio.timeout(DB_CHECK_TIMEOUT), store.connect(engine) as conn:
            found = await store.last_successes(conn, list(self._project_ids()))
        for pid, when in found.items():
            mine = self.last_success.get(pid)
            if mine is None or (when is not None and when > mine):
                self.last_success[pid] = when
        self._metrics.data.set_last_success(found)

    async def monitor(
        self, engine: AsyncEngine, *, stopping: Callable[[], bool], on_back: Callable[[], None]
    ) -> None:
        """Probe the database forever: every few seconds, with backoff while it is away.

        `on_back` runs when the database answers again after a failure.
        """
        failures = 0
        while not stopping():
            try:
                await self._observe(engine)
            except (errors.DatabaseError, TimeoutError) as exc:
                failures += 1
                self.failed(exc)
                delay = retry_delay(failures)
            else:
                if not self.ok:
                    log.info("the database answers again; syncing the due projects now")
                    self.ok, self.error = True, None
                    on_back()
                failures = 0
                delay = min(PROBE_SECONDS, self._interval)
            self._metrics.database_up.set(1 if self.ok else 0)
            self.wake.clear()
            await wait_event(self.wake, delay)

    def failed(self, exc: BaseException) -> None:
        """A database error (or timeout) met by a sync or a probe: syncs wait until it answers."""
        description = describe(exc)
        if self.ok:
            log.warning("the database does not answer (%s); syncs wait until it does", description)
            self.wake.set()
        self.ok, self.error = False, description

    async def count_transitions(
        self, project: settings_module.Project, result: runs.RunResult
    ) -> None:
        """After a run that changed statuses: count its transitions for /metrics."""
        engine = self.engine
        if engine is None or result.run_id is None or result.counts.transitions == 0:
            return
        try:
            async with asyncio.timeout(DB_CHECK_TIMEOUT), store.connect(engine) as conn:
                await self._metrics.count_transitions(conn, result)
        except (errors.DatabaseError, TimeoutError) as exc:
            with logs.context(project_id=project.project_id, run_id=result.run_id):
                log.warning("could not count the status transitions of the run: %s", describe(exc))

    async def refresh_counts(self) -> None:
        """Before a scrape: the snapshot counts, re-read when older than a few seconds."""
        view = self._metrics.data
        engine = self.engine
        if engine is None or not self.ok:
            return
        read_at = view.by_status_read_at
        fresh = read_at is not None and time.monotonic() - read_at < SNAPSHOT_COUNTS_CACHE
        if fresh and not self.counts_dirty:
            return
        self.counts_dirty = False
        try:
            async with asyncio.timeout(DB_CHECK_TIMEOUT), store.connect(engine) as conn:
                await view.refresh_by_status(conn)
        except (errors.DatabaseError, TimeoutError) as exc:
            self.failed(exc)
