"""The reporting surface: views, comments, the snapsync_reader role, NOTIFY, docs/reporting.md's
queries and the Grafana dashboard.

One scripted scenario is synced through the CLI from the simulator (a module fixture); every
query of docs/reporting.md runs against it and its answer is checked against `Oracle`, a model
of the history the script must have produced.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import statistics
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app import db, metrics

from ..conftest import REPO, _admin, _asyncpg_dsn, run_cli, with_database
from .simulated import RunningSimulator, serve

DOCS = REPO / "docs" / "reporting.md"
DASHBOARD = REPO / "docs" / "grafana" / "snapsync.json"
PROVISIONING = REPO / "docs" / "grafana" / "provisioning"
READER = "snapsync_reader"
VIEWS = {
    "snapshots",
    "snapshots_current",
    "snapshot_status_intervals",
    "snapshot_operation_durations",
    "desktop_snapshot_coverage",
    "project_sync_health",
}
SUCCESSFUL = {"create_success", "restoring", "restore_success", "restore_failed"}
CREATE_OFFSETS = (300, 600, 900, 1200)  # seconds before t0; the last one fails
STUCK_OFFSET = 7200


def api_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


# -- the docs ---------------------------------------------------------------------------------


def doc_queries() -> list[tuple[str, str]]:
    """(heading, sql) of every ```sql block of docs/reporting.md, in order."""
    found: list[tuple[str, str]] = []
    heading = ""
    fence: str | None = None  # the language of the fenced block we are in
    block: list[str] = []
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if fence is None and line.startswith("```"):
            fence, block = line[3:].strip(), []
        elif fence is not None and line.strip() == "```":
            if fence == "sql":
                found.append((heading, "\n".join(block)))
            fence = None
        elif fence is not None:
            block.append(line)
        elif line.startswith("#"):
            heading = line.lstrip("#").strip()
    assert fence is None, "an unterminated fenced block in docs/reporting.md"
    return found


# -- the oracle -------------------------------------------------------------------------------

Key = tuple[str, str]  # (project_id, snapshot_id)
Row = tuple[int, str | None, str]  # (sync number, from_status, to_status)


class Oracle:
    """The history snapsync must have written, derived from what each successful sync listed
    (SNAPSYNC_DELETE_AFTER_MISSES=1: one complete listing without a snapshot deletes it)."""

    def __init__(self, observations: list[dict[str, dict[str, dict[str, Any]]]]) -> None:
        self.rows: dict[Key, list[Row]] = {}
        self.current: dict[str, dict[str, dict[str, Any]]] = {}
        self.ever: dict[Key, dict[str, Any]] = {}
        state: dict[Key, str] = {}
        for k, listing in enumerate(observations, start=1):
            for pid, items in listing.items():
                for sid, item in items.items():
                    key = (pid, sid)
                    self.ever[key] = item
                    old = state.get(key)
                    if old != item["status"]:
                        self.rows.setdefault(key, []).append((k, old, item["status"]))
                    state[key] = item["status"]
                for key, old in list(state.items()):
                    if key[0] == pid and key[1] not in items and old != "deleted":
                        self.rows[key].append((k, old, "deleted"))
                        state[key] = "deleted"
                self.current[pid] = items

    def live(self) -> dict[Key, dict[str, Any]]:
        return {
            (pid, sid): item for pid, items in self.current.items() for sid, item in items.items()
        }

    def creation_outcome(self, key: Key) -> str:
        for _, _, to in self.rows[key]:
            if to != "creating":
                return "create_success" if to in SUCCESSFUL else to
        return "running"

    def restores(self, key: Key) -> list[tuple[str, bool]]:
        """(outcome, observed_in_flight) of each restore of a snapshot."""
        rows = self.rows[key]
        found = []
        for i, (_, frm, to) in enumerate(rows):
            if to == "restoring":
                found.append((rows[i + 1][2] if i + 1 < len(rows) else "running", True))
            elif to in ("restore_success", "restore_failed") and frm not in (
                None,
                "restoring",
                "deleted",
            ):
                found.append((to, False))
        return found

    def all_rows(self) -> list[tuple[Key, Row]]:
        return [(key, row) for key, rows in self.rows.items() for row in rows]

    def coverage(self, system: bool) -> dict[Key, tuple[datetime | None, int]]:
        """Per desktop: newest successful live snapshot of the disk, failed creations since."""
        desktops = {(pid, item["desktop_id"]) for (pid, _), item in self.ever.items()}
        newest: dict[Key, datetime] = {}
        for (pid, _), item in self.live().items():
            if item["is_system_disk"] is system and item["status"] in SUCCESSFUL:
                when = parse_time(item["create_time"])
                assert when is not None
                desk = (pid, item["desktop_id"])
                newest[desk] = max(newest.get(desk, when), when)
        result: dict[Key, tuple[datetime | None, int]] = {}
        for desk in desktops:
            since = newest.get(desk)
            failed = 0
            for (pid, _), item in self.ever.items():
                created = parse_time(item["create_time"])
                assert created is not None
                if (
                    (pid, item["desktop_id"]) == desk
                    and item["is_system_disk"] is system
                    and item["status"] == "create_failed"
                    and (since is None or created > since)
                ):
                    failed += 1
            result[desk] = (since, failed)
        return result


# -- the scenario -----------------------------------------------------------------------------


@dataclass
class Scenario:
    """The simulator, the database it was synced into, and what the script did."""

    url: str
    sim: RunningSimulator
    t0: datetime
    workdir: Path
    observations: list[dict[str, dict[str, dict[str, Any]]]] = field(default_factory=list)
    started: list[datetime] = field(default_factory=list)
    ended: list[datetime] = field(default_factory=list)
    script: dict[str, Any] = field(default_factory=dict)

    @property
    def a(self) -> str:
        return self.sim.project_ids[0]

    @property
    def b(self) -> str:
        return self.sim.project_ids[1]

    async def sync(self, expect: int = 0) -> str:
        self.started.append(datetime.now(UTC))
        env = {
            **self.sim.env(),
            "SNAPSYNC_DATABASE_URL": self.url,
            "SNAPSYNC_DELETE_AFTER_MISSES": "1",
            "SNAPSYNC_MAX_RETRIES": "0",
        }
        result = await run_cli("sync", env=env, cwd=self.workdir)
        self.ended.append(datetime.now(UTC))
        assert result.code == expect, result.output
        listing = {}
        for pid in self.sim.project_ids:
            if f"{pid}: succeeded" in result.stdout:
                listing[pid] = self.sim.items(pid)
        self.observations.append(listing)
        return result.stdout

    def oracle(self) -> Oracle:
        return Oracle(self.observations)


async def play(sc: Scenario) -> None:
    """Three syncs: a first look; creations and restores in flight and a deletion; their ends,
    a restore that happened between two syncs, another deletion, and project B failing."""
    population = sc.sim.population
    a = sc.a
    await sc.sync()

    settled = [s for s in population.snapshots(a) if s.status == "create_success"]
    desktops = population.desktops(a)
    creations = []
    for offset, desktop in zip(CREATE_OFFSETS, desktops, strict=False):
        snap = population.add_snapshot(
            a,
            {
                "status": "creating",
                "process": 0,
                "create_time": api_time(sc.t0 - timedelta(seconds=offset)),
                "desktop_id": desktop.desktop_id,
                "desktop_name": desktop.desktop_name,
                "desktop_sid": desktop.desktop_sid,
                "is_system_disk": True,
            },
        )
        creations.append(snap.snapshot_id)
    stuck = population.add_snapshot(
        a,
        {
            "status": "creating",
            "process": 5,
            "create_time": api_time(sc.t0 - timedelta(seconds=STUCK_OFFSET)),
        },
    )
    r1, r2, r3, d1, d2 = (s.snapshot_id for s in settled[:5])
    population.set_fields(a, r1, {"status": "restoring", "process": 10})
    population.set_fields(a, r2, {"status": "restoring", "process": 40})
    population.delete_snapshot(a, d1)
    sc.script = {"creations": creations, "stuck": stuck.snapshot_id, "deleted": [d1, d2]}
    await sc.sync()

    for sid in creations[:-1]:
        population.set_fields(a, sid, {"status": "create_success", "process": None})
    population.set_fields(a, creations[-1], {"status": "create_failed", "process": None})
    population.set_fields(
        a,
        r1,
        {"status": "restore_success", "process": None, "last_restore_time": api_time(sc.t0)},
    )
    population.set_fields(
        a,
        r2,
        {
            "status": "restore_failed",
            "process": None,
            "restore_fail_reason": "Insufficient EVS disk quota.",
        },
    )
    population.set_fields(
        a,
        r3,
        {"status": "restore_failed", "restore_fail_reason": "The desktop is not stopped."},
    )
    population.delete_snapshot(a, d2)
    body = {"error_code": "Workspace.0403", "error_msg": "Forbidden"}
    await sc.sim.control(
        "POST",
        f"/_sim/projects/{sc.b}/raw-pages",
        [{"status": 403, "body": json.dumps(body), "content_type": "application/json"}],
    )
    await sc.sync(expect=1)


@pytest.fixture(scope="module")
async def scenario(
    pg_server_url: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scenario]:
    name = f"snapsync_report_{uuid.uuid4().hex[:12]}"
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    t0 = datetime.now(UTC).replace(microsecond=0)
    try:
        async with serve(projects=2, snapshots=60, seed=21, start_time=t0) as sim:
            sc = Scenario(
                url=with_database(pg_server_url, name),
                sim=sim,
                t0=t0,
                workdir=tmp_path_factory.mktemp("reporting"),
            )
            await play(sc)
            yield sc
    finally:
        admin = await _admin(pg_server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture(scope="module")
async def owner(scenario: Scenario) -> AsyncIterator[asyncpg.Connection]:
    """The scenario's database as the user that migrated it."""
    conn = await asyncpg.connect(**_asyncpg_dsn(scenario.url))  # type: ignore[arg-type]
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def reader(
    scenario: Scenario, owner: asyncpg.Connection
) -> AsyncIterator[asyncpg.Connection]:
    """A throwaway LOGIN role granted snapsync_reader, connected to the scenario's database."""
    role = f"snapsync_test_login_{uuid.uuid4().hex[:10]}"
    await owner.execute(f'CREATE ROLE "{role}" LOGIN IN ROLE {READER}')
    try:
        dsn = {**_asyncpg_dsn(scenario.url), "user": role, "password": None}
        conn = await asyncpg.connect(**dsn)  # type: ignore[arg-type]
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        await owner.execute(f'DROP ROLE "{role}"')


async def relations(conn: asyncpg.Connection) -> dict[str, str]:
    """Every table and view of the schema: name -> relkind."""
    rows = await conn.fetch(
        "SELECT c.relname, c.relkind::text AS kind FROM pg_class AS c "
        "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')"
    )
    return {r["relname"]: r["kind"] for r in rows}


# -- self-description -------------------------------------------------------------------------


async def test_every_relation_and_column_describes_itself(owner: asyncpg.Connection) -> None:
    found = await relations(owner)
    assert VIEWS | {"snapshot_records", "projects", "snapshot_status_history", "sync_runs"} <= set(
        found
    )
    missing = await owner.fetch(
        """
        SELECT c.relname, NULL AS attname FROM pg_class AS c
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
          AND coalesce(trim(obj_description(c.oid, 'pg_class')), '') = ''
        UNION ALL
        SELECT c.relname, a.attname FROM pg_attribute AS a
        JOIN pg_class AS c ON c.oid = a.attrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f')
          AND a.attnum > 0 AND NOT a.attisdropped
          AND coalesce(trim(col_description(c.oid, a.attnum)), '') = ''
        """
    )
    assert [tuple(r) for r in missing] == []
    create_time = await owner.fetchval(
        "SELECT col_description(attrelid, attnum) FROM pg_attribute "
        "WHERE attrelid = 'snapshots'::regclass AND attname = 'create_time'"
    )
    assert "UTC" in create_time


# -- docs/reporting.md ------------------------------------------------------------------------

Check = Callable[[Scenario, Oracle, list[asyncpg.Record], datetime], None]
CHECKS: dict[str, Check] = {}


def check(heading: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        CHECKS[heading] = fn
        return fn

    return register


@check("Failed snapshots in the last 7 days, by desktop")
def _failed_by_desktop(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    expected: Counter[tuple[str, str, str]] = Counter()
    for (pid, _), item in o.ever.items():
        created = parse_time(item["create_time"])
        assert created is not None
        if item["status"] == "create_failed" and created >= now - timedelta(days=7):
            expected[(pid, item["desktop_id"], item["desktop_name"])] += 1
    assert expected, "the scenario has a recent failed creation"
    got = {(r["project_id"], r["desktop_id"], r["desktop_name"]): r["failed"] for r in rows}
    assert got == dict(expected)
    failed = sc.script["creations"][-1]
    newest = {(r["project_id"], r["desktop_id"]): r["newest_failure"] for r in rows}
    item = o.ever[(sc.a, failed)]
    assert newest[(sc.a, item["desktop_id"])] == parse_time(item["create_time"])


@check("Median and 95th-percentile creation time per project")
def _creation_percentiles(
    sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime
) -> None:
    # The three successful creations ended between sync 2 (last seen creating) and sync 3.
    assert [r["project_id"] for r in rows] == [sc.a]
    (row,) = rows
    assert row["creations"] == len(CREATE_OFFSETS) - 1
    offsets = [float(x) for x in CREATE_OFFSETS[:-1]]
    median = statistics.median(offsets)
    p95 = offsets[1] + 0.9 * (offsets[2] - offsets[1])  # percentile_cont over three values

    def within(value: float, base: float, sync: int) -> bool:
        low = base + (sc.started[sync - 1] - sc.t0).total_seconds()
        high = base + (sc.ended[sync - 1] - sc.t0).total_seconds()
        return low - 0.01 <= value <= high + 0.01

    assert within(row["median_seconds_at_least"], median, 2), row
    assert within(row["median_seconds_at_most"], median, 3), row
    assert within(row["p95_seconds_at_most"], p95, 3), row


@check("Desktops with no successful system-disk snapshot in the last 24 hours")
def _no_recent_system_disk(
    sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime
) -> None:
    expected = {
        desk: (when, failed)
        for desk, (when, failed) in o.coverage(system=True).items()
        if when is None or when < now - timedelta(hours=24)
    }
    got = {
        (r["project_id"], r["desktop_id"]): (
            r["system_disk_created_at"],
            r["system_disk_failed_since"],
        )
        for r in rows
    }
    assert got == expected
    assert len(rows) == len(got)
    # The desktops of the fresh creations are covered.
    fresh = {(sc.a, o.ever[(sc.a, sid)]["desktop_id"]) for sid in sc.script["creations"][:-1]}
    assert not fresh & set(got)


@check("Why restores fail")
def _restore_reasons(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    expected = Counter(
        item["restore_fail_reason"]
        for item in o.live().values()
        if item["status"] == "restore_failed"
    )
    assert {r["restore_fail_reason"]: r["snapshots"] for r in rows} == dict(expected)
    assert "Insufficient EVS disk quota." in expected
    assert "The desktop is not stopped." in expected


@check("Projects whose data is stale")
def _stale_projects(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    assert [r["project_id"] for r in rows] == [sc.b]
    (row,) = rows
    assert row["consecutive_failures"] == 1
    assert row["last_run_status"] == "failed"
    assert "403" in row["last_run_error"]
    assert row["last_success_at"] is not None


@check("Live snapshots by status over time")
def _status_over_time(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    at_now = {r["status"]: r["snapshots"] for r in rows if r["at"] == now}
    assert at_now == dict(Counter(item["status"] for item in o.live().values()))
    assert all(r["at"] >= sc.started[0] for r in rows)
    assert [r["at"] for r in rows] == sorted(r["at"] for r in rows)


@check("Creations and restores running for more than an hour")
def _running_long(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    expected = {
        key
        for key, item in o.live().items()
        if item["status"] == "creating"
        and now - (parse_time(item["create_time"]) or now) > timedelta(hours=1)
    }
    assert expected == {(sc.a, sc.script["stuck"])}
    assert {(r["project_id"], r["snapshot_id"]) for r in rows} == expected
    assert all(r["operation"] == "create" for r in rows)
    assert rows[0]["running_for_at_least"] >= timedelta(seconds=STUCK_OFFSET)


@check("Creation failure rate per project, last 7 days")
def _failure_rate(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    expected: dict[str, list[int]] = {}
    for key, item in o.ever.items():
        created = parse_time(item["create_time"])
        assert created is not None
        if created < now - timedelta(days=7):
            continue
        counts = expected.setdefault(key[0], [0, 0])
        outcome = o.creation_outcome(key)
        counts[0] += outcome in ("create_success", "create_failed")
        counts[1] += outcome == "create_failed"
    got = {r["project_id"]: [r["finished"], r["failed"]] for r in rows}
    assert got == expected
    for r in rows:
        finished, failed = expected[r["project_id"]]
        percent = None if not finished else round(Decimal(100 * failed) / finished, 1)
        assert r["failed_percent"] == percent


@check("Snapshots deleted in the last 24 hours")
def _deleted(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    expected = {(key, frm) for key, (_, frm, to) in o.all_rows() if to == "deleted"}
    got = {((r["project_id"], r["snapshot_id"]), r["last_status"]) for r in rows}
    assert got == expected
    assert {key[1] for key, _ in got} == set(sc.script["deleted"])
    assert all(r["last_seen_at"] < r["confirmed_gone_at"] for r in rows)


@check("The latest sync runs")
def _latest_runs(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    assert len(rows) == 2 * len(sc.started)
    assert Counter(r["status"] for r in rows) == {"succeeded": 5, "failed": 1}
    assert rows[0]["started_at"] >= rows[-1]["started_at"]
    assert sum(r["transitions"] for r in rows) == len(o.all_rows())
    (failed,) = [r for r in rows if r["status"] == "failed"]
    assert failed["project_id"] == sc.b and "403" in failed["error"]


@check("Restores by outcome, last 7 days")
def _restores(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    expected: dict[tuple[str, str], list[int]] = {}
    for key in o.rows:
        for outcome, in_flight in o.restores(key):
            counts = expected.setdefault((key[0], outcome), [0, 0])
            counts[0] += 1
            counts[1] += in_flight
    got = {(r["project_id"], r["outcome"]): [r["restores"], r["seen_running"]] for r in rows}
    assert got == expected
    assert got[(sc.a, "restore_success")][1] >= 1
    assert got[(sc.a, "restore_failed")][0] - got[(sc.a, "restore_failed")][1] >= 1


@check("Snapshots the API reported against the rows stored")
def _api_vs_rows(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    got = {
        r["project_id"]: (r["api_total_count"], r["live_snapshots"], r["live_minus_api"])
        for r in rows
    }
    assert got == {pid: (len(items), len(items), 0) for pid, items in o.current.items()}
    assert got[sc.a][0] == len(sc.sim.items(sc.a))


@check("Desktops with failed creations since their newest success")
def _failed_since(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    system, data = o.coverage(system=True), o.coverage(system=False)
    expected = {
        desk: (system[desk][1], data[desk][1])
        for desk in system
        if system[desk][1] > 0 or data[desk][1] > 0
    }
    got = {
        (r["project_id"], r["desktop_id"]): (
            r["system_disk_failed_since"],
            r["data_disk_failed_since"],
        )
        for r in rows
    }
    assert got == expected
    failed = sc.script["creations"][-1]
    assert (sc.a, o.ever[(sc.a, failed)]["desktop_id"]) in got


@check("Status changes per day")
def _changes_per_day(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    expected = Counter((frm, to) for _, (_, frm, to) in o.all_rows() if frm is not None)
    got: Counter[tuple[str, str]] = Counter()
    for r in rows:
        got[(r["from_status"], r["to_status"])] += r["changes"]
    assert got == expected
    assert expected[("creating", "create_success")] == len(CREATE_OFFSETS) - 1


@check("How long snapshots stay in each status")
def _time_in_status(sc: Scenario, o: Oracle, rows: list[asyncpg.Record], now: datetime) -> None:
    expected: Counter[str] = Counter()
    for rows_of_snapshot in o.rows.values():
        for (_, frm, to), _next in itertools.pairwise(rows_of_snapshot):
            if frm is not None:
                expected[to] += 1
    assert {r["status"]: r["periods"] for r in rows} == dict(expected)
    assert expected["restoring"] == 2
    assert all(r["avg_seconds_at_least"] <= r["avg_seconds_at_most"] for r in rows)


def test_every_doc_query_has_a_check_and_every_check_a_query() -> None:
    headings = [heading for heading, _ in doc_queries()]
    assert len(headings) >= 12
    assert len(set(headings)) == len(headings), "two queries under one heading"
    assert set(headings) == set(CHECKS)


@pytest.mark.parametrize("heading", [heading for heading, _ in doc_queries()])
async def test_doc_query_answers_its_question(
    heading: str, scenario: Scenario, owner: asyncpg.Connection
) -> None:
    (sql,) = [q for h, q in doc_queries() if h == heading]
    async with owner.transaction():
        now = await owner.fetchval("SELECT now()")
        rows = await owner.fetch(sql)
    CHECKS[heading](scenario, scenario.oracle(), rows, now)


# -- the reader role --------------------------------------------------------------------------


async def test_reader_runs_every_doc_query_and_writes_nothing(
    reader: asyncpg.Connection, owner: asyncpg.Connection
) -> None:
    for heading, sql in doc_queries():
        rows = await reader.fetch(sql)
        assert rows is not None, heading
    found = await relations(owner)
    assert set(found) >= VIEWS
    for name, kind in sorted(found.items()):
        await reader.fetch(f"SELECT * FROM {name} LIMIT 1")
        privileges = await reader.fetchrow(
            "SELECT has_table_privilege($1, 'SELECT') AS can_read, "
            "has_table_privilege($1, 'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') "
            "AS can_write",
            name,
        )
        assert privileges["can_read"] and not privileges["can_write"], name
        column = await owner.fetchval(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum = 1", name
        )
        writes = [
            f"INSERT INTO {name} DEFAULT VALUES",
            f"UPDATE {name} SET {column} = {column}",
            f"DELETE FROM {name}",
        ]
        if kind == "r":
            writes.append(f"TRUNCATE {name}")
        for statement in writes:
            if kind == "r":
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await reader.execute(statement)
            else:
                # A view that joins is not updatable: refused before privileges are checked.
                with pytest.raises(
                    (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectNotInPrerequisiteStateError)
                ):
                    await reader.execute(statement)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader.execute("CREATE TABLE snapsync_reader_was_here (x int)")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await reader.fetchval("SELECT nextval('sync_runs_id_seq')")


async def test_downgrade_takes_back_what_0002_added_and_upgrade_restores_it(
    empty_database_url: str,
) -> None:
    engine = db.make_engine(empty_database_url, pool_size=1)
    conn = await asyncpg.connect(**_asyncpg_dsn(empty_database_url))  # type: ignore[arg-type]
    try:
        await db.migrate(engine, "0002")
        # Default privileges: a relation a later migration creates is readable at once.
        await conn.execute("CREATE TABLE later_relation (x int)")
        assert await conn.fetchval(
            "SELECT has_table_privilege($1, 'later_relation', 'SELECT')", READER
        )
        await conn.execute("DROP TABLE later_relation")

        await db.downgrade(engine, "0001")
        left = await conn.fetchrow(
            """
            SELECT
              (SELECT count(*) FROM pg_views WHERE schemaname = current_schema()
                 AND viewname <> 'snapshots') AS views,
              (SELECT count(*) FROM pg_class AS c, aclexplode(c.relacl) AS a
                 WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)) AS grants,
              (SELECT count(*) FROM pg_default_acl AS d, aclexplode(d.defaclacl) AS a
                 WHERE a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)) AS defaults,
              (SELECT count(*) FROM pg_namespace AS n, aclexplode(n.nspacl) AS a
                 WHERE n.nspname = current_schema()
                   AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = $1)) AS usage,
              (SELECT count(*) FROM pg_description AS d JOIN pg_class AS c ON c.oid = d.objoid
                 JOIN pg_namespace AS n ON n.oid = c.relnamespace
                 WHERE d.classoid = 'pg_class'::regclass
                   AND n.nspname = current_schema()) AS comments,
              (SELECT count(*) FROM pg_roles WHERE rolname = $1) AS role
            """,
            READER,
        )
        assert dict(left) == {
            "views": 0,
            "grants": 0,
            "defaults": 0,
            "usage": 0,
            "comments": 0,
            "role": 1,  # cluster-wide: other databases may use it
        }

        await db.migrate(engine, "0002")
        assert await conn.fetchval(
            "SELECT bool_and(has_table_privilege($1, c.oid, 'SELECT')) FROM pg_class AS c "
            "JOIN pg_namespace AS n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v')",
            READER,
        )
        assert set(await relations(conn)) >= VIEWS
    finally:
        await conn.close()
        await engine.dispose()


# -- snapsync status --------------------------------------------------------------------------


async def test_status_reports_runs_failures_and_counts(scenario: Scenario) -> None:
    env = {"SNAPSYNC_DATABASE_URL": scenario.url}
    oracle = scenario.oracle()
    text = await run_cli("status", env=env, cwd=scenario.workdir)
    assert text.code == 0, text.output
    for pid in scenario.sim.project_ids:
        assert f"project {pid}" in text.stdout
        assert f"live snapshots: {len(oracle.current[pid])}," in text.stdout
    assert re.search(r"failures in a row +1\n", text.stdout), text.stdout
    assert "HTTP 403" in text.stdout
    assert "create_failed" in text.stdout
    as_json = await run_cli("status", "--json", env=env, cwd=scenario.workdir)
    by_project = {d["project_id"]: d for d in json.loads(as_json.stdout)}
    a, b = by_project[scenario.a], by_project[scenario.b]
    assert b["consecutive_failures"] == 1 and b["last_run"]["status"] == "failed"
    assert b["failed_runs"][0]["error"] and "403" in b["failed_runs"][0]["error"]
    assert a["consecutive_failures"] == 0 and a["last_run"]["status"] == "succeeded"
    assert a["live_snapshots"] == a["listing_total_count"] == len(oracle.current[scenario.a])
    failures = {(f["snapshot_id"], f["from_status"], f["to_status"]) for f in a["recent_failures"]}
    assert (scenario.script["creations"][-1], "creating", "create_failed") in failures


# -- Grafana ----------------------------------------------------------------------------------


def dashboard_targets() -> list[dict[str, Any]]:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    targets = [t for p in board["panels"] for t in p.get("targets", [])]
    targets += [
        {**a["target"], "datasource": a["datasource"]}
        for a in board["annotations"]["list"]
        if "target" in a
    ]
    targets += [
        {"datasource": v["datasource"], "rawSql": v["query"]}
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]
    return targets


def grafana_sql(sql: str, project_ids: list[str]) -> str:
    """The query as Grafana would send it, for the last 24 hours and every project: like
    Grafana, every macro of one query gets the same two instants, as literals."""
    now = datetime.now(UTC)
    start, end = f"'{(now - timedelta(days=1)).isoformat()}'", f"'{now.isoformat()}'"
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN {start} AND {end}", sql)
    sql = sql.replace("$__timeFrom()", start)
    sql = sql.replace("$__timeTo()", end)
    sql = sql.replace("$project", ", ".join(f"'{p}'" for p in project_ids))
    assert "$" not in sql, sql
    return sql


def exposed_metric_names() -> set[str]:
    """Every sample name the daemon's /metrics can expose."""
    names: set[str] = set()
    text = metrics.Metrics(["p"]).render().decode()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "counter":
                names.add(name if name.endswith("_total") else name + "_total")
            elif kind == "histogram":
                names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
            else:
                names.add(name)
    return names


async def test_grafana_dashboard_queries_run_as_the_reader(
    scenario: Scenario, reader: asyncpg.Connection
) -> None:
    targets = dashboard_targets()
    uids = {t["datasource"]["uid"] for t in targets}
    assert uids == {"snapsync-postgres", "prometheus"}
    sql_targets = [t for t in targets if t["datasource"]["uid"] == "snapsync-postgres"]
    assert len(sql_targets) >= 10
    for target in sql_targets:
        rows = await reader.fetch(grafana_sql(target["rawSql"], scenario.sim.project_ids))
        assert rows is not None
    known = exposed_metric_names()
    used = {
        name
        for t in targets
        if t["datasource"]["uid"] == "prometheus"
        for name in re.findall(r"\bsnapsync_[a-z_]+", t["expr"])
    }
    assert used, "the dashboard shows the daemon's metrics"
    assert used <= known, used - known


def test_grafana_provisioning_points_at_the_dashboard_and_its_data_sources() -> None:
    yaml = pytest.importorskip("yaml")
    sources = yaml.safe_load((PROVISIONING / "datasources" / "snapsync.yaml").read_text())
    assert {d["uid"] for d in sources["datasources"]} == {"snapsync-postgres", "prometheus"}
    providers = yaml.safe_load((PROVISIONING / "dashboards" / "snapsync.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/snapsync"
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] == "snapsync"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


# -- NOTIFY snapsync_transitions --------------------------------------------------------------


async def _wait_for(received: list[str], count: int) -> None:
    for _ in range(100):
        if len(received) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(received)} notification(s) received, expected {count}")


async def test_each_batch_of_transitions_is_announced(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=20, seed=5) as sim:
        pid = sim.project_ids[0]
        population = sim.population
        env = {
            **sim.env(),
            "SNAPSYNC_DATABASE_URL": database_url,
            "SNAPSYNC_DELETE_AFTER_MISSES": "1",
        }
        first, second, gone = population.snapshots(pid)[2:5]
        for snap in (first, second):
            population.set_fields(pid, snap.snapshot_id, {"status": "creating", "process": 3})
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 0

        received: list[str] = []
        listener = await asyncpg.connect(**_asyncpg_dsn(database_url))  # type: ignore[arg-type]
        try:
            await listener.add_listener(
                "snapsync_transitions", lambda *args: received.append(args[-1])
            )
            for snap in (first, second):
                population.set_fields(
                    pid, snap.snapshot_id, {"status": "create_success", "process": None}
                )
            population.delete_snapshot(pid, gone.snapshot_id)
            result = await run_cli("sync", env=env, cwd=workdir)
            assert "transitions=3" in result.stdout, result.output
            await _wait_for(received, 2)  # the page's changes, then the deletion
            run_id = await sql.fetchval("SELECT max(id) FROM sync_runs")
            payloads = [json.loads(p) for p in received]
            counts: Counter[tuple[str | None, str]] = Counter()
            fetched: set[int] = set()
            for payload in payloads:
                assert payload["project_id"] == pid and payload["sync_run_id"] == run_id
                assert payload["counts_complete"] is True
                for entry in payload["counts"]:
                    counts[(entry["from"], entry["to"])] += entry["n"]
                rows = await sql.fetch(payload["fetch"])
                assert len(rows) == payload["transitions"] == sum(e["n"] for e in payload["counts"])
                assert [r["id"] for r in rows] == list(
                    range(payload["first_id"], payload["last_id"] + 1)
                )
                fetched |= {r["id"] for r in rows}
            assert counts == {("creating", "create_success"): 2, (gone.status, "deleted"): 1}
            history = await sql.fetch(
                "SELECT id FROM snapshot_status_history WHERE sync_run_id = $1", run_id
            )
            assert fetched == {r["id"] for r in history}

            # An unchanged resync announces nothing.
            received.clear()
            assert "transitions=0" in (await run_cli("sync", env=env, cwd=workdir)).stdout
            await asyncio.sleep(0.2)
            assert received == []

            # Hostile statuses: long, quoted, non-ASCII, all different. The payload still fits.
            for i in range(150):
                population.add_snapshot(
                    pid, {"status": f'"odd" ✓ status {i:03d} ' + "é" * 80, "process": None}
                )
            result = await run_cli("sync", env=env, cwd=workdir)
            assert "inserted=150" in result.stdout and "rejected=0" in result.stdout, result.output
            await _wait_for(received, 1)
            (raw,) = received
            assert len(raw.encode()) < 8000
            payload = json.loads(raw)
            assert payload["transitions"] == 150
            assert payload["counts_complete"] is False
            assert 0 < len(payload["counts"]) < 150
            assert all(e["from"] is None and len(e["to"]) == 64 for e in payload["counts"])
            assert "observed_at = " in payload["fetch"]
            assert len(await sql.fetch(payload["fetch"])) == 150
        finally:
            await listener.close()
