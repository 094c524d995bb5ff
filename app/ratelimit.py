"""A request-rate limit shared by every project of one process, that slows down on 429.

A token bucket whose rate halves when the API throttles (never below a floor) and creeps back
to the configured rate while requests succeed (additive increase, multiplicative decrease).
aiolimiter's fixed-rate bucket does not adapt, hence this small class.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

MIN_RATE = 0.2
COOLDOWN_SECONDS = 2.0
# Many requests in flight meet the same throttling: halve at most once per this many seconds.
DECREASE_SPACING = 1.0
RECOVERY_STEP = 0.1  # of the configured rate, per successful request after the cooldown


class AdaptiveRateLimiter:
    """`await limiter.acquire()` before each request; report 429s and successes."""

    def __init__(self, *, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_rate = rate
        self.rate = rate
        self._clock = clock
        self._tokens = max(1.0, rate)
        self._updated = clock()
        self._cooldown_until = 0.0
        self._last_decrease = -DECREASE_SPACING
        self._lock = asyncio.Lock()
        self.throttle_events = 0

    @property
    def unlimited(self) -> bool:
        return self.max_rate <= 0

    def _refill(self) -> None:
        now = self._clock()
        capacity = max(1.0, self.rate)
        self._tokens = min(capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self, *, waiting: Callable[[], None] | None = None) -> None:
        """Wait until a request may be sent (first come, first served); `waiting` is called
        first when the request has to wait (behind others, or for a token)."""
        if self.unlimited:
            return
        if waiting is not None:
            self._refill()
            if self._lock.locked() or self._tokens < 1.0:
                waiting()
        async with self._lock:
            while True:
                self._refill()
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)

    def throttled(self) -> None:
        """The API answered 429: halve the rate and hold it for a while."""
        if self.unlimited:
            return
        self._refill()
        self.throttle_events += 1
        now = self._clock()
        if now - self._last_decrease >= DECREASE_SPACING:
            self.rate = max(MIN_RATE, self.rate / 2)
            self._last_decrease = now
        self._tokens = min(self._tokens, 0.0)
        self._cooldown_until = now + COOLDOWN_SECONDS

    def succeeded(self) -> None:
        """A request went through: after the cooldown, climb back towards the configured rate."""
        if self.unlimited or self.rate >= self.max_rate:
            return
        if self._clock() >= self._cooldown_until:
            self._refill()
            self.rate = min(self.max_rate, self.rate + self.max_rate * RECOVERY_STEP)
