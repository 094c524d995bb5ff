"""How requests prove who they are: one Authenticator per `SNAPSYNC_AUTH` mode."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import aiohttp

from app import errors, signing
from app import settings as settings_module

log = logging.getLogger("app.auth")

# Renew an IAM token this long before it expires (tokens live 24 h).
RENEW_AHEAD = timedelta(minutes=15)
LOGIN_ATTEMPTS = 4


def _with_token(
    url: str, params: Sequence[tuple[str, str]], headers: dict[str, str], token: str
) -> PreparedRequest:
    query = signing.canonical_query(params)
    return PreparedRequest(
        url=f"{url}?{query}" if query else url,
        headers={**headers, "X-Auth-Token": token},
        credential=credential_of(token),
    )


def credential_of(token: str) -> str:
    """What identifies a token in a request's record (PreparedRequest, ApiError.sent_with)
    without being the secret."""
    return hashlib.blake2b(token.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class PreparedRequest:
    """What to send: the full URL (query already encoded) and the headers."""

    url: str
    headers: dict[str, str]
    # Which token the request carries (a digest, not the token): a 401 drops that token only.
    credential: str | None = None


class Authenticator(Protocol):
    """Adds credentials to a request of one project."""

    async def prepare(
        self,
        *,
        method: str,
        url: str,
        params: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        project_id: str,
        region: str,
    ) -> PreparedRequest:
        """Return the request to send, with its credentials."""
        ...

    async def prepare_account(
        self, *, method: str, url: str, params: Sequence[tuple[str, str]], headers: dict[str, str]
    ) -> PreparedRequest:
        """The same for a request about the account rather than one project (IAM's listing of
        the projects the credentials reach)."""
        ...

    async def unauthorized(
        self, *, project_id: str, region: str, credential: str | None = None
    ) -> bool:
        """The API answered 401 to a request sent with `credential` (PreparedRequest's); return
        True when fresh credentials make a retry worthwhile."""
        ...

    async def account_unauthorized(self) -> bool:
        """The same for a request about the account."""
        ...

    async def close(self) -> None:
        """Forget any credentials held in memory."""
        ...


class TokenAuth:
    """`SNAPSYNC_AUTH=token`: a ready X-Auth-Token on every request."""

    def __init__(self, *, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "TokenAuth(token=**********)"

    async def prepare(
        self,
        *,
        method: str,
        url: str,
        params: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        project_id: str,
        region: str,
    ) -> PreparedRequest:
        return _with_token(url, params, headers, self._token)

    async def prepare_account(
        self, *, method: str, url: str, params: Sequence[tuple[str, str]], headers: dict[str, str]
    ) -> PreparedRequest:
        return _with_token(url, params, headers, self._token)

    async def unauthorized(
        self, *, project_id: str, region: str, credential: str | None = None
    ) -> bool:
        return False  # a static token does not get better by asking again

    async def account_unauthorized(self) -> bool:
        return False

    async def close(self) -> None:
        return None


class AkSkAuth:
    """`SNAPSYNC_AUTH=aksk`: every request signed with SDK-HMAC-SHA256, as Huawei's SDKs do."""

    def __init__(
        self, *, access_key: str, secret_key: str, security_token: str | None = None
    ) -> None:
        self._access_key = access_key
        self._secret_key = secret_key
        self._security_token = security_token

    def __repr__(self) -> str:
        return "AkSkAuth(access_key=**********, secret_key=**********)"

    async def prepare_account(
        self, *, method: str, url: str, params: Sequence[tuple[str, str]], headers: dict[str, str]
    ) -> PreparedRequest:
        return await self.prepare(
            method=method,
            url=url,
            params=params,
            headers=headers,
            body=b"",
            project_id="",
            region="",
        )

    async def prepare(
        self,
        *,
        method: str,
        url: str,
        params: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        project_id: str,
        region: str,
    ) -> PreparedRequest:
        signed = signing.sign_request(
            method=method,
            url=url,
            params=params,
            headers=headers,
            body=body,
            access_key=self._access_key,
            secret_key=self._secret_key,
            security_token=self._security_token,
            # "" is the account (prepare_account): IAM's account-wide calls carry no project.
            project_id=project_id or None,
        )
        return PreparedRequest(url=signed.url, headers=dict(signed.headers))

    async def unauthorized(
        self, *, project_id: str, region: str, credential: str | None = None
    ) -> bool:
        return False  # a rejected signature stays rejected: the keys or the clock are wrong

    async def account_unauthorized(self) -> bool:
        return False

    async def close(self) -> None:
        return None


@dataclass
class _IamToken:
    value: str
    expires_at: datetime


# The key of the account-scoped token among the project-scoped ones (no project id is empty).
_ACCOUNT = ""


class IamPasswordAuth:
    """`SNAPSYNC_AUTH=password`: one project-scoped IAM token per project, in memory only, and
    one scoped to the account for IAM's listing of the projects (SNAPSYNC_PROJECTS=auto).

    A token is shared by every request of its project, renewed ahead of expiry and at once
    after a 401; concurrent requests of one project never log in twice.
    """

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        settings: settings_module.Settings,
        user: str,
        password: str,
        domain: str,
    ) -> None:
        self._session = session
        self._settings = settings
        self._user = user
        self._password = password
        self._domain = domain
        self._tokens: dict[str, _IamToken] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.logins = 0

    def __repr__(self) -> str:
        return f"IamPasswordAuth(user={self._user!r}, password=**********)"

    async def prepare(
        self,
        *,
        method: str,
        url: str,
        params: Sequence[tuple[str, str]],
        headers: dict[str, str],
        body: bytes,
        project_id: str,
        region: str,
    ) -> PreparedRequest:
        token = await self._token(project_id, region)
        return _with_token(url, params, headers, token.value)

    async def prepare_account(
        self, *, method: str, url: str, params: Sequence[tuple[str, str]], headers: dict[str, str]
    ) -> PreparedRequest:
        token = await self._token(_ACCOUNT, self._settings.region)
        return _with_token(url, params, headers, token.value)

    async def account_unauthorized(self) -> bool:
        self._tokens.pop(_ACCOUNT, None)
        return True

    async def unauthorized(
        self, *, project_id: str, region: str, credential: str | None = None
    ) -> bool:
        # Requests in flight together meet the revocation together: only the first 401 of a
        # token drops it, the others retry with the token that request's login brought.
        current = self._tokens.get(project_id)
        if current is not None and (
            credential is None or credential == credential_of(current.value)
        ):
            del self._tokens[project_id]
        return True

    async def close(self) -> None:
        self._tokens.clear()

    async def _token(self, project_id: str, region: str) -> _IamToken:
        current = self._tokens.get(project_id)
        if current is not None and not self._stale(current):
            return current
        lock = self._locks.setdefault(project_id, asyncio.Lock())
        async with lock:
            current = self._tokens.get(project_id)
            if current is not None and not self._stale(current):
                return current  # another request of this project logged in meanwhile
            token = await self._login(project_id, region)
            self._tokens[project_id] = token
            return token

    @staticmethod
    def _stale(token: _IamToken) -> bool:
        return datetime.now(UTC) >= token.expires_at - RENEW_AHEAD

    async def _login(self, project_id: str, region: str) -> _IamToken:
        """Log in scoped to `project_id`, or (_ACCOUNT) to the account SNAPSYNC_IAM_DOMAIN."""
        url = self._settings.iam_endpoint_for(region) + "/v3/auth/tokens?nocatalog=true"
        scope: dict[str, Any] = (
            {"domain": {"name": self._domain}}
            if project_id == _ACCOUNT
            else {"project": {"id": project_id}}
        )
        subject = project_id or "(account)"  # what the errors name
        body = {
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": {
                        "user": {
                            "name": self._user,
                            "password": self._password,
                            "domain": {"name": self._domain},
                        }
                    },
                },
                "scope": scope,
            }
        }
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout)
        for attempt in range(LOGIN_ATTEMPTS):
            try:
                async with self._session.post(
                    url, json=body, timeout=timeout, allow_redirects=False
                ) as response:
                    raw = await response.read()
                    status = response.status
                    token_value = response.headers.get("X-Subject-Token")
                    request_id = response.headers.get("X-Request-Id")
            except aiohttp.ClientSSLError as exc:
                raise errors.TransportError(
                    project_id=subject,
                    reason=f"TLS failed at the IAM login ({exc}); if a private CA signs the "
                    "endpoint's certificate, point SNAPSYNC_CA_BUNDLE at it",
                    retryable=False,
                ) from None
            except (TimeoutError, aiohttp.ClientError) as exc:
                failure: errors.ProjectError = errors.TransportError(
                    project_id=subject,
                    reason=f"IAM login at {url.split('?')[0]} failed: {type(exc).__name__} {exc}",
                )
            else:
                if status in (200, 201) and token_value:
                    self.logins += 1
                    log.info(
                        "logged in to IAM",
                        extra={"project_id": project_id} if project_id else {},
                    )
                    return _IamToken(token_value, _expiry(raw))
                failure = _iam_error(subject, status, raw, request_id)
                if status not in errors.RETRYABLE_STATUSES:
                    raise failure
            if attempt + 1 < LOGIN_ATTEMPTS:
                await asyncio.sleep(random.uniform(0, 0.5 * 2**attempt))
        raise failure


def _expiry(raw: bytes) -> datetime:
    """`token.expires_at` of an IAM answer; a missing or odd one means renewal within the hour."""
    fallback = datetime.now(UTC) + timedelta(hours=1)
    try:
        payload: Any = json.loads(raw)
        text = payload["token"]["expires_at"]
        value = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError):
        return fallback
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _iam_error(project_id: str, status: int, raw: bytes, request_id: str | None) -> errors.ApiError:
    exc = errors.ApiError.from_response(project_id, status, raw, "", request_id)
    if status == 401:
        exc.reword(
            "IAM rejected the login: check SNAPSYNC_IAM_USER, SNAPSYNC_IAM_PASSWORD "
            "and SNAPSYNC_IAM_DOMAIN" + (f" ({exc.error_msg})" if exc.error_msg else "")
        )
    return exc


def build_authenticator(
    settings: settings_module.Settings, session: aiohttp.ClientSession
) -> Authenticator:
    """The authenticator of the configured mode."""
    settings.require_credentials()
    if settings.auth == "token":
        assert settings.auth_token is not None
        return TokenAuth(token=settings.auth_token.get_secret_value())
    if settings.auth == "aksk":
        assert settings.access_key is not None and settings.secret_key is not None
        return AkSkAuth(
            access_key=settings.access_key.get_secret_value(),
            secret_key=settings.secret_key.get_secret_value(),
            security_token=settings.security_token.get_secret_value()
            if settings.security_token
            else None,
        )
    assert settings.iam_user and settings.iam_password and settings.iam_domain
    return IamPasswordAuth(
        session=session,
        settings=settings,
        user=settings.iam_user,
        password=settings.iam_password.get_secret_value(),
        domain=settings.iam_domain,
    )
