"""The deletion rule. Offset paging over a list that changes (or reorders ties) can skip live
snapshots, so every snapshot missing from a complete listing is looked up again by its desktop
(or name) before it counts as missed; one that cannot be looked up counts only when the listing
showed no sign of shifting. Desktops are looked up many per request (`desktop_ids`, as many as
keep the answer to one page and the URL short), or one per request (`desktop_id`) once the API
answered 400 to the list filter (an older API version). store.MARK_MISSING deletes a row at
SNAPSYNC_DELETE_AFTER_MISSES misses. `Listing`, `plan_rechecks`, `batch_rechecks` and `decide`
are pure; `cleanup` does the I/O."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from app import client as client_module
from app import errors, runs, store

log = logging.getLogger("app.sync")

RECHECK_CONCURRENCY = 4
MAX_RECHECK_QUERIES = 2000
# A batch of desktops must fit one page of the API's largest size, by the stored counts of
# their snapshots; the margin leaves room for snapshots created since they were stored.
BATCH_ITEMS = 950
# The bytes the `desktop_ids=...` pairs of one batch may add to the URL (gateways commonly
# refuse URLs beyond 8 KB; half of that leaves room for the rest of the request line).
BATCH_URL_BYTES = 4000

Filter = tuple[str, str]


class Listing:
    """Bookkeeping of one pass over a project's pages.

    Tracks what is still unseen rather than what was seen: the set starts as the stored live
    ids (the same string objects as the known state, so it costs only its table) and shrinks
    page by page; what is left at the end is the deletion rule's candidates. Ids that were not
    stored when the listing started are kept in `fresh`.
    """

    def __init__(self, known: dict[str, int | None]) -> None:
        self.unseen: set[str] = set(known)
        self.stored = len(self.unseen)
        self.fresh: set[str] = set()
        self.totals: set[int] = set()
        self.duplicates = 0
        self.last_total = 0

    @property
    def distinct(self) -> int:
        """Distinct snapshots listed so far."""
        return self.stored - len(self.unseen) + len(self.fresh)

    def listed(self, total_count: int) -> None:
        """A page arrived that announced `total_count`."""
        self.totals.add(total_count)
        self.last_total = total_count

    def see(self, ids: list[str], rejected_ids: list[str], known: dict[str, int | None]) -> int:
        """Count a page's ids (`known` as it was before the page's writes); return how many were
        seen for the first time in this listing. Rejected ids count as listed, not as seen."""
        unseen, fresh = self.unseen, self.fresh
        if rejected_ids:
            unseen.difference_update(rejected_ids)
            fresh.update(sid for sid in rejected_ids if sid not in known)
        before = len(unseen)
        unseen.difference_update(ids)
        first = before - len(unseen)
        # Not stored at the start, not written earlier in this listing (then it is in `known`
        # now) and not listed before without being written (in `fresh`): a new sighting.
        new = {sid for sid in ids if sid not in known and sid not in fresh}
        fresh.update(new)
        first += len(new)
        self.duplicates += len(ids) - first
        return first

    def signals(self) -> list[str]:
        """The signs that the listing shifted while it was paged (none: it can be trusted)."""
        found = []
        if len(self.totals) > 1:
            found.append(f"total_count changed while paging ({sorted(self.totals)})")
        if self.duplicates:
            found.append(f"{self.duplicates} snapshot(s) appeared on two pages")
        if self.distinct != self.last_total:
            found.append(f"{self.distinct} distinct snapshots seen, total_count {self.last_total}")
        return found


@dataclass(frozen=True)
class RecheckPlan:
    """The filtered listings that look the missing snapshots up again."""

    # (filter, the missing ids it must show), at most MAX_RECHECK_QUERIES of them.
    queries: list[tuple[Filter, list[str]]]
    # Missing ids with neither desktop nor name: no listing can look them up.
    unverifiable: list[str]
    # How many filters the missing ids need in all (the rest wait for later syncs).
    needed: int


def plan_rechecks(
    keys: Sequence[tuple[str, str | None, str | None]], *, limit: int = MAX_RECHECK_QUERIES
) -> RecheckPlan:
    """Group the missing rows' (snapshot_id, desktop_id, snapshot_name) by desktop, else name."""
    groups: dict[Filter, list[str]] = defaultdict(list)
    unverifiable: list[str] = []
    for sid, desktop_id, name in keys:
        if desktop_id:
            groups[("desktop_id", desktop_id)].append(sid)
        elif name:
            groups[("snapshot_name", name)].append(sid)
        else:
            unverifiable.append(sid)
    return RecheckPlan(list(groups.items())[:limit], unverifiable, len(groups))


def batch_rechecks(
    queries: Sequence[tuple[Filter, list[str]]],
    sizes: Mapping[str, int],
    *,
    items: int = BATCH_ITEMS,
    url_bytes: int = BATCH_URL_BYTES,
) -> list[list[int]]:
    """Group the plan's queries (indexes into `queries`, in order) into requests: desktops
    together while the stored counts of their snapshots (`sizes`, at least the missing ones)
    stay within `items` and their `desktop_ids` pairs within `url_bytes`; a name, or a desktop
    too big for company, alone (names after the desktops)."""
    groups: list[list[int]] = []
    names: list[list[int]] = []
    current: list[int] = []
    held = used = 0
    for index, ((key, value), sids) in enumerate(queries):
        if key != "desktop_id":
            names.append([index])
            continue
        size = max(sizes.get(value, 0), len(sids))
        cost = len("&desktop_ids=") + len(quote(value, safe=""))
        if current and (held + size > items or used + cost > url_bytes):
            groups.append(current)
            current, held, used = [], 0, 0
        current.append(index)
        held += size
        used += cost
    if current:
        groups.append(current)
    return groups + names


def group_filters(
    queries: Sequence[tuple[Filter, list[str]]], group: Sequence[int]
) -> list[Filter]:
    """The query parameters of one request for a group: its one filter, or `desktop_ids`."""
    if len(group) == 1:
        return [queries[group[0]][0]]
    return [("desktop_ids", queries[index][0][1]) for index in group]


def decide(plan: RecheckPlan, found: Sequence[set[str] | None], *, trusted: bool) -> list[str]:
    """The ids that count as missed: those a re-check did not show (`found[i]`: the ids the
    plan's i-th listing showed, None when it failed and proves nothing), and the unverifiable
    ones only when the listing is `trusted` (it showed no sign of shifting)."""
    missed = list(plan.unverifiable) if trusted else []
    for (_, sids), shown in zip(plan.queries, found, strict=True):
        if shown is not None:
            missed.extend(sid for sid in sids if sid not in shown)
    return missed


async def cleanup(run: runs.Run, listing: Listing, *, started_at: datetime) -> None:
    """The deletion rule, after a complete listing only (it started at `started_at`)."""
    pid = run.project.project_id
    assert run.run_id is not None
    candidates = list(listing.unseen)
    signals = listing.signals()
    if signals:
        log.info("listing shifted while paging: %s", "; ".join(signals))
    confirmed: list[str] = []
    if candidates:
        confirmed = await _recheck(run, candidates, trusted=not signals)
    observed_at = datetime.now(UTC)
    async with run.transaction() as conn:
        if confirmed:
            _, deleted = await store.mark_missing(
                conn,
                project_id=pid,
                run_id=run.run_id,
                observed_at=observed_at,
                last_listing_at=run.known.last_listing_at,
                threshold=run.resources.settings.delete_after_misses,
                snapshot_ids=confirmed,
                refresh_coverage=not run.defer_coverage,
            )
            run.counts.deleted += deleted
            run.counts.transitions += deleted
        # With the listing it completes, so a project with a complete listing has its coverage.
        await run.fill_coverage(conn)
        await store.record_complete_listing(
            conn,
            project_id=pid,
            run_id=run.run_id,
            started_at=started_at,
            api_total_count=listing.last_total,
        )
    for sid in confirmed:
        run.known.hashes[sid] = None


async def _recheck(run: runs.Run, candidates: list[str], *, trusted: bool) -> list[str]:
    """Look the missing snapshots up by desktop (or name); return those that count as missed."""
    pid = run.project.project_id
    async with run.transaction() as conn:
        keys = await store.lookup_keys(conn, pid, candidates)
        plan = plan_rechecks(keys)
        desktops = [value for (key, value), _ in plan.queries if key == "desktop_id"]
        sizes = await store.desktop_sizes(conn, pid, desktops) if desktops else {}
    if plan.needed > MAX_RECHECK_QUERIES:
        log.warning(
            "%d snapshots missing across %d desktops; re-checking the first %d now, "
            "the rest in later syncs",
            len(candidates),
            plan.needed,
            MAX_RECHECK_QUERIES,
        )
    gate = asyncio.Semaphore(RECHECK_CONCURRENCY)
    found: list[set[str] | None] = [None] * len(plan.queries)

    async def single(index: int) -> None:
        (key, value), sids = plan.queries[index]
        try:
            async with gate:
                page = await run.list_page(0, runs.FILTERED_PAGE_SIZE, [(key, value)])
            found[index] = await _shown(run, page, f"{key} {value}")
        except errors.ProjectError as exc:
            log.warning("could not re-check %d missing snapshot(s) by %s: %s", len(sids), key, exc)

    async def batch(group: list[int]) -> None:
        if len(group) == 1 or not run.resources.client.list_filters:
            await asyncio.gather(*(single(index) for index in group))
            return
        try:
            async with gate:
                page = await list_batch(run, group_filters(plan.queries, group))
            if page is None:  # an older API version: one desktop per request
                await asyncio.gather(*(single(index) for index in group))
                return
            shown = await _shown(run, page, f"{len(group)} desktops")
        except errors.PagingError:
            # More than one page for the batch (more snapshots than stored): in halves.
            half = len(group) // 2
            await asyncio.gather(batch(group[:half]), batch(group[half:]))
            return
        except errors.ProjectError as exc:
            count = sum(len(plan.queries[index][1]) for index in group)
            log.warning(
                "could not re-check %d missing snapshot(s) of %d desktops: %s",
                count,
                len(group),
                exc,
            )
            return
        for index in group:
            found[index] = shown

    await asyncio.gather(*(batch(group) for group in batch_rechecks(plan.queries, sizes)))
    return decide(plan, found, trusted=trusted)


async def list_batch(run: runs.Run, filters: list[Filter]) -> client_module.Page | None:
    """The first page of a listing by several desktops (`desktop_ids`); None when the API
    refuses the list filter (400: an older API version), which the process then remembers."""
    client = run.resources.client
    try:
        return await run.list_page(0, runs.FILTERED_PAGE_SIZE, filters)
    except errors.ApiError as exc:
        if exc.status != 400:
            raise
        if client.list_filters:
            client.list_filters = False
            log.warning(
                "the API refused the list filter desktop_ids (%s); an older API version: "
                "looking snapshots up one desktop per request from now on",
                exc,
            )
        return None


async def _shown(run: runs.Run, page: client_module.Page, what: str) -> set[str]:
    """Store what a re-check's page shows and return its ids.

    One page of the API's maximum size: a listing that needs a second page could skip items
    between its pages like any other, so it proves nothing and raises instead.
    """
    sorted_out = await run.load_page(page)
    if page.total_count > len(page.items):
        raise errors.PagingError(
            f"project {run.project.project_id}: {what} hold {page.total_count} snapshots, "
            "more than one page; cannot prove absence"
        )
    return {*sorted_out.ids, *sorted_out.rejected_ids}
