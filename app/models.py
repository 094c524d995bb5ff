"""The tables, as SQLAlchemy models; migrations/ creates them and the views over them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TZ = DateTime(timezone=True)

# When a snapshot's creation ended, on its first-sighting history row: when the row that closed
# a `creating` first sighting was written, or the first sighting itself when the snapshot was
# first seen already created. Indexed (ix_snapshot_status_history_creation_end) and written the
# same way in the snapshot_operation_durations view, so a filter on ended_by reads the index.
# Written as PostgreSQL renders it back, which is what autogenerate compares.
CREATION_ENDED_BY = (
    "(\nCASE\n    WHEN to_status = 'creating'::text THEN left_by\n    ELSE observed_at\nEND)"
)

# A creation snapsync saw running (first sighting `creating`) that ended in success: the rows
# of the creation-time panel (docs/grafana), whose end is left_by.
CREATIONS_ENDED_WHERE = (
    "from_status IS NULL AND to_status = 'creating' AND next_status IN "
    "('create_success', 'restoring', 'restore_success', 'restore_failed')"
)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ProjectRow(Base):
    """Per-project sync state: what the newest complete listing was and when it started."""

    __tablename__ = "projects"

    project_id: Mapped[str] = mapped_column(Text, primary_key=True)
    region: Mapped[str] = mapped_column(Text)
    last_listing_at: Mapped[datetime | None] = mapped_column(TZ)
    last_listing_run_id: Mapped[int | None] = mapped_column(BigInteger)
    api_total_count: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))
    last_hot_poll_at: Mapped[datetime | None] = mapped_column(TZ)
    discovered_at: Mapped[datetime | None] = mapped_column(TZ)


class SkippedProject(Base):
    """A project the newest discovery skipped (its Workspace answered 403/404)."""

    __tablename__ = "skipped_projects"

    project_id: Mapped[str] = mapped_column(Text, primary_key=True)
    region: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)
    skipped_at: Mapped[datetime] = mapped_column(TZ)


class DiscoveryState(Base):
    """When discovery last ran and how it ended: one row."""

    __tablename__ = "discovery_state"
    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, server_default=text("1"))
    ran_at: Mapped[datetime] = mapped_column(TZ)
    succeeded_at: Mapped[datetime | None] = mapped_column(TZ)
    problem: Mapped[str | None] = mapped_column(Text)


class SyncRun(Base):
    """One sync of one project."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        CheckConstraint("status IN ('running', 'succeeded', 'failed', 'abandoned')", name="status"),
        CheckConstraint("kind IN ('full', 'hot')", name="kind"),
        Index("ix_sync_runs_project_id_started_at", "project_id", "started_at"),
        Index("ix_sync_runs_started_at", "started_at", "id"),
        Index(
            "ix_sync_runs_failed",
            "project_id",
            "started_at",
            postgresql_where=text("status IN ('failed', 'abandoned')"),
        ),
        Index(
            "ix_sync_runs_running",
            "project_id",
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text, server_default=text("'full'"))
    started_at: Mapped[datetime] = mapped_column(TZ)
    finished_at: Mapped[datetime | None] = mapped_column(TZ)
    status: Mapped[str] = mapped_column(Text)
    complete: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    pages: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    requests: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    snapshots_seen: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    inserted: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    updated: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    unchanged: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    deleted: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    transitions: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    rejected: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    api_total_count: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    owner: Mapped[str | None] = mapped_column(Text)


class SnapshotRecord(Base):
    """The stored state of each snapshot; the `snapshots` view adds the derived `last_seen_at`."""

    __tablename__ = "snapshot_records"
    __table_args__ = (
        Index("ix_snapshot_records_project_id_desktop_id", "project_id", "desktop_id"),
        Index("ix_snapshot_records_status", "status", "project_id"),
        Index("ix_snapshot_records_create_time", "create_time"),
        Index(
            "ix_snapshot_records_live",
            "project_id",
            "desktop_id",
            postgresql_include=["status"],
            postgresql_where=text("deleted_at IS NULL"),
        ),
        # desktop_snapshot_coverage's reads of a desktop's live rows, index-only (0005).
        Index(
            "ix_snapshot_records_live_desktop",
            "project_id",
            "desktop_id",
            postgresql_include=[
                "status",
                "is_system_disk",
                "create_time",
                "snapshot_id",
                "last_seen_at",
                "missed_listings",
                "desktop_name",
            ],
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index(
            "ix_snapshot_records_gone",
            "project_id",
            "desktop_id",
            text("last_seen_at DESC"),
            "snapshot_id",
            postgresql_where=text("deleted_at IS NOT NULL OR missed_listings > 0"),
        ),
        Index(
            "ix_snapshot_records_deleted_at",
            "deleted_at",
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
        Index(
            "ix_snapshot_records_failed",
            "project_id",
            "desktop_id",
            "create_time",
            postgresql_where=text("status = 'create_failed'"),
        ),
        Index(
            "ix_snapshot_records_missing",
            "project_id",
            postgresql_where=text("missed_listings > 0 OR deleted_at IS NOT NULL"),
        ),
    )

    project_id: Mapped[str] = mapped_column(Text, primary_key=True)
    snapshot_id: Mapped[str] = mapped_column(Text, primary_key=True)
    snapshot_name: Mapped[str | None] = mapped_column(Text)
    desktop_id: Mapped[str | None] = mapped_column(Text)
    desktop_name: Mapped[str | None] = mapped_column(Text)
    desktop_sid: Mapped[str | None] = mapped_column(Text)
    desktop_pool_id: Mapped[str | None] = mapped_column(Text)
    is_system_disk: Mapped[bool | None] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(Text)
    process: Mapped[int | None] = mapped_column(SmallInteger)
    description: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[datetime | None] = mapped_column(TZ)
    create_type: Mapped[str | None] = mapped_column(Text)
    last_restore_time: Mapped[datetime | None] = mapped_column(TZ)
    restore_fail_reason: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[dict[str, Any]] = mapped_column(JSONB)
    content_hash: Mapped[int] = mapped_column(BigInteger)
    first_seen_at: Mapped[datetime] = mapped_column(TZ)
    last_seen_at: Mapped[datetime] = mapped_column(TZ)
    last_changed_at: Mapped[datetime] = mapped_column(TZ)
    deleted_at: Mapped[datetime | None] = mapped_column(TZ)
    missed_listings: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_run_id: Mapped[int | None] = mapped_column(BigInteger)
    status_seen_at: Mapped[datetime | None] = mapped_column(TZ)


class SnapshotStatusHistory(Base):
    """One row per observed status change (first sighting, change, deletion, reappearance)."""

    __tablename__ = "snapshot_status_history"
    __table_args__ = (
        Index(
            "ix_snapshot_status_history_snapshot",
            "project_id",
            "snapshot_id",
            "observed_at",
        ),
        Index("ix_snapshot_status_history_observed_at", "observed_at"),
        Index("ix_snapshot_status_history_to_status", "to_status", "observed_at"),
        Index("ix_snapshot_status_history_sync_run_id", "sync_run_id"),
        Index(
            "ix_snapshot_status_history_open",
            "to_status",
            "observed_at",
            postgresql_include=["project_id"],
            postgresql_where=text("left_by IS NULL AND to_status <> 'deleted'"),
        ),
        Index(
            "ix_snapshot_status_history_left_by",
            "left_by",
            postgresql_include=[
                "to_status",
                "observed_at",
                "project_id",
                "previous_observed_at",
                "left_after",
            ],
            postgresql_where=text("left_by IS NOT NULL"),
        ),
        Index(
            "ix_snapshot_status_history_created",
            "create_time",
            postgresql_include=[
                "project_id",
                "snapshot_id",
                "to_status",
                "next_status",
                "left_after",
                "left_by",
                "observed_at",
            ],
            postgresql_where=text("from_status IS NULL"),
        ),
        Index(
            "ix_snapshot_status_history_changes",
            "observed_at",
            postgresql_include=["project_id", "from_status", "to_status"],
            postgresql_where=text("from_status IS NOT NULL"),
        ),
        # Creations seen in flight that succeeded, by their end, with what their duration needs:
        # the creation-time panel reads it index-only, an hour at a time (0006).
        Index(
            "ix_snapshot_status_history_creations_ended",
            "left_by",
            postgresql_include=["project_id", "create_time"],
            postgresql_where=text(CREATIONS_ENDED_WHERE),
        ),
        Index(
            "ix_snapshot_status_history_creation_end",
            text(CREATION_ENDED_BY),
            postgresql_where=text("from_status IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(Text)
    snapshot_id: Mapped[str] = mapped_column(Text)
    from_status: Mapped[str | None] = mapped_column(Text)
    to_status: Mapped[str] = mapped_column(Text)
    observed_at: Mapped[datetime] = mapped_column(TZ)
    previous_observed_at: Mapped[datetime | None] = mapped_column(TZ)
    process: Mapped[int | None] = mapped_column(SmallInteger)
    sync_run_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("sync_runs.id", ondelete="SET NULL")
    )
    # The closing facts, written by the statement that writes the next row (app/store.py).
    next_id: Mapped[int | None] = mapped_column(BigInteger)
    next_status: Mapped[str | None] = mapped_column(Text)
    left_after: Mapped[datetime | None] = mapped_column(TZ)
    left_by: Mapped[datetime | None] = mapped_column(TZ)
    # On a first-sighting row: the snapshot's create_time as listed (0005; app/store.py).
    create_time: Mapped[datetime | None] = mapped_column(TZ)


class SnapshotDesktop(Base):
    """Every desktop that has had a snapshot (the rows of desktop_snapshot_coverage)."""

    __tablename__ = "snapshot_desktops"

    project_id: Mapped[str] = mapped_column(Text, primary_key=True)
    desktop_id: Mapped[str] = mapped_column(Text, primary_key=True)
    # What desktop_snapshot_coverage reads, recomputed from the desktop's snapshot rows by
    # the statements that change them (app/coverage.py refresh; 0006).
    live_snapshots: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    listed_last_seen_at: Mapped[datetime | None] = mapped_column(TZ)
    listed_newest_id: Mapped[str | None] = mapped_column(Text)
    listed_newest_name: Mapped[str | None] = mapped_column(Text)
    listed_first_id: Mapped[str | None] = mapped_column(Text)
    listed_first_name: Mapped[str | None] = mapped_column(Text)
    missed_last_seen_at: Mapped[datetime | None] = mapped_column(TZ)
    missed_newest_id: Mapped[str | None] = mapped_column(Text)
    missed_newest_name: Mapped[str | None] = mapped_column(Text)
    gone_last_seen_at: Mapped[datetime | None] = mapped_column(TZ)
    gone_snapshot_id: Mapped[str | None] = mapped_column(Text)
    gone_desktop_name: Mapped[str | None] = mapped_column(Text)
    system_disk_snapshot_id: Mapped[str | None] = mapped_column(Text)
    system_disk_created_at: Mapped[datetime | None] = mapped_column(TZ)
    system_disk_failed_since: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    data_disk_snapshot_id: Mapped[str | None] = mapped_column(Text)
    data_disk_created_at: Mapped[datetime | None] = mapped_column(TZ)
    data_disk_failed_since: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class SnapshotStatusHour(Base):
    """Per project, hour point and status: history rows entered and left, and the statistics of
    the periods left, in the hour up to the point (app/rollup.py; 0008)."""

    __tablename__ = "snapshot_status_hours"
    __table_args__ = (Index("ix_snapshot_status_hours_hour", "hour"),)

    project_id: Mapped[str] = mapped_column(Text, primary_key=True)
    hour: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    status: Mapped[str] = mapped_column(Text, primary_key=True)
    entered: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    exited: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    periods: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    min_periods: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    min_seconds: Mapped[Any] = mapped_column(Numeric, server_default=text("0"))
    max_seconds: Mapped[Any] = mapped_column(Numeric, server_default=text("0"))


class SnapshotStatusChangeHour(Base):
    """Per project, UTC hour and change: history rows observed in the hour (app/rollup.py)."""

    __tablename__ = "snapshot_status_change_hours"
    __table_args__ = (Index("ix_snapshot_status_change_hours_hour", "hour"),)

    project_id: Mapped[str] = mapped_column(Text, primary_key=True)
    hour: Mapped[datetime] = mapped_column(TZ, primary_key=True)
    from_status: Mapped[str] = mapped_column(Text, primary_key=True)
    to_status: Mapped[str] = mapped_column(Text, primary_key=True)
    changes: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


# What each table and column means, stored as COMMENT ON by migration 0002 (which holds the
# same text: autogenerate compares comments, so a change here needs a migration).
TABLE_COMMENTS: dict[str, tuple[str, dict[str, str]]] = {
    "projects": (
        (
            "One row per cloud project snapsync has synced: its region and its newest complete "
            "listing (a listing that read every page)."
        ),
        {
            "project_id": "Huawei Cloud project id, as configured in SNAPSYNC_PROJECTS.",
            "region": "Region the project is synced in (e.g. cn-north-4).",
            "last_listing_at": (
                "Start of the project's newest complete listing, UTC. NULL: no complete listing "
                "yet."
            ),
            "last_listing_run_id": (
                "sync_runs.id of the newest complete listing. NULL: no complete listing yet."
            ),
            "api_total_count": (
                "total_count the API reported in the newest complete listing: the snapshots the "
                "project had then. NULL: no complete listing yet."
            ),
            "updated_at": "When this row last changed, UTC.",
            "last_hot_poll_at": (
                "When a snapsync process last re-read this project's in-flight (creating, "
                "restoring) snapshots, UTC. NULL: never."
            ),
            "discovered_at": (
                "When a discovery (SNAPSYNC_PROJECTS=auto) last listed this project and "
                "Workspace served it, UTC. NULL: configured by id, never discovered."
            ),
        },
    ),
    "skipped_projects": (
        (
            "The projects the newest successful discovery skipped because their Workspace API "
            "answered 403 or 404; replaced by each discovery, asked again at the next."
        ),
        {
            "project_id": "Huawei Cloud project id.",
            "region": "The project's region.",
            "reason": "workspace_forbidden (Workspace answered 403) or workspace_not_found (404).",
            "detail": "The API's answer, for people.",
            "skipped_at": "When the discovery ended, UTC.",
        },
    ),
    "discovery_state": (
        "When discovery (SNAPSYNC_PROJECTS=auto) last ran, and how it ended.",
        {
            "id": "Always 1: the table has one row.",
            "ran_at": "When a discovery last ended, UTC.",
            "succeeded_at": (
                "When a discovery last got IAM's list of the projects, UTC. NULL: never."
            ),
            "problem": "Why the last discovery got no list from IAM. NULL: it got one.",
        },
    ),
    "sync_runs": (
        "One row per sync of one project: when, how it ended, what it saw and wrote.",
        {
            "id": "Run id, increasing; snapshot_status_history.sync_run_id refers to it.",
            "project_id": "The project synced.",
            "kind": (
                "full: a complete pass over every page of the project; hot: a poll of its "
                "in-flight snapshots between full syncs that wrote a change (it never deletes "
                "anything)."
            ),
            "started_at": "When the run started, UTC.",
            "finished_at": "When the run ended, UTC. NULL while it is running.",
            "status": (
                "running, succeeded, failed, or abandoned (the process running it died; the next "
                "sync of the project marks it)."
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
        (
            "The stored state of every snapshot ever seen, live and deleted. Query the snapshots "
            "view instead: it adds the current last_seen_at."
        ),
        {
            "project_id": "Huawei Cloud project the snapshot belongs to (as in SNAPSYNC_PROJECTS).",
            "snapshot_id": "Snapshot id from the API; unique within the project.",
            "snapshot_name": (
                "Copied from the API item (snapshot_name). Disks of one desktop snapshotted "
                "together share it."
            ),
            "desktop_id": (
                "Copied from the API item (desktop_id): the desktop the snapshot was taken of."
            ),
            "desktop_name": "Copied from the API item (desktop_name).",
            "desktop_sid": (
                "Copied from the API item (desktop_sid): the desktop's security identifier."
            ),
            "desktop_pool_id": (
                "Copied from the API item (desktop_pool_id). NULL: a personal desktop, in no pool."
            ),
            "is_system_disk": (
                "Copied from the API item (is_system_disk): true for the system disk, false for a"
                " data disk. NULL: the API did not say."
            ),
            "status": (
                "Copied from the API item (status): creating, create_success, create_failed, "
                "restoring, restore_success or restore_failed (other values are stored as given)."
            ),
            "process": (
                "Copied from the API item (process): progress of the running creation or restore,"
                " percent 0..100. NULL when no task runs."
            ),
            "description": "Copied from the API item (description). NULL: none given.",
            "create_time": (
                "Copied from the API item (create_time): when the snapshot was created, UTC."
            ),
            "create_type": (
                "Copied from the API item (create_type): AUTO (a snapshot policy) or MANUALLY."
            ),
            "last_restore_time": (
                "Copied from the API item (last_restore_time): when the desktop was last restored"
                " from this snapshot, UTC. NULL: never restored."
            ),
            "restore_fail_reason": (
                "Copied from the API item (restore_fail_reason): why the last restore failed, in "
                "the API's words. NULL: no failed restore."
            ),
            "raw": (
                "The item exactly as the API returned it (jsonb), including fields snapsync "
                "ignores."
            ),
            "first_seen_at": "When snapsync first saw the snapshot, UTC.",
            "last_changed_at": (
                "When snapsync last saw any API field of the snapshot change (status, process, "
                "name, ...), UTC."
            ),
            "deleted_at": (
                "When snapsync confirmed the snapshot gone (absent from "
                "SNAPSYNC_DELETE_AFTER_MISSES consecutive complete listings), UTC. NULL while it "
                "is listed."
            ),
            "last_seen_at": (
                "Stored last time the snapshot was seen, UTC; the snapshots view reports a later "
                "time for snapshots in the newest complete listing."
            ),
            "content_hash": "64-bit digest of raw, to skip unchanged items without rewriting them.",
            "missed_listings": (
                "Consecutive complete listings that lacked the snapshot; 0 while it is listed."
            ),
            "last_run_id": "sync_runs.id of the run that last wrote this row.",
            "status_seen_at": (
                "When the stored status was last observed (a full listing page or a hot poll), "
                "UTC; the next status change gets it as previous_observed_at. NULL: only the "
                "listing start (projects.last_listing_at) is known."
            ),
        },
    ),
    "snapshot_status_history": (
        (
            "One row per observed status change of a snapshot: first sighting, change, deletion "
            "(to_status deleted) and reappearance (from_status deleted). A change of process "
            "alone is not a status change."
        ),
        {
            "id": "Row id, increasing in the order rows were written.",
            "project_id": "The snapshot's project.",
            "snapshot_id": "The snapshot (snapshots.snapshot_id).",
            "from_status": (
                "Status before the change; deleted on reappearance. NULL on the first sighting."
            ),
            "to_status": "Status after the change; deleted when the snapshot was confirmed gone.",
            "observed_at": "When snapsync saw the new status (the change happened before), UTC.",
            "previous_observed_at": (
                "When snapsync last saw the old status (the change happened after), UTC. NULL on "
                "the first sighting."
            ),
            "process": "The API's process (percent) with the new status. NULL: no task running.",
            "sync_run_id": "The run that saw the change (sync_runs.id). NULL: run row deleted.",
            "next_id": (
                "id of the snapshot's next history row, which closed this one. NULL: this is "
                "the snapshot's current status."
            ),
            "next_status": "to_status of the next row. NULL: this is the current status.",
            "left_after": (
                "previous_observed_at of the next row: the last time snapsync saw this status "
                "(it was left after), UTC. NULL: current."
            ),
            "left_by": (
                "observed_at of the next row: snapsync saw the status left by then, UTC. NULL: "
                "current."
            ),
            "create_time": (
                "On a first-sighting row (from_status NULL): the snapshot's create_time as that "
                "sync listed it. NULL on every other row."
            ),
        },
    ),
    "snapshot_status_hours": (
        (
            "The hourly rollup of snapshot_status_history for reporting, kept by the sync in the "
            "statements that write history (and by retention's prune): per project, hour point "
            "and status, what happened in the hour up to the point, (hour - 1 h, hour]. A period "
            "counts at an hour point at when entered_by <= at < left_by."
        ),
        {
            "project_id": "The snapshots' project.",
            "hour": (
                "The hour point: the top of a UTC hour. The row counts what happened after the "
                "previous point and at or before this one."
            ),
            "status": "The history rows' to_status (snapshot_status_intervals.status).",
            "entered": "History rows in this status whose observed_at (entered_by) is in the hour.",
            "exited": "History rows in this status whose left_by is in the hour (closed then).",
            "periods": (
                "Of the rows left in the hour, those whose start snapsync saw (entered_after, "
                "previous_observed_at, NOT NULL)."
            ),
            "min_periods": "Of those, the ones with a min_seconds (left_after NOT NULL).",
            "min_seconds": (
                "Sum of snapshot_status_intervals.min_seconds of those, exact (numeric)."
            ),
            "max_seconds": (
                "Sum of snapshot_status_intervals.max_seconds of the periods, exact (numeric)."
            ),
        },
    ),
    "snapshot_status_change_hours": (
        (
            "The status changes of snapshot_status_history counted per project, UTC hour of "
            "observed_at and change, kept by the sync in the statements that write history (and "
            "by retention's prune)."
        ),
        {
            "project_id": "The snapshots' project.",
            "hour": "The UTC hour: rows observed at or after it and before the next hour.",
            "from_status": "The rows' from_status; empty: a first sighting (from_status NULL).",
            "to_status": "The rows' to_status.",
            "changes": "How many history rows.",
        },
    ),
    "snapshot_desktops": (
        (
            "One row per desktop that has had a snapshot (live or deleted): the rows of "
            "desktop_snapshot_coverage, kept by the sync as it writes snapshots."
        ),
        {
            "project_id": "The desktop's project.",
            "desktop_id": "The desktop (snapshots.desktop_id).",
            "live_snapshots": "How many of the desktop's snapshots are live (not deleted).",
            "listed_last_seen_at": (
                "Newest last_seen_at of the desktop's live snapshots seen in the newest "
                "listing (missed_listings 0). NULL: none."
            ),
            "listed_newest_id": "snapshot_id of that snapshot (ties: the smallest id).",
            "listed_newest_name": "Its desktop_name.",
            "listed_first_id": (
                "Smallest snapshot_id of those snapshots: the newest once the project's "
                "last_listing_at is at least listed_last_seen_at."
            ),
            "listed_first_name": "Its desktop_name.",
            "missed_last_seen_at": (
                "Newest last_seen_at of the desktop's live snapshots missing from a listing "
                "(missed_listings > 0). NULL: none."
            ),
            "missed_newest_id": "snapshot_id of that snapshot (ties: the smallest id).",
            "missed_newest_name": "Its desktop_name.",
            "gone_last_seen_at": (
                "Newest last_seen_at of the desktop's deleted or missed snapshots. NULL: none."
            ),
            "gone_snapshot_id": "snapshot_id of that snapshot (ties: the smallest id).",
            "gone_desktop_name": "Its desktop_name.",
            "system_disk_snapshot_id": (
                "Newest successful live system-disk snapshot (by create_time). NULL: none."
            ),
            "system_disk_created_at": "Its create_time.",
            "system_disk_failed_since": (
                "System-disk creations that failed after it (all of them if there is none), "
                "deleted snapshots included."
            ),
            "data_disk_snapshot_id": (
                "Newest successful live data-disk snapshot (by create_time). NULL: none."
            ),
            "data_disk_created_at": "Its create_time.",
            "data_disk_failed_since": (
                "Data-disk creations that failed after it (all of them if there is none), "
                "deleted snapshots included."
            ),
        },
    ),
}


def _apply_comments() -> None:
    for name, (comment, columns) in TABLE_COMMENTS.items():
        table = Base.metadata.tables[name]
        table.comment = comment
        for column, text_ in columns.items():
            table.c[column].comment = text_


_apply_comments()
