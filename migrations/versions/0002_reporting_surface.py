"""reporting surface: views, comments on everything queryable, the snapsync_reader role

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

Five views that answer the usual questions without reading the code (`snapshots_current`,
`snapshot_status_intervals`, `snapshot_operation_durations`, `desktop_snapshot_coverage`,
`project_sync_health`); a COMMENT on every relation and column a user can query, the 0001 ones
included; and the NOLOGIN role `snapsync_reader` with SELECT on all of it, now and for the
relations later migrations create. docs/reporting.md is the user's guide to all of this.

No index is added: every view reads through an index 0001 already has
(`ix_snapshot_status_history_snapshot` for the per-snapshot history, `pk_snapshot_records` and
`ix_snapshot_records_project_id_desktop_id` for per-project and per-desktop lookups,
`ix_sync_runs_project_id_started_at` for the newest runs of a project).

Roles are cluster-wide, so the role is created only when missing and the downgrade revokes what
this revision granted in this database but leaves the role: other databases of the cluster may
use it. `DROP ROLE snapsync_reader` succeeds once no database grants it anything.

Later migrations that create a relation should end with `GRANT SELECT ON ALL TABLES IN SCHEMA
... TO snapsync_reader` (see `grant_reader()` below): the default privileges set here cover only
relations created by the role that ran this migration.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

READER = "snapsync_reader"


def nonneg(interval: str) -> str:
    """The interval, or zero when clocks disagree (the API's create_time vs. snapsync's).

    NULL stays NULL: it means "unknown" in these views.
    """
    return f"CASE WHEN {interval} < interval '0' THEN interval '0' ELSE {interval} END"


SNAPSHOTS_CURRENT = """
CREATE VIEW snapshots_current AS
SELECT s.project_id,
       s.snapshot_id,
       s.snapshot_name,
       s.desktop_id,
       s.desktop_name,
       s.desktop_sid,
       s.desktop_pool_id,
       s.is_system_disk,
       s.status,
       s.process,
       s.description,
       s.create_time,
       s.create_type,
       s.last_restore_time,
       s.restore_fail_reason,
       s.raw,
       s.first_seen_at,
       s.last_seen_at,
       s.last_changed_at
FROM snapshots AS s
WHERE s.deleted_at IS NULL
"""

# One row per history row: the period that row opened. The next history row of the same
# snapshot closes it. `confirmed_until` is the last time snapsync saw the snapshot in this
# status: the next row's `previous_observed_at`, or for the current period the snapshot's
# `last_seen_at` (live) or the newest complete listing that still lacked it (deleted).
SNAPSHOT_STATUS_INTERVALS = f"""
CREATE VIEW snapshot_status_intervals AS
SELECT b.project_id,
       b.snapshot_id,
       b.desktop_id,
       b.desktop_name,
       b.is_system_disk,
       b.status,
       b.previous_status,
       b.next_status,
       b.entered_after,
       b.entered_by,
       b.left_after,
       b.left_by,
       b.is_current,
       b.confirmed_until,
       b.min_duration,
       b.max_duration,
       extract(epoch FROM b.min_duration)::double precision AS min_seconds,
       extract(epoch FROM b.max_duration)::double precision AS max_seconds,
       b.history_id,
       b.next_history_id,
       b.sync_run_id
FROM (
    SELECT w.project_id,
           w.snapshot_id,
           s.desktop_id,
           s.desktop_name,
           s.is_system_disk,
           w.to_status AS status,
           w.from_status AS previous_status,
           w.next_status,
           w.previous_observed_at AS entered_after,
           w.observed_at AS entered_by,
           w.next_previous_observed_at AS left_after,
           w.next_observed_at AS left_by,
           w.next_id IS NULL AS is_current,
           c.confirmed_until,
           {nonneg("c.confirmed_until - w.observed_at")} AS min_duration,
           {nonneg("COALESCE(w.next_observed_at, now()) - w.previous_observed_at")}
               AS max_duration,
           w.id AS history_id,
           w.next_id AS next_history_id,
           w.sync_run_id
    FROM (
        SELECT h.*,
               lead(h.id) OVER w AS next_id,
               lead(h.to_status) OVER w AS next_status,
               lead(h.previous_observed_at) OVER w AS next_previous_observed_at,
               lead(h.observed_at) OVER w AS next_observed_at
        FROM snapshot_status_history AS h
        WINDOW w AS (PARTITION BY h.project_id, h.snapshot_id ORDER BY h.observed_at, h.id)
    ) AS w
    LEFT JOIN snapshots AS s ON s.project_id = w.project_id AND s.snapshot_id = w.snapshot_id
    LEFT JOIN projects AS p ON p.project_id = w.project_id
    CROSS JOIN LATERAL (
        SELECT CASE
                   WHEN w.next_id IS NOT NULL THEN w.next_previous_observed_at
                   WHEN w.to_status = 'deleted'
                   THEN GREATEST(w.observed_at, p.last_listing_at)
                   ELSE GREATEST(w.observed_at, s.last_seen_at)
               END AS confirmed_until
    ) AS c
) AS b
"""

# Creations: one per snapshot, from `create_time` to the first history row whose status is not
# `creating`. Restores: each `restoring` period, plus each change into restore_success or
# restore_failed that was not seen restoring (the whole restore fell between two syncs).
SNAPSHOT_OPERATION_DURATIONS = f"""
CREATE VIEW snapshot_operation_durations AS
WITH creations AS (
    SELECT s.project_id,
           s.snapshot_id,
           'create'::text AS operation,
           CASE
               WHEN e.id IS NULL THEN 'running'
               WHEN e.to_status IN ('restoring', 'restore_success', 'restore_failed')
               THEN 'create_success'
               ELSE e.to_status
           END AS outcome,
           e.id IS NULL OR e.from_status IS NOT NULL AS observed_in_flight,
           s.create_time AS started_after,
           s.create_time AS started_by,
           CASE WHEN e.from_status IS NOT NULL THEN e.previous_observed_at END AS ended_after,
           e.observed_at AS ended_by,
           CASE
               WHEN e.id IS NULL THEN {nonneg("s.last_seen_at - s.create_time")}
               WHEN e.from_status IS NOT NULL
               THEN {nonneg("e.previous_observed_at - s.create_time")}
           END AS min_duration,
           {nonneg("COALESCE(e.observed_at, now()) - s.create_time")} AS max_duration,
           e.sync_run_id AS ended_sync_run_id
    FROM snapshots AS s
    LEFT JOIN LATERAL (
        SELECT h.id, h.from_status, h.to_status, h.previous_observed_at, h.observed_at,
               h.sync_run_id
        FROM snapshot_status_history AS h
        WHERE h.project_id = s.project_id
          AND h.snapshot_id = s.snapshot_id
          AND h.to_status <> 'creating'
        ORDER BY h.observed_at, h.id
        LIMIT 1
    ) AS e ON true
),
restores AS (
    SELECT i.project_id,
           i.snapshot_id,
           'restore'::text AS operation,
           CASE WHEN i.is_current THEN 'running' ELSE i.next_status END AS outcome,
           true AS observed_in_flight,
           i.entered_after AS started_after,
           i.entered_by AS started_by,
           i.left_after AS ended_after,
           i.left_by AS ended_by,
           i.min_duration,
           i.max_duration,
           h.sync_run_id AS ended_sync_run_id
    FROM snapshot_status_intervals AS i
    LEFT JOIN snapshot_status_history AS h ON h.id = i.next_history_id
    WHERE i.status = 'restoring'
    UNION ALL
    SELECT h.project_id,
           h.snapshot_id,
           'restore'::text,
           h.to_status,
           false,
           h.previous_observed_at,
           h.observed_at,
           h.previous_observed_at,
           h.observed_at,
           NULL::interval,
           {nonneg("h.observed_at - h.previous_observed_at")},
           h.sync_run_id
    FROM snapshot_status_history AS h
    WHERE h.to_status IN ('restore_success', 'restore_failed')
      AND h.from_status IS NOT NULL
      AND h.from_status NOT IN ('restoring', 'deleted')
),
operations AS (
    SELECT * FROM creations
    UNION ALL
    SELECT r.*
    FROM restores AS r
)
SELECT o.project_id,
       o.snapshot_id,
       s.desktop_id,
       s.desktop_name,
       s.is_system_disk,
       o.operation,
       o.outcome,
       o.observed_in_flight,
       o.started_after,
       o.started_by,
       o.ended_after,
       o.ended_by,
       o.min_duration,
       o.max_duration,
       extract(epoch FROM o.min_duration)::double precision AS min_seconds,
       extract(epoch FROM o.max_duration)::double precision AS max_seconds,
       CASE
           WHEN o.operation = 'restore' AND o.outcome = 'restore_failed'
                AND s.status = 'restore_failed' AND s.deleted_at IS NULL
                AND o.ended_by = (
                    SELECT max(h.observed_at) FROM snapshot_status_history AS h
                    WHERE h.project_id = o.project_id AND h.snapshot_id = o.snapshot_id
                )
           THEN s.restore_fail_reason
       END AS restore_fail_reason,
       o.ended_sync_run_id
FROM operations AS o
JOIN snapshots AS s ON s.project_id = o.project_id AND s.snapshot_id = o.snapshot_id
"""

# A creation succeeded when the snapshot is usable: created, and possibly restored since.
SUCCESSFUL = "('create_success', 'restoring', 'restore_success', 'restore_failed')"

DESKTOP_SNAPSHOT_COVERAGE = f"""
CREATE VIEW desktop_snapshot_coverage AS
SELECT d.project_id,
       d.desktop_id,
       d.desktop_name,
       d.live_snapshots,
       d.last_seen_at,
       sys.snapshot_id AS system_disk_snapshot_id,
       sys.create_time AS system_disk_created_at,
       now() - sys.create_time AS system_disk_age,
       (SELECT count(*) FROM snapshot_records AS f
        WHERE f.project_id = d.project_id AND f.desktop_id = d.desktop_id
          AND f.is_system_disk AND f.status = 'create_failed'
          AND (sys.create_time IS NULL OR f.create_time > sys.create_time)
       ) AS system_disk_failed_since,
       dat.snapshot_id AS data_disk_snapshot_id,
       dat.create_time AS data_disk_created_at,
       now() - dat.create_time AS data_disk_age,
       (SELECT count(*) FROM snapshot_records AS f
        WHERE f.project_id = d.project_id AND f.desktop_id = d.desktop_id
          AND NOT f.is_system_disk AND f.status = 'create_failed'
          AND (dat.create_time IS NULL OR f.create_time > dat.create_time)
       ) AS data_disk_failed_since
FROM (
    SELECT s.project_id,
           s.desktop_id,
           (array_agg(s.desktop_name ORDER BY s.last_seen_at DESC, s.snapshot_id))[1]
               AS desktop_name,
           count(*) FILTER (WHERE s.deleted_at IS NULL) AS live_snapshots,
           max(s.last_seen_at) AS last_seen_at
    FROM snapshots AS s
    WHERE s.desktop_id IS NOT NULL
    GROUP BY s.project_id, s.desktop_id
) AS d
LEFT JOIN LATERAL (
    SELECT r.snapshot_id, r.create_time
    FROM snapshot_records AS r
    WHERE r.project_id = d.project_id AND r.desktop_id = d.desktop_id
      AND r.deleted_at IS NULL AND r.is_system_disk AND r.status IN {SUCCESSFUL}
    ORDER BY r.create_time DESC NULLS LAST, r.snapshot_id DESC
    LIMIT 1
) AS sys ON true
LEFT JOIN LATERAL (
    SELECT r.snapshot_id, r.create_time
    FROM snapshot_records AS r
    WHERE r.project_id = d.project_id AND r.desktop_id = d.desktop_id
      AND r.deleted_at IS NULL AND NOT r.is_system_disk AND r.status IN {SUCCESSFUL}
    ORDER BY r.create_time DESC NULLS LAST, r.snapshot_id DESC
    LIMIT 1
) AS dat ON true
"""

PROJECT_SYNC_HEALTH = """
CREATE VIEW project_sync_health AS
SELECT p.project_id,
       p.region,
       r.id AS last_run_id,
       r.status AS last_run_status,
       r.started_at AS last_run_started_at,
       r.finished_at AS last_run_finished_at,
       r.finished_at - r.started_at AS last_run_duration,
       r.error AS last_run_error,
       r.snapshots_seen AS last_run_snapshots_seen,
       r.transitions AS last_run_transitions,
       r.rejected AS last_run_rejected,
       ok.id AS last_success_run_id,
       ok.finished_at AS last_success_at,
       now() - ok.finished_at AS last_success_age,
       (SELECT count(*) FROM sync_runs AS f
        WHERE f.project_id = p.project_id AND f.status IN ('failed', 'abandoned')
          AND (ok.id IS NULL OR f.started_at > ok.started_at)
       ) AS consecutive_failures,
       p.last_listing_at AS last_complete_listing_at,
       p.api_total_count,
       live.n AS live_snapshots,
       live.n - p.api_total_count AS live_minus_api
FROM projects AS p
LEFT JOIN LATERAL (
    SELECT * FROM sync_runs AS x
    WHERE x.project_id = p.project_id
    ORDER BY x.started_at DESC, x.id DESC
    LIMIT 1
) AS r ON true
LEFT JOIN LATERAL (
    SELECT x.id, x.started_at, x.finished_at FROM sync_runs AS x
    WHERE x.project_id = p.project_id AND x.status = 'succeeded'
    ORDER BY x.started_at DESC, x.id DESC
    LIMIT 1
) AS ok ON true
CROSS JOIN LATERAL (
    SELECT count(*) AS n FROM snapshot_records AS x
    WHERE x.project_id = p.project_id AND x.deleted_at IS NULL
) AS live
"""

# Created in this order, dropped in the reverse one (later views read earlier ones).
VIEWS: tuple[tuple[str, str], ...] = (
    ("snapshots_current", SNAPSHOTS_CURRENT),
    ("snapshot_status_intervals", SNAPSHOT_STATUS_INTERVALS),
    ("snapshot_operation_durations", SNAPSHOT_OPERATION_DURATIONS),
    ("desktop_snapshot_coverage", DESKTOP_SNAPSHOT_COVERAGE),
    ("project_sync_health", PROJECT_SYNC_HEALTH),
)

# -- comments ----------------------------------------------------------------------------------
# Kept word for word in app/models.py (`comment=`) for the four tables, so that autogenerate
# finds no difference; the relations of 0001 lose their comments again on downgrade.

UTC = "UTC"
API = "Copied from the API item"

_SNAPSHOT_COLUMNS: dict[str, str] = {
    "project_id": "Huawei Cloud project the snapshot belongs to (as in SNAPSYNC_PROJECTS).",
    "snapshot_id": "Snapshot id from the API; unique within the project.",
    "snapshot_name": f"{API} (snapshot_name). Disks of one desktop snapshotted together share it.",
    "desktop_id": f"{API} (desktop_id): the desktop the snapshot was taken of.",
    "desktop_name": f"{API} (desktop_name).",
    "desktop_sid": f"{API} (desktop_sid): the desktop's security identifier.",
    "desktop_pool_id": f"{API} (desktop_pool_id). NULL: a personal desktop, in no pool.",
    "is_system_disk": (
        f"{API} (is_system_disk): true for the system disk, false for a data disk. "
        "NULL: the API did not say."
    ),
    "status": (
        f"{API} (status): creating, create_success, create_failed, restoring, "
        "restore_success or restore_failed (other values are stored as given)."
    ),
    "process": (
        f"{API} (process): progress of the running creation or restore, percent 0..100. "
        "NULL when no task runs."
    ),
    "description": f"{API} (description). NULL: none given.",
    "create_time": f"{API} (create_time): when the snapshot was created, {UTC}.",
    "create_type": f"{API} (create_type): AUTO (a snapshot policy) or MANUALLY.",
    "last_restore_time": (
        f"{API} (last_restore_time): when the desktop was last restored from this snapshot, "
        f"{UTC}. NULL: never restored."
    ),
    "restore_fail_reason": (
        f"{API} (restore_fail_reason): why the last restore failed, in the API's words. "
        "NULL: no failed restore."
    ),
    "raw": "The item exactly as the API returned it (jsonb), including fields snapsync ignores.",
    "first_seen_at": f"When snapsync first saw the snapshot, {UTC}.",
    "last_seen_at": (
        f"The newest listing that included the snapshot: for a snapshot in the project's newest "
        f"complete listing, that listing's start; otherwise the last time it was seen, {UTC}."
    ),
    "last_changed_at": (
        f"When snapsync last saw any API field of the snapshot change (status, process, "
        f"name, ...), {UTC}."
    ),
    "deleted_at": (
        f"When snapsync confirmed the snapshot gone (absent from SNAPSYNC_DELETE_AFTER_MISSES "
        f"consecutive complete listings), {UTC}. NULL while it is listed."
    ),
}

TABLE_COMMENTS: dict[str, tuple[str, dict[str, str]]] = {
    "projects": (
        "One row per cloud project snapsync has synced: its region and its newest complete "
        "listing (a listing that read every page).",
        {
            "project_id": "Huawei Cloud project id, as configured in SNAPSYNC_PROJECTS.",
            "region": "Region the project is synced in (e.g. cn-north-4).",
            "last_listing_at": (
                f"Start of the project's newest complete listing, {UTC}. NULL: no complete "
                "listing yet."
            ),
            "last_listing_run_id": (
                "sync_runs.id of the newest complete listing. NULL: no complete listing yet."
            ),
            "api_total_count": (
                "total_count the API reported in the newest complete listing: the snapshots "
                "the project had then. NULL: no complete listing yet."
            ),
            "updated_at": f"When this row last changed, {UTC}.",
        },
    ),
    "sync_runs": (
        "One row per sync of one project: when, how it ended, what it saw and wrote.",
        {
            "id": "Run id, increasing; snapshot_status_history.sync_run_id refers to it.",
            "project_id": "The project synced.",
            "kind": "full: a listing of every page of the project.",
            "started_at": f"When the run started, {UTC}.",
            "finished_at": f"When the run ended, {UTC}. NULL while it is running.",
            "status": (
                "running, succeeded, failed, or abandoned (the process running it died; "
                "the next sync of the project marks it)."
            ),
            "complete": "Whether the listing read every page (only then can snapshots be deleted).",
            "pages": "Pages of the listing read.",
            "requests": "HTTP requests made to the API, retries and re-checks included.",
            "snapshots_seen": "Distinct snapshots the listing returned.",
            "inserted": "Snapshots seen for the first time.",
            "updated": "Known snapshots whose API fields changed (or that came back).",
            "unchanged": "Snapshots seen with no change (no row written).",
            "deleted": "Snapshots confirmed gone and marked deleted by this run.",
            "transitions": "Rows this run wrote to snapshot_status_history.",
            "rejected": "Items the API returned that failed validation and were not stored.",
            "api_total_count": (
                "total_count the API reported on the last page read. NULL: no page was read."
            ),
            "error": "Why the run failed, for people. NULL unless it failed or was abandoned.",
            "owner": "host:pid of the process that ran the sync.",
        },
    ),
    "snapshot_records": (
        "The stored state of every snapshot ever seen, live and deleted. Query the snapshots "
        "view instead: it adds the current last_seen_at.",
        {
            **{k: v for k, v in _SNAPSHOT_COLUMNS.items() if k != "last_seen_at"},
            "last_seen_at": (
                f"Stored last time the snapshot was seen, {UTC}; the snapshots view reports a "
                "later time for snapshots in the newest complete listing."
            ),
            "content_hash": "64-bit digest of raw, to skip unchanged items without rewriting them.",
            "missed_listings": (
                "Consecutive complete listings that lacked the snapshot; 0 while it is listed."
            ),
            "last_run_id": "sync_runs.id of the run that last wrote this row.",
        },
    ),
    "snapshot_status_history": (
        "One row per observed status change of a snapshot: first sighting, change, deletion "
        "(to_status deleted) and reappearance (from_status deleted). A change of process "
        "alone is not a status change.",
        {
            "id": "Row id, increasing in the order rows were written.",
            "project_id": "The snapshot's project.",
            "snapshot_id": "The snapshot (snapshots.snapshot_id).",
            "from_status": (
                "Status before the change; deleted on reappearance. NULL on the first sighting."
            ),
            "to_status": "Status after the change; deleted when the snapshot was confirmed gone.",
            "observed_at": (
                f"When snapsync saw the new status (the change happened before), {UTC}."
            ),
            "previous_observed_at": (
                f"When snapsync last saw the old status (the change happened after), {UTC}. "
                "NULL on the first sighting."
            ),
            "process": "The API's process (percent) with the new status. NULL: no task running.",
            "sync_run_id": "The run that saw the change (sync_runs.id). NULL: run row deleted.",
        },
    ),
}

VIEW_COMMENTS: dict[str, tuple[str, dict[str, str]]] = {
    "snapshots": (
        "One row per snapshot ever seen (live and deleted), unique on (project_id, "
        "snapshot_id): typed copies of the API fields, the raw item, and when snapsync saw it. "
        "Times are UTC.",
        dict(_SNAPSHOT_COLUMNS),
    ),
    "snapshots_current": (
        "The live snapshots: the rows of snapshots that are not deleted (deleted_at IS NULL).",
        {k: v for k, v in _SNAPSHOT_COLUMNS.items() if k != "deleted_at"},
    ),
    "snapshot_status_intervals": (
        "One row per period a snapshot spent in one status, from the history: when it entered "
        "(between entered_after and entered_by), when it left (between left_after and "
        "left_by), and bounds of the duration. The current period of each snapshot has "
        "is_current true. Times are UTC.",
        {
            "project_id": "The snapshot's project.",
            "snapshot_id": "The snapshot.",
            "desktop_id": "The snapshot's desktop (snapshots.desktop_id).",
            "desktop_name": "The snapshot's desktop name (snapshots.desktop_name).",
            "is_system_disk": "true: system disk; false: data disk (snapshots.is_system_disk).",
            "status": "The status of this period (deleted: confirmed gone).",
            "previous_status": "Status of the period before. NULL: the first sighting.",
            "next_status": "Status of the period after. NULL: this period is current.",
            "entered_after": (
                "The status was entered after this time (the old status was last seen then). "
                "NULL: before snapsync first saw the snapshot."
            ),
            "entered_by": "The status was entered by this time (snapsync saw it then).",
            "left_after": "The status was left after this time. NULL: the period is current.",
            "left_by": "The status was left by this time. NULL: the period is current.",
            "is_current": "Whether this is the snapshot's current period.",
            "confirmed_until": (
                "The last time snapsync saw the snapshot in this status (for deleted: the "
                "newest complete listing without it)."
            ),
            "min_duration": (
                "Shortest the period can have lasted: confirmed_until - entered_by "
                "(for a current period, so far)."
            ),
            "max_duration": (
                "Longest it can have lasted: left_by - entered_after; for a current period, "
                "now() - entered_after. NULL: entered before the first sighting."
            ),
            "min_seconds": "min_duration in seconds.",
            "max_seconds": "max_duration in seconds. NULL: entered before the first sighting.",
            "history_id": "snapshot_status_history.id of the row that entered this status.",
            "next_history_id": (
                "snapshot_status_history.id of the row that left it. NULL: current period."
            ),
            "sync_run_id": "The run that saw the status entered (sync_runs.id).",
        },
    ),
    "snapshot_operation_durations": (
        "One row per creation (every snapshot has one, started at create_time) and per restore "
        "snapsync observed (a restoring period, or a change into restore_success or "
        "restore_failed between two syncs), with its outcome and bounds of its duration. "
        "For timing statistics keep observed_in_flight rows. Times are UTC.",
        {
            "project_id": "The snapshot's project.",
            "snapshot_id": "The snapshot.",
            "desktop_id": "The snapshot's desktop.",
            "desktop_name": "The snapshot's desktop name.",
            "is_system_disk": "true: system disk; false: data disk.",
            "operation": "create or restore.",
            "outcome": (
                "create_success, create_failed, restore_success, restore_failed; running "
                "while it runs; deleted when the snapshot vanished before it ended."
            ),
            "observed_in_flight": (
                "Whether snapsync saw the operation running (status creating or restoring). "
                "When false the operation ended before it was first seen, and only "
                "max_duration bounds its length."
            ),
            "started_after": (
                "The operation started after this time (create: create_time). "
                "NULL: a restore running when snapsync first saw the snapshot."
            ),
            "started_by": "The operation started by this time (create: create_time).",
            "ended_after": (
                "The operation ended after this time. NULL: still running, or ended before "
                "snapsync first saw the snapshot."
            ),
            "ended_by": "The operation ended by this time. NULL: still running.",
            "min_duration": (
                "Shortest it can have taken (so far, while running): ended_after - started_by. "
                "NULL: not seen running."
            ),
            "max_duration": (
                "Longest it can have taken: ended_by (now() while running) - started_after. "
                "NULL: start unknown."
            ),
            "min_seconds": "min_duration in seconds.",
            "max_seconds": "max_duration in seconds.",
            "restore_fail_reason": (
                "The API's restore_fail_reason, on the snapshot's newest restore when it "
                "failed and the snapshot is still restore_failed. NULL otherwise."
            ),
            "ended_sync_run_id": "The run that saw the operation end. NULL: still running.",
        },
    ),
    "desktop_snapshot_coverage": (
        "One row per desktop that has had a snapshot: its newest successful live snapshot of "
        "the system disk and of the data disk, their age, and failed creations since. A "
        "snapshot counts as successful when its creation succeeded (create_success, "
        "restoring, restore_success, restore_failed). Times are UTC.",
        {
            "project_id": "The desktop's project.",
            "desktop_id": "The desktop (snapshots.desktop_id).",
            "desktop_name": "The desktop's name on its most recently seen snapshot.",
            "live_snapshots": "Snapshots of the desktop that are not deleted.",
            "last_seen_at": "Newest last_seen_at of its snapshots: when the desktop was last seen.",
            "system_disk_snapshot_id": (
                "Newest successful live system-disk snapshot. NULL: there is none."
            ),
            "system_disk_created_at": "Its create_time. NULL: there is none.",
            "system_disk_age": "now() - system_disk_created_at. NULL: there is none.",
            "system_disk_failed_since": (
                "System-disk snapshots (live or deleted) in create_failed created after "
                "system_disk_created_at; all of them when there is no successful one."
            ),
            "data_disk_snapshot_id": (
                "Newest successful live data-disk snapshot. NULL: there is none."
            ),
            "data_disk_created_at": "Its create_time. NULL: there is none.",
            "data_disk_age": "now() - data_disk_created_at. NULL: there is none.",
            "data_disk_failed_since": (
                "Data-disk snapshots (live or deleted) in create_failed created after "
                "data_disk_created_at; all of them when there is no successful one."
            ),
        },
    ),
    "project_sync_health": (
        "One row per project: its newest sync run and how it ended, its newest successful run "
        "and its age, failures since, and the snapshots the API reported against the live "
        "rows. Times are UTC.",
        {
            "project_id": "The project.",
            "region": "Its region.",
            "last_run_id": "Newest run of the project (by start). NULL: never synced.",
            "last_run_status": "running, succeeded, failed or abandoned.",
            "last_run_started_at": "When the newest run started.",
            "last_run_finished_at": "When it ended. NULL while it runs.",
            "last_run_duration": "finished - started. NULL while it runs.",
            "last_run_error": "Why it failed. NULL unless it failed or was abandoned.",
            "last_run_snapshots_seen": "Distinct snapshots it listed (so far, while running).",
            "last_run_transitions": "History rows it wrote.",
            "last_run_rejected": "Items of its listing that failed validation.",
            "last_success_run_id": "Newest succeeded run. NULL: none yet.",
            "last_success_at": "When that run finished. NULL: none yet.",
            "last_success_age": "now() - last_success_at: how stale the data is. NULL: none yet.",
            "consecutive_failures": (
                "Failed or abandoned runs started after the newest succeeded one (all of "
                "them when none succeeded)."
            ),
            "last_complete_listing_at": (
                "Start of the newest listing that read every page (projects.last_listing_at)."
            ),
            "api_total_count": (
                "Snapshots the API reported in that listing. NULL: no complete listing yet."
            ),
            "live_snapshots": "Snapshots of the project that are not deleted.",
            "live_minus_api": (
                "live_snapshots - api_total_count: 0 when the mirror matches the last complete "
                "listing; positive while snapshots gone from the API await confirmation."
            ),
        },
    ),
}

ALEMBIC_VERSION_COMMENT = (
    "Alembic's bookkeeping: the schema revision the database is at (snapsync migrate).",
    {"version_num": "Current revision id, e.g. 0002."},
)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comment_statements(kind: str, name: str, comment: str, columns: dict[str, str]) -> list[str]:
    statements = [f"COMMENT ON {kind} {name} IS {_literal(comment)}"]
    statements += [
        f"COMMENT ON COLUMN {name}.{column} IS {_literal(text)}" for column, text in columns.items()
    ]
    return statements


def _uncomment_statements(kind: str, name: str, columns: dict[str, str]) -> list[str]:
    statements = [f"COMMENT ON {kind} {name} IS NULL"]
    statements += [f"COMMENT ON COLUMN {name}.{column} IS NULL" for column in columns]
    return statements


# -- the reader role ---------------------------------------------------------------------------

# A concurrent `snapsync migrate` of another database of the cluster may create the role between
# the check and the CREATE; a migrating user without CREATEROLE gets a warning and no grants
# instead of a failed upgrade (docs/reporting.md says what an administrator runs then).
NO_ROLE_WARNING = (
    f"snapsync: role % may not create role {READER}, so read-only access is not set up; "
    f"ask an administrator to run CREATE ROLE {READER} NOLOGIN, then the GRANTs of "
    "docs/reporting.md"
)
CREATE_READER = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
        BEGIN
            CREATE ROLE {READER} NOLOGIN;
        EXCEPTION
            WHEN duplicate_object OR unique_violation THEN NULL;
            WHEN insufficient_privilege THEN
                RAISE WARNING '{NO_ROLE_WARNING}', current_user;
        END;
    END IF;
END
$$
"""


def grant_reader() -> str:
    """SELECT on every relation of the schema, and on the ones the migrating role creates later."""
    return f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO {READER}', current_schema());
        EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO {READER}', current_schema());
        EXECUTE format(
            'ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO {READER}',
            current_schema()
        );
    END IF;
END
$$
"""


REVOKE_READER = f"""
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
        EXECUTE format(
            'ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE SELECT ON TABLES FROM {READER}',
            current_schema()
        );
        EXECUTE format(
            'REVOKE SELECT ON ALL TABLES IN SCHEMA %I FROM {READER}', current_schema()
        );
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM {READER}', current_schema());
    END IF;
END
$$
"""


def upgrade() -> None:
    """Upgrade schema."""
    for _, create in VIEWS:
        op.execute(create)
    for name, (comment, columns) in TABLE_COMMENTS.items():
        for statement in _comment_statements("TABLE", name, comment, columns):
            op.execute(statement)
    for name, (comment, columns) in VIEW_COMMENTS.items():
        for statement in _comment_statements("VIEW", name, comment, columns):
            op.execute(statement)
    comment, columns = ALEMBIC_VERSION_COMMENT
    for statement in _comment_statements("TABLE", "alembic_version", comment, columns):
        op.execute(statement)
    op.execute(CREATE_READER)
    op.execute(grant_reader())


def downgrade() -> None:
    """Downgrade schema."""
    op.execute(REVOKE_READER)
    for name, _ in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    _, columns = ALEMBIC_VERSION_COMMENT
    for statement in _uncomment_statements("TABLE", "alembic_version", columns):
        op.execute(statement)
    _, columns = VIEW_COMMENTS["snapshots"]
    for statement in _uncomment_statements("VIEW", "snapshots", columns):
        op.execute(statement)
    for name, (_, columns) in TABLE_COMMENTS.items():
        for statement in _uncomment_statements("TABLE", name, columns):
            op.execute(statement)
