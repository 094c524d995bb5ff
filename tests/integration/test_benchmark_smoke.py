"""The benchmarks run end to end at their smallest sizes and print their tables; no timing asserted.

bench.py (the sync) and reporting.py (the shipped queries on a generated database): CI checks
that they run, that they measure what they say, and that what they generate is what the sync
writes, not how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from app import items
from app.simulator.model import API_FIELDS

from ..conftest import REPO, _asyncpg_dsn, cli_env
from . import test_coverage as coverage

BENCH = REPO / "benchmarks" / "bench.py"
REPORTING = REPO / "benchmarks" / "reporting.py"
PHASES = (
    "bare fetch + JSON decode",
    "COPY ceiling (unlogged, no index)",
    "COPY, logged + indexes, records + history",
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
    "initial / (bare fetch + logged COPY of records and history)",
    "change resync: API requests / pages read",
)


async def run_script(script: Path, *args: str, cwd: Path) -> tuple[int, str, str]:
    """Run a benchmark script as a child process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        env=cli_env({}),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


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
    code, stdout, stderr = await run_script(
        BENCH, "--quick", "--database-url", pg_server_url, "--json", str(results), cwd=tmp_path
    )
    assert code == 0, stdout + stderr

    assert "| phase" in stdout and "snapshots/s" in stdout and "peak RSS MB" in stdout
    for phase in PHASES:
        assert phase in stdout
    for ratio in RATIOS:
        assert ratio in stdout
    assert "rows written (pg_stat_user_tables deltas" in stdout
    assert "API requests per sync" in stdout
    # The syncs did what the change says: the snapshots were stored, changed and deleted.
    payload = json.loads(results.read_text())
    assert payload["total"] == 4000
    phases = payload["phases"]
    assert phases["initial"]["counts"]["inserted"] == 4000
    assert phases["unchanged"]["writes"]["snapshot_records"] == [0, 0, 0]
    assert phases["change"]["counts"]["updated"] == payload["change"]["changed"]
    assert phases["change"]["counts"]["inserted"] == payload["change"]["added"]
    assert phases["confirm"]["counts"]["deleted"] == payload["change"]["deleted"]
    # The latency phase: one project of 4,000 behind 0.25 s a request (--quick).
    for name in (
        "latency: plain fetch, page 1 then 4 at a time",
        "latency: snapsync initial sync",
        "latency: snapsync unchanged resync",
        "latency: initial / plain 4-way fetch",
        "latency: unchanged / plain 4-way fetch",
    ):
        assert name in stdout
    assert phases["latency_initial"]["counts"]["inserted"] == 4000
    assert phases["latency_unchanged"]["writes"]["snapshot_records"] == [0, 0, 0]
    assert phases["latency_unchanged"]["requests"] == phases["latency_fetch"]["requests"] == 4
    # The benchmark dropped the databases it made.
    assert await bench_databases(pg_server_url) == before


def doc_headings() -> list[str]:
    """The heading above each ```sql block of docs/reporting.md."""
    headings: list[str] = []
    heading = ""
    in_sql = False
    for line in (REPO / "docs" / "reporting.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not in_sql:
            heading = line.lstrip("#").strip()
        elif line.strip() == "```sql":
            in_sql = True
            headings.append(heading)
        elif line.strip() == "```":
            in_sql = False
    return headings


def sql_panels() -> list[tuple[str, bool]]:
    """(title, has a time range) of every PostgreSQL panel of the dashboard."""
    dashboard = json.loads((REPO / "docs" / "grafana" / "snapsync.json").read_text())
    found = []
    stack = list(dashboard["panels"])
    while stack:
        panel = stack.pop()
        stack.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            if target.get("rawSql"):
                found.append((panel["title"], "$__time" in target["rawSql"]))
    return found


async def test_reporting_benchmark_times_every_doc_query_and_panel(
    database_url: str, tmp_path: Path
) -> None:
    results = tmp_path / "results.json"
    code, out, err = await run_script(
        REPORTING, "--database", database_url, "--size", "smoke", "--repeats", "1",
        "--json", str(results), cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, out + err

    rows = {
        m[1]: m[2]
        for m in re.finditer(r"^\| ((?:doc|panel|cli|variable): [^|]+?) \| ([^|]+) \|", out, re.M)
    }
    headings = doc_headings()
    assert len(headings) >= 15
    for heading in headings:
        assert f"doc: {heading}" in rows, heading
    panels = sql_panels()
    assert len(panels) >= 12
    for title, timed in panels:
        for scope in ("all", "one"):
            for range_name in ("24h", "30d") if timed else ("any",):
                assert f"panel: {title} [{range_name}, {scope}]" in rows, (title, scope)
    assert "cli: snapsync status" in rows
    # Every one answered (a number of milliseconds, not a timeout or an error).
    for name, cell in rows.items():
        assert re.fullmatch(r"[\d,]+\.\d", cell.strip()), (name, cell)
    # The quarter-size run happened and the growth column is filled.
    assert re.search(r"\| growth \|", out)
    payload = json.loads(results.read_text())
    assert len(payload["quarter_results"]) == len(payload["results"])

    # The rows are what a sync writes: history ids in time order, every history row's run
    # present where it names one, a deletion row for each deleted snapshot, live rows hashed
    # as the sync hashes them.
    conn = await asyncpg.connect(**_asyncpg_dsn(database_url))  # type: ignore[arg-type]
    try:
        counts = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM snapshot_records) AS records,
                   (SELECT count(*) FROM snapshot_records WHERE deleted_at IS NULL) AS live,
                   (SELECT count(*) FROM snapshot_status_history
                     WHERE to_status = 'deleted') AS deletions,
                   (SELECT count(*) FROM snapshot_records
                     WHERE deleted_at IS NOT NULL) AS deleted,
                   (SELECT count(*) FROM sync_runs) AS runs,
                   (SELECT count(*) FROM projects) AS projects
            """
        )
        assert counts["projects"] == 3
        assert counts["runs"] == 3 * 2 * 288
        assert counts["deletions"] == counts["deleted"] > 0
        assert 3 * 8 * 9 <= counts["live"] <= 3 * 8 * 11
        disordered = await conn.fetchval(
            """
            SELECT count(*) FROM (
                SELECT observed_at < lag(observed_at) OVER (ORDER BY id) AS back
                FROM snapshot_status_history
            ) AS h WHERE back
            """
        )
        assert disordered == 0
        # Every snapshot's history starts with its first sighting, as creating.
        firsts = await conn.fetch(
            "SELECT DISTINCT ON (project_id, snapshot_id) from_status, to_status "
            "FROM snapshot_status_history ORDER BY project_id, snapshot_id, observed_at, id"
        )
        assert len(firsts) == counts["records"]
        assert {(r["from_status"], r["to_status"]) for r in firsts} == {(None, "creating")}
        # The history's end agrees with the stored row.
        mismatched = await conn.fetchval(
            """
            SELECT count(*) FROM snapshot_records AS r
            JOIN LATERAL (SELECT to_status, from_status FROM snapshot_status_history AS h
                          WHERE h.project_id = r.project_id AND h.snapshot_id = r.snapshot_id
                          ORDER BY observed_at DESC, id DESC LIMIT 1) AS last ON true
            WHERE CASE WHEN r.deleted_at IS NULL THEN last.to_status <> r.status
                       ELSE last.to_status <> 'deleted' OR last.from_status <> r.status END
            """
        )
        assert mismatched == 0
        live = await conn.fetch(
            "SELECT raw::text AS raw, content_hash FROM snapshot_records WHERE deleted_at IS NULL"
        )
        for row in live:
            raw = json.loads(row["raw"])
            item = {key: raw[key] for key in API_FIELDS if key in raw}
            assert item == raw
            assert items.parse_item(item).content_hash == row["content_hash"]
        # Every desktop has its coverage row, and the view answers what the lookups answer.
        assert await conn.fetchval("SELECT count(*) FROM snapshot_desktops") == 3 * 8
        assert await coverage.assert_coverage_is_exact(conn) == 3 * 8
    finally:
        await conn.close()

    # The quarter database the run made for itself is gone.
    admin = await asyncpg.connect(**_asyncpg_dsn(database_url, "postgres"))  # type: ignore[arg-type]
    try:
        quarter = f"{make_url(database_url).database}_q"
        assert not await admin.fetchval(
            "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", quarter
        )
    finally:
        await admin.close()
