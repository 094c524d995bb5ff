"""The project's exception tree: driver and HTTP errors become these at the edges."""

from __future__ import annotations

import json

# Answers worth retrying: throttling and the gateway's or the service's passing faults.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


class SnapsyncError(Exception):
    """Base of every error snapsync raises on purpose."""


class ConfigError(SnapsyncError):
    """A setting is missing or malformed; `variable` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


class ProjectError(SnapsyncError):
    """A project could not be synced (the API refused or answered nonsense)."""


class ApiError(ProjectError):
    """The Workspace API (or IAM) answered with a non-2xx status."""

    def __init__(
        self,
        *,
        project_id: str,
        status: int,
        error_code: str | None = None,
        error_msg: str | None = None,
        request_id: str | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.project_id = project_id
        self.retry_after = retry_after
        self.status = status
        self.error_code = error_code
        self.error_msg = error_msg
        self.request_id = request_id
        self.detail = detail
        # The credential of the request that got this answer (app/auth.py PreparedRequest).
        self.sent_with: str | None = None
        super().__init__(self._describe())

    @classmethod
    def from_response(
        cls,
        project_id: str,
        status: int,
        raw: bytes,
        content_type: str,
        request_id: str | None,
        retry_after: float | None = None,
    ) -> ApiError:
        """A non-2xx answer, with the documented error body's fields when present."""
        error_code: str | None = None
        error_msg: str | None = None
        detail: str | None = None
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError, RecursionError):
            body = None
        if isinstance(body, dict):
            nested = body.get("error")
            if isinstance(nested, dict):  # IAM's Keystone-style error body
                body = {"error_msg": nested.get("message"), "error_code": nested.get("code")}
            code, msg = body.get("error_code"), body.get("error_msg")
            error_code = str(code)[:200] if code is not None else None
            error_msg = str(msg)[:500] if msg is not None else None
        if error_code is None and error_msg is None:
            detail = describe_body(raw, content_type)
        return cls(
            project_id=project_id,
            status=status,
            error_code=error_code,
            error_msg=error_msg,
            request_id=request_id,
            detail=detail,
            retry_after=retry_after,
        )

    def reword(self, error_msg: str) -> None:
        """Put `error_msg` in place of the message the server sent."""
        self.error_msg = error_msg
        self.args = (self._describe(),)

    def _describe(self) -> str:
        parts = [f"project {self.project_id}: HTTP {self.status}"]
        if self.error_code:
            parts.append(self.error_code)
        if self.error_msg:
            parts.append(self.error_msg)
        elif self.detail:
            parts.append(self.detail)
        text = " ".join(parts[:1]) + (": " + " - ".join(parts[1:]) if len(parts) > 1 else "")
        if self.request_id:
            text += f" (X-Request-Id {self.request_id})"
        return text

    @property
    def transient(self) -> bool:
        """Whether the same request may succeed when retried."""
        return self.status in RETRYABLE_STATUSES


def describe_body(raw: bytes, content_type: str, exc: BaseException | None = None) -> str:
    """A short, printable account of a body that is not what was expected."""
    snippet = raw[:120].decode("utf-8", "replace").replace("\n", " ").strip()
    kind = content_type.split(";")[0].strip() or "no content type"
    text = f"{kind}, {len(raw)} bytes, starts {snippet!r}"
    if isinstance(exc, json.JSONDecodeError):
        text = f"{exc.msg} at char {exc.pos}; {text}"
    elif isinstance(exc, RecursionError):
        text = f"nested too deeply; {text}"
    return text


class BadResponseError(ProjectError):
    """The API answered 2xx but the body is not the documented JSON."""

    def __init__(
        self, *, project_id: str, reason: str, status: int = 200, request_id: str | None = None
    ) -> None:
        self.project_id = project_id
        self.reason = reason
        self.status = status
        self.request_id = request_id
        text = f"project {project_id}: unusable answer (HTTP {status}): {reason}"
        if request_id:
            text += f" (X-Request-Id {request_id})"
        super().__init__(text)


class TransportError(ProjectError):
    """The request did not get an answer: timeout, refused or reset connection."""

    def __init__(self, *, project_id: str, reason: str, retryable: bool = True) -> None:
        self.project_id = project_id
        self.reason = reason
        self.retryable = retryable
        super().__init__(f"project {project_id}: no answer from the API: {reason}")


class PagingError(ProjectError):
    """Paging ran away: pages past `total_count`, or empty pages before it."""


class DiscoveryError(SnapsyncError):
    """IAM did not list the projects the credentials reach (SNAPSYNC_PROJECTS=auto)."""


class DatabaseError(SnapsyncError):
    """PostgreSQL is unreachable or refused a statement."""
