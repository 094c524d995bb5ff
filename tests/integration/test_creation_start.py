"""A creation's start on its first-sighting row (migration 0005): the sync writes the snapshot's
create_time on the row that first sees it, the migration backfills it in batches, and the
creation figures of snapshot_operation_durations are those of 0004."""

from __future__ import annotations

import asyncpg

from app import db

from ..conftest import _asyncpg_dsn
from .test_history_closing import POPULATE_0003, _view_answers, migration_module
from .test_reporting import Scenario, scenario  # noqa: F401 - the scripted simulator run

CARRIED = """
SELECT h.id, h.from_status, h.create_time AS carried, r.create_time
FROM snapshot_status_history AS h
JOIN snapshot_records AS r USING (project_id, snapshot_id)
"""


async def assert_carried(conn: asyncpg.Connection) -> int:
    """First sightings carry the snapshot's create_time, no other row does; returns how many."""
    rows = await conn.fetch(CARRIED)
    assert rows
    for row in rows:
        want = row["create_time"] if row["from_status"] is None else None
        assert row["carried"] == want, dict(row)
    return sum(1 for r in rows if r["carried"] is not None)


async def test_the_sync_writes_the_creation_start_on_the_first_sighting(
    scenario: Scenario,  # noqa: F811
) -> None:
    conn = await asyncpg.connect(**_asyncpg_dsn(scenario.url))  # type: ignore[arg-type]
    try:
        carried = await assert_carried(conn)
        # Every snapshot the script ever showed has its first sighting, with a create_time.
        assert carried == len(scenario.oracle().ever) > 10
        # A creation starts at the create_time its snapshot row holds.
        started = await conn.fetch(
            "SELECT project_id, snapshot_id, started_by FROM snapshot_operation_durations "
            "WHERE operation = 'create' ORDER BY 1, 2"
        )
        records = await conn.fetch(
            "SELECT project_id, snapshot_id, create_time FROM snapshot_records ORDER BY 1, 2"
        )
        assert [tuple(r) for r in started] == [tuple(r) for r in records]
    finally:
        await conn.close()


async def test_migration_backfills_the_creation_start_in_batches_and_downgrades(
    empty_database_url: str,
) -> None:
    engine = db.make_engine(empty_database_url, pool_size=1)
    conn = await asyncpg.connect(**_asyncpg_dsn(empty_database_url))  # type: ignore[arg-type]
    try:
        await db.migrate(engine, "0003")
        await conn.execute(POPULATE_0003)
        await db.migrate(engine, "0004")
        before = await _view_answers(conn)
        await db.migrate(engine, "0005")
        carried = await assert_carried(conn)
        assert carried == 120  # one first sighting per snapshot
        assert await _view_answers(conn) == before

        # Again from scratch, 7 ids a batch; then again, nothing is left to do.
        await conn.execute("UPDATE snapshot_status_history SET create_time = NULL")
        module = migration_module("0005_creation_start.py")
        async with engine.connect() as sa_conn:
            autocommit = await sa_conn.execution_options(isolation_level="AUTOCOMMIT")
            assert await autocommit.run_sync(module.backfill, 7) == carried
            assert await autocommit.run_sync(module.backfill, 7) == 0
        assert await assert_carried(conn) == carried
        assert await _view_answers(conn) == before

        await db.downgrade(engine, "0004")
        columns = {
            r["attname"]
            for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = "
                "'snapshot_status_history'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        }
        assert "create_time" not in columns
        assert await _view_answers(conn) == before
        await db.migrate(engine)
        assert await db.current_revision(engine) == db.head_revision()
        assert await _view_answers(conn) == before
    finally:
        await conn.close()
        await engine.dispose()
