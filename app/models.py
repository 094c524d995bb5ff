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

RUN_STATUSES = ("running", "succeeded", "failed", "abandoned")

TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Project(Base):
    """Per-project sync state: what the newest complete listing was and when it started."""

    __tablename__ = "projects"

    project_id: Mapped[str] = mapped_column(Text, primary_key=True)
    region: Mapped[str] = mapped_column(Text)
    last_listing_at: Mapped[datetime | None] = mapped_column(TZ)
    last_listing_run_id: Mapped[int | None] = mapped_column(BigInteger)
    api_total_count: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(TZ, server_default=text("now()"))


class SyncRun(Base):
    """One sync of one project."""

    __tablename__ = "sync_runs"
    __table_args__ = (
        CheckConstraint("status IN ('running', 'succeeded', 'failed', 'abandoned')", name="status"),
        Index("ix_sync_runs_project_id_started_at", "project_id", "started_at"),
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
