"""How tightly snapsync brackets `creating -> create_success`, with and without the fast lane.

    .venv/bin/python benchmarks/hot_lane.py                      # 240 s, hot lane every 5 s
    .venv/bin/python benchmarks/hot_lane.py --hot-interval 0     # the same without it
    .venv/bin/python benchmarks/hot_lane.py --duration 60 --database-url postgresql://...

One run: a simulator process (`snapsync simulate`, ticking every second, so snapshots are
created and finish all the time, short and long creations), a throwaway database, and one
`snapsync run` with SNAPSYNC_SYNC_INTERVAL=300 (default) for `--duration` seconds. Printed:
the median and 90th percentile of `observed_at - previous_observed_at` over the
`creating -> create_success` transitions seen after the first full sync, how many of them the
hot lane saw, and the API requests the hot lane cost, per hour.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=240)
    parser.add_argument("--sync-interval", type=float, default=300)
    parser.add_argument("--hot-interval", type=float, default=5, help="0: no fast lane")
    parser.add_argument("--projects", type=int, default=3)
    parser.add_argument("--snapshots", type=int, default=2000)
    parser.add_argument("--change-rate", type=float, default=0.002)
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a server where a throwaway database is created and dropped",
    )
    return parser.parse_args()


async def metric_sum(port: int, name: str, label: str = "") -> float:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def main() -> None:
    args = parse_args()
    database = f"snapsync_hotbench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(args.database_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = args.database_url.rsplit("/", 1)[0] + f"/{database}"
    sim_port, http_port = free_port(), free_port()
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "simulate",
            "--port",
            str(sim_port),
            "--projects",
            str(args.projects),
            "--snapshots",
            str(args.snapshots),
            "--tick-seconds",
            "1",
            "--change-rate",
            str(args.change_rate),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    daemon: subprocess.Popen[str] | None = None
    try:
        assert sim.stdout is not None
        projects = ""
        while not projects:
            line = sim.stdout.readline()
            if not line:
                raise SystemExit("the simulator did not start")
            if line.startswith("SNAPSYNC_PROJECTS="):
                projects = line.strip().split("=", 1)[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPSYNC_")}
        env.update(
            SNAPSYNC_DATABASE_URL=url,
            SNAPSYNC_WORKSPACE_ENDPOINT=f"http://127.0.0.1:{sim_port}",
            SNAPSYNC_PROJECTS=projects,
            SNAPSYNC_AUTH="token",
            SNAPSYNC_AUTH_TOKEN="snapsync-dev-token",
            SNAPSYNC_SYNC_INTERVAL=str(args.sync_interval),
            SNAPSYNC_HOT_INTERVAL=str(args.hot_interval or 10**9),
            SNAPSYNC_HTTP_PORT=str(http_port),
            SNAPSYNC_LOG_LEVEL="WARNING",
        )
        subprocess.run(
            [sys.executable, "-m", "app", "migrate"],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        daemon = subprocess.Popen([sys.executable, "-m", "app", "run"], env=env, cwd=REPO)
        started = time.monotonic()
        await asyncio.sleep(args.duration)
        elapsed = time.monotonic() - started
        requests = await metric_sum(http_port, "snapsync_api_requests_total")
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
        conn = await asyncpg.connect(url)
        try:
            first_full_end = await conn.fetchval(
                "SELECT max(finished_at) FROM (SELECT DISTINCT ON (project_id) finished_at "
                "FROM sync_runs WHERE kind = 'full' ORDER BY project_id, started_at) f"
            )
            rows = await conn.fetch(
                "SELECT EXTRACT(EPOCH FROM h.observed_at - h.previous_observed_at) AS w, r.kind "
                "FROM snapshot_status_history h JOIN sync_runs r ON r.id = h.sync_run_id "
                "WHERE h.from_status = 'creating' AND h.to_status = 'create_success' "
                "AND h.observed_at > $1",
                first_full_end,
            )
            full_requests = await conn.fetchval(
                "SELECT coalesce(sum(requests), 0) FROM sync_runs WHERE kind = 'full'"
            )
            full_runs = await conn.fetchval("SELECT count(*) FROM sync_runs WHERE kind = 'full'")
            hot_runs = await conn.fetchval("SELECT count(*) FROM sync_runs WHERE kind = 'hot'")
        finally:
            await conn.close()
        windows = sorted(float(r["w"]) for r in rows)
        hot_seen = sum(1 for r in rows if r["kind"] == "hot")
        hot_requests = requests - float(full_requests)
        result = {
            "duration_s": round(elapsed, 1),
            "sync_interval_s": args.sync_interval,
            "hot_interval_s": args.hot_interval or None,
            "population": f"{args.projects} x {args.snapshots}",
            "create_success_transitions": len(windows),
            "seen_by_hot_lane": hot_seen,
            "window_median_s": round(statistics.median(windows), 2) if windows else None,
            "window_p90_s": round(windows[int(0.9 * (len(windows) - 1))], 2) if windows else None,
            "full_runs": full_runs,
            "hot_runs_that_wrote": hot_runs,
            "api_requests_total": int(requests),
            "hot_lane_requests": int(hot_requests),
            "hot_lane_requests_per_hour": round(hot_requests * 3600 / elapsed),
        }
        print(json.dumps(result, indent=2))
    finally:
        for proc in (daemon, sim):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
