"""Reliability: syncs killed at random points, PostgreSQL restarted under a sync, an API that is
slow, flapping or throttling, and a listing that changes while it is read.

After each: the tables converge to the exact mirror, no history row is written twice, every
history chain is unbroken, and no live snapshot was ever marked deleted. Each test prints its
figures and merges them into a JSON report (docs/reliability.md quotes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from app import auth, client, db, embedded, runs, sync
from app import settings as settings_module
from app.simulator import model

from ..conftest import _asyncpg_dsn, cli_env, run_cli
from .simulated import RunningSimulator, serve
from .test_sync_e2e import assert_exact_mirror

# ---- figures ------------------------------------------------------------------------------

REPORT_VARIABLE = "SNAPSYNC_RELIABILITY_REPORT"


def report_path() -> Path:
    """Where the figures go: $SNAPSYNC_RELIABILITY_REPORT, else a file in the temp directory."""
    configured = os.environ.get(REPORT_VARIABLE)
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / "snapsync-reliability.json"


def report_figures(name: str, **figures: Any) -> None:
    """Print one test's figures (seen with -s) and merge them into the JSON report, keyed by
    the server the suite ran on."""
    server = "local" if os.environ.get("SNAPSYNC_TEST_DATABASE_URL") else "embedded"
    path = report_path()
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data.setdefault(server, {})[name] = {
        **figures,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\nreliability figures [{server}] {name}: {json.dumps(figures, default=str)}")


@pytest.fixture
def soak(request: pytest.FixtureRequest) -> bool:
    """Whether the suite runs long (`pytest --soak`)."""
    return bool(request.config.getoption("--soak", default=False))


def fresh_seed(name: str) -> int:
    """A fresh seed per run (printed, so a failure can be replayed with SNAPSYNC_TEST_SEED)."""
    configured = os.environ.get("SNAPSYNC_TEST_SEED")
    seed = int(configured) if configured else random.randrange(1 << 30)
    print(f"\n{name}: seed {seed} (replay with SNAPSYNC_TEST_SEED={seed})")
    return seed


# ---- snapsync driven in-process (still real HTTP and real PostgreSQL) ----------------------


@dataclass
class InProcess:
    """A Syncer wired as `snapsync sync` wires it, pointed at a simulator and a database."""

    settings: settings_module.Settings
    syncer: sync.Syncer

    async def sync(self, project_id: str, *, timeout: float = 180) -> runs.RunResult:
        project = settings_module.Project(project_id=project_id, region=self.settings.region)
        return await asyncio.wait_for(self.syncer.sync_project(project), timeout)

    async def sync_all(self, *, timeout: float = 300) -> list[runs.RunResult]:
        projects = self.settings.require_projects()
        return await asyncio.wait_for(self.syncer.sync_all(projects), timeout)


@contextlib.asynccontextmanager
async def in_process(
    sim: RunningSimulator,
    database_url: str,
    on_progress: sync.ProgressHook | None = None,
    **overrides: Any,
) -> AsyncIterator[InProcess]:
    """Settings, engine, HTTP session, authenticator and client as the CLI builds them."""
    values: dict[str, Any] = {
        "workspace_endpoint": sim.url,
        "iam_endpoint": sim.url,
        "projects": ",".join(sim.project_ids),
        "auth": "token",
        "auth_token": sim.options.auth_token,
        "database_url": database_url,
        "max_requests_per_second": 0,
    }
    values.update(overrides)
    settings = settings_module.load_settings(_env_file=None, **values)
    engine = db.make_engine(database_url)
    try:
        async with client.new_session(settings) as session:
            authenticator = auth.build_authenticator(settings, session)
            workspace = client.WorkspaceClient(
                session=session, settings=settings, authenticator=authenticator
            )
            try:
                yield InProcess(
                    settings=settings,
                    syncer=sync.Syncer(
                        engine=engine,
                        client=workspace,
                        settings=settings,
                        on_progress=on_progress,
                    ),
                )
            finally:
                await authenticator.close()
    finally:
        await engine.dispose()


def all_succeeded(results: list[runs.RunResult]) -> bool:
    return all(r.status == "succeeded" for r in results)


# ---- what must hold after anything ---------------------------------------------------------

DUPLICATE_HISTORY = """
SELECT count(*) FROM (
    SELECT 1 FROM snapshot_status_history
    GROUP BY project_id, snapshot_id, from_status, to_status, observed_at
    HAVING count(*) > 1
) AS d
"""

# Each snapshot's history is one chain: NULL -> a -> b -> ..., every row starting where the
# previous one ended. A lost or doubled row breaks it.
BROKEN_CHAINS = """
SELECT project_id, snapshot_id, from_status, to_status, previous_to FROM (
    SELECT h.project_id, h.snapshot_id, h.from_status, h.to_status,
           lag(h.to_status) OVER w AS previous_to, row_number() OVER w AS n
    FROM snapshot_status_history AS h
    WINDOW w AS (PARTITION BY h.project_id, h.snapshot_id ORDER BY h.observed_at, h.id)
) AS x
WHERE (n = 1 AND from_status IS NOT NULL) OR (n > 1 AND from_status IS DISTINCT FROM previous_to)
LIMIT 20
"""

# The newest history row of every snapshot says what the row says now.
STALE_HEADS = """
SELECT s.project_id, s.snapshot_id, s.status, s.deleted_at, last.to_status
FROM snapshots AS s
LEFT JOIN LATERAL (
    SELECT h.to_status FROM snapshot_status_history AS h
    WHERE h.project_id = s.project_id AND h.snapshot_id = s.snapshot_id
    ORDER BY h.observed_at DESC, h.id DESC LIMIT 1
) AS last ON true
WHERE last.to_status IS DISTINCT FROM
      CASE WHEN s.deleted_at IS NULL THEN s.status ELSE 'deleted' END
LIMIT 20
"""


async def false_deletions(sql: asyncpg.Connection, sim: RunningSimulator) -> list[str]:
    """Snapshots with a history row to 'deleted' that the simulator still lists.

    The simulator's deletions are permanent and its ids never come back, so any such row marked
    a live snapshot deleted (even if a later row brought it back)."""
    live = {(pid, s.snapshot_id) for pid in sim.project_ids for s in sim.population.snapshots(pid)}
    rows = await sql.fetch(
        "SELECT DISTINCT project_id, snapshot_id FROM snapshot_status_history "
        "WHERE to_status = 'deleted'"
    )
    return sorted(f"{r[0]}/{r[1]}" for r in rows if (r[0], r[1]) in live)


async def assert_invariants(sql: asyncpg.Connection, sim: RunningSimulator | None) -> None:
    """No duplicated history row, no broken chain, no stale head, no false deletion."""
    assert await sql.fetchval(DUPLICATE_HISTORY) == 0, "a history row was written twice"
    broken = await sql.fetch(BROKEN_CHAINS)
    assert not broken, f"history chains broken: {[dict(r) for r in broken]}"
    stale = await sql.fetch(STALE_HEADS)
    assert not stale, f"newest history row disagrees with the row: {[dict(r) for r in stale]}"
    if sim is not None:
        wrongly = await false_deletions(sql, sim)
        assert not wrongly, f"live snapshots marked deleted: {wrongly}"


# ---- a `snapsync sync` process to kill ------------------------------------------------------


async def start_sync_process(env: dict[str, str], cwd: Path) -> asyncio.subprocess.Process:
    """`python -m app sync` as a real process, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        "sync",
        env=cli_env(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def wait_for_stderr(
    proc: asyncio.subprocess.Process, needle: str, *, timeout: float = 180
) -> list[str]:
    """Read stderr lines until one contains `needle`; fail if the process ends first."""
    assert proc.stderr is not None
    lines: list[str] = []

    async def read() -> bool:
        assert proc.stderr is not None
        while True:
            raw = await proc.stderr.readline()
            if not raw:
                return False
            lines.append(raw.decode(errors="replace"))
            if needle in lines[-1]:
                return True

    found = await asyncio.wait_for(read(), timeout)
    assert found, f"the process ended before logging {needle!r}:\n{''.join(lines)}"
    return lines


async def finish(
    proc: asyncio.subprocess.Process, earlier: list[str], *, timeout: float = 180
) -> tuple[int, str, str]:
    """Wait for the process; its exit code, stdout and whole stderr."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), "".join(earlier) + err.decode("utf-8")


# ---- 1. SIGKILL at random points ------------------------------------------------------------


async def test_sync_killed_at_random_points_loses_nothing(
    database_url: str, sql: asyncpg.Connection, workdir: Path, soak: bool
) -> None:
    """SIGKILL `snapsync sync` at random moments while the population changes between kills;
    the next sync marks each killed run abandoned, and nothing is lost, doubled or falsely
    deleted."""
    kills_wanted = 200 if soak else 20
    seed = fresh_seed("kill test")
    rng = random.Random(seed)
    changes: Counter[str] = Counter()
    async with serve(
        projects=2, snapshots=400, seed=seed % 10_000, latency=0.005, change_rate=0.01
    ) as sim:
        env = {**sim.env(SNAPSYNC_PAGE_SIZE="50"), "SNAPSYNC_DATABASE_URL": database_url}
        async with in_process(sim, database_url, page_size=50) as normal:
            first = await normal.sync_all()
            assert all_succeeded(first), [r.summary() for r in first]
            # Kill within roughly the time a sync takes; shorter after a kill that came late.
            window = max(r.seconds for r in first)
            interrupted_runs: set[int] = set()
            kills_sent = kills_mid_sync = kills_after_writes = followups = 0
            # Each process is started while the previous follow-up sync runs, so that its
            # Python start-up overlaps that sync; it waits for the projects' locks.
            proc: asyncio.subprocess.Process | None = await start_sync_process(env, workdir)
            try:
                while proc is not None:
                    assert kills_sent < 3 * kills_wanted, "too few kills landed during a sync"
                    report = sim.population.tick(rng.randint(1, 6))
                    changes.update(
                        {k: v for k, v in report.as_dict().items() if k != "ticks" and v}
                    )
                    lines = await wait_for_stderr(proc, "sync started")
                    await asyncio.sleep(rng.uniform(0, window))
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await finish(proc, lines)
                    kills_sent += 1
                    running = {
                        r["id"]
                        for r in await sql.fetch(
                            "SELECT id FROM sync_runs WHERE status = 'running'"
                        )
                    }
                    if running:
                        kills_mid_sync += 1
                        interrupted_runs |= running
                        wrote = await sql.fetchval(
                            "SELECT count(*) FROM snapshot_records "
                            "WHERE last_run_id = ANY($1::bigint[])",
                            list(running),
                        )
                        kills_after_writes += bool(wrote)
                        # Reach further into the sync next time, up to its cleanup.
                        window *= 1.1
                    else:
                        window *= 0.7
                    proc = None
                    if kills_mid_sync < kills_wanted:
                        proc = await start_sync_process(env, workdir)
                    results = await normal.sync_all()
                    followups += 1
                    assert all_succeeded(results), [r.summary() for r in results]
                    if running:
                        # Marked by the follow-up, or by the next process if it came first.
                        statuses = await sql.fetch(
                            "SELECT status, error FROM sync_runs WHERE id = ANY($1::bigint[])",
                            list(running),
                        )
                        assert all(s["status"] == "abandoned" for s in statuses), statuses
                        assert all("killed" in s["error"] for s in statuses)
                    await assert_invariants(sql, sim)
            finally:
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.communicate()
            # The API stops changing: DELETE_AFTER_MISSES (2) listings confirm the last deletions.
            for _ in range(2):
                assert all_succeeded(await normal.sync_all())
                followups += 1
        await assert_exact_mirror(sql, sim)
        await assert_invariants(sql, sim)
        by_status = dict(
            await sql.fetch("SELECT status, count(*) FROM sync_runs GROUP BY status")  # type: ignore[arg-type]
        )
        assert set(by_status) <= {"succeeded", "abandoned"}, by_status
        abandoned = {
            r["id"] for r in await sql.fetch("SELECT id FROM sync_runs WHERE status = 'abandoned'")
        }
        assert abandoned == interrupted_runs
        history = await sql.fetchval("SELECT count(*) FROM snapshot_status_history")
        deleted = await sql.fetchval(
            "SELECT count(*) FROM snapshot_status_history WHERE to_status = 'deleted'"
        )
        report_figures(
            "sigkill",
            seed=seed,
            kills_sent=kills_sent,
            kills_during_a_sync=kills_mid_sync,
            kills_after_the_run_had_written_rows=kills_after_writes,
            runs_abandoned=len(abandoned),
            normal_syncs=followups + 1,
            population_changes=dict(changes),
            history_rows=history,
            deletions_confirmed=deleted,
            live_snapshots_mirrored=sum(len(sim.items(p)) for p in sim.project_ids),
            duplicated_history_rows=0,
            false_deletions=0,
        )


# ---- 2. PostgreSQL restarted under a sync --------------------------------------------------


@contextlib.asynccontextmanager
async def throwaway_postgres() -> AsyncIterator[embedded.EmbeddedPostgres]:
    """An embedded PostgreSQL of our own (never the shared server), migrated, in /tmp."""
    directory = Path(tempfile.mkdtemp(prefix="sr-", dir="/tmp"))  # short: socket path limit
    server = embedded.EmbeddedPostgres(directory / "pg")
    try:
        url = await asyncio.to_thread(server.start)
        engine = db.make_engine(url, pool_size=1)
        try:
            await db.migrate(engine)
        finally:
            await engine.dispose()
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(**_asyncpg_dsn(url))  # type: ignore[arg-type]
    try:
        yield conn
    finally:
        await conn.close()


async def normal_sync(sim: RunningSimulator, url: str) -> list[runs.RunResult]:
    """A sync as the CLI does it, in-process (a fresh engine after each restart)."""
    async with in_process(sim, url, page_size=50, delete_after_misses=1) as normal:
        return await normal.sync_all()


async def test_postgresql_restarted_in_the_middle_of_syncs(workdir: Path) -> None:
    """The server stops under a running sync: the sync ends cleanly (exit 1, one line, no
    traceback), a sync started while it is down does too, and once it is back the next sync
    marks the interrupted run abandoned and mirrors exactly. Quick restarts at random points
    end either way, always cleanly."""
    seed = fresh_seed("restart test")
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    restarts = 0
    async with (
        throwaway_postgres() as server,
        serve(
            projects=2, snapshots=1000, seed=seed % 10_000, latency=0.03, change_rate=0.01
        ) as sim,
    ):
        url = server.url
        env = {
            **sim.env(SNAPSYNC_PAGE_SIZE="50", SNAPSYNC_DELETE_AFTER_MISSES="1"),
            "SNAPSYNC_DATABASE_URL": url,
        }

        # Down until the sync gives up.
        proc = await start_sync_process(env, workdir)
        lines = await wait_for_stderr(proc, "sync started")
        await asyncio.sleep(rng.uniform(0.05, 0.25))
        await asyncio.to_thread(server.stop)
        restarts += 1
        code, out, err = await finish(proc, lines)
        assert code == 1, out + err
        assert "Traceback" not in out + err
        assert "failed" in out and "database error" in out, out
        outcomes["failed while down"] += 1
        down = await run_cli("sync", env=env, cwd=workdir)
        assert down.code == 1, down.output
        assert "Traceback" not in down.output
        assert "snapsync: database error" in down.stderr, down.stderr
        assert len(down.stderr.strip().splitlines()) == 1, down.stderr
        outcomes["refused while down"] += 1
        await asyncio.to_thread(server.start)
        async with connect(url) as sql:
            left = {
                r["id"]
                for r in await sql.fetch("SELECT id FROM sync_runs WHERE status = 'running'")
            }
            assert left, "the interrupted sync could not have recorded its end"
            after = await normal_sync(sim, url)
            assert all_succeeded(after), [r.summary() for r in after]
            statuses = await sql.fetch(
                "SELECT status FROM sync_runs WHERE id = ANY($1::bigint[])", list(left)
            )
            assert {s["status"] for s in statuses} == {"abandoned"}
            await assert_exact_mirror(sql, sim)
            await assert_invariants(sql, sim)

        # Quick restarts at random points of a sync: it rides them out or fails, cleanly.
        for _ in range(2):
            sim.population.tick(rng.randint(5, 20))
            proc = await start_sync_process(env, workdir)
            lines = await wait_for_stderr(proc, "sync started")
            await asyncio.sleep(rng.uniform(0.0, 0.5))
            await asyncio.to_thread(server.stop)
            await asyncio.sleep(rng.uniform(0.1, 1.0))
            await asyncio.to_thread(server.start)
            restarts += 1
            code, out, err = await finish(proc, lines)
            assert code in (0, 1), out + err
            assert "Traceback" not in out + err
            outcomes["rode out a restart" if code == 0 else "failed on a restart"] += 1
            after = await normal_sync(sim, url)
            assert all_succeeded(after), [r.summary() for r in after]
            async with connect(url) as sql:
                assert not await sql.fetchval(
                    "SELECT count(*) FROM sync_runs WHERE status = 'running'"
                )
                await assert_exact_mirror(sql, sim)
                await assert_invariants(sql, sim)
        async with connect(url) as sql:
            runs = dict(
                await sql.fetch("SELECT status, count(*) FROM sync_runs GROUP BY status")  # type: ignore[arg-type]
            )
    report_figures(
        "postgresql_restart",
        seed=seed,
        restarts=restarts,
        outcomes=dict(outcomes),
        runs_by_status=runs,
        tracebacks=0,
    )


# ---- 3. A slow, flapping or throttling API -------------------------------------------------


async def test_api_slower_than_the_timeout_fails_cleanly_then_recovers(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=120, seed=5, latency=2.0) as sim:
        env = {
            **sim.env(SNAPSYNC_REQUEST_TIMEOUT="0.3", SNAPSYNC_MAX_RETRIES="1"),
            "SNAPSYNC_DATABASE_URL": database_url,
        }
        slow = await run_cli("sync", env=env, cwd=workdir)
        assert slow.code == 1, slow.output
        assert "Traceback" not in slow.output
        assert "failed" in slow.stdout and "SNAPSYNC_REQUEST_TIMEOUT" in slow.stdout, slow.stdout
        error, timed_out = await sql.fetchrow(
            "SELECT error, requests FROM sync_runs ORDER BY id DESC LIMIT 1"
        )
        assert "no complete answer within 0.3s (SNAPSYNC_REQUEST_TIMEOUT)" in error, error
        assert await sql.fetchval("SELECT count(*) FROM snapshot_records") == 0
        await sim.control("POST", "/_sim/faults", {"latency": 0})
        # A generous timeout now: the machine may be busy.
        env["SNAPSYNC_REQUEST_TIMEOUT"] = "30"
        recovered = await run_cli("sync", env=env, cwd=workdir)
        assert recovered.code == 0, recovered.output
        await assert_exact_mirror(sql, sim)
        await assert_invariants(sql, sim)
    report_figures("api_timeouts", timed_out_requests=timed_out, recovered=True)


async def test_api_flapping_between_answers_and_errors(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    """Half the requests fail (500, or a gateway's HTML 502): with retries a sync gets through;
    with few retries some listings fail, and with SNAPSYNC_DELETE_AFTER_MISSES=1 a failed
    listing or re-check still deletes nothing live."""
    seed = fresh_seed("flapping test")
    async with serve(
        projects=2,
        snapshots=100,
        seed=seed % 10_000,
        fault_500=0.45,
        fault_502_html=0.05,
        change_rate=0.01,
    ) as sim:
        env = {
            # Pages of 10: 20 requests, so at a 50 % fault rate the first sync meets at least
            # one fault but for one seed in a million (pages of 50 made it one in 16).
            **sim.env(SNAPSYNC_PAGE_SIZE="10", SNAPSYNC_MAX_RETRIES="15"),
            "SNAPSYNC_DATABASE_URL": database_url,
        }
        first = await run_cli("sync", env=env, cwd=workdir)
        assert first.code == 0, first.output
        assert "retry" in first.stderr
        await assert_exact_mirror(sql, sim)
        outcomes: Counter[str] = Counter()
        async with in_process(
            sim, database_url, page_size=50, max_retries=2, delete_after_misses=1
        ) as flaky:
            for _ in range(4):
                sim.population.tick(4)
                for result in await flaky.sync_all():
                    outcomes[result.status] += 1
                    if result.status == "failed":
                        assert result.error is not None
                        assert "HTTP 500" in result.error or "HTTP 502" in result.error, (
                            result.error
                        )
                await assert_invariants(sql, sim)
        await sim.control("POST", "/_sim/faults", {"fault_500": 0, "fault_502_html": 0})
        final = await run_cli("sync", env={**env, "SNAPSYNC_DELETE_AFTER_MISSES": "1"}, cwd=workdir)
        assert final.code == 0, final.output
        await assert_exact_mirror(sql, sim)
        await assert_invariants(sql, sim)
        stats = await sim.control("GET", "/_sim/stats")
        by_status = stats["requests_by_status"]
    report_figures(
        "api_flapping",
        seed=seed,
        requests=stats["requests_total"],
        injected_500=by_status.get("500", 0),
        injected_502=by_status.get("502", 0),
        syncs_by_outcome=dict(outcomes),
        false_deletions=0,
    )


async def test_api_throttling_hard_fails_cleanly_then_recovers(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=200, seed=8, change_rate=0.01) as sim:
        env = {
            **sim.env(SNAPSYNC_PAGE_SIZE="50", SNAPSYNC_MAX_RETRIES="2"),
            "SNAPSYNC_DATABASE_URL": database_url,
            "SNAPSYNC_DELETE_AFTER_MISSES": "1",
        }
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
        before = await sql.fetch("SELECT * FROM snapshot_records ORDER BY 1, 2")
        report = sim.population.tick(20)
        assert report.deleted > 0
        await sim.control("POST", "/_sim/faults", {"fault_429": 1.0})
        throttled = await run_cli("sync", env=env, cwd=workdir)
        assert throttled.code == 1, throttled.output
        assert "Traceback" not in throttled.output
        errors = await sql.fetch(
            "SELECT error FROM sync_runs WHERE status = 'failed' ORDER BY id DESC LIMIT 2"
        )
        assert len(errors) == 2
        assert all("HTTP 429" in e["error"] for e in errors), errors
        assert throttled.stdout.count("HTTP 429") == 2, throttled.stdout
        after = await sql.fetch("SELECT * FROM snapshot_records ORDER BY 1, 2")
        assert before == after, "a throttled sync changed rows"
        await sim.control("POST", "/_sim/faults", {"fault_429": 0})
        recovered = await run_cli("sync", env=env, cwd=workdir)
        assert recovered.code == 0, recovered.output
        await assert_exact_mirror(sql, sim)
        await assert_invariants(sql, sim)
        stats = await sim.control("GET", "/_sim/stats")
    report_figures(
        "api_throttling",
        injected_429=stats["requests_by_status"].get("429", 0),
        deletions_held_back_while_throttled=report.deleted,
        recovered=True,
    )


# ---- 4. The list changing while it is read -------------------------------------------------

LISTING_KEYS = frozenset({"offset", "limit", "sort_field", "sort_type"})


class ChurnDuringPaging:
    """A simulator middleware: while active, at every page request of a full listing (not the
    filtered re-checks) one random change before the page is read, and often one after:
    deletions, creations (in the same second as an existing snapshot, so they land between
    pages already read), status changes, moves in the order, evolution ticks."""

    KINDS = ("delete", "create", "status", "move", "tick")
    WEIGHTS = (3, 3, 3, 1, 1)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sim: RunningSimulator | None = None
        self.active = False
        self.applied: Counter[str] = Counter()

    async def __call__(self, request: web.Request, handler: Any) -> web.StreamResponse:
        pid = request.match_info.get("project_id", "")
        listing = (
            self.active
            and self.sim is not None
            and request.path.startswith("/v2/")
            and set(request.query) <= LISTING_KEYS
        )
        if listing:
            self.change(pid)
        response = await handler(request)
        if listing and self.rng.random() < 0.5:
            self.change(pid)
        return response

    def change(self, pid: str) -> None:
        assert self.sim is not None
        population = self.sim.population
        rng = self.rng
        snaps = population.snapshots(pid)
        kind = rng.choices(self.KINDS, weights=self.WEIGHTS)[0]
        victim, twin = rng.choice(snaps), rng.choice(snaps)
        if kind == "delete" and len(snaps) > 20:
            population.delete_snapshot(pid, victim.snapshot_id)
        elif kind == "create":
            status = rng.choice(model.STATUSES)
            population.add_snapshot(
                pid,
                {
                    "create_time": twin.create_time,
                    "status": status,
                    "process": rng.randint(0, 99) if status in model.IN_FLIGHT else None,
                },
            )
        elif kind == "status":
            status = rng.choice(model.STATUSES)
            population.set_fields(
                pid,
                victim.snapshot_id,
                {
                    "status": status,
                    "process": rng.randint(0, 99) if status in model.IN_FLIGHT else None,
                },
            )
        elif kind == "move":
            population.set_fields(pid, victim.snapshot_id, {"create_time": twin.create_time})
        else:
            kind = "tick"
            population.tick(1)
        self.applied[kind] += 1


@pytest.mark.parametrize("misses", [1, 2])
async def test_listing_changing_while_read_never_deletes_a_live_snapshot(
    misses: int, database_url: str, sql: asyncpg.Connection, soak: bool
) -> None:
    seed = fresh_seed(f"churn test (misses={misses})")
    churn = ChurnDuringPaging(random.Random(seed))
    async with serve(
        projects=1, snapshots=240, seed=seed % 10_000, change_rate=0.01, middlewares=[churn]
    ) as sim:
        churn.sim = sim
        async with in_process(sim, database_url, page_size=20, delete_after_misses=misses) as s:
            assert all_succeeded(await s.sync_all())
            await assert_exact_mirror(sql, sim)
            churn.active = True
            rounds = 100 if soak else 20
            for _ in range(rounds):
                results = await s.sync_all()
                assert all_succeeded(results), [r.summary() for r in results]
                await assert_invariants(sql, sim)
            churn.active = False
            # Converges within DELETE_AFTER_MISSES + 1 syncs of the changes stopping.
            for _ in range(misses + 1):
                assert all_succeeded(await s.sync_all())
                await assert_invariants(sql, sim)
        await assert_exact_mirror(sql, sim)
        deleted = await sql.fetchval(
            "SELECT count(*) FROM snapshot_status_history WHERE to_status = 'deleted'"
        )
    report_figures(
        f"listing_churn_misses_{misses}",
        seed=seed,
        syncs_while_changing=rounds,
        changes_during_paging=dict(churn.applied),
        deletions_confirmed=deleted,
        false_deletions=0,
        syncs_to_converge=misses + 1,
    )
