"""The simulator's HTTP server: the Workspace snapshots API, an IAM token endpoint, `/_sim/`.

`create_app(options)` builds the aiohttp application (for in-process tests), `running(options)`
serves it on a port for the length of an `async with`, and `serve(options)` runs it until
cancelled or signalled, for `snapsync simulate`. The options and state are in `state`, what the
gateway does for every request in `gateway`, IAM's endpoints in `iam` and `/_sim/` in
`control_api`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from app.simulator import auth, control_api, faults, gateway, iam, query
from app.simulator import population as pop
from app.simulator.gateway import (
    CODE_FORBIDDEN_PROJECT,
    CODE_INTERNAL,
    CODE_INVALID_PARAMETER,
    CODE_NOT_FOUND,
    CODE_THROTTLED,
    error_response,
)
from app.simulator.state import (
    STATE,
    SimulatorOptions,
    SimulatorState,
    build_population,
)

log = logging.getLogger(__name__)


def create_app(
    options: SimulatorOptions, *, population: pop.Population | None = None
) -> web.Application:
    """The simulator as an aiohttp application; builds the population unless one is given."""
    state = SimulatorState(options, population or build_population(options))
    app = web.Application(middlewares=[gateway.request_id_middleware], client_max_size=16 * 1024**2)
    app[STATE] = state
    app.router.add_get("/v2/{project_id}/snapshots", _list_snapshots)
    iam.add_routes(app)
    control_api.add_routes(app)
    app.cleanup_ctx.append(_ticker)
    return app


# ---- the Workspace API ------------------------------------------------------------------


async def _list_snapshots(request: web.Request) -> web.StreamResponse:
    """GET /v2/{project_id}/snapshots, in the order a gateway and the service would check."""
    state = request.app[STATE]
    project_id = request.match_info["project_id"]
    if state.faults.latency > 0:
        await asyncio.sleep(state.faults.latency)
    try:
        await gateway.authenticate(request, state, project_id)
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

    if not gateway.PROJECT_ID.fullmatch(project_id):
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
        parsed = query.parse_query(request.query.items(), list_filters=not state.legacy_filters)
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
