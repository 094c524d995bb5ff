"""The deletion rule. Offset paging over a list that changes (or reorders ties) can skip live
snapshots, so every snapshot missing from a complete listing is looked up again by its desktop
(or name) before it counts as missed; one that cannot be looked up counts only when the listing
showed no sign of shifting. store.MARK_MISSING deletes a row at SNAPSYNC_DELETE_AFTER_MISSES
misses. `Listing`, `plan_rechecks` and `decide` are pure; `cleanup` does the I/O."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from app import errors, runs, store

log = logging.getLogger("app.sync")

RECHECK_CONCURRENCY = 4
MAX_RECHECK_QUERIES = 2000

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
            )
            run.counts.deleted += deleted
            run.counts.transitions += deleted
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
    async with run.transaction() as conn:
        keys = await store.lookup_keys(conn, run.project.project_id, candidates)
    plan = plan_rechecks(keys)
    if plan.needed > MAX_RECHECK_QUERIES:
        log.warning(
            "%d snapshots missing across %d desktops; re-checking the first %d now, "
            "the rest in later syncs",
            len(candidates),
            plan.needed,
            MAX_RECHECK_QUERIES,
        )
    gate = asyncio.Semaphore(RECHECK_CONCURRENCY)

    async def check(key: Filter, sids: list[str]) -> set[str] | None:
        async with gate:
            try:
                return await _list_filtered(run, key)
            except errors.ProjectError as exc:
                log.warning(
                    "could not re-check %d missing snapshot(s) by %s: %s", len(sids), key[0], exc
                )
                return None

    found = await asyncio.gather(*(check(key, sids) for key, sids in plan.queries))
    return decide(plan, found, trusted=trusted)


async def _list_filtered(run: runs.Run, key: Filter) -> set[str]:
    """Read a small filtered listing in one request, store what it shows, return its ids.

    One page of the API's maximum size: a listing that needs a second page could skip items
    between its pages like any other, so it proves nothing and raises instead.
    """
    page = await run.list_page(0, runs.FILTERED_PAGE_SIZE, [key])
    sorted_out = await run.load_page(page)
    if page.total_count > len(page.items):
        raise errors.PagingError(
            f"project {run.project.project_id}: {key[0]} {key[1]} holds "
            f"{page.total_count} snapshots, more than one page; cannot prove absence"
        )
    return {*sorted_out.ids, *sorted_out.rejected_ids}
