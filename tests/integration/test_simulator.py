"""The simulator: its population (pure), and its HTTP API as a client sees it over real HTTP."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.simulator import model, query, server, state
from app.simulator import population as pop
from app.simulator.control import ControlError, SimulatorControl

REPO = Path(__file__).resolve().parents[2]
START = datetime(2024, 4, 20, 8, 0, tzinfo=UTC)
TOKEN = {"X-Auth-Token": "snapsync-dev-token"}
TIME_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


@dataclass
class Sim:
    """A simulator served on a free port, a session, and its control client."""

    url: str
    running: server.RunningSimulator
    http: aiohttp.ClientSession
    control: SimulatorControl

    @property
    def pids(self) -> list[str]:
        return self.running.project_ids

    @property
    def population(self) -> pop.Population:
        return self.running.population

    async def get(
        self,
        project_id: str,
        params: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        """GET the snapshots endpoint; (status, JSON body or text, response)."""
        async with self.http.get(
            f"{self.url}/v2/{project_id}/snapshots",
            params=params,
            headers=TOKEN if headers is None else headers,
        ) as response:
            text = await response.text()
            try:
                body: Any = json.loads(text)
            except ValueError:
                body = text
            return response.status, body, response

    async def all_pages(self, project_id: str, limit: int, **params: str) -> list[dict[str, Any]]:
        """Every item, page by page."""
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            status, body, _ = await self.get(
                project_id, {**params, "offset": str(offset), "limit": str(limit)}
            )
            assert status == 200, body
            items.extend(body["desktop_snapshots"])
            offset += limit
            if offset >= body["total_count"]:
                return items


StartSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def start_sim() -> AsyncIterator[StartSim]:
    """Start simulators (3 projects x 150 snapshots, no automatic ticks unless asked)."""
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def start(**overrides: Any) -> Sim:
            options = state.SimulatorOptions(
                **{
                    "port": 0,
                    "projects": 3,
                    "snapshots": 150,
                    "tick_seconds": 0,
                    "start_time": START,
                    **overrides,
                }
            )
            running = await stack.enter_async_context(server.running(options))
            return Sim(running.url, running, http, SimulatorControl(running.url, http))

        yield start


@pytest.fixture
async def sim(start_sim: StartSim) -> Sim:
    return await start_sim()


def _error_body(body: Any) -> None:
    assert isinstance(body, dict)
    assert set(body) == {"error_code", "error_msg"}
    assert isinstance(body["error_code"], str) and body["error_code"]
    assert isinstance(body["error_msg"], str) and body["error_msg"]


# ---- the population (pure) ----------------------------------------------------------------


def test_population_shape() -> None:
    population = pop.Population(projects=2, snapshots=1000, seed=7, start=START)
    pid = population.project_ids[0]
    assert all(re.fullmatch(r"[0-9a-f]{32}", p) for p in population.project_ids)
    items = [snap.to_api() for snap in population.snapshots(pid)]
    assert len(items) == 1000 and population.total == 2000
    allowed = set(model.API_FIELDS)
    for item in items:
        assert set(item) <= allowed
        assert UUID_RE.fullmatch(item["snapshot_id"])
        assert TIME_RE.fullmatch(item["create_time"]) and item["create_time"] < "2024-04-20T08"
        assert item["status"] in model.STATUSES
        assert item["create_type"] in model.CREATE_TYPES
        assert isinstance(item["is_system_disk"], bool)
        if item["status"] in model.IN_FLIGHT:
            assert 0 <= item["process"] <= 100
        else:
            assert item["process"] is None
        # Restore fields only after a restore (kept while a new restore runs).
        assert ("last_restore_time" in item) <= item["status"].startswith("restor")
        assert ("restore_fail_reason" in item) <= (
            item["status"] in ("restore_failed", "restoring")
        )
        assert item["status"] != "restore_failed" or "restore_fail_reason" in item
        if item["create_type"] == "AUTO":
            assert item["snapshot_name"].startswith(f"AUTOCREATED_{item['desktop_name']}_")
    # Realistic mix: ~5 per desktop, both disks, both creation types, pooled and not.
    desktops = {item["desktop_id"] for item in items}
    assert 150 <= len(desktops) <= 200
    assert 0.2 < sum(not i["is_system_disk"] for i in items) / 1000 < 0.5
    assert 0.6 < sum(i["create_type"] == "AUTO" for i in items) / 1000 < 0.8
    assert 0.2 < sum("desktop_pool_id" in i for i in items) / 1000 < 0.8
    # Scheduled batches put many snapshots in the same second, spread over weeks.
    same_second = collections.Counter(item["create_time"] for item in items)
    assert 20 <= max(same_second.values()) <= 100
    assert items[0]["create_time"] < "2024-03-26"


def test_population_is_deterministic() -> None:
    def dump(p: pop.Population) -> list[str]:
        return [snap.to_json() for pid in p.project_ids for snap in p.snapshots(pid)]

    one = pop.Population(projects=2, snapshots=300, seed=3, change_rate=0.05, start=START)
    two = pop.Population(projects=2, snapshots=300, seed=3, change_rate=0.05, start=START)
    other = pop.Population(projects=2, snapshots=300, seed=4, change_rate=0.05, start=START)
    assert dump(one) == dump(two)
    assert dump(one) != dump(other)
    assert set(one.project_ids).isdisjoint(other.project_ids)
    one.tick(40)
    two.tick(25)
    two.tick(15)
    assert dump(one) == dump(two)
    assert one.now == two.now == START + timedelta(seconds=40)


def test_evolution_creates_restores_and_deletes() -> None:
    population = pop.Population(projects=2, snapshots=400, seed=5, change_rate=0.02, start=START)
    pid = population.project_ids[0]
    seen: dict[str, list[tuple[str, int | None]]] = collections.defaultdict(list)
    for snap in population.snapshots(pid):
        seen[snap.snapshot_id].append((snap.status, snap.process))
    first_ids = set(seen)
    created_at: dict[str, str] = {}
    fresh_restores: set[str] = set()
    for _ in range(150):
        population.tick()
        for snap in population.snapshots(pid):
            history = seen[snap.snapshot_id]
            if not history or history[-1] != (snap.status, snap.process):
                history.append((snap.status, snap.process))
            created_at.setdefault(snap.snapshot_id, snap.create_time)
            if snap.status == "restore_success" and snap.last_restore_time == model.format_time(
                population.now.timestamp()
            ):
                fresh_restores.add(snap.snapshot_id)
        assert 0.8 * 800 < population.total < 1.2 * 800
    transitions = collections.Counter(
        (a[0], b[0]) for history in seen.values() for a, b in itertools.pairwise(history)
    )
    for wanted in [
        ("creating", "create_success"),
        ("creating", "create_failed"),
        ("restoring", "restore_success"),
        ("restoring", "restore_failed"),
        ("create_success", "restoring"),
    ]:
        assert transitions[wanted] > 0, (wanted, transitions)
    new_ids = set(seen) - first_ids
    assert new_ids and all(seen[sid][0] == ("creating", 0) for sid in new_ids)
    remaining = {snap.snapshot_id for snap in population.snapshots(pid)}
    assert first_ids - remaining, "some snapshots were deleted"
    # Progress only rises while a task runs (a new task starts again at 0, possibly in the
    # tick the previous one ended); done tasks have no process.
    for history in seen.values():
        run: list[int] = []
        for status, process in history:
            if status in model.IN_FLIGHT:
                assert process is not None and (not run or process > run[-1] or process == 0)
                run.append(process)
            else:
                assert process is None
                run = []
    # Batches: several new snapshots share one create_time second.
    batch = collections.Counter(created_at[sid] for sid in new_ids)
    assert max(batch.values()) >= 3
    # Short and long creations.
    durations = [
        sum(1 for status, _ in seen[sid] if status == "creating")
        for sid in new_ids
        if any(status.startswith("create_") for status, _ in seen[sid])
    ]
    assert min(durations) <= 5 and max(durations) >= 15
    # A finished restore stamps last_restore_time with the simulated time.
    assert fresh_restores


def test_scripted_control() -> None:
    population = pop.Population(projects=1, snapshots=50, seed=1, change_rate=0.2, start=START)
    pid = population.project_ids[0]
    added = population.add_snapshot(pid, {"status": "creating", "process": 10})
    assert (
        added.pinned and added.status == "creating" and added.create_time == "2024-04-20T08:00:00Z"
    )
    assert population.get_snapshot(pid, added.snapshot_id) is added
    assert population.snapshots(pid)[-1] is added  # newest create_time sorts last
    changed = population.set_fields(
        pid, added.snapshot_id, {"create_time": "2000-01-01T00:00:00Z", "desktop_pool_id": None}
    )
    assert population.snapshots(pid)[0] is changed
    assert "desktop_pool_id" not in changed.to_api()
    assert json.loads(changed.to_json())["create_time"] == "2000-01-01T00:00:00Z"
    population.tick(50)  # pinned: evolution leaves it alone
    assert population.get_snapshot(pid, added.snapshot_id).to_api()["process"] == 10
    with pytest.raises(model.FieldError):
        population.set_fields(pid, added.snapshot_id, {"is_system_disk": "yes"})
    with pytest.raises(model.FieldError):
        population.add_snapshot(pid, {"colour": "red"})
    population.delete_snapshot(pid, added.snapshot_id)
    with pytest.raises(model.UnknownSnapshotError):
        population.get_snapshot(pid, added.snapshot_id)
    with pytest.raises(model.UnknownProjectError):
        population.snapshots("0" * 32)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limit=st.integers(1, 40),
    descending=st.booleans(),
    by_name=st.booleans(),
    shuffle=st.booleans(),
)
def test_paging_partitions_the_listing(
    limit: int, descending: bool, by_name: bool, shuffle: bool
) -> None:
    population = _SMALL
    pid = population.project_ids[0]
    selector = query.Selector(population)
    sort_field: model.SortField = "snapshot_name" if by_name else "create_time"
    pages: list[model.Snapshot] = []
    offset = 0
    rng = random.Random(limit) if shuffle else None
    while True:
        page = selector.select(
            pid,
            query.SnapshotQuery(
                sort_field=sort_field, descending=descending, offset=offset, limit=limit
            ),
            shuffle_ties=rng,
        )
        pages.extend(page.items)
        offset += limit
        if offset >= page.total_count:
            break
    ordered = list(population.ordered(pid, sort_field))
    expected = ordered[::-1] if descending else ordered
    if shuffle:
        # Within ties any order; the sort keys still come in order.
        field = "snapshot_name" if by_name else "create_time"
        assert [getattr(s, field) for s in pages] == [getattr(s, field) for s in expected]
    else:
        assert pages == expected


_SMALL = pop.Population(projects=1, snapshots=120, seed=2, start=START)


# ---- the HTTP API --------------------------------------------------------------------------


async def test_paging_covers_every_item_once_in_a_stable_order(sim: Sim) -> None:
    pid = sim.pids[0]
    status, first, response = await sim.get(pid)
    assert status == 200 and response.headers["Content-Type"].startswith("application/json")
    assert first["total_count"] == 150 == len(first["desktop_snapshots"])
    paged = await sim.all_pages(pid, limit=7)
    assert paged == first["desktop_snapshots"]
    assert len({item["snapshot_id"] for item in paged}) == 150
    keys = [(item["create_time"], item["snapshot_id"]) for item in paged]
    assert keys == sorted(keys)
    assert paged == await sim.control.snapshots(pid)
    status, beyond, _ = await sim.get(pid, {"offset": "500", "limit": "10"})
    assert status == 200 and beyond == {"total_count": 150, "desktop_snapshots": []}


async def test_every_filter(sim: Sim) -> None:
    pid = sim.pids[1]
    everything = await sim.control.snapshots(pid)
    sample = everything[len(everything) // 2]
    other = everything[3]

    async def check(params: Any, predicate: Callable[[dict[str, Any]], bool]) -> None:
        status, body, _ = await sim.get(pid, params)
        assert status == 200, body
        expected = [item for item in everything if predicate(item)]
        assert body["total_count"] == len(expected) > 0, params
        assert body["desktop_snapshots"] == expected

    for name in ("desktop_id", "desktop_name", "snapshot_name", "create_type", "status"):
        value = sample[name]
        await check({name: value}, lambda i: i[name] == value)  # noqa: B023 - awaited at once
    await check({"disk_type": "SYSTEM_DISK"}, lambda i: i["is_system_disk"])
    await check({"disk_type": "DATA_DISKS"}, lambda i: not i["is_system_disk"])
    await check({"disk_type": "ALL"}, lambda i: True)
    await check(
        {"create_type": "AUTO", "disk_type": "DATA_DISKS"},
        lambda i: i["create_type"] == "AUTO" and not i["is_system_disk"],
    )
    names = {sample["snapshot_name"], other["snapshot_name"]}
    await check(
        [("snapshot_names", n) for n in sorted(names)], lambda i: i["snapshot_name"] in names
    )
    desktops = {sample["desktop_id"], other["desktop_id"]}
    await check(
        [("desktop_ids", d) for d in sorted(desktops)], lambda i: i["desktop_id"] in desktops
    )
    status, body, _ = await sim.get(pid, {"desktop_name": "no such desktop"})
    assert status == 200 and body == {"total_count": 0, "desktop_snapshots": []}
    # Filtered and paged: total_count stays the number of matches.
    status, body, _ = await sim.get(pid, {"disk_type": "SYSTEM_DISK", "limit": "5"})
    assert len(body["desktop_snapshots"]) == 5 < body["total_count"]


@pytest.mark.parametrize("sort_field", ["create_time", "snapshot_name"])
async def test_sorting(sim: Sim, sort_field: str) -> None:
    pid = sim.pids[0]
    asc = await sim.all_pages(pid, 40, sort_field=sort_field, sort_type="ASC")
    desc = await sim.all_pages(pid, 40, sort_field=sort_field, sort_type="DESC")
    keys = [(item[sort_field], item["snapshot_id"]) for item in asc]
    assert keys == sorted(keys) and len(asc) == 150
    assert desc == asc[::-1]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "abc"},
        {"limit": "-1"},
        {"limit": "1.5"},
        {"limit": ""},
        {"offset": "-1"},
        {"offset": "x"},
        {"sort_field": "create_time"},
        {"sort_type": "ASC"},
        {"sort_field": "status", "sort_type": "ASC"},
        {"sort_field": "create_time", "sort_type": "asc"},
        {"disk_type": "SYSTEM"},
        {"create_type": "manual"},
        {"status": "deleted"},
        [("limit", "5"), ("limit", "6")],
    ],
)
async def test_invalid_parameters_are_400(sim: Sim, params: Any) -> None:
    status, body, response = await sim.get(sim.pids[0], params)
    assert status == 400
    _error_body(body)
    assert body["error_code"] == "WKS.00040001"
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])


async def test_projects_unknown_malformed_and_forbidden(start_sim: StartSim) -> None:
    sim = await start_sim(forbidden_projects=1)
    status, body, _ = await sim.get("0123456789abcdef0123456789abcdef")
    assert status == 404 and body["error_code"] == "WKS.00040004"
    status, body, _ = await sim.get("not-a-project")
    assert status == 400
    _error_body(body)
    status, body, _ = await sim.get(sim.pids[0])
    assert status == 403 and body["error_code"] == "WKS.00030001"
    status, _, _ = await sim.get(sim.pids[1])
    assert status == 200
    await sim.control.set_faults(forbidden_projects=0)
    status, _, _ = await sim.get(sim.pids[0])
    assert status == 200


async def test_request_ids_are_unique_on_every_answer(sim: Sim) -> None:
    ids = set()
    for headers in (TOKEN, {}, {"X-Auth-Token": "wrong"}):
        for _ in range(3):
            _, _, response = await sim.get(sim.pids[0], {"limit": "1"}, headers)
            ids.add(response.headers["X-Request-Id"])
    async with sim.http.get(f"{sim.url}/_sim/stats") as response:
        ids.add(response.headers["X-Request-Id"])
    async with sim.http.get(f"{sim.url}/v2/{sim.pids[0]}/nothing") as response:
        assert response.status == 404
        _error_body(await response.json())
        ids.add(response.headers["X-Request-Id"])
    assert len(ids) == 11


async def test_auth_token_required(sim: Sim) -> None:
    for headers in ({}, {"X-Auth-Token": "nope"}, {"Authorization": "Bearer x"}):
        status, body, _ = await sim.get(sim.pids[0], headers=headers)
        assert status == 401
        _error_body(body)
        assert body["error_code"] == "APIGW.0301"


def _login_body(project_id: str, password: str = "simpassword") -> dict[str, Any]:
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": "simuser",
                        "password": password,
                        "domain": {"name": "simdomain"},
                    }
                },
            },
            "scope": {"project": {"id": project_id}},
        }
    }


async def _login(sim: Sim, project_id: str, password: str = "simpassword") -> tuple[int, Any, str]:
    async with sim.http.post(
        f"{sim.url}/v3/auth/tokens?nocatalog=true", json=_login_body(project_id, password)
    ) as response:
        return response.status, await response.json(), response.headers.get("X-Subject-Token", "")


async def test_iam_login_token_scope_revoke_and_expiry(sim: Sim) -> None:
    a, b = sim.pids[0], sim.pids[1]
    status, body, token = await _login(sim, a)
    assert status == 201 and token
    issued = datetime.strptime(body["token"]["issued_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    expires = datetime.strptime(body["token"]["expires_at"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert expires - issued == timedelta(days=1)
    assert body["token"]["project"]["id"] == a and body["token"]["methods"] == ["password"]
    assert (await sim.get(a, {"limit": "1"}, {"X-Auth-Token": token}))[0] == 200
    status, body, _ = await sim.get(b, {"limit": "1"}, {"X-Auth-Token": token})
    assert status == 403 and body["error_code"] == "APIGW.0302"

    status, body, bad = await _login(sim, a, password="wrong")
    assert status == 401 and not bad
    assert body["error"]["code"] == 401 and body["error"]["title"] == "Unauthorized"
    async with sim.http.post(f"{sim.url}/v3/auth/tokens", data=b"{nope") as response:
        assert response.status == 400

    assert await sim.control.revoke_tokens() == 1
    status, body, _ = await sim.get(a, {"limit": "1"}, {"X-Auth-Token": token})
    assert status == 401 and body["error_code"] == "APIGW.0301"

    _, _, token = await _login(sim, a)
    await _login(sim, b)
    assert await sim.control.revoke_tokens(expire=True) == 2
    status, body, _ = await sim.get(a, {"limit": "1"}, {"X-Auth-Token": token})
    assert status == 401 and body["error_code"] == "APIGW.0307"

    stats = await sim.control.stats()
    assert stats["logins_per_project"] == {a: 2, b: 1}
    assert stats["failed_logins"] == 1


async def test_aksk_signatures(sim: Sim) -> None:
    signing = pytest.importorskip("app.signing")
    from yarl import URL

    pid = sim.pids[0]

    async def signed_get(secret: str, now: datetime | None = None) -> tuple[int, Any]:
        request = signing.sign_request(
            method="GET",
            url=f"{sim.url}/v2/{pid}/snapshots",
            params=[("limit", "2"), ("disk_type", "SYSTEM_DISK")],
            access_key="SIMULATORAK",
            secret_key=secret,
            now=now,
        )
        async with sim.http.get(URL(request.url, encoded=True), headers=request.headers) as r:
            return r.status, await r.json()

    status, body = await signed_get("SIMULATORSK")
    assert status == 200 and len(body["desktop_snapshots"]) == 2
    assert all(item["is_system_disk"] for item in body["desktop_snapshots"])
    status, body = await signed_get("WRONG")
    assert status == 401 and body["error_code"] == "APIGW.0301"
    assert "signature" in body["error_msg"]
    status, body = await signed_get("SIMULATORSK", now=datetime.now(UTC) - timedelta(hours=1))
    assert status == 401 and "out of range" in body["error_msg"]


async def test_faults_are_injected_in_roughly_the_asked_fractions(sim: Sim) -> None:
    pid = sim.pids[0]
    await sim.control.set_faults(fault_429=0.3, fault_500=0.2, fault_502_html=0.1)
    seen: collections.Counter[int] = collections.Counter()
    for _ in range(300):
        status, body, response = await sim.get(pid, {"limit": "1"})
        seen[status] += 1
        if status == 429:
            assert response.headers["Retry-After"] == "1"
            assert body["error_code"] == "APIGW.0308"
        elif status == 500:
            _error_body(body)
        elif status == 502:
            assert response.headers["Content-Type"].startswith("text/html")
            assert "<html>" in body
    assert 60 <= seen[429] <= 120 and 35 <= seen[500] <= 85 and 12 <= seen[502] <= 50
    stats = await sim.control.stats()
    assert stats["requests_by_status"]["429"] == seen[429]
    # Faults never touch the control API, and can be turned off at run time.
    await sim.control.set_faults(fault_429=0, fault_500=0, fault_502_html=0, latency=0.2)
    started = time.monotonic()
    assert (await sim.get(pid, {"limit": "1"}))[0] == 200
    assert time.monotonic() - started >= 0.2
    with pytest.raises(ControlError) as refused:
        await sim.control.set_faults(fault_429=2)
    assert refused.value.status == 400


async def test_raw_pages_are_served_in_order_then_normal_answers(sim: Sim) -> None:
    pid = sim.pids[2]
    pending = await sim.control.queue_raw_pages(
        pid,
        [
            {"status": 200, "body": '{"total_count": "x"', "content_type": "application/json"},
            {"status": 503, "body": "busy", "content_type": "text/plain", "headers": {"A": "b"}},
        ],
    )
    assert pending == 2
    status, body, _ = await sim.get(pid)
    assert (status, body) == (200, '{"total_count": "x"')
    status, body, response = await sim.get(pid)
    assert (status, body, response.headers["A"]) == (503, "busy", "b")
    assert "X-Request-Id" in response.headers
    status, body, _ = await sim.get(pid)
    assert status == 200 and body["total_count"] == 150


async def test_control_api(sim: Sim) -> None:
    pid = sim.pids[0]
    projects = await sim.control.projects()
    assert [p["project_id"] for p in projects] == sim.pids
    assert all(p["snapshot_count"] == 150 for p in projects)

    added = await sim.control.add(
        pid, {"desktop_name": "研发-0001", "status": "creating", "process": 5}
    )
    assert added["desktop_name"] == "研发-0001" and added["process"] == 5
    status, body, _ = await sim.get(pid, {"desktop_name": "研发-0001"})
    assert status == 200 and body["desktop_snapshots"] == [added]

    patched = await sim.control.patch(
        pid, added["snapshot_id"], {"status": "create_success", "process": None}
    )
    assert patched["status"] == "create_success" and patched["process"] is None
    assert await sim.control.get(pid, added["snapshot_id"]) == patched
    # Filtered answers follow the change (no stale cache).
    _, creating, _ = await sim.get(pid, {"status": "creating"})
    assert added["snapshot_id"] not in {i["snapshot_id"] for i in creating["desktop_snapshots"]}
    _, done, _ = await sim.get(pid, {"status": "create_success"})
    assert patched in done["desktop_snapshots"]
    with pytest.raises(ControlError) as bad:
        await sim.control.patch(pid, patched["snapshot_id"], {"nonsense": 1})
    assert bad.value.status == 400
    with pytest.raises(ControlError) as bad:
        await sim.control.patch(pid, patched["snapshot_id"], {"is_system_disk": "no"})
    assert bad.value.status == 400

    deleted = await sim.control.delete(pid, added["snapshot_id"])
    assert deleted["snapshot_id"] == added["snapshot_id"]
    with pytest.raises(ControlError) as missing:
        await sim.control.get(pid, added["snapshot_id"])
    assert missing.value.status == 404
    with pytest.raises(ControlError) as missing:
        await sim.control.snapshots("0" * 32)
    assert missing.value.status == 404
    assert (await sim.get(pid))[1]["total_count"] == 150

    report = await sim.control.tick(5)
    assert report["total_ticks"] == 5 and report["ticks"] == 5
    stats = await sim.control.stats()
    assert stats["ticks"] == 5 and "faults" in stats and stats["snapshots_total"] > 0


async def test_ties_stable_by_default_and_shuffled_with_unstable_ties(start_sim: StartSim) -> None:
    stable = await start_sim(projects=1, snapshots=600)
    pid = stable.pids[0]
    first = (await stable.get(pid))[1]["desktop_snapshots"]
    assert (await stable.get(pid))[1]["desktop_snapshots"] == first

    unstable = await start_sim(projects=1, snapshots=600, unstable_ties=True)
    orders = {
        tuple(item["snapshot_id"] for item in (await unstable.get(pid))[1]["desktop_snapshots"])
        for _ in range(3)
    }
    assert len(orders) > 1
    assert all(sorted(order) == sorted(i["snapshot_id"] for i in first) for order in orders)
    # The sort key still comes in order: only ties move.
    times = [i["create_time"] for i in (await unstable.get(pid))[1]["desktop_snapshots"]]
    assert times == sorted(times)


async def test_automatic_ticks(start_sim: StartSim) -> None:
    sim = await start_sim(tick_seconds=0.02, change_rate=0.05)
    await asyncio.sleep(0.3)
    assert sim.population.ticks >= 3
    assert sim.population.now > START


async def test_serve_until_cancelled() -> None:
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    options = state.SimulatorOptions(port=0, projects=1, snapshots=10, tick_seconds=0)
    task = asyncio.create_task(server.serve(options, ready=ready.set_result, announce=False))
    url = await asyncio.wait_for(ready, 10)
    async with aiohttp.ClientSession() as http, http.get(f"{url}/_sim/projects") as response:
        assert response.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_simulate_command_prints_settings_and_stops_on_sigterm() -> None:
    # Through the real entry point once the CLI exists; the bare command otherwise.
    if (REPO / "app" / "cli.py").exists():
        command = [sys.executable, "-m", "app", "simulate"]
    else:
        code = "from app.simulator.command import simulate; simulate()"
        command = [sys.executable, "-c", code]
    with subprocess.Popen(
        [*command, "--port", "0", "--projects", "2", "--snapshots", "20"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as process:
        try:
            assert process.stdout is not None
            lines = [process.stdout.readline() for _ in range(4)]
            assert "snapsync simulator" in lines[0]
            assert re.fullmatch(r"SNAPSYNC_WORKSPACE_ENDPOINT=http://127\.0\.0\.1:\d+\n", lines[1])
            assert lines[3].startswith("SNAPSYNC_PROJECTS=") and lines[3].count(",") == 1
            process.send_signal(signal.SIGTERM)
            _, errors = process.communicate(timeout=10)
            assert process.returncode == 0, errors
            assert "Traceback" not in errors
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_simulate_command_rejects_bad_options() -> None:
    from click.testing import CliRunner

    from app.simulator.command import simulate

    result = CliRunner().invoke(simulate, ["--fault-429", "0.8", "--fault-500", "0.8"])
    assert result.exit_code == 2
    assert "must not exceed 1" in result.output
    result = CliRunner().invoke(simulate, ["--fault-429", "2"])
    assert result.exit_code == 2


def test_simulate_command_fails_cleanly_when_the_port_is_taken() -> None:
    import socket

    from click.testing import CliRunner

    from app.simulator.command import simulate

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            simulate, ["--port", str(port), "--projects", "1", "--snapshots", "5"]
        )
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


async def test_list_filters_of_the_current_api_version(sim: Sim) -> None:
    """desktop_ids, desktop_names and snapshot_names: OR within a list, AND with the rest."""
    pid = sim.pids[1]
    everything = await sim.control.snapshots(pid)
    by_desktop = collections.Counter(item["desktop_name"] for item in everything)
    one, two = (name for name, _ in by_desktop.most_common(2))

    async def listed(params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        status, body, _ = await sim.get(pid, params)
        assert status == 200, body
        assert body["total_count"] == len(body["desktop_snapshots"])
        return list(body["desktop_snapshots"])

    got = await listed([("desktop_names", one), ("desktop_names", two)])
    assert got == [i for i in everything if i["desktop_name"] in (one, two)]
    assert 0 < len(got) < len(everything)
    got = await listed([("desktop_names", one), ("disk_type", "SYSTEM_DISK")])
    assert got == [i for i in everything if i["desktop_name"] == one and i["is_system_disk"]]
    # Two list filters together: both must hold.
    some = [i for i in everything if i["desktop_name"] == one][:2]
    names = sorted({i["snapshot_name"] for i in some} | {everything[0]["snapshot_name"]})
    got = await listed([("desktop_names", one), *(("snapshot_names", n) for n in names)])
    assert got == [
        i for i in everything if i["desktop_name"] == one and i["snapshot_name"] in names
    ]
    desktop_ids = sorted({i["desktop_id"] for i in everything if i["desktop_name"] == two})
    got = await listed([*(("desktop_ids", d) for d in desktop_ids), ("desktop_name", one)])
    assert got == [
        i for i in everything if i["desktop_id"] in desktop_ids and i["desktop_name"] == one
    ]
    assert await listed([("desktop_names", "no such desktop")]) == []
    for key in ("desktop_names", "desktop_ids", "snapshot_names"):
        status, body, _ = await sim.get(pid, [(key, one), (key, "")])
        assert status == 400 and body["error_code"] == "WKS.00040001", (key, body)
        assert key in body["error_msg"]


async def test_projects_have_regions_and_iam_lists_them(start_sim: StartSim) -> None:
    sim = await start_sim(projects=4, regions=("cn-north-4", "eu-west-101"))
    regions = [sim.population.region(pid) for pid in sim.pids]
    assert regions == ["cn-north-4", "eu-west-101", "cn-north-4", "eu-west-101"]
    assert [p["region"] for p in await sim.control.projects()] == regions

    async def iam_get(path: str, headers: dict[str, str] = TOKEN) -> tuple[int, Any]:
        async with sim.http.get(f"{sim.url}{path}", headers=headers) as response:
            return response.status, await response.json()

    status, body = await iam_get("/v3/auth/projects")
    assert status == 200
    assert body["links"] == {"self": f"{sim.url}/v3/auth/projects"}
    listed = body["projects"]
    assert [p["name"] for p in listed] == [
        "cn-north-4",
        "eu-west-101",
        "cn-north-4_sub1",
        "eu-west-101_sub1",
        "MOS",
    ]
    assert [p["id"] for p in listed[:4]] == sim.pids
    domain_id = listed[0]["domain_id"]
    for project in listed:
        assert set(project) == {
            "id",
            "name",
            "domain_id",
            "enabled",
            "is_domain",
            "parent_id",
            "description",
            "links",
        }
        assert project["enabled"] is True and project["is_domain"] is False
        assert project["domain_id"] == domain_id
        assert project["links"] == {"self": f"{sim.url}/v3/projects/{project['id']}"}
    assert listed[2]["parent_id"] == sim.pids[0] and listed[0]["parent_id"] == domain_id
    # MOS is IAM's, not Workspace's: the snapshots API does not know it.
    assert (await sim.get(listed[4]["id"]))[0] == 404

    status, body = await iam_get("/v3/projects?name=eu-west-101")
    assert status == 200 and [p["id"] for p in body["projects"]] == [sim.pids[1]]
    assert body["links"] == {"self": f"{sim.url}/v3/projects", "previous": None, "next": None}
    status, body = await iam_get(f"/v3/projects?parent_id={sim.pids[0]}")
    assert [p["name"] for p in body["projects"]] == ["cn-north-4_sub1"]
    status, body = await iam_get("/v3/projects?name=ap-southeast-1")
    assert status == 200 and body["projects"] == []
    status, body = await iam_get("/v3/projects?per_page=2&page=2")
    assert [p["name"] for p in body["projects"]] == ["cn-north-4_sub1", "eu-west-101_sub1"]
    status, body = await iam_get("/v3/projects?enabled=maybe")
    assert status == 400 and body["error"]["code"] == 400

    # Any token of the account, whatever project it is scoped to, may list.
    _, _, token = await _login(sim, sim.pids[3])
    status, body = await iam_get("/v3/auth/projects", {"X-Auth-Token": token})
    assert status == 200 and len(body["projects"]) == 5
    status, body = await iam_get("/v3/auth/projects", {})
    assert status == 401 and body["error"]["title"] == "Unauthorized"
    await sim.control.set_faults(iam_projects_status=403)
    status, body = await iam_get("/v3/auth/projects")
    assert status == 403 and "iam:projects:list" in body["error"]["message"]
    status, _ = await iam_get("/v3/projects?name=cn-north-4")
    assert status == 403
    stats = await sim.control.stats()
    assert stats["iam_requests_by_path"]["/v3/auth/projects"] == 4
    # The token's scope is named as IAM names the project.
    status, body, _ = await _login(sim, sim.pids[2])
    assert body["token"]["project"]["name"] == "cn-north-4_sub1"


def test_simulate_command_refuses_bad_regions() -> None:
    from click.testing import CliRunner

    from app.simulator.command import simulate

    result = CliRunner().invoke(simulate, ["--regions", "cn-north-4,Not A Region"])
    assert result.exit_code == 2
    assert "Not A Region" in result.output


async def test_projects_can_be_added_and_removed_while_it_runs(sim: Sim) -> None:
    async def iam_names() -> dict[str, str]:
        async with sim.http.get(f"{sim.url}/v3/auth/projects", headers=TOKEN) as response:
            assert response.status == 200
            return {p["id"]: p["name"] for p in (await response.json())["projects"]}

    before = await iam_names()
    added = await sim.control.add_project("cn-east-3")
    assert added not in before and added in sim.pids
    assert (await iam_names())[added] == "cn-east-3"
    status, body, _ = await sim.get(added)
    assert status == 200 and body["total_count"] == 150
    assert body["desktop_snapshots"] == await sim.control.snapshots(added)
    assert sim.population.total == 4 * 150

    # Listed by IAM, unknown to Workspace: not in use there.
    unused = await sim.control.add_project("cn-north-4", workspace=False)
    names = await iam_names()
    assert names[unused] == "cn-north-4_sub2"  # the default regions already hold a _sub1
    assert (await sim.get(unused))[0] == 404
    listing = await sim.control._call("GET", "/projects")
    assert listing["iam_only"] == [{"project_id": unused, "region": "cn-north-4"}]

    for project_id in (added, unused):
        await sim.control.remove_project(project_id)
    assert await iam_names() == before
    assert (await sim.get(added))[0] == 404
    assert sim.population.total == 3 * 150
    await sim.control.tick(5)  # the evolution does not touch what is gone
    with pytest.raises(ControlError) as info:
        await sim.control.remove_project(added)
    assert info.value.status == 404
    with pytest.raises(ControlError) as info:
        await sim.control.add_project("Not a region")
    assert info.value.status == 400


async def test_latency_per_item_grows_with_the_page(sim: Sim) -> None:
    pid = sim.pids[0]
    await sim.control.set_faults(latency_per_item=0.004)

    async def timed(limit: int) -> float:
        started = time.monotonic()
        status, body, _ = await sim.get(pid, {"limit": str(limit)})
        assert status == 200 and len(body["desktop_snapshots"]) == limit
        return time.monotonic() - started

    assert await timed(100) >= 0.4
    assert await timed(1) < 0.3
    with pytest.raises(ControlError):
        await sim.control.set_faults(latency_per_item=2)


async def test_account_scoped_login_lists_projects_but_reads_no_snapshots(sim: Sim) -> None:
    body = _login_body(sim.pids[0])
    body["auth"]["scope"] = {"domain": {"name": "simdomain"}}
    async with sim.http.post(f"{sim.url}/v3/auth/tokens?nocatalog=true", json=body) as response:
        assert response.status == 201
        token = response.headers["X-Subject-Token"]
        answer = (await response.json())["token"]
    assert "project" not in answer and answer["domain"]["name"] == "simdomain"
    async with sim.http.get(
        f"{sim.url}/v3/auth/projects", headers={"X-Auth-Token": token}
    ) as response:
        assert response.status == 200
        assert len((await response.json())["projects"]) == 4
    status, error, _ = await sim.get(sim.pids[0], {"limit": "1"}, {"X-Auth-Token": token})
    assert status == 403 and error["error_code"] == "APIGW.0302"
    assert "scoped to the account" in error["error_msg"]

    body["auth"]["scope"] = {"domain": {"name": "otherdomain"}}
    async with sim.http.post(f"{sim.url}/v3/auth/tokens", json=body) as response:
        assert response.status == 401
    body["auth"]["scope"] = {}
    async with sim.http.post(f"{sim.url}/v3/auth/tokens", json=body) as response:
        assert response.status == 400
    stats = await sim.control.stats()
    assert (stats["domain_logins"], stats["logins_per_project"]) == (1, {})
