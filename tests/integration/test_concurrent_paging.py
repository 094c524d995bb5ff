"""A project's pages in flight together (SNAPSYNC_MAX_CONCURRENT_REQUESTS): never more requests
in flight than allowed, never more pages held than that, and the listing's proof of completeness
as sound as when pages were read one after another: shifts, throttling and a total_count that
changes while the pages are in flight never delete a live snapshot.

Real simulator over HTTP (with latency, so requests overlap), real PostgreSQL.
"""

from __future__ import annotations

import random
from typing import Any

import asyncpg
from aiohttp import web

from app import sync

from .simulated import RunningSimulator, serve
from .test_reliability import (
    LISTING_KEYS,
    ChurnDuringPaging,
    all_succeeded,
    assert_invariants,
    fresh_seed,
    in_process,
    report_figures,
)
from .test_sync_e2e import assert_exact_mirror


def is_listing(request: web.Request) -> bool:
    """A request of a full listing (not a filtered re-check, not the control API)."""
    return request.path.startswith("/v2/") and set(request.query) <= LISTING_KEYS


class InFlight:
    """A simulator middleware: how many listing requests are being answered at once, at most,
    and how many were started; the latency is inside the handler, so overlapping requests of
    the client overlap here."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.started = 0
        self.offsets: list[int] = []

    async def __call__(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not is_listing(request):
            return await handler(request)
        self.now += 1
        self.started += 1
        self.peak = max(self.peak, self.now)
        self.offsets.append(int(request.query.get("offset", "0")))
        try:
            return await handler(request)
        finally:
            self.now -= 1


async def test_requests_in_flight_never_exceed_the_setting(
    database_url: str, sql: asyncpg.Connection
) -> None:
    counter = InFlight()
    async with serve(projects=1, snapshots=400, seed=3, latency=0.1, middlewares=[counter]) as sim:
        pid = sim.project_ids[0]
        for width in (1, 3, 6):
            counter.peak = counter.started = 0
            async with in_process(
                sim, database_url, page_size=20, max_concurrent_requests=width
            ) as s:
                result = await s.sync(pid)
            assert result.status == "succeeded", result.summary()
            # 20 pages: the first alone, then `width` at a time, never more; no page twice.
            assert counter.peak == width, (width, counter.peak)
            assert counter.started == result.counts.pages == 20
            await assert_exact_mirror(sql, sim)
        requests = await sql.fetch("SELECT requests, pages FROM sync_runs ORDER BY id")
        assert [(r["requests"], r["pages"]) for r in requests] == [(20, 20)] * 3


async def test_pages_held_never_exceed_the_setting_while_loading_is_slower(
    database_url: str, sql: asyncpg.Connection
) -> None:
    # A first sync writes every row, so loading is slower than the (instant) API: the pages
    # asked for run ahead of the pages loaded by at most the setting, plus the one loading.
    counter = InFlight()
    loaded: list[int] = []
    ahead: list[int] = []

    async def track(request: web.Request, handler: Any) -> web.StreamResponse:
        if is_listing(request):
            ahead.append(counter.started + 1 - len(loaded))
        return await handler(request)

    def on_progress(progress: sync.Progress) -> None:
        loaded.append(progress.pages)

    width = 3
    async with serve(projects=1, snapshots=3000, seed=4, middlewares=[track, counter]) as sim:
        async with in_process(
            sim,
            database_url,
            page_size=50,
            max_concurrent_requests=width,
            on_progress=on_progress,
        ) as s:
            result = await s.sync(sim.project_ids[0])
        assert result.status == "succeeded", result.summary()
        assert result.counts.pages == len(loaded) == 60
        await assert_exact_mirror(sql, sim)
    # Pages requested but not yet loaded, counted when a request arrives: the new one, those
    # in flight or waiting, and the one being loaded.
    assert max(ahead) <= width + 1, ahead


async def test_pages_in_flight_under_churn_never_delete_a_live_snapshot(
    database_url: str, sql: asyncpg.Connection
) -> None:
    seed = fresh_seed("concurrent paging under churn")
    churn = ChurnDuringPaging(random.Random(seed))
    counter = InFlight()
    async with serve(
        projects=1,
        snapshots=300,
        seed=seed % 10_000,
        latency=0.03,
        change_rate=0.01,
        middlewares=[churn, counter],
    ) as sim:
        churn.sim = sim
        async with in_process(
            sim, database_url, page_size=20, delete_after_misses=1, max_concurrent_requests=4
        ) as s:
            assert all_succeeded(await s.sync_all())
            await assert_exact_mirror(sql, sim)
            churn.active = True
            for _ in range(15):
                results = await s.sync_all()
                assert all_succeeded(results), [r.summary() for r in results]
                await assert_invariants(sql, sim)
            churn.active = False
            for _ in range(2):
                assert all_succeeded(await s.sync_all())
                await assert_invariants(sql, sim)
        await assert_exact_mirror(sql, sim)
    assert 2 <= counter.peak <= 4, "the pages were not in flight together"
    report_figures(
        "concurrent_paging_churn",
        seed=seed,
        changes_during_paging=dict(churn.applied),
        peak_in_flight=counter.peak,
        false_deletions=0,
    )


class ShiftAfterOffset:
    """A simulator middleware: once armed with (offset, change), apply the change to the
    project right after the page at that offset of a full listing was answered, while the
    other pages of the listing are still in flight."""

    def __init__(self) -> None:
        self.sim: RunningSimulator | None = None
        self.armed: tuple[int, str, int] | None = None
        self.done: list[str] = []

    async def __call__(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        pid = request.match_info.get("project_id", "")
        if (
            self.armed is not None
            and self.sim is not None
            and is_listing(request)
            and request.query.get("offset") == str(self.armed[0])
        ):
            _, change, count = self.armed
            self.armed = None
            population = self.sim.population
            for _ in range(count):
                if change == "delete-first":
                    victim = population.snapshots(pid)[0]
                    population.delete_snapshot(pid, victim.snapshot_id)
                    self.done.append(victim.snapshot_id)
                else:  # grow: new snapshots after every other one, so the listing grows
                    added = population.add_snapshot(pid, {"create_time": "2099-01-01T00:00:00Z"})
                    self.done.append(added.snapshot_id)
        return response


async def live_ids(sql: asyncpg.Connection, pid: str) -> set[str]:
    rows = await sql.fetch(
        "SELECT snapshot_id FROM snapshots WHERE project_id = $1 AND deleted_at IS NULL", pid
    )
    return {r["snapshot_id"] for r in rows}


async def test_a_total_count_that_grows_mid_listing_is_paged_past_the_planned_end(
    database_url: str, sql: asyncpg.Connection
) -> None:
    shift = ShiftAfterOffset()
    counter = InFlight()
    async with serve(
        projects=1, snapshots=200, seed=6, latency=0.02, middlewares=[shift, counter]
    ) as sim:
        shift.sim = sim
        pid = sim.project_ids[0]
        async with in_process(
            sim, database_url, page_size=20, delete_after_misses=1, max_concurrent_requests=4
        ) as s:
            assert (await s.sync(pid)).status == "succeeded"
            # After the first page, 45 new snapshots at the end: 245 = 13 pages, 3 past the 10
            # the first total announced, read one at a time as the pages before them say so.
            shift.armed = (0, "grow", 45)
            counter.offsets.clear()
            result = await s.sync(pid)
            assert result.status == "succeeded", result.summary()
            assert result.counts.pages == 13
            assert result.counts.api_total_count == 245
            assert sorted(counter.offsets) == list(range(0, 260, 20))
            assert set(shift.done) <= await live_ids(sql, pid)
            await assert_exact_mirror(sql, sim)
            await assert_invariants(sql, sim)


async def test_a_total_count_that_shrinks_mid_listing_deletes_no_live_snapshot(
    database_url: str, sql: asyncpg.Connection
) -> None:
    shift = ShiftAfterOffset()
    async with serve(projects=1, snapshots=200, seed=7, latency=0.02, middlewares=[shift]) as sim:
        shift.sim = sim
        pid = sim.project_ids[0]
        async with in_process(
            sim, database_url, page_size=20, delete_after_misses=1, max_concurrent_requests=4
        ) as s:
            assert (await s.sync(pid)).status == "succeeded"
            for offset in (0, 40, 80):
                # The first 25 go while later pages are in flight: those pages shift by 25,
                # and live snapshots fall between pages already read and pages not yet read.
                shift.armed = (offset, "delete-first", 25)
                result = await s.sync(pid)
                assert result.status == "succeeded", result.summary()
                assert set(sim.items(pid)) <= await live_ids(sql, pid), offset
                await assert_invariants(sql, sim)
            result = await s.sync(pid)
            assert result.status == "succeeded"
            await assert_exact_mirror(sql, sim)
            await assert_invariants(sql, sim)
        gone = await sql.fetchval(
            "SELECT count(*) FROM snapshots WHERE snapshot_id = ANY($1::text[]) "
            "AND deleted_at IS NOT NULL",
            shift.done,
        )
        assert gone == len(shift.done) == 75


async def test_throttling_during_concurrent_paging_backs_off_and_completes(
    database_url: str, sql: asyncpg.Connection
) -> None:
    counter = InFlight()
    async with serve(
        projects=2, snapshots=300, seed=9, latency=0.01, change_rate=0.01, middlewares=[counter]
    ) as sim:
        async with in_process(
            sim,
            database_url,
            page_size=20,
            max_concurrent_requests=4,
            max_retries=8,
            max_requests_per_second=200,
            delete_after_misses=1,
        ) as s:
            assert all_succeeded(await s.sync_all())
            report = sim.population.tick(20)
            assert report.deleted > 0
            await sim.control("POST", "/_sim/faults", {"fault_429": 0.25})
            results = await s.sync_all()
            await sim.control("POST", "/_sim/faults", {"fault_429": 0})
            assert all_succeeded(results), [r.summary() for r in results]
            assert sum(r.retries for r in results) > 0
            # Two projects at once, each with at most 4 pages in flight.
            assert counter.peak <= 8
            throttled = s.syncer._resources.client.limiter.throttle_events
        await assert_exact_mirror(sql, sim)
        await assert_invariants(sql, sim)
        stats = await sim.control("GET", "/_sim/stats")
    # Every 429 reached the process-wide limiter (which halves the rate on them).
    assert throttled == stats["requests_by_status"].get("429", 0) > 0
    report_figures(
        "concurrent_paging_throttled",
        injected_429=stats["requests_by_status"]["429"],
        retries=sum(r.retries for r in results),
        peak_in_flight=counter.peak,
    )


async def test_projects_synced_together_share_the_process_wide_pages_ahead(
    database_url: str, sql: asyncpg.Connection
) -> None:
    # Two projects at once, each allowed 4 in flight: the process holds at most
    # max(SNAPSYNC_MAX_CONCURRENT_REQUESTS, SNAPSYNC_MAX_CONCURRENT_PROJECTS) = 4 pages ahead.
    counter = InFlight()
    async with serve(projects=2, snapshots=400, seed=10, latency=0.1, middlewares=[counter]) as sim:
        async with in_process(
            sim, database_url, page_size=20, max_concurrent_requests=4, max_concurrent_projects=2
        ) as s:
            results = await s.sync_all()
        assert all_succeeded(results), [r.summary() for r in results]
        assert 2 <= counter.peak <= 4, counter.peak
        assert counter.started == sum(r.counts.pages for r in results) == 40
        await assert_exact_mirror(sql, sim)


async def test_a_listing_failing_with_pages_in_flight_gives_back_every_page_ahead(
    database_url: str, sql: asyncpg.Connection
) -> None:
    counter = InFlight()
    async with serve(
        projects=1, snapshots=400, seed=12, latency=0.05, middlewares=[counter]
    ) as sim:
        pid = sim.project_ids[0]
        async with in_process(
            sim, database_url, page_size=20, max_concurrent_requests=4, max_retries=0
        ) as s:
            budget = s.syncer._pages_ahead
            size = budget._value
            await sim.control("POST", "/_sim/faults", {"fault_500": 0.2})
            outcomes = []
            for _ in range(6):
                result = await s.sync(pid)
                outcomes.append(result.status)
                assert budget._value == size, "a listing kept pages ahead after it ended"
            assert "failed" in outcomes, outcomes
            await sim.control("POST", "/_sim/faults", {"fault_500": 0})
            counter.peak = 0
            assert (await s.sync(pid)).status == "succeeded"
            assert counter.peak == 4
        await assert_exact_mirror(sql, sim)
        await assert_invariants(sql, sim)
