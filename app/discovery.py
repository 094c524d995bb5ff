"""`SNAPSYNC_PROJECTS=auto`: the projects to sync come from IAM, not from the configuration.

*get*: one `GET /v3/auth/projects` at the IAM of the home region (SNAPSYNC_REGION), which lists
every project the credentials can reach (KeystoneListAuthProjects, which needs no IAM policy).
*transform* (pure): keep the enabled projects whose region, the name up to the first `_`
(sub-projects are `REGION_NAME`), is a Workspace region of app/regions.py, narrowed by
SNAPSYNC_REGIONS; IAM's special projects such as `MOS` are no region and drop out. *probe*: one
one-item page of each project's snapshots; a project whose Workspace API answers 403 or 404
(Workspace not in use there, or not allowed) is skipped with one warning, and asked again at
the next discovery.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import aiohttp

from app import auth, client, errors, logs, regions, runtime, store
from app import settings as settings_module

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from app import lifecycle, metrics

log = logging.getLogger("app.discovery")
# The daemon's messages about its projects, under its logger.
daemon_log = logging.getLogger("app.daemon")

LISTING_PATH = "/v3/auth/projects"
LISTING_CALL = f"GET {LISTING_PATH} (KeystoneListAuthProjects)"
# The Workspace answers that mean "nothing to sync here": skipped, not failed.
SKIP_REASONS = {403: "workspace_forbidden", 404: "workspace_not_found"}
# How long storing a discovery's outcome may take.
STORE_TIMEOUT = 10.0
DISCOVERY_JOB = "discovery"
# While no discovery has found a project yet, the next one comes this soon at the latest.
RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class Skipped:
    """A discovered project that is not synced, and why."""

    project: settings_module.Project
    reason: str  # a value of SKIP_REASONS
    detail: str  # the API's answer, for people


@dataclass(frozen=True)
class Listing:
    """IAM's list turned into projects Workspace may serve (the pure step)."""

    projects: list[settings_module.Project]
    listed: int  # entries in IAM's answer
    left_out: list[str]  # names of the others: disabled, not a Workspace region, not kept


@dataclass(frozen=True)
class Discovery:
    """The outcome of one discovery."""

    projects: list[settings_module.Project]
    skipped: list[Skipped]
    listing: Listing
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def summary(self) -> str:
        """One line for people: what IAM listed and what is synced."""
        return (
            f"discovery: IAM lists {self.listing.listed} project(s); syncing "
            f"{len(self.projects)}, skipped {len(self.skipped)} (Workspace answered 403/404), "
            f"left out {len(self.listing.left_out)} (not a Workspace region, not in "
            "SNAPSYNC_REGIONS, or disabled)"
        )

    def nothing_served(self) -> errors.ConfigError | None:
        """The one-line error when no project is left to sync, else None."""
        if self.projects:
            return None
        if self.skipped:
            problem = (
                f"auto found no project Workspace serves: the {len(self.skipped)} project(s) "
                "IAM lists in Workspace regions answered 403 or 404 (Workspace not in use "
                "there, or the credentials lack workspace:desktops:listSnapshots)"
            )
        else:
            names = ", ".join(self.listing.left_out[:8]) or "none"
            problem = (
                f"auto found no project in a Workspace region among the "
                f"{self.listing.listed} IAM lists ({names})"
            )
        return errors.ConfigError(
            "SNAPSYNC_PROJECTS", problem + "; widen SNAPSYNC_REGIONS or list the project ids"
        )


def workspace_projects(payload: Any, *, keep: Collection[str] | None) -> Listing:
    """The projects of a `GET /v3/auth/projects` body that Workspace may serve, in IAM's order.

    Raises errors.DiscoveryError when the body is not Keystone's shape."""
    entries = payload.get("projects") if isinstance(payload, dict) else None
    if not isinstance(entries, list):
        raise errors.DiscoveryError(f"IAM's answer to {LISTING_CALL} has no list of projects")
    projects: list[settings_module.Project] = []
    left_out: list[str] = []
    seen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        project_id, name = entry.get("id"), entry.get("name")
        if not isinstance(project_id, str) or not isinstance(name, str):
            continue
        region = name.split("_", 1)[0]
        wanted = (
            entry.get("enabled") is not False
            and regions.is_workspace_region(region)
            and (keep is None or region in keep)
        )
        try:
            parsed = settings_module.parse_projects(f"{project_id}@{region}", region)
        except errors.ConfigError:
            parsed = []  # not an id snapsync can use
        if not wanted or len(parsed) != 1:
            left_out.append(name)
        elif project_id not in seen:
            seen.add(project_id)
            projects.append(parsed[0])
    return Listing(projects=projects, listed=len(entries), left_out=left_out)


async def list_account_projects(
    *,
    session: aiohttp.ClientSession,
    authenticator: auth.Authenticator,
    settings: settings_module.Settings,
) -> Any:
    """The decoded body of IAM's list of the projects the credentials reach: one request,
    retried on 429, 5xx and no answer; raises errors.DiscoveryError in one line."""
    url = settings.iam_endpoint_for(settings.region) + LISTING_PATH
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
    relogged = False
    attempt = 0
    while True:
        prepared = await authenticator.prepare_account(
            method="GET", url=url, params=(), headers={"Accept": "application/json"}
        )
        status, raw, retryable = 0, b"", True
        try:
            async with session.get(
                prepared.url, headers=prepared.headers, timeout=timeout, allow_redirects=False
            ) as response:
                status, raw = response.status, await response.read()
                request_id = response.headers.get("X-Request-Id")
                content_type = response.headers.get("Content-Type", "")
        except aiohttp.ClientSSLError as exc:
            failure = f"TLS failed ({exc}); for a private CA set SNAPSYNC_CA_BUNDLE"
            retryable = False
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = f"no answer ({type(exc).__name__} {exc})".strip()
        else:
            if 200 <= status < 300:
                try:
                    return json.loads(raw)
                except (ValueError, UnicodeDecodeError):
                    failure = "the answer is not JSON: " + errors.describe_body(raw, content_type)
                    retryable = False
            else:
                answer = errors.ApiError.from_response("-", status, raw, content_type, request_id)
                failure = str(answer).removeprefix("project -: ")
                retryable = status in errors.RETRYABLE_STATUSES
                if status == 401 and not relogged:
                    relogged = True
                    if await authenticator.account_unauthorized():
                        continue
        if not retryable or attempt >= settings.max_retries:
            raise errors.DiscoveryError(_refusal(url, status, failure))
        await asyncio.sleep(client.backoff(attempt))
        attempt += 1


def _refusal(url: str, status: int, failure: str) -> str:
    text = f"IAM did not list the projects, {LISTING_CALL} at {url}: {failure}"
    if status in (401, 403):
        text += (
            "; the call needs no IAM policy, only credentials of an IAM user or the account "
            "(check SNAPSYNC_AUTH and its credentials, and SNAPSYNC_REGION's IAM), or set "
            "SNAPSYNC_PROJECTS to the project ids"
        )
    return text


async def probe(
    workspace: client.WorkspaceClient,
    projects: Sequence[settings_module.Project],
    *,
    concurrency: int,
) -> tuple[list[settings_module.Project], list[Skipped]]:
    """Ask each project's Workspace API for one snapshot: the projects it serves, and those it
    answers 403 or 404 for (any other failure is left for the sync to report)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(project: settings_module.Project) -> Skipped | None:
        async with gate:
            try:
                await workspace.list_page(project, offset=0, limit=1)
            except errors.ApiError as exc:
                reason = SKIP_REASONS.get(exc.status)
                if reason is not None:
                    return Skipped(project=project, reason=reason, detail=str(exc))
            except errors.ProjectError:
                pass
            return None

    verdicts = await asyncio.gather(*(one(p) for p in projects))
    kept = [p for p, skipped in zip(projects, verdicts, strict=True) if skipped is None]
    return kept, [s for s in verdicts if s is not None]


async def discover(built: runtime.Runtime, settings: settings_module.Settings) -> Discovery:
    """One discovery: IAM's list, transformed, probed; each skipped project warned about once.

    Raises errors.DiscoveryError when IAM does not list the projects."""
    try:
        payload = await list_account_projects(
            session=built.session, authenticator=built.authenticator, settings=settings
        )
    except errors.DiscoveryError as exc:
        await _stored(built, datetime.now(UTC), problem=str(exc))
        raise
    listing = workspace_projects(payload, keep=settings.kept_regions())
    kept, skipped = await probe(
        built.client, listing.projects, concurrency=settings.max_concurrent_projects
    )
    for item in skipped:
        with logs.context(project_id=item.project.project_id):
            log.warning(
                "skipped: %s (discovered in %s; asked again at the next discovery)",
                item.detail,
                item.project.region,
            )
    found = Discovery(projects=kept, skipped=skipped, listing=listing)
    log.info(found.summary())
    await _stored(
        built,
        found.finished_at,
        problem=None,
        served=[{"id": p.project_id, "region": p.region} for p in kept],
        skipped=[
            {
                "id": item.project.project_id,
                "region": item.project.region,
                "reason": item.reason,
                "detail": item.detail,
            }
            for item in skipped
        ],
    )
    return found


async def _stored(
    built: runtime.Runtime,
    finished_at: datetime,
    *,
    problem: str | None,
    served: Sequence[dict[str, str]] = (),
    skipped: Sequence[dict[str, str]] = (),
) -> None:
    """Keep the outcome for `snapsync status`; when the database does not take it, a warning
    (the syncs meet the database next)."""
    try:
        async with asyncio.timeout(STORE_TIMEOUT), store.connect(built.engine, begin=True) as conn:
            await store.record_discovery(
                conn,
                finished_at=finished_at,
                problem=problem,
                served=[row | {"at": finished_at} for row in served],
                skipped=[row | {"at": finished_at} for row in skipped],
            )
    except (errors.DatabaseError, TimeoutError) as exc:
        log.warning("the discovery is not stored for `snapsync status`: %s", exc or "timed out")


class Refresher:
    """The daemon's projects: those configured, or with SNAPSYNC_PROJECTS=auto those of a
    discovery at start and again every SNAPSYNC_DISCOVERY_INTERVAL. A new project gets a sync
    job (`add_job`), one no longer listed loses it (`forget`; its data stays). When IAM does not
    list them, or lists none Workspace serves, the projects known so far keep being synced."""

    def __init__(
        self,
        settings: settings_module.Settings,
        *,
        projects: list[settings_module.Project],
        discovering: bool,
        metrics: metrics.Metrics,
        tasks: lifecycle.Lifecycle,
        add_job: Callable[[AsyncIOScheduler, settings_module.Project, datetime], None],
        forget: Callable[[str], object],
    ) -> None:
        self.projects = projects
        self.discovering = discovering
        self._settings = settings
        self._metrics = metrics
        self._tasks = tasks
        self._add_job = add_job
        self._forget = forget
        self._runtime: runtime.Runtime | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._problem = "no discovery has ended yet"
        metrics.show_projects(projects, "configured")

    def unready(self) -> str | None:
        """For /readyz: why there is no project to sync, or None when there are some."""
        if self.projects or not self.discovering:
            return None
        return f"SNAPSYNC_PROJECTS=auto has no project to sync: {self._problem}"

    def _retry_in(self) -> float:
        every = self._settings.discovery_interval
        return every if self.projects else min(every, RETRY_SECONDS)

    async def start(self, built: runtime.Runtime) -> None:
        """The first discovery, before the scheduler starts."""
        self._runtime = built
        if self.discovering:
            await self.refresh()

    def schedule(self, scheduler: AsyncIOScheduler, now: datetime) -> None:
        """Add the discovery job (with SNAPSYNC_PROJECTS=auto)."""
        from apscheduler.triggers.interval import IntervalTrigger  # only the daemon needs it

        self._scheduler = scheduler
        if not self.discovering:
            return
        scheduler.add_job(
            self._job,
            IntervalTrigger(seconds=self._settings.discovery_interval, timezone=UTC),
            id=DISCOVERY_JOB,
            name="discovery",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
            next_run_time=now + timedelta(seconds=self._retry_in()),
        )

    async def _job(self) -> None:
        """One firing of the discovery job, counted as running work for the shutdown."""
        if self._tasks.stopping:
            return
        with self._tasks.tracked("the discovery"):
            await self.refresh()

    async def refresh(self) -> None:
        """Ask IAM for the projects again and sync those it lists from now on."""
        assert self._runtime is not None
        try:
            found = await discover(self._runtime, self._settings)
        except errors.DiscoveryError as exc:
            self._metrics.show_discovery(None)
            self._failed(str(exc))
            return
        self._metrics.show_discovery(found.skipped)
        nothing = found.nothing_served()
        if nothing is not None:
            self._failed(str(nothing))
            return
        self._use(found.projects)

    def _failed(self, problem: str) -> None:
        self._problem = problem
        daemon_log.error(
            "%s; still syncing the %d project(s) known before, asking again in %gs",
            problem,
            len(self.projects),
            self._retry_in(),
        )
        job = self._scheduler.get_job(DISCOVERY_JOB) if self._scheduler is not None else None
        if job is not None and not self.projects:
            job.modify(next_run_time=datetime.now(UTC) + timedelta(seconds=self._retry_in()))

    def _use(self, projects: Sequence[settings_module.Project]) -> None:
        """Sync `projects` from now on: jobs for the new ones, none for those gone."""
        before = {p.project_id: p for p in self.projects}
        after = {p.project_id: p for p in projects}
        scheduler = self._scheduler
        for pid, project in before.items():
            if after.get(pid) == project:
                continue
            if scheduler is not None and scheduler.get_job(pid) is not None:
                scheduler.remove_job(pid)
            if pid not in after:
                self._forget(pid)
                with logs.context(project_id=pid):
                    daemon_log.info(
                        "no longer listed by IAM: not synced any more, its data is kept"
                    )
        self.projects = list(projects)
        self._metrics.show_projects(self.projects, "discovered")
        now = datetime.now(UTC)
        for pid, project in after.items():
            if before.get(pid) != project:
                with logs.context(project_id=pid):
                    daemon_log.info("discovered in %s: synced from now on", project.region)
                if scheduler is not None:
                    self._add_job(scheduler, project, now)
