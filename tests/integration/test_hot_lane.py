"""The fast lane: in-flight snapshots re-read between full syncs, by a real daemon."""

from __future__ import annotations

import asyncpg

from .simulated import serve
from .test_daemon import Launch, env_for, launch, wait_for
from .test_status_hours import assert_rollup_recounts

__all__ = ["launch"]  # the fixture, imported for pytest


def settle(population, pid: str) -> None:  # type: ignore[no-untyped-def]
    """Finish every running task of a project, so nothing is in flight."""
    for snap in population.snapshots(pid):
        if snap.status in ("creating", "restoring"):
            population.set_fields(
                pid, snap.snapshot_id, {"status": "create_success", "process": None}
            )


async def test_hot_lane_catches_a_finished_creation_within_seconds(
    database_url: str, sql: asyncpg.Connection, launch: Launch
) -> None:
    async with serve(projects=2, snapshots=200, seed=21) as sim:
        busy, idle = sim.project_ids
        population = sim.population
        settle(population, busy)
        settle(population, idle)
        creating = population.snapshots(busy)[50]
        population.set_fields(busy, creating.snapshot_id, {"status": "creating", "process": 40})
        daemon = await launch(
            env_for(
                sim,
                database_url,
                SNAPSYNC_SYNC_INTERVAL="300",
                SNAPSYNC_HOT_INTERVAL="1",
            )
        )

        async def first_syncs_done() -> bool:
            n = await sql.fetchval(
                "SELECT count(*) FROM sync_runs WHERE kind = 'full' AND status = 'succeeded'"
            )
            return n == 2

        await wait_for(first_syncs_done, timeout=60, what="the first full syncs")

        async def requests() -> dict[str, int]:
            return dict((await sim.control("GET", "/_sim/stats"))["requests_by_project"])

        async def hot_polled() -> bool:
            return bool(
                await sql.fetchval(
                    "SELECT last_hot_poll_at IS NOT NULL FROM projects WHERE project_id = $1",
                    busy,
                )
            )

        await wait_for(hot_polled, timeout=30, what="a hot poll of the busy project")
        before = await requests()
        population.set_fields(busy, creating.snapshot_id, {"status": "create_success"})

        async def finished() -> asyncpg.Record | None:
            return await sql.fetchrow(
                "SELECT h.observed_at, h.previous_observed_at, r.kind "
                "FROM snapshot_status_history h JOIN sync_runs r ON r.id = h.sync_run_id "
                "WHERE h.snapshot_id = $1 AND h.from_status = 'creating' "
                "AND h.to_status = 'create_success'",
                creating.snapshot_id,
            )

        row = await wait_for(finished, timeout=30, what="the hot lane to see the change")
        assert row["kind"] == "hot"
        window = (row["observed_at"] - row["previous_observed_at"]).total_seconds()
        assert window < 30, "the window is about the hot interval, not the sync interval"
        after = await requests()
        # A project with nothing in flight costs no hot requests.
        assert after.get(idle, 0) == before.get(idle, 0)
        assert after.get(busy, 0) > before.get(busy, 0)
        # Nothing is in flight any more: no more requests for it either.
        settled = await requests()
        await _sleep(3)
        assert (await requests()).get(busy) == settled.get(busy)
        assert (
            await sql.fetchval(
                "SELECT count(*) FROM snapshot_status_history WHERE to_status = 'deleted'"
            )
            == 0
        )
        # The hot lane's writes keep the hourly rollup as the full syncs' do.
        await assert_rollup_recounts(sql)
        status, body = await daemon.get("/metrics")
        assert status == 200
        assert f'snapsync_hot_polls_total{{outcome="succeeded",project_id="{busy}"}}' in body
        assert "snapsync_snapshots_in_flight" in body
        assert 'snapsync_transition_window_seconds_count{kind="hot"} 1.0' in body
        assert await daemon.signal_and_wait() == 0


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
