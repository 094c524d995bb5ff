"""Desktop coverage kept per desktop (migration 0006): the rows of snapshot_desktops that the
page upsert, the deletion update and retention's prune recompute equal what the snapshot rows
give, and desktop_snapshot_coverage answers what 0004's view (lookups into snapshot_records)
answers: on a scripted simulator run, on generated rows full of ties, misses and NULLs, after a
prune, and across the migration (backfilled in batches, downgraded)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from app import coverage, db, retention, store

from ..conftest import _asyncpg_dsn
from .simulated import serve
from .test_history_closing import migration_module
from .test_reliability import in_process, start_sync_process
from .test_reporting import Scenario, scenario  # noqa: F401 - the scripted simulator run

OLD_VIEW_PREFIX = "CREATE OR REPLACE VIEW desktop_snapshot_coverage AS"
ANSWER = (
    "project_id, desktop_id, desktop_name, live_snapshots, last_seen_at, "
    "system_disk_snapshot_id, system_disk_created_at, system_disk_failed_since, "
    "data_disk_snapshot_id, data_disk_created_at, data_disk_failed_since"
)


def old_view_query() -> str:
    """0004's desktop_snapshot_coverage as a query over the current tables."""
    view: str = migration_module("0004_closed_history.py").DESKTOP_SNAPSHOT_COVERAGE
    body = view.strip()
    assert body.startswith(OLD_VIEW_PREFIX)
    return body[len(OLD_VIEW_PREFIX) :]


async def answers(conn: asyncpg.Connection, source: str) -> list[tuple[object, ...]]:
    rows = await conn.fetch(f"SELECT {ANSWER} FROM ({source}) AS v ORDER BY 1, 2")
    return [tuple(r) for r in rows]


async def assert_coverage_is_exact(conn: asyncpg.Connection) -> int:
    """The view equals 0004's; the kept rows equal the set-based fill; returns the rows."""
    new = await answers(conn, "SELECT * FROM desktop_snapshot_coverage")
    assert new == await answers(conn, old_view_query())
    kept = [tuple(r) for r in await conn.fetch("SELECT * FROM snapshot_desktops ORDER BY 1, 2")]
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(
            "UPDATE snapshot_desktops SET live_snapshots = -1, gone_snapshot_id = 'x', "
            "system_disk_failed_since = -1, listed_first_id = 'x'"
        )
        await conn.execute(coverage.FILL_COVERAGE)
        filled = [
            tuple(r) for r in await conn.fetch("SELECT * FROM snapshot_desktops ORDER BY 1, 2")
        ]
    finally:
        await tx.rollback()
    assert kept == filled
    return len(new)


async def test_the_sync_keeps_each_desktops_coverage(scenario: Scenario) -> None:  # noqa: F811
    conn = await asyncpg.connect(**_asyncpg_dsn(scenario.url))  # type: ignore[arg-type]
    try:
        assert await assert_coverage_is_exact(conn) > 10
        # The script's failed creation counts on its desktop, its deletions left their desktops.
        failed = await conn.fetchval(
            "SELECT sum(system_disk_failed_since) FROM snapshot_desktops WHERE project_id = $1",
            scenario.a,
        )
        assert failed >= 1
        gone = await conn.fetchval(
            "SELECT count(*) FROM snapshot_desktops AS k JOIN snapshot_records AS r "
            "ON r.project_id = k.project_id AND r.snapshot_id = k.gone_snapshot_id "
            "WHERE r.snapshot_id = ANY($1::text[])",
            scenario.script["deleted"],
        )
        assert gone >= 1
    finally:
        await conn.close()


# Generated rows at `now()`: 3 projects (one never listed completely), desktops of 1-9 snapshots
# on a coarse time grid (ties of last_seen_at and create_time), every status, missed and deleted
# rows, disks true/false/NULL, NULL create_time and names, and one snapshot without a desktop.
POPULATE = """
INSERT INTO projects (project_id, region, last_listing_at)
VALUES ('p1', 'r', now() - interval '30 minutes'), ('p2', 'r', NULL),
       ('p3', 'r', now() - interval '3 hours');
INSERT INTO snapshot_records (project_id, snapshot_id, desktop_id, desktop_name, status, raw,
                              content_hash, first_seen_at, last_seen_at, last_changed_at,
                              deleted_at, missed_listings, create_time, is_system_disk)
SELECT 'p' || (1 + s % 3), 's' || lpad(s::text, 4, '0'),
       CASE WHEN s = 17 THEN NULL ELSE 'd' || (s % 3) || '-' || (s * 7 % 23) END,
       CASE WHEN s % 11 = 0 THEN NULL ELSE 'name-' || (s % 5) END,
       (ARRAY['creating', 'create_success', 'create_failed', 'restoring', 'restore_success',
              'restore_failed', 'create_success', 'create_failed'])[1 + s * 5 % 8],
       '{}', 0, now() - interval '1 day',
       now() - make_interval(hours => hashtext('seen' || s) & 3),
       now(),
       CASE WHEN s % 4 = 0 THEN now() - make_interval(days => 1 + s % 9) END,
       CASE WHEN s % 4 = 0 THEN 1 + s % 2 WHEN s % 6 = 1 THEN 1 ELSE 0 END,
       CASE WHEN s % 13 = 0 THEN NULL
            ELSE now() - make_interval(hours => hashtext('ct' || s) & 7) END,
       CASE s % 5 WHEN 0 THEN NULL WHEN 1 THEN false WHEN 2 THEN false ELSE true END
FROM generate_series(1, 420) AS s;
-- Desktops with nothing live: deleted 2-7 days ago, so a prune at 4 days empties some.
INSERT INTO snapshot_records (project_id, snapshot_id, desktop_id, desktop_name, status, raw,
                              content_hash, first_seen_at, last_seen_at, last_changed_at,
                              deleted_at, missed_listings, create_time, is_system_disk)
SELECT 'p1', 'g' || lpad(s::text, 2, '0'), 'gone-' || (s % 5), 'old-' || (s % 2),
       CASE WHEN s % 3 = 0 THEN 'create_failed' ELSE 'create_success' END, '{}', 0,
       now() - interval '20 days', now() - make_interval(days => 10 + s % 3), now(),
       now() - make_interval(days => CASE WHEN s % 5 = 4 THEN 5 ELSE 2 + s % 6 END), 1,
       now() - make_interval(days => 20 - s), s % 2 = 0
FROM generate_series(1, 16) AS s;
"""


@pytest.fixture
async def generated(empty_database_url: str) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    conn = await asyncpg.connect(**_asyncpg_dsn(empty_database_url))  # type: ignore[arg-type]
    try:
        yield empty_database_url, conn
    finally:
        await conn.close()


async def _refresh_all(url: str) -> int:
    engine = db.make_engine(url, pool_size=1)
    try:
        async with store.connect(engine, begin=True) as sa_conn:
            keys = (
                await sa_conn.exec_driver_sql(
                    "SELECT project_id, desktop_id FROM snapshot_desktops"
                )
            ).all()
            return await coverage.refresh(sa_conn, [(p, d) for p, d in keys])
    finally:
        await engine.dispose()


async def test_refresh_and_view_match_the_lookups_on_ties_misses_and_nulls(
    generated: tuple[str, asyncpg.Connection],
) -> None:
    url, conn = generated
    engine = db.make_engine(url, pool_size=1)
    try:
        await db.migrate(engine)
    finally:
        await engine.dispose()
    await conn.execute(POPULATE)
    await conn.execute(coverage.FILL_DESKTOPS)
    desktops = await conn.fetchval("SELECT count(*) FROM snapshot_desktops")
    assert await _refresh_all(url) == desktops > 50
    rows = await assert_coverage_is_exact(conn)
    assert rows == desktops
    # What the data holds: ties broken by id, missed live rows, desktops with nothing live.
    assert await conn.fetchval(
        "SELECT count(*) FROM snapshot_desktops WHERE missed_last_seen_at IS NOT NULL"
    )
    assert await conn.fetchval("SELECT count(*) FROM snapshot_desktops WHERE live_snapshots = 0")
    assert await conn.fetchval(
        "SELECT count(*) FROM snapshot_desktops WHERE listed_first_id <> listed_newest_id"
    )

    # The listing time moves without any snapshot row changing: the view follows it alone.
    for listing in ("now() + interval '1 hour'", "now() - interval '10 hours'", "NULL"):
        await conn.execute(f"UPDATE projects SET last_listing_at = {listing}")
        await assert_coverage_is_exact(conn)

    # Retention removes snapshots deleted long ago and recomputes their desktops in the batch.
    before = await conn.fetchval("SELECT count(*) FROM snapshot_records")
    engine = db.make_engine(url, pool_size=1)
    try:
        outcome = await retention.prune(
            engine,
            retention.Policy(runs_days=None, deleted_days=4, batch_size=7, pause=0),
            refresh=coverage.refresh,
            now=datetime.now(UTC) + timedelta(minutes=1),
        )
    finally:
        await engine.dispose()
    assert 0 < outcome.snapshots < before
    assert await conn.fetchval("SELECT count(*) FROM snapshot_records") == before - (
        outcome.snapshots
    )
    await assert_coverage_is_exact(conn)
    # A desktop whose every row went keeps its (empty) row, which the view skips.
    emptied = await conn.fetchval(
        "SELECT count(*) FROM snapshot_desktops WHERE live_snapshots = 0 "
        "AND gone_snapshot_id IS NULL"
    )
    assert emptied == 2  # gone-0 and gone-4


async def test_migration_backfills_the_coverage_in_batches_and_downgrades(
    generated: tuple[str, asyncpg.Connection],
) -> None:
    url, conn = generated
    engine = db.make_engine(url, pool_size=1)
    try:
        await db.migrate(engine, "0005")
        await conn.execute(POPULATE)
        await conn.execute(migration_module("0004_closed_history.py").DESKTOPS)
        at_0005 = await answers(conn, "SELECT * FROM desktop_snapshot_coverage")
        assert len(at_0005) > 50
        await db.migrate(engine)
        await assert_coverage_is_exact(conn)
        assert await answers(conn, "SELECT * FROM desktop_snapshot_coverage") == at_0005

        # Again from scratch, seven desktops a batch.
        await conn.execute(
            "UPDATE snapshot_desktops SET live_snapshots = 0, gone_snapshot_id = NULL, "
            "system_disk_snapshot_id = NULL, system_disk_failed_since = 0"
        )
        module = migration_module("0006_reporting_rollups.py")
        async with engine.connect() as sa_conn:
            autocommit = await sa_conn.execution_options(isolation_level="AUTOCOMMIT")
            assert await autocommit.run_sync(module.backfill, 7) == len(at_0005)
        await assert_coverage_is_exact(conn)

        await db.downgrade(engine, "0005")
        columns = {
            r["attname"]
            for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = "
                "'snapshot_desktops'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        }
        assert columns == {"project_id", "desktop_id"}
        assert await answers(conn, "SELECT * FROM desktop_snapshot_coverage") == at_0005
        await db.migrate(engine)
        assert await answers(conn, "SELECT * FROM desktop_snapshot_coverage") == at_0005
    finally:
        await engine.dispose()


# ---- a first sync fills its coverage once --------------------------------------------------


async def _wait_for_rows(sql: asyncpg.Connection, more_than: int) -> int:
    for _ in range(600):
        n = int(await sql.fetchval("SELECT count(*) FROM snapshot_records"))
        if n > more_than:
            return n
        await asyncio.sleep(0.02)
    raise AssertionError(f"no more than {more_than} rows were written")


async def test_a_first_sync_cut_short_still_covers_what_it_wrote(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    """A first sync defers the desktops' coverage to one fill at its end: a first sync that
    fails covers what it wrote on the way out; one that is killed leaves it to the next sync,
    which is a first sync again (no complete listing yet)."""
    async with serve(projects=1, snapshots=400, seed=7, latency=0.4) as sim:
        (project,) = sim.project_ids
        async with in_process(sim, database_url, page_size=50, max_retries=0) as normal:
            # 1. The API fails after some pages: the run fails, its rows are covered.
            task = asyncio.create_task(normal.sync_all())
            written = await _wait_for_rows(sql, 0)
            await sim.control("POST", "/_sim/faults", {"fault_500": 1.0})
            (failed,) = await task
            assert failed.status == "failed", failed.summary()
            assert await sql.fetchval(
                "SELECT last_listing_at IS NULL FROM projects WHERE project_id = $1", project
            )
            written = int(await sql.fetchval("SELECT count(*) FROM snapshot_records"))
            assert 0 < written < 400
            assert await assert_coverage_is_exact(sql) > 0
            await sim.control("POST", "/_sim/faults", {"fault_500": 0.0})

            # 2. Killed after writing more: those desktops wait for the next sync.
            env = {**sim.env(SNAPSYNC_PAGE_SIZE="50"), "SNAPSYNC_DATABASE_URL": database_url}
            proc = await start_sync_process(env, workdir)
            try:
                await _wait_for_rows(sql, written)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.communicate()
            with pytest.raises(AssertionError):
                await assert_coverage_is_exact(sql)

            # 3. The next sync completes the listing, and with it the coverage.
            (done,) = await normal.sync_all()
            assert done.status == "succeeded", done.summary()
            assert await assert_coverage_is_exact(sql) > 0
            assert int(await sql.fetchval("SELECT count(*) FROM snapshot_records")) == 400

            # 4. A resync is no first sync: each page's desktops are refreshed as it is written.
            sim.population.tick(3)
            (again,) = await normal.sync_all()
            assert again.status == "succeeded", again.summary()
            assert await assert_coverage_is_exact(sql) > 0
