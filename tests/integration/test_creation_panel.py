"""The Grafana creation-time panel reads the history rows an hour at a time (0006's
ix_snapshot_status_history_creations_ended): its answers are those of the query it replaced,
over snapshot_operation_durations, and its seconds those of the view's max_seconds."""

from __future__ import annotations

import asyncpg

from ..conftest import _asyncpg_dsn
from .test_reporting import Scenario, dashboard_targets, grafana_sql, scenario  # noqa: F401

TITLE = "Creation time, upper bound (p50, p95 per hour)"

# The panel's SQL before 0006 (over the view).
OVER_THE_VIEW = """
SELECT date_trunc('hour', ended_by) AS time,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY max_seconds) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY max_seconds) AS p95
FROM snapshot_operation_durations
WHERE operation = 'create' AND outcome = 'create_success' AND observed_in_flight
  AND $__timeFilter(ended_by) AND project_id IN ($project)
GROUP BY 1
ORDER BY 1
"""


def panel_sql() -> str:
    (target,) = [
        t
        for t in dashboard_targets()
        if t.get("rawSql") and "creations_ended" in t["rawSql"] and "percentile_cont" in t["rawSql"]
    ]
    return str(target["rawSql"])


async def test_the_panel_answers_what_the_view_answers(scenario: Scenario) -> None:  # noqa: F811
    conn = await asyncpg.connect(**_asyncpg_dsn(scenario.url))  # type: ignore[arg-type]
    try:
        projects = scenario.sim.project_ids
        for chosen in (projects, projects[:1], projects[1:]):
            want = [tuple(r) for r in await conn.fetch(grafana_sql(OVER_THE_VIEW, chosen))]
            got = [tuple(r) for r in await conn.fetch(grafana_sql(panel_sql(), chosen))]
            assert got == want
        # The script's creations that ended in success while snapsync watched are there.
        everything = await conn.fetch(grafana_sql(panel_sql(), projects))
        assert everything and all(r["p50"] is not None for r in everything)
    finally:
        await conn.close()


async def test_date_part_below_a_day_is_the_views_extract(scenario: Scenario) -> None:  # noqa: F811
    conn = await asyncpg.connect(**_asyncpg_dsn(scenario.url))  # type: ignore[arg-type]
    try:
        # Durations as timestamptz differences: microseconds, seconds, hours, up to a day.
        differing = await conn.fetchval(
            """
            SELECT count(*) FROM (
                SELECT t + make_interval(secs => s) - t AS d
                FROM generate_series(1, 200000) AS n
                CROSS JOIN LATERAL (
                    SELECT timestamptz '2026-11-30 10:00:00+00'
                               + make_interval(secs => (n * 7919) % 86400) AS t,
                           ((n::bigint * 104729) % 86399999999) / 1000000.0 AS s
                ) AS x
            ) AS q
            WHERE d < interval '1 day'
              AND date_part('epoch', d) <> extract(epoch FROM d)::double precision
            """
        )
        assert differing == 0
    finally:
        await conn.close()
