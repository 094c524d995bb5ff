"""hourly rollup of the status history, kept by the sync, for the reporting queries

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

- `snapshot_status_hours` (project_id, hour, status): for each hour point (the top of a UTC
  hour), the history rows entered and left in the hour up to it, and the statistics of the
  periods left then (count, count with a min_seconds, exact sums of min_seconds and
  max_seconds as snapshot_status_intervals computes them for a closed row).
- `snapshot_status_change_hours` (project_id, hour, from_status, to_status): history rows by
  the UTC hour of observed_at; from_status '' for a first sighting.
- Both indexed by hour. The page upsert and the deletion update add what they write and close
  (app/store.py, app/rollup.py); retention's prune subtracts what it deletes. The reporting
  queries in docs/reporting.md and the Grafana panels read whole hours from them.

The backfill runs after the DDL has been committed, BATCH_HOURS hours a transaction, under the
session lock of migrations/env.py's key (as 0004 does). Each batch takes
`LOCK TABLE snapshot_status_history IN SHARE MODE` (no writer interleaves) and replaces the
rollup rows of its hours with a recount: a writer of this revision that wrote between two
batches is counted once. Every step can run again. A sync of an older snapsync, which does not
keep the rollup, must not write while or after this runs: stop older daemons before migrating.

The SQL below is this revision's copy of app/rollup.py's (a migration keeps its own).
"""

import logging
import runpy
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_HOURS = 24

_HERE = Path(__file__).with_name
MIGRATION_LOCK_KEY = 0x534E_4150_4D49_4752  # migrations/env.py

MEASURES = ("entered", "exited", "periods", "min_periods", "min_seconds", "max_seconds")


def _hour_by(t: str) -> str:
    return f"(date_trunc('hour', {t} - interval '1 microsecond', 'UTC') + interval '1 hour')"


def _nonneg(interval: str) -> str:
    return f"CASE WHEN {interval} < interval '0' THEN interval '0' ELSE {interval} END"


_KNOWN = "h.previous_observed_at IS NOT NULL"
_WITH_MIN = f"{_KNOWN} AND h.left_after IS NOT NULL"
_MIN = f"extract(epoch FROM {_nonneg('h.left_after - h.observed_at')})"
_MAX = f"extract(epoch FROM {_nonneg('h.left_by - h.previous_observed_at')})"

# The rollup rows of the hour points in [:lo, :hi): rows entered after :lo - 1 h and at or
# before :hi - 1 h (ix_snapshot_status_history_observed_at), rows left then (..._left_by).
RECOUNT_HOURS = f"""
INSERT INTO snapshot_status_hours (project_id, hour, status, {", ".join(MEASURES)})
SELECT e.project_id, e.hour, e.status, {", ".join(f"sum(e.{m})" for m in MEASURES)}
FROM (
    SELECT h.project_id, {_hour_by("h.observed_at")} AS hour, h.to_status AS status,
           1 AS entered, 0 AS exited, 0 AS periods, 0 AS min_periods,
           CAST(0 AS numeric) AS min_seconds, CAST(0 AS numeric) AS max_seconds
    FROM snapshot_status_history AS h
    WHERE h.observed_at > CAST(:lo AS timestamptz) - interval '1 hour'
      AND h.observed_at <= CAST(:hi AS timestamptz) - interval '1 hour'
    UNION ALL
    SELECT h.project_id, {_hour_by("h.left_by")}, h.to_status, 0, 1,
           CASE WHEN {_KNOWN} THEN 1 ELSE 0 END, CASE WHEN {_WITH_MIN} THEN 1 ELSE 0 END,
           CASE WHEN {_WITH_MIN} THEN {_MIN} ELSE 0 END, CASE WHEN {_KNOWN} THEN {_MAX} ELSE 0 END
    FROM snapshot_status_history AS h
    WHERE h.left_by > CAST(:lo AS timestamptz) - interval '1 hour'
      AND h.left_by <= CAST(:hi AS timestamptz) - interval '1 hour'
) AS e
GROUP BY e.project_id, e.hour, e.status
"""

RECOUNT_CHANGES = """
INSERT INTO snapshot_status_change_hours (project_id, hour, from_status, to_status, changes)
SELECT h.project_id, date_trunc('hour', h.observed_at, 'UTC'), COALESCE(h.from_status, ''),
       h.to_status, count(*)
FROM snapshot_status_history AS h
WHERE h.observed_at >= CAST(:lo AS timestamptz) AND h.observed_at < CAST(:hi AS timestamptz)
GROUP BY 1, 2, 3, 4
"""

# The hour points the history reaches: from the first row's hour to the point after the last
# time it holds (observed_at or left_by), both by index.
BOUNDS = """
SELECT date_trunc('hour', min(observed_at), 'UTC'),
       date_trunc('hour', GREATEST(max(observed_at),
                                   (SELECT max(left_by) FROM snapshot_status_history)), 'UTC')
           + interval '2 hours'
FROM snapshot_status_history
"""

TABLES = """
CREATE TABLE IF NOT EXISTS snapshot_status_hours (
    project_id text NOT NULL,
    hour timestamptz NOT NULL,
    status text NOT NULL,
    entered bigint NOT NULL DEFAULT 0,
    exited bigint NOT NULL DEFAULT 0,
    periods bigint NOT NULL DEFAULT 0,
    min_periods bigint NOT NULL DEFAULT 0,
    min_seconds numeric NOT NULL DEFAULT 0,
    max_seconds numeric NOT NULL DEFAULT 0,
    CONSTRAINT pk_snapshot_status_hours PRIMARY KEY (project_id, hour, status)
);
CREATE INDEX IF NOT EXISTS ix_snapshot_status_hours_hour ON snapshot_status_hours (hour);
CREATE TABLE IF NOT EXISTS snapshot_status_change_hours (
    project_id text NOT NULL,
    hour timestamptz NOT NULL,
    from_status text NOT NULL,
    to_status text NOT NULL,
    changes bigint NOT NULL DEFAULT 0,
    CONSTRAINT pk_snapshot_status_change_hours
        PRIMARY KEY (project_id, hour, from_status, to_status)
);
CREATE INDEX IF NOT EXISTS ix_snapshot_status_change_hours_hour
    ON snapshot_status_change_hours (hour)
"""


def _log(message: str) -> None:
    logging.getLogger("snapsync.migrate").info("0008: %s", message)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comments() -> list[str]:
    from app import models

    statements = []
    for table in ("snapshot_status_hours", "snapshot_status_change_hours"):
        comment, columns = models.TABLE_COMMENTS[table]
        statements.append(f"COMMENT ON TABLE {table} IS {_quote(comment)}")
        statements += [
            f"COMMENT ON COLUMN {table}.{column} IS {_quote(text)}"
            for column, text in columns.items()
        ]
    return statements


def _grant_reader() -> str:
    """0002's GRANTs to snapsync_reader, which cover the tables created since."""
    return str(runpy.run_path(str(_HERE("0002_reporting_surface.py")))["grant_reader"]())


def backfill(connection: sa.Connection, batch_hours: int = BATCH_HOURS) -> int:
    """Recount the rollup from the history, `batch_hours` hour points a transaction; returns
    the rollup rows written."""
    lo, end = connection.execute(sa.text(BOUNDS)).one()
    if lo is None:
        _log("no history to count")
        return 0
    written = batches = 0
    started = time.monotonic()
    step = timedelta(hours=batch_hours)
    total = max(1, int((end - lo) / step) + 1)
    while lo < end:
        hi: datetime = min(lo + step, end)
        # The connection autocommits (autocommit_block): the batch's transaction is explicit.
        connection.exec_driver_sql("BEGIN")
        try:
            connection.execute(sa.text("LOCK TABLE snapshot_status_history IN SHARE MODE"))
            window = {"lo": lo, "hi": hi}
            for table in ("snapshot_status_hours", "snapshot_status_change_hours"):
                connection.execute(
                    sa.text(f"DELETE FROM {table} WHERE hour >= :lo AND hour < :hi"), window
                )
            written += connection.execute(sa.text(RECOUNT_HOURS), window).rowcount
            written += connection.execute(sa.text(RECOUNT_CHANGES), window).rowcount
        except BaseException:
            connection.exec_driver_sql("ROLLBACK")
            raise
        connection.exec_driver_sql("COMMIT")
        batches += 1
        if batches % 10 == 0 or hi >= end:
            _log(
                f"counted {batches}/{total} batches of {batch_hours} h (up to {hi:%Y-%m-%d %H:%M}"
                f" UTC), {written} rollup rows, {time.monotonic() - started:.1f}s"
            )
        lo = hi
    return written


def upgrade() -> None:
    """Upgrade schema."""
    bind = op.get_bind()
    bind.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    try:
        for statement in TABLES.split(";"):
            op.execute(statement)
        for statement in _comments():
            op.execute(statement)
        op.execute(_grant_reader())
        with op.get_context().autocommit_block():
            connection = op.get_bind()
            backfill(connection)
            connection.execute(sa.text("ANALYZE snapshot_status_hours"))
            connection.execute(sa.text("ANALYZE snapshot_status_change_hours"))
    finally:
        bind.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DROP TABLE IF EXISTS snapshot_status_change_hours")
    op.execute("DROP TABLE IF EXISTS snapshot_status_hours")
