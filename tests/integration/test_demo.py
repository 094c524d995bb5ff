"""`snapsync demo` run as a user runs it: the report, the data it leaves, nothing left running."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from app.demo import explore, saved


def demo_argv() -> list[str]:
    """`python -m app demo`."""
    return [sys.executable, "-m", "app", "demo"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SNAPSYNC_", "PG"))}
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def run_demo(
    cwd: Path, env: dict[str, str], *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    # stdout is a pipe, not a terminal: the demo prints plain lines, as in CI.
    return subprocess.run(
        [*demo_argv(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def postgres_processes(data_dir: Path) -> list[int]:
    pgdata = str((data_dir / "pgdata").resolve())
    found = []
    for process in psutil.process_iter(["name", "cwd"]):
        if process.info["name"] == "postgres" and process.info["cwd"] == pgdata:
            found.append(process.pid)
    return found


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A short directory (Unix socket paths are short) that also serves as the working dir."""
    directory = Path(tempfile.mkdtemp(prefix="sd-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def query(cwd: Path, env: dict[str, str], sql: str) -> list[int]:
    """One row of integers, through the command the demo prints for exploring its data."""
    done = run_demo(cwd, env, "--psql", "--", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql)
    assert done.returncode == 0, done.stderr
    return [int(value) for value in done.stdout.strip().split("|")]


COUNTS = """
SELECT (SELECT count(*) FROM sync_runs),
       (SELECT count(*) FROM sync_runs WHERE status <> 'succeeded'),
       (SELECT count(*) FROM sync_runs WHERE project_id LIKE '0123%'),
       (SELECT count(DISTINCT project_id) FROM snapshots),
       (SELECT count(*) FROM snapshots),
       (SELECT count(*) FROM snapshot_status_history)
"""


def test_demo_twice_keeps_data_and_leaves_nothing_running(demo_dir: Path) -> None:
    data_dir = demo_dir / "data"
    # Whatever the user configured for real is ignored by the demo (it syncs its simulator).
    env = clean_env(
        SNAPSYNC_DATA_DIR=str(data_dir),
        SNAPSYNC_PROJECTS="0123456789abcdef0123456789abcdef",
        SNAPSYNC_AUTH="aksk",
        SNAPSYNC_ACCESS_KEY="not-a-real-key",
        SNAPSYNC_SECRET_KEY="not-a-real-secret",
    )

    first = run_demo(demo_dir, env, "--duration", "8")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Snapshots by status" in first.stdout
    assert "Status transitions seen by this demo" in first.stdout
    assert "Slowest creations" in first.stdout
    assert "Stale projects" in first.stdout
    assert "demo --psql" in first.stdout
    assert "/psql -h " in first.stdout  # the embedded server's own psql command
    assert "succeeded run=" in first.stdout  # plain progress lines, not a live table
    assert "Traceback" not in first.stderr
    assert postgres_processes(data_dir) == []

    runs, not_succeeded, foreign, projects, snapshots, history = query(demo_dir, env, COUNTS)
    assert runs >= 4
    assert not_succeeded == 0
    assert foreign == 0  # the user's SNAPSYNC_PROJECTS was not synced
    assert projects == 4
    assert snapshots >= 4 * 1800
    assert history >= snapshots
    assert postgres_processes(data_dir) == []

    second = run_demo(demo_dir, env, "--duration", "4")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resumed at tick 0" not in second.stdout  # the simulator continues, not rewinds
    runs_now, _, _, projects_now, snapshots_now, _ = query(demo_dir, env, COUNTS)
    assert runs_now > runs
    assert projects_now == 4
    assert snapshots_now >= snapshots  # deleted snapshots stay, with deleted_at
    assert postgres_processes(data_dir) == []


def test_demo_uses_the_configured_database(demo_dir: Path, database_url: str) -> None:
    env = clean_env(SNAPSYNC_DATABASE_URL=database_url, SNAPSYNC_DATA_DIR=str(demo_dir / "d"))
    done = run_demo(demo_dir, env, "--duration", "3", "--projects", "2", "--snapshots", "200")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Stale projects: none of the 2 known." in done.stdout
    assert "Explore the data" in done.stdout
    assert "postgresql://" in done.stdout
    assert not (demo_dir / "d" / "pgdata").exists()
    assert query(demo_dir, env, "SELECT count(DISTINCT project_id) FROM sync_runs") == [2]


def test_psql_url_never_carries_the_password() -> None:
    url, password = explore.libpq_url("postgresql+asyncpg://reader:s3cret@db.example:5433/snap")
    assert url == "postgresql://reader@db.example:5433/snap"
    assert password == "s3cret"


def test_the_simulator_resumes_only_the_same_population() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    wanted = saved.SavedSimulation(
        seed=1, projects=4, snapshots=2000, change_rate=0.002, start_time=start, ticks=0
    )
    earlier = dataclasses.replace(wanted, start_time=start - timedelta(days=3), ticks=120)
    assert saved.resume_state(wanted, earlier) == earlier
    assert saved.resume_state(wanted, None) == wanted
    assert saved.resume_state(wanted, dataclasses.replace(earlier, seed=2)) == wanted
    assert saved.resume_state(wanted, dataclasses.replace(earlier, projects=5)) == wanted
    too_long = dataclasses.replace(earlier, ticks=saved.MAX_RESUME_TICKS + 1)
    assert saved.resume_state(wanted, too_long) == wanted
