"""Retention: old sync runs and long-deleted snapshots (with their history) removed in batches.

Applied by the daemon on SNAPSYNC_PRUNE_INTERVAL and by `snapsync prune [--dry-run]`. Each batch
is its own short transaction of at most SNAPSYNC_PRUNE_BATCH_SIZE rows, taken with SKIP LOCKED,
so a sync or a query never waits for the prune for long. What goes is only what the settings
name: runs started more than SNAPSYNC_RETAIN_RUNS_DAYS ago (never a project's newest run, its
newest successful run, nor one still running); snapshots deleted more than
SNAPSYNC_RETAIN_DELETED_DAYS ago, with their history rows. Live snapshots and their history are
never touched. History rows keep their sync_run_id's run or lose it: the foreign key is ON DELETE
SET NULL, so a history row whose run was pruned stays, with sync_run_id NULL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app import rollup

log = logging.getLogger("snapsync.retention")

# Runs that may go: old, finished, not a project's newest nor its newest success. The keep set
# is read per batch from `projects` (two index probes per project); runs of a project without a
# `projects` row (none the sync writes) are left alone.
_OLD_RUNS = """
WITH keep AS (
    SELECT p.project_id, newest.id AS newest_id, ok.id AS success_id
    FROM projects AS p
    LEFT JOIN LATERAL (
        SELECT x.id FROM sync_runs AS x WHERE x.project_id = p.project_id
        ORDER BY x.started_at DESC, x.id DESC LIMIT 1
    ) AS newest ON true
    LEFT JOIN LATERAL (
        SELECT x.id FROM sync_runs AS x
        WHERE x.project_id = p.project_id AND x.status = 'succeeded'
        ORDER BY x.started_at DESC, x.id DESC LIMIT 1
    ) AS ok ON true
)
SELECT c.id
FROM sync_runs AS c
JOIN keep AS k ON k.project_id = c.project_id
WHERE c.started_at < CAST(:cutoff AS timestamptz)
  AND c.status <> 'running'
  AND c.id <> k.newest_id
  AND c.id IS DISTINCT FROM k.success_id
"""

PRUNE_RUNS = text(
    f"""
WITH doomed AS (
    SELECT d.id FROM sync_runs AS d
    WHERE d.id IN ({_OLD_RUNS} ORDER BY c.started_at LIMIT :batch)
    FOR UPDATE SKIP LOCKED
)
DELETE FROM sync_runs AS r
WHERE r.id = ANY(ARRAY(SELECT id FROM doomed))
RETURNING r.id
"""
)

COUNT_RUNS = text(f"SELECT count(*) FROM ({_OLD_RUNS}) AS c")

# Snapshots confirmed gone before the cutoff, by ix_snapshot_records_deleted_at; their history
# through ix_snapshot_status_history_snapshot (the LATERAL keeps it per snapshot), and its counts
# out of the hourly rollup (app/rollup.py UNROLL_CTES).
_GONE = """
SELECT r.project_id, r.snapshot_id FROM snapshot_records AS r
WHERE r.deleted_at IS NOT NULL AND r.deleted_at < CAST(:cutoff AS timestamptz)
"""

PRUNE_DELETED = text(
    f"""
WITH gone AS (
    {_GONE}
    ORDER BY r.deleted_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
),
history AS (
    DELETE FROM snapshot_status_history AS h
    WHERE h.id = ANY(ARRAY(
        SELECT x.id FROM gone AS g
        CROSS JOIN LATERAL (
            SELECT x.id FROM snapshot_status_history AS x
            WHERE x.project_id = g.project_id AND x.snapshot_id = g.snapshot_id
        ) AS x
    ))
    RETURNING h.project_id, h.from_status, h.to_status, h.observed_at, h.previous_observed_at,
              h.left_after, h.left_by
),
{rollup.UNROLL_CTES},
records AS (
    DELETE FROM snapshot_records AS s
    USING gone AS g
    WHERE s.project_id = g.project_id AND s.snapshot_id = g.snapshot_id
    RETURNING s.project_id, s.desktop_id
)
SELECT (SELECT count(*) FROM records) AS snapshots, (SELECT count(*) FROM history) AS history,
       -- The desktops whose coverage (snapshot_desktops) the batch changes.
       ARRAY(SELECT DISTINCT ARRAY[project_id, desktop_id] FROM records
             WHERE desktop_id IS NOT NULL) AS desktops,
       -- The rollup rows the batch left at zero (rollup.DROP_EMPTIED removes them).
       {rollup.EMPTIED} AS emptied
"""
)

COUNT_DELETED = text(
    f"""
SELECT count(*) AS snapshots,
       COALESCE(sum((SELECT count(*) FROM snapshot_status_history AS h
                     WHERE h.project_id = g.project_id AND h.snapshot_id = g.snapshot_id)), 0)
           AS history
FROM ({_GONE}) AS g
"""
)


# Recomputes the coverage of (project_id, desktop_id) pairs in the caller's transaction.
Refresh = Callable[[AsyncConnection, Sequence[tuple[str, str | None]]], Awaitable[int]]


@dataclass(frozen=True)
class Policy:
    """What retention keeps: None keeps for ever."""

    runs_days: float | None
    deleted_days: float | None
    batch_size: int = 1000
    pause: float = 0.05  # seconds between two batches, so others get the table in between


@dataclass
class Outcome:
    """What one pass removed (or, dry, would remove)."""

    dry_run: bool
    runs: int = 0
    snapshots: int = 0
    history: int = 0
    batches: int = 0
    seconds: float = 0.0
    runs_cutoff: datetime | None = None
    deleted_cutoff: datetime | None = None

    def lines(self, policy: Policy) -> list[str]:
        """For people: one line per kind of row, what went or would go."""
        verb = "would remove" if self.dry_run else "removed"
        if self.runs_cutoff is None:
            runs = "sync_runs: kept for ever (SNAPSYNC_RETAIN_RUNS_DAYS is empty)"
        else:
            runs = (
                f"sync_runs: {verb} {self.runs} run(s) started before "
                f"{_stamp(self.runs_cutoff)} ({policy.runs_days:g} days); each project's newest "
                "run and newest successful run are kept"
            )
        if self.deleted_cutoff is None:
            deleted = "deleted snapshots: kept for ever (SNAPSYNC_RETAIN_DELETED_DAYS is not set)"
        else:
            deleted = (
                f"deleted snapshots: {verb} {self.snapshots} snapshot(s) deleted before "
                f"{_stamp(self.deleted_cutoff)} ({policy.deleted_days:g} days), with "
                f"{self.history} history row(s)"
            )
        return [runs, deleted]


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cutoff(now: datetime, days: float | None) -> datetime | None:
    return None if days is None else now - timedelta(days=days)


async def _in_batches(
    conn: AsyncConnection,
    statement: TextClause,
    cutoff: datetime,
    policy: Policy,
    stopping: Callable[[], bool],
    history: Outcome | None = None,
    refresh: Refresh | None = None,
) -> tuple[int, int]:
    """Run `statement` one committed batch at a time until a batch comes back short; returns
    (rows removed, batches). PRUNE_DELETED also counts the history rows into `history`."""
    removed = batches = 0
    while not stopping():
        async with conn.begin():
            rows = (
                await conn.execute(statement, {"cutoff": cutoff, "batch": policy.batch_size})
            ).all()
            if history is not None:
                # The hourly rollup keeps no rows the prune left at zero (app/rollup.py).
                await conn.execute(rollup.DROP_EMPTIED, {"emptied": rows[0].emptied})
            if refresh is not None:
                # In the batch's transaction: the coverage never counts a removed snapshot.
                await refresh(conn, [(p, d) for p, d in rows[0].desktops])
        if history is not None:
            (row,) = rows
            n = int(row.snapshots)
            history.history += int(row.history)
        else:
            n = len(rows)
        removed += n
        batches += 1
        if n < policy.batch_size:
            break
        await asyncio.sleep(policy.pause)
    return removed, batches


async def prune(
    engine: AsyncEngine,
    policy: Policy,
    *,
    refresh: Refresh,
    dry_run: bool = False,
    now: datetime | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Apply the policy in batches until nothing is left to remove (or `stopping()`).

    `refresh` is app.coverage.refresh (passed in: app.store imports what imports this
    module): the desktops of the snapshots a batch removed get their coverage recomputed in the
    batch's transaction."""
    now = now or datetime.now(UTC)
    outcome = Outcome(
        dry_run=dry_run,
        runs_cutoff=_cutoff(now, policy.runs_days),
        deleted_cutoff=_cutoff(now, policy.deleted_days),
    )
    started = time.monotonic()
    async with engine.connect() as conn:
        if dry_run:
            if outcome.runs_cutoff is not None:
                outcome.runs = int(
                    await conn.scalar(COUNT_RUNS, {"cutoff": outcome.runs_cutoff}) or 0
                )
            if outcome.deleted_cutoff is not None:
                row = (await conn.execute(COUNT_DELETED, {"cutoff": outcome.deleted_cutoff})).one()
                outcome.snapshots, outcome.history = int(row.snapshots), int(row.history)
            await conn.rollback()
        else:
            if outcome.runs_cutoff is not None:
                outcome.runs, batches = await _in_batches(
                    conn, PRUNE_RUNS, outcome.runs_cutoff, policy, stopping
                )
                outcome.batches += batches
            if outcome.deleted_cutoff is not None:
                outcome.snapshots, batches = await _in_batches(
                    conn, PRUNE_DELETED, outcome.deleted_cutoff, policy, stopping, outcome, refresh
                )
                outcome.batches += batches
    outcome.seconds = time.monotonic() - started
    if not dry_run and (outcome.runs or outcome.snapshots):
        log.info(
            "retention removed %d run(s), %d deleted snapshot(s) and %d history row(s) "
            "in %d batch(es), %.1fs",
            outcome.runs,
            outcome.snapshots,
            outcome.history,
            outcome.batches,
            outcome.seconds,
        )
    return outcome
