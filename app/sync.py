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

    async def _sync(self, run: runs.Run, listing_started: datetime) -> None:
        """get → transform → load, page by page; then the cleanup (the deletion rule)."""
        async with run.transaction() as conn:
            run.known = await store.load_known_state(conn, run.project.project_id)
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
        """Every page of the listing in order, the next one fetched while this one is loaded;
        PagingError when the API's paging is broken or runs away."""
        pid = run.project.project_id
        limit = self._settings.page_size
        offset = 0
        first_total: int | None = None
        next_page: asyncio.Task[client_module.Page] | None
        next_page = asyncio.create_task(run.list_page(0, limit))
        try:
            while next_page is not None:
                page = await next_page
                next_page = None
                run.counts.pages += 1
                listing.listed(page.total_count)
                if first_total is None:
                    first_total = page.total_count
                if not page.items and offset < page.total_count:
                    raise errors.PagingError(
                        f"project {pid}: empty page at offset {offset} although total_count "
                        f"is {page.total_count}; the API's paging is broken"
                    )
                offset += limit
                if offset < page.total_count:
                    if offset > RUNAWAY_FACTOR * (first_total + limit):
                        raise errors.PagingError(
                            f"project {pid}: still paging at offset {offset} while the first "
                            f"page said total_count {first_total}; the API's paging ran away"
                        )
                    next_page = asyncio.create_task(run.list_page(offset, limit))
                yield page
        finally:
            if next_page is not None:
                next_page.cancel()
                with contextlib.suppress(BaseException):
                    await next_page

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
