"""The benchmark runs end to end at its smallest size and prints its tables; no timing asserted."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import asyncpg

from .conftest import REPO, _asyncpg_dsn, cli_env

BENCH = REPO / "benchmarks" / "bench.py"
PHASES = (
    "bare fetch + JSON decode",
    "COPY ceiling (unlogged, no index)",
    "naive ORM merge (extrapolated from",
    "snapsync initial sync",
    "snapsync unchanged resync",
    "snapsync resync after change",
    "snapsync next resync (deletes)",
)
RATIOS = (
    "initial / (bare fetch + COPY ceiling)",
    "unchanged / bare fetch",
    "change / bare fetch",
    "snapsync initial rate / naive rate",
    "peak RSS of snapsync sync, MB",
)


async def bench_databases(server_url: str) -> set[str]:
    conn = await asyncpg.connect(**_asyncpg_dsn(server_url))  # type: ignore[arg-type]
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE 'snapsync_bench_%'"
        )
    finally:
        await conn.close()
    return {row["datname"] for row in rows}


async def test_quick_benchmark_runs_and_prints_its_tables(
    pg_server_url: str, tmp_path: Path
) -> None:
    before = await bench_databases(pg_server_url)
    results = tmp_path / "results.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(BENCH),
        "--quick",
        "--database-url",
        pg_server_url,
        "--json",
        str(results),
        env=cli_env({}),
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    stdout = out.decode()
    assert proc.returncode == 0, stdout + err.decode()

    assert "| phase" in stdout and "snapshots/s" in stdout and "peak RSS MB" in stdout
    for phase in PHASES:
        assert phase in stdout
    for ratio in RATIOS:
        assert ratio in stdout
    assert "rows written (pg_stat_user_tables deltas" in stdout
    # The syncs did what the change says: the snapshots were stored, changed and deleted.
    payload = json.loads(results.read_text())
    assert payload["total"] == 4000
    phases = payload["phases"]
    assert phases["initial"]["counts"]["inserted"] == 4000
    assert phases["unchanged"]["writes"]["snapshot_records"] == [0, 0, 0]
    assert phases["change"]["counts"]["updated"] == payload["change"]["changed"]
    assert phases["change"]["counts"]["inserted"] == payload["change"]["added"]
    assert phases["confirm"]["counts"]["deleted"] == payload["change"]["deleted"]
    # The benchmark dropped the database it made.
    assert await bench_databases(pg_server_url) == before
