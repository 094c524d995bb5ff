"""The sync of one project (get → transform → load → cleanup) and of many in parallel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import client as client_module
from app import db, errors, items, store
from app import settings as settings_module

log = logging.getLogger("app.sync")

LOCK_POLL_SECONDS = 0.5
RECHECK_CONCURRENCY = 4
MAX_RECHECK_QUERIES = 2000
RECHECK_PAGE_SIZE = 1000
# Names per request when the hot lane looks up snapshots that left the in-flight listing
# (`snapshot_names`, a repeated query key in the current API version).
NAMES_PER_LOOKUP = 50
# A listing that asks for more pages than this many times its first total is running away.
RUNAWAY_FACTOR = 4


@dataclass
class RunCounts:
    """The counters of one run, as stored in `sync_runs`."""

    pages: int = 0
    requests: int = 0
    snapshots_seen: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    transitions: int = 0
    rejected: int = 0
    api_total_count: int | None = None
    complete: bool = False


@dataclass
class RunResult:
    """How one project's sync ended."""

    project_id: str
    status: str  # succeeded | failed | skipped
    run_id: int | None = None
    kind: str = "full"
    counts: RunCounts = field(default_factory=RunCounts)
    error: str | None = None
    seconds: float = 0.0
    retries: int = 0

    def summary(self) -> str:
        """The one line `snapsync sync` prints for this project."""
        c = self.counts
        line = (
            f"{self.project_id}: {self.status} run={self.run_id or '-'} pages={c.pages} "
            f"seen={c.snapshots_seen} inserted={c.inserted} updated={c.updated} "
            f"deleted={c.deleted} transitions={c.transitions} rejected={c.rejected} "
            f"seconds={self.seconds:.2f}"
        )
        if self.error:
            line += f" error={self.error}"
        return line


@dataclass(frozen=True)
class Progress:
    """Where a running sync is, for live displays and metrics."""

    project_id: str
    pages: int
    pages_expected: int | None
    snapshots_seen: int
    transitions: int


ProgressHook = Callable[[Progress], None]


class ListingInconsistent(Exception):
    """Raised internally when the listing cannot prove absence."""


class _Listing:
    """Bookkeeping of one pass over a project's pages.

    Tracks what is still unseen rather than what was seen: the set starts as the stored live
    ids (the same string objects as the known state, so it costs only its table) and shrinks
    page by page; what is left at the end is the deletion rule's candidates. Ids that were not
    stored when the listing started are kept in `fresh`.
    """

    def __init__(self, known: dict[str, int | None]) -> None:
        self.unseen: set[str] = set(known)
        self.stored = len(self.unseen)
        self.fresh: set[str] = set()
        self.totals: set[int] = set()
        self.duplicates = 0
        self.last_total = 0

    @property
    def distinct(self) -> int:
        """Distinct snapshots listed so far."""
        return self.stored - len(self.unseen) + len(self.fresh)

    def see(self, ids: list[str], rejected_ids: list[str], known: dict[str, int | None]) -> int:
        """Count a page's ids (`known` as it was before the page's writes); return how many were
        seen for the first time in this listing. Rejected ids count as listed, not as seen."""
        unseen, fresh = self.unseen, self.fresh
        if rejected_ids:
            unseen.difference_update(rejected_ids)
            fresh.update(sid for sid in rejected_ids if sid not in known)
        before = len(unseen)
        unseen.difference_update(ids)
        first = before - len(unseen)
        # Not stored at the start, not written earlier in this listing (then it is in `known`
        # now) and not listed before without being written (in `fresh`): a new sighting.
        new = {sid for sid in ids if sid not in known and sid not in fresh}
        fresh.update(new)
        first += len(new)
        self.duplicates += len(ids) - first
        return first

    def signals(self) -> list[str]:
        found = []
        if len(self.totals) > 1:
            found.append(f"total_count changed while paging ({sorted(self.totals)})")
        if self.duplicates:
            found.append(f"{self.duplicates} snapshot(s) appeared on two pages")
        if self.distinct != self.last_total:
            found.append(f"{self.distinct} distinct snapshots seen, total_count {self.last_total}")
        return found


@dataclass
class _Writer:
    """The connection holding a project's advisory lock. Every write of the project's sync goes
    through it, one at a time: a write can only happen while this session holds the lock (if
    the connection dies, the lock and the write go with it), and no write pays for a pool
    checkout or a separate lock check."""

    conn: AsyncConnection
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)


def process_owner() -> str:
    """Who runs a sync, for operators reading `sync_runs.owner`."""
    return f"{socket.gethostname()}:{os.getpid()}"


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
        self._engine = engine
        self._client = client
        self._settings = settings
        self._owner = process_owner()
        self._on_progress = on_progress
        self._on_finished = on_finished
        # The connection holding each project's advisory lock, while its sync runs.
        self._writers: dict[str, _Writer] = {}

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
        try:
            async with self._project_lock(project, wait=wait_for_lock) as locked:
                if not locked:
                    result.status = "skipped"
                    result.error = "another process is syncing this project"
                    return result
                await self._run(project, result)
        except errors.DatabaseError as exc:
            result.error = str(exc)
            log.error("sync failed: %s", exc, extra={"project_id": project.project_id})
        finally:
            result.seconds = time.monotonic() - started
            if self._on_finished is not None:
                self._on_finished(result)
        return result

    @contextlib.asynccontextmanager
    async def _project_lock(
        self, project: settings_module.Project, *, wait: bool
    ) -> AsyncIterator[bool]:
        """Hold the project's advisory lock on a dedicated connection for the whole run."""
        try:
            conn = await self._engine.connect()
        except (SQLAlchemyError, OSError) as exc:
            raise errors.DatabaseError(db.describe_db_error(exc)) from None
        try:
            waited = False
            while True:
                locked = await store.try_lock_project(conn, project.project_id)
                await conn.commit()  # a session-level lock outlives the transaction
                if locked:
                    break
                if not wait:
                    yield False
                    return
                if not waited:
                    log.info(
                        "another process is syncing this project; waiting for it",
                        extra={"project_id": project.project_id},
                    )
                    waited = True
                await asyncio.sleep(LOCK_POLL_SECONDS)
            self._writers[project.project_id] = _Writer(conn)
            try:
                yield True
            finally:
                self._writers.pop(project.project_id, None)
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await asyncio.shield(self._unlock(conn, project.project_id))
        except (SQLAlchemyError, OSError) as exc:
            raise errors.DatabaseError(db.describe_db_error(exc)) from None
        finally:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await asyncio.shield(conn.close())

    @staticmethod
    async def _unlock(conn: AsyncConnection, project_id: str) -> None:
        await conn.rollback()
        await store.unlock_project(conn, project_id)
        await conn.commit()

    @contextlib.asynccontextmanager
    async def _writing(self, project_id: str) -> AsyncIterator[AsyncConnection]:
        """A transaction on the connection that holds the project's lock (see _Writer)."""
        writer = self._writers.get(project_id)
        if writer is None or writer.conn.closed:
            raise errors.DatabaseError(
                "lost the project's lock (the connection holding it is closed); the sync "
                "stopped before writing without it"
            )
        async with writer.gate, writer.conn.begin():
            yield writer.conn

    async def _run(self, project: settings_module.Project, result: RunResult) -> None:
        pid = project.project_id
        extra: dict[str, Any] = {"project_id": pid}
        listing_started = datetime.now(UTC)
        clock = time.monotonic()
        try:
            async with self._writing(pid) as conn:
                await store.ensure_project(conn, pid, project.region)
                abandoned = await store.abandon_stale_runs(conn, pid)
                run_id = await store.start_run(
                    conn, project_id=pid, started_at=listing_started, owner=self._owner
                )
        except (SQLAlchemyError, OSError) as exc:
            raise errors.DatabaseError(db.describe_db_error(exc)) from None
        result.run_id = run_id
        extra["run_id"] = run_id
        if abandoned:
            log.warning("marked %d unfinished earlier run(s) abandoned", abandoned, extra=extra)
        log.info("sync started", extra=extra)
        stats = client_module.RequestStats()
        counts = result.counts
        try:
            await self._sync(project, run_id, listing_started, counts, stats)
        except asyncio.CancelledError:
            result.error = "interrupted: the process was asked to stop before the sync finished"
            await asyncio.shield(self._finish(run_id, "failed", counts, stats, result.error))
            raise
        except errors.ProjectError as exc:
            result.error = str(exc)
        except errors.DatabaseError as exc:
            result.error = f"database error: {exc}"
        except (SQLAlchemyError, OSError) as exc:
            result.error = "database error: " + db.describe_db_error(exc)
        except Exception as exc:
            log.exception("unexpected error", extra=extra)
            result.error = f"unexpected {type(exc).__name__}: {exc}"
        result.retries = stats.retries
        status = "failed" if result.error else "succeeded"
        await self._finish(run_id, status, counts, stats, result.error)
        result.status = status
        if result.error:
            log.error(
                "sync failed after %.2fs: %s", time.monotonic() - clock, result.error, extra=extra
            )
        else:
            log.info(
                "sync succeeded in %.2fs: pages=%d seen=%d inserted=%d updated=%d deleted=%d "
                "transitions=%d rejected=%d requests=%d retries=%d",
                time.monotonic() - clock,
                counts.pages,
                counts.snapshots_seen,
                counts.inserted,
                counts.updated,
                counts.deleted,
                counts.transitions,
                counts.rejected,
                stats.requests,
                stats.retries,
                extra=extra,
            )

    async def _finish(
        self,
        run_id: int,
        status: str,
        counts: RunCounts,
        stats: client_module.RequestStats | None,
        error: str | None,
    ) -> None:
        if stats is not None:
            counts.requests = stats.requests
        try:
            async with self._engine.begin() as conn:
                await store.finish_run(
                    conn, run_id=run_id, status=status, counts=asdict(counts), error=error
                )
        except (SQLAlchemyError, OSError) as exc:
            # The next sync of this project marks the run abandoned.
            log.error("could not record the end of run %d: %s", run_id, db.describe_db_error(exc))

    async def _sync(
        self,
        project: settings_module.Project,
        run_id: int,
        listing_started: datetime,
        counts: RunCounts,
        stats: client_module.RequestStats,
    ) -> None:
        pid = project.project_id
        async with self._writing(pid) as conn:
            known = await store.load_known_state(conn, pid)
        listing = _Listing(known.hashes)
        limit = self._settings.page_size
        offset = 0
        first_total: int | None = None
        next_page: asyncio.Task[client_module.Page] | None = self._fetch(project, 0, stats)
        try:
            while next_page is not None:
                page = await next_page
                next_page = None
                counts.pages += 1
                listing.totals.add(page.total_count)
                listing.last_total = page.total_count
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
                    # Fetch the next page while this one is written.
                    next_page = self._fetch(project, offset, stats)
                await self._load_page(
                    project, run_id, page, known, listing, counts, page.fetched_at
                )
                self._progress(pid, counts, listing, limit)
        finally:
            if next_page is not None:
                next_page.cancel()
                with contextlib.suppress(BaseException):
                    await next_page
        counts.api_total_count = listing.last_total
        counts.complete = True
        await self._cleanup(project, run_id, listing_started, known, listing, counts, stats)

    def _fetch(
        self, project: settings_module.Project, offset: int, stats: client_module.RequestStats
    ) -> asyncio.Task[client_module.Page]:
        return asyncio.create_task(
            self._client.list_page(
                project, offset=offset, limit=self._settings.page_size, stats=stats
            )
        )

    def _progress(self, project_id: str, counts: RunCounts, listing: _Listing, limit: int) -> None:
        if self._on_progress is None:
            return
        expected = -(-listing.last_total // limit) if listing.last_total else counts.pages
        self._on_progress(
            Progress(
                project_id=project_id,
                pages=counts.pages,
                pages_expected=max(expected, counts.pages),
                snapshots_seen=counts.snapshots_seen,
                transitions=counts.transitions,
            )
        )

    async def _load_page(
        self,
        project: settings_module.Project,
        run_id: int,
        page: client_module.Page,
        known: store.KnownState,
        listing: _Listing | None,
        counts: RunCounts,
        observed_at: datetime,
    ) -> items.PageTriage:
        """Validate a page, write what changed; return how it was sorted out."""
        pid = project.project_id
        sorted_out = _triage(page, known)
        for rejection in sorted_out.rejections:
            log.warning(
                "rejected item %d of the page at offset %d (snapshot_id %s): %s",
                rejection.index,
                page.offset,
                rejection.snapshot_id or "unknown",
                rejection.reason,
                extra={"project_id": pid, "run_id": run_id},
            )
        counts.rejected += len(sorted_out.rejections)
        if listing is not None:
            counts.snapshots_seen += listing.see(
                sorted_out.ids, sorted_out.rejected_ids, known.hashes
            )
        changed = sorted_out.changed
        counts.unchanged += len(sorted_out.ids) - len(changed)
        if changed:
            written = await self._write(pid, run_id, observed_at, known, changed, counts)
            for snapshot in written:
                known.hashes[snapshot.snapshot_id] = snapshot.content_hash
        return sorted_out

    async def poll_in_flight(self, project: settings_module.Project) -> RunResult | None:
        """The hot lane: re-read only the project's in-flight snapshots.

        Lists the transient statuses the project has in the database, then looks up those that
        left the list by name (or desktop) to learn their new status. What changed goes through
        the same upsert and history path as a full sync, under a `hot` run created only when
        there is something to write; unchanged ones get `status_seen_at`, which tightens the
        window of their next change. Never marks anything deleted. Returns None when there was
        nothing to poll (no request made), the project was busy, or another replica polled it
        less than a hot interval ago.
        """
        pid = project.project_id
        started = time.monotonic()
        async with self._project_lock(project, wait=False) as locked:
            if not locked:
                return None
            now = datetime.now(UTC)
            try:
                async with self._writing(pid) as conn:
                    in_flight = await store.load_in_flight(conn, pid)
                    if not in_flight or not await store.claim_hot_poll(
                        conn,
                        project_id=pid,
                        now=now,
                        min_gap=self._settings.hot_interval * 0.8,
                    ):
                        return None
                    last_listing_at = await conn.scalar(
                        text("SELECT last_listing_at FROM projects WHERE project_id = :p"),
                        {"p": pid},
                    )
            except (SQLAlchemyError, OSError) as exc:
                raise errors.DatabaseError(db.describe_db_error(exc)) from None
            result = RunResult(project_id=pid, status="succeeded", kind="hot")
            known = store.KnownState(
                hashes={row.snapshot_id: row.content_hash for row in in_flight},
                last_listing_at=last_listing_at,
            )
            try:
                await self._hot_poll(project, in_flight, known, result)
            except asyncio.CancelledError:
                if result.run_id is not None:
                    result.error = "interrupted: the process was asked to stop"
                    await asyncio.shield(
                        self._finish(result.run_id, "failed", result.counts, None, result.error)
                    )
                raise
            except (errors.ProjectError, errors.DatabaseError) as exc:
                result.status, result.error = "failed", str(exc)
                log.warning("hot poll failed: %s", exc, extra={"project_id": pid})
                if result.run_id is not None:
                    await self._finish(result.run_id, "failed", result.counts, None, result.error)
            result.seconds = time.monotonic() - started
            return result

    async def _hot_poll(
        self,
        project: settings_module.Project,
        in_flight: list[store.InFlight],
        known: store.KnownState,
        result: RunResult,
    ) -> None:
        pid = project.project_id
        stats = client_module.RequestStats()
        pages: list[client_module.Page] = []
        for status in sorted({row.status for row in in_flight}):
            pages.extend(await self._read_all(project, [("status", status)], stats))
        listed = {
            item.get("snapshot_id")
            for page in pages
            for item in page.items
            if isinstance(item, dict)
        }
        gone = [row for row in in_flight if row.snapshot_id not in listed]
        names = sorted({row.snapshot_name for row in gone if row.snapshot_name})
        by_desktop = [r for r in gone if not r.snapshot_name]
        try:
            for start in range(0, len(names), NAMES_PER_LOOKUP):
                chunk = names[start : start + NAMES_PER_LOOKUP]
                pages.extend(
                    await self._read_all(project, [("snapshot_names", n) for n in chunk], stats)
                )
        except errors.ApiError as exc:
            if exc.status != 400:
                raise
            # An API version without the list filters: one lookup per desktop instead.
            by_desktop = gone
        for desktop in sorted({r.desktop_id for r in by_desktop if r.desktop_id}):
            pages.extend(await self._read_all(project, [("desktop_id", desktop)], stats))
        counts = result.counts
        seen: dict[str, datetime] = {}
        for page in pages:
            sorted_out = _triage(page, known)
            counts.pages += 1
            counts.rejected += len(sorted_out.rejections)
            for rejection in sorted_out.rejections:
                log.warning(
                    "rejected item %d of a hot poll (snapshot_id %s): %s",
                    rejection.index,
                    rejection.snapshot_id or "unknown",
                    rejection.reason,
                    extra={"project_id": pid},
                )
            changed_ids = {s.snapshot_id for s in sorted_out.changed}
            for sid in sorted_out.ids:
                if sid not in changed_ids and sid in known.hashes:
                    seen[sid] = page.fetched_at
            counts.snapshots_seen += len(sorted_out.ids)
            if not sorted_out.changed:
                continue
            if result.run_id is None:
                result.run_id = await self._start_hot_run(project)
            written = await self._write(
                pid, result.run_id, page.fetched_at, known, sorted_out.changed, counts
            )
            for snapshot in written:
                known.hashes[snapshot.snapshot_id] = snapshot.content_hash
        counts.requests = stats.requests
        result.retries = stats.retries
        try:
            async with self._writing(pid) as conn:
                await store.touch_status_seen(conn, project_id=pid, seen=seen)
        except (SQLAlchemyError, OSError) as exc:
            raise errors.DatabaseError(db.describe_db_error(exc)) from None
        if result.run_id is not None:
            await self._finish(result.run_id, "succeeded", counts, stats, None)
            log.info(
                "hot poll wrote %d change(s), %d transition(s) from %d request(s)",
                counts.inserted + counts.updated,
                counts.transitions,
                stats.requests,
                extra={"project_id": pid, "run_id": result.run_id},
            )

    async def _start_hot_run(self, project: settings_module.Project) -> int:
        try:
            async with self._engine.begin() as conn:
                return await store.start_run(
                    conn,
                    project_id=project.project_id,
                    started_at=datetime.now(UTC),
                    owner=self._owner,
                    kind="hot",
                )
        except (SQLAlchemyError, OSError) as exc:
            raise errors.DatabaseError(db.describe_db_error(exc)) from None

    async def _read_all(
        self,
        project: settings_module.Project,
        filters: list[tuple[str, str]],
        stats: client_module.RequestStats,
    ) -> list[client_module.Page]:
        """Every page of a small filtered listing (hot polls: a listing that shifts while it is
        read may miss an item, which the next poll or full sync sees; nothing is deleted)."""
        pages: list[client_module.Page] = []
        offset = 0
        while True:
            page = await self._client.list_page(
                project, offset=offset, limit=RECHECK_PAGE_SIZE, filters=filters, stats=stats
            )
            pages.append(page)
            offset += RECHECK_PAGE_SIZE
            if not page.items or offset >= page.total_count or len(pages) >= 100:
                return pages

    async def _write(
        self,
        project_id: str,
        run_id: int,
        observed_at: datetime,
        known: store.KnownState,
        snapshots: list[items.Snapshot],
        counts: RunCounts,
    ) -> list[items.Snapshot]:
        """Upsert a batch; if PostgreSQL refuses it, retry item by item and reject the bad ones."""
        try:
            async with self._writing(project_id) as conn:
                got = await store.upsert_snapshots(
                    conn,
                    project_id=project_id,
                    run_id=run_id,
                    observed_at=observed_at,
                    last_listing_at=known.last_listing_at,
                    snapshots=snapshots,
                    absent=known.complete
                    and not any(s.snapshot_id in known.hashes for s in snapshots),
                )
            self._add(counts, got, len(snapshots))
            return snapshots
        except DBAPIError as exc:
            if len(snapshots) == 1 or not _is_data_error(exc):
                if _is_data_error(exc):
                    counts.rejected += 1
                    log.warning(
                        "rejected snapshot %s: PostgreSQL refused it: %s",
                        snapshots[0].snapshot_id[:128],
                        db.describe_db_error(exc),
                        extra={"project_id": project_id, "run_id": run_id},
                    )
                    return []
                raise
        written: list[items.Snapshot] = []
        for snapshot in snapshots:
            written.extend(
                await self._write(project_id, run_id, observed_at, known, [snapshot], counts)
            )
        return written

    @staticmethod
    def _add(counts: RunCounts, got: store.UpsertCounts, batch: int) -> None:
        counts.inserted += got.inserted
        counts.updated += got.updated
        counts.transitions += got.transitions
        counts.unchanged += batch - got.inserted - got.updated

    async def _cleanup(
        self,
        project: settings_module.Project,
        run_id: int,
        listing_started: datetime,
        known: store.KnownState,
        listing: _Listing,
        counts: RunCounts,
        stats: client_module.RequestStats,
    ) -> None:
        """The deletion rule, on a complete listing only.

        Offset paging over a list that changes (or reorders ties) can skip live snapshots, so
        every snapshot missing from the listing is looked up again by its desktop (or name)
        before it counts as missed; one that cannot be looked up counts only when the listing
        showed no sign of shifting.
        """
        pid = project.project_id
        extra = {"project_id": pid, "run_id": run_id}
        candidates = list(listing.unseen)
        signals = listing.signals()
        if signals:
            log.info("listing shifted while paging: %s", "; ".join(signals), extra=extra)
        confirmed: list[str] = []
        if candidates:
            confirmed = await self._recheck(
                project, run_id, known, candidates, counts, stats, trusted=not signals
            )
        observed_at = datetime.now(UTC)
        try:
            async with self._writing(pid) as conn:
                if confirmed:
                    _, deleted = await store.mark_missing(
                        conn,
                        project_id=pid,
                        run_id=run_id,
                        observed_at=observed_at,
                        last_listing_at=known.last_listing_at,
                        threshold=self._settings.delete_after_misses,
                        snapshot_ids=confirmed,
                    )
                    counts.deleted += deleted
                    counts.transitions += deleted
                await store.record_complete_listing(
                    conn,
                    project_id=pid,
                    run_id=run_id,
                    started_at=listing_started,
                    api_total_count=listing.last_total,
                )
        except (SQLAlchemyError, OSError) as exc:
            raise errors.DatabaseError(db.describe_db_error(exc)) from None
        for sid in confirmed:
            known.hashes[sid] = None

    async def _recheck(
        self,
        project: settings_module.Project,
        run_id: int,
        known: store.KnownState,
        candidates: list[str],
        counts: RunCounts,
        stats: client_module.RequestStats,
        *,
        trusted: bool,
    ) -> list[str]:
        """Look the missing snapshots up by desktop (or name); return those still absent."""
        pid = project.project_id
        async with self._writing(pid) as conn:
            keys = await store.lookup_keys(conn, pid, candidates)
        groups: dict[tuple[str, str], list[str]] = defaultdict(list)
        unverifiable: list[str] = []
        for sid, desktop_id, name in keys:
            if desktop_id:
                groups[("desktop_id", desktop_id)].append(sid)
            elif name:
                groups[("snapshot_name", name)].append(sid)
            else:
                unverifiable.append(sid)
        confirmed: list[str] = list(unverifiable) if trusted else []
        gate = asyncio.Semaphore(RECHECK_CONCURRENCY)
        queries = list(groups.items())[:MAX_RECHECK_QUERIES]
        if len(groups) > MAX_RECHECK_QUERIES:
            log.warning(
                "%d snapshots missing across %d desktops; re-checking the first %d now, "
                "the rest in later syncs",
                len(candidates),
                len(groups),
                MAX_RECHECK_QUERIES,
                extra={"project_id": pid, "run_id": run_id},
            )

        async def check(key: tuple[str, str], sids: list[str]) -> list[str]:
            async with gate:
                try:
                    found = await self._list_filtered(project, run_id, known, [key], counts, stats)
                except errors.ProjectError as exc:
                    log.warning(
                        "could not re-check %d missing snapshot(s) by %s: %s",
                        len(sids),
                        key[0],
                        exc,
                        extra={"project_id": pid, "run_id": run_id},
                    )
                    return []
            return [sid for sid in sids if sid not in found]

        for absent in await asyncio.gather(*(check(key, sids) for key, sids in queries)):
            confirmed.extend(absent)
        return confirmed

    async def _list_filtered(
        self,
        project: settings_module.Project,
        run_id: int,
        known: store.KnownState,
        filters: list[tuple[str, str]],
        counts: RunCounts,
        stats: client_module.RequestStats,
    ) -> set[str]:
        """Read a small filtered listing in one request, store what it shows, return its ids.

        One page of the API's maximum size: a listing that needs a second page could skip items
        between its pages like any other, so it proves nothing and raises instead.
        """
        page = await self._client.list_page(
            project, offset=0, limit=RECHECK_PAGE_SIZE, filters=filters, stats=stats
        )
        sorted_out = await self._load_page(
            project, run_id, page, known, None, counts, page.fetched_at
        )
        if page.total_count > len(page.items):
            raise errors.PagingError(
                f"project {project.project_id}: {filters[0][0]} {filters[0][1]} holds "
                f"{page.total_count} snapshots, more than one page; cannot prove absence"
            )
        return {*sorted_out.ids, *sorted_out.rejected_ids}


def _triage(page: client_module.Page, known: store.KnownState) -> items.PageTriage:
    """Sort a page out against the known state; if an item to be stored holds a float (which
    may be an integer the fast decoder rounded), sort out the exactly decoded page instead."""
    sorted_out = items.triage(page.items, known.hashes)
    if sorted_out.holds_float and page.body is not None:
        sorted_out = items.triage(page.exact().items, known.hashes)
    return sorted_out


def _is_data_error(exc: DBAPIError) -> bool:
    """A statement refused for its data (class 22: bad value), not for the connection."""
    code = getattr(exc.orig, "sqlstate", None) or getattr(
        getattr(exc.orig, "__cause__", None), "sqlstate", None
    )
    # 22: a value PostgreSQL refuses; 54: a value too large for an index or a row.
    return isinstance(code, str) and code[:2] in ("22", "54")
