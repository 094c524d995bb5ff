"""`snapsync status`: per project, the last run, its outcome and counts, and snapshots by status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

STATUS_QUERY = text(
    """
WITH last_run AS (
    SELECT DISTINCT ON (project_id) *
    FROM sync_runs
    ORDER BY project_id, started_at DESC, id DESC
),
last_success AS (
    SELECT project_id, max(finished_at) AS finished_at
    FROM sync_runs WHERE status = 'succeeded'
    GROUP BY project_id
),
known AS (
    SELECT project_id FROM projects
    UNION SELECT project_id FROM sync_runs
)
SELECT k.project_id,
       r.id AS run_id, r.status AS run_status, r.started_at, r.finished_at,
       r.pages, r.snapshots_seen, r.inserted, r.updated, r.deleted, r.transitions, r.rejected,
       r.api_total_count, r.error,
       s.finished_at AS last_success_at
FROM known AS k
LEFT JOIN last_run AS r ON r.project_id = k.project_id
LEFT JOIN last_success AS s ON s.project_id = k.project_id
ORDER BY k.project_id
"""
)

COUNTS_QUERY = text(
    """
SELECT project_id, status, count(*) AS n
FROM snapshot_records
WHERE deleted_at IS NULL
GROUP BY project_id, status
ORDER BY project_id, status
"""
)


@dataclass
class ProjectStatus:
    """What `status` shows of one project."""

    project_id: str
    run_id: int | None
    run_status: str | None
    started_at: datetime | None
    finished_at: datetime | None
    last_success_at: datetime | None
    counts: dict[str, Any]
    error: str | None
    snapshots_by_status: dict[str, int] = field(default_factory=dict)

    def success_age_seconds(self, now: datetime) -> float | None:
        if self.last_success_at is None:
            return None
        return (now - self.last_success_at).total_seconds()

    def as_json(self, now: datetime) -> dict[str, Any]:
        age = self.success_age_seconds(now)
        return {
            "project_id": self.project_id,
            "last_run": None
            if self.run_id is None
            else {
                "id": self.run_id,
                "status": self.run_status,
                "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at),
                "error": self.error,
                **self.counts,
            },
            "last_success_at": _iso(self.last_success_at),
            "last_success_age_seconds": None if age is None else round(age, 1),
            "snapshots_by_status": self.snapshots_by_status,
            "live_snapshots": sum(self.snapshots_by_status.values()),
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


async def collect(engine: AsyncEngine) -> list[ProjectStatus]:
    """Read every project's status from the tables."""
    async with engine.connect() as conn:
        rows = (await conn.execute(STATUS_QUERY)).mappings().all()
        by_status = (await conn.execute(COUNTS_QUERY)).all()
    result: dict[str, ProjectStatus] = {}
    for row in rows:
        result[row["project_id"]] = ProjectStatus(
            project_id=row["project_id"],
            run_id=row["run_id"],
            run_status=row["run_status"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            last_success_at=row["last_success_at"],
            error=row["error"],
            counts={
                name: row[name]
                for name in (
                    "pages",
                    "snapshots_seen",
                    "inserted",
                    "updated",
                    "deleted",
                    "transitions",
                    "rejected",
                    "api_total_count",
                )
            },
        )
    for project_id, status, n in by_status:
        if project_id in result:
            result[project_id].snapshots_by_status[status] = int(n)
    return list(result.values())


def format_age(seconds: float | None) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def render_text(statuses: list[ProjectStatus], now: datetime) -> str:
    """The plain-text report: one block per project."""
    if not statuses:
        return "No project has been synced yet. Run `snapsync sync`."
    lines: list[str] = []
    for st in statuses:
        lines.append(f"project {st.project_id}")
        if st.run_id is None:
            lines.append("  last run: none")
        else:
            c = st.counts
            lines.append(
                f"  last run: #{st.run_id} {st.run_status} started {_iso(st.started_at)} "
                f"pages={c['pages']} seen={c['snapshots_seen']} inserted={c['inserted']} "
                f"updated={c['updated']} deleted={c['deleted']} "
                f"transitions={c['transitions']} rejected={c['rejected']}"
            )
            if st.error:
                lines.append(f"  error: {st.error}")
        lines.append(
            f"  last success: {format_age(st.success_age_seconds(now))} ago"
            if st.last_success_at
            else "  last success: never"
        )
        total = sum(st.snapshots_by_status.values())
        parts = ", ".join(f"{k}={v}" for k, v in sorted(st.snapshots_by_status.items()))
        lines.append(f"  live snapshots: {total}" + (f" ({parts})" if parts else ""))
    return "\n".join(lines)
