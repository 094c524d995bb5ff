"""History rows that carry their own end (migration 0004): the sync closes each row when it writes
the next one, the migration backfills what was there, both equal to what a window over the
history gives; and snapshot_desktops holds every desktop a snapshot was seen of."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import asyncpg

from app import db

from ..conftest import REPO, _asyncpg_dsn
from .test_reporting import Scenario, scenario  # noqa: F401 - the scripted simulator run


async def assert_closed_as_the_window_says(conn: asyncpg.Connection) -> int:
    """Every row's closing facts are those of the next row of its snapshot (by observed_at,
    then id: the order of 0002's window); returns how many rows are closed."""
    rows = await conn.fetch(
        "SELECT * FROM snapshot_status_history ORDER BY project_id, snapshot_id, observed_at, id"
    )
    assert rows
    for row, after in zip(rows, [*rows[1:], None], strict=True):
        same = after is not None and (after["project_id"], after["snapshot_id"]) == (
            row["project_id"],
            row["snapshot_id"],
        )
        want = (
            (after["id"], after["to_status"], after["previous_observed_at"], after["observed_at"])
            if same and after is not None
            else (None, None, None, None)
        )
        got = (row["next_id"], row["next_status"], row["left_after"], row["left_by"])
        assert got == want, dict(row)
    return sum(1 for r in rows if r["next_id"] is not None)


async def test_the_sync_closes_each_row_when_it_writes_the_next(
    scenario: Scenario,  # noqa: F811
) -> None:
    conn = await asyncpg.connect(**_asyncpg_dsn(scenario.url))  # type: ignore[arg-type]
    try:
        closed = await assert_closed_as_the_window_says(conn)
        oracle = scenario.oracle()
        # Every change the script made closed a row: restores, creations ending, deletions.
        assert closed == sum(len(rows) - 1 for rows in oracle.rows.values()) > 10
        # One open row per snapshot ever seen, and it is the snapshot's current status.
        open_rows = await conn.fetch(
            "SELECT h.project_id, h.snapshot_id, h.to_status, s.status, s.deleted_at "
            "FROM snapshot_status_history AS h JOIN snapshots AS s USING (project_id, snapshot_id)"
            " WHERE h.left_by IS NULL"
        )
        assert len(open_rows) == len(oracle.rows)
        for r in open_rows:
            want = "deleted" if r["deleted_at"] is not None else r["status"]
            assert r["to_status"] == want, dict(r)
        # The script's restores: a restoring row closed by the row that saw it end.
        a = scenario.a
        restored = await conn.fetch(
            "SELECT snapshot_id, next_status FROM snapshot_status_history "
            "WHERE project_id = $1 AND to_status = 'restoring' ORDER BY snapshot_id",
            a,
        )
        assert sorted(r["next_status"] for r in restored) == ["restore_failed", "restore_success"]
        # Deletions close the row of the last status seen.
        for sid in scenario.script["deleted"]:
            row = await conn.fetchrow(
                "SELECT next_status, left_by FROM snapshot_status_history "
                "WHERE project_id = $1 AND snapshot_id = $2 AND next_status = 'deleted'",
                a,
                sid,
            )
            assert row is not None and row["left_by"] is not None
        desktops = {
            (r["project_id"], r["desktop_id"])
            for r in await conn.fetch("SELECT project_id, desktop_id FROM snapshot_desktops")
        }
        assert desktops == {
            (pid, item["desktop_id"])
            for (pid, _), item in oracle.ever.items()
            if item.get("desktop_id") is not None
        }
    finally:
        await conn.close()


def migration_0004() -> ModuleType:
    return migration_module("0004_closed_history.py")


def migration_module(filename: str) -> ModuleType:
    """A revision's module, loaded from migrations/versions/`filename`."""
    path = REPO / "migrations" / "versions" / filename
    spec = importlib.util.spec_from_file_location(f"snapsync_migration_{path.stem}_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# At 0003: 3 projects x 40 snapshots, 1-5 history rows each (statuses cycling, one snapshot with
# two rows at the same observed_at: the id decides), desktops shared by 4 snapshots.
POPULATE_0003 = """
INSERT INTO projects (project_id, region) SELECT 'p' || p, 'r' FROM generate_series(1, 3) AS p;
INSERT INTO sync_runs (project_id, started_at, finished_at, status)
SELECT 'p' || p, now() - interval '1 day', now() - interval '1 day', 'succeeded'
FROM generate_series(1, 3) AS p;
INSERT INTO snapshot_records (project_id, snapshot_id, desktop_id, status, raw, content_hash,
                              first_seen_at, last_seen_at, last_changed_at, deleted_at,
                              create_time, is_system_disk)
SELECT 'p' || p, 's' || lpad(s::text, 3, '0'), 'd' || (s / 4), 'create_success', '{}', 0,
       now() - interval '1 day', now(), now(), CASE WHEN s % 7 = 0 THEN now() END,
       now() - interval '1 day', s % 2 = 0
FROM generate_series(1, 3) AS p, generate_series(1, 40) AS s;
INSERT INTO snapshot_status_history (project_id, snapshot_id, from_status, to_status,
                                     observed_at, previous_observed_at, sync_run_id)
SELECT r.project_id, r.snapshot_id,
       CASE WHEN n = 1 THEN NULL ELSE (ARRAY['creating', 'create_success', 'restoring',
                                             'restore_success', 'deleted'])[n - 1] END,
       (ARRAY['creating', 'create_success', 'restoring', 'restore_success', 'deleted'])[n],
       now() - interval '1 day' + make_interval(mins => CASE WHEN r.snapshot_id = 's005'
                                                        THEN 1 ELSE n * 10 END),
       CASE WHEN n > 1 THEN now() - interval '1 day' + make_interval(mins => n * 10 - 5) END,
       (SELECT min(id) FROM sync_runs)
FROM snapshot_records AS r
CROSS JOIN LATERAL generate_series(1, 1 + (substr(r.snapshot_id, 2)::int % 5)) AS n;
"""


async def test_migration_backfills_the_closing_facts_in_batches_and_downgrades(
    empty_database_url: str,
) -> None:
    engine = db.make_engine(empty_database_url, pool_size=1)
    conn = await asyncpg.connect(**_asyncpg_dsn(empty_database_url))  # type: ignore[arg-type]
    try:
        await db.migrate(engine, "0003")
        await conn.execute(POPULATE_0003)
        history = await conn.fetchval("SELECT count(*) FROM snapshot_status_history")
        assert history > 300
        await db.migrate(engine)
        closed = await assert_closed_as_the_window_says(conn)
        assert closed == history - 120  # one open row per snapshot
        assert await conn.fetchval("SELECT count(*) FROM snapshot_desktops") == 3 * 11

        # Again from scratch, three snapshots a batch: whole snapshots whatever the cut.
        await conn.execute(
            "UPDATE snapshot_status_history "
            "SET next_id = NULL, next_status = NULL, left_after = NULL, left_by = NULL"
        )
        module = migration_0004()
        async with engine.connect() as sa_conn:
            autocommit = await sa_conn.execution_options(isolation_level="AUTOCOMMIT")
            assert await autocommit.run_sync(module.backfill, 3) == closed
        assert await assert_closed_as_the_window_says(conn) == closed
        # Run again, it finds nothing left to do.
        async with engine.connect() as sa_conn:
            autocommit = await sa_conn.execution_options(isolation_level="AUTOCOMMIT")
            assert await autocommit.run_sync(module.backfill, 7) == 0

        # The views read the columns: the same answers as 0003's window views.
        new_answers = await _view_answers(conn)
        await db.downgrade(engine, "0003")
        assert await conn.fetchval("SELECT count(*) FROM snapshot_status_history") == history
        columns = {
            r["attname"]
            for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = "
                "'snapshot_status_history'::regclass AND attnum > 0 AND NOT attisdropped"
            )
        }
        assert not columns & {"next_id", "next_status", "left_after", "left_by"}
        assert await _view_answers(conn) == new_answers
        comment = await conn.fetchval(
            "SELECT col_description('snapshot_status_intervals'::regclass, 1)"
        )
        assert comment == "The snapshot's project."
        await db.migrate(engine)
        assert await db.current_revision(engine) == db.head_revision()
        assert await _view_answers(conn) == new_answers
    finally:
        await conn.close()
        await engine.dispose()


async def _view_answers(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    """Every row of the replaced views, without the columns that move with now()."""
    answers: dict[str, list[tuple[object, ...]]] = {}
    for view, moving in (
        ("snapshot_status_intervals", {"max_duration", "max_seconds", "min_duration"}),
        ("snapshot_operation_durations", {"max_duration", "max_seconds"}),
        ("desktop_snapshot_coverage", {"system_disk_age", "data_disk_age"}),
    ):
        rows = await conn.fetch(f"SELECT * FROM {view}")
        answers[view] = sorted(
            (tuple((k, str(v)) for k, v in r.items() if k not in moving) for r in rows),
        )
    return answers
