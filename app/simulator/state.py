"""What one running simulator is told (`SimulatorOptions`) and holds (`SimulatorState`: the
population, tokens, faults, canned answers and request counts), and the aiohttp key it is kept
under.
"""

from __future__ import annotations

import base64
import binascii
import random
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from app.simulator import auth, faults, model, query
from app.simulator import population as pop


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """Everything `snapsync simulate` can be told; tests build it directly."""

    host: str = "127.0.0.1"
    port: int = 8080
    projects: int = 3
    snapshots: int = 1000
    seed: int = 1
    tick_seconds: float = 1.0
    change_rate: float = 0.002
    unstable_ties: bool = False
    # Answer as an older API version: 400 to the list filters desktop_ids, desktop_names and
    # snapshot_names.
    legacy_filters: bool = False
    auth_token: str | None = auth.DEFAULT_AUTH_TOKEN
    access_key: str | None = auth.DEFAULT_ACCESS_KEY
    secret_key: str | None = auth.DEFAULT_SECRET_KEY
    iam_user: str | None = auth.DEFAULT_IAM_USER
    iam_password: str | None = auth.DEFAULT_IAM_PASSWORD
    iam_domain: str | None = auth.DEFAULT_IAM_DOMAIN
    token_ttl: float = 86_400.0
    fault_429: float = 0.0
    fault_500: float = 0.0
    fault_502_html: float = 0.0
    latency: float = 0.0
    latency_per_item: float = 0.0
    forbidden_projects: int = 0
    iam_projects_status: int = 0
    # The regions the projects are spread over, round-robin (see population.DEFAULT_REGIONS).
    regions: tuple[str, ...] = pop.DEFAULT_REGIONS
    # Where simulated time starts; None: today's midnight UTC, so snapshots look recent while
    # the population stays the same for a whole day.
    start_time: datetime | None = None

    def start(self) -> datetime:
        """The simulated time at tick 0."""
        if self.start_time is not None:
            return self.start_time
        return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def auth_config(self) -> auth.AuthConfig:
        """The gateway's credentials."""
        return auth.AuthConfig(
            static_token=self.auth_token or None,
            access_key=self.access_key or None,
            secret_key=self.secret_key or None,
            iam_user=self.iam_user or None,
            iam_password=self.iam_password or None,
            iam_domain=self.iam_domain or None,
            token_ttl=self.token_ttl,
        )

    def initial_faults(self) -> faults.Faults:
        """The fault settings at start."""
        return faults.Faults(
            fault_429=self.fault_429,
            fault_500=self.fault_500,
            fault_502_html=self.fault_502_html,
            latency=self.latency,
            latency_per_item=self.latency_per_item,
            forbidden_projects=self.forbidden_projects,
            iam_projects_status=self.iam_projects_status,
        )


def build_population(options: SimulatorOptions) -> pop.Population:
    """The population `options` describe (can take seconds for a million snapshots)."""
    return pop.Population(
        projects=options.projects,
        snapshots=options.snapshots,
        seed=options.seed,
        change_rate=options.change_rate,
        start=options.start(),
        step_seconds=options.tick_seconds if options.tick_seconds > 0 else 1.0,
        regions=options.regions,
    )


@dataclass(frozen=True, slots=True)
class RawPage:
    """A canned answer for the next API request of a project (hostile-input tests)."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, spec: Any) -> RawPage:
        """From `{"status", "body" | "body_base64", "content_type"?, "headers"?}`."""
        if not isinstance(spec, dict):
            raise ValueError("each raw page must be an object")
        status = spec.get("status", 200)
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"status must be an integer 200..599, got {status!r}")
        if "body_base64" in spec:
            try:
                body = base64.b64decode(str(spec["body_base64"]), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("body_base64 is not base64") from None
        elif isinstance(spec.get("body", ""), str):
            body = str(spec.get("body", "")).encode()
        else:
            raise ValueError("body must be a string")
        content_type = spec.get("content_type", "application/json")
        headers = spec.get("headers", {})
        if not isinstance(content_type, str) or not isinstance(headers, dict):
            raise ValueError("content_type must be a string and headers an object")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise ValueError("headers must map strings to strings")
        return cls(status=status, body=body, content_type=content_type, headers=headers)


@dataclass(slots=True)
class Stats:
    """Requests served, by where they went and how they were answered."""

    api_by_status: Counter[int] = field(default_factory=Counter)
    api_by_project: Counter[str] = field(default_factory=Counter)
    iam_by_status: Counter[int] = field(default_factory=Counter)
    iam_by_path: Counter[str] = field(default_factory=Counter)
    control_requests: int = 0


class SimulatorState:
    """What one running simulator holds; tests in the same process may use it directly."""

    def __init__(self, options: SimulatorOptions, population: pop.Population) -> None:
        self.options = options
        self.population = population
        self.selector = query.Selector(population)
        self.faults = options.initial_faults()
        self.unstable_ties = options.unstable_ties
        self.legacy_filters = options.legacy_filters
        self.auth = options.auth_config()
        self.tokens = auth.TokenStore(ttl=timedelta(seconds=options.token_ttl))
        self.raw_pages: dict[str, deque[RawPage]] = {}
        self.stats = Stats()
        # Seeded so a run with faults or shuffled ties can be replayed request for request.
        self.fault_rng = random.Random(f"{options.seed}:faults")
        self.tie_rng = random.Random(f"{options.seed}:ties")
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def forbidden(self, project_id: str) -> bool:
        """Whether the project is among the first `forbidden_projects`."""
        return project_id in self.population.project_ids[: self.faults.forbidden_projects]

    @property
    def domain(self) -> str:
        """The simulated account's name (IAM's domain)."""
        return self.auth.iam_domain or auth.DEFAULT_IAM_DOMAIN

    def stats_json(self) -> dict[str, Any]:
        """What GET /_sim/stats answers."""
        now = self.clock()
        return {
            "requests_by_status": {str(k): v for k, v in sorted(self.stats.api_by_status.items())},
            "requests_by_project": dict(self.stats.api_by_project),
            "requests_total": sum(self.stats.api_by_status.values()),
            "iam_requests_by_status": {
                str(k): v for k, v in sorted(self.stats.iam_by_status.items())
            },
            "iam_requests_by_path": dict(self.stats.iam_by_path),
            "logins_per_project": dict(self.tokens.logins),
            "domain_logins": self.tokens.domain_logins,
            "failed_logins": self.tokens.failed_logins,
            "active_tokens": self.tokens.active(now),
            "control_requests": self.stats.control_requests,
            "faults": self.faults.as_dict(),
            "unstable_ties": self.unstable_ties,
            "legacy_filters": self.legacy_filters,
            "change_rate": self.population.change_rate,
            "ticks": self.population.ticks,
            "simulated_time": model.format_time(self.population.now.timestamp()),
            "snapshots_total": self.population.total,
            "raw_pages_pending": {pid: len(q) for pid, q in self.raw_pages.items() if q},
        }


STATE: web.AppKey[SimulatorState] = web.AppKey("snapsync_simulator_state", SimulatorState)
