"""Huawei's official SDKs as the oracle: they drive the simulator as they drive the real cloud.

`huaweicloudsdkworkspace`'s `list_desktop_snapshot` and `huaweicloudsdkiam`'s Keystone
listings, AK/SK-signed by `huaweicloudsdkcore`, over real HTTP against the simulator; every
answer must parse into the SDK's models and agree with the simulator's own data. The SDKs are
synchronous, so each call runs in a thread while the simulator serves on the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from app.simulator import auth, model, server, state

_MISSING = "the official SDKs are not installed (pip install -e '.[dev]' brings them)"
pytest.importorskip("huaweicloudsdkcore", reason=_MISSING)
workspace_sdk = pytest.importorskip("huaweicloudsdkworkspace.v2", reason=_MISSING)
iam_sdk = pytest.importorskip("huaweicloudsdkiam.v3", reason=_MISSING)

from huaweicloudsdkcore.auth.credentials import BasicCredentials, GlobalCredentials  # noqa: E402
from huaweicloudsdkcore.exceptions import exceptions as sdk_errors  # noqa: E402
from huaweicloudsdkcore.http.http_config import HttpConfig  # noqa: E402
from huaweicloudsdkcore.region.region import Region  # noqa: E402

START = datetime(2024, 4, 20, 8, 0, tzinfo=UTC)
AK, SK = "ORACLEAK", "ORACLESK"
SNAPSHOTS = 640
REGIONS = ("cn-north-4", "eu-west-101")


@dataclass
class Oracle:
    """A simulator, and SDK clients pointed at it."""

    running: server.RunningSimulator
    workspace: dict[str, Any]

    async def call(self, method: Callable[[Any], Any], request: Any) -> Any:
        return await asyncio.to_thread(method, request)

    async def snapshots(self, pid: str, **fields: Any) -> Any:
        """One list_desktop_snapshot answer of a project."""
        client = self.workspace[pid]
        request = workspace_sdk.ListDesktopSnapshotRequest(**fields)
        return await self.call(client.list_desktop_snapshot, request)

    async def every_page(self, pid: str, limit: int, **fields: Any) -> list[dict[str, Any]]:
        """Every item, page by page, as the SDK's models hold them."""
        items: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = await self.snapshots(pid, offset=offset, limit=limit, **fields)
            assert isinstance(page, workspace_sdk.ListDesktopSnapshotResponse)
            assert page.status_code == 200
            batch = page.desktop_snapshots or []
            assert len(batch) <= limit
            items.extend(_model_item(item) for item in batch)
            offset += limit
            if offset >= page.total_count:
                assert len(items) == page.total_count
                return items

    async def error(self, pid: str, **fields: Any) -> sdk_errors.ServiceResponseException:
        """The exception the SDK raises for an answer that is not 2xx."""
        with pytest.raises(sdk_errors.ServiceResponseException) as info:
            await self.snapshots(pid, **fields)
        return info.value


def _http_config() -> Any:
    config = HttpConfig.get_default_config()
    config.timeout = (5, 30)
    return config


def _workspace_client(url: str, project_id: str, *, ak: str = AK, sk: str = SK) -> Any:
    return (
        workspace_sdk.WorkspaceClient.new_builder()
        .with_http_config(_http_config())
        .with_credentials(BasicCredentials(ak, sk, project_id))
        .with_endpoints([url])
        .build()
    )


async def _iam_client(url: str) -> Any:
    # No domain id: the SDK asks IAM for it (GET /v3/auth/domains) in build(), blocking, so in
    # a thread. It caches the answer per AK for the process: only one test may build it.
    builder = (
        iam_sdk.IamClient.new_builder()
        .with_http_config(_http_config())
        .with_credentials(GlobalCredentials(AK, SK).with_iam_endpoint(url))
        .with_region(Region("cn-north-4", url))
    )
    return await asyncio.to_thread(builder.build)


def _model_item(model: Any) -> dict[str, Any]:
    """A DesktopSnapshotDetailInfo as the API item it parsed, absent fields dropped."""
    assert isinstance(model, workspace_sdk.DesktopSnapshotDetailInfo)
    return {key: value for key, value in model.to_dict().items() if value is not None}


def _api_item(snap: model.Snapshot) -> dict[str, Any]:
    return {key: value for key, value in snap.to_api().items() if value is not None}


@contextlib.asynccontextmanager
async def _oracle(**overrides: Any) -> AsyncIterator[Oracle]:
    options = state.SimulatorOptions(
        **{
            "port": 0,
            "projects": 3,
            "snapshots": SNAPSHOTS,
            "tick_seconds": 0,
            "start_time": START,
            "access_key": AK,
            "secret_key": SK,
            "regions": REGIONS,
            **overrides,
        }
    )
    async with server.running(options) as running:
        clients = {pid: _workspace_client(running.url, pid) for pid in running.project_ids}
        yield Oracle(running, clients)


@pytest.fixture
async def oracle() -> AsyncIterator[Oracle]:
    async with _oracle() as found:
        yield found


async def test_full_paging_in_every_order(oracle: Oracle) -> None:
    pid = oracle.running.project_ids[0]
    by_time = [_api_item(s) for s in oracle.running.population.ordered(pid, "create_time")]
    by_name = [_api_item(s) for s in oracle.running.population.ordered(pid, "snapshot_name")]
    assert len(by_time) == SNAPSHOTS
    # No order asked: the API's default, create_time ascending.
    assert await oracle.every_page(pid, 1000) == by_time
    for field, expected in (("create_time", by_time), ("snapshot_name", by_name)):
        ascending = await oracle.every_page(pid, 97, sort_field=field, sort_type="ASC")
        assert ascending == expected, field
        descending = await oracle.every_page(pid, 97, sort_field=field, sort_type="DESC")
        assert descending == expected[::-1], field
    # The last page, and one past the end.
    page = await oracle.snapshots(pid, offset=SNAPSHOTS - 3, limit=10)
    assert page.total_count == SNAPSHOTS and len(page.desktop_snapshots) == 3
    page = await oracle.snapshots(pid, offset=SNAPSHOTS + 5, limit=10)
    assert page.total_count == SNAPSHOTS and not page.desktop_snapshots


async def test_each_single_filter(oracle: Oracle) -> None:
    pid = oracle.running.project_ids[1]
    everything = oracle.running.population.snapshots(pid)
    sample = everything[len(everything) // 3]
    cases: list[tuple[dict[str, Any], Callable[[model.Snapshot], bool]]] = [
        ({"desktop_id": sample.desktop_id}, lambda s: s.desktop_id == sample.desktop_id),
        ({"desktop_name": sample.desktop_name}, lambda s: s.desktop_name == sample.desktop_name),
        (
            {"snapshot_name": sample.snapshot_name},
            lambda s: s.snapshot_name == sample.snapshot_name,
        ),
        ({"disk_type": "SYSTEM_DISK"}, lambda s: s.is_system_disk),
        ({"disk_type": "DATA_DISKS"}, lambda s: not s.is_system_disk),
        ({"disk_type": "ALL"}, lambda s: True),
        ({"create_type": "AUTO"}, lambda s: s.create_type == "AUTO"),
        ({"create_type": "MANUALLY"}, lambda s: s.create_type == "MANUALLY"),
        *(({"status": status}, _status_is(status)) for status in model.STATUSES),
    ]
    matched = 0
    for fields, predicate in cases:
        expected = [_api_item(s) for s in everything if predicate(s)]
        assert await oracle.every_page(pid, 200, **fields) == expected, fields
        matched += bool(expected)
    assert matched >= len(cases) - 2  # a small population may lack a rare status


def _status_is(status: str) -> Callable[[model.Snapshot], bool]:
    return lambda s: s.status == status


async def test_each_list_filter_and_their_combinations(oracle: Oracle) -> None:
    pid = oracle.running.project_ids[2]
    everything = oracle.running.population.snapshots(pid)
    picks = [everything[i] for i in (5, len(everything) // 2, len(everything) - 4)]
    desktop_ids = sorted({s.desktop_id for s in picks})
    desktop_names = sorted({s.desktop_name for s in picks})
    snapshot_names = sorted({s.snapshot_name for s in picks})
    cases: list[tuple[dict[str, Any], Callable[[model.Snapshot], bool]]] = [
        ({"desktop_ids": desktop_ids}, lambda s: s.desktop_id in desktop_ids),
        ({"desktop_names": desktop_names}, lambda s: s.desktop_name in desktop_names),
        ({"snapshot_names": snapshot_names}, lambda s: s.snapshot_name in snapshot_names),
        # OR within a list, AND across parameters.
        (
            {"desktop_names": desktop_names, "disk_type": "SYSTEM_DISK"},
            lambda s: s.desktop_name in desktop_names and s.is_system_disk,
        ),
        (
            {"desktop_ids": desktop_ids, "snapshot_names": snapshot_names[:1]},
            lambda s: s.desktop_id in desktop_ids and s.snapshot_name == snapshot_names[0],
        ),
        (
            {"desktop_ids": desktop_ids[:1], "desktop_names": desktop_names},
            lambda s: s.desktop_id == desktop_ids[0] and s.desktop_name in desktop_names,
        ),
    ]
    for fields, predicate in cases:
        expected = [_api_item(s) for s in everything if predicate(s)]
        assert expected, fields
        assert len(expected) < len(everything), fields
        assert await oracle.every_page(pid, 3, **fields) == expected, fields
        descending = await oracle.every_page(
            pid, 1000, sort_field="snapshot_name", sort_type="DESC", **fields
        )
        by_name = sorted(expected, key=lambda i: (i["snapshot_name"], i["snapshot_id"]))
        assert descending == by_name[::-1], fields
    page = await oracle.snapshots(pid, desktop_names=["no such desktop"])
    assert page.total_count == 0 and not page.desktop_snapshots


async def test_error_answers_parse_into_the_sdks_exceptions(oracle: Oracle) -> None:
    pid = oracle.running.project_ids[0]
    for fields, parameter in (
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"sort_field": "create_time"}, "sort_type"),
        ({"sort_field": "status", "sort_type": "ASC"}, "sort_field"),
        ({"disk_type": "SYSTEM"}, "disk_type"),
        ({"status": "deleted"}, "status"),
        ({"desktop_names": ["ok", ""]}, "desktop_names"),
    ):
        exc = await oracle.error(pid, **fields)
        assert isinstance(exc, sdk_errors.ClientRequestException), fields
        assert (exc.status_code, exc.error_code) == (400, "WKS.00040001"), fields
        assert exc.error_msg.startswith(f"Invalid parameter {parameter}"), (fields, exc.error_msg)
        assert exc.request_id and len(exc.request_id) == 32

    unknown = "0123456789abcdef0123456789abcdef"
    oracle.workspace[unknown] = _workspace_client(oracle.running.url, unknown)
    exc = await oracle.error(unknown)
    assert (exc.status_code, exc.error_code) == (404, "WKS.00040004")
    assert unknown in exc.error_msg

    oracle.running.state.faults = oracle.running.state.faults.updated({"forbidden_projects": 1})
    exc = await oracle.error(pid)
    assert (exc.status_code, exc.error_code) == (403, "WKS.00030001")

    oracle.workspace["wrong-sk"] = _workspace_client(oracle.running.url, pid, sk="WRONG")
    exc = await oracle.error("wrong-sk")
    assert (exc.status_code, exc.error_code) == (401, "APIGW.0301")
    assert "signature" in exc.error_msg

    oracle.running.state.faults = oracle.running.state.faults.updated(
        {"forbidden_projects": 0, "fault_500": 1.0}
    )
    exc = await oracle.error(pid)
    assert isinstance(exc, sdk_errors.ServerResponseException)
    assert (exc.status_code, exc.error_code) == (500, "WKS.00050001")


async def test_the_sdk_finds_a_regions_project_through_iam(oracle: Oracle) -> None:
    # No project id: the SDK asks IAM (GET /v3/projects?name=REGION) which one is the region's.
    region = REGIONS[1]
    expected = [
        pid for pid in oracle.running.project_ids if oracle.running.population.region(pid) == region
    ]
    builder = (
        workspace_sdk.WorkspaceClient.new_builder()
        .with_http_config(_http_config())
        .with_credentials(BasicCredentials(AK, SK).with_iam_endpoint(oracle.running.url))
        .with_region(Region(region, oracle.running.url))
    )
    # build() is where the SDK calls IAM, blocking: in a thread, so the simulator can answer.
    client = await asyncio.to_thread(builder.build)
    page = await oracle.call(
        client.list_desktop_snapshot, workspace_sdk.ListDesktopSnapshotRequest(limit=1)
    )
    assert page.total_count == oracle.running.population.count(expected[0])
    stats = oracle.running.state.stats
    assert stats.api_by_project[expected[0]] == 1
    assert stats.iam_by_path["/v3/projects"] == 1


async def test_iam_lists_the_accounts_projects(oracle: Oracle) -> None:
    iam = await _iam_client(oracle.running.url)
    listed = await oracle.call(
        iam.keystone_list_auth_projects, iam_sdk.KeystoneListAuthProjectsRequest()
    )
    assert isinstance(listed, iam_sdk.KeystoneListAuthProjectsResponse)
    names = {p.name: p for p in listed.projects}
    assert list(names) == ["cn-north-4", "eu-west-101", "cn-north-4_sub1", "MOS"]
    assert [p.id for p in listed.projects[:3]] == oracle.running.project_ids
    for pid in oracle.running.project_ids:
        assert oracle.running.population.region(pid) == names_of(listed)[pid].split("_")[0]
    # The SDK asked IAM for the account's domain id first, and used the one it got.
    assert oracle.running.state.stats.iam_by_path["/v3/auth/domains"] == 1
    assert {p.domain_id for p in listed.projects} == {auth.domain_id_for(auth.DEFAULT_IAM_DOMAIN)}
    assert names["cn-north-4_sub1"].parent_id == names["cn-north-4"].id
    assert all(p.enabled and not p.is_domain for p in listed.projects)
    assert listed.links.to_dict()["_self"] == f"{oracle.running.url}/v3/auth/projects"

    for region in (*REGIONS, "MOS"):
        found = await oracle.call(
            iam.keystone_list_projects, iam_sdk.KeystoneListProjectsRequest(name=region)
        )
        assert isinstance(found, iam_sdk.KeystoneListProjectsResponse)
        assert [p.id for p in found.projects] == [names[region].id]
    found = await oracle.call(
        iam.keystone_list_projects,
        iam_sdk.KeystoneListProjectsRequest(parent_id=names["cn-north-4"].id, enabled=True),
    )
    assert [p.name for p in found.projects] == ["cn-north-4_sub1"]

    oracle.running.state.faults = oracle.running.state.faults.updated({"iam_projects_status": 403})
    with pytest.raises(sdk_errors.ClientRequestException) as info:
        await oracle.call(
            iam.keystone_list_auth_projects, iam_sdk.KeystoneListAuthProjectsRequest()
        )
    assert info.value.status_code == 403
    assert "iam:projects:list" in info.value.error_msg


def names_of(listed: Any) -> dict[str, str]:
    return {p.id: p.name for p in listed.projects}
