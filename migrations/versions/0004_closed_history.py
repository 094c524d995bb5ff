"""history that carries its own end; views that read by index on time

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

- `snapshot_status_history` gains the closing facts of each row (`next_id`, `next_status`,
  `left_after`, `left_by`: the valid-from/valid-to shape of dbt snapshots). The statement that
  writes a snapshot's next history row closes the open one (app/store.py), so the views read
  intervals and operation durations by index on time instead of a window over all history.
- `snapshot_desktops`: every desktop that has had a snapshot, kept by the page upsert, so
  `desktop_snapshot_coverage` is O(desktops), not O(snapshots ever seen).
- Partial indexes for what the views and `snapsync status` ask: open (current) history rows,
  rows by the time they were left, the end of each creation, live snapshots per desktop,
  deleted and missed ones by last sighting, failed creations, failed runs, runs by start.
- `snapshot_status_intervals`, `snapshot_operation_durations` and `desktop_snapshot_coverage`
  are replaced (same names, columns and meanings; CREATE OR REPLACE keeps comments and grants).

The backfill of the closing facts runs after the DDL has been committed, in batches of
BATCH_SNAPSHOTS snapshots, each its own transaction (readers and writers wait for no long lock);
the new history indexes are then built CONCURRENTLY. The migration lock (migrations/env.py) is a
transaction lock, released by that first commit, so the same key is held as a session lock
until the backfill is done: a second `snapsync migrate` waits rather than backfilling too (it
may then fail once on the version row, and succeed when run again). Every step can run again
after an interruption.

`snapshot_status_history.sync_run_id` keeps its foreign key ON DELETE SET NULL (from 0001):
pruning a run leaves the history it wrote valid, without the run's id.
"""

import contextlib
import importlib.util
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MIGRATION_LOCK_KEY = 0x534E_4150_4D49_4752  # migrations/env.py
BATCH_SNAPSHOTS = 20_000

# app/models.py has it as PostgreSQL renders it.
CREATION_ENDED_BY = "(CASE WHEN to_status = 'creating' THEN left_by ELSE observed_at END)"


def _module(name: str):  # type: ignore[no-untyped-def]
    path = Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"snapsync_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nonneg(interval: str) -> str:
    """As in 0002: the interval, or zero when clocks disagree; NULL stays NULL."""
    return f"CASE WHEN {interval} < interval '0' THEN interval '0' ELSE {interval} END"


# Same columns as 0002's window version (its outer SELECT is reused); the next row's facts are
# read from the row itself.
_INTERVALS_INNER = f"""
    SELECT h.project_id,
           h.snapshot_id,
           s.desktop_id,
           s.desktop_name,
           s.is_system_disk,
           h.to_status AS status,
           h.from_status AS previous_status,
           h.next_status,
           h.previous_observed_at AS entered_after,
           h.observed_at AS entered_by,
           h.left_after,
           h.left_by,
           h.left_by IS NULL AS is_current,
           c.confirmed_until,
           {nonneg("c.confirmed_until - h.observed_at")} AS min_duration,
           {nonneg("COALESCE(h.left_by, now()) - h.previous_observed_at")} AS max_duration,
           h.id AS history_id,
           h.next_id AS next_history_id,
           h.sync_run_id
    FROM snapshot_status_history AS h
    LEFT JOIN snapshots AS s ON s.project_id = h.project_id AND s.snapshot_id = h.snapshot_id
    LEFT JOIN projects AS p ON p.project_id = h.project_id
    CROSS JOIN LATERAL (
        SELECT CASE
                   WHEN h.left_by IS NOT NULL THEN h.left_after
                   WHEN h.to_status = 'deleted' THEN GREATEST(h.observed_at, p.last_listing_at)
                   ELSE GREATEST(h.observed_at, s.last_seen_at)
               END AS confirmed_until
    ) AS c
"""


def _replaced(name: str, opening: str, closing: str, inner: str) -> str:
    """0002's view `name` with the text between `opening` and `closing` replaced by `inner`."""
    old: str = getattr(_module("0002_reporting_surface.py"), name)
    start = old.index(opening) + len(opening)
    end = old.rindex(closing)
    view = old[:start] + inner.strip("\n") + "\n" + old[end:]
    return view.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)


def _status_intervals() -> str:
    return _replaced("SNAPSHOT_STATUS_INTERVALS", "FROM (\n", ") AS b", _INTERVALS_INNER)


# A creation is read from the snapshot's first-sighting row: seen `creating`, it ended when that
# row was closed (its next row is the first in another status); seen in any other status, it
# had ended by the first sighting. `ended_by` is the indexed CREATION_ENDED_BY expression, so
# `ended_by IS NULL` (running) and time ranges on it read ix_snapshot_status_history_creation_end.
_CREATIONS = f"""
    SELECT f.project_id,
           f.snapshot_id,
           'create'::text AS operation,
           CASE
               WHEN e.ended_by IS NULL THEN 'running'
               WHEN e.status IN ('restoring', 'restore_success', 'restore_failed')
               THEN 'create_success'
               ELSE e.status
           END AS outcome,
           f.to_status = 'creating' AS observed_in_flight,
           s.create_time AS started_after,
           s.create_time AS started_by,
           e.ended_after,
           e.ended_by,
           CASE
               WHEN e.ended_by IS NULL THEN {nonneg("s.last_seen_at - s.create_time")}
               WHEN f.to_status = 'creating' THEN {nonneg("f.left_after - s.create_time")}
           END AS min_duration,
           {nonneg("COALESCE(e.ended_by, now()) - s.create_time")} AS max_duration,
           CASE WHEN f.to_status = 'creating' THEN n.sync_run_id ELSE f.sync_run_id END
               AS ended_sync_run_id
    FROM snapshot_status_history AS f
    JOIN snapshots AS s ON s.project_id = f.project_id AND s.snapshot_id = f.snapshot_id
    CROSS JOIN LATERAL (
        SELECT CASE WHEN f.to_status = 'creating' THEN f.next_status ELSE f.to_status END
                   AS status,
               CASE WHEN f.to_status = 'creating' THEN f.left_after END AS ended_after,
               {
    CREATION_ENDED_BY.replace("to_status", "f.to_status")
    .replace("left_by", "f.left_by")
    .replace("observed_at", "f.observed_at")
} AS ended_by
    ) AS e
    LEFT JOIN snapshot_status_history AS n ON n.id = f.next_id AND f.to_status = 'creating'
    WHERE f.from_status IS NULL
"""


def _operation_durations() -> str:
    return _replaced(
        "SNAPSHOT_OPERATION_DURATIONS", "WITH creations AS (\n", "),\nrestores AS (", _CREATIONS
    )


SUCCESSFUL = "('create_success', 'restoring', 'restore_success', 'restore_failed')"


def _newest_successful(alias: str, system_disk: bool) -> str:
    disk = "r.is_system_disk" if system_disk else "NOT r.is_system_disk"
    return f"""LEFT JOIN LATERAL (
    SELECT r.snapshot_id, r.create_time
    FROM snapshot_records AS r
    WHERE r.project_id = k.project_id AND r.desktop_id = k.desktop_id
      AND r.deleted_at IS NULL AND {disk} AND r.status IN {SUCCESSFUL}
    ORDER BY r.create_time DESC NULLS LAST, r.snapshot_id DESC
    LIMIT 1
) AS {alias} ON true"""


def _failed_since(alias: str, system_disk: bool) -> str:
    disk = "f.is_system_disk" if system_disk else "NOT f.is_system_disk"
    return f"""(SELECT count(*) FROM snapshot_records AS f
        WHERE f.project_id = k.project_id AND f.desktop_id = k.desktop_id
          AND {disk} AND f.status = 'create_failed'
          AND ({alias}.create_time IS NULL OR f.create_time > {alias}.create_time)
       )"""


# Driven by snapshot_desktops. A desktop's live rows (ix_snapshot_records_live) give the count
# and the most recently seen live row; ix_snapshot_records_gone gives the most recently seen
# deleted or missed one. The name is that of whichever of the two was seen last (ties: the
# smaller snapshot_id), which is 0002's answer; a desktop none of whose rows is left is skipped.
DESKTOP_SNAPSHOT_COVERAGE = f"""
CREATE OR REPLACE VIEW desktop_snapshot_coverage AS
SELECT k.project_id,
       k.desktop_id,
       CASE
           WHEN g.snapshot_id IS NULL OR l.last_seen_at > g.last_seen_at
                OR (l.last_seen_at = g.last_seen_at AND l.newest_id < g.snapshot_id)
           THEN l.newest_name
           ELSE g.desktop_name
       END AS desktop_name,
       l.live_snapshots,
       GREATEST(l.last_seen_at, g.last_seen_at) AS last_seen_at,
       sys.snapshot_id AS system_disk_snapshot_id,
       sys.create_time AS system_disk_created_at,
       now() - sys.create_time AS system_disk_age,
       {_failed_since("sys", True)} AS system_disk_failed_since,
       dat.snapshot_id AS data_disk_snapshot_id,
       dat.create_time AS data_disk_created_at,
       now() - dat.create_time AS data_disk_age,
       {_failed_since("dat", False)} AS data_disk_failed_since
FROM snapshot_desktops AS k
LEFT JOIN projects AS p ON p.project_id = k.project_id
CROSS JOIN LATERAL (
    SELECT count(*) AS live_snapshots,
           max(s.last_seen_at) AS last_seen_at,
           (array_agg(s.desktop_name ORDER BY s.last_seen_at DESC, s.snapshot_id))[1]
               AS newest_name,
           (array_agg(s.snapshot_id ORDER BY s.last_seen_at DESC, s.snapshot_id))[1]
               AS newest_id
    FROM (
        -- The snapshots view's last_seen_at, for live rows (0001's SNAPSHOTS_VIEW).
        SELECT r.snapshot_id, r.desktop_name,
               CASE
                   WHEN r.missed_listings = 0 AND p.last_listing_at IS NOT NULL
                   THEN GREATEST(r.last_seen_at, p.last_listing_at)
                   ELSE r.last_seen_at
               END AS last_seen_at
        FROM snapshot_records AS r
        WHERE r.project_id = k.project_id AND r.desktop_id = k.desktop_id
          AND r.deleted_at IS NULL
    ) AS s
) AS l
LEFT JOIN LATERAL (
    SELECT r.snapshot_id, r.desktop_name, r.last_seen_at
    FROM snapshot_records AS r
    WHERE r.project_id = k.project_id AND r.desktop_id = k.desktop_id
      AND (r.deleted_at IS NOT NULL OR r.missed_listings > 0)
    ORDER BY r.last_seen_at DESC, r.snapshot_id
    LIMIT 1
) AS g ON true
{_newest_successful("sys", True)}
{_newest_successful("dat", False)}
WHERE l.live_snapshots > 0 OR g.snapshot_id IS NOT NULL
"""

HISTORY_COLUMNS: tuple[tuple[str, sa.types.TypeEngine[object]], ...] = (
    ("next_id", sa.BigInteger()),
    ("next_status", sa.Text()),
    ("left_after", sa.DateTime(timezone=True)),
    ("left_by", sa.DateTime(timezone=True)),
)

# (name, table, columns, WHERE): built CONCURRENTLY once the backfill is done.
INDEXES: tuple[tuple[str, str, str, str | None], ...] = (
    (
        "ix_snapshot_status_history_open",
        "snapshot_status_history",
        "to_status, observed_at) INCLUDE (project_id",
        "left_by IS NULL AND to_status <> 'deleted'",
    ),
    (
        "ix_snapshot_status_history_left_by",
        "snapshot_status_history",
        "left_by) INCLUDE (to_status, observed_at, project_id, previous_observed_at, left_after",
        "left_by IS NOT NULL",
    ),
    (
        "ix_snapshot_status_history_creation_end",
        "snapshot_status_history",
        CREATION_ENDED_BY,
        "from_status IS NULL",
    ),
    (
        "ix_snapshot_records_live",
        "snapshot_records",
        "project_id, desktop_id) INCLUDE (status",
        "deleted_at IS NULL",
    ),
    (
        "ix_snapshot_records_gone",
        "snapshot_records",
        "project_id, desktop_id, last_seen_at DESC, snapshot_id",
        "deleted_at IS NOT NULL OR missed_listings > 0",
    ),
    (
        "ix_snapshot_records_deleted_at",
        "snapshot_records",
        "deleted_at",
        "deleted_at IS NOT NULL",
    ),
    (
        "ix_snapshot_records_failed",
        "snapshot_records",
        "project_id, desktop_id, create_time",
        "status = 'create_failed'",
    ),
    ("ix_sync_runs_started_at", "sync_runs", "started_at, id", None),
    (
        "ix_sync_runs_failed",
        "sync_runs",
        "project_id, started_at",
        "status IN ('failed', 'abandoned')",
    ),
)

# One batch: the next BATCH_SNAPSHOTS-odd snapshots by key (whole snapshots: every row of a key
# in the batch is read, wherever the LIMIT cut), each paired with its next row by the order of
# 0002's window. The LATERAL keeps the read per snapshot, through ix_snapshot_status_history_snapshot.
BACKFILL_BATCH = sa.text(
    """
WITH k AS (
    SELECT DISTINCT x.project_id, x.snapshot_id
    FROM (
        SELECT project_id, snapshot_id FROM snapshot_status_history
        WHERE (project_id, snapshot_id) > (CAST(:project_id AS text), CAST(:snapshot_id AS text))
        ORDER BY project_id, snapshot_id
        LIMIT :batch
    ) AS x
),
w AS (
    SELECT n.*
    FROM k
    CROSS JOIN LATERAL (
        SELECT h.id,
               lead(h.id) OVER o AS next_id,
               lead(h.to_status) OVER o AS next_status,
               lead(h.previous_observed_at) OVER o AS left_after,
               lead(h.observed_at) OVER o AS left_by
        FROM snapshot_status_history AS h
        WHERE h.project_id = k.project_id AND h.snapshot_id = k.snapshot_id
        WINDOW o AS (ORDER BY h.observed_at, h.id)
    ) AS n
),
u AS (
    UPDATE snapshot_status_history AS h
    SET next_id = w.next_id, next_status = w.next_status, left_after = w.left_after,
        left_by = w.left_by
    FROM w
    WHERE h.id = w.id AND w.next_id IS NOT NULL AND h.next_id IS DISTINCT FROM w.next_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM u) AS closed,
       (SELECT count(*) FROM k) AS snapshots,
       (SELECT max(ARRAY[project_id, snapshot_id]) FROM k) AS last
"""
)

DESKTOPS = """
INSERT INTO snapshot_desktops (project_id, desktop_id)
SELECT DISTINCT project_id, desktop_id FROM snapshot_records WHERE desktop_id IS NOT NULL
ON CONFLICT DO NOTHING
"""


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comments() -> list[str]:
    from app import models

    statements = []
    history = models.TABLE_COMMENTS["snapshot_status_history"][1]
    for column, _ in HISTORY_COLUMNS:
        statements.append(
            f"COMMENT ON COLUMN snapshot_status_history.{column} IS {_quote(history[column])}"
        )
    comment, columns = models.TABLE_COMMENTS["snapshot_desktops"]
    statements.append(f"COMMENT ON TABLE snapshot_desktops IS {_quote(comment)}")
    for column in ("project_id", "desktop_id"):  # the columns of this revision (0006 adds more)
        statements.append(
            f"COMMENT ON COLUMN snapshot_desktops.{column} IS {_quote(columns[column])}"
        )
    return statements


def _log(message: str) -> None:
    logging.getLogger("snapsync.migrate").info("0004: %s", message)


def backfill(connection: sa.Connection, batch: int = BATCH_SNAPSHOTS) -> int:
    """Close every history row that has a next row; each batch commits (autocommit)."""
    key = ["", ""]
    closed = 0
    started = time.monotonic()
    while True:
        row = connection.execute(
            BACKFILL_BATCH, {"project_id": key[0], "snapshot_id": key[1], "batch": batch}
        ).one()
        closed += int(row.closed)
        if row.last is None:
            break
        key = list(row.last)
    _log(f"closed {closed} history rows in {time.monotonic() - started:.1f}s")
    return closed


def _create_indexes(
    connection: sa.Connection, indexes: tuple[tuple[str, str, str, str | None], ...] = INDEXES
) -> None:
    """Build `indexes` CONCURRENTLY (IF NOT EXISTS), after dropping an interrupted build's."""
    for name, table, columns, where in indexes:
        # A build interrupted earlier leaves an INVALID index that IF NOT EXISTS would keep.
        invalid = connection.scalar(
            sa.text(
                "SELECT NOT i.indisvalid FROM pg_index AS i JOIN pg_class AS c "
                "ON c.oid = i.indexrelid WHERE c.relname = :name "
                "AND c.relnamespace = current_schema()::regnamespace"
            ),
            {"name": name},
        )
        if invalid:
            connection.execute(sa.text(f"DROP INDEX CONCURRENTLY {name}"))
        started = time.monotonic()
        connection.execute(
            sa.text(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({columns})"
                + (f" WHERE {where}" if where else "")
            )
        )
        logging.getLogger("snapsync.migrate").info(
            "index %s in %.1fs", name, time.monotonic() - started
        )


@contextlib.contextmanager
def session_lock() -> Iterator[None]:
    """migrations/env.py's key held as a session lock, for steps that commit on their own."""
    op.get_bind().execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    try:
        yield
    finally:
        op.get_bind().execute(
            sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
        )


def upgrade() -> None:
    """Upgrade schema."""
    bind = op.get_bind()
    with session_lock():
        for column, type_ in HISTORY_COLUMNS:
            op.execute(
                f"ALTER TABLE snapshot_status_history ADD COLUMN IF NOT EXISTS {column} "
                f"{type_.compile(dialect=bind.dialect)}"
            )
        op.execute(
            "CREATE TABLE IF NOT EXISTS snapshot_desktops (project_id text NOT NULL, "
            "desktop_id text NOT NULL, "
            "CONSTRAINT pk_snapshot_desktops PRIMARY KEY (project_id, desktop_id))"
        )
        for statement in _comments():
            op.execute(statement)
        op.execute(_module("0002_reporting_surface.py").grant_reader())
        with op.get_context().autocommit_block():
            connection = op.get_bind()
            connection.execute(sa.text(DESKTOPS))
            backfill(connection)
            _create_indexes(connection)
            for view in (
                _status_intervals(),
                _operation_durations(),
                DESKTOP_SNAPSHOT_COVERAGE,
            ):
                connection.execute(sa.text(view))
            connection.execute(sa.text("ANALYZE snapshot_status_history"))
            connection.execute(sa.text("ANALYZE snapshot_desktops"))


def downgrade() -> None:
    """Downgrade schema."""
    old = _module("0002_reporting_surface.py")
    # 0002's window view selects h.* beside its own next_id: the columns go before it returns,
    # so the views are dropped and created again, with their comments and grants.
    replaced = (
        "snapshot_status_intervals",
        "snapshot_operation_durations",
        "desktop_snapshot_coverage",
    )
    op.execute("DROP VIEW IF EXISTS snapshot_operation_durations")
    op.execute("DROP VIEW IF EXISTS snapshot_status_intervals")
    op.execute("DROP VIEW IF EXISTS desktop_snapshot_coverage")
    for name, _, _, _ in reversed(INDEXES):
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS snapshot_desktops")
    for column, _ in reversed(HISTORY_COLUMNS):
        op.execute(f"ALTER TABLE snapshot_status_history DROP COLUMN IF EXISTS {column}")
    views = dict(old.VIEWS)
    for name in replaced:
        op.execute(views[name])
        comment, columns = old.VIEW_COMMENTS[name]
        for statement in old._comment_statements("VIEW", name, comment, columns):
            op.execute(statement)
    op.execute(old.grant_reader())
