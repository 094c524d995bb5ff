"""The simulated IAM: its view of the account's projects, as Keystone v3 lists them, and its
endpoints (`add_routes`: the token login and the project and domain listings).

The view is pure: the endpoints hand in the population and the query, and get back JSON-ready
bodies, or an IamQueryError whose message becomes the 400 answer. Each simulated project is an
IAM project named after its region (`cn-north-4`); a second project in a region is a
sub-project (`cn-north-4_sub1`, its parent the region's project). IAM's special project `MOS`,
which is no region and has no Workspace, is listed too, as the real IAM lists it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from app.simulator import auth, gateway, model
from app.simulator import population as pop
from app.simulator.state import STATE, SimulatorState

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
    raise model.UnknownProjectError(f"no project {project_id}")


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


# ---- the endpoints -------------------------------------------------------------------------


def add_routes(app: web.Application) -> None:
    """Serve IAM's endpoints from `app`."""
    app.router.add_post("/v3/auth/tokens", _iam_login)
    app.router.add_get("/v3/auth/projects", _iam_auth_projects)
    app.router.add_get("/v3/auth/domains", _iam_auth_domains)
    app.router.add_get("/v3/projects", _iam_list_projects)


def _account(state: SimulatorState) -> list[IamProject]:
    """The account's projects as IAM lists them."""
    return account_projects(state.population, state.domain)


async def _iam_login(request: web.Request) -> web.StreamResponse:
    """POST /v3/auth/tokens: Keystone v3 password login, scoped to one known project or to
    the account (what IAM's project listings take)."""
    state = request.app[STATE]
    try:
        body = json.loads(await request.read())
    except ValueError:
        return _login_error(
            state, auth.LoginError(400, "Bad Request", "Malformed JSON", "IAM.0001")
        )
    try:
        login = auth.parse_login(body)
        auth.check_login(state.auth, login)
        if login.project_id is not None and not _in_account(state, login.project_id):
            raise auth.LoginError(
                400, "Bad Request", f"Project {login.project_id} does not exist.", "IAM.0005"
            )
    except auth.LoginError as exc:
        return _login_error(state, exc)
    issued = state.tokens.issue(login.project_id, state.clock())
    catalog = request.query.get("nocatalog", "false").lower() != "true"
    if login.project_id is None:
        body = auth.token_body(issued, login, catalog=catalog)
    else:
        name = project_name(state.population, state.domain, login.project_id)
        body = auth.token_body(issued, login, catalog=catalog, project_name=name)
    response = gateway.json_response(body, status=201)
    response.headers["X-Subject-Token"] = issued.token
    return response


def _in_account(state: SimulatorState, project_id: str) -> bool:
    """Whether IAM knows the project (with Workspace, or listed by IAM only)."""
    return state.population.has_project(project_id) or project_id in state.population.iam_only()


async def _iam_auth_projects(request: web.Request) -> web.StreamResponse:
    """GET /v3/auth/projects: every project the credentials can reach."""
    state = request.app[STATE]
    refused = await _iam_refusal(request, state)
    if refused is not None:
        return refused
    return gateway.json_response(auth_projects_body(_account(state), _public_url(request)))


async def _iam_auth_domains(request: web.Request) -> web.StreamResponse:
    """GET /v3/auth/domains: the account the credentials belong to (the SDK's GlobalCredentials
    ask it for their domain id)."""
    state = request.app[STATE]
    refused = await _iam_refusal(request, state, listing=False)
    if refused is not None:
        return refused
    return gateway.json_response(auth_domains_body(state.domain, _public_url(request)))


async def _iam_list_projects(request: web.Request) -> web.StreamResponse:
    """GET /v3/projects?name=REGION...: the account's projects, filtered (the SDK finds a
    region's project id this way)."""
    state = request.app[STATE]
    refused = await _iam_refusal(request, state)
    if refused is not None:
        return refused
    try:
        body = projects_body(_account(state), request.query, _public_url(request))
    except IamQueryError as exc:
        return gateway.json_response(
            auth.LoginError(400, "Bad Request", str(exc), "IAM.0001").body(), status=400
        )
    return gateway.json_response(body)


async def _iam_refusal(
    request: web.Request, state: SimulatorState, *, listing: bool = True
) -> web.Response | None:
    """The Keystone error answer when an IAM call is not authenticated, or (`listing`) a
    project listing is not allowed."""
    try:
        await gateway.authenticate(request, state, None)
    except auth.AuthRejected as exc:
        title = "Unauthorized" if exc.status == 401 else "Forbidden"
        error = auth.LoginError(exc.status, title, exc.message, exc.error_code)
        return gateway.json_response(error.body(), status=exc.status)
    status = state.faults.iam_projects_status if listing else 0
    if status:
        title = "Unauthorized" if status == 401 else "Forbidden"
        message = (
            "The request you have made requires authentication."
            if status == 401
            else "Policy doesn't allow iam:projects:list to be performed."
        )
        error = auth.LoginError(status, title, message, "IAM.0002" if status == 403 else "IAM.0001")
        return gateway.json_response(error.body(), status=status)
    return None


def _public_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _login_error(state: SimulatorState, exc: auth.LoginError) -> web.Response:
    if exc.status == 401:
        state.tokens.failed_logins += 1
    return gateway.json_response(exc.body(), status=exc.status)
