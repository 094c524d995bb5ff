"""`snapsync status`: per project, the last run, its outcome and counts, and snapshots by status.

Read from the reporting views (`project_sync_health`, ...) so the terminal report and SQL users
see the same numbers; rendered with rich as one table per project (up to DETAILED_UP_TO
projects, or those named with --project), else one line per project, then a summary line; or as
JSON for scripts (rich is imported only to render: `status --json` does without it). Every query
reads by index, whatever the history holds.
"""

from __future__ import annotations

import io
import re
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import errors
from app import settings as settings_module

if TYPE_CHECKING:
    from rich.console import Console, Group
    from rich.table import Table
    from rich.text import Text

# How far back the report looks for failed creations and restores, and how many it lists.
RECENT_FAILURE_HOURS = 24
RECENT_FAILURES_SHOWN = 5
FAILED_RUNS_SHOWN = 3

COUNT_COLUMNS = (
    "pages",
    "snapshots_seen",
    "inserted",
    "updated",
    "deleted",
    "transitions",
    "rejected",
    "api_total_count",
)

STATUS_QUERY = text(
    """
SELECT h.project_id, h.region,
       h.last_run_id AS run_id, h.last_run_status AS run_status,
       h.last_run_started_at AS started_at, h.last_run_finished_at AS finished_at,
       h.last_run_error AS error,
       r.pages, r.snapshots_seen, r.inserted, r.updated, r.deleted, r.transitions, r.rejected,
       r.api_total_count,
       h.last_success_at, h.consecutive_failures,
       h.last_complete_listing_at, h.api_total_count AS listing_total_count, h.live_snapshots
FROM project_sync_health AS h
LEFT JOIN sync_runs AS r ON r.id = h.last_run_id
WHERE CAST(:every AS boolean) OR h.project_id = ANY(CAST(:ids AS text[]))
ORDER BY h.project_id
"""
)

COUNTS_QUERY = text(
    """
SELECT project_id, status, count(*) AS n
FROM snapshot_records
WHERE deleted_at IS NULL
  AND (CAST(:every AS boolean) OR project_id = ANY(CAST(:ids AS text[])))
GROUP BY project_id, status
ORDER BY project_id, status
"""
)

RECENT_FAILURES_QUERY = text(
    """
SELECT project_id, snapshot_id, desktop_name, from_status, to_status, observed_at
FROM (
    SELECT h.project_id, h.snapshot_id, s.desktop_name, h.from_status, h.to_status,
           h.observed_at,
           row_number() OVER (PARTITION BY h.project_id ORDER BY h.observed_at DESC, h.id DESC)
               AS n
    FROM snapshot_status_history AS h
    JOIN snapshots AS s USING (project_id, snapshot_id)
    WHERE h.to_status IN ('create_failed', 'restore_failed')
      AND h.observed_at >= now() - make_interval(hours => :hours)
      AND (CAST(:every AS boolean) OR h.project_id = ANY(CAST(:ids AS text[])))
      -- a first sighting is a recent failure only for a snapshot created recently
      AND (h.from_status IS NOT NULL OR s.create_time >= now() - make_interval(hours => :hours))
) AS f
WHERE n <= :shown
ORDER BY project_id, observed_at DESC
"""
)

# Per project through ix_sync_runs_failed: the newest few failures, however many runs it has.
FAILED_RUNS_QUERY = text(
    """
SELECT p.project_id, f.id, f.status, f.started_at, f.error
FROM projects AS p
CROSS JOIN LATERAL (
    SELECT r.id, r.status, r.started_at, r.error
    FROM sync_runs AS r
    WHERE r.project_id = p.project_id AND r.status IN ('failed', 'abandoned')
      AND r.kind = 'full'
    ORDER BY r.started_at DESC, r.id DESC
    LIMIT :shown
) AS f
WHERE CAST(:every AS boolean) OR p.project_id = ANY(CAST(:ids AS text[]))
ORDER BY p.project_id, f.started_at DESC
"""
)

# Up to this many projects, `status` shows each in full; beyond, one line each (--project
# shows the named ones in full).
DETAILED_UP_TO = 3
STALE_AFTER_SECONDS = 900  # three default sync intervals, as docs/reporting.md's stale query


@dataclass(frozen=True)
class SnapshotFailure:
    """A creation or restore that failed, as the history recorded it."""

    snapshot_id: str
    desktop_name: str | None
    from_status: str | None
    to_status: str
    observed_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "desktop_name": self.desktop_name,
            "from_status": self.from_status,
            "to_status": self.to_status,
            "observed_at": _iso(self.observed_at),
        }


@dataclass(frozen=True)
class FailedRun:
    """A sync run that failed or was abandoned."""

    run_id: int
    status: str
    started_at: datetime
    error: str | None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.run_id,
            "status": self.status,
            "started_at": _iso(self.started_at),
            "error": self.error,
        }


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
    region: str | None = None
    consecutive_failures: int = 0
    last_complete_listing_at: datetime | None = None
    listing_total_count: int | None = None
    recent_failures: list[SnapshotFailure] = field(default_factory=list)
    failed_runs: list[FailedRun] = field(default_factory=list)

    @property
    def live_snapshots(self) -> int:
        return sum(self.snapshots_by_status.values())

    def success_age_seconds(self, now: datetime) -> float | None:
        if self.last_success_at is None:
            return None
        return (now - self.last_success_at).total_seconds()

    def as_json(self, now: datetime) -> dict[str, Any]:
        age = self.success_age_seconds(now)
        return {
            "project_id": self.project_id,
            "region": self.region,
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
            "consecutive_failures": self.consecutive_failures,
            "last_complete_listing_at": _iso(self.last_complete_listing_at),
            "listing_total_count": self.listing_total_count,
            "snapshots_by_status": self.snapshots_by_status,
            "live_snapshots": self.live_snapshots,
            "recent_failures": [f.as_json() for f in self.recent_failures],
            "failed_runs": [r.as_json() for r in self.failed_runs],
        }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


async def collect(engine: AsyncEngine, project_ids: list[str] | None = None) -> list[ProjectStatus]:
    """Read every project's status (or the named ones') from the reporting views."""
    narrow = {"every": not project_ids, "ids": list(project_ids or [])}
    async with engine.connect() as conn:
        rows = (await conn.execute(STATUS_QUERY, narrow)).mappings().all()
        by_status = (await conn.execute(COUNTS_QUERY, narrow)).all()
        failures = (
            await conn.execute(
                RECENT_FAILURES_QUERY,
                {"hours": RECENT_FAILURE_HOURS, "shown": RECENT_FAILURES_SHOWN, **narrow},
            )
        ).all()
        failed_runs = (
            await conn.execute(FAILED_RUNS_QUERY, {"shown": FAILED_RUNS_SHOWN, **narrow})
        ).all()
    result: dict[str, ProjectStatus] = {}
    for row in rows:
        result[row["project_id"]] = ProjectStatus(
            project_id=row["project_id"],
            region=row["region"],
            run_id=row["run_id"],
            run_status=row["run_status"],
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            last_success_at=row["last_success_at"],
            error=row["error"],
            counts={name: row[name] for name in COUNT_COLUMNS},
            consecutive_failures=int(row["consecutive_failures"]),
            last_complete_listing_at=row["last_complete_listing_at"],
            listing_total_count=row["listing_total_count"],
        )
    for project_id, status, n in by_status:
        if project_id in result:
            result[project_id].snapshots_by_status[status] = int(n)
    for f in failures:
        if f.project_id in result:
            result[f.project_id].recent_failures.append(
                SnapshotFailure(
                    snapshot_id=f.snapshot_id,
                    desktop_name=f.desktop_name,
                    from_status=f.from_status,
                    to_status=f.to_status,
                    observed_at=f.observed_at,
                )
            )
    for r in failed_runs:
        if r.project_id in result:
            result[r.project_id].failed_runs.append(
                FailedRun(run_id=r.id, status=r.status, started_at=r.started_at, error=r.error)
            )
    return list(result.values())


DISCOVERY_QUERY = text(
    """
SELECT d.ran_at, d.succeeded_at, d.problem,
       (SELECT count(*) FROM projects WHERE discovered_at IS NOT NULL) AS discovered,
       (SELECT count(*) FROM projects WHERE discovered_at < d.succeeded_at) AS unlisted
FROM discovery_state AS d
"""
)
SKIPPED_QUERY = text("SELECT reason, project_id FROM skipped_projects ORDER BY reason, project_id")
# Per skip reason, `status` names this many projects and counts the rest.
SKIPPED_NAMED = 3


@dataclass(frozen=True)
class DiscoveryRecord:
    """What the newest discovery stored (SNAPSYNC_PROJECTS=auto)."""

    ran_at: datetime
    succeeded_at: datetime | None
    problem: str | None  # why the newest one got no list from IAM
    discovered: int  # projects in the database a discovery listed
    unlisted: int  # of those, the ones the newest successful discovery no longer listed
    skipped: dict[str, list[str]]  # reason: project ids


def discovery_lines(found: DiscoveryRecord | None, now: datetime) -> list[str]:
    """For `snapsync status`: when discovery ran, how it ended, what it skipped (per reason a
    few project ids, then a count)."""
    if found is None:
        return ["discovery: none stored in this database yet (`sync` and `run` store theirs)"]
    ran = f"discovery: last ran {_when(found.ran_at, now)}"
    if found.problem is not None:
        got = "never" if found.succeeded_at is None else _when(found.succeeded_at, now)
        problem = _CONTROL.sub("?", found.problem)
        return [f"{ran} and failed: {problem}; IAM last listed the projects: {got}"]
    line = f"{ran}: {found.discovered} project(s) discovered in the database"
    if found.unlisted:
        line += f", {found.unlisted} no longer listed (not synced, data kept)"
    skipped = sum(len(ids) for ids in found.skipped.values())
    if not skipped:
        return [line + ", none skipped"]
    parts = []
    for reason, ids in sorted(found.skipped.items()):
        more = f", +{len(ids) - SKIPPED_NAMED} more" if len(ids) > SKIPPED_NAMED else ""
        parts.append(f"{len(ids)} {reason} ({', '.join(ids[:SKIPPED_NAMED])}{more})")
    return [
        line,
        f"discovery: skipped {skipped} (Workspace answered 403 or 404; asked again at the next "
        "discovery; table skipped_projects lists them): " + "; ".join(parts),
    ]


async def collect_discovery(engine: AsyncEngine) -> DiscoveryRecord | None:
    """The newest stored discovery, or None when none ran on this database."""
    async with engine.connect() as conn:
        row = (await conn.execute(DISCOVERY_QUERY)).one_or_none()
        skipped_rows = (await conn.execute(SKIPPED_QUERY)).all()
    if row is None:
        return None
    skipped: dict[str, list[str]] = {}
    for reason, project_id in skipped_rows:
        skipped.setdefault(reason, []).append(project_id)
    return DiscoveryRecord(
        ran_at=row.ran_at,
        succeeded_at=row.succeeded_at,
        problem=row.problem,
        discovered=int(row.discovered),
        unlisted=int(row.unlisted),
        skipped=skipped,
    )


def format_age(seconds: float | None) -> str:
    """A short human age: 42s, 7m, 3h, 2d."""
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _when(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "-"
    stamp = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{stamp} ({format_age(max(0.0, (now - value).total_seconds()))} ago)"


_OUTCOME_STYLES = {"succeeded": "green", "failed": "bold red", "abandoned": "red"}
_FAILED_STATUSES = frozenset({"create_failed", "restore_failed"})


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str, style: str = "") -> Text:
    """API or database text as literal output: no rich markup, no terminal control codes."""
    from rich.text import Text

    return Text(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text), style=style)


def project_table(st: ProjectStatus, now: datetime) -> Table:
    """One project's report as a two-column rich table."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(f"project {st.project_id}", style="bold"),
        title_justify="left",
        show_header=False,
        box=box.SIMPLE,
        pad_edge=False,
    )
    table.add_column("what", style="dim", no_wrap=True)
    table.add_column("value", overflow="fold")
    if st.run_id is None:
        table.add_row("last run", "none")
    else:
        outcome = Text(st.run_status or "?", style=_OUTCOME_STYLES.get(st.run_status or "", ""))
        line = Text.assemble(f"#{st.run_id} ", outcome, f", started {_when(st.started_at, now)}")
        if st.finished_at is not None and st.started_at is not None:
            took = (st.finished_at - st.started_at).total_seconds()
            line.append(f", took {took:.2f}s")
        table.add_row("last run", line)
        c = st.counts
        table.add_row(
            "counts",
            f"pages={c['pages']} seen={c['snapshots_seen']} inserted={c['inserted']} "
            f"updated={c['updated']} deleted={c['deleted']} "
            f"transitions={c['transitions']} rejected={c['rejected']}",
        )
        if st.error:
            table.add_row("error", shown(st.error, "red"))
    if st.last_success_at is None:
        table.add_row("last success", Text("never", style="red"))
    else:
        table.add_row(
            "last success",
            f"{format_age(st.success_age_seconds(now))} ago ({_iso(st.last_success_at)})",
        )
    if st.consecutive_failures:
        table.add_row("failures in a row", Text(str(st.consecutive_failures), style="bold red"))
    listing = (
        f", the API reported {st.listing_total_count} in the last complete listing"
        if st.listing_total_count is not None
        else ", no complete listing yet"
    )
    table.add_row("snapshots", f"live snapshots: {st.live_snapshots}{listing}")
    if st.snapshots_by_status:
        by_status = Text()
        for i, (status, n) in enumerate(sorted(st.snapshots_by_status.items())):
            if i:
                by_status.append("  ")
            by_status.append_text(
                shown(f"{status}={n}", "red" if status in _FAILED_STATUSES else "")
            )
        table.add_row("by status", by_status)
    for i, f in enumerate(st.recent_failures):
        table.add_row(
            f"failed ({RECENT_FAILURE_HOURS}h)" if i == 0 else "",
            shown(
                f"{f.observed_at.astimezone(UTC):%Y-%m-%d %H:%M} {f.to_status} "
                f"{f.desktop_name or '?'} (snapshot {f.snapshot_id})"
            ),
        )
    earlier = [r for r in st.failed_runs if r.run_id != st.run_id]
    for i, r in enumerate(earlier):
        table.add_row(
            "earlier failed runs" if i == 0 else "",
            shown(
                f"#{r.run_id} {r.status} {r.started_at.astimezone(UTC):%Y-%m-%d %H:%M}: "
                f"{r.error or 'no error recorded'}"
            ),
        )
    return table


def project_lines(statuses: list[ProjectStatus], now: datetime, width: int) -> Group:
    """Every project on one line: the newest run, the last success, failures, live snapshots;
    the error of a failed run cut to what is left of the line."""
    from rich.console import Group
    from rich.text import Text

    header = (
        "project",
        "last run",
        "started",
        "took",
        "last success",
        "failures",
        "live",
        "api",
        f"failed {RECENT_FAILURE_HOURS}h",
    )
    rows: list[list[Text]] = [[Text(h, style="bold") for h in header]]
    for st in statuses:
        took = (
            f"{(st.finished_at - st.started_at).total_seconds():.1f}s"
            if st.finished_at is not None and st.started_at is not None
            else "-"
        )
        age = st.success_age_seconds(now)
        started = (
            "-"
            if st.started_at is None
            else format_age(max(0.0, (now - st.started_at).total_seconds())) + " ago"
        )
        rows.append(
            [
                shown(st.project_id),
                Text(st.run_status or "none", style=_OUTCOME_STYLES.get(st.run_status or "", "")),
                Text(started),
                Text(took),
                Text(
                    "never" if age is None else format_age(age) + " ago",
                    style="red" if age is None or age > STALE_AFTER_SECONDS else "",
                ),
                Text(
                    str(st.consecutive_failures),
                    style="bold red" if st.consecutive_failures else "",
                ),
                Text(str(st.live_snapshots)),
                Text("-" if st.listing_total_count is None else str(st.listing_total_count)),
                Text(str(len(st.recent_failures)), style="red" if st.recent_failures else ""),
            ]
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        line = Text()
        for c, cell in enumerate(row):
            if c:
                line.append("  ")
            pad = " " * (widths[c] - len(cell))
            line.append_text(cell + pad if c < 2 else Text(pad) + cell)
        st_error = statuses[n - 1].error if n else None
        room = width - len(line) - 2
        if st_error and room > 10:
            first = st_error.splitlines()[0] if st_error.strip() else st_error
            cut = first if len(first) <= room else first[: room - 1] + "…"
            line.append("  ")
            line.append_text(shown(cut, "red"))
        lines.append(line)
    return Group(*lines)


def summary(statuses: list[ProjectStatus], now: datetime) -> Text:
    """One line over every project shown."""
    from rich.text import Text

    outcomes = Counter(st.run_status or "never synced" for st in statuses)
    stale = sum(
        1
        for st in statuses
        if (age := st.success_age_seconds(now)) is None or age > STALE_AFTER_SECONDS
    )
    failing = sum(1 for st in statuses if st.consecutive_failures)
    live = sum(st.live_snapshots for st in statuses)
    runs = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
    line = Text(f"{len(statuses)} project(s), last runs: {runs}; ")
    line.append(
        f"{failing} failing, {stale} without a success in {STALE_AFTER_SECONDS // 60} min",
        style="bold red" if failing or stale else "green",
    )
    line.append(f"; {live} live snapshots")
    return line


def report(
    statuses: list[ProjectStatus], now: datetime, *, detail: bool = True, width: int = 120
) -> Group | Text:
    """The whole report as one rich renderable: each project in full, or one line each; then
    the summary line."""
    from rich.console import Group
    from rich.text import Text

    if not statuses:
        return Text("No project has been synced yet. Run `snapsync sync`.")
    if detail:
        return Group(*(project_table(st, now) for st in statuses), summary(statuses, now))
    return Group(project_lines(statuses, now, width), Text(), summary(statuses, now))


def default_width() -> int:
    """The terminal's width, never narrower than 100 columns (120 when not a terminal)."""
    return max(100, shutil.get_terminal_size((120, 24)).columns)


def print_report(
    statuses: list[ProjectStatus],
    now: datetime,
    console: Console | None = None,
    *,
    detail: bool = True,
) -> None:
    """Print the report with colours when the console is a terminal."""
    from rich.console import Console

    console = console or Console()
    console.print(report(statuses, now, detail=detail, width=console.width))


def render_text(
    statuses: list[ProjectStatus],
    now: datetime,
    width: int | None = None,
    *,
    detail: bool = True,
) -> str:
    """The report as plain text (no colours), `width` columns wide."""
    from rich.console import Console

    console = Console(
        file=io.StringIO(),
        record=True,
        width=width or default_width(),
        color_system=None,
        force_terminal=False,
        emoji=False,
        highlight=False,
    )
    console.print(report(statuses, now, detail=detail, width=console.width))
    return "\n".join(line.rstrip() for line in console.export_text(styles=False).splitlines())


# Here, not in app.discovery: `status` then needs no HTTP client (aiohttp) at start-up.
def source_line(settings: settings_module.Settings, stored: Sequence[str]) -> str:
    """For `snapsync status`: where the projects come from, beside those the database holds."""
    if settings.discovers:
        kept = settings.regions.strip() or "every Workspace region"
        return (
            f"projects: SNAPSYNC_PROJECTS=auto, discovered through IAM ({kept}) by each `sync` "
            f"and by `run` every {settings.discovery_interval:g}s; {len(stored)} in the "
            "database"
        )
    if not settings.projects.strip():
        return f"projects: SNAPSYNC_PROJECTS is not set here; {len(stored)} in the database"
    try:
        configured = [p.project_id for p in settings.project_list()]
    except errors.ConfigError as exc:
        return f"projects: {exc}"
    line = f"projects: {len(configured)} configured in SNAPSYNC_PROJECTS"
    others = sum(1 for pid in stored if pid not in configured)
    if others:
        # Counted, not named: each project has its own line above.
        line += f"; {others} more in the database, no longer configured (not synced, data kept)"
    return line
