"""The hot lane: between full syncs, re-read only a project's in-flight snapshots. It lists the
transient statuses the project has, then looks up those that left the list by desktop (many
desktops per request, as the deletion rule's re-checks do) or, without a desktop, by name.
What changed goes through a full sync's transform and load, under a `hot` run created only when
there is something to write; unchanged ones get `status_seen_at`, which tightens the window of
their next change. Never marks anything deleted."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from app import client as client_module
from app import deletion, errors, logs, runs, store
from app import settings as settings_module

log = logging.getLogger("app.sync")


async def poll_in_flight(
    resources: runs.Resources, project: settings_module.Project
) -> runs.RunResult | None:
    """Poll the project's in-flight snapshots; None when there was nothing to poll (no request
    made), the project was busy, or another replica polled it less than a hot interval ago."""
    pid = project.project_id
    started = time.monotonic()
    with logs.context(project_id=pid) as log_fields:
        async with runs.locked(resources, project, wait=False) as run:
            if run is None:
                return None
            now = datetime.now(UTC)
            async with run.transaction() as conn:
                in_flight = await store.load_in_flight(conn, pid)
                if not in_flight:
                    return None
                claimed, last_listing_at = await store.claim_hot_poll(
                    conn, project_id=pid, now=now, min_gap=resources.settings.hot_interval * 0.8
                )
            if not claimed:
                return None
            result = runs.RunResult(project_id=pid, status="succeeded", kind="hot")
            run.counts = result.counts
            run.known = store.KnownState(
                hashes={row.snapshot_id: row.content_hash for row in in_flight},
                last_listing_at=last_listing_at,
            )
            try:
                await _poll(run, in_flight, result, log_fields)
            except asyncio.CancelledError:
                if run.run_id is not None:
                    result.error = "interrupted: the process was asked to stop"
                    await asyncio.shield(run.finish("failed", result.error, count_requests=False))
                raise
            except (errors.ProjectError, errors.DatabaseError) as exc:
                result.status, result.error = "failed", str(exc)
                log.warning("hot poll failed: %s", exc)
                if run.run_id is not None:
                    await run.finish("failed", result.error, count_requests=False)
            result.seconds = time.monotonic() - started
            return result


async def _poll(
    run: runs.Run, in_flight: list[store.InFlight], result: runs.RunResult, log_fields: logs.Fields
) -> None:
    pages: list[client_module.Page] = []
    for status in sorted({row.status for row in in_flight}):
        pages.extend(await _read_all(run, [("status", status)]))
    listed = {
        item.get("snapshot_id") for page in pages for item in page.items if isinstance(item, dict)
    }
    gone = [row for row in in_flight if row.snapshot_id not in listed]
    pages.extend(await _look_up(run, gone))
    counts = run.counts
    seen: dict[str, datetime] = {}
    for page in pages:
        sorted_out = run.transform(page, "a hot poll")
        counts.pages += 1
        changed_ids = {s.snapshot_id for s in sorted_out.changed}
        for sid in sorted_out.ids:
            if sid not in changed_ids and sid in run.known.hashes:
                seen[sid] = page.fetched_at
        counts.snapshots_seen += len(sorted_out.ids)
        if sorted_out.changed and run.run_id is None:
            async with store.connect(run.resources.engine, begin=True) as conn:
                run.run_id = result.run_id = await store.start_run(
                    conn,
                    project_id=run.project.project_id,
                    started_at=datetime.now(UTC),
                    owner=runs.process_owner(),
                    kind="hot",
                )
            log_fields["run_id"] = run.run_id
        await run.load(page, sorted_out.changed)
    counts.requests = run.stats.requests
    result.retries = run.stats.retries
    async with run.transaction() as conn:
        await store.touch_status_seen(conn, project_id=run.project.project_id, seen=seen)
    if run.run_id is not None:
        await run.finish("succeeded", None)
        log.info(
            "hot poll wrote %d change(s), %d transition(s) from %d request(s)",
            counts.inserted + counts.updated,
            counts.transitions,
            run.stats.requests,
        )


async def _read_all(
    run: runs.Run, filters: list[tuple[str, str]], *, offset: int = 0
) -> list[client_module.Page]:
    """Every page of a small filtered listing from `offset` (a listing that shifts while it is
    read may miss an item, which the next poll or full sync sees; nothing is deleted)."""
    pages: list[client_module.Page] = []
    while True:
        page = await run.list_page(offset, runs.FILTERED_PAGE_SIZE, filters)
        pages.append(page)
        offset += runs.FILTERED_PAGE_SIZE
        if not page.items or offset >= page.total_count or len(pages) >= 100:
            return pages


async def _look_up(run: runs.Run, gone: list[store.InFlight]) -> list[client_module.Page]:
    """The pages showing the snapshots that left the in-flight listing: by desktop, many per
    request (`desktop_ids`; one per request once the API refused it), else by name."""
    if not gone:
        return []
    plan = deletion.plan_rechecks(
        [(row.snapshot_id, row.desktop_id, row.snapshot_name) for row in gone]
    )
    desktops = [value for (key, value), _ in plan.queries if key == "desktop_id"]
    sizes: dict[str, int] = {}
    if desktops:
        async with run.transaction() as conn:
            sizes = await store.desktop_sizes(conn, run.project.project_id, desktops)
    pages: list[client_module.Page] = []
    for group in deletion.batch_rechecks(plan.queries, sizes):
        filters = deletion.group_filters(plan.queries, group)
        if len(group) > 1 and run.resources.client.list_filters:
            first = await deletion.list_batch(run, filters)
            if first is not None:
                pages.append(first)
                if first.items and first.total_count > len(first.items):
                    pages.extend(await _read_all(run, filters, offset=runs.FILTERED_PAGE_SIZE))
                continue
        for index in group:
            pages.extend(await _read_all(run, [plan.queries[index][0]]))
    return pages
