"""The region table: the same as the official SDKs' tables, and how settings resolve endpoints."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from app import errors, regions, settings

from ..conftest import run_cli_sync


def _sdk_table(module: str, cls: str) -> dict[str, str]:
    """{region: endpoint} of an installed SDK's region class, or skip when it is absent."""
    try:
        found: Any = getattr(importlib.import_module(module), cls)
    except ImportError:
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]' brings it)")
    table = {region: list(value.endpoints) for region, value in found.static_fields.items()}
    assert all(len(endpoints) == 1 for endpoints in table.values()), table
    return {region: endpoints[0] for region, endpoints in table.items()}


def test_workspace_regions_are_the_workspace_sdks() -> None:
    sdk = _sdk_table("huaweicloudsdkworkspace.v2.region.workspace_region", "WorkspaceRegion")
    ours = {region: found.workspace for region, found in regions.WORKSPACE_REGIONS.items()}
    assert ours == sdk
    assert len(ours) == 18


def test_iam_endpoints_are_the_iam_sdks_or_the_cores_global_fallback() -> None:
    sdk = _sdk_table("huaweicloudsdkiam.v3.region.iam_region", "IamRegion")
    internal = pytest.importorskip("huaweicloudsdkcore.auth.internal")
    assert internal.IamHelper.DEFAULT_ENDPOINT == regions.GLOBAL_IAM
    for region, found in regions.WORKSPACE_REGIONS.items():
        assert found.iam == sdk.get(region, regions.GLOBAL_IAM), region
    assert (
        regions.WORKSPACE_REGIONS["eu-west-101"].iam == "https://iam.eu-west-101.myhuaweicloud.eu"
    )
    assert {r for r in regions.WORKSPACE_REGIONS if r not in sdk} == {"cn-north-11", "af-north-1"}


def test_endpoints_come_from_the_table_unless_a_template_is_given(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    s = settings.load_settings(projects="a@eu-west-101,b@cn-north-11,c", auth="password")
    assert [p.region for p in s.project_list()] == ["eu-west-101", "cn-north-11", "cn-north-4"]
    assert s.endpoint_for("eu-west-101") == "https://workspace.eu-west-101.myhuaweicloud.com"
    assert s.iam_endpoint_for("eu-west-101") == "https://iam.eu-west-101.myhuaweicloud.eu"
    assert s.iam_endpoint_for("cn-north-11") == "https://iam.myhuaweicloud.com"
    assert s.iam_endpoint_for("cn-north-4") == "https://iam.cn-north-4.myhuaweicloud.com"

    templated = settings.load_settings(
        projects="a@mars-1",
        workspace_endpoint="https://ws.{region}.example.test/",
        iam_endpoint="http://127.0.0.1:9",
    )
    assert templated.project_list() == [settings.Project("a", "mars-1")]
    assert templated.endpoint_for("mars-1") == "https://ws.mars-1.example.test"
    assert templated.iam_endpoint_for("eu-west-101") == "http://127.0.0.1:9"
    # An empty variable is the same as an unset one: the table.
    blank = settings.load_settings(workspace_endpoint=" ", iam_endpoint="")
    assert blank.endpoint_for("cn-east-3") == "https://workspace.cn-east-3.myhuaweicloud.com"


@pytest.mark.parametrize(
    ("overrides", "variable", "override"),
    [
        ({"projects": "a@mars-1"}, "SNAPSYNC_PROJECTS", "SNAPSYNC_WORKSPACE_ENDPOINT"),
        ({"projects": "a", "region": "mars-1"}, "SNAPSYNC_REGION", "SNAPSYNC_WORKSPACE_ENDPOINT"),
        # Password login needs IAM there too: a Workspace template alone is not enough.
        (
            {"projects": "a@mars-1", "auth": "password", "workspace_endpoint": "http://x"},
            "SNAPSYNC_PROJECTS",
            "SNAPSYNC_IAM_ENDPOINT",
        ),
    ],
)
def test_an_unknown_region_is_refused_naming_the_known_ones(
    overrides: dict[str, str], variable: str, override: str
) -> None:
    s = settings.load_settings(**overrides)
    with pytest.raises(errors.ConfigError) as info:
        s.project_list()
    assert info.value.variable == variable
    assert "'mars-1' is not a known Workspace region" in info.value.problem
    assert "cn-north-4" in info.value.problem and "eu-west-101" in info.value.problem
    assert override in info.value.problem


def test_an_unknown_region_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {"SNAPSYNC_PROJECTS": "p1@mars-1", "SNAPSYNC_AUTH": "token", "SNAPSYNC_AUTH_TOKEN": "t"}
    result = run_cli_sync("sync", env=env, cwd=tmp_path)
    assert result.code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SNAPSYNC_PROJECTS" in lines[0] and "mars-1" in lines[0]
    assert "af-north-1" in lines[0] and "SNAPSYNC_WORKSPACE_ENDPOINT" in lines[0]
    assert "Traceback" not in result.output


def test_an_unknown_region_on_the_command_line_names_the_option(tmp_path: Path) -> None:
    env = {"SNAPSYNC_PROJECTS": "p1", "SNAPSYNC_AUTH": "token", "SNAPSYNC_AUTH_TOKEN": "t"}
    result = run_cli_sync("sync", "--project", "p2@mars-1", env=env, cwd=tmp_path)
    assert result.code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--project" in lines[0] and "mars-1" in lines[0]
    assert "Traceback" not in result.output
