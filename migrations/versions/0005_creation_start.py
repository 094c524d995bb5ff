"""a creation's start on its first-sighting row: creation reports read by index on time

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

- `snapshot_status_history.create_time`: on a snapshot's first-sighting row (`from_status`
  NULL) the snapshot's `create_time` as that sync listed it, written by the page upsert
  (app/store.py) in the statement that writes the row; NULL on every other row.
- `ix_snapshot_status_history_created`: first-sighting rows by `create_time`, with what a
  creation's duration needs, so "creations started in the last N days" is one range scan
  instead of a pass over every first sighting joined to every snapshot row.
- `ix_snapshot_status_history_changes`: status changes (not first sightings) by time, covering,
  for the per-hour and per-day counts.
- `ix_snapshot_records_live_desktop` and extended statistics on `snapshot_records (project_id,
  desktop_id)`: `desktop_snapshot_coverage` reads each desktop's live rows index-only and its
  newest gone row as the top entry of `ix_snapshot_records_gone`.
- `snapshot_status_intervals` joins the snapshot row LEFT to the table and reads its last
  sighting only for a current period, so periods that ended are read from the history alone.
- `snapshot_operation_durations` reads a creation's start from that column (same columns and
  answers: the API does not change a snapshot's `create_time`).

The backfill runs after the DDL has been committed, in batches of BATCH_IDS history ids, each its
own transaction, under the session lock of migrations/env.py's key (as 0004 does); the index is
then built CONCURRENTLY. Every step can run again after an interruption.
"""

import logging
import runpy
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_IDS = 200_000

# (name, table, columns, WHERE): built CONCURRENTLY once the backfill is done (0004's builder).
INDEXES: tuple[tuple[str, str, str, str | None], ...] = (
    (
        "ix_snapshot_status_history_created",
        "snapshot_status_history",
        "create_time) INCLUDE (project_id, snapshot_id, to_status, next_status, left_after, "
        "left_by, observed_at",
        "from_status IS NULL",
    ),
    # Status changes by time (the per-hour panel, the per-day doc query): index-only.
    (
        "ix_snapshot_status_history_changes",
        "snapshot_status_history",
        "observed_at) INCLUDE (project_id, from_status, to_status",
        "from_status IS NOT NULL",
    ),
    (
        "ix_snapshot_records_live_desktop",
        "snapshot_records",
        "project_id, desktop_id) INCLUDE (status, is_system_disk, create_time, snapshot_id, "
        "last_seen_at, missed_listings, desktop_name",
        "deleted_at IS NULL",
    ),
)

# A desktop id belongs to one project: without this the planner takes (project_id, desktop_id)
# for a key (one row), and reads a desktop's every row through the plain index instead of the
# top one of ix_snapshot_records_gone (5 s instead of 0.5 s for desktop_snapshot_coverage at
# 20,000 desktops).
STATISTICS = (
    "CREATE STATISTICS IF NOT EXISTS st_snapshot_records_desktop (ndistinct, dependencies) "
    "ON project_id, desktop_id FROM snapshot_records"
)

BACKFILL_BATCH = sa.text(
    """
    UPDATE snapshot_status_history AS h SET create_time = r.create_time
    FROM snapshot_records AS r
    WHERE h.id >= :low AND h.id < :high
      AND h.from_status IS NULL AND h.create_time IS NULL AND r.create_time IS NOT NULL
      AND r.project_id = h.project_id AND r.snapshot_id = h.snapshot_id
    """
)


# 0004's module: its creations, view surgery, index builder and session lock.
V0004 = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("0004_closed_history.py"))))


def _log(message: str) -> None:
    logging.getLogger("snapsync.migrate").info("0005: %s", message)


def backfill(connection: sa.Connection, batch: int = BATCH_IDS) -> int:
    """Copy create_time onto every first-sighting row; each batch commits (autocommit)."""
    bounds = connection.execute(
        sa.text("SELECT min(id), max(id) FROM snapshot_status_history")
    ).one()
    if bounds[0] is None:
        return 0
    low, top = int(bounds[0]), int(bounds[1])
    written = 0
    started = time.monotonic()
    while low <= top:
        written += connection.execute(BACKFILL_BATCH, {"low": low, "high": low + batch}).rowcount
        low += batch
    _log(f"wrote create_time on {written} first-sighting rows in {time.monotonic() - started:.1f}s")
    return written


# 0004's creations, with the start read from the first-sighting row: the range on started_by is
# then a range on ix_snapshot_status_history_created, and the snapshot row is read only for a
# creation still running (its last sighting).
def _creations() -> str:
    old: str = V0004._CREATIONS
    join = (
        "    JOIN snapshots AS s ON s.project_id = f.project_id AND s.snapshot_id = f.snapshot_id\n"
    )
    assert join in old
    last_seen = (
        "(SELECT s.last_seen_at FROM snapshots AS s "
        "WHERE s.project_id = f.project_id AND s.snapshot_id = f.snapshot_id)"
    )
    new = old.replace(join, "").replace("s.last_seen_at", last_seen)
    new = new.replace("s.create_time", "f.create_time")
    assert "s.create_time" not in new
    return new


def _operation_durations(creations: str, left_join: bool = True) -> str:
    view: str = V0004._replaced(
        "SNAPSHOT_OPERATION_DURATIONS", "WITH creations AS (\n", "),\nrestores AS (", creations
    )
    if left_join:
        view = view.replace(OPERATIONS_JOIN, OPERATIONS_LEFT_JOIN)
        assert OPERATIONS_LEFT_JOIN in view
    return view


# Every operation is of a stored snapshot (its history goes with it: app/retention.py), so the
# snapshot row is joined LEFT, to the table: a query that reads none of its columns (creation
# times, failure rates) does not probe it once per operation (the planner drops the join).
OPERATIONS_JOIN = (
    "JOIN snapshots AS s ON s.project_id = o.project_id AND s.snapshot_id = o.snapshot_id"
)
OPERATIONS_LEFT_JOIN = (
    "LEFT JOIN snapshot_records AS s "
    "ON s.project_id = o.project_id AND s.snapshot_id = o.snapshot_id"
)


# 0004's intervals with the snapshot row joined LEFT to the table and its last sighting read
# only for a current row: a query on periods that ended (left_by) reads no snapshot row, so it
# is a scan of ix_snapshot_status_history_left_by instead of a hash join of every snapshot.
def _status_intervals() -> str:
    inner: str = V0004._INTERVALS_INNER
    join = (
        "LEFT JOIN snapshots AS s ON s.project_id = h.project_id AND s.snapshot_id = h.snapshot_id"
    )
    last_seen = "ELSE GREATEST(h.observed_at, s.last_seen_at)"
    assert join in inner and last_seen in inner
    inner = inner.replace(
        join,
        "LEFT JOIN snapshot_records AS s "
        "ON s.project_id = h.project_id AND s.snapshot_id = h.snapshot_id",
    ).replace(
        last_seen,
        "ELSE GREATEST(h.observed_at, (SELECT v.last_seen_at FROM snapshots AS v "
        "WHERE v.project_id = h.project_id AND v.snapshot_id = h.snapshot_id))",
    )
    view: str = V0004._replaced("SNAPSHOT_STATUS_INTERVALS", "FROM (\n", ") AS b", inner)
    return view


def _comment() -> str:
    from app import models

    text = models.TABLE_COMMENTS["snapshot_status_history"][1]["create_time"]
    quoted: str = V0004._quote(text)
    return f"COMMENT ON COLUMN snapshot_status_history.create_time IS {quoted}"


def upgrade() -> None:
    """Upgrade schema."""
    with V0004.session_lock():
        op.execute(
            "ALTER TABLE snapshot_status_history ADD COLUMN IF NOT EXISTS create_time timestamptz"
        )
        op.execute(_comment())
        with op.get_context().autocommit_block():
            connection = op.get_bind()
            backfill(connection)
            V0004._create_indexes(connection, INDEXES)
            connection.execute(sa.text(STATISTICS))
            connection.execute(sa.text(_status_intervals()))
            connection.execute(sa.text(_operation_durations(_creations())))
            connection.execute(sa.text("ANALYZE snapshot_status_history"))
            connection.execute(sa.text("ANALYZE snapshot_records"))


def downgrade() -> None:
    """Downgrade schema."""
    old = V0004
    op.execute(_operation_durations(old._CREATIONS, left_join=False))
    op.execute(old._status_intervals())
    op.execute("DROP STATISTICS IF EXISTS st_snapshot_records_desktop")
    for name, *_ in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute("ALTER TABLE snapshot_status_history DROP COLUMN IF EXISTS create_time")
