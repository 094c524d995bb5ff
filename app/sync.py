"""The sync of one project (get → transform → load → cleanup) and of many in parallel.

A full run gets every page (the next one fetched while the current one is loaded), transforms
and loads each (runs.Run.load_page), then applies the deletion rule (deletion.cleanup).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app import client as client_module
from app import deletion, errors, hotlane, logs, runs, store
from app import settings as settings_module
from app.runs import Progress, ProgressHook, RunResult, process_owner

log = logging.getLogger("app.sync")

# A listing that asks for more pages than this many times its first total is running away.
RUNAWAY_FACTOR = 4


class Syncer:
    """Syncs projects into the database through one Workspace client."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        client: client_module.WorkspaceClient,
        settings: settings_module.Settings,
        on_progress: ProgressHook | None = None,
        on_finished: Callable[[RunResult], None] | None = None,
    ) -> None:
        self._resources = runs.Resources(engine=engine, client=client, settings=settings)
        self._settings = self._resources.settings
        # Listing pages in flight or waiting to be loaded, process-wide (see _get): at least one
        # per project synced at once, and all of SNAPSYNC_MAX_CONCURRENT_REQUESTS for one.
        self._pages_ahead = asyncio.Semaphore(
            max(settings.max_concurrent_requests, settings.max_concurrent_projects)
        )
        self._on_progress = on_progress
        self._on_finished = on_finished

    async def sync_all(
        self, projects: Sequence[settings_module.Project], *, wait_for_lock: bool = True
    ) -> list[RunResult]:
        """Sync every project, at most SNAPSYNC_MAX_CONCURRENT_PROJECTS at once."""
        gate = asyncio.Semaphore(self._settings.max_concurrent_projects)

        async def one(project: settings_module.Project) -> RunResult:
            async with gate:
                return await self.sync_project(project, wait_for_lock=wait_for_lock)

        return list(await asyncio.gather(*(one(p) for p in projects)))

    async def sync_project(
        self, project: settings_module.Project, *, wait_for_lock: bool = True
    ) -> RunResult:
        """One full sync of one project; never raises for the project's own failures."""
        started = time.monotonic()
        result = RunResult(project_id=project.project_id, status="failed")
        with logs.context(project_id=project.project_id):
            try:
                async with runs.locked(self._resources, project, wait=wait_for_lock) as run:
                    if run is None:
                        result.status = "skipped"
                        result.error = "another process is syncing this project"
                        return result
                    await self._run(run, result)
            except errors.DatabaseError as exc:
                result.error = str(exc)
                log.error("sync failed: %s", exc)
            finally:
                result.seconds = time.monotonic() - started
                if self._on_finished is not None:
                    self._on_finished(result)
        return result

    async def poll_in_flight(self, project: settings_module.Project) -> RunResult | None:
        """The hot lane (see app.hotlane): re-read only the project's in-flight snapshots."""
        return await hotlane.poll_in_flight(self._resources, project)

    async def _run(self, run: runs.Run, result: RunResult) -> None:
        """Start the run's row, sync, and close the row with the outcome."""
        pid = run.project.project_id
        run.counts = result.counts
        listing_started = datetime.now(UTC)
        clock = time.monotonic()
        async with run.transaction() as conn:
            await store.ensure_project(conn, pid, run.project.region)
            abandoned = await store.abandon_stale_runs(conn, pid)
            run.run_id = await store.start_run(
                conn, project_id=pid, started_at=listing_started, owner=process_owner()
            )
        result.run_id = run.run_id
        with logs.context(run_id=run.run_id):
            if abandoned:
                log.warning("marked %d unfinished earlier run(s) abandoned", abandoned)
            log.info("sync started")
            try:
                await self._sync(run, listing_started)
            except asyncio.CancelledError:
                result.error = "interrupted: the process was asked to stop before the sync finished"
                await asyncio.shield(run.finish("failed", result.error))
                raise
            except errors.ProjectError as exc:
                result.error = str(exc)
            except errors.DatabaseError as exc:
                result.error = f"database error: {exc}"
            except Exception as exc:
                log.exception("unexpected error")
                result.error = f"unexpected {type(exc).__name__}: {exc}"
            if run.defer_coverage:
                await self._fill_coverage(run)
            result.retries = run.stats.retries
            status = "failed" if result.error else "succeeded"
            await run.finish(status, result.error)
            result.status = status
            seconds = time.monotonic() - clock
            if result.error:
                log.error("sync failed after %.2fs: %s", seconds, result.error)
                return
            log.info(
                "sync succeeded in %.2fs: pages=%d seen=%d inserted=%d updated=%d deleted=%d "
                "transitions=%d rejected=%d requests=%d retries=%d",
                seconds,
                run.counts.pages,
                run.counts.snapshots_seen,
                run.counts.inserted,
                run.counts.updated,
                run.counts.deleted,
                run.counts.transitions,
                run.counts.rejected,
                run.stats.requests,
                run.stats.retries,
            )

    async def _fill_coverage(self, run: runs.Run) -> None:
        """A first sync that ended before its cleanup still covers the desktops it wrote; if the
        database refuses now, the next sync of the project (a first sync again) does."""
        try:
            async with run.transaction() as conn:
                await run.fill_coverage(conn)
        except errors.DatabaseError as exc:
            log.warning("could not fill the coverage of the desktops written: %s", exc)

    async def _sync(self, run: runs.Run, listing_started: datetime) -> None:
        """get → transform → load, page by page; then the cleanup (the deletion rule)."""
        async with run.transaction() as conn:
            run.known = await store.load_known_state(conn, run.project.project_id)
        run.defer_coverage = run.known.last_listing_at is None
        listing = deletion.Listing(run.known.hashes)
        async with contextlib.aclosing(self._get(run, listing)) as pages:
            async for page in pages:
                await run.load_page(page, listing.see)
                self._progress(run, listing)
        run.counts.api_total_count = listing.last_total
        run.counts.complete = True
        await deletion.cleanup(run, listing, started_at=listing_started)

    async def _get(
        self, run: runs.Run, listing: deletion.Listing
    ) -> AsyncGenerator[client_module.Page, None]:
        """Every page of the listing, each handed on as soon as it has arrived; PagingError
        when the API's paging is broken or runs away.

        The first page alone tells `total_count`; the pages it announces are then requested
        with up to SNAPSYNC_MAX_CONCURRENT_REQUESTS in flight or waiting, a new one each time
        one is handed on. Each of them also holds one of the process's `_pages_ahead`, so the
        pages held beyond those being loaded stay bounded however many projects run; a listing
        holding none always gets one (as before, every project keeps a page coming).
        Pages are handed on in the order they arrived, not by offset: what a page says was
        observed when it arrived, and a snapshot listed twice must end with its newer
        observation written last (the Listing's bookkeeping does not depend on the order).
        Past the first total (a listing that grew) the pages follow one at a time, each asked
        for when the page before it says more follow, as a sequential listing would.
        """
        pid = run.project.project_id
        limit = self._settings.page_size
        width = self._settings.max_concurrent_requests
        budget = self._pages_ahead
        pending: set[asyncio.Task[client_module.Page]] = set()
        arrived: list[client_module.Page] = []
        held = 0  # pages of this listing holding one of the budget: pending or arrived
        planned_end = 1  # the first page; then the offsets below the smallest total seen
        next_offset = 0  # the lowest offset not requested yet
        extend = False  # the page at next_offset is wanted beyond the planned end
        first_total: int | None = None

        async def fill() -> None:
            nonlocal held, next_offset, extend
            while (next_offset < planned_end or extend) and held < width:
                if held and budget.locked():
                    return  # the pages held keep this listing going; others wait for one
                await budget.acquire()
                held += 1
                pending.add(asyncio.create_task(run.list_page(next_offset, limit)))
                next_offset += limit
                extend = False

        try:
            await fill()
            while pending or arrived:
                if not arrived:
                    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    pending.difference_update(done)
                    arrived.extend(_results(done))
                    arrived.sort(key=lambda p: p.fetched_at, reverse=True)
                page = arrived.pop()
                held -= 1
                budget.release()
                run.counts.pages += 1
                listing.listed(page.total_count)
                if first_total is None:
                    first_total = planned_end = page.total_count
                # A page saying the listing shrank stops the requests beyond its end (those in
                # flight are still read); with one page at a time, as a sequential listing stops.
                planned_end = min(planned_end, page.total_count)
                offset = page.offset
                if not page.items and offset < page.total_count:
                    raise errors.PagingError(
                        f"project {pid}: empty page at offset {offset} although total_count "
                        f"is {page.total_count}; the API's paging is broken"
                    )
                following = offset + limit
                if following == next_offset and following < page.total_count:
                    if following > RUNAWAY_FACTOR * (first_total + limit):
                        raise errors.PagingError(
                            f"project {pid}: still paging at offset {following} while the first "
                            f"page said total_count {first_total}; the API's paging ran away"
                        )
                    extend = True
                await fill()
                yield page
        finally:
            for _ in range(held):
                budget.release()
            for task in pending:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*pending, return_exceptions=True)

    def _progress(self, run: runs.Run, listing: deletion.Listing) -> None:
        if self._on_progress is None:
            return
        counts = run.counts
        limit = self._settings.page_size
        expected = -(-listing.last_total // limit) if listing.last_total else counts.pages
        self._on_progress(
            Progress(
                project_id=run.project.project_id,
                pages=counts.pages,
                pages_expected=max(expected, counts.pages),
                snapshots_seen=counts.snapshots_seen,
                transitions=counts.transitions,
            )
        )


def _results(done: set[asyncio.Task[client_module.Page]]) -> list[client_module.Page]:
    """The pages of finished requests; the first failure raised (every one retrieved)."""
    failures = [exc for task in done if (exc := task.exception()) is not None]
    if failures:
        raise failures[0]
    return [task.result() for task in done]
