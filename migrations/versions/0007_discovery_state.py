"""discovery state: what SNAPSYNC_PROJECTS=auto found, for `snapsync status`

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

`status` is a process of its own, so what a discovery (app/discovery.py) found is stored:
- `projects.discovered_at`: when a discovery last listed the project and Workspace served it;
  NULL for a project configured by id. A discovered project with an older `discovered_at` than
  the last successful discovery is no longer listed (not synced, its data kept).
- `skipped_projects`: the projects the newest successful discovery skipped (Workspace answered
  403 or 404), replaced by each one. They have no `projects` row unless synced before.
- `discovery_state`: one row, when a discovery last ran and last got IAM's list, and why the
  last one failed.
"""

import runpy
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def _grant_reader() -> str:
    """0002's GRANTs to snapsync_reader, which cover the tables created since."""
    path = Path(__file__).with_name("0002_reporting_surface.py")
    return str(runpy.run_path(str(path))["grant_reader"]())


def upgrade() -> None:
    """Upgrade schema."""
    op.add_column(
        "projects",
        sa.Column(
            "discovered_at",
            TZ,
            nullable=True,
            comment=(
                "When a discovery (SNAPSYNC_PROJECTS=auto) last listed this project and "
                "Workspace served it, UTC. NULL: configured by id, never discovered."
            ),
        ),
    )
    op.create_table(
        "skipped_projects",
        sa.Column("project_id", sa.Text(), nullable=False, comment="Huawei Cloud project id."),
        sa.Column("region", sa.Text(), nullable=False, comment="The project's region."),
        sa.Column(
            "reason",
            sa.Text(),
            nullable=False,
            comment="workspace_forbidden (Workspace answered 403) or workspace_not_found (404).",
        ),
        sa.Column("detail", sa.Text(), nullable=False, comment="The API's answer, for people."),
        sa.Column("skipped_at", TZ, nullable=False, comment="When the discovery ended, UTC."),
        sa.PrimaryKeyConstraint("project_id", name=op.f("pk_skipped_projects")),
        comment=(
            "The projects the newest successful discovery skipped because their Workspace API "
            "answered 403 or 404; replaced by each discovery, asked again at the next."
        ),
    )
    op.create_table(
        "discovery_state",
        sa.Column(
            "id",
            sa.SmallInteger(),
            server_default=sa.text("1"),
            nullable=False,
            comment="Always 1: the table has one row.",
        ),
        sa.Column("ran_at", TZ, nullable=False, comment="When a discovery last ended, UTC."),
        sa.Column(
            "succeeded_at",
            TZ,
            nullable=True,
            comment="When a discovery last got IAM's list of the projects, UTC. NULL: never.",
        ),
        sa.Column(
            "problem",
            sa.Text(),
            nullable=True,
            comment="Why the last discovery got no list from IAM. NULL: it got one.",
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_discovery_state_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_discovery_state")),
        comment="When discovery (SNAPSYNC_PROJECTS=auto) last ran, and how it ended.",
    )
    op.execute(_grant_reader())


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table("discovery_state")
    op.drop_table("skipped_projects")
    op.drop_column("projects", "discovered_at")
