"""The alert rules, the dashboard's PromQL and /metrics, read by a real Prometheus.

promtool checks the shipped configuration and runs the rules' unit tests; then `snapsync
simulate` and `snapsync run` run as an operator starts them, a Prometheus on 127.0.0.1 scrapes
the daemon every second with the shipped rules loaded, and its HTTP API evaluates every
expression of the Grafana dashboard and of the rules. Needs Debian's `prometheus` package
(server and promtool); skipped, saying so, where it is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from app import metrics
from app.simulator.control import SimulatorControl

from ..conftest import REPO, cli_env
from .test_daemon import RunningDaemon, daemon_command, free_port, wait_for

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
CONFIG = REPO / "deploy" / "prometheus.yml"
DASHBOARD = REPO / "docs" / "grafana" / "snapsync.json"

MISSING = "Debian's prometheus package is not installed (apt-get install prometheus)"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason=f"no promtool on PATH: {MISSING}"
)
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None or shutil.which("promtool") is None,
    reason=f"no prometheus or promtool on PATH: {MISSING}",
)

# What Grafana puts in place of its variables, for a 1 s scrape interval and a short range.
GRAFANA_VARIABLES = {"__rate_interval": "30s", "__interval": "5s", "__range": "5m"}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


# -- what the daemon exports for the rules ------------------------------------------------------


def test_the_series_the_rules_count_exist_from_the_start() -> None:
    # increase() cannot see the first value of a series: a burst of five failures in one sync
    # must land on a series already at 0.
    text = metrics.Metrics(["p1", "p2"]).render().decode()
    for pid in ("p1", "p2"):
        assert (
            f'snapsync_status_transitions_total{{from_status="creating",project_id="{pid}",'
            'to_status="create_failed"} 0.0'
        ) in text
        assert f'snapsync_api_requests_total{{code="429",project_id="{pid}"}} 0.0' in text
    assert "# TYPE snapsync_sync_interval_seconds gauge" in text
    assert "process_start_time_seconds " in text


# -- promtool on the shipped files --------------------------------------------------------------


@needs_promtool
def test_the_shipped_rules_and_configuration_pass_promtool() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    # Resolves rule_files relative to deploy/, as Prometheus does in the compose container.
    config = promtool("check", "config", str(CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@needs_promtool
def test_the_rule_tests_fail_when_a_rule_is_wrong(tmp_path: Path) -> None:
    # Counting first sightings would page on every first sync of a tenant with old failures.
    wrong = RULES.read_text().replace('from_status!~"none|deleted"', 'from_status!="deleted"')
    assert wrong != RULES.read_text()
    (tmp_path / "alerts.yml").write_text(wrong)
    shutil.copy(RULE_TESTS, tmp_path / "alerts.test.yml")
    tested = promtool("test", "rules", str(tmp_path / "alerts.test.yml"))
    assert tested.returncode != 0
    assert "a burst of failed creations" in tested.stdout + tested.stderr


# -- a real Prometheus scraping a real daemon ---------------------------------------------------


def dashboard_expressions() -> list[str]:
    """The PromQL of every Prometheus target of the Grafana dashboard, as written."""
    board = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                source = target.get("datasource") or panel.get("datasource") or {}
                if source.get("type") == "prometheus" and not target.get("hide"):
                    found.append(target["expr"])

    walk(board["panels"])
    return found


def substitute(expr: str, project_ids: list[str]) -> str:
    """`expr` with Grafana's variables replaced as Grafana would (`$project` set to All)."""
    values = {**GRAFANA_VARIABLES, "project": "(" + "|".join(map(re.escape, project_ids)) + ")"}

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown Grafana variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


@dataclass
class Prometheus:
    """A Prometheus server on 127.0.0.1 and its HTTP API."""

    proc: asyncio.subprocess.Process
    url: str
    log_path: Path
    http: aiohttp.ClientSession

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/PATH; the `data` of a successful answer, else an AssertionError."""
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
        assert body["status"] == "success", f"{path} {params}: {body}"
        return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now (raises on an error or another type)."""
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return list(data["result"])


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def simulator(workdir: Path, *options: str) -> AsyncIterator[dict[str, str]]:
    """`snapsync simulate` on a free loopback port; the settings its banner prints."""
    with (workdir / "simulator.log").open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app",
            "simulate",
            "--port=0",
            *options,
            env=cli_env({}),
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
    try:
        assert proc.stdout is not None
        settings: dict[str, str] = {}
        wanted = {"SNAPSYNC_WORKSPACE_ENDPOINT", "SNAPSYNC_PROJECTS", "SNAPSYNC_SECRET_KEY"}
        while not wanted <= settings.keys():
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            assert line, f"the simulator ended:\n{(workdir / 'simulator.log').read_text()}"
            name, sep, value = line.strip().partition("=")
            if sep and not name.startswith("#"):
                settings[name] = value
        yield settings
    finally:
        await stop(proc)


@contextlib.asynccontextmanager
async def prometheus(workdir: Path, target: str) -> AsyncIterator[Prometheus]:
    """Prometheus scraping `target` every second with the shipped rules, on 127.0.0.1 only."""
    port = free_port()
    config = workdir / "prometheus.yml"
    # deploy/prometheus.yml with a 1 s scrape of `target` and the rule file's absolute path
    # (JSON is YAML).
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "snapsync",
                        "metrics_path": "/metrics",
                        "static_configs": [{"targets": [target]}],
                    }
                ],
            }
        )
    )
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            cwd=workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log_file,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            server = Prometheus(proc=proc, url=url, log_path=log_path, http=http)

            async def ready() -> bool:
                assert proc.returncode is None, f"prometheus exited:\n{server.log}"
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{url}/-/ready") as response:
                        return response.status == 200
                return False

            await wait_for(ready, timeout=30, what="prometheus to be ready")
            yield server
    finally:
        await stop(proc)


@needs_prometheus
async def test_a_real_prometheus_reads_the_metrics_and_evaluates_every_expression(
    database_url: str, workdir: Path
) -> None:
    # Three projects, the first answering 403: it never syncs. Nothing changes on its own.
    async with simulator(
        workdir,
        "--projects=3",
        "--snapshots=40",
        "--seed=7",
        "--tick-seconds=0",
        "--forbidden-projects=1",
    ) as settings:
        port = free_port()
        log_path = workdir / "daemon.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *daemon_command(),
                env=cli_env(
                    {
                        **settings,
                        "SNAPSYNC_DATABASE_URL": database_url,
                        "SNAPSYNC_HTTP_PORT": str(port),
                        "SNAPSYNC_SYNC_INTERVAL": "1",
                    }
                ),
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        daemon = RunningDaemon(proc=proc, port=port, log_path=log_path)
        try:
            await daemon.wait_http()
            async with prometheus(workdir, f"127.0.0.1:{port}") as server:
                sim = SimulatorControl(settings["SNAPSYNC_WORKSPACE_ENDPOINT"], server.http)
                await check_prometheus(server, daemon, sim, settings["SNAPSYNC_PROJECTS"])
        finally:
            await stop(proc)


async def check_prometheus(
    server: Prometheus, daemon: RunningDaemon, sim: SimulatorControl, configured: str
) -> None:
    projects = [entry.split("@")[0] for entry in configured.split(",")]  # ID or ID@REGION
    forbidden, synced = projects[0], projects[1:]

    async def scraped() -> bool:
        result = await server.query('count_over_time(up{job="snapsync"}[1m])')
        return bool(result) and float(result[0]["value"][1]) >= 3

    await wait_for(scraped, timeout=60, what=f"3 scrapes of the daemon:\n{server.log}")
    (up,) = await server.query('up{job="snapsync"}')
    assert up["value"][1] == "1", daemon.log
    (interval,) = await server.query("snapsync_sync_interval_seconds")
    assert interval["value"][1] == "1"

    # Every rule evaluates without error.
    async def evaluated() -> list[dict[str, Any]]:
        groups = (await server.api("rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if all(rule["health"] != "unknown" for rule in rules) else []

    rules = await wait_for(evaluated, timeout=30, what="every rule to be evaluated")
    assert len(rules) == 6
    for rule in rules:
        assert rule["health"] == "ok", rule
    queries = {rule["name"]: rule["query"] for rule in rules}

    async def holding(name: str) -> list[dict[str, Any]]:
        """The series for which the condition of the alert `name` holds now."""
        return await server.query(queries[name])

    # The forbidden project never synced: stale (the others too, until their first success),
    # so the daemon is not ready. The rest describes a healthy setup.
    async def only_forbidden_stale() -> bool:
        stale = await holding("SnapsyncProjectNotSynced")
        return [s["metric"]["project_id"] for s in stale] == [forbidden]

    await wait_for(only_forbidden_stale, timeout=30, what="only the forbidden project stale")
    assert await holding("SnapsyncNotReady")
    assert not await holding("SnapsyncDown")
    assert not await holding("SnapsyncDatabaseDown")
    assert not await holding("SnapsyncApiThrottled")
    # The first sync found old create_failed snapshots: first sightings are no burst.
    first_sightings = await server.query(
        'snapsync_status_transitions_total{from_status="none",to_status="create_failed"}'
    )
    assert sum(float(s["value"][1]) for s in first_sightings) > 0
    assert not await holding("SnapsyncCreationFailures")

    # Prometheus's own alerts (pending: their `for` has not run out).
    async def pending_stale() -> bool:
        alerts = (await server.api("alerts"))["alerts"]
        names = {(a["labels"]["alertname"], a["labels"].get("project_id")) for a in alerts}
        return ("SnapsyncProjectNotSynced", forbidden) in names and not {
            ("SnapsyncProjectNotSynced", pid) for pid in synced
        } & names

    await wait_for(pending_stale, timeout=10, what="the stale project's alert alone pending")

    # Six creations fail in one project, seen by full syncs: creating, then create_failed.
    target = synced[0]

    async def count(status: str) -> float:
        found = await server.query(f'snapsync_snapshots{{project_id="{target}",status="{status}"}}')
        return float(found[0]["value"][1]) if found else 0.0

    items = await sim.snapshots(target)
    chosen = [i["snapshot_id"] for i in items if i["status"] == "create_success"][:6]
    assert len(chosen) == 6
    for status in ("creating", "create_failed"):
        expected = await count(status) + 6
        for snapshot_id in chosen:
            await sim.patch(target, snapshot_id, {"status": status})

        async def seen(status: str = status, expected: float = expected) -> bool:
            return await count(status) >= expected

        await wait_for(seen, timeout=20, what=f"six more {status} snapshots in Prometheus")

    async def burst() -> list[dict[str, Any]]:
        return await holding("SnapsyncCreationFailures")

    (failed,) = await wait_for(burst, timeout=20, what="the burst of failed creations")
    assert failed["metric"]["project_id"] == target
    assert float(failed["value"][1]) >= 6

    # The API throttles 3 requests in 5: the share of 429s climbs past the threshold.
    await sim.set_faults(fault_429=0.6)

    async def throttled() -> list[dict[str, Any]]:
        return await holding("SnapsyncApiThrottled")

    (share,) = await wait_for(throttled, timeout=30, what="the share of 429s past 10%")
    assert share["metric"]["job"] == "snapsync"

    # The dashboard: every expression evaluates, and each returns series.
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    for expr in expressions:
        result = await server.query(substitute(expr, projects))
        assert result, f"no series for the dashboard's {expr}"
    by_project = await server.query(
        substitute(
            'max by (project_id) (snapsync_seconds_since_last_success{project_id=~"$project"})',
            projects,
        )
    )
    assert sorted(s["metric"]["project_id"] for s in by_project) == sorted(synced)

    # promtool's lint of the exposition format, on what the daemon serves.
    status, text = await daemon.get("/metrics")
    assert status == 200
    linted = promtool("check", "metrics", stdin=text)
    assert linted.returncode == 0 and not linted.stdout + linted.stderr, (
        linted.stdout + linted.stderr
    )
