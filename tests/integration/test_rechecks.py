"""The deletion rule's re-checks at the API: many desktops per request (`desktop_ids`), and one
per request once an older API version refused the list filter. Requests counted at the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from .simulated import RunningSimulator, serve
from .test_sync_e2e import assert_exact_mirror, sync


class QueryLog:
    """A simulator middleware keeping the query of every API request."""

    def __init__(self) -> None:
        self.queries: list[list[tuple[str, str]]] = []

    async def __call__(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_sim") and request.path.endswith("/snapshots"):
            self.queries.append(list(request.query.items()))
        return await handler(request)

    def with_key(self, key: str) -> list[list[tuple[str, str]]]:
        return [q for q in self.queries if any(k == key for k, _ in q)]


def _vanish(sim: RunningSimulator, pid: str, count: int) -> list[str]:
    """Delete one snapshot from each of `count` different desktops; their ids."""
    gone: list[str] = []
    desktops: set[str] = set()
    for snap in sim.population.snapshots(pid):
        if snap.desktop_id and snap.desktop_id not in desktops:
            desktops.add(snap.desktop_id)
            sim.population.delete_snapshot(pid, snap.snapshot_id)
            gone.append(snap.snapshot_id)
            if len(gone) == count:
                break
    assert len(gone) == count
    return gone


async def _deleted(sql: asyncpg.Connection, ids: list[str]) -> int:
    count: int = await sql.fetchval(
        "SELECT count(*) FROM snapshots WHERE snapshot_id = ANY($1::text[]) "
        "AND deleted_at IS NOT NULL",
        ids,
    )
    return count


async def test_missing_snapshots_of_many_desktops_are_rechecked_in_one_request(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    queries = QueryLog()
    async with serve(projects=1, snapshots=600, seed=21, middlewares=[queries]) as sim:
        pid = sim.project_ids[0]
        env = {"SNAPSYNC_PAGE_SIZE": "100", "SNAPSYNC_DELETE_AFTER_MISSES": "1"}
        assert (await sync(sim, database_url, workdir, **env)).code == 0
        gone = _vanish(sim, pid, 30)
        queries.queries.clear()
        result = await sync(sim, database_url, workdir, **env)
        assert result.code == 0, result.output
        assert "deleted=30" in result.stdout, result.output
        assert await _deleted(sql, gone) == 30
        # 6 pages (570 left at 100 a page) and one re-check naming the 30 desktops.
        batches = queries.with_key("desktop_ids")
        assert len(batches) == 1 and len(queries.queries) == 7, queries.queries
        assert len({v for k, v in batches[0] if k == "desktop_ids"}) == 30
        assert not queries.with_key("desktop_id")
        requests = await sql.fetchval("SELECT requests FROM sync_runs ORDER BY id DESC LIMIT 1")
        assert requests == 7
        await assert_exact_mirror(sql, sim)


class GrowOnBatch:
    """A simulator middleware: before the first `desktop_ids` request is served, 1,000 new
    snapshots of `desktop`, so a batch holding it needs two pages."""

    def __init__(self) -> None:
        self.sim: RunningSimulator | None = None
        self.desktop: str | None = None

    async def __call__(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.sim is not None and self.desktop is not None and "desktop_ids" in request.query:
            pid = request.match_info["project_id"]
            base = next(
                s for s in self.sim.population.snapshots(pid) if s.desktop_id == self.desktop
            )
            self.desktop = None
            for _ in range(1000):
                self.sim.population.add_snapshot(
                    pid,
                    {
                        "desktop_id": base.desktop_id,
                        "desktop_name": base.desktop_name,
                        "desktop_sid": base.desktop_sid,
                    },
                )
        return await handler(request)


async def test_a_batch_answering_more_than_a_page_is_split_and_still_proves_absence(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    """The stored counts said the desktops fit one page; by the re-check the API holds more (new
    snapshots of one desktop): the batch is halved until each answer is one complete page, and
    only the desktop that still needs two pages proves nothing."""
    queries, grow = QueryLog(), GrowOnBatch()
    async with serve(projects=1, snapshots=600, seed=22, middlewares=[grow, queries]) as sim:
        grow.sim = sim
        pid = sim.project_ids[0]
        env = {"SNAPSYNC_PAGE_SIZE": "100", "SNAPSYNC_DELETE_AFTER_MISSES": "1"}
        assert (await sync(sim, database_url, workdir, **env)).code == 0
        gone = _vanish(sim, pid, 4)
        desktop_of = {
            r["snapshot_id"]: r["desktop_id"]
            for r in await sql.fetch(
                "SELECT snapshot_id, desktop_id FROM snapshots WHERE snapshot_id = ANY($1)", gone
            )
        }
        grow.desktop = desktop_of[gone[0]]
        queries.queries.clear()
        result = await sync(sim, database_url, workdir, **env)
        assert result.code == 0, result.output
        assert "deleted=3" in result.stdout, result.output
        assert await _deleted(sql, gone[1:]) == 3
        assert await _deleted(sql, gone[:1]) == 0
        batches = [len(q) for q in queries.with_key("desktop_ids")]
        singles = queries.with_key("desktop_id")
        # 4 desktops, then 2 + 2, then the grown one alone (and its partner alone).
        assert len(batches) == 3 and len(singles) == 2, queries.queries
        assert all(("offset", "0") in q for q in queries.with_key("desktop_ids") + singles)


async def test_an_api_refusing_the_list_filter_is_rechecked_desktop_by_desktop(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    """An older API version answers 400 to `desktop_ids`: the re-check falls back to one
    `desktop_id` per request, and the process remembers (one 400 for two projects)."""
    queries = QueryLog()
    async with serve(
        projects=2, snapshots=300, seed=23, legacy_filters=True, middlewares=[queries]
    ) as sim:
        env = {
            "SNAPSYNC_PAGE_SIZE": "100",
            "SNAPSYNC_DELETE_AFTER_MISSES": "1",
            "SNAPSYNC_MAX_CONCURRENT_PROJECTS": "1",
        }
        assert (await sync(sim, database_url, workdir, **env)).code == 0
        gone = [sid for pid in sim.project_ids for sid in _vanish(sim, pid, 5)]
        queries.queries.clear()
        before = (await sim.control("GET", "/_sim/stats"))["requests_by_status"]
        result = await sync(sim, database_url, workdir, **env)
        assert result.code == 0, result.output
        assert result.stdout.count("deleted=5") == 2, result.output
        assert await _deleted(sql, gone) == 10
        after = (await sim.control("GET", "/_sim/stats"))["requests_by_status"]
        assert after.get("400", 0) - before.get("400", 0) == 1
        assert len(queries.with_key("desktop_ids")) == 1
        assert len(queries.with_key("desktop_id")) == 10
        await assert_exact_mirror(sql, sim)


async def test_the_simulator_answers_400_to_the_list_filters_only_when_told(
    database_url: str, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=50, seed=24) as sim:
        pid = sim.project_ids[0]
        desktop = next(s.desktop_id for s in sim.population.snapshots(pid) if s.desktop_id)
        url = f"{sim.url}/v2/{pid}/snapshots?desktop_ids={desktop}&desktop_ids=other"
        headers = {"X-Auth-Token": sim.options.auth_token or ""}
        async with aiohttp.ClientSession() as session:
            async with session.get(url, headers=headers) as response:
                assert response.status == 200
                body = await response.json()
                assert body["total_count"] == sum(
                    1 for s in sim.population.snapshots(pid) if s.desktop_id == desktop
                )
            assert (await sim.control("POST", "/_sim/faults", {"legacy_filters": True}))[
                "legacy_filters"
            ]
            async with session.get(url, headers=headers) as response:
                assert response.status == 400
                assert "desktop_ids" in (await response.json())["error_msg"]
            async with session.get(
                f"{sim.url}/v2/{pid}/snapshots?desktop_id={desktop}", headers=headers
            ) as response:
                assert response.status == 200


async def test_the_hot_lane_looks_up_finished_snapshots_of_many_desktops_in_one_request(
    database_url: str, sql: asyncpg.Connection
) -> None:
    """Three creations on three desktops finish between polls: one `desktop_ids` lookup finds
    them; against an older API version, one 400 and then one `desktop_id` per desktop."""
    from app import settings as settings_module

    from .test_reliability import in_process

    for legacy in (False, True):
        queries = QueryLog()
        async with serve(
            projects=1,
            snapshots=200,
            seed=25 + legacy,
            legacy_filters=legacy,
            middlewares=[queries],
        ) as sim:
            pid = sim.project_ids[0]
            chosen: list[str] = []
            desktops: set[str] = set()
            for snap in sim.population.snapshots(pid):
                if snap.desktop_id and snap.desktop_id not in desktops and len(chosen) < 3:
                    desktops.add(snap.desktop_id)
                    chosen.append(snap.snapshot_id)
            for sid in chosen:
                sim.population.set_fields(pid, sid, {"status": "creating", "process": 10})
            async with in_process(sim, database_url) as env:
                project = settings_module.Project(project_id=pid, region=env.settings.region)
                assert (await env.sync(pid)).status == "succeeded"
                for sid in chosen:
                    sim.population.set_fields(
                        pid, sid, {"status": "create_success", "process": None}
                    )
                queries.queries.clear()
                hot = await env.syncer.poll_in_flight(project)
                assert hot is not None and hot.status == "succeeded", hot
                assert hot.counts.transitions == 3
            statuses = await sql.fetch(
                "SELECT status FROM snapshots WHERE snapshot_id = ANY($1::text[])", chosen
            )
            assert {r["status"] for r in statuses} == {"create_success"}
            # After the in-flight listings by status, the lookups.
            assert len(queries.with_key("desktop_ids")) == 1
            assert len(queries.with_key("desktop_id")) == (3 if legacy else 0)
        await sql.execute("TRUNCATE snapshot_records, snapshot_status_history, sync_runs CASCADE")
        await sql.execute("TRUNCATE projects CASCADE")
