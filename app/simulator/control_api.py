"""The simulator's control API, `/_sim/` (no auth): tests, the demo and benchmarks script the
population, faults, tokens and canned answers through it (`control.SimulatorControl` is its
client).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from app.simulator import faults, gateway, model, query
from app.simulator import population as pop
from app.simulator.state import STATE, RawPage, SimulatorState


def add_routes(app: web.Application) -> None:
    """Serve the control API from `app`."""
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


class _BadControlRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _control_error(status: int, message: str) -> web.Response:
    return gateway.error_response(status, f"SIM.{status}", message)


def _control(
    handler: Callable[[web.Request, SimulatorState], Awaitable[web.StreamResponse]],
) -> gateway.Handler:
    """Wrap a control handler: population errors and bad bodies become 4xx answers."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request, request.app[STATE])
        except _BadControlRequest as exc:
            return _control_error(exc.status, str(exc))
        except (model.UnknownProjectError, model.UnknownSnapshotError) as exc:
            return _control_error(404, str(exc))
        except (model.FieldError, faults.FaultError, ValueError) as exc:
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
        raise model.UnknownProjectError(f"no project {project_id}")
    return project_id


@_control
async def _sim_projects(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """GET /_sim/projects: ids, counts, forbidden flags, simulated time."""
    population = state.population
    return gateway.json_response(
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
            "simulated_time": model.format_time(population.now.timestamp()),
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
    return gateway.json_response(
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
    return gateway.json_response({"removed": project_id})


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
    return gateway.json_response(snap.to_api())


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
        model.validate_fields(spec)
    added = [state.population.add_snapshot(project_id, spec).to_api() for spec in specs]
    return gateway.json_response(added if isinstance(body, list) else added[0], status=201)


@_control
async def _sim_patch(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """PATCH /_sim/projects/{pid}/snapshots/{sid}: set fields (null unsets optional ones)."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise _BadControlRequest(400, "the body must be an object of fields")
    snap = state.population.set_fields(
        _pid(request, state), request.match_info["snapshot_id"], body
    )
    return gateway.json_response(snap.to_api())


@_control
async def _sim_delete(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """DELETE /_sim/projects/{pid}/snapshots/{sid}: answers the deleted item."""
    snap = state.population.delete_snapshot(_pid(request, state), request.match_info["snapshot_id"])
    return gateway.json_response({"deleted": snap.to_api()})


@_control
async def _sim_raw_pages(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/projects/{pid}/raw-pages: queue canned answers, one per API request."""
    project_id = request.match_info["project_id"]
    # Any well-formed id: canned answers may stand in for a project the simulator lacks.
    if not gateway.PROJECT_ID.fullmatch(project_id):
        raise _BadControlRequest(400, "project id must be 32 lowercase hex digits")
    body = await _json_body(request)
    specs = body if isinstance(body, list) else [body]
    pages = [RawPage.from_json(spec) for spec in specs]
    queue = state.raw_pages.setdefault(project_id, deque())
    queue.extend(pages)
    return gateway.json_response({"queued": len(pages), "pending": len(queue)}, status=201)


@_control
async def _sim_clear_raw_pages(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """DELETE /_sim/projects/{pid}/raw-pages: drop the canned answers not served yet."""
    dropped = len(state.raw_pages.pop(request.match_info["project_id"], ()))
    return gateway.json_response({"dropped": dropped})


@_control
async def _sim_tick(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/tick {"n": k}: run k evolution steps now; answers what changed."""
    body = await _json_body(request, default={"n": 1})
    n = body.get("n", 1) if isinstance(body, dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1_000_000:
        raise _BadControlRequest(400, 'body must be {"n": <integer 0..1000000>}')
    report = state.population.tick(n)
    return gateway.json_response(
        {
            **report.as_dict(),
            "total_ticks": state.population.ticks,
            "simulated_time": model.format_time(state.population.now.timestamp()),
        }
    )


@_control
async def _sim_faults(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/faults: change any fault option, plus `unstable_ties`, `change_rate` and
    `legacy_filters` (answer 400 to the list filters, as an older API version)."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise _BadControlRequest(400, "the body must be an object")
    changes = dict(body)
    unstable = changes.pop("unstable_ties", None)
    change_rate = changes.pop("change_rate", None)
    legacy = changes.pop("legacy_filters", None)
    if unstable is not None and not isinstance(unstable, bool):
        raise _BadControlRequest(400, "unstable_ties must be true or false")
    if legacy is not None and not isinstance(legacy, bool):
        raise _BadControlRequest(400, "legacy_filters must be true or false")
    if change_rate is not None and (
        isinstance(change_rate, bool)
        or not isinstance(change_rate, int | float)
        or not 0 <= change_rate <= 1
    ):
        raise _BadControlRequest(400, "change_rate must be a number between 0 and 1")
    state.faults = state.faults.updated(changes)
    if unstable is not None:
        state.unstable_ties = unstable
    if legacy is not None:
        state.legacy_filters = legacy
    if change_rate is not None:
        state.population.change_rate = float(change_rate)
    return gateway.json_response(
        {
            **state.faults.as_dict(),
            "unstable_ties": state.unstable_ties,
            "legacy_filters": state.legacy_filters,
            "change_rate": state.population.change_rate,
        }
    )


@_control
async def _sim_revoke_tokens(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """POST /_sim/revoke-tokens: forget every IAM token (then 401 APIGW.0301), or with
    {"expire": true} make them all expired (then 401 APIGW.0307)."""
    body = await _json_body(request, default={})
    if isinstance(body, dict) and body.get("expire") is True:
        return gateway.json_response({"expired": state.tokens.expire_all(state.clock())})
    return gateway.json_response({"revoked": state.tokens.revoke_all()})


@_control
async def _sim_stats(request: web.Request, state: SimulatorState) -> web.StreamResponse:
    """GET /_sim/stats: requests by status, logins per project, current faults."""
    return gateway.json_response(state.stats_json())
