"""The simulator served in-process over real HTTP, for tests that run the CLI against it."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from app.simulator import population as pop
from app.simulator import server, state

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass
class RunningSimulator:
    """A simulator listening on 127.0.0.1; its population can be changed directly."""

    url: str
    population: pop.Population
    options: state.SimulatorOptions

    @property
    def project_ids(self) -> list[str]:
        return list(self.population.project_ids)

    def env(self, **extra: str) -> dict[str, str]:
        """SNAPSYNC_* variables that point snapsync at this simulator (token auth)."""
        return {
            "SNAPSYNC_WORKSPACE_ENDPOINT": self.url,
            "SNAPSYNC_IAM_ENDPOINT": self.url,
            "SNAPSYNC_PROJECTS": ",".join(self.project_ids),
            "SNAPSYNC_AUTH": "token",
            "SNAPSYNC_AUTH_TOKEN": self.options.auth_token or "",
            **extra,
        }

    def items(self, project_id: str) -> dict[str, dict[str, Any]]:
        """The API items of a project, by snapshot id."""
        return {s.snapshot_id: s.to_api() for s in self.population.snapshots(project_id)}

    async def control(self, method: str, path: str, body: Any = None) -> Any:
        """Call the simulator's control API."""
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.url + path, json=body) as response,
        ):
            assert response.status < 400, await response.text()
            return await response.json()


@contextlib.asynccontextmanager
async def serve(
    *, middlewares: list[Middleware] | None = None, **options: Any
) -> AsyncIterator[RunningSimulator]:
    """Serve a simulator (no automatic ticking unless asked) on a free loopback port."""
    options.setdefault("tick_seconds", 0)
    opts = state.SimulatorOptions(port=0, **options)
    population = state.build_population(opts)
    app = server.create_app(opts, population=population)
    for middleware in middlewares or []:
        app.middlewares.append(web.middleware(middleware))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield RunningSimulator(
            url=f"http://127.0.0.1:{port}",
            population=population,
            options=dataclasses.replace(opts, port=port),
        )
    finally:
        await runner.cleanup()
