"""Authentication of the simulated gateway: a static token, IAM-issued tokens, AK/SK signatures.

Every configured method is accepted at once; a request must satisfy one of them. IAM tokens
are project-scoped: one used on another project is refused with 403 (the token is valid, it
just does not grant that project), never 401, so a client does not mistake it for expiry.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

# Huawei API Gateway codes for the failures simulated here.
CODE_BAD_CREDENTIALS = "APIGW.0301"
CODE_NOT_AUTHORIZED = "APIGW.0302"
CODE_EXPIRED = "APIGW.0307"

# The simulator's well-known development credentials: not secrets, printed at start.
DEFAULT_AUTH_TOKEN = "snapsync-dev-token"  # noqa: S105
DEFAULT_ACCESS_KEY = "SIMULATORAK"
DEFAULT_SECRET_KEY = "SIMULATORSK"  # noqa: S105
DEFAULT_IAM_USER = "simuser"
DEFAULT_IAM_PASSWORD = "simpassword"  # noqa: S105
DEFAULT_IAM_DOMAIN = "simdomain"


class AuthRejected(Exception):
    """The request is not authenticated (401) or not allowed (403)."""

    def __init__(self, status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message


class LoginError(Exception):
    """An IAM login was refused; rendered as a Keystone error body."""

    def __init__(self, status: int, title: str, message: str, error_code: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.error_code = error_code

    def body(self) -> dict[str, Any]:
        """Keystone's error body, plus Huawei's error_code/error_msg."""
        return {
            "error": {"code": self.status, "message": self.message, "title": self.title},
            "error_code": self.error_code,
            "error_msg": self.message,
        }


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Which credentials the gateway accepts; an empty or None value disables that method."""

    static_token: str | None = DEFAULT_AUTH_TOKEN
    access_key: str | None = DEFAULT_ACCESS_KEY
    secret_key: str | None = DEFAULT_SECRET_KEY
    iam_user: str | None = DEFAULT_IAM_USER
    iam_password: str | None = DEFAULT_IAM_PASSWORD
    iam_domain: str | None = DEFAULT_IAM_DOMAIN
    token_ttl: float = 86_400.0

    @property
    def aksk_enabled(self) -> bool:
        """Whether AK/SK signatures are accepted."""
        return bool(self.access_key and self.secret_key)

    @property
    def iam_enabled(self) -> bool:
        """Whether the IAM endpoint issues tokens."""
        return bool(self.iam_user and self.iam_password and self.iam_domain)


@dataclass(slots=True)
class IssuedToken:
    """A token issued by the simulated IAM, scoped to one project (or, None, to the account:
    good for IAM's listings, not for a project's API)."""

    token: str
    project_id: str | None
    issued_at: datetime
    expires_at: datetime


@dataclass(slots=True)
class TokenStore:
    """IAM tokens issued so far, and logins counted per project."""

    ttl: timedelta
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    logins: Counter[str] = field(default_factory=Counter)
    domain_logins: int = 0
    failed_logins: int = 0

    def issue(self, project_id: str | None, now: datetime) -> IssuedToken:
        """A fresh token for `project_id` (None: scoped to the account), counted as a login."""
        # Real tokens are long base64 blobs starting "MII"; clients must not assume a length.
        token = "MIIsim" + secrets.token_urlsafe(96)
        issued = IssuedToken(token, project_id, now, now + self.ttl)
        self.tokens[token] = issued
        if project_id is None:
            self.domain_logins += 1
        else:
            self.logins[project_id] += 1
        return issued

    def revoke_all(self) -> int:
        """Forget every issued token; returns how many."""
        count = len(self.tokens)
        self.tokens.clear()
        return count

    def expire_all(self, now: datetime) -> int:
        """Make every issued token expired (they are then refused as expired, not unknown)."""
        for issued in self.tokens.values():
            issued.expires_at = min(issued.expires_at, now)
        return len(self.tokens)

    def active(self, now: datetime) -> int:
        """Tokens not yet expired."""
        return sum(1 for issued in self.tokens.values() if issued.expires_at > now)


def authenticate(
    config: AuthConfig,
    tokens: TokenStore,
    *,
    method: str,
    path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    project_id: str | None,
    now: datetime,
) -> str:
    """Who made the request ("token", "iam:<project>", "aksk:<AK>"); raises AuthRejected.

    A request with an `Authorization: SDK-HMAC-SHA256 ...` header is judged by its signature
    alone; any other by its X-Auth-Token. `project_id` None (an IAM call, which is not about
    one project) accepts a token scoped to any project.
    """
    authorization = headers.get("Authorization", "")
    if authorization.strip().startswith("SDK-HMAC-SHA256"):
        return _check_signature(
            config,
            method=method,
            path=path,
            raw_query=raw_query,
            headers=headers,
            body=body,
            now=now,
        )
    token = headers.get("X-Auth-Token")
    if token is None:
        raise AuthRejected(
            401,
            CODE_BAD_CREDENTIALS,
            "Incorrect IAM authentication information: "
            "neither an X-Auth-Token header nor an AK/SK signature",
        )
    if config.static_token and hmac.compare_digest(token.encode(), config.static_token.encode()):
        return "token"
    issued = tokens.tokens.get(token)
    if issued is None:
        raise AuthRejected(
            401,
            CODE_BAD_CREDENTIALS,
            "Incorrect IAM authentication information: the token is unknown or was revoked",
        )
    if issued.expires_at <= now:
        raise AuthRejected(401, CODE_EXPIRED, "The token must be updated: it has expired.")
    if project_id is not None and issued.project_id != project_id:
        scope = "the account" if issued.project_id is None else f"project {issued.project_id}"
        raise AuthRejected(
            403,
            CODE_NOT_AUTHORIZED,
            f"The IAM user is not authorized to access the API: the token is scoped to "
            f"{scope}, not {project_id}",
        )
    return f"iam:{issued.project_id or 'domain'}"


def _check_signature(
    config: AuthConfig,
    *,
    method: str,
    path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> str:
    if not config.aksk_enabled:
        raise AuthRejected(
            401, CODE_BAD_CREDENTIALS, "Incorrect IAM authentication information: AK/SK is disabled"
        )
    try:
        # Imported here so the simulator runs even where the signing module is missing.
        from app import signing
    except ImportError:
        raise AuthRejected(
            401,
            CODE_BAD_CREDENTIALS,
            "Incorrect IAM authentication information: this simulator cannot verify "
            "signatures (app.signing is missing)",
        ) from None

    def secret_for(access_key: str) -> str | None:
        return config.secret_key if access_key == config.access_key else None

    try:
        access_key = signing.verify_request(
            method=method,
            path=path,
            raw_query=raw_query,
            headers=headers,
            body=body,
            secret_for=secret_for,
            now=now,
        )
    except signing.SignatureError as exc:
        raise AuthRejected(
            401,
            CODE_BAD_CREDENTIALS,
            f"Incorrect IAM authentication information: the AK/SK signature was rejected: {exc}",
        ) from None
    return f"aksk:{access_key}"


@dataclass(frozen=True, slots=True)
class PasswordLogin:
    """The parts of a Keystone v3 password-auth body the simulator checks."""

    user: str
    password: str
    domain: str
    # None: scoped to the account (`scope.domain`), as IAM's listings of projects want.
    project_id: str | None
    scope_domain: str | None = None


def parse_login(body: Any) -> PasswordLogin:
    """Read a Keystone v3 password-auth request body; raises LoginError (400) when malformed.

    The scope is a project (`scope.project.id`) or the account (`scope.domain.name`)."""
    try:
        auth = body["auth"]
        identity = auth["identity"]
        methods = identity["methods"]
        user = identity["password"]["user"]
        name, password, domain = user["name"], user["password"], user["domain"]["name"]
        scope = auth["scope"]
        if "domain" in scope and "project" not in scope:
            scope_domain = scope["domain"]["name"]
            if not isinstance(scope_domain, str) or not scope_domain:
                raise _bad_request("scope.domain.name must be a non-empty string")
            project_id = None
        else:
            scope_domain = None
            project_id = scope["project"]["id"]
    except (KeyError, TypeError):
        raise _bad_request(
            "Expecting auth.identity.methods, auth.identity.password.user.{name,password,"
            "domain.name} and auth.scope.project.id or auth.scope.domain.name"
        ) from None
    if not isinstance(methods, list) or "password" not in methods:
        raise _bad_request("auth.identity.methods must include 'password'")
    for label, value in (
        ("user.name", name),
        ("user.password", password),
        ("user.domain.name", domain),
        ("scope.project.id", project_id if scope_domain is None else "-"),
    ):
        if not isinstance(value, str) or not value:
            raise _bad_request(f"{label} must be a non-empty string")
    return PasswordLogin(
        user=name,
        password=password,
        domain=domain,
        project_id=project_id,
        scope_domain=scope_domain,
    )


def check_login(config: AuthConfig, login: PasswordLogin) -> None:
    """Raise LoginError (401) unless the credentials are the configured ones."""
    if not config.iam_enabled:
        raise LoginError(401, "Unauthorized", "Password login is disabled.", "IAM.0101")
    # Compare all three, always, so timing does not tell which one was wrong.
    ok = (
        hmac.compare_digest(login.user.encode(), (config.iam_user or "").encode())
        & hmac.compare_digest(login.password.encode(), (config.iam_password or "").encode())
        & hmac.compare_digest(login.domain.encode(), (config.iam_domain or "").encode())
    )
    if not ok:
        raise LoginError(401, "Unauthorized", "The username or password is wrong.", "IAM.0101")
    if login.scope_domain is not None and login.scope_domain != login.domain:
        raise LoginError(
            401,
            "Unauthorized",
            f"The user has no access to domain {login.scope_domain}.",
            "IAM.0101",
        )


def token_body(
    issued: IssuedToken, login: PasswordLogin, *, catalog: bool, project_name: str = "cn-north-4"
) -> dict[str, Any]:
    """The body of a 201 answer to POST /v3/auth/tokens; `project_name` is the scope's IAM
    name (its region, or a sub-project's name)."""
    domain = {"id": _stable_id(login.domain), "name": login.domain}
    token: dict[str, Any] = {
        "expires_at": iso_with_micros(issued.expires_at),
        "issued_at": iso_with_micros(issued.issued_at),
        "methods": ["password"],
        "user": {
            "id": _stable_id(login.domain + "/" + login.user),
            "name": login.user,
            "domain": {"id": _stable_id(login.domain), "name": login.domain},
            "password_expires_at": "",
        },
        "roles": [{"id": "0", "name": "op_service"}],
    }
    if issued.project_id is None:
        token["domain"] = domain
    else:
        token["project"] = {"id": issued.project_id, "name": project_name, "domain": domain}
    if catalog:
        token["catalog"] = []
    return {"token": token}


def iso_with_micros(moment: datetime) -> str:
    """ISO 8601 UTC with microseconds and Z, as Huawei IAM writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def domain_id_for(domain: str) -> str:
    """The id of the simulated account (domain), as its tokens and IAM listings show it."""
    return _stable_id(domain)


def _stable_id(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _bad_request(message: str) -> LoginError:
    return LoginError(400, "Bad Request", message, "IAM.0001")
