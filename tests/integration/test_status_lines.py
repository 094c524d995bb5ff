"""`snapsync status` at many projects: one line per project and a summary; --project narrows it
to the named ones, shown in full."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from ..conftest import run_cli
from .simulated import serve


async def test_status_prints_a_line_per_project_and_a_summary(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=5, snapshots=6) as sim:
        env = {**sim.env(), "SNAPSYNC_DATABASE_URL": database_url}
        await sim.control("POST", "/_sim/faults", {"forbidden_projects": 1})
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 1
        failing = sim.project_ids[0]
        result = await run_cli("status", env={"SNAPSYNC_DATABASE_URL": database_url}, cwd=workdir)
        assert result.code == 0, result.output
        lines = result.stdout.splitlines()
        for pid in sim.project_ids:
            (line,) = [line for line in lines if pid in line]
            assert ("failed" if pid == failing else "succeeded") in line, line
            if pid != failing:
                assert " 6 " in line, line  # live snapshots
        assert "project " + failing not in result.stdout  # no per-project tables
        assert len(lines) <= len(sim.project_ids) + 6, result.stdout
        (summary,) = [line for line in lines if line.startswith("5 project(s)")]
        assert "1 failed, 4 succeeded" in summary and "1 failing" in summary, summary
        assert "24 live snapshots" in summary, summary

        chosen = sim.project_ids[1:3]
        narrow = await run_cli(
            "status",
            *[arg for pid in chosen for arg in ("--project", pid)],
            env={"SNAPSYNC_DATABASE_URL": database_url},
            cwd=workdir,
        )
        assert narrow.code == 0, narrow.output
        for pid in sim.project_ids:
            assert (f"project {pid}" in narrow.stdout) == (pid in chosen), narrow.stdout
        assert "live snapshots: 6," in narrow.stdout
        assert "2 project(s), last runs: 2 succeeded" in narrow.stdout
        as_json = await run_cli(
            "status",
            "--json",
            "--project",
            failing,
            env={"SNAPSYNC_DATABASE_URL": database_url},
            cwd=workdir,
        )
        (only,) = json.loads(as_json.stdout)
        assert only["project_id"] == failing and only["consecutive_failures"] == 1
        assert only["failed_runs"] and only["last_run"]["status"] == "failed"
