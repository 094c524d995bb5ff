"""The demo's closing report: what this demo's daemon did and what the tables hold now.

Per-project numbers come from `status.collect` (the `project_sync_health` view), the slowest
creations from the `snapshot_status_intervals` view; only what those do not answer (runs and
transitions since the demo started, deleted snapshots) is queried here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import health, progress, status

SLOWEST_CREATIONS = 5

TRANSITIONS_SINCE = text(
    """
SELECT from_status, to_status, count(*) AS n
FROM snapshot_status_history
WHERE observed_at >= :since AND project_id = ANY(CAST(:project_ids AS text[]))
GROUP BY from_status, to_status
ORDER BY n DESC, from_status, to_status
"""
)

RUNS_SINCE = text(
    """
SELECT status, count(*) AS n
FROM sync_runs
WHERE kind = 'full' AND started_at >= :since AND project_id = ANY(CAST(:project_ids AS text[]))
GROUP BY status
ORDER BY status
"""
)

# The periods in `creating` that a creation's end closed: seen creating at `entered_by`, still
# creating at `left_after` and seen done at `left_by`. It was creating for at least
# `min_seconds`; the stretch in which it was seen creating, before seen done, is at most
# `left_by - entered_by`.
SLOWEST_CREATIONS_QUERY = text(
    """
SELECT i.project_id, s.snapshot_name, i.desktop_name, i.next_status AS outcome,
       COALESCE(i.min_seconds, 0) AS at_least,
       COALESCE(EXTRACT(EPOCH FROM i.left_by - i.entered_by), 0)::double precision AS at_most
FROM snapshot_status_intervals AS i
LEFT JOIN snapshots AS s USING (project_id, snapshot_id)
WHERE i.status = 'creating'
  AND i.next_status IN ('create_success', 'create_failed')
  AND i.project_id = ANY(CAST(:project_ids AS text[]))
ORDER BY i.min_seconds DESC, i.left_by - i.entered_by DESC
LIMIT :limit
"""
)

DELETED_COUNT = text(
    """
SELECT count(*)
FROM snapshots
WHERE deleted_at IS NOT NULL AND project_id = ANY(CAST(:project_ids AS text[]))
"""
)


@dataclass(frozen=True)
class Creation:
    """One finished creation, with how long it was observed in `creating`."""

    project_id: str
    snapshot_name: str | None
    desktop_name: str | None
    outcome: str
    at_least: float
    at_most: float


@dataclass(frozen=True)
class Report:
    """What the demo left in the database, for the closing report."""

    by_status: dict[str, int]
    deleted: int
    runs: dict[str, int]
    first_sightings: int
    transitions: list[tuple[str, str, int]]
    slowest: list[Creation]
    stale: list[health.StaleProject]
    projects_known: int


async def collect_report(
    engine: AsyncEngine,
    *,
    project_ids: Sequence[str],
    since: datetime,
    stale_after: float,
) -> Report:
    """Read the report from the tables; `since` is when this demo's daemon started."""
    statuses = await status.collect(engine)
    ids = list(project_ids)
    async with engine.connect() as conn:
        transition_rows = (
            await conn.execute(TRANSITIONS_SINCE, {"since": since, "project_ids": ids})
        ).all()
        run_rows = (await conn.execute(RUNS_SINCE, {"since": since, "project_ids": ids})).all()
        slow_rows = (
            await conn.execute(
                SLOWEST_CREATIONS_QUERY, {"project_ids": ids, "limit": SLOWEST_CREATIONS}
            )
        ).mappings()
        slowest = [Creation(**row) for row in slow_rows]
        deleted = await conn.scalar(DELETED_COUNT, {"project_ids": ids})
    by_status: dict[str, int] = {}
    for st in statuses:
        if st.project_id in project_ids:
            for name, n in st.snapshots_by_status.items():
                by_status[name] = by_status.get(name, 0) + n
    now = datetime.now(UTC)
    stale = [
        health.StaleProject(st.project_id, st.last_success_at, st.success_age_seconds(now))
        for st in statuses
        if st.last_success_at is None or (st.success_age_seconds(now) or 0) > stale_after
    ]
    return Report(
        by_status=dict(sorted(by_status.items(), key=lambda kv: -kv[1])),
        deleted=int(deleted or 0),
        runs={row[0]: int(row[1]) for row in run_rows},
        first_sightings=sum(int(n) for f, _, n in transition_rows if f is None),
        transitions=[(f, t, int(n)) for f, t, n in transition_rows if f is not None],
        slowest=slowest,
        stale=stale,
        projects_known=len(statuses),
    )


def render_report(report: Report, *, seconds: float, stopped_by: str) -> list[RenderableType]:
    """The closing report as rich renderables (tables render as text off a terminal too)."""
    runs = ", ".join(f"{n} {name}" for name, n in report.runs.items()) or "none"
    out: list[RenderableType] = [
        Text(f"\nThe daemon ran {seconds:.0f}s ({stopped_by}); sync runs: {runs}.", "bold")
    ]
    by_status: list[Row] = [(name, f"{n:,}") for name, n in report.by_status.items()]
    by_status.append((Text("deleted (kept, with deleted_at)", "dim"), f"{report.deleted:,}"))
    out += [_heading("Snapshots by status (the demo's projects)")]
    out.append(_table(["status", "snapshots"], by_status))

    out.append(_heading("Status transitions seen by this demo"))
    transitions: list[Row] = [(f, t, f"{n:,}") for f, t, n in report.transitions]
    if report.first_sightings:
        transitions.append((Text("(first sighting)", "dim"), "", f"{report.first_sightings:,}"))
    out.append(_table(["from", "to", "count"], transitions) if transitions else Text("none yet"))

    out.append(_heading("Slowest creations (how long each was seen creating: at least-at most)"))
    names = progress.short_ids([c.project_id for c in report.slowest])
    slowest: list[Row] = [
        (
            names[c.project_id],
            c.snapshot_name or "",
            c.desktop_name or "",
            c.outcome,
            f"{c.at_least:.0f}-{c.at_most:.0f}s",
        )
        for c in report.slowest
    ]
    columns = ["project", "snapshot", "desktop", "outcome", "creating for"]
    none_yet = "none yet: a creation must be seen creating, then done (run longer)"
    out.append(_table(columns, slowest) if slowest else Text(none_yet))

    if report.stale:
        stale: list[Row] = [
            (
                s.project_id,
                "never" if s.age_seconds is None else f"{status.format_age(s.age_seconds)} ago",
            )
            for s in report.stale
        ]
        out += [_heading("Stale projects (no successful sync lately)")]
        out.append(_table(["project", "last success"], stale, right_last=False))
    else:
        out.append(Text(f"\nStale projects: none of the {report.projects_known} known."))
    return out


Row = tuple[RenderableType, ...]


def _table(columns: list[str], rows: list[Row], *, right_last: bool = True) -> Table:
    """A table of `rows`; the last column (a number, unless `right_last` is False) to the right."""
    table = Table()
    for i, name in enumerate(columns):
        table.add_column(name, justify="right" if right_last and i == len(columns) - 1 else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _heading(title: str) -> Text:
    return Text("\n" + title, style="bold")
