"""Injected failures of the simulated API: throttling, server errors, a broken gateway, latency."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What an nginx-based gateway answers when the service behind it is gone: HTML, not JSON.
BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


class FaultError(ValueError):
    """A fault setting is out of range or unknown."""


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault settings; fractions are per request of the snapshots endpoint, drawn independently."""

    fault_429: float = 0.0
    fault_500: float = 0.0
    fault_502_html: float = 0.0
    latency: float = 0.0
    # Seconds added per item a page holds, on top of `latency`: a full page costs the service
    # more than an empty one, as the real API's does.
    latency_per_item: float = 0.0
    forbidden_projects: int = 0
    # 0: IAM lists the account's projects; 401 or 403: it refuses to (unauthenticated, or the
    # credentials lack iam:projects:list).
    iam_projects_status: int = 0

    def __post_init__(self) -> None:
        for name in ("fault_429", "fault_500", "fault_502_html"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0 or math.isnan(value):
                raise FaultError(f"{name} must be a fraction between 0 and 1, got {value!r}")
        if self.fault_429 + self.fault_500 + self.fault_502_html > 1.0 + 1e-9:
            raise FaultError("fault_429 + fault_500 + fault_502_html must not exceed 1")
        if not 0.0 <= self.latency <= 600.0 or math.isnan(self.latency):
            raise FaultError(f"latency must be between 0 and 600 seconds, got {self.latency!r}")
        if not 0.0 <= self.latency_per_item <= 1.0 or math.isnan(self.latency_per_item):
            raise FaultError(
                f"latency_per_item must be between 0 and 1 second, got {self.latency_per_item!r}"
            )
        if self.forbidden_projects < 0:
            raise FaultError(f"forbidden_projects must be >= 0, got {self.forbidden_projects!r}")
        if self.iam_projects_status not in (0, 401, 403):
            raise FaultError(
                f"iam_projects_status must be 0, 401 or 403, got {self.iam_projects_status!r}"
            )

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with `changes` applied (JSON values: numbers); raises FaultError."""
        known = {f.name: f.type for f in dataclasses.fields(self)}
        clean: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise FaultError(f"unknown fault {name!r}; faults are {', '.join(known)}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise FaultError(f"{name} must be a number, got {value!r}")
            if name in ("forbidden_projects", "iam_projects_status"):
                if not isinstance(value, int):
                    raise FaultError(f"{name} must be an integer, got {value!r}")
                clean[name] = value
            else:
                clean[name] = float(value)
        return dataclasses.replace(self, **clean)

    def draw(self, rng: random.Random) -> int | None:
        """The status to inject into one request (429, 500 or 502), or None to answer normally."""
        roll = rng.random()
        if roll < self.fault_429:
            return 429
        if roll < self.fault_429 + self.fault_500:
            return 500
        if roll < self.fault_429 + self.fault_500 + self.fault_502_html:
            return 502
        return None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return dataclasses.asdict(self)
