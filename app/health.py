"""The operators' endpoints of `snapsync run`: /healthz, /readyz and /metrics.

Handlers never touch the database: they answer from what the daemon last observed, so a probe
stays fast while PostgreSQL is away. Only /metrics refreshes its snapshot counts, with a short
cache and a timeout.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from app import errors
from app import metrics as metrics_module

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

log = logging.getLogger("app.health")

# A project is stale when its newest success is older than this many sync intervals.
STALE_INTERVALS = 3


@dataclass(frozen=True)
class StaleProject:
    """A project whose data is older than readiness allows."""

    project_id: str
    last_success_at: datetime | None
    age_seconds: float | None

    def as_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "last_success_at": None
            if self.last_success_at is None
            else self.last_success_at.astimezone(UTC).isoformat(),
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 1),
        }


@dataclass(frozen=True)
class Readiness:
    """Whether the daemon's data can be trusted now, and why not."""

    ready: bool
    database_ok: bool
    database_error: str | None
    stopping: bool
    stale: list[StaleProject] = field(default_factory=list)
    projects: int = 0
    stale_after_seconds: float = 0.0
    discovery: str | None = None
    """Why there is no project to sync (SNAPSYNC_PROJECTS=auto found none yet); None: some."""

    @property
    def sync_interval_seconds(self) -> float:
        """The sync interval the staleness was judged by (STALE_INTERVALS of them)."""
        return self.stale_after_seconds / STALE_INTERVALS

    def as_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "database": "ok" if self.database_ok else f"unreachable: {self.database_error}",
            "stopping": self.stopping,
            "projects": self.projects,
            "stale_after_seconds": self.stale_after_seconds,
            "stale": [s.as_json() for s in self.stale],
        } | ({} if self.discovery is None else {"discovery": self.discovery})


def assess(
    *,
    now: datetime,
    project_ids: Sequence[str],
    last_success: dict[str, datetime | None],
    database_ok: bool,
    database_error: str | None,
    stale_after: float,
    stopping: bool = False,
    discovery: str | None = None,
) -> Readiness:
    """Ready when the database answers, there are projects (`discovery` says why not), and
    every project succeeded within `stale_after` s."""
    stale: list[StaleProject] = []
    for pid in project_ids:
        when = last_success.get(pid)
        age = None if when is None else (now - when).total_seconds()
        if age is None or age > stale_after:
            stale.append(StaleProject(project_id=pid, last_success_at=when, age_seconds=age))
    return Readiness(
        ready=database_ok and not stale and not stopping and discovery is None,
        database_ok=database_ok,
        database_error=database_error,
        stopping=stopping,
        stale=stale,
        projects=len(project_ids),
        stale_after_seconds=stale_after,
        discovery=discovery,
    )


def liveness(
    scheduler: BaseScheduler | None,
    *,
    uptime: float,
    in_progress: int,
    stopping: bool,
    interval: float,
) -> tuple[bool, dict[str, Any]]:
    """Alive unless the scheduler stopped or a job is more than two intervals (a minute at
    least) overdue: the process answers, but syncs no longer start."""
    body: dict[str, Any] = {"uptime_seconds": round(uptime, 1), "syncs_in_progress": in_progress}
    if stopping:
        body.update(status="stopping", scheduler="paused")
        return True, body
    if scheduler is None:
        body.update(status="starting", scheduler="not started (waiting for the database)")
        return True, body
    if not scheduler.running:
        body.update(status="scheduler stopped", scheduler="stopped")
        return False, body
    jobs = scheduler.get_jobs()
    now = datetime.now(UTC)
    allowed = timedelta(seconds=max(60.0, 2 * interval))
    overdue = [
        j.id for j in jobs if j.next_run_time is not None and now - j.next_run_time > allowed
    ]
    body.update(scheduler="running", jobs=len(jobs))
    if overdue:
        body.update(status="scheduler stuck", overdue_jobs=overdue)
        return False, body
    body.update(status="ok")
    return True, body


class Observed(Protocol):
    """What the endpoints need from the daemon."""

    def liveness(self) -> tuple[bool, dict[str, Any]]: ...

    def readiness(self) -> Readiness: ...

    async def refresh_metrics(self) -> None: ...


def create_app(daemon: Observed, metrics: metrics_module.Metrics) -> web.Application:
    """The aiohttp application serving the three endpoints."""

    async def healthz(request: web.Request) -> web.Response:
        alive, body = daemon.liveness()
        return _json(body, 200 if alive else 503)

    async def readyz(request: web.Request) -> web.Response:
        state = daemon.readiness()
        return _json(state.as_json(), 200 if state.ready else 503)

    async def metrics_handler(request: web.Request) -> web.Response:
        await daemon.refresh_metrics()
        state = daemon.readiness()
        metrics.ready.set(1 if state.ready else 0)
        metrics.sync_interval.set(state.sync_interval_seconds)
        return web.Response(
            body=metrics.render(), headers={"Content-Type": metrics_module.CONTENT_TYPE}
        )

    application = web.Application()
    application.router.add_get("/healthz", healthz)
    application.router.add_get("/readyz", readyz)
    application.router.add_get("/metrics", metrics_handler)
    return application


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(
        text=json.dumps(body, indent=2) + "\n", status=status, content_type="application/json"
    )


class Server:
    """The endpoints' HTTP server; `port` is the one bound (useful with port 0)."""

    def __init__(self, application: web.Application, *, host: str, port: int) -> None:
        self._runner = web.AppRunner(application, access_log=None, handle_signals=False)
        self._host = host
        self._port = port
        self.port: int | None = None

    async def start(self) -> None:
        """Listen, or raise ConfigError naming the variable when the address is unusable."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, shutdown_timeout=1.0)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise errors.ConfigError(
                "SNAPSYNC_HTTP_PORT",
                f"cannot serve the endpoints on {self._host}:{self._port}: {exc.strerror or exc}",
            ) from None
        sockets = [s for s in self._runner.addresses if isinstance(s, tuple)]
        self.port = int(sockets[0][1]) if sockets else self._port
        log.info(
            "serving /healthz, /readyz and /metrics on http://%s:%d",
            self._host if ":" not in self._host else f"[{self._host}]",
            self.port,
        )

    async def stop(self) -> None:
        await self._runner.cleanup()
