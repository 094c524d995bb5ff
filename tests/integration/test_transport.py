"""Authentication modes, gateway faults, unusable answers and secrets, end to end."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import pytest

from app import ratelimit

from ..conftest import run_cli
from .simulated import RunningSimulator, serve
from .test_sync_e2e import assert_exact_mirror

SK = "SIMULATORSK"
PASSWORD = "simpassword"
STATIC_TOKEN = "snapsync-dev-token"


def aksk_env(sim: RunningSimulator, secret_key: str = SK) -> dict[str, str]:
    return sim.env(
        SNAPSYNC_AUTH="aksk", SNAPSYNC_ACCESS_KEY="SIMULATORAK", SNAPSYNC_SECRET_KEY=secret_key
    )


def password_env(sim: RunningSimulator, password: str = PASSWORD) -> dict[str, str]:
    return sim.env(
        SNAPSYNC_AUTH="password",
        SNAPSYNC_IAM_USER="simuser",
        SNAPSYNC_IAM_PASSWORD=password,
        SNAPSYNC_IAM_DOMAIN="simdomain",
    )


async def sync(env: dict[str, str], database_url: str, cwd: Path):  # type: ignore[no-untyped-def]
    return await run_cli("sync", env={**env, "SNAPSYNC_DATABASE_URL": database_url}, cwd=cwd)


async def test_aksk_signed_sync_mirrors_and_a_wrong_sk_is_reported(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=150) as sim:
        result = await sync(aksk_env(sim), database_url, workdir)
        assert result.code == 0, result.output
        await assert_exact_mirror(sql, sim)
        wrong = await sync(aksk_env(sim, "SIMULATORSJ"), database_url, workdir)
        assert wrong.code == 1
        errors = await sql.fetch("SELECT error FROM sync_runs WHERE status = 'failed'")
        assert len(errors) == 2
        assert all("HTTP 401" in e["error"] and "signature" in e["error"] for e in errors)
        assert "SIMULATORSJ" not in wrong.output


async def test_password_mode_logs_in_once_per_project_and_again_after_revocation(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=3, snapshots=2500) as sim:
        env = {**password_env(sim), "SNAPSYNC_PAGE_SIZE": "500"}
        assert (await sync(env, database_url, workdir)).code == 0
        stats = await sim.control("GET", "/_sim/stats")
        assert stats["logins_per_project"] == dict.fromkeys(sim.project_ids, 1)
        await sim.control("POST", "/_sim/revoke-tokens", {})
        # Revocation matters inside one process too: the daemon keeps its tokens; here the
        # second process logs in afresh, and the revoked tokens are refused by the gateway.
        result = await sync(env, database_url, workdir)
        assert result.code == 0, result.output
        stats = await sim.control("GET", "/_sim/stats")
        assert stats["logins_per_project"] == dict.fromkeys(sim.project_ids, 2)
        await assert_exact_mirror(sql, sim)
        bad = await sync(password_env(sim, "not-the-password"), database_url, workdir)
        assert bad.code == 1
        error = await sql.fetchval(
            "SELECT error FROM sync_runs WHERE status = 'failed' ORDER BY id DESC LIMIT 1"
        )
        assert "IAM rejected the login" in error
        assert "not-the-password" not in bad.output + error


async def test_renewal_on_401_inside_one_process(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    """Tokens revoked while a sync runs: the next request gets 401, logs in again, retries."""
    async with serve(projects=2, snapshots=3000, latency=0.05) as sim:
        env = {**password_env(sim), "SNAPSYNC_PAGE_SIZE": "100"}
        task = asyncio.create_task(sync(env, database_url, workdir))
        while not (await sim.control("GET", "/_sim/stats"))["logins_per_project"]:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        await sim.control("POST", "/_sim/revoke-tokens", {})
        result = await task
        assert result.code == 0, result.output
        stats = await sim.control("GET", "/_sim/stats")
        assert stats["logins_per_project"] == dict.fromkeys(sim.project_ids, 2)
        assert stats["requests_by_status"].get("401", 0) >= 1
        await assert_exact_mirror(sql, sim)


async def test_sync_rides_out_throttling_and_server_errors(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(
        projects=3, snapshots=2000, fault_429=0.25, fault_500=0.10, fault_502_html=0.05
    ) as sim:
        env = {
            **aksk_env(sim),
            "SNAPSYNC_PAGE_SIZE": "250",
            "SNAPSYNC_MAX_RETRIES": "12",
            "SNAPSYNC_MAX_REQUESTS_PER_SECOND": "50",
        }
        result = await sync(env, database_url, workdir)
        assert result.code == 0, result.output
        await assert_exact_mirror(sql, sim)
        stats = await sim.control("GET", "/_sim/stats")
        by_status = stats["requests_by_status"]
        assert by_status.get("429", 0) > 0 and by_status.get("500", 0) > 0
        requests = await sql.fetchval("SELECT sum(requests) FROM sync_runs")
        assert requests == sum(by_status.values())
        assert "retry" in result.stderr


async def test_a_retry_warning_during_a_sync_carries_the_project_and_run_ids(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=30) as sim:
        pid = sim.project_ids[0]
        busy = {"status": 503, "body": '{"error_code": "WKS.0500", "error_msg": "busy"}'}
        await sim.control("POST", f"/_sim/projects/{pid}/raw-pages", [busy])
        env = {**sim.env(), "SNAPSYNC_PAGE_SIZE": "10", "SNAPSYNC_LOG_FORMAT": "json"}
        result = await sync(env, database_url, workdir)
        assert result.code == 0, result.output
        run_id = await sql.fetchval("SELECT id FROM sync_runs WHERE project_id = $1", pid)
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    retries = [e for e in entries if e["message"].startswith("retry 1/")]
    assert len(retries) == 1, result.stderr
    assert retries[0]["logger"] == "app.client" and "HTTP 503" in retries[0]["message"]
    assert (retries[0]["project_id"], retries[0]["run_id"]) == (pid, run_id)


async def test_no_retry_on_403_and_clear_errors_on_unusable_answers(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    cases = [
        (
            {"status": 200, "body": "[1, 2]", "content_type": "application/json"},
            "expected a JSON object",
        ),
        (
            {
                "status": 200,
                "body": '{"desktop_snapshots": []}',
                "content_type": "application/json",
            },
            "total_count is missing",
        ),
        (
            {
                "status": 200,
                "body": '{"total_count": -3, "desktop_snapshots": []}',
                "content_type": "application/json",
            },
            "total_count is negative",
        ),
        (
            {
                "status": 200,
                "body": '{"total_count": 5000, "desktop_snapshots": []}',
                "content_type": "application/json",
            },
            "empty page",
        ),
        (
            {
                "status": 200,
                "body": '{"total_count": 1, "desktop_snapshots": ['
                + ",".join(['{"snapshot_id": "x", "status": "creating"}'] * 3)
                + "]}",
                "content_type": "application/json",
            },
            "more than limit=2",
        ),
        (
            {
                "status": 200,
                "body": '{"total_count": 1, "desktop_snap',
                "content_type": "application/json",
            },
            "not JSON",
        ),
        (
            {"status": 200, "body_base64": "/v7/AA==", "content_type": "application/json"},
            "not UTF-8",
        ),
        (
            {
                "status": 403,
                "body": '{"error_code": "WKS.0003", "error_msg": "no permission"}',
                "content_type": "application/json",
            },
            "HTTP 403: WKS.0003 - no permission",
        ),
    ]
    async with serve(projects=1, snapshots=4) as sim:
        pid = sim.project_ids[0]
        for page, expected in cases:
            await sim.control("DELETE", f"/_sim/projects/{pid}/raw-pages")
            await sim.control("POST", f"/_sim/projects/{pid}/raw-pages", [page])
            result = await sync(
                {**sim.env(), "SNAPSYNC_PAGE_SIZE": "2", "SNAPSYNC_MAX_RETRIES": "0"},
                database_url,
                workdir,
            )
            assert result.code == 1, (expected, result.output)
            error = await sql.fetchval("SELECT error FROM sync_runs ORDER BY id DESC LIMIT 1")
            assert expected in error, (expected, error)
            assert "Traceback" not in result.output
        stats = await sim.control("GET", "/_sim/stats")
        assert stats["requests_by_status"].get("403", 0) == 1, "403 is not retried"


@pytest.mark.parametrize("mode", ["aksk", "password", "token"])
async def test_no_secret_in_any_output_at_debug_level(
    mode: str, database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=60, fault_500=0.2) as sim:
        env = {"aksk": aksk_env(sim), "password": password_env(sim), "token": sim.env()}[mode]
        env = {**env, "SNAPSYNC_LOG_LEVEL": "DEBUG", "SNAPSYNC_MAX_RETRIES": "8"}
        outputs = []
        for args in (("sync",), ("status",), ("status", "--json")):
            result = await run_cli(
                *args, env={**env, "SNAPSYNC_DATABASE_URL": database_url}, cwd=workdir
            )
            assert result.code == 0, result.output
            outputs.append(result.output)
        text = "\n".join(outputs)
        assert "DEBUG" in text
        rows = await sql.fetch("SELECT * FROM sync_runs")
        stored = json.dumps([dict(r) for r in rows], default=str)
        stored += json.dumps(
            [dict(r) for r in await sql.fetch("SELECT raw::text FROM snapshot_records")]
        )
        for secret in (SK, PASSWORD, STATIC_TOKEN):
            assert secret not in text, f"{secret} printed in {mode} mode"
            assert secret not in stored


async def test_rate_limit_holds_requests_apart() -> None:
    limiter = ratelimit.AdaptiveRateLimiter(rate=20)
    started = time.monotonic()
    for _ in range(30):
        await limiter.acquire()
    # 20 tokens of burst at most, then 20 per second.
    assert time.monotonic() - started >= (30 - 20) / 20 * 0.9


def test_rate_limit_halves_on_429_and_recovers() -> None:
    now = [0.0]
    limiter = ratelimit.AdaptiveRateLimiter(rate=10, clock=lambda: now[0])
    limiter.throttled()
    assert limiter.rate == 5
    limiter.throttled()
    assert limiter.rate == 5, "a burst of 429s halves the rate once"
    now[0] += ratelimit.DECREASE_SPACING
    limiter.throttled()
    assert limiter.rate == 2.5
    limiter.succeeded()
    assert limiter.rate == 2.5, "no recovery during the cooldown"
    now[0] += ratelimit.COOLDOWN_SECONDS + 1
    for _ in range(100):
        limiter.succeeded()
    assert limiter.rate == 10
    for _ in range(40):
        now[0] += ratelimit.DECREASE_SPACING
        limiter.throttled()
    assert limiter.rate == ratelimit.MIN_RATE
