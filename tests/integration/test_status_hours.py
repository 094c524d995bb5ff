"""The hourly rollup of the status history (0008): what the sync, the hot lane and the prune
keep in snapshot_status_hours and snapshot_status_change_hours equals a recount from the
history, and the migration's backfill writes that recount (again and again)."""

from __future__ import annotations

import runpy
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from app import db, rollup

from ..conftest import run_cli
from .simulated import serve
from .test_daemon import env_for
from .test_retention import KEEP, age, populate
from .test_rollup_queries import assert_same_answers, edges

HOURS = (
    "SELECT project_id, hour, status, entered, exited, periods, min_periods, min_seconds, "
    "max_seconds FROM snapshot_status_hours"
)
CHANGES = (
    "SELECT project_id, hour, from_status, to_status, changes FROM snapshot_status_change_hours"
)


async def recount_differences(sql: asyncpg.Connection) -> dict[str, object]:
    """What the rollup holds that a recount from the history does not, and the reverse."""
    found = {}
    for name, stored, recount in (
        ("hours", HOURS, rollup.RECOUNT_HOURS),
        ("changes", CHANGES, rollup.RECOUNT_CHANGES),
    ):
        have = {tuple(r) for r in await sql.fetch(stored)}
        want = {tuple(r) for r in await sql.fetch(recount)}
        found[name] = (sorted(have - want), sorted(want - have))
    return found


async def assert_rollup_recounts(sql: asyncpg.Connection) -> None:
    """The rollup equals the recount, and it has rows (the check can fail)."""
    assert await sql.fetchval("SELECT count(*) FROM snapshot_status_hours") > 0
    assert await sql.fetchval("SELECT count(*) FROM snapshot_status_change_hours") > 0
    assert await recount_differences(sql) == {"hours": ([], []), "changes": ([], [])}


async def test_the_sync_keeps_the_rollup_through_churn_and_the_prune(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=40, seed=5) as sim:
        env = {**env_for(sim, database_url), "SNAPSYNC_DELETE_AFTER_MISSES": "1"}
        plan = await populate(sim, database_url, workdir)
        await assert_rollup_recounts(sql)
        # Churn: creations, restores, a deletion and a reappearance of a deleted snapshot.
        first = plan["first"]
        pop = sim.population
        snaps = [s for s in pop.snapshots(first) if s.snapshot_id not in plan["deleted"]]
        pop.set_fields(first, snaps[0].snapshot_id, {"status": "restoring", "process": 10})
        pop.set_fields(first, snaps[1].snapshot_id, {"status": "creating", "process": 5})
        pop.delete_snapshot(first, snaps[2].snapshot_id)
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
        pop.set_fields(first, snaps[0].snapshot_id, {"status": "restore_success"})
        pop.set_fields(first, snaps[1].snapshot_id, {"status": "create_success"})
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
        await assert_rollup_recounts(sql)
        reappeared = await sql.fetchval(
            "SELECT count(*) FROM snapshot_status_history WHERE to_status = 'deleted'"
        )
        assert reappeared >= 4
        # Spread the history over several hours, as days of syncs would (the recount follows);
        # a snapshot's rows move together, so its periods keep their order.
        await sql.execute(
            "UPDATE snapshot_status_history SET observed_at = observed_at - make_interval("
            "hours => abs(hashtext(snapshot_id)) % 5), previous_observed_at = "
            "previous_observed_at - make_interval(hours => abs(hashtext(snapshot_id)) % 5)"
        )
        await sql.execute(
            "UPDATE snapshot_status_history AS c SET left_by = n.observed_at, "
            "left_after = n.previous_observed_at FROM snapshot_status_history AS n "
            "WHERE n.id = c.next_id"
        )
        await sql.execute("TRUNCATE snapshot_status_hours, snapshot_status_change_hours")
        for statement in rollup.BACKFILL_STATEMENTS:
            await sql.execute(statement)
        await assert_rollup_recounts(sql)
        before = await sql.fetchval("SELECT count(*) FROM snapshot_status_hours")
        await age(sql, plan["first"], plan["deleted"])
        pruned = await run_cli("prune", env={**env, **KEEP}, cwd=workdir)
        assert pruned.code == 0, pruned.output
        assert "removed 2 snapshot(s)" in pruned.stdout
        await assert_rollup_recounts(sql)
        # The rewritten queries still answer as the old ones over the history left.
        nows, ranges = edges(datetime.now(UTC))
        assert await assert_same_answers(sql, nows=nows, ranges=ranges, projects=sim.project_ids)
        # Rows the prune left at zero went; none is left at zero.
        assert await sql.fetchval("SELECT count(*) FROM snapshot_status_hours") <= before
        assert not await sql.fetchval(
            "SELECT count(*) FROM snapshot_status_hours WHERE entered = 0 AND exited = 0"
        )
        assert not await sql.fetchval(
            "SELECT count(*) FROM snapshot_status_change_hours WHERE changes = 0"
        )


async def test_the_migration_backfills_the_recount_and_runs_again(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=30, seed=9) as sim:
        await populate(sim, database_url, workdir)
    engine = db.make_engine(database_url, pool_size=1)
    try:
        await db.downgrade(engine, "0007")
        # History over many hours and days, in several batches of the backfill.
        await sql.execute(
            "UPDATE snapshot_status_history SET observed_at = observed_at - make_interval("
            "hours => (id * 7 % 80)::int)"
        )
        await sql.execute(
            "UPDATE snapshot_status_history AS c SET left_by = n.observed_at, "
            "left_after = n.previous_observed_at FROM snapshot_status_history AS n "
            "WHERE n.id = c.next_id"
        )
        await db.migrate(engine, "head")
        await assert_rollup_recounts(sql)
        stored = sorted(tuple(r) for r in await sql.fetch(HOURS))
        # Again from 0007 (the tables go and come back), and the backfill over what is there.
        await db.downgrade(engine, "0007")
        await db.migrate(engine, "head")
        assert sorted(tuple(r) for r in await sql.fetch(HOURS)) == stored
        await assert_rollup_recounts(sql)
        # The backfill run over a filled (and here wrong) rollup overwrites it, never adds.
        await sql.execute("UPDATE snapshot_status_hours SET entered = entered + 5")
        await sql.execute("UPDATE snapshot_status_change_hours SET changes = changes + 5")
        backfill = runpy.run_path(str(db.VERSIONS_DIR / "0008_status_hours.py"))["backfill"]
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.run_sync(backfill, 2)
        await assert_rollup_recounts(sql)
    finally:
        await engine.dispose()
