"""The reporting benchmark: every shipped query against a database shaped like a big tenant's.

    .venv/bin/python benchmarks/reporting.py --database postgresql://postgres@127.0.0.1/bench
    .venv/bin/python benchmarks/reporting.py --database URL --generate-only   # fill it, exit 0
    .venv/bin/python benchmarks/reporting.py --database URL --reuse           # time a filled one
    .venv/bin/python benchmarks/reporting.py --database URL --size smoke      # CI's smoke run

Generation: the database `--database` names is migrated (app.db.migrate, to head or
`--revision`) and filled by set-based SQL (INSERT ... SELECT over generate_series) with what a
sync every 5 minutes would have written: by default 200 projects x 100 desktops, one snapshot per
desktop a day (3 % of them MANUALLY, the rest AUTO) for 100 days, each deleted about 10 days after
its creation; 2.5 % of the creations fail, 1.5 % of the snapshots are restored (1 in 10 of those
restores fails); history rows on the 5-minute grid; one full run per project every 5 minutes for
the last 30 days. Every random choice is a hash of the seed and the row's key
(hashint8extended), so the same options give the same rows whatever plan PostgreSQL picks.

Timing: every ```sql block of docs/reporting.md, every SQL panel of docs/grafana/snapsync.json
(Grafana's macros and the $project variable substituted; 24 h and 30 d; all projects and one),
the dashboard's variable query, and `snapsync status` as a child process. Each is run once to
warm, then `--repeats` more times; the table shows the median and best of those, the rows
returned and the plan's costliest node (see `costliest`). Then the same on a database with a
quarter of the history (days / 4, run days / 4) and each query's growth, full / quarter.

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app import db, items  # noqa: E402
from app.simulator.generation import RESTORE_FAIL_REASONS  # noqa: E402
from app.simulator.model import API_FIELDS  # noqa: E402

DOC = REPO / "docs" / "reporting.md"
DASHBOARD = REPO / "docs" / "grafana" / "snapsync.json"
TICK = 300  # seconds between two syncs of a project
TICKS_PER_DAY = 86_400 // TICK
# The tables the generator fills; their secondary indexes and foreign keys are dropped during
# the load and rebuilt from their own definitions afterwards (whatever a migration added).
TABLES = ("projects", "sync_runs", "snapshot_status_history", "snapshot_records")
# A migration may name SQL that derives its new columns from the base ones (a backfill): a
# module-level sequence of plain statements, run in order after the load, before the indexes.
BACKFILL_HOOKS = (("app.coverage", "BACKFILL_STATEMENTS"), ("app.rollup", "BACKFILL_STATEMENTS"))


@dataclass(frozen=True)
class Size:
    """How much to generate; the defaults are the tenant of issue 14."""

    projects: int = 200
    desktops: int = 100  # per project, one snapshot each a day
    days: int = 100  # of snapshots and their history, ending at the newest sync
    run_days: float = 30  # of sync_runs (history older than that has no sync_run_id)
    seed: int = 14
    misses: int = 2  # SNAPSYNC_DELETE_AFTER_MISSES
    retention_days: int = 10  # a snapshot leaves the API this long after its creation

    def quarter(self) -> Size:
        return replace(self, days=max(1, self.days // 4), run_days=self.run_days / 4)

    @property
    def run_ticks(self) -> int:
        return max(1, int(self.run_days * TICKS_PER_DAY))


SMOKE = Size(projects=3, desktops=8, days=16, run_days=2)


# -- generation ---------------------------------------------------------------------------------

# r(key, salt): a uniform double in [0, 1) from the seed, a row's key and a salt, the same
# whatever order rows are made in. The other helpers are the sync's formats.
FUNCTIONS = """
CREATE SCHEMA bench_gen;
CREATE FUNCTION bench_gen.r(key bigint, salt integer) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (hashint8extended(key, {seed}::bigint * 1000 + salt) & 9007199254740991)::float8
           / 9007199254740992.0
$$;
CREATE FUNCTION bench_gen.uuid_of(seed text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-'
           || substr('89ab', (get_byte(decode(substr(h, 17, 2), 'hex'), 0) & 3) + 1, 1)
           || substr(h, 18, 3) || '-' || substr(h, 21, 12)
    FROM (SELECT md5(seed) AS h) AS m
$$;
CREATE FUNCTION bench_gen.api_time(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
$$;
-- When the sync of project p at tick t started (tick 0 is the newest; the offset spreads the
-- projects over the 5 minutes), and the run's id (NULL: before the runs kept).
CREATE FUNCTION bench_gen.run_at(p integer, t integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{t0}'::timestamptz + make_interval(secs => t * {tick} + (p * 37) % 240)
$$;
CREATE FUNCTION bench_gen.run_id(p integer, t integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN t > -{run_ticks} AND t <= 0
                THEN (t + {run_ticks} - 1)::bigint * {projects} + p + 1 END
$$;
-- 1 run in 2,000 fails (only at even ticks, so the next one succeeds).
CREATE FUNCTION bench_gen.run_failed(p integer, t integer) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT t % 2 = 0 AND bench_gen.r(p::bigint * 100000000 + t, 90) < 0.001
$$;
-- The first tick whose sync starts at or after `at`.
CREATE FUNCTION bench_gen.tick_after(p integer, at timestamptz) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ceil((extract(epoch FROM at - '{t0}'::timestamptz) - (p * 37) % 240) / {tick})::integer
$$;
"""

# One row per snapshot ever seen: its key, its times as ticks and what happens to it.
STAGE_SNAPSHOTS = """
CREATE TEMP TABLE bench_snap ON COMMIT DROP AS
SELECT x.*,
       x.t_first + x.dur AS t_end,
       CASE WHEN x.restored THEN x.t_first + x.dur + 12 + floor(r(x.key, 8) * 2400)::int END
           AS t_restore,
       CASE WHEN x.restored THEN x.t_first + x.dur + 12 + floor(r(x.key, 8) * 2400)::int
                                 + 1 + floor(r(x.key, 9) * 4)::int END AS t_restored
FROM (
    SELECT g.p, g.d, g.k, g.key, bench_gen.uuid_of('s{seed}:' || g.key) AS snapshot_id,
           g.ct, g.manual, g.system_disk,
           tick_after(g.p, g.ct) AS t_first,
           CASE WHEN r(g.key, 4) < 0.002 THEN 12 + floor(r(g.key, 5) * 84)::int
                ELSE 1 + floor(r(g.key, 5) * 6)::int END AS dur,
           g.failed,
           NOT g.failed AND r(g.key, 7) < 0.015 AS restored,
           r(g.key, 10) < 0.1 AS restore_fails,
           tick_after(g.p, g.ct + make_interval(days => {retention_days},
                                                secs => r(g.key, 11) * 3600)) AS t_gone,
           floor(r(g.key, 12) * 90)::smallint AS progress
    FROM (
        SELECT b.p, b.d, b.k, b.key,
               date_trunc('second',
                   date_trunc('day', '{t0}'::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   - make_interval(days => {days} - 1 - b.k)
                   + CASE WHEN r(b.key, 2) < 0.03
                          THEN make_interval(hours => 8, secs => r(b.key, 3) * 36000)
                          ELSE make_interval(
                              hours => (ARRAY[1, 2, 3, 12, 18, 22])[b.p % 6 + 1],
                              secs => r(b.key, 1) * 1800)
                     END) AS ct,
               r(b.key, 2) < 0.03 AS manual,
               NOT (b.d % 5 = 0 AND b.k % 2 = 1) AS system_disk,
               r(b.key, 6) < 0.025 AS failed
        FROM (
            SELECT p, d, k, (p::bigint * {desktops} + d) * {days} + k AS key
            FROM generate_series(0, {projects} - 1) AS p,
                 generate_series(0, {desktops} - 1) AS d,
                 generate_series(0, {days} - 1) AS k
        ) AS b
    ) AS g
) AS x
WHERE x.t_first <= 0;
-- A deletion is confirmed by the complete listing `misses` ticks after the first that lacks
-- it; never by a failed run (the next one, which succeeds).
ALTER TABLE bench_snap ADD COLUMN t_deleted integer;
UPDATE bench_snap SET t_deleted = t_gone + {misses} - 1
    + CASE WHEN run_failed(p, t_gone + {misses} - 1) THEN 1 ELSE 0 END;
ANALYZE bench_snap;
"""

# The status a snapshot had at tick t (t < t_gone).
STATUS_AT = """CASE
    WHEN {t} < s.t_end THEN 'creating'
    WHEN s.failed THEN 'create_failed'
    WHEN s.restored AND {t} >= s.t_restored
        THEN CASE WHEN s.restore_fails THEN 'restore_failed' ELSE 'restore_success' END
    WHEN s.restored AND {t} >= s.t_restore THEN 'restoring'
    ELSE 'create_success' END"""

# Written in time order (ids increase with observed_at, as the sync writes them). A page is
# stored 1.5 s after its run starts; deletions 3 s after (the end of the run).
INSERT_HISTORY = """
INSERT INTO snapshot_status_history (
    project_id, snapshot_id, from_status, to_status, observed_at, previous_observed_at,
    process, sync_run_id
)
SELECT pr.project_id, s.snapshot_id, e.from_status, e.to_status,
       run_at(s.p, e.t) + make_interval(secs => e.after), e.previous, e.process, run_id(s.p, e.t)
FROM bench_snap AS s
JOIN bench_project AS pr ON pr.p = s.p
CROSS JOIN LATERAL (VALUES
    (s.t_first, NULL, 'creating', s.progress, NULL::timestamptz, 1.5),
    (s.t_end, 'creating', CASE WHEN s.failed THEN 'create_failed' ELSE 'create_success' END,
     NULL::smallint, run_at(s.p, s.t_end - 1) + interval '1.5 s', 1.5),
    (s.t_restore, 'create_success', 'restoring', s.progress, run_at(s.p, s.t_restore - 1), 1.5),
    (s.t_restored, 'restoring',
     CASE WHEN s.restore_fails THEN 'restore_failed' ELSE 'restore_success' END,
     NULL::smallint, run_at(s.p, s.t_restored - 1) + interval '1.5 s', 1.5),
    (s.t_deleted, {last_status}, 'deleted', NULL::smallint, run_at(s.p, s.t_gone - 1), 3.0)
) AS e(t, from_status, to_status, process, previous, after)
WHERE e.t IS NOT NULL AND e.t <= 0
ORDER BY run_at(s.p, e.t) + make_interval(secs => e.after), s.p, e.to_status = 'deleted',
         s.snapshot_id;
"""

HAS_HISTORY_COLUMN = (
    "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = "
    "'snapshot_status_history'::regclass AND attname = $1 AND NOT attisdropped)"
)

# Each row's closing facts are those of its snapshot's next row (by observed_at, then id).
CLOSE_HISTORY = """
UPDATE snapshot_status_history AS c
SET next_id = n.next_id, next_status = n.next_status, left_after = n.left_after,
    left_by = n.left_by
FROM (
    SELECT id, lead(id) OVER w AS next_id, lead(to_status) OVER w AS next_status,
           lead(previous_observed_at) OVER w AS left_after, lead(observed_at) OVER w AS left_by
    FROM snapshot_status_history
    WINDOW w AS (PARTITION BY project_id, snapshot_id ORDER BY observed_at, id)
) AS n
WHERE n.id = c.id AND n.next_id IS NOT NULL;
"""

CREATION_STARTS = """
UPDATE snapshot_status_history AS h SET create_time = r.create_time
FROM snapshot_records AS r
WHERE h.from_status IS NULL AND r.project_id = h.project_id AND r.snapshot_id = h.snapshot_id;
"""

PROJECTS = """
CREATE TEMP TABLE bench_project ON COMMIT DROP AS
SELECT p, md5('{seed}:' || p) AS project_id,
       (ARRAY['cn-north-4', 'cn-east-3', 'ap-southeast-1'])[p % 3 + 1] AS region
FROM generate_series(0, {projects} - 1) AS p;
"""

# Counts from the history each run wrote; the listing's size is the project's live snapshots
# now (close enough: it changes by a few percent over a day).
INSERT_RUNS = """
INSERT INTO sync_runs (
    id, project_id, kind, started_at, finished_at, status, complete, pages, requests,
    snapshots_seen, inserted, updated, unchanged, deleted, transitions, rejected,
    api_total_count, error, owner
)
SELECT run_id(pr.p, t.t), pr.project_id, 'full', run_at(pr.p, t.t),
       run_at(pr.p, t.t) + make_interval(secs => 4 + r(run_id(pr.p, t.t), 91) * 3),
       CASE WHEN f.failed THEN 'failed' ELSE 'succeeded' END,
       NOT f.failed,
       ceil(l.live / 1000.0)::int, ceil(l.live / 1000.0)::int + COALESCE(h.deleted, 0),
       l.live, COALESCE(h.inserted, 0), COALESCE(h.updated, 0),
       greatest(l.live - COALESCE(h.inserted, 0) - COALESCE(h.updated, 0), 0),
       COALESCE(h.deleted, 0), COALESCE(h.transitions, 0), 0, l.live,
       CASE WHEN f.failed
            THEN 'Workspace API: HTTP 503 Service Unavailable, 5 retries exhausted' END,
       'bench-host:' || (4000 + pr.p)
FROM generate_series(-{run_ticks} + 1, 0) AS t(t)
CROSS JOIN bench_project AS pr
CROSS JOIN LATERAL (SELECT run_failed(pr.p, t.t) AS failed) AS f
LEFT JOIN (
    SELECT project_id, count(*) FILTER (WHERE deleted_at IS NULL) AS live
    FROM bench_live GROUP BY project_id
) AS l0 ON l0.project_id = pr.project_id
CROSS JOIN LATERAL (SELECT COALESCE(l0.live, 0) AS live) AS l
LEFT JOIN (
    SELECT sync_run_id,
           count(*) AS transitions,
           count(*) FILTER (WHERE from_status IS NULL) AS inserted,
           count(*) FILTER (WHERE from_status IS NOT NULL AND to_status <> 'deleted') AS updated,
           count(*) FILTER (WHERE to_status = 'deleted') AS deleted
    FROM snapshot_status_history
    WHERE sync_run_id IS NOT NULL
    GROUP BY sync_run_id
) AS h ON h.sync_run_id = run_id(pr.p, t.t)
ORDER BY 1;
SELECT setval(pg_get_serial_sequence('sync_runs', 'id'),
              greatest((SELECT max(id) FROM sync_runs), 1));
"""

# The stored row of every snapshot, as of tick 0. `last` is the newest tick whose listing saw
# it; `changed` the newest tick that changed its status.
RECORDS = """
SELECT pr.project_id,
       s.snapshot_id AS snapshot_id,
       v.snapshot_name, v.desktop_id, v.desktop_name, v.desktop_sid, v.desktop_pool_id,
       s.system_disk AS is_system_disk, v.status, v.process, v.description,
       s.ct AS create_time, v.create_type, v.last_restore_time, v.restore_fail_reason,
       jsonb_build_object(
           'snapshot_id', s.snapshot_id,
           'snapshot_name', v.snapshot_name,
           'desktop_id', v.desktop_id,
           'desktop_name', v.desktop_name,
           'desktop_sid', v.desktop_sid,
           'is_system_disk', s.system_disk,
           'status', v.status,
           'process', v.process,
           'create_time', api_time(s.ct),
           'create_type', v.create_type
       ) || jsonb_strip_nulls(jsonb_build_object(
           'desktop_pool_id', v.desktop_pool_id,
           'description', v.description,
           'last_restore_time', api_time(v.last_restore_time),
           'restore_fail_reason', v.restore_fail_reason
       )) AS raw,
       run_at(s.p, s.t_first) + interval '1.5 s' AS first_seen_at,
       CASE WHEN s.t_gone <= 0 THEN run_at(s.p, s.t_gone - 1)
            ELSE run_at(s.p, v.changed) + interval '1.5 s' END AS last_seen_at,
       run_at(s.p, v.changed) + interval '1.5 s' AS last_changed_at,
       CASE WHEN v.deleted THEN run_at(s.p, s.t_deleted) + interval '3 s' END AS deleted_at,
       CASE WHEN v.deleted THEN {misses} WHEN s.t_gone <= 0 THEN 1 - s.t_gone ELSE 0 END
           AS missed_listings,
       run_id(s.p, CASE WHEN v.deleted THEN s.t_deleted ELSE v.changed END) AS last_run_id,
       CASE WHEN v.status IN ('creating', 'restoring') AND NOT v.deleted
            THEN run_at(s.p, 0) + interval '1.5 s'
            ELSE run_at(s.p, v.changed) + interval '1.5 s' END AS status_seen_at
FROM bench_snap AS s
JOIN bench_project AS pr ON pr.p = s.p
CROSS JOIN LATERAL (SELECT least(0, s.t_gone - 1) AS last, s.t_deleted <= 0 AS deleted) AS w
CROSS JOIN LATERAL (
    SELECT n.*, m.*
    FROM (SELECT (ARRAY['xzx', 'dev', 'ops', 'fin', 'hr', 'lab', 'AA', 'sales', 'qa',
                        '研发-', '财务-'])[s.d % 11 + 1] || lpad(s.d::text, 4, '0')
                     AS desktop_name) AS n
    CROSS JOIN LATERAL (
        SELECT CASE WHEN s.manual
                    THEN 'sys' || to_char(s.ct AT TIME ZONE 'UTC', 'MMDD') || '_' || n.desktop_name
                    ELSE 'AUTOCREATED_' || n.desktop_name END
                   || '_' || (extract(epoch FROM s.ct) * 1000)::bigint AS snapshot_name,
               bench_gen.uuid_of('d{seed}:' || s.p || ':' || s.d) AS desktop_id,
               bench_gen.uuid_of('i{seed}:' || s.p || ':' || s.d) AS desktop_sid,
               CASE WHEN s.d % 2 = 0
                    THEN bench_gen.uuid_of('o{seed}:' || s.p || ':' || s.d % 4) END
                   AS desktop_pool_id,
               {status_last} AS status,
               CASE WHEN {status_last} IN ('creating', 'restoring') THEN s.progress END
                   AS process,
               CASE WHEN s.manual THEN (ARRAY[NULL, 'manual backup', 'before patch'])
                                           [s.key % 3 + 1]
                    WHEN s.key % 2 = 0 THEN 'Created by the scheduled snapshot policy.' END
                   AS description,
               CASE WHEN s.manual THEN 'MANUALLY' ELSE 'AUTO' END AS create_type,
               CASE WHEN s.t_restore <= w.last
                    THEN date_trunc('second', run_at(s.p, s.t_restore)
                                    - make_interval(secs => r(s.key, 13) * 290)) END
                   AS last_restore_time,
               CASE WHEN s.restore_fails AND s.t_restored <= w.last
                    THEN (ARRAY[{reasons}])[s.key % {reason_count} + 1] END
                   AS restore_fail_reason,
               greatest(s.t_first,
                        CASE WHEN s.t_end <= w.last THEN s.t_end END,
                        CASE WHEN s.t_restore <= w.last THEN s.t_restore END,
                        CASE WHEN s.t_restored <= w.last THEN s.t_restored END) AS changed,
               w.deleted
    ) AS m
) AS v
"""

RECORD_COLUMNS = (
    "project_id, snapshot_id, snapshot_name, desktop_id, desktop_name, desktop_sid, "
    "desktop_pool_id, is_system_disk, status, process, description, create_time, create_type, "
    "last_restore_time, restore_fail_reason, raw, first_seen_at, last_seen_at, last_changed_at, "
    "deleted_at, missed_listings, last_run_id, status_seen_at"
)

INSERT_PROJECTS = """
INSERT INTO projects (project_id, region, last_listing_at, last_listing_run_id, api_total_count,
                      updated_at)
SELECT pr.project_id, pr.region, run_at(pr.p, c.t), run_id(pr.p, c.t), COALESCE(l.live, 0),
       run_at(pr.p, c.t) + interval '5 s'
FROM bench_project AS pr
CROSS JOIN LATERAL (SELECT CASE WHEN run_failed(pr.p, 0) THEN -1 ELSE 0 END AS t) AS c
LEFT JOIN (SELECT project_id, count(*) AS live FROM bench_live GROUP BY project_id) AS l
    ON l.project_id = pr.project_id
ORDER BY pr.project_id;
"""


def _sql(template: str, size: Size, t0: datetime, **extra: str) -> str:
    reasons = ", ".join("'" + r.replace("'", "''") + "'" for r in RESTORE_FAIL_REASONS)
    values: dict[str, Any] = {
        "seed": size.seed,
        "projects": size.projects,
        "desktops": size.desktops,
        "days": size.days,
        "run_ticks": size.run_ticks,
        "misses": size.misses,
        "retention_days": size.retention_days,
        "tick": TICK,
        "t0": t0.isoformat(),
        "reasons": reasons,
        "reason_count": len(RESTORE_FAIL_REASONS),
        "last_status": STATUS_AT.format(t="(s.t_gone - 1)"),
        "status_last": STATUS_AT.format(t="w.last"),
    }
    values.update(extra)
    return template.format(**values)


def with_database(url: str, database: str) -> str:
    parsed = make_url(url)
    return parsed.set(database=database).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(
        url.replace("+asyncpg", "", 1), server_settings={"TimeZone": "UTC"}
    )
    try:
        yield conn
    finally:
        await conn.close()


async def migrate(url: str, revision: str) -> None:
    engine = db.make_engine(url, pool_size=1)
    try:
        await db.migrate(engine, revision)
    finally:
        await engine.dispose()


@dataclass
class Step:
    name: str
    seconds: float


async def _step(conn: asyncpg.Connection, steps: list[Step], name: str, sql: str) -> None:
    started = time.perf_counter()
    await conn.execute(sql)
    steps.append(Step(name, time.perf_counter() - started))
    print(f"  {name}: {steps[-1].seconds:.1f} s", flush=True)


async def _detachable(conn: asyncpg.Connection) -> tuple[list[str], list[str]]:
    """(drop, create) statements for the loaded tables' secondary indexes and foreign keys."""
    indexes = await conn.fetch(
        """
        SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
        FROM pg_index AS i
        WHERE i.indrelid = ANY($1::text[]::regclass[])
          AND NOT EXISTS (SELECT FROM pg_constraint AS c WHERE c.conindid = i.indexrelid)
        ORDER BY 1
        """,
        list(TABLES),
    )
    fkeys = await conn.fetch(
        """
        SELECT conrelid::regclass::text AS tab, conname, pg_get_constraintdef(oid) AS def
        FROM pg_constraint
        WHERE contype = 'f'
          AND (conrelid = ANY($1::text[]::regclass[]) OR confrelid = ANY($1::text[]::regclass[]))
        ORDER BY 1, 2
        """,
        list(TABLES),
    )
    drop = [f'ALTER TABLE {f["tab"]} DROP CONSTRAINT "{f["conname"]}"' for f in fkeys]
    drop += [f"DROP INDEX {i['name']}" for i in indexes]
    create = [i["def"] for i in indexes]
    create += [f'ALTER TABLE {f["tab"]} ADD CONSTRAINT "{f["conname"]}" {f["def"]}' for f in fkeys]
    return drop, create


def _api_order(raw: dict[str, Any]) -> dict[str, Any]:
    """The item with its keys in the order the API sends them (what the sync hashes)."""
    item = {key: raw[key] for key in API_FIELDS if key in raw}
    item.update((key, value) for key, value in raw.items() if key not in item)
    return item


def backfill_statements() -> list[tuple[str, str]]:
    """Statements a migration's module offers to derive its columns: (name, sql)."""
    found: list[tuple[str, str]] = []
    for module_name, attribute in BACKFILL_HOOKS:
        module = importlib.import_module(module_name)
        statements = getattr(module, attribute, None)
        if statements:
            found += [(f"{module_name}.{attribute}[{n}]", str(s)) for n, s in enumerate(statements)]
    return found


async def generate(
    url: str, size: Size, *, revision: str = "head", end: datetime | None = None
) -> list[Step]:
    """Migrate the database and fill it; it must hold no snapshots yet."""
    steps: list[Step] = []
    started = time.perf_counter()
    await migrate(url, revision)
    steps.append(Step("migrate", time.perf_counter() - started))
    async with connect(url) as conn:
        if await conn.fetchval("SELECT EXISTS (SELECT FROM snapshot_records)"):
            raise SystemExit(f"{conn_name(url)} already holds snapshots: use --reuse or a new one")
        # The newest sync grid point at least 5 minutes ago: every tick is in the past.
        now = await conn.fetchval("SELECT now()")
        t0 = now.replace(second=0, microsecond=0) - timedelta(minutes=now.minute % 5 + 5)
        if end is not None:
            t0 = end
        print(
            f"generating {size.projects} projects x {size.desktops} desktops, {size.days} days, "
            f"{size.run_days:g} days of runs, seed {size.seed}; newest sync {t0:%Y-%m-%d %H:%M}",
            flush=True,
        )
        await conn.execute(
            "SET work_mem = '256MB'; SET maintenance_work_mem = '1GB'; "
            "SET synchronous_commit = off; SET search_path = public, bench_gen"
        )
        await conn.execute(f"SELECT setseed({(size.seed % 1000) / 1000})")
        async with conn.transaction():
            drop, create = await _detachable(conn)
            if drop:
                await _step(conn, steps, "drop secondary indexes and foreign keys", ";".join(drop))
            await _step(
                conn, steps, "helpers", _sql(FUNCTIONS, size, t0) + _sql(PROJECTS, size, t0)
            )
            await _step(conn, steps, "stage snapshots", _sql(STAGE_SNAPSHOTS, size, t0))
            await _step(conn, steps, "history", _sql(INSERT_HISTORY, size, t0))
            records = _sql(RECORDS, size, t0)
            await _step(
                conn,
                steps,
                "deleted snapshot_records",
                f"INSERT INTO snapshot_records ({RECORD_COLUMNS}, content_hash) "
                f"SELECT {RECORD_COLUMNS}, hashtextextended(raw::text, 0) FROM ({records}) AS q "
                "WHERE deleted_at IS NOT NULL ORDER BY project_id, snapshot_id",
            )
            await _step(
                conn,
                steps,
                "stage live snapshots",
                f"CREATE TEMP TABLE bench_live ON COMMIT DROP AS SELECT * FROM ({records}) AS q "
                "WHERE deleted_at IS NULL",
            )
            begun = time.perf_counter()
            rows = await conn.fetch("SELECT project_id, snapshot_id, raw::text FROM bench_live")
            digests = [
                (
                    row["project_id"],
                    row["snapshot_id"],
                    items.content_hash(items.item_json(_api_order(orjson.loads(row["raw"])))),
                )
                for row in rows
            ]
            await conn.execute(
                "CREATE TEMP TABLE bench_hash (project_id text, snapshot_id text, h bigint) "
                "ON COMMIT DROP"
            )
            await conn.copy_records_to_table("bench_hash", records=digests)
            steps.append(Step("content hashes of the live rows", time.perf_counter() - begun))
            print(f"  {steps[-1].name}: {steps[-1].seconds:.1f} s", flush=True)
            await _step(
                conn,
                steps,
                "live snapshot_records",
                f"INSERT INTO snapshot_records ({RECORD_COLUMNS}, content_hash) "
                f"SELECT {', '.join('l.' + c.strip() for c in RECORD_COLUMNS.split(','))}, h.h "
                "FROM bench_live AS l JOIN bench_hash AS h USING (project_id, snapshot_id) "
                "ORDER BY l.project_id, l.snapshot_id",
            )
            await _step(conn, steps, "sync_runs", _sql(INSERT_RUNS, size, t0))
            await _step(conn, steps, "projects", _sql(INSERT_PROJECTS, size, t0))
            for column, name, statement in (
                ("next_id", "close history rows (0004)", CLOSE_HISTORY),
                ("create_time", "first sightings' create_time (0005)", CREATION_STARTS),
            ):
                # What the sync writes with each row at that revision (app/store.py).
                if await conn.fetchval(HAS_HISTORY_COLUMN, column):
                    await _step(conn, steps, name, statement)
            for name, statement in backfill_statements():
                await _step(conn, steps, f"backfill {name}", statement)
            await _step(conn, steps, "rebuild indexes and foreign keys", ";".join(create))
            await conn.execute("DROP SCHEMA bench_gen CASCADE")
        begun = time.perf_counter()
        await conn.execute("VACUUM (ANALYZE) " + ", ".join(TABLES))
        steps.append(Step("vacuum analyze", time.perf_counter() - begun))
        print(f"  {steps[-1].name}: {steps[-1].seconds:.1f} s", flush=True)
    steps.append(Step("total", time.perf_counter() - started))
    print(f"  generated in {steps[-1].seconds:.0f} s", flush=True)
    return steps


def conn_name(url: str) -> str:
    return str(make_url(url).database)


# -- the queries -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    name: str
    sql: str


def doc_queries(text: str) -> list[Query]:
    """Every ```sql block of docs/reporting.md that reads (SELECT/WITH), named by its heading."""
    found: list[Query] = []
    heading = "docs/reporting.md"
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        line = lines[n]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.strip() == "```sql":
            end = n + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            sql = "\n".join(lines[n + 1 : end]).strip().rstrip(";").strip()
            if re.match(r"(?is)^(--[^\n]*\n\s*)*(SELECT|WITH)\b", sql):
                name = f"doc: {heading}"
                taken = sum(1 for q in found if q.name.startswith(name))
                found.append(Query(name if not taken else f"{name} ({taken + 1})", sql))
            n = end
        n += 1
    return found


def _panels(panels: Iterable[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


@dataclass(frozen=True)
class Panel:
    title: str
    sql: str

    @property
    def time_dependent(self) -> bool:
        return "$__" in self.sql


def dashboard_panels(dashboard: dict[str, Any]) -> list[Panel]:
    """The SQL targets of the dashboard's PostgreSQL panels (Prometheus ones are not SQL)."""
    found: list[Panel] = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            sql = target.get("rawSql")
            if sql and "postgres" in str((target.get("datasource") or {}).get("type", "")):
                title = panel.get("title", "?")
                if len(panel.get("targets", [])) > 1:
                    title += f" ({target.get('refId', '?')})"
                found.append(Panel(title, sql))
    return found


def variable_queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(f"variable: ${v['name']}", str(v.get("query") or v.get("definition")))
        for v in dashboard.get("templating", {}).get("list", [])
        if v.get("type") == "query"
    ]


INTERVALS = {"24h": ("1m", 60_000), "30d": ("30m", 1_800_000)}


def substitute(
    sql: str, *, start: datetime, end: datetime, range_name: str, variables: dict[str, list[str]]
) -> str:
    """Grafana's PostgreSQL macros and template variables, rendered as Grafana renders them."""

    def ts(at: datetime) -> str:
        return "'" + at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") + "'"

    interval, interval_ms = INTERVALS.get(range_name, ("1m", 60_000))
    seconds = interval_ms // 1000
    sql = re.sub(
        r"\$__timeFilter\(([^)]*)\)", lambda m: f"{m[1]} BETWEEN {ts(start)} AND {ts(end)}", sql
    )
    sql = re.sub(r"\$__timeFrom\(\)", ts(start), sql)
    sql = re.sub(r"\$__timeTo\(\)", ts(end), sql)
    sql = re.sub(
        r"\$__unixEpochFilter\(([^)]*)\)",
        lambda m: f"{m[1]} >= {int(start.timestamp())} AND {m[1]} <= {int(end.timestamp())}",
        sql,
    )
    sql = re.sub(
        r"\$__timeGroup(Alias)?\(([^,)]*)\s*,\s*[^)]*\)",
        lambda m: (
            f"to_timestamp(floor(extract(epoch FROM {m[2]}) / {seconds}) * {seconds})"
            + (" AS time" if m[1] else "")
        ),
        sql,
    )
    sql = sql.replace("$__interval_ms", str(interval_ms)).replace(
        "${__interval_ms}", str(interval_ms)
    )
    sql = sql.replace("$__interval", f"'{interval}'").replace("${__interval}", f"'{interval}'")

    for name, values in variables.items():
        quoted = ",".join("'" + v.replace("'", "''") + "'" for v in values)
        plain = ",".join(values)
        sql = re.sub(r"\$\{" + name + r":(sqlstring|singlequote)\}", quoted, sql)
        sql = re.sub(r"\$\{" + name + r":(csv|raw)\}", plain, sql)
        sql = re.sub(r"\$\{" + name + r"\}|\[\[" + name + r"\]\]|\$" + name + r"\b", quoted, sql)
    leftover = re.search(r"\$__\w+|\$\{[^}]*\}|\[\[\w+\]\]", sql)
    if leftover:
        raise ValueError(f"unknown Grafana macro or variable {leftover[0]!r} in {sql[:80]!r}")
    return sql


# -- timing ------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    median_ms: float | None = None
    best_ms: float | None = None
    rows: int | None = None
    node: str = ""
    error: str | None = None
    runs: list[float] = field(default_factory=list)


def costliest(plan: dict[str, Any], analyzed: bool) -> str:
    """The node with the highest exclusive time (ANALYZE) or exclusive cost (plain EXPLAIN).

    Exclusive: the node's total less its children's (actual time x loops; estimated total cost).
    """
    best: tuple[float, dict[str, Any]] | None = None

    def total(node: dict[str, Any]) -> float:
        if analyzed:
            return float(node.get("Actual Total Time", 0)) * float(node.get("Actual Loops", 1))
        return float(node.get("Total Cost", 0))

    def walk(node: dict[str, Any]) -> None:
        nonlocal best
        children = node.get("Plans", [])
        own = total(node) - sum(total(c) for c in children)
        if best is None or own > best[0]:
            best = (own, node)
        for child in children:
            walk(child)

    walk(plan["Plan"])
    assert best is not None
    own, node = best
    what = node["Node Type"]
    target = node.get("Index Name") or node.get("Relation Name") or node.get("CTE Name")
    if target:
        what += f" on {target}"
    if analyzed:
        return f"{what} ({own:,.1f} ms excl.)"
    return f"{what} (cost {own:,.0f} excl.)"


async def time_query(
    conn: asyncpg.Connection,
    name: str,
    sql: str,
    *,
    repeats: int,
    timeout_s: float,
    analyze_limit_s: float,
) -> Result:
    result = Result(name)
    await conn.execute(f"SET statement_timeout = {int(timeout_s * 1000)}")
    try:
        started = time.perf_counter()
        rows = await conn.fetch(sql)  # warm-up
        warm = time.perf_counter() - started
        result.rows = len(rows)
        # Slow queries get one measured run: the warm-up already read what they read.
        for _ in range(repeats if warm < 2 else 1):
            started = time.perf_counter()
            await conn.fetch(sql)
            result.runs.append((time.perf_counter() - started) * 1000)
    except asyncpg.QueryCanceledError:
        result.error = f"timeout ({timeout_s:g} s)"
        return result
    except asyncpg.PostgresError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        return result
    result.median_ms = statistics.median(result.runs)
    result.best_ms = min(result.runs)
    analyzed = result.median_ms / 1000 <= analyze_limit_s
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) " if analyzed else "EXPLAIN (FORMAT JSON) "
    try:
        plan = json.loads(await conn.fetchval(explain + sql))[0]
        result.node = costliest(plan, analyzed)
    except asyncpg.QueryCanceledError:
        result.node = "(EXPLAIN ANALYZE timed out)"
    finally:
        await conn.execute("RESET statement_timeout")
    return result


def time_status(url: str, *, repeats: int, timeout_s: float) -> Result:
    """`snapsync status` (its text report, as piped) as a child process, warm."""
    result = Result("cli: snapsync status")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPSYNC_")}
    env["SNAPSYNC_DATABASE_URL"] = url
    with tempfile.TemporaryDirectory() as cwd:  # no .env of the caller's
        for n in range(repeats + 1):
            started = time.perf_counter()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "app", "status"],
                    env=env,
                    cwd=cwd,
                    capture_output=True,
                    text=True,
                    timeout=timeout_s,
                )
            except subprocess.TimeoutExpired:
                result.error = f"timeout ({timeout_s:g} s)"
                return result
            if done.returncode != 0:
                result.error = f"exit {done.returncode}: {done.stderr.strip()[-200:]}"
                return result
            if n:
                result.runs.append((time.perf_counter() - started) * 1000)
            result.rows = len(done.stdout.splitlines())
    result.median_ms = statistics.median(result.runs)
    result.best_ms = min(result.runs)
    result.node = "(lines of output; a process incl. Python start)"
    return result


@dataclass(frozen=True)
class Options:
    repeats: int
    timeout_s: float
    analyze_limit_s: float


async def measure(url: str, options: Options) -> list[Result]:
    """Every query, all projects and one, 24 h and 30 d where the panel has a time range."""
    doc = doc_queries(DOC.read_text(encoding="utf-8"))
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels = dashboard_panels(dashboard)
    results: list[Result] = []

    async with connect(url) as conn:
        projects = [r[0] for r in await conn.fetch("SELECT project_id FROM projects ORDER BY 1")]
        if not projects:
            raise SystemExit(f"{conn_name(url)} has no projects: generate it first")
        end = await conn.fetchval("SELECT now()")
        jobs: list[Query] = list(doc) + variable_queries(dashboard)
        scopes = {"all": projects, "one": [projects[len(projects) // 2]]}
        for panel in panels:
            for scope, chosen in scopes.items():
                ranges = ("24h", "30d") if panel.time_dependent else ("any",)
                for range_name in ranges:
                    span = timedelta(days=30) if range_name == "30d" else timedelta(hours=24)
                    sql = substitute(
                        panel.sql,
                        start=end - span,
                        end=end,
                        range_name=range_name,
                        variables={"project": chosen},
                    )
                    jobs.append(Query(f"panel: {panel.title} [{range_name}, {scope}]", sql))
        for job in jobs:
            result = await time_query(
                conn,
                job.name,
                job.sql,
                repeats=options.repeats,
                timeout_s=options.timeout_s,
                analyze_limit_s=options.analyze_limit_s,
            )
            results.append(result)
            print(f"  {_row(result)}", flush=True)
    result = await asyncio.to_thread(
        time_status, url, repeats=options.repeats, timeout_s=options.timeout_s
    )
    results.append(result)
    print(f"  {_row(result)}", flush=True)
    return results


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _row(r: Result) -> str:
    if r.error:
        return f"{r.name}: {r.error}"
    return f"{r.name}: {_ms(r.median_ms)} ms (best {_ms(r.best_ms)}), {r.rows} rows, {r.node}"


def table(results: Sequence[Result], quarter: dict[str, Result] | None) -> str:
    head = ["query", "median ms", "best ms", "rows", "costliest node"]
    if quarter is not None:
        head += ["quarter ms", "growth"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [
            r.name.replace("|", "/"),
            r.error or _ms(r.median_ms),
            _ms(r.best_ms),
            "-" if r.rows is None else str(r.rows),
            r.node,
        ]
        if quarter is not None:
            q = quarter.get(r.name)
            cells.append("-" if q is None else (q.error or _ms(q.median_ms)))
            growth = "-"
            if q and q.median_ms and r.median_ms:
                growth = f"{r.median_ms / q.median_ms:.2f}x"
            cells.append(growth)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


async def sizes(url: str) -> dict[str, dict[str, float]]:
    """Rows, bytes (table + indexes + TOAST) and bytes per row of each loaded table."""
    found: dict[str, dict[str, float]] = {}
    async with connect(url) as conn:
        for name in TABLES:
            rows = await conn.fetchval(f"SELECT count(*) FROM {name}")
            total = await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", name)
            heap = await conn.fetchval("SELECT pg_table_size($1::regclass)", name)
            found[name] = {
                "rows": rows,
                "bytes": total,
                "table_bytes": heap,
                "index_bytes": total - heap,
                "bytes_per_row": total / rows if rows else 0.0,
            }
        found["database"] = {
            "bytes": await conn.fetchval("SELECT pg_database_size(current_database())")
        }
    return found


def size_table(found: dict[str, dict[str, float]]) -> str:
    lines = ["| table | rows | table MB | indexes MB | bytes per row |", "|---|---|---|---|---|"]
    for name in TABLES:
        s = found[name]
        lines.append(
            f"| {name} | {s['rows']:,.0f} | {s['table_bytes'] / 2**20:,.0f} | "
            f"{s['index_bytes'] / 2**20:,.0f} | {s['bytes_per_row']:,.0f} |"
        )
    lines.append(f"| (database) | | {found['database']['bytes'] / 2**20:,.0f} | | |")
    return "\n".join(lines)


async def ensure_database(server_url: str, name: str) -> bool:
    """Create the database when missing; True when it was created."""
    async with connect(with_database(server_url, "postgres")) as admin:
        if await admin.fetchval("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name):
            return False
        await admin.execute(f'CREATE DATABASE "{name}"')
        return True


async def drop_database(server_url: str, name: str) -> None:
    async with connect(with_database(server_url, "postgres")) as admin:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def filled(url: str) -> bool:
    async with connect(url) as conn:
        exists = await conn.fetchval("SELECT to_regclass('snapshot_records') IS NOT NULL")
        return bool(exists) and bool(
            await conn.fetchval("SELECT EXISTS (SELECT FROM snapshot_records)")
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    default = Size()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True, help="database to fill (and time)")
    parser.add_argument("--projects", type=int, default=default.projects)
    parser.add_argument("--desktops", type=int, default=default.desktops, help="per project")
    parser.add_argument("--days", type=int, default=default.days, help="days of snapshots/history")
    parser.add_argument(
        "--run-days", type=float, default=default.run_days, help="days of sync_runs"
    )
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument(
        "--size",
        choices=("default", "smoke"),
        default="default",
        help="smoke: 3 x 8 desktops, 16 days, 2 days of runs (CI)",
    )
    parser.add_argument("--quick", action="store_true", help="the same as --size smoke")
    parser.add_argument("--revision", default="head", help="migrate to this revision first")
    parser.add_argument(
        "--end",
        type=lambda v: datetime.fromisoformat(v).astimezone(UTC),
        help="the newest sync (ISO time; default: the 5-minute grid point before now); "
        "with --seed, the same rows byte for byte",
    )
    parser.add_argument("--generate-only", action="store_true", help="fill the database, exit")
    parser.add_argument(
        "--reuse", action="store_true", help="time the databases as they are if already filled"
    )
    parser.add_argument(
        "--quarter-database",
        help="database for the quarter history "
        "(default: DATABASE_q, created, and dropped at the end unless --keep)",
    )
    parser.add_argument("--keep", action="store_true", help="keep a quarter database made here")
    parser.add_argument("--skip-quarter", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs after the warm one")
    parser.add_argument("--timeout", type=float, default=120, help="statement_timeout, seconds")
    parser.add_argument(
        "--analyze-limit",
        type=float,
        default=10,
        help="queries slower than this (s) get EXPLAIN without ANALYZE",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.size = "smoke"
    return args


def size_of(args: argparse.Namespace) -> Size:
    if args.size == "smoke":
        return replace(SMOKE, seed=args.seed)
    return Size(
        projects=args.projects,
        desktops=args.desktops,
        days=args.days,
        run_days=args.run_days,
        seed=args.seed,
    )


async def fill(url: str, size: Size, args: argparse.Namespace) -> list[Step]:
    if args.reuse and await filled(url):
        print(f"{conn_name(url)}: already filled, reused", flush=True)
        return []
    return await generate(url, size, revision=args.revision, end=args.end)


async def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    size = size_of(args)
    url = args.database
    report: dict[str, Any] = {"size": asdict(size), "database": conn_name(url)}
    print(f"# {conn_name(url)}", flush=True)
    report["generation"] = [asdict(s) for s in await fill(url, size, args)]
    if args.generate_only:
        return 0
    options = Options(args.repeats, args.timeout, args.analyze_limit)
    found = await sizes(url)
    report["sizes"] = found
    print(size_table(found), flush=True)
    print(f"timing {conn_name(url)}", flush=True)
    full = await measure(url, options)
    quarter: dict[str, Result] | None = None
    if not args.skip_quarter:
        made = False
        quarter_url = args.quarter_database or with_database(url, f"{conn_name(url)}_q")
        if not args.quarter_database:
            made = await ensure_database(url, conn_name(quarter_url))
        try:
            print(f"# {conn_name(quarter_url)} (a quarter of the history)", flush=True)
            report["quarter_generation"] = [
                asdict(s) for s in await fill(quarter_url, size.quarter(), args)
            ]
            report["quarter_sizes"] = await sizes(quarter_url)
            print(f"timing {conn_name(quarter_url)}", flush=True)
            quarter = {r.name: r for r in await measure(quarter_url, options)}
        finally:
            if made and not args.keep:
                await drop_database(url, conn_name(quarter_url))
    print()
    print(table(full, quarter))
    report["results"] = [asdict(r) for r in full]
    if quarter is not None:
        report["quarter_results"] = [asdict(r) for r in quarter.values()]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
