"""desktop coverage kept per desktop: desktop_snapshot_coverage is one scan of the desktops

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

- `snapshot_desktops` gains what `desktop_snapshot_coverage` reads of each desktop's snapshot
  rows: the live count; the newest live row seen in the newest listing and the first of them by
  id (the view picks by the project's last_listing_at, as 0001's `snapshots` view does); the
  newest live missed row; the newest deleted or missed row; the newest successful live snapshot
  of each disk and the failed creations since. The statements that change snapshot rows (the
  page upsert, the deletion update, retention's prune) recompute the rows of the desktops they
  touched in the same transaction (app/coverage.py `refresh`).
- `ix_snapshot_status_history_creations_ended`: creations seen in flight that succeeded, by
  their end (`left_by`), with `project_id` and `create_time`; the Grafana creation-time panel
  reads it index-only, one hour of the range at a time (no sort of the whole range).
- `desktop_snapshot_coverage` reads those columns (same columns, types and answers): one scan
  of snapshot_desktops joined to projects, instead of four lookups into snapshot_records and two
  counts for each desktop.

The backfill runs after the DDL has been committed, BATCH_DESKTOPS desktops a transaction, under
the session lock of migrations/env.py's key (as 0004 does); every step can run again. A sync of
an older snapsync that writes while the migration runs (or after it) does not recompute the rows
it changes, and a desktop it wrote keeps its coverage as computed until a newer sync writes a
snapshot of it again: stop older daemons before migrating.
"""

import logging
import runpy
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH_DESKTOPS = 2_000

# (name, table, columns, WHERE): built CONCURRENTLY after the backfill (0004's builder). The
# creation-time panel reads it index-only, an hour at a time: creations seen in flight that
# succeeded, by their end, with their start.
INDEXES: tuple[tuple[str, str, str, str | None], ...] = (
    (
        "ix_snapshot_status_history_creations_ended",
        "snapshot_status_history",
        "left_by) INCLUDE (project_id, create_time",
        "from_status IS NULL AND to_status = 'creating' AND next_status IN "
        "('create_success', 'restoring', 'restore_success', 'restore_failed')",
    ),
)

V0004 = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("0004_closed_history.py"))))

COLUMNS: tuple[tuple[str, str], ...] = (
    ("live_snapshots", "bigint NOT NULL DEFAULT 0"),
    ("listed_last_seen_at", "timestamptz"),
    ("listed_newest_id", "text"),
    ("listed_newest_name", "text"),
    ("listed_first_id", "text"),
    ("listed_first_name", "text"),
    ("missed_last_seen_at", "timestamptz"),
    ("missed_newest_id", "text"),
    ("missed_newest_name", "text"),
    ("gone_last_seen_at", "timestamptz"),
    ("gone_snapshot_id", "text"),
    ("gone_desktop_name", "text"),
    ("system_disk_snapshot_id", "text"),
    ("system_disk_created_at", "timestamptz"),
    ("system_disk_failed_since", "bigint NOT NULL DEFAULT 0"),
    ("data_disk_snapshot_id", "text"),
    ("data_disk_created_at", "timestamptz"),
    ("data_disk_failed_since", "bigint NOT NULL DEFAULT 0"),
)

# app/coverage.py's REFRESH_COVERAGE as of this revision (a migration keeps its own copy).
REFRESH = sa.text(
    """
UPDATE snapshot_desktops AS k SET
    live_snapshots = c.live_snapshots,
    listed_last_seen_at = c.listed_last_seen_at,
    listed_newest_id = c.listed_newest_id,
    listed_newest_name = c.listed_newest_name,
    listed_first_id = c.listed_first_id,
    listed_first_name = c.listed_first_name,
    missed_last_seen_at = c.missed_last_seen_at,
    missed_newest_id = c.missed_newest_id,
    missed_newest_name = c.missed_newest_name,
    gone_last_seen_at = c.gone_last_seen_at,
    gone_snapshot_id = c.gone_snapshot_id,
    gone_desktop_name = c.gone_desktop_name,
    system_disk_snapshot_id = c.system_disk_snapshot_id,
    system_disk_created_at = c.system_disk_created_at,
    system_disk_failed_since = c.system_disk_failed_since,
    data_disk_snapshot_id = c.data_disk_snapshot_id,
    data_disk_created_at = c.data_disk_created_at,
    data_disk_failed_since = c.data_disk_failed_since
FROM (
    SELECT d.project_id, d.desktop_id, l.*, g.*, n.*
    FROM unnest(CAST(:project_ids AS text[]), CAST(:desktop_ids AS text[]))
        AS d(project_id, desktop_id)
    CROSS JOIN LATERAL (
        SELECT count(*) AS live_snapshots,
           max(r.last_seen_at) FILTER (WHERE r.missed_listings = 0) AS listed_last_seen_at,
           (array_agg(r.snapshot_id ORDER BY r.last_seen_at DESC, r.snapshot_id) FILTER (WHERE r.missed_listings = 0))[1] AS listed_newest_id,
           (array_agg(r.desktop_name ORDER BY r.last_seen_at DESC, r.snapshot_id) FILTER (WHERE r.missed_listings = 0))[1] AS listed_newest_name,
           min(r.snapshot_id) FILTER (WHERE r.missed_listings = 0) AS listed_first_id,
           (array_agg(r.desktop_name ORDER BY r.snapshot_id) FILTER (WHERE r.missed_listings = 0))[1] AS listed_first_name,
           max(r.last_seen_at) FILTER (WHERE r.missed_listings > 0) AS missed_last_seen_at,
           (array_agg(r.snapshot_id ORDER BY r.last_seen_at DESC, r.snapshot_id) FILTER (WHERE r.missed_listings > 0))[1] AS missed_newest_id,
           (array_agg(r.desktop_name ORDER BY r.last_seen_at DESC, r.snapshot_id) FILTER (WHERE r.missed_listings > 0))[1] AS missed_newest_name,
           (array_agg(r.snapshot_id ORDER BY r.create_time DESC NULLS LAST, r.snapshot_id DESC) FILTER (WHERE r.is_system_disk AND r.status IN ('create_success', 'restoring', 'restore_success', 'restore_failed')))[1] AS system_disk_snapshot_id,
           (array_agg(r.create_time ORDER BY r.create_time DESC NULLS LAST, r.snapshot_id DESC) FILTER (WHERE r.is_system_disk AND r.status IN ('create_success', 'restoring', 'restore_success', 'restore_failed')))[1] AS system_disk_created_at,
           (array_agg(r.snapshot_id ORDER BY r.create_time DESC NULLS LAST, r.snapshot_id DESC) FILTER (WHERE NOT r.is_system_disk AND r.status IN ('create_success', 'restoring', 'restore_success', 'restore_failed')))[1] AS data_disk_snapshot_id,
           (array_agg(r.create_time ORDER BY r.create_time DESC NULLS LAST, r.snapshot_id DESC) FILTER (WHERE NOT r.is_system_disk AND r.status IN ('create_success', 'restoring', 'restore_success', 'restore_failed')))[1] AS data_disk_created_at
        FROM snapshot_records AS r
        WHERE r.project_id = d.project_id AND r.desktop_id = d.desktop_id
          AND r.deleted_at IS NULL
    ) AS l
    LEFT JOIN LATERAL (
        SELECT r.last_seen_at AS gone_last_seen_at, r.snapshot_id AS gone_snapshot_id,
               r.desktop_name AS gone_desktop_name
        FROM snapshot_records AS r
        WHERE r.project_id = d.project_id AND r.desktop_id = d.desktop_id
          AND (r.deleted_at IS NOT NULL OR r.missed_listings > 0)
        ORDER BY r.last_seen_at DESC, r.snapshot_id
        LIMIT 1
    ) AS g ON true
    CROSS JOIN LATERAL (
        SELECT count(*) FILTER (
               WHERE f.is_system_disk
                 AND (l.system_disk_created_at IS NULL OR f.create_time > l.system_disk_created_at)
           ) AS system_disk_failed_since,
           count(*) FILTER (
               WHERE NOT f.is_system_disk
                 AND (l.data_disk_created_at IS NULL OR f.create_time > l.data_disk_created_at)
           ) AS data_disk_failed_since
        FROM snapshot_records AS f
        WHERE f.project_id = d.project_id AND f.desktop_id = d.desktop_id
          AND f.status = 'create_failed'
    ) AS n
) AS c
WHERE k.project_id = c.project_id AND k.desktop_id = c.desktop_id
"""
)

NEXT_DESKTOPS = sa.text(
    """
SELECT project_id, desktop_id FROM snapshot_desktops
WHERE (project_id, desktop_id) > (CAST(:project_id AS text), CAST(:desktop_id AS text))
ORDER BY project_id, desktop_id
LIMIT :batch
"""
)

# The live winner of a desktop: of its rows seen in the newest listing (their last_seen_at is
# the listing's start once that is later: then the smallest id wins the tie) and its missed live
# rows, the one seen last (ties: the smallest id), as 0004's array_agg over the snapshots view.
DESKTOP_SNAPSHOT_COVERAGE = """
CREATE OR REPLACE VIEW desktop_snapshot_coverage AS
SELECT k.project_id,
       k.desktop_id,
       CASE
           WHEN k.gone_snapshot_id IS NULL OR l.last_seen_at > k.gone_last_seen_at
                OR (l.last_seen_at = k.gone_last_seen_at AND l.newest_id < k.gone_snapshot_id)
           THEN l.newest_name
           ELSE k.gone_desktop_name
       END AS desktop_name,
       k.live_snapshots,
       GREATEST(l.last_seen_at, k.gone_last_seen_at) AS last_seen_at,
       k.system_disk_snapshot_id,
       k.system_disk_created_at,
       now() - k.system_disk_created_at AS system_disk_age,
       k.system_disk_failed_since,
       k.data_disk_snapshot_id,
       k.data_disk_created_at,
       now() - k.data_disk_created_at AS data_disk_age,
       k.data_disk_failed_since
FROM snapshot_desktops AS k
LEFT JOIN projects AS p ON p.project_id = k.project_id
CROSS JOIN LATERAL (
    SELECT p.last_listing_at IS NOT NULL AND k.listed_last_seen_at <= p.last_listing_at
               AS at_listing
) AS a
CROSS JOIN LATERAL (
    SELECT CASE WHEN a.at_listing THEN p.last_listing_at ELSE k.listed_last_seen_at END AS seen,
           CASE WHEN a.at_listing THEN k.listed_first_id ELSE k.listed_newest_id END AS id,
           CASE WHEN a.at_listing THEN k.listed_first_name ELSE k.listed_newest_name END AS name
) AS u
CROSS JOIN LATERAL (
    SELECT k.missed_last_seen_at IS NULL OR u.seen > k.missed_last_seen_at
               OR (u.seen = k.missed_last_seen_at AND u.id < k.missed_newest_id) AS listed_wins
) AS w
CROSS JOIN LATERAL (
    SELECT GREATEST(u.seen, k.missed_last_seen_at) AS last_seen_at,
           CASE WHEN w.listed_wins THEN u.id ELSE k.missed_newest_id END AS newest_id,
           CASE WHEN w.listed_wins THEN u.name ELSE k.missed_newest_name END AS newest_name
) AS l
WHERE k.live_snapshots > 0 OR k.gone_snapshot_id IS NOT NULL
"""


def _log(message: str) -> None:
    logging.getLogger("snapsync.migrate").info("0006: %s", message)


def backfill(connection: sa.Connection, batch: int = BATCH_DESKTOPS) -> int:
    """Compute the coverage of every desktop, `batch` desktops a statement (autocommit)."""
    key = ("", "")
    written = 0
    started = time.monotonic()
    while True:
        rows = connection.execute(
            NEXT_DESKTOPS, {"project_id": key[0], "desktop_id": key[1], "batch": batch}
        ).all()
        if not rows:
            break
        written += connection.execute(
            REFRESH,
            {"project_ids": [r[0] for r in rows], "desktop_ids": [r[1] for r in rows]},
        ).rowcount
        key = (rows[-1][0], rows[-1][1])
    _log(f"computed the coverage of {written} desktops in {time.monotonic() - started:.1f}s")
    return written


def _comments() -> list[str]:
    from app import models

    columns = models.TABLE_COMMENTS["snapshot_desktops"][1]
    return [
        f"COMMENT ON COLUMN snapshot_desktops.{column} IS {V0004._quote(columns[column])}"
        for column, _ in COLUMNS
    ]


def upgrade() -> None:
    """Upgrade schema."""
    with V0004.session_lock():
        for column, type_ in COLUMNS:
            op.execute(f"ALTER TABLE snapshot_desktops ADD COLUMN IF NOT EXISTS {column} {type_}")
        for statement in _comments():
            op.execute(statement)
        with op.get_context().autocommit_block():
            connection = op.get_bind()
            connection.execute(sa.text(V0004.DESKTOPS))
            backfill(connection)
            connection.execute(sa.text(DESKTOP_SNAPSHOT_COVERAGE))
            connection.execute(sa.text("ANALYZE snapshot_desktops"))
            V0004._create_indexes(connection, INDEXES)


def downgrade() -> None:
    """Downgrade schema."""
    for name, *_ in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.execute(V0004.DESKTOP_SNAPSHOT_COVERAGE)
    for column, _ in reversed(COLUMNS):
        op.execute(f"ALTER TABLE snapshot_desktops DROP COLUMN IF EXISTS {column}")
