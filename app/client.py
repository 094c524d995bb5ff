"""The Workspace API client: one page of `GET /v2/{project_id}/snapshots`, retried, decoded."""

from __future__ import annotations

import asyncio
import decimal
import json
import logging
import math
import random
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import yarl

from app import auth as auth_module
from app import errors, ratelimit
from app import settings as settings_module

log = logging.getLogger("app.client")

LIST_ORDER = (("sort_field", "create_time"), ("sort_type", "ASC"))
MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class Page:
    """One decoded answer of the list API."""

    offset: int
    limit: int
    total_count: int
    items: list[Any]
    request_id: str | None
    fetched_at: datetime
    # The body, while `items` came from the fast decoder: a float in them may stand for an
    # integer beyond 64 bits that it rounded (see `exact`). None once decoded exactly.
    body: bytes | None = None

    def exact(self) -> Page:
        """The same page decoded by the exact decoder (integers of any length stay exact).

        The same bytes have the same shape, which decode_page already checked."""
        if self.body is None:
            return self
        payload = decode_json(self.body)
        return replace(self, items=payload.get("desktop_snapshots") or [], body=None)


@dataclass
class RequestStats:
    """What it took to talk to the API (per project, for runs and metrics)."""

    requests: int = 0
    retries: int = 0
    by_status: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        self.requests += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1


RequestHook = Callable[[str, int], None]
# (project id, what it waits for: "rate limit" | "Retry-After" | "backoff", seconds if known)
WaitHook = Callable[[str, str, float | None], None]
"""Called with (project_id, HTTP status or 0 for no answer) after every request."""


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; never shorter than the server's Retry-After."""
    delay = random.uniform(0, min(MAX_BACKOFF, 0.5 * (2**attempt)))
    return delay if retry_after is None else max(delay, retry_after)


class WorkspaceClient:
    """Lists snapshots of any configured project through one shared aiohttp session."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        settings: settings_module.Settings,
        authenticator: auth_module.Authenticator,
        on_request: RequestHook | None = None,
        on_retry: RequestHook | None = None,
        on_wait: WaitHook | None = None,
        limiter: ratelimit.AdaptiveRateLimiter | None = None,
    ) -> None:
        self._session = session
        self._settings = settings
        self._auth = authenticator
        self.limiter = limiter or ratelimit.AdaptiveRateLimiter(
            rate=settings.max_requests_per_second
        )
        self._timeout = aiohttp.ClientTimeout(total=settings.request_timeout)
        self._on_request = on_request
        self._on_retry = on_retry
        self._on_wait = on_wait
        # The list filters of the current API version (`desktop_ids`, ...): False once the API
        # answered 400 to one (an older version), for the rest of the process.
        self.list_filters = True

    async def list_page(
        self,
        project: settings_module.Project,
        *,
        offset: int,
        limit: int,
        filters: Sequence[tuple[str, str]] = (),
        stats: RequestStats | None = None,
    ) -> Page:
        """Fetch one page in the stable order (create_time ascending)."""
        params = [*LIST_ORDER, *filters, ("offset", str(offset)), ("limit", str(limit))]
        base = self._settings.endpoint_for(project.region)
        url = f"{base}/v2/{quote(project.project_id, safe='')}/snapshots"
        body = await self._request(project, url=url, params=params, stats=stats)
        page = decode_page(
            body.payload,
            project_id=project.project_id,
            offset=offset,
            limit=limit,
            request_id=body.request_id,
            fetched_at=body.fetched_at,
        )
        return page if body.exact else replace(page, body=body.raw)

    async def _request(
        self,
        project: settings_module.Project,
        *,
        url: str,
        params: Sequence[tuple[str, str]],
        stats: RequestStats | None,
    ) -> _Answer:
        """GET with retries on 429/5xx/timeouts/connection errors and one re-login on 401."""
        attempt = 0
        relogged = False
        while True:
            try:
                return await self._attempt(project, url=url, params=params, stats=stats)
            except errors.ApiError as exc:
                if exc.status == 401 and not relogged:
                    relogged = True
                    if await self._auth.unauthorized(
                        project_id=project.project_id,
                        region=project.region,
                        credential=exc.sent_with,
                    ):
                        continue
                if not exc.transient or attempt >= self._settings.max_retries:
                    raise
                delay = backoff(attempt, exc.retry_after)
                reason = "backoff" if exc.retry_after is None else "Retry-After"
                failure = str(exc)
            except (errors.TransportError, errors.BadResponseError) as exc:
                if isinstance(exc, errors.TransportError):
                    retryable = exc.retryable
                else:
                    retryable = exc.status in errors.RETRYABLE_STATUSES
                if not retryable or attempt >= self._settings.max_retries:
                    raise
                delay = backoff(attempt)
                reason = "backoff"
                failure = str(exc)
            attempt += 1
            if stats is not None:
                stats.retries += 1
            if self._on_retry is not None:
                self._on_retry(project.project_id, attempt)
            if self._on_wait is not None:
                self._on_wait(project.project_id, reason, delay)
            log.warning(
                "retry %d/%d in %.1fs after: %s",
                attempt,
                self._settings.max_retries,
                delay,
                failure,
                extra={"project_id": project.project_id},
            )
            await asyncio.sleep(delay)

    async def _attempt(
        self,
        project: settings_module.Project,
        *,
        url: str,
        params: Sequence[tuple[str, str]],
        stats: RequestStats | None,
    ) -> _Answer:
        prepared = await self._auth.prepare(
            method="GET",
            url=url,
            params=params,
            headers={"Accept": "application/json"},
            body=b"",
            project_id=project.project_id,
            region=project.region,
        )
        on_wait = self._on_wait
        await self.limiter.acquire(
            waiting=None
            if on_wait is None
            else lambda: on_wait(project.project_id, "rate limit", None)
        )
        started = time.monotonic()
        status = 0
        try:
            async with self._session.get(
                yarl.URL(prepared.url, encoded=True),
                headers=prepared.headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                raw = await response.read()
                request_id = response.headers.get("X-Request-Id")
                retry_after = _retry_after(response.headers.get("Retry-After"))
                content_type = response.headers.get("Content-Type", "")
        except TimeoutError:
            raise errors.TransportError(
                project_id=project.project_id,
                reason=f"no complete answer within {self._settings.request_timeout:g}s "
                "(SNAPSYNC_REQUEST_TIMEOUT)",
            ) from None
        except aiohttp.ClientSSLError as exc:
            raise errors.TransportError(
                project_id=project.project_id,
                reason=f"TLS failed ({exc}); if a private CA signs the endpoint's certificate, "
                "point SNAPSYNC_CA_BUNDLE at it",
                retryable=False,
            ) from None
        except aiohttp.ClientError as exc:
            raise errors.TransportError(
                project_id=project.project_id, reason=f"{type(exc).__name__}: {exc}"
            ) from None
        finally:
            if stats is not None:
                stats.count(status)
            if self._on_request is not None:
                self._on_request(project.project_id, status)
        log.debug(
            "GET %s -> %d in %.3fs (%d bytes, X-Request-Id %s)",
            url,
            status,
            time.monotonic() - started,
            len(raw),
            request_id,
            extra={"project_id": project.project_id},
        )
        fetched_at = datetime.now(UTC)
        if status == 429:
            self.limiter.throttled()
        elif 200 <= status < 300:
            self.limiter.succeeded()
        if not 200 <= status < 300:
            error = errors.ApiError.from_response(
                project.project_id, status, raw, content_type, request_id, retry_after
            )
            error.sent_with = prepared.credential
            raise error
        try:
            payload, exact = decode_json_fast(raw)
        except UnicodeDecodeError as exc:
            raise errors.BadResponseError(
                project_id=project.project_id,
                status=status,
                request_id=request_id,
                reason=f"body is not UTF-8 ({exc.reason} at byte {exc.start})",
            ) from None
        except (ValueError, RecursionError) as exc:
            raise errors.BadResponseError(
                project_id=project.project_id,
                status=status,
                request_id=request_id,
                reason=f"body is not JSON ({errors.describe_body(raw, content_type, exc)})",
            ) from None
        return _Answer(
            payload=payload, request_id=request_id, fetched_at=fetched_at, raw=raw, exact=exact
        )


@dataclass(frozen=True)
class _Answer:
    payload: Any
    request_id: str | None
    fetched_at: datetime
    raw: bytes
    exact: bool


# Integers this long lose precision in orjson (it reads them as floats); the API's ids are
# strings, so such numbers are rare, and the standard decoder keeps them exact. Digits become
# "0" and everything else " " (bytes.translate is C-fast; a regex scan cost 5x the decode).
_DIGITS_ONLY = bytes(ord("0") if chr(i).isdigit() and i < 128 else ord(" ") for i in range(256))
_LONG_DIGIT_RUN = b"0" * 17


def decode_json(raw: bytes) -> Any:
    """Decode a body fast with orjson; fall back to the standard decoder for what orjson
    reads inexactly (long integers) or refuses but JSON allows (escaped lone surrogates,
    which validation then rejects item by item). NaN and Infinity are refused by both."""
    if _LONG_DIGIT_RUN not in raw.translate(_DIGITS_ONLY):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(
        raw.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
    )


def decode_json_fast(raw: bytes) -> tuple[Any, bool]:
    """Decode with orjson alone, and say whether the result is known to be exact.

    orjson reads an integer beyond 64 bits as a float, silently; scanning every body for long
    digit runs first cost a third of an unchanged item's CPU. Instead the caller keeps the body
    and decodes it again with `decode_json` when an item it is about to store holds a float
    (items.PageTriage.holds_float): an unchanged item is equal to what was stored exactly, so
    only new and changed items need the check.
    """
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        return decode_json(raw), True


def _finite_float(text: str) -> Any:
    """A number too large for a double stays exact (as Decimal); validation then rejects the
    item that holds it, since it cannot be stored as the API sent it."""
    value = float(text)
    return value if math.isfinite(value) else decimal.Decimal(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from this gateway; the backoff covers it
    return min(max(seconds, 0.0), 300.0)


def decode_page(
    payload: Any,
    *,
    project_id: str,
    offset: int,
    limit: int,
    request_id: str | None,
    fetched_at: datetime,
) -> Page:
    """Check the documented shape: an object with total_count >= 0 and a list of at most limit."""

    def bad(reason: str) -> errors.BadResponseError:
        return errors.BadResponseError(project_id=project_id, reason=reason, request_id=request_id)

    if not isinstance(payload, dict):
        raise bad(f"expected a JSON object, got {type(payload).__name__}")
    total = payload.get("total_count")
    if total is None:
        raise bad("total_count is missing")
    if isinstance(total, bool) or not isinstance(total, int):
        raise bad(f"total_count is {type(total).__name__}, expected an integer")
    if total < 0:
        raise bad(f"total_count is negative ({total})")
    items = payload.get("desktop_snapshots")
    if items is None:
        if total > offset:
            raise bad("desktop_snapshots is missing")
        items = []
    if not isinstance(items, list):
        raise bad(f"desktop_snapshots is {type(items).__name__}, expected a list")
    if len(items) > limit:
        raise bad(f"page holds {len(items)} items, more than limit={limit}")
    return Page(
        offset=offset,
        limit=limit,
        total_count=total,
        items=items,
        request_id=request_id,
        fetched_at=fetched_at,
    )


def new_session(settings: settings_module.Settings) -> aiohttp.ClientSession:
    """The HTTP session every request of this process shares.

    TLS certificates are always verified: against the system's CAs, or against
    SNAPSYNC_CA_BUNDLE when set (a private CA in front of the endpoints). Nothing turns
    verification off.
    """
    context = ssl.create_default_context(
        cafile=str(settings.ca_bundle) if settings.ca_bundle else None
    )
    connector = aiohttp.TCPConnector(
        limit=max(16, settings.max_concurrent_projects * max(4, settings.max_concurrent_requests)),
        ttl_dns_cache=300,
        ssl=context,
    )
    return aiohttp.ClientSession(
        connector=connector,
        headers={"User-Agent": "snapsync/0.1 (+aiohttp)"},
        raise_for_status=False,
        auto_decompress=True,
    )
