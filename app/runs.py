"""One run of one project: what it knows and counts, the lock it writes under, and the steps
every kind of run shares (get a page, transform it, load what changed, finish)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import client as client_module
from app import coverage, errors, items, store
from app import settings as settings_module

# The lines of a sync keep the logger name operators filter on.
log = logging.getLogger("app.sync")

LOCK_POLL_SECONDS = 0.5
# The API's largest page: the size of the small filtered listings (re-checks, hot polls).
FILTERED_PAGE_SIZE = 1000


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


def process_owner() -> str:
    """Who runs a sync, for operators reading `sync_runs.owner`."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class Resources:
    """What every run of a process uses: the database, the API client, the settings."""

    engine: AsyncEngine
    client: client_module.WorkspaceClient
    settings: settings_module.Settings


SeenCounter = Callable[[list[str], list[str], dict[str, int | None]], int]  # Listing.see


@contextlib.asynccontextmanager
async def locked(
    resources: Resources, project: settings_module.Project, *, wait: bool
) -> AsyncIterator[Run | None]:
    """A run of the project holding its advisory lock until exit; None when another process
    holds the lock and `wait` is false."""
    waited = False
    while True:
        lock = store.advisory_lock(resources.engine, store.PROJECT_LOCK_CLASS, project.project_id)
        async with lock as conn:
            if conn is not None:
                yield Run(resources, project, conn)
                return
        if not wait:
            yield None
            return
        if not waited:
            log.info("another process is syncing this project; waiting for it")
            waited = True
        await asyncio.sleep(LOCK_POLL_SECONDS)


@dataclass
class Run:
    """One run of one project: its id (None until a hot run has something to write), what is
    stored, what it counted, what its requests cost, and the connection holding its lock."""

    resources: Resources
    project: settings_module.Project
    # Every write goes through the lock's connection, one at a time: only while this session
    # holds the lock (if it dies, lock and write go together), with no pool checkout or check.
    conn: AsyncConnection
    run_id: int | None = None
    known: store.KnownState = field(default_factory=store.KnownState)
    counts: RunCounts = field(default_factory=RunCounts)
    stats: client_module.RequestStats = field(default_factory=client_module.RequestStats)
    gate: asyncio.Lock = field(default_factory=asyncio.Lock)
    # A first sync (the project never had a complete listing) leaves the coverage rows of the
    # desktops it writes to one fill of the project's desktops at its end (fill_coverage),
    # instead of recomputing a desktop on each page that holds one of its snapshots: in a first
    # sync that is every page, and most of PostgreSQL's work.
    defer_coverage: bool = False

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction on the lock's connection, inside the store's boundary."""
        if self.conn.closed:
            raise errors.DatabaseError(
                "lost the project's lock (the connection holding it is closed); the sync "
                "stopped before writing without it"
            )
        with store.database_errors():
            async with self.gate, self.conn.begin():
                yield self.conn

    async def list_page(
        self, offset: int, limit: int, filters: list[tuple[str, str]] | None = None
    ) -> client_module.Page:
        """Get: one page of the project's listing."""
        return await self.resources.client.list_page(
            self.project, offset=offset, limit=limit, filters=filters or (), stats=self.stats
        )

    def transform(self, page: client_module.Page, where: str) -> items.PageTriage:
        """Sort a page out against the known state (decoded exactly if an item to store holds a
        float, which may be an integer the fast decoder rounded); log and count the rejected."""
        sorted_out = items.triage(page.items, self.known.hashes)
        if sorted_out.holds_float and page.body is not None:
            sorted_out = items.triage(page.exact().items, self.known.hashes)
        for rejection in sorted_out.rejections:
            log.warning(
                "rejected item %d of %s (snapshot_id %s): %s",
                rejection.index,
                where,
                rejection.snapshot_id or "unknown",
                rejection.reason,
            )
        self.counts.rejected += len(sorted_out.rejections)
        return sorted_out

    async def load_page(
        self, page: client_module.Page, see: SeenCounter | None = None
    ) -> items.PageTriage:
        """Transform and load a page of a full run (a listing's, or a re-check's when `see` is
        None); return how it was sorted out."""
        sorted_out = self.transform(page, f"the page at offset {page.offset}")
        if see is not None:
            self.counts.snapshots_seen += see(
                sorted_out.ids, sorted_out.rejected_ids, self.known.hashes
            )
        self.counts.unchanged += len(sorted_out.ids) - len(sorted_out.changed)
        await self.load(page, sorted_out.changed)
        return sorted_out

    async def load(self, page: client_module.Page, changed: list[items.Snapshot]) -> None:
        """Write what changed, as observed when the page was fetched (if PostgreSQL refuses the
        batch, item by item, rejecting the bad ones); the known hashes follow what was written."""
        if not changed:
            return
        assert self.run_id is not None
        known = self.known
        try:
            async with self.transaction() as conn:
                got = await store.upsert_snapshots(
                    conn,
                    project_id=self.project.project_id,
                    run_id=self.run_id,
                    observed_at=page.fetched_at,
                    last_listing_at=known.last_listing_at,
                    snapshots=changed,
                    absent=known.no_deleted_rows
                    and not any(s.snapshot_id in known.hashes for s in changed),
                    refresh_coverage=not self.defer_coverage,
                )
        except store.DataRefused as exc:
            if len(changed) > 1:
                for snapshot in changed:
                    await self.load(page, [snapshot])
                return
            self.counts.rejected += 1
            log.warning(
                "rejected snapshot %s: PostgreSQL refused it: %s", changed[0].snapshot_id[:128], exc
            )
            return
        counts = self.counts
        counts.inserted += got.inserted
        counts.updated += got.updated
        counts.transitions += got.transitions
        counts.unchanged += len(changed) - got.inserted - got.updated
        for snapshot in changed:
            known.hashes[snapshot.snapshot_id] = snapshot.content_hash

    async def fill_coverage(self, conn: AsyncConnection) -> None:
        """The deferred coverage of a first sync, in the caller's transaction (on the lock's
        connection): every desktop of the project, so whatever the run wrote is covered."""
        if self.defer_coverage:
            filled = await coverage.fill_project(conn, self.project.project_id)
            log.debug("filled the coverage of %d desktop(s)", filled)
            self.defer_coverage = False

    async def finish(self, status: str, error: str | None, *, count_requests: bool = True) -> None:
        """Close the run's row; if the database cannot, the next sync marks the run abandoned."""
        assert self.run_id is not None
        if count_requests:
            self.counts.requests = self.stats.requests
        try:
            async with store.connect(self.resources.engine, begin=True) as conn:
                await store.finish_run(
                    conn,
                    run_id=self.run_id,
                    status=status,
                    counts=asdict(self.counts),
                    error=error,
                )
        except errors.DatabaseError as exc:
            log.error("could not record the end of run %d: %s", self.run_id, exc)
