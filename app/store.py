"""The SQL that matters (the page upsert with its history, the deletion rule's update, run rows,
locks, the schedule) and the boundary where driver errors become DatabaseError.

Every statement here is written once and read as SQL. Functions take an AsyncConnection from
`connect` or `advisory_lock` and leave transaction control to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import announce, coverage, db, errors, items, rollup

# Advisory lock namespaces (first key): "one sync of a project at a time" (the Syncer's), and
# the daemon's schedule lock, held while it decides whether a project is due and syncs it.
PROJECT_LOCK_CLASS = 0x534E_4150  # "SNAP"
SCHEDULE_LOCK_CLASS = 0x534E_5343  # "SNSC"
_TRANSIENT = sorted(items.TRANSIENT_STATUSES)

# -- the boundary -------------------------------------------------------------------------

# What the driver and the pool raise when PostgreSQL is away or refuses a statement.
_DRIVER_ERRORS = (SQLAlchemyError, OSError)


class DataRefused(errors.DatabaseError):
    """PostgreSQL refused a value of the statement (SQLSTATE class 22 or 54), not the connection."""


@contextlib.contextmanager
def database_errors(context: str = "") -> Iterator[None]:
    """The boundary: a driver error raised inside (awaits too) becomes errors.DatabaseError
    (DataRefused for a refused value): `context` and one line without URLs or credentials."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        orig = exc.orig if isinstance(exc, DBAPIError) else None
        code = getattr(orig, "sqlstate", None) or getattr(
            getattr(orig, "__cause__", None), "sqlstate", None
        )
        refused = isinstance(code, str) and code[:2] in ("22", "54")
        raise (DataRefused if refused else errors.DatabaseError)(
            context + db.describe_db_error(exc)
        ) from None


@contextlib.asynccontextmanager
async def connect(engine: AsyncEngine, *, begin: bool = False) -> AsyncIterator[AsyncConnection]:
    """A pooled connection (in a transaction committed on exit if `begin`), inside the boundary."""
    with database_errors():
        async with engine.begin() if begin else engine.connect() as conn:
            yield conn


@contextlib.asynccontextmanager
async def advisory_lock(
    engine: AsyncEngine, lock_class: int, project_id: str
) -> AsyncIterator[AsyncConnection | None]:
    """Hold a session-level advisory lock (PROJECT_LOCK_CLASS or SCHEDULE_LOCK_CLASS) of the
    project on a connection of its own until exit, or None: another session holds it."""
    key = {"cls": lock_class, "project_id": project_id}
    with database_errors():
        conn = await engine.connect()
    try:
        with database_errors():
            held = await conn.scalar(
                text("SELECT pg_try_advisory_lock(:cls, hashtext(:project_id))"), key
            )
            await conn.commit()  # a session-level lock outlives the transaction
        if not held:
            yield None
            return
        try:
            yield conn
        finally:
            await asyncio.shield(_unlock(conn, key))
    finally:
        with contextlib.suppress(*_DRIVER_ERRORS):
            await asyncio.shield(conn.close())


async def _unlock(conn: AsyncConnection, key: dict[str, Any]) -> None:
    """Release the lock (rolling back what the holder left open), or drop the connection."""
    try:
        await conn.rollback()
        await conn.execute(text("SELECT pg_advisory_unlock(:cls, hashtext(:project_id))"), key)
        await conn.commit()
    except _DRIVER_ERRORS:
        with contextlib.suppress(*_DRIVER_ERRORS):
            await conn.invalidate()


# A CTE of UPSERT_PAGE and MARK_MISSING, after `history`: each new history row closes the
# snapshot's open one (left_by IS NULL) with the closing facts, in the same statement, so the
# views read periods and durations from the row instead of pairing rows with a window. The
# UPDATE sees the table as it was before the statement, so the rows just written stay open.
# The array keeps the lookups on ix_snapshot_status_history_snapshot whatever the statistics.
# It returns what the hourly rollup (app/rollup.py ROLLUP_CTES, which follows) counts.
CLOSE_HISTORY = """closed AS (
    UPDATE snapshot_status_history AS c SET
        next_id = n.id,
        next_status = n.to_status,
        left_after = n.previous_observed_at,
        left_by = n.observed_at
    FROM history AS n
    WHERE c.project_id = :project_id
      AND c.snapshot_id = ANY(ARRAY(SELECT snapshot_id FROM history))
      AND c.snapshot_id = n.snapshot_id
      AND c.left_by IS NULL
    RETURNING c.project_id, c.to_status, c.observed_at, c.previous_observed_at, c.left_after,
              c.left_by
)"""

UPSERT_PAGE = text(
    """
WITH incoming AS (
    -- One jsonb array of the items as the API sent them (validated in Python, so every
    -- conversion below succeeds) and their hashes. Times without an offset are read in the
    -- session's time zone, which snapsync's connections set to UTC (db.make_engine).
    SELECT i.raw ->> 'snapshot_id' AS snapshot_id,
           i.raw ->> 'snapshot_name' AS snapshot_name,
           i.raw ->> 'desktop_id' AS desktop_id,
           i.raw ->> 'desktop_name' AS desktop_name,
           i.raw ->> 'desktop_sid' AS desktop_sid,
           i.raw ->> 'desktop_pool_id' AS desktop_pool_id,
           CAST(i.raw ->> 'is_system_disk' AS boolean) AS is_system_disk,
           i.raw ->> 'status' AS status,
           CAST(i.raw ->> 'process' AS smallint) AS process,
           i.raw ->> 'description' AS description,
           CAST(NULLIF(i.raw ->> 'create_time', '') AS timestamptz) AS create_time,
           i.raw ->> 'create_type' AS create_type,
           CAST(NULLIF(i.raw ->> 'last_restore_time', '') AS timestamptz) AS last_restore_time,
           i.raw ->> 'restore_fail_reason' AS restore_fail_reason,
           i.raw,
           i.content_hash
    FROM ROWS FROM (
        jsonb_array_elements(CAST(:items AS jsonb)),
        unnest(CAST(:content_hash AS bigint[]))
    ) AS i(raw, content_hash)
),
old AS (
    SELECT r.snapshot_id, r.status, r.deleted_at, r.missed_listings, r.last_seen_at,
           r.status_seen_at, r.raw, r.desktop_id
    FROM snapshot_records AS r
    -- An array, not a join: a join lets the planner hash the project's every row when its
    -- statistics are stale (a first sync), which made each page cost O(project size).
    -- :absent says the caller knows none of the ids is stored (KnownState.no_deleted_rows): then
    -- there is nothing to look up.
    WHERE NOT CAST(:absent AS boolean)
      AND r.project_id = :project_id
      AND r.snapshot_id = ANY(ARRAY(SELECT i.snapshot_id FROM incoming AS i))
),
upserted AS (
    INSERT INTO snapshot_records AS r (
        project_id, snapshot_id, snapshot_name, desktop_id, desktop_name, desktop_sid,
        desktop_pool_id, is_system_disk, status, process, description, create_time,
        create_type, last_restore_time, restore_fail_reason, raw, content_hash,
        first_seen_at, last_seen_at, last_changed_at, deleted_at, missed_listings, last_run_id,
        status_seen_at
    )
    SELECT :project_id, i.snapshot_id, i.snapshot_name, i.desktop_id, i.desktop_name,
           i.desktop_sid, i.desktop_pool_id, i.is_system_disk, i.status, i.process,
           i.description, i.create_time, i.create_type, i.last_restore_time,
           i.restore_fail_reason, i.raw, i.content_hash,
           :observed_at, :observed_at, :observed_at, NULL, 0, :run_id, :observed_at
    FROM incoming AS i
    ON CONFLICT (project_id, snapshot_id) DO UPDATE SET
        snapshot_name = EXCLUDED.snapshot_name,
        desktop_id = EXCLUDED.desktop_id,
        desktop_name = EXCLUDED.desktop_name,
        desktop_sid = EXCLUDED.desktop_sid,
        desktop_pool_id = EXCLUDED.desktop_pool_id,
        is_system_disk = EXCLUDED.is_system_disk,
        status = EXCLUDED.status,
        process = EXCLUDED.process,
        description = EXCLUDED.description,
        create_time = EXCLUDED.create_time,
        create_type = EXCLUDED.create_type,
        last_restore_time = EXCLUDED.last_restore_time,
        restore_fail_reason = EXCLUDED.restore_fail_reason,
        raw = EXCLUDED.raw,
        content_hash = EXCLUDED.content_hash,
        last_seen_at = GREATEST(r.last_seen_at, EXCLUDED.last_seen_at),
        last_changed_at = CASE WHEN r.raw IS DISTINCT FROM EXCLUDED.raw
                               THEN EXCLUDED.last_changed_at ELSE r.last_changed_at END,
        deleted_at = NULL,
        missed_listings = 0,
        last_run_id = EXCLUDED.last_run_id,
        status_seen_at = CASE WHEN r.status IS DISTINCT FROM EXCLUDED.status
                              THEN EXCLUDED.status_seen_at
                              ELSE GREATEST(r.status_seen_at, EXCLUDED.status_seen_at) END
    WHERE r.content_hash IS DISTINCT FROM EXCLUDED.content_hash
       OR r.deleted_at IS NOT NULL
       OR r.missed_listings <> 0
    RETURNING r.snapshot_id, r.status, r.process, r.raw, r.desktop_id, r.create_time
),
history AS (
    INSERT INTO snapshot_status_history (
        project_id, snapshot_id, from_status, to_status, observed_at, previous_observed_at,
        process, sync_run_id, create_time
    )
    SELECT :project_id, u.snapshot_id,
           CASE WHEN o.snapshot_id IS NULL THEN NULL
                WHEN o.deleted_at IS NOT NULL THEN 'deleted'
                ELSE o.status END,
           u.status,
           :observed_at,
           CASE WHEN o.snapshot_id IS NULL THEN NULL
                WHEN o.deleted_at IS NULL AND o.missed_listings = 0
                THEN GREATEST(o.last_seen_at, o.status_seen_at,
                              CAST(:last_listing_at AS timestamptz))
                ELSE GREATEST(o.last_seen_at, o.status_seen_at) END,
           u.process, :run_id,
           -- A first sighting carries the creation's start (ix_snapshot_status_history_created).
           CASE WHEN o.snapshot_id IS NULL THEN u.create_time END
    FROM upserted AS u
    LEFT JOIN old AS o ON o.snapshot_id = u.snapshot_id
    WHERE o.snapshot_id IS NULL OR o.deleted_at IS NOT NULL OR o.status IS DISTINCT FROM u.status
    ORDER BY u.snapshot_id
    RETURNING id, project_id, snapshot_id, from_status, to_status, observed_at,
              previous_observed_at
),
"""
    + CLOSE_HISTORY
    + ",\n"
    + rollup.ROLLUP_CTES
    + """,
desktops AS (
    -- The rows of desktop_snapshot_coverage: a desktop is new when a snapshot of it is.
    INSERT INTO snapshot_desktops (project_id, desktop_id)
    SELECT DISTINCT :project_id, u.desktop_id
    FROM upserted AS u
    LEFT JOIN old AS o ON o.snapshot_id = u.snapshot_id
    WHERE u.desktop_id IS NOT NULL
      AND (o.snapshot_id IS NULL OR o.desktop_id IS DISTINCT FROM u.desktop_id)
    ON CONFLICT DO NOTHING
)
SELECT
    (SELECT count(*) FROM upserted AS u LEFT JOIN old AS o ON o.snapshot_id = u.snapshot_id
      WHERE o.snapshot_id IS NULL) AS inserted,
    (SELECT count(*) FROM upserted AS u JOIN old AS o ON o.snapshot_id = u.snapshot_id
      WHERE o.deleted_at IS NOT NULL OR o.raw IS DISTINCT FROM u.raw) AS updated,
    (SELECT count(*) FROM history) AS transitions,
    -- The desktops whose coverage the rows written may change (a moved snapshot: both).
    (SELECT COALESCE(array_agg(DISTINCT x.desktop_id), '{}') FROM (
        SELECT u.desktop_id FROM upserted AS u
        UNION ALL
        SELECT o.desktop_id FROM upserted AS u JOIN old AS o ON o.snapshot_id = u.snapshot_id
     ) AS x WHERE x.desktop_id IS NOT NULL) AS desktops,
    """
    + announce.ANNOUNCE_TRANSITIONS
    + """ AS announced
"""
)

MARK_MISSING = text(
    """
WITH missed AS (
    UPDATE snapshot_records AS r SET
        missed_listings = r.missed_listings + 1,
        last_seen_at = CASE
            WHEN r.missed_listings = 0 AND CAST(:last_listing_at AS timestamptz) IS NOT NULL
            THEN GREATEST(r.last_seen_at, CAST(:last_listing_at AS timestamptz))
            ELSE r.last_seen_at END,
        deleted_at = CASE WHEN r.missed_listings + 1 >= :threshold
                          THEN CAST(:observed_at AS timestamptz) END,
        last_run_id = :run_id
    WHERE r.project_id = :project_id
      AND r.snapshot_id = ANY(CAST(:snapshot_ids AS text[]))
      AND r.deleted_at IS NULL
    RETURNING r.snapshot_id, r.status, r.process, r.deleted_at, r.last_seen_at,
              r.status_seen_at, r.desktop_id
),
history AS (
    INSERT INTO snapshot_status_history (
        project_id, snapshot_id, from_status, to_status, observed_at, previous_observed_at,
        process, sync_run_id
    )
    SELECT :project_id, m.snapshot_id, m.status, 'deleted', :observed_at,
           GREATEST(m.last_seen_at, m.status_seen_at), m.process, :run_id
    FROM missed AS m
    WHERE m.deleted_at IS NOT NULL
    ORDER BY m.snapshot_id
    RETURNING id, project_id, snapshot_id, from_status, to_status, observed_at,
              previous_observed_at
),
"""
    + CLOSE_HISTORY
    + ",\n"
    + rollup.ROLLUP_CTES
    + """
SELECT (SELECT count(*) FROM missed) AS missed, (SELECT count(*) FROM history) AS deleted,
    (SELECT COALESCE(array_agg(DISTINCT m.desktop_id), '{}') FROM missed AS m
     WHERE m.desktop_id IS NOT NULL) AS desktops,
    """
    + announce.ANNOUNCE_TRANSITIONS
    + """ AS announced
"""
)


@dataclass(frozen=True)
class UpsertCounts:
    inserted: int
    updated: int
    transitions: int


def _page_json(snapshots: Sequence[items.Snapshot]) -> str:
    """The items as one JSON array, joined from the bytes validation already made."""
    return (b"[%b]" % b",".join([s.json for s in snapshots])).decode("utf-8")


async def upsert_snapshots(
    conn: AsyncConnection,
    *,
    project_id: str,
    run_id: int,
    observed_at: datetime,
    last_listing_at: datetime | None,
    snapshots: Sequence[items.Snapshot],
    absent: bool = False,
    refresh_coverage: bool = True,
) -> UpsertCounts:
    """Write new and changed snapshots and the history of their status changes, in one statement,
    then the coverage rows of their desktops (coverage.refresh; unless `refresh_coverage` is
    false: a project's first sync fills them once, coverage.fill_project).

    The caller holds the project's lock, so `old` (read in the same statement) is the truth
    about the previous state. `absent`: the caller knows that none of the snapshots is stored
    (the lookup of old rows is skipped; a row that exists anyway is still updated, but its
    history would read as a first sighting).
    """
    if not snapshots:
        return UpsertCounts(0, 0, 0)
    row = (
        await conn.execute(
            UPSERT_PAGE,
            {
                "items": _page_json(snapshots),
                "content_hash": [s.content_hash for s in snapshots],
                "absent": absent,
                "project_id": project_id,
                "run_id": run_id,
                "observed_at": observed_at,
                "last_listing_at": last_listing_at,
            },
        )
    ).one()
    if refresh_coverage:
        await coverage.refresh(conn, [(project_id, d) for d in row.desktops])
    return UpsertCounts(inserted=row.inserted, updated=row.updated, transitions=row.transitions)


async def mark_missing(
    conn: AsyncConnection,
    *,
    project_id: str,
    run_id: int,
    observed_at: datetime,
    last_listing_at: datetime | None,
    threshold: int,
    snapshot_ids: Sequence[str],
    refresh_coverage: bool = True,
) -> tuple[int, int]:
    """Count one more complete listing without these snapshots; delete those at the threshold.

    Returns (rows counted as missed, rows marked deleted).
    """
    if not snapshot_ids:
        return 0, 0
    row = (
        await conn.execute(
            MARK_MISSING,
            {
                "project_id": project_id,
                "run_id": run_id,
                "observed_at": observed_at,
                "last_listing_at": last_listing_at,
                "threshold": threshold,
                "snapshot_ids": list(snapshot_ids),
            },
        )
    ).one()
    if refresh_coverage:
        await coverage.refresh(conn, [(project_id, d) for d in row.desktops])
    return int(row.missed), int(row.deleted)


@dataclass(frozen=True)
class KnownState:
    """What the database holds for a project's live snapshots, as the sync needs it."""

    # snapshot_id -> content hash, or None when the row must be rewritten when seen
    # (it was missing from a complete listing).
    hashes: dict[str, int | None] = field(default_factory=dict)
    last_listing_at: datetime | None = None
    # The project has no deleted rows, so `hashes` covers every row it has (the sync adds what
    # it writes): an id missing from it is missing from the table too.
    no_deleted_rows: bool = False


async def load_known_state(conn: AsyncConnection, project_id: str) -> KnownState:
    """The live rows of a project (ids and hashes) and the start of its newest complete listing."""
    # One round trip; two arrays rather than 50,000 rows: the driver builds the lists in C.
    ids, digests, last, has_deleted = (
        await conn.execute(
            text(
                "SELECT COALESCE(array_agg(snapshot_id), '{}'), "
                "COALESCE(array_agg(CASE WHEN missed_listings = 0 THEN content_hash END), '{}'), "
                "(SELECT last_listing_at FROM projects WHERE project_id = :project_id), "
                "EXISTS (SELECT 1 FROM snapshot_records WHERE project_id = :project_id "
                "AND deleted_at IS NOT NULL) "
                "FROM snapshot_records WHERE project_id = :project_id AND deleted_at IS NULL"
            ),
            {"project_id": project_id},
        )
    ).one()
    hashes: dict[str, int | None] = dict(zip(ids, digests, strict=True))
    return KnownState(hashes=hashes, last_listing_at=last, no_deleted_rows=not has_deleted)


async def lookup_keys(
    conn: AsyncConnection, project_id: str, snapshot_ids: Sequence[str]
) -> list[tuple[str, str | None, str | None]]:
    """(snapshot_id, desktop_id, snapshot_name) of the given rows, to re-check them at the API."""
    result = await conn.execute(
        text(
            "SELECT snapshot_id, desktop_id, snapshot_name FROM snapshot_records "
            "WHERE project_id = :project_id AND snapshot_id = ANY(CAST(:ids AS text[]))"
        ),
        {"project_id": project_id, "ids": list(snapshot_ids)},
    )
    return [(row.snapshot_id, row.desktop_id, row.snapshot_name) for row in result]


async def desktop_sizes(
    conn: AsyncConnection, project_id: str, desktop_ids: Sequence[str]
) -> dict[str, int]:
    """How many live rows each of the desktops holds: what a listing filtered by them shows, as
    far as the database knows (to size the batches of re-checks)."""
    result = await conn.execute(
        text(
            "SELECT desktop_id, count(*) AS n FROM snapshot_records "
            "WHERE project_id = :project_id AND desktop_id = ANY(CAST(:ids AS text[])) "
            "AND deleted_at IS NULL GROUP BY desktop_id"
        ),
        {"project_id": project_id, "ids": list(desktop_ids)},
    )
    return {row.desktop_id: int(row.n) for row in result}


async def ensure_project(conn: AsyncConnection, project_id: str, region: str) -> None:
    """Create the project's row on its first sync; keep its region current."""
    await conn.execute(
        text(
            "INSERT INTO projects (project_id, region) VALUES (:project_id, :region) "
            "ON CONFLICT (project_id) DO UPDATE SET region = EXCLUDED.region "
            "WHERE projects.region IS DISTINCT FROM EXCLUDED.region"
        ),
        {"project_id": project_id, "region": region},
    )


async def record_discovery(
    conn: AsyncConnection,
    *,
    finished_at: datetime,
    problem: str | None,
    served: Sequence[dict[str, Any]] = (),
    skipped: Sequence[dict[str, Any]] = (),
) -> None:
    """A discovery ended: with IAM's list (`problem` None) the `served` projects (id, region,
    at) are marked discovered, a row for each new one, and `skipped` (id, region, reason,
    detail, at) replace the previous ones; without it, only its time and `problem` are kept."""
    if problem is None:
        if served:
            await conn.execute(
                text(
                    "INSERT INTO projects (project_id, region, discovered_at) "
                    "VALUES (:id, :region, :at) ON CONFLICT (project_id) DO UPDATE SET "
                    "discovered_at = EXCLUDED.discovered_at, region = EXCLUDED.region, "
                    "updated_at = now()"
                ),
                list(served),
            )
        await conn.execute(text("DELETE FROM skipped_projects"))
        if skipped:
            await conn.execute(
                text(
                    "INSERT INTO skipped_projects (project_id, region, reason, detail, "
                    "skipped_at) VALUES (:id, :region, :reason, :detail, :at) "
                    # Another replica's discovery may have written the same ones meanwhile.
                    "ON CONFLICT (project_id) DO UPDATE SET region = EXCLUDED.region, "
                    "reason = EXCLUDED.reason, detail = EXCLUDED.detail, "
                    "skipped_at = EXCLUDED.skipped_at"
                ),
                list(skipped),
            )
    await conn.execute(
        text(
            "INSERT INTO discovery_state (id, ran_at, succeeded_at, problem) "
            "VALUES (1, :at, CASE WHEN CAST(:problem AS text) IS NULL THEN "
            "CAST(:at AS timestamptz) END, :problem) "
            "ON CONFLICT (id) DO UPDATE SET ran_at = EXCLUDED.ran_at, problem = EXCLUDED.problem, "
            "succeeded_at = coalesce(EXCLUDED.succeeded_at, discovery_state.succeeded_at)"
        ),
        {"at": finished_at, "problem": problem},
    )


async def record_complete_listing(
    conn: AsyncConnection,
    *,
    project_id: str,
    run_id: int,
    started_at: datetime,
    api_total_count: int,
) -> None:
    """The listing that started at `started_at` saw every live snapshot of the project."""
    await conn.execute(
        text(
            "UPDATE projects SET last_listing_at = :started_at, last_listing_run_id = :run_id, "
            "api_total_count = :total, updated_at = now() WHERE project_id = :project_id"
        ),
        {
            "project_id": project_id,
            "run_id": run_id,
            "started_at": started_at,
            "total": api_total_count,
        },
    )


# -- the hot lane -------------------------------------------------------------------------


@dataclass(frozen=True)
class InFlight:
    """A stored snapshot whose creation or restore was running when last seen."""

    snapshot_id: str
    status: str
    content_hash: int
    desktop_id: str | None
    snapshot_name: str | None


async def in_flight_counts(conn: AsyncConnection) -> dict[str, int]:
    """Live snapshots in a transient status, per project (only projects that have some)."""
    result = await conn.execute(
        text(
            "SELECT project_id, count(*) FROM snapshot_records "
            "WHERE status = ANY(CAST(:transient AS text[])) AND deleted_at IS NULL "
            "GROUP BY project_id"
        ),
        {"transient": _TRANSIENT},
    )
    return {project_id: int(n) for project_id, n in result}


async def load_in_flight(conn: AsyncConnection, project_id: str) -> list[InFlight]:
    """The project's live snapshots in a transient status."""
    result = await conn.execute(
        text(
            "SELECT snapshot_id, status, content_hash, desktop_id, snapshot_name "
            "FROM snapshot_records WHERE project_id = :project_id "
            "AND status = ANY(CAST(:transient AS text[])) AND deleted_at IS NULL"
        ),
        {"project_id": project_id, "transient": _TRANSIENT},
    )
    return [InFlight(*row) for row in result]


async def claim_hot_poll(
    conn: AsyncConnection, *, project_id: str, now: datetime, min_gap: float
) -> tuple[bool, datetime | None]:
    """Record a poll of the project's in-flight snapshots unless one (by any replica) was
    made less than `min_gap` seconds ago; whether it was recorded, and when the project's
    newest complete listing started."""
    row = (
        await conn.execute(
            text(
                "UPDATE projects SET last_hot_poll_at = CAST(:now AS timestamptz) "
                "WHERE project_id = :project_id AND (last_hot_poll_at IS NULL "
                "OR last_hot_poll_at <= CAST(:now AS timestamptz) - make_interval(secs => :gap)) "
                "RETURNING last_listing_at"
            ),
            {"project_id": project_id, "now": now, "gap": min_gap},
        )
    ).first()
    return row is not None, None if row is None else row.last_listing_at


async def touch_status_seen(
    conn: AsyncConnection, *, project_id: str, seen: dict[str, datetime]
) -> None:
    """Unchanged snapshots were observed again: remember when their status was last seen."""
    if not seen:
        return
    await conn.execute(
        text(
            "UPDATE snapshot_records AS r SET status_seen_at = GREATEST(r.status_seen_at, s.at) "
            "FROM unnest(CAST(:ids AS text[]), CAST(:ats AS timestamptz[])) AS s(id, at) "
            "WHERE r.project_id = :project_id AND r.snapshot_id = s.id "
            "AND r.snapshot_id = ANY(CAST(:ids AS text[]))"  # index lookups, whatever the stats
        ),
        {"project_id": project_id, "ids": list(seen), "ats": list(seen.values())},
    )


# -- runs and the schedule ----------------------------------------------------------------


async def newest_full_run_started(conn: AsyncConnection, project_id: str) -> datetime | None:
    """When the project's newest full run (by any process) started; None if it has none."""
    started: datetime | None = await conn.scalar(
        text(
            "SELECT started_at FROM sync_runs WHERE project_id = :project_id AND kind = 'full' "
            "ORDER BY started_at DESC LIMIT 1"
        ),
        {"project_id": project_id},
    )
    return started


async def last_successes(
    conn: AsyncConnection, project_ids: Sequence[str]
) -> dict[str, datetime | None]:
    """When each project's newest full run that succeeded finished (None: never)."""
    rows = await conn.execute(
        text(
            """
SELECT p.project_id, s.finished_at
FROM unnest(CAST(:project_ids AS text[])) AS p(project_id)
LEFT JOIN LATERAL (
    SELECT r.finished_at
    FROM sync_runs AS r
    WHERE r.project_id = p.project_id AND r.status = 'succeeded' AND r.kind = 'full'
    ORDER BY r.started_at DESC
    LIMIT 1
) AS s ON true
"""
        ),
        {"project_ids": list(project_ids)},
    )
    return {row[0]: row[1] for row in rows}


async def abandon_stale_runs(conn: AsyncConnection, project_id: str) -> int:
    """Runs still `running` while we hold the project's lock belong to a process that died."""
    result = await conn.execute(
        text(
            "UPDATE sync_runs SET status = 'abandoned', finished_at = now(), "
            "error = 'the process running this sync ended before finishing it "
            "(killed, crashed or lost its database connection)' "
            "WHERE project_id = :project_id AND status = 'running'"
        ),
        {"project_id": project_id},
    )
    return int(result.rowcount)


async def start_run(
    conn: AsyncConnection, *, project_id: str, started_at: datetime, owner: str, kind: str = "full"
) -> int:
    """Insert the run's row as `running` and return its id."""
    run_id = await conn.scalar(
        text(
            "INSERT INTO sync_runs (project_id, kind, started_at, status, owner) "
            "VALUES (:project_id, :kind, :started_at, 'running', :owner) RETURNING id"
        ),
        {"project_id": project_id, "kind": kind, "started_at": started_at, "owner": owner},
    )
    assert run_id is not None
    return int(run_id)


async def finish_run(
    conn: AsyncConnection,
    *,
    run_id: int,
    status: str,
    counts: dict[str, Any],
    error: str | None,
) -> None:
    """Close the run with its outcome and counts."""
    await conn.execute(
        text(
            "UPDATE sync_runs SET status = :status, finished_at = now(), complete = :complete, "
            "pages = :pages, requests = :requests, snapshots_seen = :snapshots_seen, "
            "inserted = :inserted, updated = :updated, unchanged = :unchanged, "
            "deleted = :deleted, transitions = :transitions, rejected = :rejected, "
            "api_total_count = :api_total_count, error = :error "
            "WHERE id = :run_id AND status = 'running'"
        ),
        {"run_id": run_id, "status": status, "error": error, **counts},
    )
