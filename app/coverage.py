"""Desktop coverage kept per desktop: the SQL that keeps `snapshot_desktops` holding what
`desktop_snapshot_coverage` reads (migration 0006), run by the page upsert and the deletion
update (app/store.py) and by retention's prune, in their transactions.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

# What desktop_snapshot_coverage reads, kept per desktop in snapshot_desktops (0006): what a
# desktop's rows give, so the view is one scan of the desktops instead of four lookups into
# snapshot_records for each. The only input the view adds is the project's newest complete
# listing (projects.last_listing_at), which moves without any snapshot row changing: so the live
# rows seen in it (missed_listings = 0) keep both their newest row and their first by id, and
# the view picks the one that listing time makes the newest (0001's snapshots.last_seen_at).
SUCCESSFUL = "('create_success', 'restoring', 'restore_success', 'restore_failed')"
_BY_SEEN = "ORDER BY r.last_seen_at DESC, r.snapshot_id"
_BY_CREATED = "ORDER BY r.create_time DESC NULLS LAST, r.snapshot_id DESC"
_LISTED = "FILTER (WHERE r.missed_listings = 0)"
_MISSED = "FILTER (WHERE r.missed_listings > 0)"
_SYSTEM_OK = f"FILTER (WHERE r.is_system_disk AND r.status IN {SUCCESSFUL})"
_DATA_OK = f"FILTER (WHERE NOT r.is_system_disk AND r.status IN {SUCCESSFUL})"

# Aggregates over a desktop's live rows (alias r).
COVERAGE_LIVE = f"""count(*) AS live_snapshots,
           max(r.last_seen_at) {_LISTED} AS listed_last_seen_at,
           (array_agg(r.snapshot_id {_BY_SEEN}) {_LISTED})[1] AS listed_newest_id,
           (array_agg(r.desktop_name {_BY_SEEN}) {_LISTED})[1] AS listed_newest_name,
           min(r.snapshot_id) {_LISTED} AS listed_first_id,
           (array_agg(r.desktop_name ORDER BY r.snapshot_id) {_LISTED})[1] AS listed_first_name,
           max(r.last_seen_at) {_MISSED} AS missed_last_seen_at,
           (array_agg(r.snapshot_id {_BY_SEEN}) {_MISSED})[1] AS missed_newest_id,
           (array_agg(r.desktop_name {_BY_SEEN}) {_MISSED})[1] AS missed_newest_name,
           (array_agg(r.snapshot_id {_BY_CREATED}) {_SYSTEM_OK})[1] AS system_disk_snapshot_id,
           (array_agg(r.create_time {_BY_CREATED}) {_SYSTEM_OK})[1] AS system_disk_created_at,
           (array_agg(r.snapshot_id {_BY_CREATED}) {_DATA_OK})[1] AS data_disk_snapshot_id,
           (array_agg(r.create_time {_BY_CREATED}) {_DATA_OK})[1] AS data_disk_created_at"""

# Failed creations (alias f) after the newest success of their disk (alias l), deleted or not.
COVERAGE_FAILED = """count(*) FILTER (
               WHERE f.is_system_disk
                 AND (l.system_disk_created_at IS NULL OR f.create_time > l.system_disk_created_at)
           ) AS system_disk_failed_since,
           count(*) FILTER (
               WHERE NOT f.is_system_disk
                 AND (l.data_disk_created_at IS NULL OR f.create_time > l.data_disk_created_at)
           ) AS data_disk_failed_since"""

COVERAGE_COLUMNS = (
    "live_snapshots",
    "listed_last_seen_at",
    "listed_newest_id",
    "listed_newest_name",
    "listed_first_id",
    "listed_first_name",
    "missed_last_seen_at",
    "missed_newest_id",
    "missed_newest_name",
    "gone_last_seen_at",
    "gone_snapshot_id",
    "gone_desktop_name",
    "system_disk_snapshot_id",
    "system_disk_created_at",
    "system_disk_failed_since",
    "data_disk_snapshot_id",
    "data_disk_created_at",
    "data_disk_failed_since",
)
_SET_COVERAGE = ",\n    ".join(f"{c} = c.{c}" for c in COVERAGE_COLUMNS)

# The statement the sync runs after writing snapshot rows (page upsert, deletion update) and
# retention after removing some, for the desktops those rows belong to (before or after the
# change): each desktop read through its indexes (a live row's columns index-only from
# ix_snapshot_records_live_desktop, the newest gone row as the top entry of
# ix_snapshot_records_gone, failures from ix_snapshot_records_failed). LOCK_COVERAGE runs first,
# in the same transaction: this statement then reads what committed before the lock was had,
# so a sync and a prune of the same desktop cannot leave it computed from a stale snapshot.
REFRESH_COVERAGE = text(
    f"""
UPDATE snapshot_desktops AS k SET
    {_SET_COVERAGE}
FROM (
    SELECT d.project_id, d.desktop_id, l.*, g.*, n.*
    FROM unnest(CAST(:project_ids AS text[]), CAST(:desktop_ids AS text[]))
        AS d(project_id, desktop_id)
    CROSS JOIN LATERAL (
        SELECT {COVERAGE_LIVE}
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
        {_BY_SEEN}
        LIMIT 1
    ) AS g ON true
    CROSS JOIN LATERAL (
        SELECT {COVERAGE_FAILED}
        FROM snapshot_records AS f
        WHERE f.project_id = d.project_id AND f.desktop_id = d.desktop_id
          AND f.status = 'create_failed'
    ) AS n
) AS c
WHERE k.project_id = c.project_id AND k.desktop_id = c.desktop_id
"""
)

# Rows locked in key order, so two writers of overlapping desktops never deadlock.
LOCK_COVERAGE = text(
    """
SELECT 1 FROM snapshot_desktops AS k
JOIN unnest(CAST(:project_ids AS text[]), CAST(:desktop_ids AS text[])) AS d(project_id, desktop_id)
  ON k.project_id = d.project_id AND k.desktop_id = d.desktop_id
ORDER BY k.project_id, k.desktop_id
FOR UPDATE OF k
"""
)


# The same facts for every desktop at once, set-based (for a database filled without the sync:
# benchmarks/reporting.py runs BACKFILL_STATEMENTS after its bulk inserts, without indexes).
FILL_COVERAGE = f"""
WITH live AS (
    SELECT r.project_id, r.desktop_id, {COVERAGE_LIVE}
    FROM snapshot_records AS r
    WHERE r.deleted_at IS NULL AND r.desktop_id IS NOT NULL
    GROUP BY r.project_id, r.desktop_id
),
gone AS (
    SELECT DISTINCT ON (r.project_id, r.desktop_id)
           r.project_id, r.desktop_id, r.last_seen_at AS gone_last_seen_at,
           r.snapshot_id AS gone_snapshot_id, r.desktop_name AS gone_desktop_name
    FROM snapshot_records AS r
    WHERE (r.deleted_at IS NOT NULL OR r.missed_listings > 0) AND r.desktop_id IS NOT NULL
    ORDER BY r.project_id, r.desktop_id, r.last_seen_at DESC, r.snapshot_id
),
failed AS (
    SELECT f.project_id, f.desktop_id, {COVERAGE_FAILED}
    FROM snapshot_records AS f
    LEFT JOIN live AS l ON l.project_id = f.project_id AND l.desktop_id = f.desktop_id
    WHERE f.status = 'create_failed' AND f.desktop_id IS NOT NULL
    GROUP BY f.project_id, f.desktop_id
)
UPDATE snapshot_desktops AS k SET
    {_SET_COVERAGE}
FROM (
    SELECT d.project_id, d.desktop_id,
           COALESCE(l.live_snapshots, 0) AS live_snapshots,
           {", ".join("l." + c for c in COVERAGE_COLUMNS[1:9])},
           g.gone_last_seen_at, g.gone_snapshot_id, g.gone_desktop_name,
           l.system_disk_snapshot_id, l.system_disk_created_at,
           COALESCE(n.system_disk_failed_since, 0) AS system_disk_failed_since,
           l.data_disk_snapshot_id, l.data_disk_created_at,
           COALESCE(n.data_disk_failed_since, 0) AS data_disk_failed_since
    FROM snapshot_desktops AS d
    LEFT JOIN live AS l ON l.project_id = d.project_id AND l.desktop_id = d.desktop_id
    LEFT JOIN gone AS g ON g.project_id = d.project_id AND g.desktop_id = d.desktop_id
    LEFT JOIN failed AS n ON n.project_id = d.project_id AND n.desktop_id = d.desktop_id
) AS c
WHERE k.project_id = c.project_id AND k.desktop_id = c.desktop_id
"""

FILL_DESKTOPS = """
INSERT INTO snapshot_desktops (project_id, desktop_id)
SELECT DISTINCT project_id, desktop_id FROM snapshot_records WHERE desktop_id IS NOT NULL
ON CONFLICT DO NOTHING
"""

# What the sync writes beside the rows, derived for a database filled by bulk inserts
# (benchmarks/reporting.py runs them in order after its own).
BACKFILL_STATEMENTS = (FILL_DESKTOPS, FILL_COVERAGE)


async def refresh(conn: AsyncConnection, desktops: Sequence[tuple[str, str | None]]) -> int:
    """Recompute the snapshot_desktops rows of these (project_id, desktop_id) pairs from their
    snapshot rows, in the caller's transaction; returns how many rows were rewritten."""
    keys = sorted({(p, d) for p, d in desktops if d is not None})
    if not keys:
        return 0
    params = {"project_ids": [p for p, _ in keys], "desktop_ids": [d for _, d in keys]}
    await conn.execute(LOCK_COVERAGE, params)
    return int((await conn.execute(REFRESH_COVERAGE, params)).rowcount)


# A project's first sync fills its desktops' coverage once, at the end of its listing
# (app/runs.py Run.fill_coverage), instead of recomputing a desktop on every page that holds one
# of its snapshots. The same per-desktop statement as `refresh`, so every desktop is read through
# its indexes whatever the statistics say: right after a first sync they still describe an
# empty table, and the set-based FILL_COVERAGE, planned from them, joined its CTEs in nested
# loops (over 3 minutes for 15,500 desktops before it was stopped, against about a second).
PROJECT_DESKTOPS = text(
    "SELECT desktop_id FROM snapshot_desktops WHERE project_id = :project_id "
    "ORDER BY project_id, desktop_id FOR UPDATE"
)
FILL_BATCH = 5000


async def fill_project(conn: AsyncConnection, project_id: str) -> int:
    """Recompute the snapshot_desktops rows of every desktop of the project in the caller's
    transaction (rows locked in key order first, as `refresh` does), FILL_BATCH desktops a
    statement; returns how many rows were rewritten."""
    desktops = list((await conn.execute(PROJECT_DESKTOPS, {"project_id": project_id})).scalars())
    filled = 0
    for start in range(0, len(desktops), FILL_BATCH):
        batch = desktops[start : start + FILL_BATCH]
        params = {"project_ids": [project_id] * len(batch), "desktop_ids": batch}
        filled += int((await conn.execute(REFRESH_COVERAGE, params)).rowcount)
    return filled
