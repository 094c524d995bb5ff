"""Retention: `snapsync prune [--dry-run]` and the daemon's pruning, on a database synced from the
simulator and then aged by SQL (old runs; snapshots deleted long ago)."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app import retention

from ..conftest import run_cli
from .simulated import RunningSimulator, serve
from .test_daemon import Launch, env_for, launch, wait_for  # noqa: F401 - the daemon fixture

KEEP = {"SNAPSYNC_RETAIN_RUNS_DAYS": "90", "SNAPSYNC_RETAIN_DELETED_DAYS": "30"}


async def populate(sim: RunningSimulator, database_url: str, workdir: Path) -> dict[str, Any]:
    """Two syncs (the second deletes three snapshots of the first project), then aging by SQL:
    old runs of every project, and a project whose newest run and newest success are both old.
    Returns what the prune must remove and what it must keep."""
    env = {**env_for(sim, database_url), "SNAPSYNC_DELETE_AFTER_MISSES": "1"}
    assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
    first = sim.project_ids[0]
    doomed = [s.snapshot_id for s in sim.population.snapshots(first)[:3]]
    for sid in doomed:
        sim.population.delete_snapshot(first, sid)
    assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
    return {"first": first, "deleted": doomed}


async def age(sql: asyncpg.Connection, first: str, deleted: list[str]) -> dict[str, Any]:
    # Two of the three deleted snapshots were deleted 40 days ago; one 10 days ago.
    await sql.execute(
        "UPDATE snapshot_records SET deleted_at = now() - interval '40 days' "
        "WHERE project_id = $1 AND snapshot_id = ANY($2::text[])",
        first,
        deleted[:2],
    )
    await sql.execute(
        "UPDATE snapshot_records SET deleted_at = now() - interval '10 days' "
        "WHERE project_id = $1 AND snapshot_id = $2",
        first,
        deleted[2],
    )
    # 5 old runs per synced project (100..140 days), 3 failed, 2 succeeded.
    old_ids = [
        r["id"]
        for r in await sql.fetch(
            "INSERT INTO sync_runs (project_id, started_at, finished_at, status) "
            "SELECT p.project_id, now() - make_interval(days => 100 + 10 * n), "
            "now() - make_interval(days => 100 + 10 * n), "
            "CASE WHEN n % 2 = 0 THEN 'succeeded' ELSE 'failed' END "
            "FROM projects AS p, generate_series(0, 4) AS n RETURNING id"
        )
    ]
    # History of live snapshots pointing at an old run: it must stay, without the run.
    pointed = await sql.fetchval(
        "WITH h AS (UPDATE snapshot_status_history SET sync_run_id = $1 WHERE id IN ("
        "SELECT id FROM snapshot_status_history WHERE to_status <> 'deleted' ORDER BY id "
        "LIMIT 4) RETURNING id) SELECT array_agg(id) FROM h",
        old_ids[0],
    )
    # A project synced only long ago: newest run (failed, 95 days), newest success (100 days)
    # and two older runs; only the two older ones may go.
    await sql.execute("INSERT INTO projects (project_id, region) VALUES ('old-project', 'r')")
    rows = await sql.fetch(
        "INSERT INTO sync_runs (project_id, started_at, finished_at, status) VALUES "
        "('old-project', now() - interval '95 days', now() - interval '95 days', 'failed'), "
        "('old-project', now() - interval '100 days', now() - interval '100 days', 'succeeded'),"
        "('old-project', now() - interval '110 days', now() - interval '110 days', 'succeeded'),"
        "('old-project', now() - interval '120 days', now() - interval '120 days', 'failed') "
        "RETURNING id"
    )
    old_project = [r["id"] for r in rows]
    # A run still marked running, long ago: not the prune's to remove.
    running = await sql.fetchval(
        "INSERT INTO sync_runs (project_id, started_at, status) "
        "VALUES ($1, now() - interval '200 days', 'running') RETURNING id",
        first,
    )
    return {
        "runs": set(old_ids) | set(old_project[2:]),
        "kept_runs": set(old_project[:2]) | {running},
        "running": running,
        "snapshots": {(first, sid) for sid in deleted[:2]},
        "pointed": set(pointed),
    }


async def table_state(sql: asyncpg.Connection) -> dict[str, Any]:
    return {
        "runs": {r["id"] for r in await sql.fetch("SELECT id FROM sync_runs")},
        "records": {
            (r["project_id"], r["snapshot_id"])
            for r in await sql.fetch("SELECT project_id, snapshot_id FROM snapshot_records")
        },
        "history": {
            r["id"]: tuple(r)
            for r in await sql.fetch(
                "SELECT h.*, s.deleted_at IS NULL AS live FROM snapshot_status_history AS h "
                "JOIN snapshot_records AS s USING (project_id, snapshot_id)"
            )
        },
        "live": [
            tuple(r)
            for r in await sql.fetch(
                "SELECT * FROM snapshot_records WHERE deleted_at IS NULL "
                "ORDER BY project_id, snapshot_id"
            )
        ],
    }


def counts(text: str) -> dict[str, int]:
    runs = re.search(r"sync_runs: (?:would remove|removed) (\d+) run", text)
    snaps = re.search(
        r"deleted snapshots: (?:would remove|removed) (\d+) snapshot.*?(\d+) hist", text
    )
    assert runs and snaps, text
    return {"runs": int(runs[1]), "snapshots": int(snaps[1]), "history": int(snaps[2])}


async def test_prune_dry_run_counts_and_the_real_run_removes_exactly_that(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=12) as sim:
        found = await populate(sim, database_url, workdir)
    expected = await age(sql, found["first"], found["deleted"])
    doomed_history = {
        r["id"]
        for r in await sql.fetch(
            "SELECT id FROM snapshot_status_history "
            "WHERE (project_id, snapshot_id) IN (SELECT project_id, snapshot_id "
            "FROM snapshot_records WHERE deleted_at < now() - interval '30 days')"
        )
    }
    assert len(doomed_history) >= 4  # each: a first sighting and its deletion
    before = await table_state(sql)
    env = {"SNAPSYNC_DATABASE_URL": database_url, **KEEP}

    dry = await run_cli("prune", "--dry-run", env=env, cwd=workdir)
    assert dry.code == 0, dry.output
    assert "would remove" in dry.stdout
    assert counts(dry.stdout) == {
        "runs": len(expected["runs"]),
        "snapshots": 2,
        "history": len(doomed_history),
    }
    assert await table_state(sql) == before

    done = await run_cli("prune", env=env, cwd=workdir)
    assert done.code == 0, done.output
    assert counts(done.stdout) == counts(dry.stdout)
    after = await table_state(sql)
    assert after["runs"] == before["runs"] - expected["runs"]
    assert expected["kept_runs"] <= after["runs"]
    assert after["records"] == before["records"] - expected["snapshots"]
    assert set(after["history"]) == set(before["history"]) - doomed_history
    assert after["live"] == before["live"]
    # Live snapshots' history untouched, but for the run id of the pruned run.
    for hid, row in before["history"].items():
        if hid in after["history"] and hid not in expected["pointed"]:
            assert after["history"][hid] == row
    nulls = await sql.fetch(
        "SELECT id, sync_run_id FROM snapshot_status_history WHERE id = ANY($1::bigint[])",
        list(expected["pointed"]),
    )
    assert len(nulls) == len(expected["pointed"]) and all(r["sync_run_id"] is None for r in nulls)
    # Each project keeps its newest run and its newest successful run.
    newest = await sql.fetch(
        "SELECT p.project_id, "
        "(SELECT max(started_at) FROM sync_runs r WHERE r.project_id = p.project_id) AS newest, "
        "(SELECT count(*) FROM sync_runs r WHERE r.project_id = p.project_id "
        "AND status = 'succeeded') AS ok FROM projects AS p"
    )
    assert all(r["newest"] is not None and r["ok"] >= 1 for r in newest)

    again = await run_cli("prune", env=env, cwd=workdir)
    assert again.code == 0 and counts(again.stdout) == {"runs": 0, "snapshots": 0, "history": 0}


async def test_prune_keeps_for_ever_by_default_and_fails_with_1(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    await sql.execute(
        "INSERT INTO projects (project_id, region) VALUES ('p', 'r'); "
        "INSERT INTO sync_runs (project_id, started_at, finished_at, status) "
        "SELECT 'p', now() - make_interval(days => n), now(), 'succeeded' "
        "FROM generate_series(1, 200, 10) AS n"
    )
    env = {"SNAPSYNC_DATABASE_URL": database_url}
    result = await run_cli("prune", env=env, cwd=workdir)
    assert result.code == 0, result.output
    assert "deleted snapshots: kept for ever" in result.stdout
    assert counts_runs(result.stdout) == 11  # started 91..191 days ago; the newest stays
    for_ever = await run_cli("prune", env={**env, "SNAPSYNC_RETAIN_RUNS_DAYS": ""}, cwd=workdir)
    assert for_ever.code == 0 and "sync_runs: kept for ever" in for_ever.stdout
    broken = await run_cli(
        "prune",
        env={"SNAPSYNC_DATABASE_URL": database_url.rsplit("/", 1)[0] + "/no_such_database"},
        cwd=workdir,
    )
    assert broken.code == 1 and "Traceback" not in broken.output


def counts_runs(text: str) -> int:
    found = re.search(r"sync_runs: removed (\d+) run", text)
    assert found, text
    return int(found[1])


async def test_the_daemon_applies_retention_while_it_syncs(
    database_url: str,
    sql: asyncpg.Connection,
    workdir: Path,
    launch: Launch,  # noqa: F811
) -> None:
    async with serve(projects=2, snapshots=12) as sim:
        found = await populate(sim, database_url, workdir)
        expected = await age(sql, found["first"], found["deleted"])
        running = await launch(
            env_for(
                sim,
                database_url,
                **KEEP,
                SNAPSYNC_PRUNE_INTERVAL="1",
                SNAPSYNC_PRUNE_BATCH_SIZE="2",  # several batches
            )
        )

        async def pruned() -> bool:
            ids = {r["id"] for r in await sql.fetch("SELECT id FROM sync_runs")}
            gone = await sql.fetchval(
                "SELECT count(*) FROM snapshot_records "
                "WHERE deleted_at < now() - interval '30 days'"
            )
            return not ids & expected["runs"] and gone == 0

        await wait_for(pruned, timeout=30, what="the daemon's pruning")
        # The daemon abandons the stale `running` run as it syncs; then it is old like the rest.
        assert expected["kept_runs"] - {expected["running"]} <= {
            r["id"] for r in await sql.fetch("SELECT id FROM sync_runs")
        }

        async def synced_since() -> bool:
            return bool(
                await sql.fetchval(
                    "SELECT count(*) FROM sync_runs WHERE status = 'succeeded' "
                    "AND started_at > now() - interval '1 minute'"
                )
            )

        await wait_for(synced_since, timeout=30, what="syncs alongside the pruning")
        assert await running.signal_and_wait(signal.SIGTERM) == 0
    assert "retention removed" in running.log, running.log


@pytest.mark.parametrize(
    ("dry_run", "runs", "deleted", "expected"),
    [
        (True, 90.0, None, ["would remove 3 run(s)", "kept for ever (SNAPSYNC_RETAIN_DELETED"]),
        (False, None, 30.0, ["sync_runs: kept for ever", "removed 2 snapshot(s)", "7 history"]),
    ],
)
def test_outcome_lines_say_what_went(
    dry_run: bool, runs: float | None, deleted: float | None, expected: list[str]
) -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 12, 1, tzinfo=UTC)
    policy = retention.Policy(runs_days=runs, deleted_days=deleted)
    outcome = retention.Outcome(
        dry_run=dry_run,
        runs=3,
        snapshots=2,
        history=7,
        runs_cutoff=retention._cutoff(now, runs),
        deleted_cutoff=retention._cutoff(now, deleted),
    )
    text = "\n".join(outcome.lines(policy))
    for part in expected:
        assert part in text, text
