"""The simulated IAM's view of the account: its projects, as Keystone v3 lists them.

Pure: the server hands in the population and the query, and gets back JSON-ready bodies, or an
IamQueryError whose message becomes the 400 answer. Each simulated project is an IAM project
named after its region (`cn-north-4`); a second project in a region is a sub-project
(`cn-north-4_sub1`, its parent the region's project). IAM's special project `MOS`, which is no
region and has no Workspace, is listed too, as the real IAM lists it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from app.simulator import auth
from app.simulator import population as pop

MOS_NAME = "MOS"
# Keystone's paging bounds for GET /v3/projects.
MAX_PER_PAGE = 5000
_DIGITS = re.compile(r"[0-9]{1,9}")
_FILTERS = ("domain_id", "name", "parent_id")
_BOOLEANS = {"true": True, "false": False}


class IamQueryError(ValueError):
    """A query parameter of an IAM listing is malformed; the message says which."""


@dataclass(frozen=True, slots=True)
class IamProject:
    """One project of the account as IAM describes it."""

    id: str
    name: str
    domain_id: str
    parent_id: str
    description: str = ""
    enabled: bool = True
    is_domain: bool = False

    def to_json(self, base_url: str) -> dict[str, Any]:
        """The project as Keystone renders it."""
        return {
            "id": self.id,
            "name": self.name,
            "domain_id": self.domain_id,
            "enabled": self.enabled,
            "is_domain": self.is_domain,
            "parent_id": self.parent_id,
            "description": self.description,
            "links": {"self": f"{base_url}/v3/projects/{self.id}"},
        }


def account_projects(population: pop.Population, domain: str) -> list[IamProject]:
    """Every project of the account: the simulated ones in order, those without Workspace,
    then `MOS`."""
    domain_id = auth.domain_id_for(domain)
    region_project: dict[str, str] = {}
    subprojects: dict[str, int] = {}
    projects: list[IamProject] = []
    regions = {pid: population.region(pid) for pid in population.project_ids}
    for project_id, region in {**regions, **population.iam_only()}.items():
        parent = region_project.get(region)
        if parent is None:
            region_project[region] = project_id
            projects.append(IamProject(project_id, region, domain_id, domain_id))
            continue
        subprojects[region] = subprojects.get(region, 0) + 1
        name = f"{region}_sub{subprojects[region]}"
        projects.append(
            IamProject(project_id, name, domain_id, parent, description="a sub-project")
        )
    mos_id = hashlib.md5(f"{population.seed}:{MOS_NAME}".encode(), usedforsecurity=False)
    projects.append(IamProject(mos_id.hexdigest(), MOS_NAME, domain_id, domain_id))
    return projects


def project_name(population: pop.Population, domain: str, project_id: str) -> str:
    """The IAM name of one simulated project (its region, or a sub-project's name)."""
    for project in account_projects(population, domain):
        if project.id == project_id:
            return project.name
    raise pop.UnknownProjectError(f"no project {project_id}")


def auth_projects_body(projects: Iterable[IamProject], base_url: str) -> dict[str, Any]:
    """The body of GET /v3/auth/projects."""
    return {
        "projects": [project.to_json(base_url) for project in projects],
        "links": {"self": f"{base_url}/v3/auth/projects"},
    }


def auth_domains_body(domain: str, base_url: str) -> dict[str, Any]:
    """The body of GET /v3/auth/domains: the one account of the simulator."""
    domain_id = auth.domain_id_for(domain)
    return {
        "domains": [
            {
                "id": domain_id,
                "name": domain,
                "enabled": True,
                "description": "",
                "links": {"self": f"{base_url}/v3/domains/{domain_id}"},
            }
        ],
        "links": {"self": f"{base_url}/v3/auth/domains"},
    }


def projects_body(
    projects: Iterable[IamProject], query: Mapping[str, str], base_url: str
) -> dict[str, Any]:
    """The body of GET /v3/projects: filtered by name, domain_id, parent_id, enabled and
    is_domain (exact matches, all must hold), then paged by page/per_page when given."""
    selected = [p for p in projects if _matches(p, query)]
    page = _positive(query, "page")
    per_page = _positive(query, "per_page")
    if per_page is not None and per_page > MAX_PER_PAGE:
        raise IamQueryError(f"Invalid input for field 'per_page': must be at most {MAX_PER_PAGE}")
    if page is not None or per_page is not None:
        size = per_page or MAX_PER_PAGE
        start = ((page or 1) - 1) * size
        selected = selected[start : start + size]
    return {
        "projects": [project.to_json(base_url) for project in selected],
        "links": {"self": f"{base_url}/v3/projects", "previous": None, "next": None},
    }


def _matches(project: IamProject, query: Mapping[str, str]) -> bool:
    for key in _FILTERS:
        if key in query and getattr(project, key) != query[key]:
            return False
    for key in ("enabled", "is_domain"):
        if key not in query:
            continue
        wanted = _BOOLEANS.get(query[key].lower())
        if wanted is None:
            raise IamQueryError(f"Invalid input for field '{key}': must be true or false")
        if getattr(project, key) is not wanted:
            return False
    return True


def _positive(query: Mapping[str, str], key: str) -> int | None:
    text = query.get(key)
    if text is None:
        return None
    if not _DIGITS.fullmatch(text) or int(text) < 1:
        raise IamQueryError(f"Invalid input for field '{key}': must be an integer >= 1")
    return int(text)
