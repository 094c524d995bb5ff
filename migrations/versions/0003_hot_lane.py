"""hot lane: re-reads of in-flight snapshots between full syncs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

- `snapshot_records.status_seen_at`: when the stored status was last observed, by a full
  listing page or a hot poll, so `previous_observed_at` of the next change is as tight as the
  polls were frequent.
- `projects.last_hot_poll_at`: when any replica last polled the project's in-flight snapshots,
  so a fleet polls about once per SNAPSYNC_HOT_INTERVAL, not once per replica.
- `sync_runs.kind` gains the value `hot` (a poll that wrote something); the views that speak of
  a project's syncs read only `kind = 'full'` runs.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _reporting_module():  # type: ignore[no-untyped-def]
    path = Path(__file__).with_name("0002_reporting_surface.py")
    spec = importlib.util.spec_from_file_location("snapsync_migration_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _health_view(full_runs_only: bool) -> str:
    view: str = _reporting_module().PROJECT_SYNC_HEALTH
    view = view.replace("CREATE VIEW", "CREATE OR REPLACE VIEW", 1)
    if full_runs_only:
        view = view.replace(
            "WHERE f.project_id = p.project_id AND",
            "WHERE f.project_id = p.project_id AND f.kind = 'full' AND",
        )
        view = view.replace(
            "WHERE x.project_id = p.project_id\n",
            "WHERE x.project_id = p.project_id AND x.kind = 'full'\n",
        )
        view = view.replace(
            "WHERE x.project_id = p.project_id AND x.status = 'succeeded'",
            "WHERE x.project_id = p.project_id AND x.kind = 'full' AND x.status = 'succeeded'",
        )
        assert view.count("'full'") == 3, "the 0002 view changed; update this migration"
    return view


COMMENTS = {
    ("snapshot_records", "status_seen_at"): (
        "When the stored status was last observed (a full listing page or a hot poll), UTC; the "
        "next status change gets it as previous_observed_at. NULL: only the listing start "
        "(projects.last_listing_at) is known."
    ),
    ("projects", "last_hot_poll_at"): (
        "When a snapsync process last re-read this project's in-flight (creating, restoring) "
        "snapshots, UTC. NULL: never."
    ),
    ("sync_runs", "kind"): (
        "full: a complete pass over every page of the project; hot: a poll of its in-flight "
        "snapshots between full syncs that wrote a change (it never deletes anything)."
    ),
}


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "snapshot_records",
        sa.Column(
            "status_seen_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment=COMMENTS[("snapshot_records", "status_seen_at")],
        ),
    )
    op.add_column(
        "projects",
        sa.Column(
            "last_hot_poll_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment=COMMENTS[("projects", "last_hot_poll_at")],
        ),
    )
    op.create_check_constraint("kind", "sync_runs", "kind IN ('full', 'hot')")
    op.execute(f"COMMENT ON COLUMN sync_runs.kind IS {_quote(COMMENTS[('sync_runs', 'kind')])}")
    op.execute(_health_view(full_runs_only=True))
    # The views read it through snapshot_records; the reader role sees new columns anyway.


def downgrade() -> None:
    """Downgrade schema."""
    op.execute(_health_view(full_runs_only=False))
    op.execute("DELETE FROM sync_runs WHERE kind = 'hot'")
    op.drop_constraint(op.f("ck_sync_runs_kind"), "sync_runs", type_="check")
    op.execute(
        "COMMENT ON COLUMN sync_runs.kind IS "
        + _quote(_reporting_module().TABLE_COMMENTS["sync_runs"][1]["kind"])
    )
    op.drop_column("projects", "last_hot_poll_at")
    op.drop_column("snapshot_records", "status_seen_at")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
