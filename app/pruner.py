"""The daemon's retention: app/retention.py applied beside the scheduler's jobs.

A minute after start (or the interval, when shorter), then every SNAPSYNC_PRUNE_INTERVAL, until
the daemon stops. Every replica may run it: batches take their rows with SKIP LOCKED.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from app import coverage, dbwatch, errors, lifecycle, retention, store

log = logging.getLogger("app.daemon")


class Pruner:
    """Runs the prune on its interval while the database answers, as one of the daemon's tasks."""

    def __init__(
        self,
        *,
        policy: Callable[[], retention.Policy],
        interval: float,
        watch: dbwatch.DatabaseWatch,
        tasks: lifecycle.Lifecycle,
    ) -> None:
        self._policy = policy
        self._interval = interval
        self._watch = watch
        self._tasks = tasks

    async def loop(self) -> None:
        """Prune on the interval until the daemon stops."""
        interval = self._interval
        if await self._tasks.stopped_within(min(interval, 60.0)):
            return
        while True:
            await self.prune_once()
            if await self._tasks.stopped_within(interval):
                return

    async def prune_once(self) -> None:
        """Apply the retention settings in small batches (app/retention.py)."""
        tasks = self._tasks
        engine = self._watch.engine
        if tasks.stopping or not self._watch.ok or engine is None:
            return
        with tasks.tracked("retention"):
            try:
                with store.database_errors():
                    await retention.prune(
                        engine,
                        self._policy(),
                        refresh=coverage.refresh,
                        stopping=lambda: tasks.stopping,
                    )
            except errors.DatabaseError as exc:
                log.warning("retention failed, will try again: %s", exc)
