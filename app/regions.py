"""The regions where Workspace exists, and each one's Workspace and IAM endpoints.

Taken from the official SDKs' region tables (huaweicloudsdkworkspace's WorkspaceRegion and
huaweicloudsdkiam's IamRegion, 3.1.219); tests/integration/test_regions.py compares this
table with the installed SDKs so drift is caught. A region the IAM SDK does not list gets
IAM's global endpoint, as huaweicloudsdkcore falls back to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from app import errors

# huaweicloudsdkcore's IamHelper.DEFAULT_ENDPOINT: IAM for regions without one of their own.
GLOBAL_IAM = "https://iam.myhuaweicloud.com"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The base URLs of one region's services."""

    workspace: str
    iam: str


def _standard(region: str) -> Endpoints:
    return Endpoints(
        workspace=f"https://workspace.{region}.myhuaweicloud.com",
        iam=f"https://iam.{region}.myhuaweicloud.com",
    )


# In the Workspace SDK's order.
WORKSPACE_REGIONS: dict[str, Endpoints] = {
    "cn-east-3": _standard("cn-east-3"),
    "cn-north-4": _standard("cn-north-4"),
    "cn-south-1": _standard("cn-south-1"),
    "cn-southwest-2": _standard("cn-southwest-2"),
    "la-south-2": _standard("la-south-2"),
    "sa-brazil-1": _standard("sa-brazil-1"),
    "la-north-2": _standard("la-north-2"),
    "ap-southeast-3": _standard("ap-southeast-3"),
    "cn-north-9": _standard("cn-north-9"),
    "ap-southeast-1": _standard("ap-southeast-1"),
    "cn-east-5": _standard("cn-east-5"),
    "me-east-1": _standard("me-east-1"),
    "af-south-1": _standard("af-south-1"),
    "tr-west-1": _standard("tr-west-1"),
    # The IAM SDK lists no IAM of their own for these two.
    "cn-north-11": Endpoints("https://workspace.cn-north-11.myhuaweicloud.com", GLOBAL_IAM),
    "af-north-1": Endpoints("https://workspace.af-north-1.myhuaweicloud.com", GLOBAL_IAM),
    "ap-southeast-2": _standard("ap-southeast-2"),
    # Huawei Cloud Europe: its IAM lives under its own domain.
    "eu-west-101": Endpoints(
        "https://workspace.eu-west-101.myhuaweicloud.com",
        "https://iam.eu-west-101.myhuaweicloud.eu",
    ),
}


def known() -> list[str]:
    """The Workspace regions, sorted."""
    return sorted(WORKSPACE_REGIONS)


def is_workspace_region(region: str) -> bool:
    """Whether Workspace exists in `region` as far as the table knows."""
    return region in WORKSPACE_REGIONS


def workspace_url(region: str, template: str | None, *, variable: str) -> str:
    """The Workspace base URL of `region`: from `template` (`{region}` replaced) when given,
    else from the table; ConfigError naming `variable` for a region the table lacks."""
    if template is not None:
        return template.replace("{region}", region)
    return _endpoints(region, variable, "SNAPSYNC_WORKSPACE_ENDPOINT").workspace


def iam_url(region: str, template: str | None, *, variable: str) -> str:
    """The IAM base URL of `region`, as `workspace_url` finds the Workspace one."""
    if template is not None:
        return template.replace("{region}", region)
    return _endpoints(region, variable, "SNAPSYNC_IAM_ENDPOINT").iam


def _endpoints(region: str, variable: str, override: str) -> Endpoints:
    found = WORKSPACE_REGIONS.get(region)
    if found is None:
        raise errors.ConfigError(
            variable,
            f"region {region!r} is not a known Workspace region ({', '.join(known())}); "
            f"for another one set {override} to a URL template with {{region}}",
        )
    return found
