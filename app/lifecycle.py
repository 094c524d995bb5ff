"""The daemon's running tasks and its way down.

Every sync, hot-lane poll and prune counts among the running tasks while it runs. A stop (a call
of `request_stop`, or SIGTERM/SIGINT) starts no new one; the running ones get the grace period,
and a second signal or the end of the grace period interrupts them (their runs end as failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from app import dbwatch

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

log = logging.getLogger("app.daemon")

# After the grace period, how long cancelled syncs get to write their run rows.
CANCEL_TIMEOUT = 10.0


class Lifecycle:
    """The running tasks, the stop request, and the shutdown with its grace period."""

    def __init__(self, *, grace: float) -> None:
        self.grace = grace
        self.active: set[asyncio.Task[Any]] = set()
        self.stop_requested = asyncio.Event()
        self.interrupt = asyncio.Event()
        self.stopping = False
        """Set once the shutdown began: no new sync starts."""
        self._scheduler_stopped = False

    def request_stop(self) -> None:
        self.stop_requested.set()

    async def stopped_within(self, seconds: float) -> bool:
        """Wait `seconds` or until a stop is requested; return whether it was."""
        await dbwatch.wait_event(self.stop_requested, seconds)
        return self.stop_requested.is_set()

    @contextlib.contextmanager
    def handling_signals(self, enabled: bool) -> Iterator[None]:
        """SIGTERM and SIGINT stop (a second one interrupts) while inside, when `enabled`."""
        if not enabled:
            yield
            return
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.on_signal, signum)
        try:
            yield
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if not self.stop_requested.is_set():
            log.info(
                "received %s: stopping (running syncs get up to %gs; send it again to "
                "interrupt them now)",
                name,
                self.grace,
            )
            self.request_stop()
        else:
            log.warning("received %s again: interrupting the running syncs now", name)
            self.interrupt.set()

    @contextlib.contextmanager
    def tracked(self, what: str) -> Iterator[None]:
        """Count the task among the running ones, log its error; an interruption by the shutdown
        after the grace period ends it quietly (the Syncer closed a sync's run row)."""
        task = asyncio.current_task()
        assert task is not None
        self.active.add(task)
        try:
            yield
        except asyncio.CancelledError:
            if not self.stopping:
                raise
        except Exception:
            log.exception("unexpected error in %s", what)
        finally:
            self.active.discard(task)

    async def drain(self, scheduler: AsyncIOScheduler) -> None:
        """Start no new sync, give running ones the grace period, interrupt them, and stop
        the scheduler."""
        self.stopping = True
        scheduler.pause()
        running = {t for t in self.active if not t.done()}
        if running:
            log.info("waiting up to %gs for %d running sync(s) to finish", self.grace, len(running))
            pending = await self._wait_or_interrupt(running, self.grace)
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
        self._stop_scheduler(scheduler)

    async def abort_leftovers(self, scheduler: AsyncIOScheduler | None) -> None:
        """Stop the scheduler and cancel what still runs (also when the daemon is cancelled)."""
        self._stop_scheduler(scheduler)
        left = {t for t in self.active if not t.done()}
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=CANCEL_TIMEOUT)

    def _stop_scheduler(self, scheduler: AsyncIOScheduler | None) -> None:
        # AsyncIOScheduler.shutdown() takes effect on the next loop iteration: call it once.
        if scheduler is not None and not self._scheduler_stopped:
            self._scheduler_stopped = True
            scheduler.shutdown(wait=False)

    async def _wait_or_interrupt(
        self, tasks: set[asyncio.Task[Any]], seconds: float
    ) -> set[asyncio.Task[Any]]:
        """Wait for `tasks` for `seconds` or until a second signal; return those still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        interrupt = asyncio.ensure_future(self.interrupt.wait())
        pending = set(tasks)
        try:
            while pending and not self.interrupt.is_set():
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
