"""SNAPSYNC_PROJECTS=auto: the projects come from IAM's list, through the CLI and the daemon,
against the simulator's IAM and Workspace; the pure transform of IAM's answer first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app import discovery, errors, status
from app import settings as settings_module

from ..conftest import run_cli, run_cli_sync
from . import test_daemon
from .simulated import RunningSimulator, serve
from .test_daemon import Launch, env_for, wait_for

LISTING = discovery.LISTING_PATH
launch = test_daemon.launch  # the fixture that starts `snapsync run` processes


def entry(project_id: str, name: str, *, enabled: bool = True) -> dict[str, Any]:
    return {"id": project_id, "name": name, "enabled": enabled, "domain_id": "d", "links": {}}


def test_the_listing_keeps_enabled_projects_of_workspace_regions() -> None:
    body = {
        "projects": [
            entry("a1", "cn-north-4"),
            entry("a2", "cn-north-4_sub1"),  # a sub-project: the region is its name's head
            entry("a3", "eu-west-101"),
            entry("m0", "MOS"),  # IAM's special project: no region
            entry("c1", "cn-north-1"),  # a region without Workspace
            entry("d1", "ap-southeast-1", enabled=False),
            entry("a1", "cn-north-4"),  # listed twice: kept once
            entry("bad id!", "cn-east-3"),
            "not an object",
        ]
    }
    listing = discovery.workspace_projects(body, keep=None)
    assert [(p.project_id, p.region) for p in listing.projects] == [
        ("a1", "cn-north-4"),
        ("a2", "cn-north-4"),
        ("a3", "eu-west-101"),
    ]
    assert listing.listed == 9
    assert {"MOS", "cn-north-1", "ap-southeast-1", "cn-east-3"} <= set(listing.left_out)
    kept = discovery.workspace_projects(body, keep={"eu-west-101"})
    assert [p.project_id for p in kept.projects] == ["a3"]
    with pytest.raises(errors.DiscoveryError, match="no list of projects"):
        discovery.workspace_projects({"project": []}, keep=None)


def test_auto_is_alone_and_snapsync_regions_names_workspace_regions() -> None:
    mixed = settings_module.load_settings(projects="auto,abc")
    with pytest.raises(errors.ConfigError, match="cannot be mixed"):
        mixed.project_list()
    auto = settings_module.load_settings(projects=" AUTO ", regions="cn-north-4, eu-west-101")
    assert auto.discovers and auto.require_projects() == []
    assert auto.kept_regions() == ["cn-north-4", "eu-west-101"]
    with pytest.raises(errors.ConfigError, match="SNAPSYNC_REGIONS: 'mars-1' is not a Workspace"):
        settings_module.load_settings(projects="auto", regions="mars-1").project_list()
    with pytest.raises(errors.ConfigError, match="only with SNAPSYNC_PROJECTS=auto"):
        settings_module.load_settings(projects="abc", regions="cn-north-4").project_list()


def test_the_status_line_says_where_the_projects_come_from() -> None:
    configured = settings_module.load_settings(projects="a1,b2@eu-west-101")
    line = status.source_line(configured, ["a1", "c3"])
    assert line.startswith("projects: 2 configured in SNAPSYNC_PROJECTS; 1 more in the database")
    assert line.endswith("no longer configured (not synced, data kept)")
    unset = status.source_line(settings_module.load_settings(projects=""), ["a1"])
    assert unset == "projects: SNAPSYNC_PROJECTS is not set here; 1 in the database"
    auto = settings_module.load_settings(projects="auto", regions="eu-west-101")
    line = status.source_line(auto, ["a1"])
    assert "discovered through IAM (eu-west-101)" in line and "1 in the database" in line


def test_the_cli_refuses_auto_mixed_with_ids_in_one_line(workdir: Path) -> None:
    mixed = {"SNAPSYNC_PROJECTS": "auto,0123", "SNAPSYNC_AUTH": "token"}
    done = run_cli_sync("sync", env=mixed, cwd=workdir)
    (line,) = done.stderr.strip().splitlines()
    assert done.code == 2 and "SNAPSYNC_PROJECTS" in line and "cannot be mixed" in line


async def iam_listings(sim: RunningSimulator) -> int:
    stats = await sim.control("GET", "/_sim/stats")
    return int(stats["iam_requests_by_path"].get(LISTING, 0))


def auth_env(sim: RunningSimulator, mode: str) -> dict[str, str]:
    """Credentials of the simulator for one SNAPSYNC_AUTH mode."""
    opts = sim.options
    if mode == "token":
        return {"SNAPSYNC_AUTH": "token", "SNAPSYNC_AUTH_TOKEN": opts.auth_token or ""}
    if mode == "aksk-temporary":
        return {**auth_env(sim, "aksk"), "SNAPSYNC_SECURITY_TOKEN": "temporary-session-token"}
    if mode == "password":
        return {
            "SNAPSYNC_AUTH": "password",
            "SNAPSYNC_IAM_USER": opts.iam_user or "",
            "SNAPSYNC_IAM_PASSWORD": opts.iam_password or "",
            "SNAPSYNC_IAM_DOMAIN": opts.iam_domain or "",
        }
    return {
        "SNAPSYNC_AUTH": "aksk",
        "SNAPSYNC_ACCESS_KEY": opts.access_key or "",
        "SNAPSYNC_SECRET_KEY": opts.secret_key or "",
    }


@pytest.mark.parametrize("mode", ["token", "aksk", "aksk-temporary", "password"])
async def test_sync_auto_mirrors_every_project_with_its_region_and_one_iam_call(
    mode: str, database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(
        projects=3, snapshots=12, regions=("cn-north-4", "eu-west-101", "cn-north-4")
    ) as sim:
        env = {
            **env_for(sim, database_url, SNAPSYNC_PROJECTS="auto"),
            **auth_env(sim, mode),
        }
        done = await run_cli("sync", env=env, cwd=workdir)
        assert done.code == 0, done.output
        expected = {pid: sim.population.region(pid) for pid in sim.project_ids}
        rows = await sql.fetch("SELECT project_id, region FROM projects")
        assert {r["project_id"]: r["region"] for r in rows} == expected
        assert sorted(expected.values()) == ["cn-north-4", "cn-north-4", "eu-west-101"]
        for pid in sim.project_ids:
            stored = await sql.fetchval(
                "SELECT count(*) FROM snapshots WHERE project_id = $1 AND deleted_at IS NULL",
                pid,
            )
            assert stored == len(sim.items(pid))
            assert f"{pid}: succeeded" in done.stdout
        assert "MOS" not in done.stdout
        assert await iam_listings(sim) == 1


async def test_projects_without_workspace_are_skipped_with_one_warning(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=3, snapshots=5, forbidden_projects=1) as sim:
        forbidden = sim.project_ids[0]
        unused = await sim.control(
            "POST", "/_sim/projects", {"region": "cn-north-4", "workspace": False}
        )
        unused_id = unused["project_id"]
        env = env_for(sim, database_url, SNAPSYNC_PROJECTS="auto")
        done = await run_cli("sync", env=env, cwd=workdir)
        assert done.code == 0, done.output
        for skipped, status in ((forbidden, "403"), (unused_id, "404")):
            lines = [line for line in done.stderr.splitlines() if skipped in line]
            assert len(lines) == 1, done.stderr
            assert "skipped" in lines[0] and f"HTTP {status}" in lines[0]
            assert skipped not in done.stdout
        synced = {r["project_id"] for r in await sql.fetch("SELECT project_id FROM projects")}
        assert synced == set(sim.project_ids[1:])
        assert await sql.fetchval("SELECT count(*) FROM sync_runs WHERE status = 'failed'") == 0
        shown = await run_cli("status", env=env, cwd=workdir)
        assert shown.code == 0
        assert "projects: SNAPSYNC_PROJECTS=auto, discovered through IAM" in shown.stdout
        assert "2 in the database" in shown.stdout


async def test_sync_auto_says_in_one_line_what_to_fix(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=3, iam_projects_status=403) as sim:
        env = env_for(sim, database_url, SNAPSYNC_PROJECTS="auto")
        refused = await run_cli("sync", env=env, cwd=workdir)
        line = refused.stderr.strip().splitlines()[-1]
        assert refused.code == 1, refused.output
        assert line.startswith("snapsync: discovery failed: ")
        assert "GET /v3/auth/projects (KeystoneListAuthProjects) at http" in line
        assert ": HTTP 403" in line and "needs no IAM policy" in line
        assert "SNAPSYNC_PROJECTS" in line
        assert "Traceback" not in refused.output

        await sim.control("POST", "/_sim/faults", {"iam_projects_status": 0})
        # Every project is in cn-north-4 or ap-southeast-1: keeping only eu-west-101 keeps none.
        narrowed = await run_cli(
            "sync", env={**env, "SNAPSYNC_REGIONS": "eu-west-101"}, cwd=workdir
        )
        assert narrowed.code == 2, narrowed.output
        last = narrowed.stderr.strip().splitlines()[-1]
        assert "SNAPSYNC_PROJECTS: auto found no project in a Workspace region" in last
        assert "SNAPSYNC_REGIONS" in last
        assert await sql.fetchval("SELECT count(*) FROM projects") == 0


async def metric_lines(running: Any, name: str) -> list[str]:
    status, body = await running.get("/metrics")
    assert status == 200
    return [line for line in body.splitlines() if line.startswith(name)]


async def test_the_daemon_follows_the_account_within_a_discovery_interval(
    database_url: str, sql: asyncpg.Connection, launch: Launch
) -> None:
    async with serve(projects=2, snapshots=8, forbidden_projects=0) as sim:
        first, second = sim.project_ids
        env = env_for(sim, database_url, SNAPSYNC_PROJECTS="auto", SNAPSYNC_DISCOVERY_INTERVAL="2")
        running = await launch(env)

        async def synced(pid: str) -> bool:
            return bool(
                await sql.fetchval(
                    "SELECT count(*) FROM sync_runs WHERE project_id = $1 AND status = 'succeeded'",
                    pid,
                )
            )

        for pid in (first, second):
            await wait_for(lambda pid=pid: synced(pid), timeout=15, what=f"{pid} synced")
        info = await metric_lines(running, "snapsync_project_info{")
        assert any(first in line and 'source="discovered"' in line for line in info), info
        assert await metric_lines(running, "snapsync_discovery_last_run_timestamp_seconds ")

        # A project added to the account is synced within about one discovery interval...
        added = (await sim.control("POST", "/_sim/projects", {"region": "ap-southeast-1"}))[
            "project_id"
        ]
        await wait_for(lambda: synced(added), timeout=15, what="the new project synced")
        region = await sql.fetchval("SELECT region FROM projects WHERE project_id = $1", added)
        assert region == "ap-southeast-1"

        # ...one without Workspace is skipped and shown as such...
        unused = (
            await sim.control(
                "POST", "/_sim/projects", {"region": "cn-north-4", "workspace": False}
            )
        )["project_id"]

        async def skipped_shown() -> list[str]:
            lines = await metric_lines(running, "snapsync_project_skipped_info{")
            return [line for line in lines if unused in line]

        (shown,) = await wait_for(skipped_shown, timeout=15, what="the skipped project shown")
        assert 'reason="workspace_not_found"' in shown

        # ...one that vanishes stops being synced and keeps its data.
        await sim.control("DELETE", f"/_sim/projects/{second}")

        async def gone_from_metrics() -> bool:
            info = await metric_lines(running, "snapsync_project_info{")
            return bool(info) and not any(second in line for line in info)

        await wait_for(gone_from_metrics, timeout=15, what="the vanished project dropped")
        runs_then = await sql.fetchval(
            "SELECT count(*) FROM sync_runs WHERE project_id = $1", second
        )
        kept = await sql.fetchval(
            "SELECT count(*) FROM snapshots WHERE project_id = $1 AND deleted_at IS NULL", second
        )
        assert kept == 8

        # IAM refusing the listing changes nothing: the known projects keep being synced.
        await sim.control("POST", "/_sim/faults", {"iam_projects_status": 403})
        before = await sql.fetchval("SELECT count(*) FROM sync_runs WHERE project_id = $1", first)

        async def failed_discovery() -> list[str]:
            lines = await metric_lines(running, 'snapsync_discovery_runs_total{outcome="failed"}')
            return [line for line in lines if not line.endswith(" 0.0")]

        await wait_for(failed_discovery, timeout=15, what="a refused discovery")

        async def synced_again() -> bool:
            now = await sql.fetchval(
                "SELECT count(*) FROM sync_runs WHERE project_id = $1 AND status = 'succeeded'",
                first,
            )
            return bool(now > before)

        await wait_for(synced_again, timeout=15, what="the known project synced on")
        assert (
            await sql.fetchval("SELECT count(*) FROM sync_runs WHERE project_id = $1", second)
            == runs_then
        )
        assert "did not list the projects" in running.log
        assert await running.signal_and_wait() == 0
        stats = await sim.control("GET", "/_sim/stats")
        assert json.dumps(stats)  # the simulator still answers


async def test_status_shows_what_the_newest_discovery_found_skipped_and_when(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=3, snapshots=4, forbidden_projects=1) as sim:
        forbidden, kept, leaving = sim.project_ids
        unused = (
            await sim.control(
                "POST", "/_sim/projects", {"region": "cn-north-4", "workspace": False}
            )
        )["project_id"]
        env = env_for(sim, database_url, SNAPSYNC_PROJECTS="auto")
        before = await run_cli("status", env=env, cwd=workdir)
        assert before.code == 0, before.output
        assert "discovery: none stored in this database yet" in before.stdout

        assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
        rows = await sql.fetch("SELECT project_id, reason, detail FROM skipped_projects")
        assert {r["project_id"]: r["reason"] for r in rows} == {
            forbidden: "workspace_forbidden",
            unused: "workspace_not_found",
        }
        assert all("HTTP 40" in r["detail"] for r in rows)
        discovered = await sql.fetch(
            "SELECT project_id FROM projects WHERE discovered_at IS NOT NULL"
        )
        assert {r["project_id"] for r in discovered} == {kept, leaving}
        shown = await run_cli("status", env=env, cwd=workdir)
        assert shown.code == 0, shown.output
        (ran,) = [line for line in shown.stdout.splitlines() if "discovery: last ran" in line]
        assert " ago): 2 project(s) discovered in the database" in ran
        (skipped,) = [line for line in shown.stdout.splitlines() if "discovery: skipped" in line]
        assert "skipped 2 (Workspace answered 403 or 404" in skipped
        assert f"1 workspace_forbidden ({forbidden})" in skipped
        assert f"1 workspace_not_found ({unused})" in skipped

        # A project that vanished from the account is counted as no longer listed.
        await sim.control("DELETE", f"/_sim/projects/{leaving}")
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
        shown = await run_cli("status", env=env, cwd=workdir)
        assert "1 no longer listed (not synced, data kept)" in shown.stdout

        # IAM refusing: the failure and the newest list's age; what it skipped is kept.
        await sim.control("POST", "/_sim/faults", {"iam_projects_status": 403})
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 1
        shown = await run_cli("status", env=env, cwd=workdir)
        (ran,) = [line for line in shown.stdout.splitlines() if "discovery: last ran" in line]
        assert "and failed: IAM did not list the projects" in ran
        assert "IAM last listed the projects: 20" in ran
        state = await sql.fetchrow("SELECT ran_at, succeeded_at, problem FROM discovery_state")
        assert state["ran_at"] > state["succeeded_at"] and "HTTP 403" in state["problem"]
        assert await sql.fetchval("SELECT count(*) FROM skipped_projects") == 2
        for secret in (sim.options.access_key, sim.options.secret_key, sim.options.auth_token):
            if secret:
                assert secret not in shown.output
                assert secret not in state["problem"]


async def test_readyz_is_not_ready_while_discovery_has_found_no_project(
    database_url: str, sql: asyncpg.Connection, launch: Launch
) -> None:
    async with serve(projects=1, snapshots=3, iam_projects_status=403) as sim:
        env = env_for(sim, database_url, SNAPSYNC_PROJECTS="auto", SNAPSYNC_DISCOVERY_INTERVAL="2")
        running = await launch(env)

        async def refused() -> dict[str, Any] | None:
            status, body = await running.get("/readyz")
            state = json.loads(body)
            refusal = "did not list the projects" in state.get("discovery", "")
            return state if status == 503 and refusal else None

        state = await wait_for(refused, timeout=15, what="/readyz naming the discovery")
        assert state["ready"] is False and state["projects"] == 0
        assert state["database"] == "ok" and state["stale"] == []
        assert state["discovery"].startswith("SNAPSYNC_PROJECTS=auto has no project to sync: ")

        await sim.control("POST", "/_sim/faults", {"iam_projects_status": 0})

        async def ready() -> dict[str, Any] | None:
            status, body = await running.get("/readyz")
            return json.loads(body) if status == 200 else None

        state = await wait_for(ready, timeout=20, what="/readyz ready once a project is synced")
        assert state["projects"] == 1 and "discovery" not in state
        assert await running.signal_and_wait() == 0
