"""What the gateway in front of every endpoint does: the error codes and bodies, JSON answers,
a request id on every answer (counted in the stats), and checking a request's credentials.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from app.simulator import auth
from app.simulator.state import STATE, SimulatorState

# Under the server's name, as before the split: what the request log is filtered on.
log = logging.getLogger("app.simulator.server")

PROJECT_ID = re.compile(r"[0-9a-f]{32}")

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
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
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


async def authenticate(request: web.Request, state: SimulatorState, project_id: str | None) -> None:
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
