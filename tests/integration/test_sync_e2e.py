"""End to end: the real CLI against the simulator over HTTP, assertions in SQL on the tables."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web

from ..conftest import run_cli
from .simulated import RunningSimulator, serve

TYPED = (
    "snapshot_name",
    "desktop_id",
    "desktop_name",
    "desktop_sid",
    "desktop_pool_id",
    "is_system_disk",
    "status",
    "process",
    "description",
    "create_type",
    "restore_fail_reason",
)


def _time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


async def assert_exact_mirror(sql: asyncpg.Connection, sim: RunningSimulator) -> None:
    """Every live row equals the simulator's item, column by column, and nothing else is live."""
    for pid in sim.project_ids:
        expected = sim.items(pid)
        rows = await sql.fetch(
            "SELECT * FROM snapshots WHERE project_id = $1 AND deleted_at IS NULL", pid
        )
        got = {r["snapshot_id"]: r for r in rows}
        assert set(got) == set(expected), f"{pid}: live rows differ from the API"
        for sid, item in expected.items():
            row = got[sid]
            assert json.loads(row["raw"]) == item
            for column in TYPED:
                assert row[column] == item.get(column), (sid, column)
            assert row["create_time"] == _time(item["create_time"])
            assert row["last_restore_time"] == _time(item.get("last_restore_time"))


async def sync(sim: RunningSimulator, database_url: str, cwd: Path, *args: str, **env: str) -> Any:
    return await run_cli(
        "sync", *args, env={**sim.env(**env), "SNAPSYNC_DATABASE_URL": database_url}, cwd=cwd
    )


async def test_first_sync_mirrors_every_column_and_a_resync_writes_nothing(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=1200, seed=7) as sim:
        first = await sync(sim, database_url, workdir)
        assert first.code == 0, first.output
        lines = first.stdout.strip().splitlines()
        assert len(lines) == 2
        for pid in sim.project_ids:
            (line,) = [x for x in lines if x.startswith(pid)]
            assert "succeeded" in line and "pages=2" in line and "seen=1200" in line
            assert "inserted=1200" in line and "transitions=1200" in line
        await assert_exact_mirror(sql, sim)
        history = await sql.fetchval(
            "SELECT count(*) FROM snapshot_status_history WHERE from_status IS NULL"
        )
        assert history == 2400

        before = await sql.fetch(
            "SELECT project_id, snapshot_id, xmin::text AS x, last_changed_at FROM snapshot_records"
        )
        second = await sync(sim, database_url, workdir)
        assert second.code == 0, second.output
        assert "inserted=0 updated=0 deleted=0 transitions=0" in second.stdout
        after = await sql.fetch(
            "SELECT project_id, snapshot_id, xmin::text AS x, last_changed_at FROM snapshot_records"
        )
        # No row was rewritten: same tuple versions, same last_changed_at.
        assert sorted(map(tuple, before)) == sorted(map(tuple, after))
        assert await sql.fetchval("SELECT count(*) FROM snapshot_status_history") == 2400
        runs = await sql.fetch("SELECT * FROM sync_runs ORDER BY id")
        assert [r["status"] for r in runs] == ["succeeded"] * 4
        assert all(r["complete"] and r["api_total_count"] == 1200 for r in runs)
        assert sum(r["unchanged"] for r in runs[2:]) == 2400
        seen = await sql.fetchval(
            "SELECT count(*) FROM snapshots s JOIN sync_runs r ON r.id = "
            "(SELECT max(id) FROM sync_runs WHERE project_id = s.project_id) "
            "WHERE s.last_seen_at = r.started_at"
        )
        assert seen == 2400, "last_seen_at is the start of the newest complete listing"


async def test_hashes_of_an_older_release_are_replaced_without_recording_a_change(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    """An upgrade that changes how content_hash is computed (or an API that reorders keys)
    rewrites the stored hashes once, and records no change: no history row, no new
    last_changed_at, `updated=0`."""
    async with serve(projects=1, snapshots=300, seed=11) as sim:
        assert (await sync(sim, database_url, workdir)).code == 0
        # What a release that hashed differently left behind.
        await sql.execute("UPDATE snapshot_records SET content_hash = content_hash # 12345")
        before = await sql.fetch(
            "SELECT snapshot_id, last_changed_at, content_hash FROM snapshot_records"
        )
        again = await sync(sim, database_url, workdir)
        assert again.code == 0, again.output
        assert "inserted=0 updated=0 deleted=0 transitions=0" in again.stdout
        after = {
            r["snapshot_id"]: r
            for r in await sql.fetch(
                "SELECT snapshot_id, last_changed_at, content_hash FROM snapshot_records"
            )
        }
        for row in before:
            assert after[row["snapshot_id"]]["last_changed_at"] == row["last_changed_at"]
            assert after[row["snapshot_id"]]["content_hash"] == row["content_hash"] ^ 12345
        assert await sql.fetchval("SELECT count(*) FROM snapshot_status_history") == 300
        third = await sync(sim, database_url, workdir)
        runs = await sql.fetch("SELECT unchanged, updated FROM sync_runs ORDER BY id")
        assert third.code == 0 and [tuple(r) for r in runs[1:]] == [(300, 0), (300, 0)]


async def test_scripted_changes_write_exactly_their_history(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=300, seed=3) as sim:
        pid = sim.project_ids[0]
        population = sim.population
        ordered = population.snapshots(pid)
        finished, progress_only, doomed = ordered[10], ordered[20], ordered[30]
        population.set_fields(pid, finished.snapshot_id, {"status": "creating", "process": 10})
        population.set_fields(pid, progress_only.snapshot_id, {"status": "restoring", "process": 5})
        assert (await sync(sim, database_url, workdir)).code == 0

        population.set_fields(
            pid, finished.snapshot_id, {"status": "create_success", "process": None}
        )
        population.set_fields(pid, progress_only.snapshot_id, {"process": 60})
        population.delete_snapshot(pid, doomed.snapshot_id)
        new = population.add_snapshot(pid, {"status": "creating", "process": 0})
        changed_at = await sql.fetchval(
            "SELECT last_changed_at FROM snapshots WHERE snapshot_id = $1",
            progress_only.snapshot_id,
        )

        result = await sync(sim, database_url, workdir, SNAPSYNC_DELETE_AFTER_MISSES="2")
        assert result.code == 0, result.output
        assert "inserted=1 updated=2 deleted=0 transitions=2" in result.stdout
        rows = await sql.fetch(
            "SELECT snapshot_id, from_status, to_status, observed_at, previous_observed_at "
            "FROM snapshot_status_history WHERE sync_run_id = (SELECT max(id) FROM sync_runs)"
        )
        got = {(r["snapshot_id"], r["from_status"], r["to_status"]) for r in rows}
        assert got == {
            (finished.snapshot_id, "creating", "create_success"),
            (new.snapshot_id, None, "creating"),
        }
        change = next(r for r in rows if r["snapshot_id"] == finished.snapshot_id)
        assert change["previous_observed_at"] < change["observed_at"]
        row = await sql.fetchrow(
            "SELECT process, status, last_changed_at FROM snapshots WHERE snapshot_id = $1",
            progress_only.snapshot_id,
        )
        assert (row["process"], row["status"]) == (60, "restoring")
        assert row["last_changed_at"] > changed_at
        # Missing once: not yet deleted (DELETE_AFTER_MISSES=2).
        assert (
            await sql.fetchval(
                "SELECT deleted_at FROM snapshots WHERE snapshot_id = $1", doomed.snapshot_id
            )
            is None
        )

        result = await sync(sim, database_url, workdir, SNAPSYNC_DELETE_AFTER_MISSES="2")
        assert "deleted=1 transitions=1" in result.stdout, result.output
        gone = await sql.fetchrow(
            "SELECT s.deleted_at, s.last_seen_at, h.from_status, h.previous_observed_at "
            "FROM snapshots s JOIN snapshot_status_history h USING (project_id, snapshot_id) "
            "WHERE s.snapshot_id = $1 AND h.to_status = 'deleted'",
            doomed.snapshot_id,
        )
        assert gone["deleted_at"] is not None
        assert gone["from_status"] == doomed.status
        assert gone["previous_observed_at"] == gone["last_seen_at"]

        # It comes back: live again, with a row from 'deleted'.
        population.add_snapshot(pid, doomed.to_api())
        result = await sync(sim, database_url, workdir)
        assert "inserted=0 updated=1 deleted=0 transitions=1" in result.stdout, result.output
        back = await sql.fetchrow(
            "SELECT from_status, to_status FROM snapshot_status_history "
            "WHERE snapshot_id = $1 ORDER BY id DESC LIMIT 1",
            doomed.snapshot_id,
        )
        assert (back["from_status"], back["to_status"]) == ("deleted", doomed.status)
        await assert_exact_mirror(sql, sim)


class DeleteDuringPaging:
    """A simulator middleware: once armed, after serving the page at `offset` of the full
    listing, delete the project's first snapshot, so every later page shifts by one and a live
    snapshot falls between two pages."""

    def __init__(self) -> None:
        self.sim: RunningSimulator | None = None
        self.armed: dict[str, int] = {}
        self.deleted: list[str] = []

    async def __call__(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        pid = request.match_info.get("project_id", "")
        offset = self.armed.get(pid)
        if (
            offset is not None
            and self.sim is not None
            and not request.path.startswith("/_sim")
            and request.query.get("offset") == str(offset)
            and "desktop_id" not in request.query
        ):
            del self.armed[pid]
            first = self.sim.population.snapshots(pid)[0]
            self.sim.population.delete_snapshot(pid, first.snapshot_id)
            self.deleted.append(first.snapshot_id)
        return response


async def test_deletion_during_paging_never_deletes_a_live_snapshot(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    hook = DeleteDuringPaging()
    async with serve(projects=1, snapshots=100, seed=5, middlewares=[hook]) as sim:
        hook.sim = sim
        pid = sim.project_ids[0]
        env = {"SNAPSYNC_PAGE_SIZE": "10", "SNAPSYNC_DELETE_AFTER_MISSES": "1"}
        assert (await sync(sim, database_url, workdir, **env)).code == 0
        await assert_exact_mirror(sql, sim)
        for offset in (10, 40, 90):
            hook.armed[pid] = offset
            result = await sync(sim, database_url, workdir, **env)
            assert result.code == 0, result.output
            live = {
                r["snapshot_id"]
                for r in await sql.fetch(
                    "SELECT snapshot_id FROM snapshots "
                    "WHERE project_id = $1 AND deleted_at IS NULL",
                    pid,
                )
            }
            listed = set(sim.items(pid))
            assert listed <= live, f"a live snapshot was marked deleted (offset {offset})"
        wrongly = await sql.fetchval(
            "SELECT count(*) FROM snapshot_status_history WHERE to_status = 'deleted' "
            "AND snapshot_id <> ALL($1::text[])",
            hook.deleted,
        )
        assert wrongly == 0
        # Once the list stops changing, one more sync is an exact mirror, and the snapshots
        # deleted mid-listing (already read on the first page) are confirmed gone.
        assert (await sync(sim, database_url, workdir, **env)).code == 0
        await assert_exact_mirror(sql, sim)
        gone = await sql.fetchval(
            "SELECT count(*) FROM snapshots WHERE snapshot_id = ANY($1::text[]) "
            "AND deleted_at IS NOT NULL",
            hook.deleted,
        )
        assert gone == len(hook.deleted) == 3


async def test_unstable_order_within_ties_never_deletes_a_live_snapshot(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=400, seed=11, unstable_ties=True) as sim:
        pid = sim.project_ids[0]
        env = {"SNAPSYNC_PAGE_SIZE": "7", "SNAPSYNC_DELETE_AFTER_MISSES": "1"}
        for _ in range(4):
            assert (await sync(sim, database_url, workdir, **env)).code == 0
        assert (
            await sql.fetchval(
                "SELECT count(*) FROM snapshot_status_history WHERE to_status = 'deleted'"
            )
            == 0
        )
        live = await sql.fetchval(
            "SELECT count(*) FROM snapshots WHERE project_id = $1 AND deleted_at IS NULL", pid
        )
        assert live <= len(sim.items(pid))


async def test_a_forbidden_project_fails_alone(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=50, forbidden_projects=1) as sim:
        forbidden, healthy = sim.project_ids
        result = await sync(sim, database_url, workdir)
        assert result.code == 1, result.output
        runs = {
            r["project_id"]: r
            for r in await sql.fetch("SELECT project_id, status, error FROM sync_runs")
        }
        assert runs[healthy]["status"] == "succeeded"
        assert runs[forbidden]["status"] == "failed"
        error = runs[forbidden]["error"]
        assert "HTTP 403" in error and "X-Request-Id" in error
        assert (
            await sql.fetchval("SELECT count(*) FROM snapshots WHERE project_id = $1", forbidden)
            == 0
        )
        assert f"{forbidden}: failed" in result.stdout
        assert f"{healthy}: succeeded" in result.stdout
        assert "Traceback" not in result.output


async def test_a_project_answering_garbage_fails_without_touching_its_rows(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=30) as sim:
        broken, _healthy = sim.project_ids
        assert (await sync(sim, database_url, workdir)).code == 0
        before = await sql.fetch("SELECT * FROM snapshot_records ORDER BY 1, 2")
        await sim.control(
            "POST",
            f"/_sim/projects/{broken}/raw-pages",
            [{"status": 200, "body": "<html>oops</html>", "content_type": "text/html"}],
        )
        result = await sync(sim, database_url, workdir, SNAPSYNC_DELETE_AFTER_MISSES="1")
        assert result.code == 1
        error = await sql.fetchval(
            "SELECT error FROM sync_runs WHERE project_id = $1 ORDER BY id DESC LIMIT 1", broken
        )
        assert "not JSON" in error
        after = await sql.fetch("SELECT * FROM snapshot_records ORDER BY 1, 2")
        assert before == after


async def test_malformed_items_are_rejected_and_the_rest_is_stored(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=5) as sim:
        pid = sim.project_ids[0]
        good = list(sim.items(pid).values())
        hostile = {**good[0], "snapshot_id": "evil", "description": "'); DROP TABLE x; -- \u202e"}
        page = {
            "total_count": 9,
            "desktop_snapshots": [
                *good[1:],
                hostile,
                {"status": "creating"},
                {**good[0], "process": "half"},
                "not an object",
            ],
        }
        await sim.control(
            "POST",
            f"/_sim/projects/{pid}/raw-pages",
            [{"status": 200, "body": json.dumps(page), "content_type": "application/json"}],
        )
        result = await sync(sim, database_url, workdir)
        assert result.code == 0, result.output
        assert "seen=5 inserted=5" in result.stdout and "rejected=3" in result.stdout
        assert await sql.fetchval("SELECT rejected FROM sync_runs") == 3
        stored = await sql.fetchval("SELECT description FROM snapshots WHERE snapshot_id = 'evil'")
        assert stored == hostile["description"]
        assert "process is str" in result.stderr


async def test_three_concurrent_syncs_write_each_history_row_once(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=3, snapshots=800, seed=9) as sim:
        results = await asyncio.gather(*(sync(sim, database_url, workdir) for _ in range(3)))
        assert all(r.code == 0 for r in results), [r.output for r in results]
        sim.population.tick(40)
        results = await asyncio.gather(*(sync(sim, database_url, workdir) for _ in range(3)))
        assert all(r.code == 0 for r in results)
        duplicates = await sql.fetchval(
            "SELECT count(*) FROM (SELECT project_id, snapshot_id, from_status, to_status "
            "FROM snapshot_status_history GROUP BY 1, 2, 3, 4, observed_at "
            "HAVING count(*) > 1) d"
        )
        assert duplicates == 0
        firsts = await sql.fetchval(
            "SELECT count(*) FROM (SELECT 1 FROM snapshot_status_history "
            "WHERE from_status IS NULL GROUP BY project_id, snapshot_id HAVING count(*) > 1) d"
        )
        assert firsts == 0
        overlapping = await sql.fetchval(
            "SELECT count(*) FROM sync_runs a JOIN sync_runs b ON a.project_id = b.project_id "
            "AND a.id < b.id AND a.started_at < b.finished_at AND b.started_at < a.finished_at"
        )
        assert overlapping == 0
        assert (await sync(sim, database_url, workdir)).code == 0
        await assert_exact_mirror(sql, sim)


async def test_status_reports_each_project(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=40) as sim:
        assert (await sync(sim, database_url, workdir)).code == 0
        env = {"SNAPSYNC_DATABASE_URL": database_url}
        text = await run_cli("status", env=env, cwd=workdir)
        assert text.code == 0
        for pid in sim.project_ids:
            assert f"project {pid}" in text.stdout
        assert "succeeded" in text.stdout and "live snapshots: 40" in text.stdout
        as_json = await run_cli("status", "--json", env=env, cwd=workdir)
        data = json.loads(as_json.stdout)
        assert {d["project_id"] for d in data} == set(sim.project_ids)
        assert all(d["live_snapshots"] == 40 for d in data)
        assert all(d["last_run"]["status"] == "succeeded" for d in data)


async def test_sync_refuses_an_unmigrated_database(empty_database_url: str, workdir: Path) -> None:
    async with serve(projects=1, snapshots=5) as sim:
        result = await sync(sim, empty_database_url, workdir)
        assert result.code == 2
        assert "snapsync migrate" in result.stderr
