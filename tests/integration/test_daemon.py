"""`snapsync run`: real daemon processes against the simulator and PostgreSQL.

The schedule policy and readiness rules are checked as pure functions first; then daemons run
as the operator runs them, and the assertions read the tables, the endpoints and exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from app import daemon, db, dbwatch, errors, health
from app import settings as settings_module

from ..conftest import _asyncpg_dsn, cli_env
from .simulated import RunningSimulator, serve

INTERVAL = 1.0


# -- pure rules ---------------------------------------------------------------------------------


def test_a_project_is_due_an_interval_after_its_newest_run_started() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert daemon.is_due(None, now, 300)
    assert daemon.is_due(now - timedelta(seconds=300), now, 300)
    # The slack absorbs the jitter and late firings of the one replica that synced last...
    assert daemon.is_due(now - timedelta(seconds=300 - daemon.jitter_for(300)), now, 300)
    # ...but a project synced half an interval ago by another replica is not due.
    assert not daemon.is_due(now - timedelta(seconds=150), now, 300)
    assert daemon.slack_for(300) > daemon.jitter_for(300)
    assert dbwatch.retry_delay(1) == dbwatch.FIRST_RETRY_SECONDS
    assert dbwatch.retry_delay(3) == 4 * dbwatch.FIRST_RETRY_SECONDS
    assert dbwatch.retry_delay(50) == dbwatch.MAX_RETRY_SECONDS


def test_readiness_names_the_stale_projects() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    state = health.assess(
        now=now,
        project_ids=["fresh", "old", "never"],
        last_success={"fresh": now - timedelta(seconds=10), "old": now - timedelta(seconds=1000)},
        database_ok=True,
        database_error=None,
        stale_after=900,
    )
    assert not state.ready
    assert [s.project_id for s in state.stale] == ["old", "never"]
    body = state.as_json()
    assert body["stale"][0]["age_seconds"] == 1000.0
    assert body["stale"][1]["last_success_at"] is None
    down = health.assess(
        now=now,
        project_ids=["fresh"],
        last_success={"fresh": now},
        database_ok=False,
        database_error="ConnectionRefusedError: ...",
        stale_after=900,
    )
    assert not down.ready
    assert down.as_json()["database"].startswith("unreachable")


def test_shutdown_grace_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(daemon.GRACE_VARIABLE, raising=False)
    assert daemon.shutdown_grace(settings_module.load_settings()) == 30.0
    (tmp_path / ".env").write_text(f"{daemon.GRACE_VARIABLE}=12\n")
    assert daemon.shutdown_grace(settings_module.load_settings()) == 12.0
    monkeypatch.setenv(daemon.GRACE_VARIABLE, "2.5")
    assert daemon.shutdown_grace(settings_module.load_settings()) == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(daemon.GRACE_VARIABLE, bad)
        with pytest.raises(errors.ConfigError, match=daemon.GRACE_VARIABLE):
            daemon.shutdown_grace(settings_module.load_settings())


async def test_a_waiting_task_ends_when_cancelled_as_its_event_is_set() -> None:
    # asyncio.wait_for on Python 3.11 swallows such a cancellation: a daemon then never stops.
    event = asyncio.Event()

    async def monitor() -> None:
        while True:
            await dbwatch.wait_event(event, 5)
            event.clear()

    task = asyncio.create_task(monitor())
    await asyncio.sleep(0.01)
    event.set()
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()


# -- running daemons ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_command() -> list[str]:
    """`snapsync run`, as the console script runs it."""
    return [sys.executable, "-m", "app", "run"]


@dataclass
class RunningDaemon:
    """One `snapsync run` process, its endpoints and its log."""

    proc: asyncio.subprocess.Process
    port: int
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(f"http://127.0.0.1:{self.port}{path}") as response,
        ):
            return response.status, await response.text()

    async def wait_http(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.returncode is None, f"daemon exited early:\n{self.log}"
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await self.get("/healthz")
                return
            assert time.monotonic() < deadline, f"no /healthz after {timeout}s:\n{self.log}"
            await asyncio.sleep(0.1)

    async def signal_and_wait(self, signum: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(signum)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s:\n{self.log}") from None


Launch = Callable[..., Awaitable[RunningDaemon]]


@pytest.fixture
async def launch(workdir: Path) -> AsyncIterator[Launch]:
    """Start daemons (each on its own HTTP port); kill whatever is left at the end."""
    started: list[RunningDaemon] = []

    async def start(env: dict[str, str], *, wait: bool = True) -> RunningDaemon:
        port = free_port()
        log_path = workdir / f"daemon-{len(started)}.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *daemon_command(),
                env=cli_env(
                    {
                        "SNAPSYNC_HTTP_PORT": str(port),
                        "SNAPSYNC_SYNC_INTERVAL": str(INTERVAL),
                        **env,
                    }
                ),
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
            )
        running = RunningDaemon(proc=proc, port=port, log_path=log_path)
        started.append(running)
        if wait:
            await running.wait_http()
        return running

    yield start
    for running in started:
        if running.proc.returncode is None:
            running.proc.kill()
            await running.proc.wait()


async def wait_for(
    check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, every: float = 0.2
) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(every)


def env_for(sim: RunningSimulator, database_url: str, **extra: str) -> dict[str, str]:
    return {**sim.env(**extra), "SNAPSYNC_DATABASE_URL": database_url}


async def runs(sql: asyncpg.Connection, status: str | None = None) -> list[asyncpg.Record]:
    if status is None:
        return await sql.fetch("SELECT * FROM sync_runs ORDER BY id")
    return await sql.fetch("SELECT * FROM sync_runs WHERE status = $1 ORDER BY id", status)


async def test_daemon_mirrors_changes_within_an_interval_and_serves_its_endpoints(
    database_url: str, sql: asyncpg.Connection, launch: Launch
) -> None:
    async with serve(projects=2, snapshots=30) as sim:
        first, second = sim.project_ids
        running = await launch(env_for(sim, database_url))

        async def ready() -> bool:
            status, _ = await running.get("/readyz")
            return status == 200

        await wait_for(ready, timeout=10, what="/readyz to answer 200")
        status, body = await running.get("/healthz")
        assert status == 200
        assert json.loads(body)["status"] == "ok"
        assert json.loads(body)["jobs"] == 3  # two projects and the hot lane

        # A change in the API shows in the tables within about an interval.
        snap = sim.population.snapshots(first)[0]
        old_status = snap.status
        new_status = "restoring" if old_status != "restoring" else "create_success"
        sim.population.set_fields(first, snap.snapshot_id, {"status": new_status})
        changed_at = time.monotonic()

        async def history_row() -> Any:
            return await sql.fetchrow(
                "SELECT * FROM snapshot_status_history WHERE project_id = $1 "
                "AND snapshot_id = $2 AND to_status = $3",
                first,
                snap.snapshot_id,
                new_status,
            )

        await wait_for(history_row, timeout=3 * INTERVAL, what="the status change in the history")
        assert time.monotonic() - changed_at < 2 * INTERVAL + 1
        row = await sql.fetchrow(
            "SELECT status FROM snapshots WHERE project_id = $1 AND snapshot_id = $2",
            first,
            snap.snapshot_id,
        )
        assert row["status"] == new_status

        transition = (
            f'snapsync_status_transitions_total{{from_status="{old_status}",'
            f'project_id="{first}",to_status="{new_status}"}} 1.0'
        )

        async def scraped() -> str | None:
            status, text = await running.get("/metrics")
            assert status == 200
            return text if transition in text else None

        text = await wait_for(scraped, timeout=3, what="the transition in /metrics")
        assert f'snapsync_sync_runs_total{{outcome="succeeded",project_id="{first}"}}' in text
        assert "snapsync_sync_duration_seconds_bucket" in text
        assert f'snapsync_api_requests_total{{code="200",project_id="{first}"}}' in text
        assert f'snapsync_seconds_since_last_success{{project_id="{second}"}}' in text
        assert f'snapsync_snapshots{{project_id="{first}",status="{new_status}"}}' in text
        assert f'from_status="none",project_id="{second}",to_status=' in text
        assert "snapsync_database_up 1.0" in text

        # A project that keeps failing becomes stale: /readyz says which one, with 503.
        await sim.control("POST", "/_sim/faults", {"forbidden_projects": 1})

        async def stale() -> Any:
            status, body = await running.get("/readyz")
            return json.loads(body) if status == 503 else None

        body = await wait_for(stale, timeout=(health.STALE_INTERVALS + 3) * INTERVAL, what="503")
        assert [s["project_id"] for s in body["stale"]] == [first]
        assert body["database"] == "ok"
        assert await runs(sql, "failed")

        assert await running.signal_and_wait(signal.SIGTERM) == 0
    assert not await runs(sql, "running")
    log = running.log
    assert "sync started" in log and "sync succeeded" in log
    assert sim.options.auth_token and sim.options.auth_token not in log


async def test_sigterm_lets_a_running_sync_finish_within_the_grace_period(
    database_url: str, sql: asyncpg.Connection, launch: Launch
) -> None:
    async with serve(projects=1, snapshots=20, latency=0.4) as sim:
        # Pages one after another (4 of 0.4 s): the sync is seen running before it ends.
        env = env_for(
            sim,
            database_url,
            SNAPSYNC_PAGE_SIZE="5",
            SNAPSYNC_MAX_CONCURRENT_REQUESTS="1",
            SNAPSYNC_SHUTDOWN_GRACE="20",
            SNAPSYNC_LOG_FORMAT="json",
        )
        running = await launch(env)

        async def in_flight() -> Any:
            return await runs(sql, "running")

        await wait_for(in_flight, timeout=10, what="a running sync")
        began = time.monotonic()
        assert await running.signal_and_wait(signal.SIGTERM) == 0
        assert time.monotonic() - began < 20
    rows = await runs(sql)
    assert [r["status"] for r in rows] == ["succeeded"]
    assert rows[0]["complete"]
    # JSON lines, the sync's lines carrying the project and run ids.
    entries = [json.loads(line) for line in running.log.splitlines()]
    ends = [e for e in entries if e["message"].startswith("sync succeeded")]
    assert ends and ends[0]["project_id"] == sim.project_ids[0]
    assert ends[0]["run_id"] == rows[0]["id"]


async def test_sigterm_interrupts_a_sync_that_outlasts_the_grace_period(
    database_url: str, sql: asyncpg.Connection, launch: Launch
) -> None:
    async with serve(projects=1, snapshots=40, latency=0.5) as sim:
        # Pages one after another: 8 pages of 0.5 s outlast the 1 s grace.
        env = env_for(
            sim,
            database_url,
            SNAPSYNC_PAGE_SIZE="5",
            SNAPSYNC_SHUTDOWN_GRACE="1",
            SNAPSYNC_MAX_CONCURRENT_REQUESTS="1",
        )
        running = await launch(env)

        async def in_flight() -> Any:
            return await runs(sql, "running")

        await wait_for(in_flight, timeout=10, what="a running sync")
        began = time.monotonic()
        assert await running.signal_and_wait(signal.SIGTERM) == 0
        assert time.monotonic() - began < 1 + 3
    rows = await runs(sql)
    assert [r["status"] for r in rows] == ["failed"]
    assert "interrupted" in rows[0]["error"]
    assert "interrupting 1 sync(s)" in running.log


async def test_a_killed_daemons_run_is_marked_abandoned_by_the_next_one(
    database_url: str, sql: asyncpg.Connection, launch: Launch
) -> None:
    async with serve(projects=1, snapshots=40, latency=0.5) as sim:
        # Pages one after another (8 of 0.5 s): the sync runs long enough to be killed in.
        env = env_for(
            sim, database_url, SNAPSYNC_PAGE_SIZE="5", SNAPSYNC_MAX_CONCURRENT_REQUESTS="1"
        )
        killed = await launch(env)

        async def in_flight() -> Any:
            return await runs(sql, "running")

        (orphan,) = await wait_for(in_flight, timeout=10, what="a running sync")
        assert await killed.signal_and_wait(signal.SIGKILL) == -signal.SIGKILL
        assert (await runs(sql, "running"))[0]["id"] == orphan["id"]

        await sim.control("POST", "/_sim/faults", {"latency": 0})
        restarted = await launch(env)

        async def succeeded() -> Any:
            return await runs(sql, "succeeded")

        await wait_for(succeeded, timeout=10, what="a successful sync after the restart")
        assert await restarted.signal_and_wait() == 0
    row = await sql.fetchrow("SELECT * FROM sync_runs WHERE id = $1", orphan["id"])
    assert row["status"] == "abandoned"
    assert row["finished_at"] is not None
    assert not await runs(sql, "running")


async def test_three_replicas_share_the_projects_and_keep_the_interval(
    database_url: str, sql: asyncpg.Connection, launch: Launch
) -> None:
    duration = 10.0
    async with serve(projects=6, snapshots=40, tick_seconds=0.3, change_rate=0.02) as sim:
        env = env_for(sim, database_url)
        replicas = [await launch(env, wait=False) for _ in range(3)]
        for replica in replicas:
            await replica.wait_http()
        began = datetime.now(UTC)
        await asyncio.sleep(duration / 2)
        # The replica that did most syncs dies: the others take its projects over.
        leader_owner = await sql.fetchval(
            "SELECT owner FROM sync_runs GROUP BY owner ORDER BY count(*) DESC LIMIT 1"
        )
        (leader,) = [r for r in replicas if leader_owner.endswith(f":{r.proc.pid}")]
        died_at = datetime.now(UTC)
        await leader.signal_and_wait(signal.SIGKILL)
        await asyncio.sleep(duration / 2)
        ended = datetime.now(UTC)
        for replica in replicas:
            if replica is not leader:
                assert await replica.signal_and_wait() == 0

    per_project = await sql.fetch(
        "SELECT project_id, count(*) AS n FROM sync_runs "
        "WHERE started_at >= $1 AND started_at < $2 GROUP BY project_id ORDER BY project_id",
        began,
        ended,
    )
    assert len(per_project) == 6
    expected = duration / INTERVAL
    for row in per_project:
        # About one run per interval for the whole fleet, far from one per replica.
        assert 0.6 * expected <= row["n"] <= 1.4 * expected, dict(row)
    after = await sql.fetchval(
        "SELECT count(DISTINCT owner) FROM sync_runs WHERE started_at > $1 AND owner <> $2",
        died_at,
        leader_owner,
    )
    assert after >= 1, "no replica took the dead one's projects over"

    overlaps = await sql.fetch(
        """
        SELECT a.id, a.owner, a.status, a.started_at, a.finished_at,
               b.id, b.owner, b.status, b.started_at, b.finished_at
        FROM sync_runs AS a JOIN sync_runs AS b
          ON a.project_id = b.project_id AND a.id < b.id
         AND a.started_at < coalesce(b.finished_at, 'infinity')
         AND b.started_at < coalesce(a.finished_at, 'infinity')
        WHERE a.status <> 'abandoned' AND b.status <> 'abandoned'
        """
    )
    assert not overlaps, [tuple(r) for r in overlaps]
    # An abandoned run's finished_at is when a survivor noticed it, so it overlaps the run that
    # did; those runs are the killed replica's, one per project at most.
    abandoned = await runs(sql, "abandoned")
    assert all(r["owner"] == leader_owner for r in abandoned)
    assert len({r["project_id"] for r in abandoned}) == len(abandoned)
    duplicates = await sql.fetch(
        """
        SELECT project_id, snapshot_id, from_status, to_status, observed_at, count(*)
        FROM snapshot_status_history
        GROUP BY project_id, snapshot_id, from_status, to_status, observed_at
        HAVING count(*) > 1
        """
    )
    assert not duplicates, [tuple(r) for r in duplicates]
    # After the kill, every project kept being synced: no gap much longer than an interval
    # (the dead replica's unfinished run, if any, was marked abandoned by a survivor).
    gaps = await sql.fetch(
        """
        SELECT project_id, max(gap) AS widest FROM (
            SELECT project_id,
                   extract(epoch FROM started_at - lag(started_at) OVER w) AS gap
            FROM sync_runs WHERE started_at >= $1
            WINDOW w AS (PARTITION BY project_id ORDER BY started_at)
        ) AS g GROUP BY project_id
        """,
        died_at,
    )
    for row in gaps:
        assert row["widest"] is not None and row["widest"] < 2.5 * INTERVAL, dict(row)
    assert not await runs(sql, "running")


async def test_a_database_without_the_schema_stops_run_with_exit_2(
    empty_database_url: str, launch: Launch
) -> None:
    env = {
        "SNAPSYNC_DATABASE_URL": empty_database_url,
        "SNAPSYNC_PROJECTS": "p1",
        "SNAPSYNC_AUTH": "token",
        "SNAPSYNC_AUTH_TOKEN": "x" * 16,
    }
    running = await launch(env, wait=False)
    assert await asyncio.wait_for(running.proc.wait(), 30) == 2
    lines = running.log.strip().splitlines()
    assert "snapsync migrate" in lines[-1], running.log
    assert "Traceback" not in running.log


BAD_CONFIGURATIONS = [
    ({"SNAPSYNC_PROJECTS": ""}, "SNAPSYNC_PROJECTS"),
    ({"SNAPSYNC_AUTH_TOKEN": ""}, "SNAPSYNC_AUTH_TOKEN"),
    ({"SNAPSYNC_SHUTDOWN_GRACE": "soon"}, "SNAPSYNC_SHUTDOWN_GRACE"),
    ({"SNAPSYNC_SYNC_INTERVAL": "-1"}, "SNAPSYNC_SYNC_INTERVAL"),
]


async def test_bad_configuration_exits_2_naming_the_variable(
    database_url: str, launch: Launch
) -> None:
    base = {
        "SNAPSYNC_DATABASE_URL": database_url,
        "SNAPSYNC_PROJECTS": "p1",
        "SNAPSYNC_AUTH": "token",
        "SNAPSYNC_AUTH_TOKEN": "x" * 16,
    }
    started = [await launch({**base, **extra}, wait=False) for extra, _ in BAD_CONFIGURATIONS]
    codes = await asyncio.wait_for(asyncio.gather(*(r.proc.wait() for r in started)), 60)
    for running, (_, variable), code in zip(started, BAD_CONFIGURATIONS, codes, strict=True):
        assert code == 2, running.log
        assert variable in running.log
        assert len(running.log.strip().splitlines()) == 1, running.log


async def test_the_daemon_rides_out_a_database_outage(launch: Launch) -> None:
    from app import embedded

    # A throw-away server of its own: stopping it must not disturb the suite's database.
    directory = Path(tempfile.mkdtemp(prefix="snapsync-outage-"))
    server = embedded.EmbeddedPostgres(directory / "pg")
    url = await asyncio.to_thread(server.start)
    try:
        engine = db.make_engine(url, pool_size=1)
        try:
            await db.migrate(engine)
        finally:
            await engine.dispose()
        async with serve(projects=2, snapshots=20) as sim:
            running = await launch(env_for(sim, url, SNAPSYNC_PAGE_SIZE="5"))

            async def readyz() -> tuple[int, dict[str, Any]]:
                status, body = await running.get("/readyz")
                return status, json.loads(body)

            async def ready() -> bool:
                return (await readyz())[0] == 200

            await wait_for(ready, timeout=10, what="ready before the outage")
            # Slow syncs, and the outage starts while one runs.
            await sim.control("POST", "/_sim/faults", {"latency": 0.5})
            conn = await asyncpg.connect(**_asyncpg_dsn(url))  # type: ignore[arg-type]
            try:

                async def in_flight() -> Any:
                    return await conn.fetch("SELECT id FROM sync_runs WHERE status = 'running'")

                cut_short = [r["id"] for r in await wait_for(in_flight, timeout=10, what="a sync")]
            finally:
                await conn.close()
            await asyncio.to_thread(server.stop)

            async def not_ready() -> Any:
                status, body = await readyz()
                return body if status == 503 else None

            body = await wait_for(not_ready, timeout=10, what="not ready during the outage")
            assert body["database"].startswith("unreachable")
            status, _ = await running.get("/healthz")
            assert status == 200
            # Long enough that the interrupted syncs need the database and fail.
            await asyncio.sleep(2)
            assert running.proc.returncode is None, running.log

            await sim.control("POST", "/_sim/faults", {"latency": 0})
            url_again = await asyncio.to_thread(server.start)
            assert url_again == url
            restarted = datetime.now(UTC)
            await wait_for(ready, timeout=20, what="ready after the outage")

            conn = await asyncpg.connect(**_asyncpg_dsn(url))  # type: ignore[arg-type]
            try:

                async def synced_since_restart() -> bool:
                    n = await conn.fetchval(
                        "SELECT count(DISTINCT project_id) FROM sync_runs "
                        "WHERE status = 'succeeded' AND started_at > $1",
                        restarted,
                    )
                    return bool(n == 2)

                await wait_for(synced_since_restart, timeout=10, what="syncs after the outage")
                assert await running.signal_and_wait() == 0
                left_running = await conn.fetchval(
                    "SELECT count(*) FROM sync_runs WHERE status = 'running'"
                )
                cut_short_status = await conn.fetch(
                    "SELECT status FROM sync_runs WHERE id = ANY($1::bigint[])", cut_short
                )
            finally:
                await conn.close()
        assert left_running == 0
        # The run the outage interrupted could not be closed; the next sync abandoned it.
        assert {r["status"] for r in cut_short_status} <= {"abandoned", "failed"}
        assert "the database does not answer" in running.log
        assert "the database answers again" in running.log
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(server.stop)
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_daemon_forwards_the_clients_hooks_and_survives_their_errors(
    database_url: str,
) -> None:
    # A quarter of the snapshot requests answer 429 with Retry-After: the hooks see the 429s,
    # the retries and the waits, as the demo's live view counts them.
    async with serve(projects=1, snapshots=40, fault_429=0.25, seed=7) as sim:
        (pid,) = sim.project_ids
        settings = settings_module.load_settings(
            _env_file=None,
            workspace_endpoint=sim.url,
            iam_endpoint=sim.url,
            projects=pid,
            auth="token",
            auth_token=sim.options.auth_token,
            database_url=database_url,
            max_requests_per_second=0,
            page_size=10,
            max_retries=8,
        )
        requests: list[tuple[str, int]] = []
        retries: list[tuple[str, int]] = []
        waits: list[tuple[str, str]] = []
        results: list[Any] = []
        finished = asyncio.Event()

        def on_wait(project_id: str, reason: str, seconds: float | None) -> None:
            waits.append((project_id, reason))
            raise RuntimeError("a broken view")  # logged, never the daemon's

        def on_finished(result: Any) -> None:
            results.append(result)
            finished.set()

        running = daemon.Daemon(
            settings,
            on_request=lambda project_id, status: requests.append((project_id, status)),
            on_retry=lambda project_id, attempt: retries.append((project_id, attempt)),
            on_wait=on_wait,
            on_finished=on_finished,
            serve_http=False,
            handle_signals=False,
        )
        task = asyncio.create_task(running.run())
        try:
            async with asyncio.timeout(60):
                await finished.wait()
        finally:
            running.stop()
            await asyncio.wait_for(task, 60)
    assert [r.status for r in results] == ["succeeded"]
    assert (pid, 429) in requests and (pid, 200) in requests
    assert retries and all(project_id == pid for project_id, _ in retries)
    assert (pid, "Retry-After") in waits
    assert len([s for _, s in requests if s == 429]) == len(retries)
