"""Prometheus metrics of `snapsync run`, in a registry of their own (never the global one).

Counters move with what this process does (runs, requests, retries); the gauges that describe
the data (snapshots by status, age of the last success) are read from the database, so every
replica of a fleet reports the same picture.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from app import discovery, runs
from app import settings as settings_module

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTCOMES = ("succeeded", "failed", "skipped")
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# The label value of `from_status` on a snapshot's first sighting (the column holds NULL).
FIRST_SIGHTING = "none"
# Series that alert rules compute increase() or rate() of exist from the start, at 0: a series
# born at 5 (five failures in one sync) would otherwise show an increase of 0 to Prometheus.
ALERTED_TRANSITIONS = (("creating", "create_failed"),)
THROTTLED_CODE = "429"

TRANSITIONS_OF_RUN = text(
    """
SELECT from_status, to_status, count(*) AS n,
       array_agg(EXTRACT(EPOCH FROM observed_at - previous_observed_at))
           FILTER (WHERE from_status IS NOT NULL AND previous_observed_at IS NOT NULL)
           AS windows
FROM snapshot_status_history
WHERE sync_run_id = :run_id
GROUP BY from_status, to_status
"""
)

# Seconds between the last sighting of the old status and the first of the new one.
WINDOW_BUCKETS = (1, 2.5, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600)

SNAPSHOTS_BY_STATUS = text(
    """
SELECT project_id, status, count(*) AS n
FROM snapshot_records
WHERE deleted_at IS NULL AND project_id = ANY(CAST(:project_ids AS text[]))
GROUP BY project_id, status
"""
)


class Metrics:
    """Every metric of the daemon; hooks of the Syncer and the client feed it."""

    def __init__(self, project_ids: Sequence[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._project_ids = list(project_ids)
        r = self.registry
        self.sync_runs = Counter(
            "snapsync_sync_runs",
            "Syncs of a project by outcome (skipped: another process held the project).",
            ["project_id", "outcome"],
            registry=r,
        )
        self.sync_duration = Histogram(
            "snapsync_sync_duration_seconds",
            "Duration of the syncs that ran (succeeded or failed).",
            ["project_id"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.sync_checks = Counter(
            "snapsync_sync_checks",
            "Scheduled checks of a project by decision (synced, not_due, busy, database_down).",
            ["project_id", "decision"],
            registry=r,
        )
        self.syncs_in_progress = Gauge(
            "snapsync_syncs_in_progress", "Syncs running in this process now.", registry=r
        )
        self.snapshots_seen = self._per_project_counter(
            "snapsync_snapshots_seen", "Snapshots listed by the API during syncs."
        )
        self.snapshots_inserted = self._per_project_counter(
            "snapsync_snapshots_inserted", "Snapshots seen for the first time."
        )
        self.snapshots_updated = self._per_project_counter(
            "snapsync_snapshots_updated", "Known snapshots whose API fields changed."
        )
        self.snapshots_deleted = self._per_project_counter(
            "snapsync_snapshots_deleted", "Snapshots confirmed gone and marked deleted."
        )
        self.snapshots_rejected = self._per_project_counter(
            "snapsync_snapshots_rejected", "Items the API returned that failed validation."
        )
        self.transitions = Counter(
            "snapsync_status_transitions",
            f"Status changes recorded in the history ({FIRST_SIGHTING!r}: first sighting).",
            ["project_id", "from_status", "to_status"],
            registry=r,
        )
        self.api_requests = Counter(
            "snapsync_api_requests",
            "Requests to the Workspace API by HTTP status code (0: no answer).",
            ["project_id", "code"],
            registry=r,
        )
        self.api_retries = self._per_project_counter(
            "snapsync_api_retries", "Requests to the Workspace API that were retried."
        )
        self.database_up = Gauge(
            "snapsync_database_up", "1 when the last database check succeeded.", registry=r
        )
        self.ready = Gauge("snapsync_ready", "1 when /readyz answers 200.", registry=r)
        self.sync_interval = Gauge(
            "snapsync_sync_interval_seconds",
            "Seconds between full syncs of a project (SNAPSYNC_SYNC_INTERVAL).",
            registry=r,
        )
        self.hot_polls = Counter(
            "snapsync_hot_polls",
            "Polls of a project's in-flight snapshots by outcome (succeeded, failed, "
            "throttled: skipped while the API is throttling).",
            ["project_id", "outcome"],
            registry=r,
        )
        self.in_flight = Gauge(
            "snapsync_snapshots_in_flight",
            "Live snapshots in a transient status (creating, restoring), per project.",
            ["project_id"],
            registry=r,
        )
        self.transition_window = Histogram(
            "snapsync_transition_window_seconds",
            "Width of the window in which a status change happened "
            "(observed_at - previous_observed_at), by the kind of run that saw it.",
            ["kind"],
            buckets=WINDOW_BUCKETS,
            registry=r,
        )
        self.project_info = Gauge(
            "snapsync_project_info",
            "1 for each project this process syncs, with its region and where it came from "
            "(configured: SNAPSYNC_PROJECTS; discovered: SNAPSYNC_PROJECTS=auto).",
            ["project_id", "region", "source"],
            registry=r,
        )
        self.project_skipped = Gauge(
            "snapsync_project_skipped_info",
            "1 for each discovered project the last discovery skipped, and why "
            "(workspace_forbidden: 403; workspace_not_found: 404).",
            ["project_id", "region", "reason"],
            registry=r,
        )
        self.projects_skipped = Gauge(
            "snapsync_projects_skipped",
            "Discovered projects the last discovery skipped, by reason.",
            ["reason"],
            registry=r,
        )
        self.discovery_runs = Counter(
            "snapsync_discovery_runs",
            "Discoveries of the projects through IAM (SNAPSYNC_PROJECTS=auto) by outcome "
            "(failed: IAM did not list them).",
            ["outcome"],
            registry=r,
        )
        self.discovery_last_run = Gauge(
            "snapsync_discovery_last_run_timestamp_seconds",
            "Unix time the newest discovery ended, whatever its outcome.",
            registry=r,
        )
        self.discovery_last_success = Gauge(
            "snapsync_discovery_last_success_timestamp_seconds",
            "Unix time the newest discovery that got IAM's list of the projects ended.",
            registry=r,
        )
        self.data = DatabaseView(self._project_ids)
        r.register(self.data)
        # process_start_time_seconds and friends: the rules tell "never synced since the
        # daemon started" from "just started".
        ProcessCollector(registry=r)
        self._label(self._project_ids)

    def show_projects(self, projects: Iterable[settings_module.Project], source: str) -> None:
        """The projects now synced: their info gauge, their labels, the database gauges."""
        chosen = list(projects)
        self.project_info.clear()
        for project in chosen:
            self.project_info.labels(project.project_id, project.region, source).set(1)
        ids = [p.project_id for p in chosen]
        self._label([pid for pid in ids if pid not in self._project_ids])
        self._project_ids = ids
        self.data.set_projects(ids)

    def show_discovery(self, skipped: Iterable[discovery.Skipped] | None) -> None:
        """A discovery ended: when, and what it skipped; None: IAM did not list the projects
        (what the previous one skipped stays shown)."""
        now = time.time()
        self.discovery_runs.labels("failed" if skipped is None else "succeeded").inc()
        self.discovery_last_run.set(now)
        if skipped is None:
            return
        self.discovery_last_success.set(now)
        self.project_skipped.clear()
        for reason in discovery.SKIP_REASONS.values():
            self.projects_skipped.labels(reason).set(0)
        for item in skipped:
            self.project_skipped.labels(
                item.project.project_id, item.project.region, item.reason
            ).set(1)
            self.projects_skipped.labels(item.reason).inc()

    def _label(self, project_ids: Iterable[str]) -> None:
        """Create the per-project series at zero, so they exist before the first sync."""
        for pid in project_ids:
            for outcome in OUTCOMES:
                self.sync_runs.labels(pid, outcome)
            self.sync_duration.labels(pid)
            for counter in (
                self.snapshots_seen,
                self.snapshots_inserted,
                self.snapshots_updated,
                self.snapshots_deleted,
                self.snapshots_rejected,
                self.api_retries,
            ):
                counter.labels(pid)
            for from_status, to_status in ALERTED_TRANSITIONS:
                self.transitions.labels(pid, from_status, to_status)
            self.api_requests.labels(pid, THROTTLED_CODE)

    def _per_project_counter(self, name: str, documentation: str) -> Counter:
        return Counter(name, documentation, ["project_id"], registry=self.registry)

    # -- hooks ------------------------------------------------------------------------------

    def on_request(self, project_id: str, status: int) -> None:
        """WorkspaceClient's on_request hook."""
        self.api_requests.labels(project_id, str(status)).inc()

    def on_retry(self, project_id: str, attempt: int) -> None:
        """WorkspaceClient's on_retry hook."""
        self.api_retries.labels(project_id).inc()

    def on_finished(self, result: runs.RunResult) -> None:
        """Syncer's on_finished hook: count the run and what it saw."""
        pid = result.project_id
        self.sync_runs.labels(pid, result.status).inc()
        if result.status == "skipped":
            return
        self.sync_duration.labels(pid).observe(result.seconds)
        c = result.counts
        self.snapshots_seen.labels(pid).inc(c.snapshots_seen)
        self.snapshots_inserted.labels(pid).inc(c.inserted)
        self.snapshots_updated.labels(pid).inc(c.updated)
        self.snapshots_deleted.labels(pid).inc(c.deleted)
        self.snapshots_rejected.labels(pid).inc(c.rejected)
        if result.status == "succeeded" and result.run_id is not None:
            self.data.succeeded(pid, time.time())

    async def count_transitions(self, conn: AsyncConnection, result: runs.RunResult) -> None:
        """Add the status changes a finished run wrote, read back from the history."""
        if result.run_id is None or result.counts.transitions == 0:
            return
        rows = await conn.execute(TRANSITIONS_OF_RUN, {"run_id": result.run_id})
        window = self.transition_window.labels(result.kind)
        for from_status, to_status, n, windows in rows:
            self.transitions.labels(
                result.project_id, from_status or FIRST_SIGHTING, to_status
            ).inc(n)
            for seconds in windows or ():
                window.observe(float(seconds))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


class DatabaseView(Collector):
    """Gauges computed from the database at scrape time, from values cached by the daemon."""

    def __init__(self, project_ids: Sequence[str]) -> None:
        self._project_ids = list(project_ids)
        self._last_success: dict[str, float] = {}
        self._by_status: dict[tuple[str, str], int] = {}
        self.by_status_read_at: float | None = None  # time.monotonic() of the last refresh

    def set_projects(self, project_ids: Sequence[str]) -> None:
        """The projects whose gauges are reported from now on."""
        self._project_ids = list(project_ids)

    def set_last_success(self, values: dict[str, datetime | None]) -> None:
        """Newest successful run of each project, as the database says (any replica's)."""
        for pid, when in values.items():
            if when is not None:
                stamp = when.timestamp()
                self._last_success[pid] = max(stamp, self._last_success.get(pid, 0.0))

    def succeeded(self, project_id: str, stamp: float) -> None:
        self._last_success[project_id] = max(stamp, self._last_success.get(project_id, 0.0))

    def last_success(self, project_id: str) -> float | None:
        return self._last_success.get(project_id)

    async def refresh_by_status(self, conn: AsyncConnection) -> None:
        """Re-read how many live snapshots each project has in each status."""
        rows = await conn.execute(SNAPSHOTS_BY_STATUS, {"project_ids": self._project_ids})
        self._by_status = {(pid, status): int(n) for pid, status, n in rows}
        self.by_status_read_at = time.monotonic()

    def collect(self) -> Iterable[Metric]:
        return list(self._families(time.time()))

    def describe(self) -> Iterable[Metric]:
        return list(self._families(time.time(), empty=True))

    def _families(self, now: float, *, empty: bool = False) -> Iterator[Metric]:
        age = GaugeMetricFamily(
            "snapsync_seconds_since_last_success",
            "Seconds since the newest successful sync of the project (by any replica).",
            labels=["project_id"],
        )
        stamp = GaugeMetricFamily(
            "snapsync_last_success_timestamp_seconds",
            "Unix time of the newest successful sync of the project (by any replica).",
            labels=["project_id"],
        )
        snapshots = GaugeMetricFamily(
            "snapsync_snapshots",
            "Live (not deleted) snapshots by status, from the database.",
            labels=["project_id", "status"],
        )
        if not empty:
            for pid in self._project_ids:
                last = self._last_success.get(pid)
                if last is not None:
                    age.add_metric([pid], max(0.0, now - last))
                    stamp.add_metric([pid], last)
            for (pid, status), n in sorted(self._by_status.items()):
                snapshots.add_metric([pid, status], n)
        yield age
        yield stamp
        yield snapshots
