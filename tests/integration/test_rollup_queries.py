"""The queries that read the hourly rollup (docs/reporting.md, docs/grafana/snapsync.json)
give exactly the rows of the queries they replaced, which read the history alone (kept here,
as they were, as the oracles): on the reporting scenario, after churn and a prune, and on
generated edge cases (times on the hour, ranges inside one hour or starting on one, a
snapshot back after 'deleted', a project filter), in UTC and in whole-hour time zones."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import asyncpg

from app import rollup

from .test_reporting import DASHBOARD, Scenario, doc_queries, scenario

__all__ = ["scenario"]  # the module fixture, imported for pytest

# The queries as they were before the rollup (0007): the oracles.
# ruff: noqa: E501
OLD_LIVE_DOC = """
WITH points AS (
    SELECT generate_series(date_trunc('hour', now()) - interval '23 hours',
                           date_trunc('hour', now()),
                           interval '1 hour') AS at
    UNION ALL
    SELECT now()
),
changes AS (
    SELECT status, GREATEST(entered_by, date_trunc('hour', now()) - interval '23 hours') AS at,
           1 AS delta
    FROM snapshot_status_intervals
    WHERE status <> 'deleted' AND left_by IS NULL
    UNION ALL
    SELECT status, GREATEST(entered_by, date_trunc('hour', now()) - interval '23 hours'), 1
    FROM snapshot_status_intervals
    WHERE status <> 'deleted' AND left_by > date_trunc('hour', now()) - interval '23 hours'
    UNION ALL
    SELECT status, left_by, -1
    FROM snapshot_status_intervals
    WHERE status <> 'deleted' AND left_by > date_trunc('hour', now()) - interval '23 hours'
),
steps AS (
    SELECT LEAST(date_trunc('hour', at - interval '1 microsecond') + interval '1 hour', now())
               AS at,
           status,
           sum(delta) AS delta
    FROM changes
    WHERE at <= now()
    GROUP BY 1, 2
),
counts AS (
    SELECT p.at, s.status,
           CAST(sum(COALESCE(d.delta, 0)) OVER (PARTITION BY s.status ORDER BY p.at)
                AS bigint) AS snapshots
    FROM points AS p
    CROSS JOIN (SELECT DISTINCT status FROM steps) AS s
    LEFT JOIN steps AS d ON d.at = p.at AND d.status = s.status
)
SELECT at, status, snapshots
FROM counts
WHERE snapshots > 0
ORDER BY at, status;
"""

OLD_PER_DAY_DOC = """
SELECT date_trunc('day', observed_at) AS day,
       from_status, to_status,
       count(*) AS changes
FROM snapshot_status_history
WHERE from_status IS NOT NULL
  AND observed_at >= now() - interval '30 days'
GROUP BY 1, 2, 3
ORDER BY 1, changes DESC, from_status, to_status;
"""

OLD_STAY_DOC = """
SELECT status,
       count(*) AS periods,
       round(avg(min_seconds)::numeric, 1) AS avg_seconds_at_least,
       round(avg(max_seconds)::numeric, 1) AS avg_seconds_at_most
FROM snapshot_status_intervals
WHERE left_by >= now() - interval '7 days'
  AND entered_after IS NOT NULL
GROUP BY status
ORDER BY status;
"""

OLD_LIVE_PANEL = """
WITH points AS (
    SELECT generate_series(date_trunc('hour', $__timeFrom()::timestamptz), $__timeTo()::timestamptz, interval '1 hour') AS at
),
periods AS (
    SELECT status, entered_by, NULL::timestamptz AS left_by
    FROM snapshot_status_intervals
    WHERE status <> 'deleted' AND left_by IS NULL AND project_id IN ($project)
    UNION ALL
    SELECT status, entered_by, left_by
    FROM snapshot_status_intervals
    WHERE status <> 'deleted' AND left_by > date_trunc('hour', $__timeFrom()::timestamptz)
      AND project_id IN ($project)
),
spans AS (
    SELECT status,
           date_trunc('hour', GREATEST(entered_by, date_trunc('hour', $__timeFrom()::timestamptz)) - interval '1 microsecond') + interval '1 hour' AS entered,
           date_trunc('hour', left_by - interval '1 microsecond') + interval '1 hour' AS left_at,
           count(*) AS n
    FROM periods
    GROUP BY 1, 2, 3
),
steps AS (
    SELECT s.status, e.at, sum(e.delta) AS delta
    FROM spans AS s
    CROSS JOIN LATERAL (VALUES (s.entered, s.n), (s.left_at, -s.n)) AS e(at, delta)
    WHERE e.at IS NOT NULL
    GROUP BY 1, 2
),
counts AS (
    SELECT p.at, s.status,
           CAST(sum(COALESCE(d.delta, 0)) OVER (PARTITION BY s.status ORDER BY p.at) AS bigint)
               AS value
    FROM points AS p
    CROSS JOIN (SELECT DISTINCT status FROM steps) AS s
    LEFT JOIN steps AS d ON d.at = p.at AND d.status = s.status
)
SELECT at AS time, status AS metric, value
FROM counts
WHERE value > 0
ORDER BY 1, 2
"""

OLD_CHANGES_PANEL = """
SELECT date_trunc('hour', observed_at) AS time, to_status AS metric, count(*) AS value
FROM snapshot_status_history
WHERE from_status IS NOT NULL AND $__timeFilter(observed_at) AND project_id IN ($project)
GROUP BY 1, 2
ORDER BY 1, 2
"""


ZONES = ("UTC", "Asia/Tokyo", "America/New_York")
LIVE_DOC = "Live snapshots by status over time"
PER_DAY_DOC = "Status changes per day"
STAY_DOC = "How long snapshots stay in each status"


def doc_sql(heading: str) -> str:
    (sql,) = [q for h, q in doc_queries() if h == heading]
    return sql


def panel_sql(title: str) -> str:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (sql,) = [
        t["rawSql"]
        for p in dashboard["panels"]
        if p.get("title") == title
        for t in p.get("targets", [])
        if "snapshot_status" in t.get("rawSql", "")
    ]
    return str(sql)


def at(sql: str, now: datetime) -> str:
    """The query as if run at `now` (both the old and the new read the clock only by now())."""
    return sql.replace("now()", f"CAST('{now.isoformat()}' AS timestamptz)")


def grafana(sql: str, start: datetime, end: datetime, projects: Sequence[str]) -> str:
    """Grafana's macros for the range [start, end] and the projects, as literals."""
    first, last = f"'{start.isoformat()}'", f"'{end.isoformat()}'"
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN {first} AND {last}", sql)
    sql = sql.replace("$__timeFrom()", first).replace("$__timeTo()", last)
    sql = sql.replace("$project", ", ".join(f"'{p}'" for p in projects))
    assert "$" not in sql, sql
    return sql


async def rows(conn: asyncpg.Connection, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await conn.fetch(sql)]


async def assert_same_answers(
    conn: asyncpg.Connection,
    *,
    nows: Sequence[datetime],
    ranges: Sequence[tuple[datetime, datetime]],
    projects: Sequence[str],
) -> int:
    """Every rewritten query against its oracle, at each `now`, over each range, for all the
    projects and each one, in each of ZONES; returns how many answers had rows."""
    docs = [(LIVE_DOC, OLD_LIVE_DOC), (PER_DAY_DOC, OLD_PER_DAY_DOC), (STAY_DOC, OLD_STAY_DOC)]
    panels = [
        ("Live snapshots by status", OLD_LIVE_PANEL),
        ("Status changes per hour", OLD_CHANGES_PANEL),
    ]
    answered = 0
    try:
        for zone in ZONES:
            await conn.execute(f"SET TIME ZONE '{zone}'")
            for now in nows:
                for heading, old in docs:
                    if heading == LIVE_DOC and now == now.replace(
                        minute=0, second=0, microsecond=0
                    ):
                        # The old query has the point now() twice then (the last hour point too)
                        # and adds that hour's changes to both twice: not an answer to keep.
                        continue
                    want = await rows(conn, at(old, now))
                    assert await rows(conn, at(doc_sql(heading), now)) == want, (zone, now, heading)
                    answered += bool(want)
            for start, end in ranges:
                for chosen in [list(projects), *([p] for p in projects)]:
                    for title, old in panels:
                        want = await rows(conn, grafana(old, start, end, chosen))
                        got = await rows(conn, grafana(panel_sql(title), start, end, chosen))
                        assert got == want, (zone, start, end, chosen, title)
                        answered += bool(want)
    finally:
        await conn.execute("RESET TIME ZONE")
    return answered


def edges(now: datetime) -> tuple[list[datetime], list[tuple[datetime, datetime]]]:
    """Instants and ranges that cut hours every way: on the hour, a microsecond either side,
    inside one hour, starting on one, whole hours, a day and a month."""
    top = now.replace(minute=0, second=0, microsecond=0)
    us = timedelta(microseconds=1)
    hour = timedelta(hours=1)
    nows = [now, top, top + us, top - us, top + timedelta(minutes=20), top - 2 * hour]
    ranges = [
        (now - timedelta(days=1), now),
        (now - timedelta(days=30), now),
        (top, now),
        (top - 2 * hour, top),
        (top - 2 * hour + us, top - us),
        (top - hour + timedelta(minutes=10), top - hour + timedelta(minutes=40)),
        (top - hour, top - hour + timedelta(minutes=30)),
        (top - 3 * hour - us, top + us),
    ]
    return nows, ranges


async def test_the_rollup_queries_answer_as_the_history_on_the_scenario(
    scenario: Scenario,
) -> None:
    conn = await asyncpg.connect(**_dsn(scenario.url))
    try:
        nows, ranges = edges(datetime.now(UTC))
        answered = await assert_same_answers(
            conn, nows=nows, ranges=ranges, projects=scenario.sim.project_ids
        )
        assert answered > 20
    finally:
        await conn.close()


def _dsn(url: str) -> dict[str, object]:
    from ..conftest import _asyncpg_dsn

    return dict(_asyncpg_dsn(url))


STATUSES = ("creating", "create_success", "create_failed", "restoring", "restore_success")


def generated_history(now: datetime, seed: int = 14) -> list[tuple[object, ...]]:
    """History rows of two projects on times that sit on, just before and just after hour
    tops, with deletions and reappearances; each snapshot's rows in time order."""
    rng = random.Random(seed)
    top = now.replace(minute=0, second=0, microsecond=0)
    us = timedelta(microseconds=1)
    times = sorted(
        {
            top - timedelta(hours=h) + d
            for h in range(0, 30)
            for d in (-us, timedelta(0), us, timedelta(minutes=rng.randrange(1, 59)))
        }
        # Around the start of the 7- and 30-day windows of every `now` the test asks at.
        | {
            edge + d
            for n in edges(now)[0]
            for days in (7, 30)
            for start in (n - timedelta(days=days),)
            for edge in (start, start.replace(minute=0, second=0, microsecond=0))
            for d in (-us, timedelta(0), us, timedelta(minutes=-30), timedelta(minutes=40))
        }
    )
    times = [t for t in times if t <= now]
    found = []
    for project in ("p-one", "p-two"):
        for n in range(40):
            chosen = sorted(rng.sample(times, rng.randrange(1, 6)))
            status: str | None = None
            seen = None
            for i, observed in enumerate(chosen):
                if status is not None and status != "deleted" and rng.random() < 0.25:
                    new = "deleted"
                else:
                    new = rng.choice([s for s in STATUSES if s != status])
                if i == 0:
                    previous = None
                else:
                    assert seen is not None
                    gap = observed - seen
                    previous = rng.choice([seen, seen + gap / 2, observed - us, observed])
                found.append((project, f"s{n}", status, new, observed, previous))
                status, seen = new, observed
    return found


CLOSE = """
UPDATE snapshot_status_history AS c SET next_id = n.next_id, next_status = n.next_status,
    left_after = n.left_after, left_by = n.left_by
FROM (
    SELECT id, lead(id) OVER w AS next_id, lead(to_status) OVER w AS next_status,
           lead(previous_observed_at) OVER w AS left_after, lead(observed_at) OVER w AS left_by
    FROM snapshot_status_history
    WINDOW w AS (PARTITION BY project_id, snapshot_id ORDER BY observed_at, id)
) AS n
WHERE c.id = n.id AND n.next_id IS NOT NULL
"""


async def test_the_rollup_queries_answer_as_the_history_on_edge_cases(
    sql: asyncpg.Connection,
) -> None:
    now = datetime.now(UTC)
    history = generated_history(now)
    await sql.executemany(
        "INSERT INTO snapshot_status_history (project_id, snapshot_id, from_status, to_status, "
        "observed_at, previous_observed_at) VALUES ($1, $2, $3, $4, $5, $6)",
        history,
    )
    await sql.execute(CLOSE)
    for statement in rollup.BACKFILL_STATEMENTS:
        await sql.execute(statement)
    on_the_hour = await sql.fetchval(
        "SELECT count(*) FROM snapshot_status_history "
        "WHERE observed_at = date_trunc('hour', observed_at, 'UTC')"
    )
    assert on_the_hour > 5
    assert await sql.fetchval(
        "SELECT count(*) FROM snapshot_status_history WHERE from_status = 'deleted'"
    )
    nows, ranges = edges(now)
    answered = await assert_same_answers(sql, nows=nows, ranges=ranges, projects=["p-one", "p-two"])
    assert answered > 50
