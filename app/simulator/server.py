"""The simulator's HTTP server: the Workspace snapshots API, an IAM token endpoint, `/_sim/`.

`create_app(options)` builds the aiohttp application (for in-process tests), `running(options)`
serves it on a port for the length of an `async with`, and `serve(options)` runs it until
cancelled or signalled, for `snapsync simulate`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import ipaddress
import json
import logging
import random
import re
import signal
import sys
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from app.simulator import auth, faults, iam, query
from app.simulator import population as pop

log = logging.getLogger(__name__)

_PROJECT_ID = re.compile(r"[0-9a-f]{32}")

# Error codes: WKS.* from the Workspace service, APIGW.* from the API gateway in front of it.
CODE_INVALID_PARAMETER = "WKS.00040001"
CODE_FORBIDDEN_PROJECT = "WKS.00030001"
CODE_NOT_FOUND = "WKS.00040004"
CODE_INTERNAL = "WKS.00050001"
CODE_THROTTLED = "APIGW.0308"
CODE_NO_SUCH_API = "APIGW.0101"

_ROUTE_ERRORS = {
    404: (CODE_NO_SUCH_API, "The API does not exist or has not been published in the environment."),
    405: (CODE_NO_SUCH_API, "The method is not allowed for this API."),
}


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """Everything `snapsync simulate` can be told; tests build it directly."""

    host: str = "127.0.0.1"
    port: int = 8080
    projects: int = 3
    snapshots: int = 1000
    seed: int = 1
    tick_seconds: float = 1.0
    change_rate: float = 0.002
    unstable_ties: bool = False
    auth_token: str | None = auth.DEFAULT_AUTH_TOKEN
    access_key: str | None = auth.DEFAULT_ACCESS_KEY
    secret_key: str | None = auth.DEFAULT_SECRET_KEY
    iam_user: str | None = auth.DEFAULT_IAM_USER
    iam_password: str | None = auth.DEFAULT_IAM_PASSWORD
    iam_domain: str | None = auth.DEFAULT_IAM_DOMAIN
    token_ttl: float = 86_400.0
    fault_429: float = 0.0
    fault_500: float = 0.0
    fault_502_html: float = 0.0
    latency: float = 0.0
    latency_per_item: float = 0.0
    forbidden_projects: int = 0
    iam_projects_status: int = 0
    # The regions the projects are spread over, round-robin (see population.DEFAULT_REGIONS).
    regions: tuple[str, ...] = pop.DEFAULT_REGIONS
    # Where simulated time starts; None: today's midnight UTC, so snapshots look recent while
    # the population stays the same for a whole day.
    start_time: datetime | None = None

    def start(self) -> datetime:
        """The simulated time at tick 0."""
        if self.start_time is not None:
            return self.start_time
        return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def auth_config(self) -> auth.AuthConfig:
        """The gateway's credentials."""
        return auth.AuthConfig(
            static_token=self.auth_token or None,
            access_key=self.access_key or None,
            secret_key=self.secret_key or None,
            iam_user=self.iam_user or None,
            iam_password=self.iam_password or None,
            iam_domain=self.iam_domain or None,
            token_ttl=self.token_ttl,
        )

    def initial_faults(self) -> faults.Faults:
        """The fault settings at start."""
        return faults.Faults(
            fault_429=self.fault_429,
            fault_500=self.fault_500,
            fault_502_html=self.fault_502_html,
            latency=self.latency,
            latency_per_item=self.latency_per_item,
            forbidden_projects=self.forbidden_projects,
            iam_projects_status=self.iam_projects_status,
        )


def build_population(options: SimulatorOptions) -> pop.Population:
    """The population `options` describe (can take seconds for a million snapshots)."""
    return pop.Population(
        projects=options.projects,
        snapshots=options.snapshots,
        seed=options.seed,
        change_rate=options.change_rate,
        start=options.start(),
        step_seconds=options.tick_seconds if options.tick_seconds > 0 else 1.0,
        regions=options.regions,
    )


@dataclass(frozen=True, slots=True)
class RawPage:
    """A canned answer for the next API request of a project (hostile-input tests)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, spec: Any) -> RawPage:
        """From `{"status", "body" | "body_base64", "content_type"?, "headers"?}`."""
        if not isinstance(spec, dict):
            raise ValueError("each raw page must be an object")
        status = spec.get("status", 200)
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"status must be an integer 200..599, got {status!r}")
        if "body_base64" in spec:
            try:
                body = base64.b64decode(str(spec["body_base64"]), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("body_base64 is not base64") from None
        elif isinstance(spec.get("body", ""), str):
            body = str(spec.get("body", "")).encode()
        else:
            raise ValueError("body must be a string")
        content_type = spec.get("content_type", "application/json")
        headers = spec.get("headers", {})
        if not isinstance(content_type, str) or not isinstance(headers, dict):
            raise ValueError("content_type must be a string and headers an object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ValueError("headers must map strings to strings")
        return cls(status=status, body=body, content_type=content_type, headers=headers)


@dataclass(slots=True)
class Stats:
    """Requests served, by where they went and how they were answered."""

    api_by_status: Counter[int] = field(default_factory=Counter)
    api_by_project: Counter[str] = field(default_factory=Counter)
    iam_by_status: Counter[int] = field(default_factory=Counter)
    iam_by_path: Counter[str] = field(default_factory=Counter)
    control_requests: int = 0


class SimulatorState:
    """What one running simulator holds; tests in the same process may use it directly."""

    def __init__(self, options: SimulatorOptions, population: pop.Population) -> None:
        self.options = options
        self.population = population
        self.selector = query.Selector(population)
        self.faults = options.initial_faults()
        self.unstable_ties = options.unstable_ties
        self.auth = options.auth_config()
        self.tokens = auth.TokenStore(ttl=timedelta(seconds=options.token_ttl))
        self.raw_pages: dict[str, deque[RawPage]] = {}
        self.stats = Stats()
        # Seeded so a run with faults or shuffled ties can be replayed request for request.
        self.fault_rng = random.Random(f"{options.seed}:faults")
        self.tie_rng = random.Random(f"{options.seed}:ties")
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def forbidden(self, project_id: str) -> bool:
        """Whether the project is among the first `forbidden_projects`."""
        return project_id in self.population.project_ids[: self.faults.forbidden_projects]

    @property
    def domain(self) -> str:
        """The simulated account's name (IAM's domain)."""
        return self.auth.iam_domain or auth.DEFAULT_IAM_DOMAIN

    def iam_projects(self) -> list[iam.IamProject]:
        """The account's projects as IAM lists them."""
        return iam.account_projects(self.population, self.domain)

    def stats_json(self) -> dict[str, Any]:
        """What GET /_sim/stats answers."""
        now = self.clock()
        return {
            "requests_by_status": {str(k): v for k, v in sorted(self.stats.api_by_status.items())},
            "requests_by_project": dict(self.stats.api_by_project),
            "requests_total": sum(self.stats.api_by_status.values()),
            "iam_requests_by_status": {
                str(k): v for k, v in sorted(self.stats.iam_by_status.items())
            },
            "iam_requests_by_path": dict(self.stats.iam_by_path),
            "logins_per_project": dict(self.tokens.logins),
            "domain_logins": self.tokens.domain_logins,
            "failed_logins": self.tokens.failed_logins,
            "active_tokens": self.tokens.active(now),
            "control_requests": self.stats.control_requests,
            "faults": self.faults.as_dict(),
            "unstable_ties": self.unstable_ties,
            "change_rate": self.population.change_rate,
            "ticks": self.population.ticks,
            "simulated_time": pop.format_time(self.population.now.timestamp()),
            "snapshots_total": self.population.total,
            "raw_pages_pending": {pid: len(q) for pid, q in self.raw_pages.items() if q},
        }


STATE: web.AppKey[SimulatorState] = web.AppKey("snapsync_simulator_state", SimulatorState)


def create_app(
    options: SimulatorOptions, *, population: pop.Population | None = None
) -> web.Application:
    """The simulator as an aiohttp application; builds the population unless one is given."""
    state = SimulatorState(options, population or build_population(options))
    app = web.Application(middlewares=[_request_id_middleware], client_max_size=16 * 1024**2)
    app[STATE] = state
    app.router.add_get("/v2/{project_id}/snapshots", _list_snapshots)
    app.router.add_post("/v3/auth/tokens", _iam_login)
    app.router.add_get("/v3/auth/projects", _iam_auth_projects)
    app.router.add_get("/v3/auth/domains", _iam_auth_domains)
    app.router.add_get("/v3/projects", _iam_list_projects)
    app.router.add_get("/_sim/projects", _sim_projects)
    app.router.add_post("/_sim/projects", _sim_add_project)
    app.router.add_delete("/_sim/projects/{project_id}", _sim_remove_project)
    app.router.add_get("/_sim/projects/{project_id}/snapshots", _sim_list)
    app.router.add_post("/_sim/projects/{project_id}/snapshots", _sim_add)
    app.router.add_get("/_sim/projects/{project_id}/snapshots/{snapshot_id}", _sim_get)
    app.router.add_patch("/_sim/projects/{project_id}/snapshots/{snapshot_id}", _sim_patch)
    app.router.add_delete("/_sim/projects/{project_id}/snapshots/{snapshot_id}", _sim_delete)
    app.router.add_post("/_sim/projects/{project_id}/raw-pages", _sim_raw_pages)
    app.router.add_delete("/_sim/projects/{project_id}/raw-pages", _sim_clear_raw_pages)
    app.router.add_post("/_sim/tick", _sim_tick)
    app.router.add_post("/_sim/faults", _sim_faults)
    app.router.add_post("/_sim/revoke-tokens", _sim_revoke_tokens)
    app.router.add_get("/_sim/stats", _sim_stats)
    app.cleanup_ctx.append(_ticker)
    return app


# ---- responses ---------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def json_response(value: Any, *, status: int = 200) -> web.Response:
    """A JSON answer (UTF-8, not ASCII-escaped, as the real API)."""
    return web.json_response(value, status=status, dumps=_dumps)


def error_response(
    status: int, error_code: str, error_msg: str, *, headers: Mapping[str, str] | None = None
) -> web.Response:
    """The documented error body `{"error_code", "error_msg"}`."""
    response = json_response({"error_code": error_code, "error_msg": error_msg}, status=status)
    if headers:
        response.headers.update(headers)
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every answer, error or not, a unique X-Request-Id; count and log it."""
    request_id = uuid.uuid4().hex
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        code, message = _ROUTE_ERRORS.get(exc.status, (CODE_INVALID_PARAMETER, exc.reason))
        response = error_response(exc.status, code, message)
    except Exception:
        log.exception("simulator: unexpected error answering %s %s", request.method, request.path)
        response = error_response(500, CODE_INTERNAL, "Internal server error.")
    response.headers["X-Request-Id"] = request_id
    state = request.app[STATE]
    path = request.path
    if path.startswith("/_sim/"):
        state.stats.control_requests += 1
    elif path.startswith("/v3/"):
        state.stats.iam_by_status[response.status] += 1
        state.stats.iam_by_path[path] += 1
    elif path.startswith("/v2/"):
        state.stats.api_by_status[response.status] += 1
        project_id = request.match_info.get("project_id")
        if project_id:
            state.stats.api_by_project[project_id] += 1
    log.debug(
        "simulator: %s %s -> %d (X-Request-Id %s)",
        request.method,
        request.path_qs,
        response.status,
        request_id,
    )
    return response


# ---- the Workspace API ------------------------------------------------------------------


async def _list_snapshots(request: web.Request) -> web.StreamResponse:
    """GET /v2/{project_id}/snapshots, in the order a gateway and the service would check."""
    state = request.app[STATE]
    project_id = request.match_info["project_id"]
    if state.faults.latency > 0:
        await asyncio.sleep(state.faults.latency)
    try:
        await _authenticate(request, state, project_id)
    except auth.AuthRejected as exc:
        return error_response(exc.status, exc.error_code, exc.message)

    canned = state.raw_pages.get(project_id)
    if canned:
        raw = canned.popleft()
        headers = {"Content-Type": raw.content_type, **raw.headers}
        return web.Response(status=raw.status, body=raw.body, headers=headers)

    injected = state.faults.draw(state.fault_rng)
    if injected == 429:
        return error_response(
            429,
            CODE_THROTTLED,
            "The throttling threshold has been reached: policy user over ratelimit, "
            "limit:20, time:1 second",
            headers={"Retry-After": "1"},
        )
    if injected == 500:
        return error_response(500, CODE_INTERNAL, "Internal server error.")
    if injected == 502:
        return web.Response(
            status=502, text=faults.BAD_GATEWAY_HTML, content_type="text/html", charset="utf-8"
        )

    if not _PROJECT_ID.fullmatch(project_id):
        return error_response(
            400,
            CODE_INVALID_PARAMETER,
            f"Invalid parameter project_id: {project_id!r} is not 32 lowercase hex digits",
        )
    if not state.population.has_project(project_id):
        return error_response(404, CODE_NOT_FOUND, f"No resources found: project {project_id}")
    if state.forbidden(project_id):
        return error_response(
            403, CODE_FORBIDDEN_PROJECT, f"No operation permissions on project {project_id}"
        )
    try:
        parsed = query.parse_query(request.query.items())
    except query.QueryError as exc:
        return error_response(400, CODE_INVALID_PARAMETER, str(exc))
    page = state.selector.select(
        project_id, parsed, shuffle_ties=state.tie_rng if state.unstable_ties else None
    )
    if state.faults.latency_per_item > 0 and page.items:
        await asyncio.sleep(state.faults.latency_per_item * len(page.items))
    return web.Response(
        body=page.to_json().encode(), content_type="application/json", charset="utf-8"
    )


async def _authenticate(
    request: web.Request, state: SimulatorState, project_id: str | None
) -> None:
    """Check the request's token or signature (for `project_id`, or any project when None);
    raises auth.AuthRejected."""
    body = await request.read()
    auth.authenticate(
        state.auth,
        state.tokens,
        method=request.method,
        path=request.rel_url.raw_path,
        raw_query=request.rel_url.raw_query_string,
        headers=request.headers,
        body=body,
        project_id=project_id,
        now=state.clock(),
    )


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
        name = iam.project_name(state.population, state.domain, login.project_id)
        body = auth.token_body(issued, login, catalog=catalog, project_name=name)
    response = json_response(body, status=201)
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
    return json_response(iam.auth_projects_body(state.iam_projects(), _public_url(request)))


async def _iam_auth_domains(request: web.Request) -> web.StreamResponse:
    """GET /v3/auth/domains: the account the credentials belong to (the SDK's GlobalCredentials
    ask it for their domain id)."""
    state = request.app[STATE]
    refused = await _iam_refusal(request, state, listing=False)
    if refused is not None:
        return refused
    return json_response(iam.auth_domains_body(state.domain, _public_url(request)))


async def _iam_list_projects(request: web.Request) -> web.StreamResponse:
    """GET /v3/projects?name=REGION...: the account's projects, filtered (the SDK finds a
    region's project id this way)."""
    state = request.app[STATE]
    refused = await _iam_refusal(request, state)
    if refused is not None:
        return refused
    try:
        body = iam.projects_body(state.iam_projects(), request.query, _public_url(request))
    except iam.IamQueryError as exc:
        return json_response(
            auth.LoginError(400, "Bad Request", str(exc), "IAM.0001").body(), status=400
        )
    return json_response(body)


async def _iam_refusal(
    request: web.Request, state: SimulatorState, *, listing: bool = True
) -> web.Response | None:
    """The Keystone error answer when an IAM call is not authenticated, or (`listing`) a
    project listing is not allowed."""
    try:
        await _authenticate(request, state, None)
    except auth.AuthRejected as exc:
        title = "Unauthorized" if exc.status == 401 else "Forbidden"
        error = auth.LoginError(exc.status, title, exc.message, exc.error_code)
        return json_response(error.body(), status=exc.status)
    status = state.faults.iam_projects_status if listing else 0
    if status:
        title = "Unauthorized" if status == 401 else "Forbidden"
        message = (
            "The request you have made requires authentication."
            if status == 401
            else "Policy doesn't allow iam:projects:list to be performed."
        )
        error = auth.LoginError(status, title, message, "IAM.0002" if status == 403 else "IAM.0001")
        return json_response(error.body(), status=status)
    return None


def _public_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _login_error(state: SimulatorState, exc: auth.LoginError) -> web.Response:
    if exc.status == 401:
        state.tokens.failed_logins += 1
    return json_response(exc.body(), status=exc.status)


# ---- the control API (/_sim/, no auth) ----------------------------------------------------


class _BadControlRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _control_error(status: int, message: str) -> web.Response:
    return error_response(status, f"SIM.{status}", message)


def _control(
    handler: Callable[[web.Request, SimulatorState], Awaitable[web.StreamResponse]],
) -> Handler:
    """Wrap a control handler: population errors and bad bodies become 4xx answers."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request, request.app[STATE])
        except _BadControlRequest as exc:
            return _control_error(exc.status, str(exc))
        except (pop.UnknownProjectError, pop.UnknownSnapshotError) as exc:
            return _control_error(404, str(exc))
        except (pop.FieldError, faults.FaultError, ValueError) as exc:
            return _control_error(400, str(exc))

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped


async def _json_body(request: web.Request, *, default: Any = None) -> Any:
    raw = await request.read()
    if not raw.strip():
        if default is not None:
            return default
        raise _BadControlRequest(400, "a JSON body is required")
    try:
        return json.loads(raw)
    except ValueError:
        raise _BadControlRequest(400, "the body is not JSON") from None


def _pid(request: web.Request, state: SimulatorState) -> str:
    project_id = request.match_info["project_id"]
    if not state.population.has_project(project_id):
        raise pop.UnknownProjectError(f"no project {project_id}")
    return project_id


@_control
async def _sim_projects(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """GET /_sim/projects: ids, counts, forbidden flags, simulated time."""
    population = state.population
    return json_response(
        {
            "projects": [
                {
                    "project_id": pid,
                    "snapshot_count": population.count(pid),
                    "forbidden": state.forbidden(pid),
                    "region": population.region(pid),
                }
                for pid in population.project_ids
            ],
            "iam_only": [
                {"project_id": pid, "region": region}
                for pid, region in population.iam_only().items()
            ],
            "ticks": population.ticks,
            "simulated_time": pop.format_time(population.now.timestamp()),
        }
    )


@_control
async def _sim_add_project(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/projects {"region": R, "workspace": true}: a new project of the account, with
    snapshots (or, with "workspace": false, one IAM lists and Workspace answers 404 for)."""
    body = await _json_body(request)
    region = body.get("region") if isinstance(body, dict) else None
    workspace = body.get("workspace", True) if isinstance(body, dict) else None
    if not isinstance(region, str) or not pop.REGION_NAME.fullmatch(region):
        raise _BadControlRequest(400, 'body must be {"region": "<region name>"}')
    if not isinstance(workspace, bool):
        raise _BadControlRequest(400, "workspace must be true or false")
    project_id = state.population.add_project(region, workspace=workspace)
    count = state.population.count(project_id) if workspace else 0
    return json_response(
        {
            "project_id": project_id,
            "region": region,
            "workspace": workspace,
            "snapshot_count": count,
        },
        status=201,
    )


@_control
async def _sim_remove_project(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """DELETE /_sim/projects/{pid}: the project vanishes from Workspace and IAM alike."""
    project_id = request.match_info["project_id"]
    state.population.remove_project(project_id)
    return json_response({"removed": project_id})


@_control
async def _sim_list(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """GET /_sim/projects/{pid}/snapshots: every snapshot, default order, one answer."""
    items = state.population.snapshots(_pid(request, state))
    page = query.PageSlice(total_count=len(items), items=items)
    return web.Response(
        body=page.to_json().encode(), content_type="application/json", charset="utf-8"
    )


@_control
async def _sim_get(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """GET /_sim/projects/{pid}/snapshots/{sid}."""
    snap = state.population.get_snapshot(_pid(request, state), request.match_info["snapshot_id"])
    return json_response(snap.to_api())


@_control
async def _sim_add(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/projects/{pid}/snapshots: body an object (or a list) of fields; the rest
    are generated. Answers the item (or {"desktop_snapshots": [...]})."""
    project_id = _pid(request, state)
    body = await _json_body(request, default={})
    specs = body if isinstance(body, list) else [body]
    if not all(isinstance(spec, dict) for spec in specs):
        raise _BadControlRequest(400, "the body must be an object or a list of objects")
    # Check them all first, so a bad one in a list adds nothing.
    for spec in specs:
        pop.validate_fields(spec)
    added = [state.population.add_snapshot(project_id, spec).to_api() for spec in specs]
    return json_response(added if isinstance(body, list) else added[0], status=201)


@_control
async def _sim_patch(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """PATCH /_sim/projects/{pid}/snapshots/{sid}: set fields (null unsets optional ones)."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise _BadControlRequest(400, "the body must be an object of fields")
    snap = state.population.set_fields(
        _pid(request, state), request.match_info["snapshot_id"], body
    )
    return json_response(snap.to_api())


@_control
async def _sim_delete(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """DELETE /_sim/projects/{pid}/snapshots/{sid}: answers the deleted item."""
    snap = state.population.delete_snapshot(_pid(request, state), request.match_info["snapshot_id"])
    return json_response({"deleted": snap.to_api()})


@_control
async def _sim_raw_pages(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/projects/{pid}/raw-pages: queue canned answers, one per API request."""
    project_id = request.match_info["project_id"]
    # Any well-formed id: canned answers may stand in for a project the simulator lacks.
    if not _PROJECT_ID.fullmatch(project_id):
        raise _BadControlRequest(400, "project id must be 32 lowercase hex digits")
    body = await _json_body(request)
    specs = body if isinstance(body, list) else [body]
    pages = [RawPage.from_json(spec) for spec in specs]
    queue = state.raw_pages.setdefault(project_id, deque())
    queue.extend(pages)
    return json_response({"queued": len(pages), "pending": len(queue)}, status=201)


@_control
async def _sim_clear_raw_pages(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """DELETE /_sim/projects/{pid}/raw-pages: drop the canned answers not served yet."""
    dropped = len(state.raw_pages.pop(request.match_info["project_id"], ()))
    return json_response({"dropped": dropped})


@_control
async def _sim_tick(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/tick {"n": k}: run k evolution steps now; answers what changed."""
    body = await _json_body(request, default={"n": 1})
    n = body.get("n", 1) if isinstance(body, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1_000_000:
        raise _BadControlRequest(400, 'body must be {"n": <integer 0..1000000>}')
    report = state.population.tick(n)
    return json_response(
        {
            **report.as_dict(),
            "total_ticks": state.population.ticks,
            "simulated_time": pop.format_time(state.population.now.timestamp()),
        }
    )


@_control
async def _sim_faults(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/faults: change any fault option, plus `unstable_ties` and `change_rate`."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise _BadControlRequest(400, "the body must be an object")
    changes = dict(body)
    unstable = changes.pop("unstable_ties", None)
    change_rate = changes.pop("change_rate", None)
    if unstable is not None and not isinstance(unstable, bool):
        raise _BadControlRequest(400, "unstable_ties must be true or false")
    if change_rate is not None and (
        isinstance(change_rate, bool)
        or not isinstance(change_rate, int | float)
        or not 0 <= change_rate <= 1
    ):
        raise _BadControlRequest(400, "change_rate must be a number between 0 and 1")
    state.faults = state.faults.updated(changes)
    if unstable is not None:
        state.unstable_ties = unstable
    if change_rate is not None:
        state.population.change_rate = float(change_rate)
    return json_response(
        {
            **state.faults.as_dict(),
            "unstable_ties": state.unstable_ties,
            "change_rate": state.population.change_rate,
        }
    )


@_control
async def _sim_revoke_tokens(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/revoke-tokens: forget every IAM token (then 401 APIGW.0301), or with
    {"expire": true} make them all expired (then 401 APIGW.0307)."""
    body = await _json_body(request, default={})
    if isinstance(body, dict) and body.get("expire") is True:
        return json_response({"expired": state.tokens.expire_all(state.clock())})
    return json_response({"revoked": state.tokens.revoke_all()})


@_control
async def _sim_stats(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """GET /_sim/stats: requests by status, logins per project, current faults."""
    return json_response(state.stats_json())


# ---- running -------------------------------------------------------------------------------


async def _ticker(app: web.Application) -> AsyncIterator[None]:
    """Tick the population every `tick_seconds` while the app runs (not at all when 0)."""
    state = app[STATE]
    interval = state.options.tick_seconds
    task = asyncio.create_task(_tick_forever(state, interval)) if interval > 0 else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _tick_forever(state: SimulatorState, interval: float) -> None:
    loop = asyncio.get_running_loop()
    due = loop.time() + interval
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        report = state.population.tick(1)
        log.debug("simulator: tick %d: %s", state.population.ticks, report.as_dict())
        due += interval
        # After a stall (a debugger, a busy machine) do not tick in a burst to catch up.
        if loop.time() - due > 10 * interval:
            due = loop.time() + interval


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A simulator serving on a port: its base URL and, in-process, its state."""

    url: str
    app: web.Application

    @property
    def state(self) -> SimulatorState:
        """The live state (population, tokens, faults, stats)."""
        return self.app[STATE]

    @property
    def population(self) -> pop.Population:
        """The live population."""
        return self.state.population

    @property
    def project_ids(self) -> list[str]:
        """Project ids in order."""
        return self.population.project_ids


@contextlib.asynccontextmanager
async def running(
    options: SimulatorOptions, *, population: pop.Population | None = None
) -> AsyncIterator[RunningSimulator]:
    """Serve the simulator on `options.host`/`options.port` (0: any free port) for a block."""
    app = create_app(options, population=population)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        yield RunningSimulator(url=_base_url(runner, options.host), app=app)
    finally:
        await runner.cleanup()


def _base_url(runner: web.AppRunner, host: str) -> str:
    port = runner.addresses[0][1]
    shown = host
    with contextlib.suppress(ValueError):
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            shown = "127.0.0.1" if address.version == 4 else "::1"
        if ipaddress.ip_address(shown).version == 6:
            shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def banner(options: SimulatorOptions, url: str, project_ids: list[str]) -> str:
    """The lines printed at start: where it listens, and the settings to copy into `.env`
    (`project_ids` as SNAPSYNC_PROJECTS entries, `ID` or `ID@REGION`)."""
    lines = [
        f"# snapsync simulator: {len(project_ids)} projects x {options.snapshots} snapshots "
        f"(seed {options.seed}) at {url} - settings for snapsync:",
        f"SNAPSYNC_WORKSPACE_ENDPOINT={url}",
        f"SNAPSYNC_IAM_ENDPOINT={url}",
        f"SNAPSYNC_PROJECTS={','.join(project_ids)}",
    ]
    config = options.auth_config()
    # Only the simulator's well-known defaults are shown; a secret given on the command line
    # is never echoed.
    if config.aksk_enabled:
        secret = (
            config.secret_key
            if config.secret_key == auth.DEFAULT_SECRET_KEY
            else "<the --secret-key value>"
        )
        lines += [
            "SNAPSYNC_AUTH=aksk",
            f"SNAPSYNC_ACCESS_KEY={config.access_key}",
            f"SNAPSYNC_SECRET_KEY={secret}",
        ]
    if config.static_token:
        token = (
            config.static_token
            if config.static_token == auth.DEFAULT_AUTH_TOKEN
            else "<the --auth-token value>"
        )
        prefix = "# or: " if config.aksk_enabled else ""
        lines += [f"{prefix}SNAPSYNC_AUTH=token SNAPSYNC_AUTH_TOKEN={token}"]
    if config.iam_enabled:
        password = (
            config.iam_password
            if config.iam_password == auth.DEFAULT_IAM_PASSWORD
            else "<the --iam-password value>"
        )
        prefix = "# or: " if config.aksk_enabled or config.static_token else ""
        lines += [
            f"{prefix}SNAPSYNC_AUTH=password SNAPSYNC_IAM_USER={config.iam_user} "
            f"SNAPSYNC_IAM_PASSWORD={password} SNAPSYNC_IAM_DOMAIN={config.iam_domain}"
        ]
    return "\n".join(lines)


async def serve(
    options: SimulatorOptions,
    *,
    ready: Callable[[str], None] | None = None,
    announce: bool = True,
) -> None:
    """Serve until cancelled, SIGINT or SIGTERM; `ready(url)` is called once listening.

    With `announce`, the banner (URL and `.env` settings) is printed to stdout at start.
    """
    if not _is_loopback(options.host):
        log.warning(
            "simulator: listening on %s, beyond this machine; it has no real security",
            options.host,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread, or Windows: rely on cancellation
    try:
        # Building a million snapshots takes seconds: off the event loop, so a signal is
        # noticed as soon as it is done.
        population = await asyncio.to_thread(build_population, options)
        if stop.is_set():
            return
        async with running(options, population=population) as sim:
            if announce:
                entries = [f"{pid}@{sim.population.region(pid)}" for pid in sim.project_ids]
                print(banner(options, sim.url, entries), flush=True)
            log.info("simulator: listening on %s", sim.url)
            if ready is not None:
                ready(sim.url)
            await stop.wait()
            log.info("simulator: stopping on a signal")
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
        sys.stdout.flush()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
