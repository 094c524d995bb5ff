"""SDK-HMAC-SHA256 request signing (Huawei Cloud API Gateway), and the server-side check of it.

Follows ``huaweicloudsdkcore.signer.Signer`` as used by ``BasicCredentials.sign_request``, so a
request signed here is accepted wherever one signed by the official SDK is. Pure: no I/O, no
logging, no clock unless ``now`` is left out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote

from app import errors

ALGORITHM = "SDK-HMAC-SHA256"
DATE_FORMAT = "%Y%m%dT%H%M%SZ"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_DATE_HEADER = "X-Sdk-Date"
_HOST_HEADER = "Host"
_PROJECT_HEADER = "X-Project-Id"
_TOKEN_HEADER = "X-Security-Token"  # noqa: S105 - a header name, not a secret
_CONTENT_HASH_HEADER = "X-Sdk-Content-Sha256"
_AUTH_HEADER = "Authorization"
_EMPTY_HASH = hashlib.sha256(b"").hexdigest()
# Body types the gateway hashes; for any other Content-Type the SDK declares the payload unsigned.
_HASHED_CONTENT_TYPES = ("application/json", "application/bson")
# Headers whose value is a credential: shown as <redacted> in a SignedRequest's repr.
_REDACTED_HEADERS = frozenset({_TOKEN_HEADER.lower()})

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_URL_RE = re.compile(
    r"(?P<scheme>https?)://(?P<host>[^/?#\s\x00-\x1f\x7f]+)(?P<path>/[^?#]*)?", re.IGNORECASE
)
_LONE_PERCENT_RE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_AUTH_RE = re.compile(
    r"(?P<algorithm>\S+)\s+Access=(?P<access>[^,\s]+),\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[^,\s]+)"
)
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
_SIGNATURE_IN_AUTH_RE = re.compile(r"Signature=\S+")


class SignatureError(errors.SnapsyncError):
    """A request's signature could not be verified; the message says why (never a secret)."""


@dataclass(frozen=True, repr=False)
class SignedRequest:
    """A signed request: send ``url`` as is (``yarl.URL(url, encoded=True)``) with ``headers``."""

    url: str
    headers: dict[str, str]

    def __repr__(self) -> str:
        shown = {name: _redact(name, value) for name, value in self.headers.items()}
        return f"SignedRequest(url={self.url!r}, headers={shown!r})"


def canonical_query(params: Sequence[tuple[str, str]]) -> str:
    """The query string as signed and sent: pairs sorted by (key, value), each side encoded."""
    return "&".join(f"{_encode(key)}={_encode(value)}" for key, value in sorted(params))


def sign_request(
    *,
    method: str,
    url: str,
    params: Sequence[tuple[str, str]] = (),
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    access_key: str,
    secret_key: str,
    security_token: str | None = None,
    project_id: str | None = None,
    now: datetime | None = None,
) -> SignedRequest:
    """Sign a request the way the official SDK does; ``url`` has no query, ``params`` are the query.

    Every header given is signed, except names containing ``_`` (as in the SDK). Raises
    ``ValueError`` for malformed input (the message never contains the secret key or token).
    """
    if not access_key:
        raise ValueError("access key is empty")
    if not secret_key:
        raise ValueError("secret key is empty")
    scheme, host, path = _split_url(url)
    out = _caller_headers(headers or {})
    lowered = {name.lower(): name for name in out}

    if now is not None and _DATE_HEADER.lower() in lowered:
        raise ValueError(f"pass either now= or an {_DATE_HEADER} header, not both")
    if now is None and _DATE_HEADER.lower() in lowered:
        date = out[lowered[_DATE_HEADER.lower()]]
        _parse_date(date, error=ValueError)
    else:
        date = _format_date(now if now is not None else datetime.now(UTC))
        out[_DATE_HEADER] = date

    content_type = out.get(lowered.get("content-type", ""), "")
    if content_type and not content_type.startswith(_HASHED_CONTENT_TYPES):
        out.pop(lowered.get(_CONTENT_HASH_HEADER.lower(), ""), None)
        out[_CONTENT_HASH_HEADER] = UNSIGNED_PAYLOAD
    if _HOST_HEADER.lower() not in lowered:
        out[_HOST_HEADER] = host
    if project_id is not None:
        if not project_id.strip():
            raise ValueError("project_id is empty")
        _reject_header(lowered, _PROJECT_HEADER, "project_id=")
        out[_PROJECT_HEADER] = _checked_value(_PROJECT_HEADER, project_id, secret=False)
    if security_token is not None:
        if not security_token.strip():
            raise ValueError("security_token is empty")
        _reject_header(lowered, _TOKEN_HEADER, "security_token=")
        out[_TOKEN_HEADER] = _checked_value(_TOKEN_HEADER, security_token, secret=True)

    by_name = {name.lower(): value for name, value in out.items()}
    signed = sorted(name for name in by_name if "_" not in name)
    query = canonical_query(params)
    canonical = _canonical_request(
        method=method,
        path=path,
        query=query,
        headers=[(name, by_name[name]) for name in signed],
        payload_hash=_payload_hash(body, by_name.get(_CONTENT_HASH_HEADER.lower(), "")),
    )
    signature = _signature(secret_key, date, canonical)
    out[_AUTH_HEADER] = (
        f"{ALGORITHM} Access={access_key}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    wire_url = f"{scheme}://{host}{_wire_path(path)}" + (f"?{query}" if query else "")
    return SignedRequest(url=wire_url, headers=out)


def verify_request(
    *,
    method: str,
    path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    secret_for: Callable[[str], str | None],
    now: datetime,
    max_skew: timedelta = timedelta(minutes=15),
) -> str:
    """Check a received request's SDK-HMAC-SHA256 signature and return its access key.

    ``path`` and ``raw_query`` are as received, still percent-encoded (with aiohttp:
    ``request.rel_url.raw_path`` and ``request.rel_url.raw_query_string``). ``secret_for`` maps
    an access key to its secret key, or None when unknown. Raises ``SignatureError``.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    values = _received_headers(headers)
    access_key, signed, signature = _parse_authorization(_one(values, _AUTH_HEADER.lower()))
    for required in (_HOST_HEADER.lower(), _DATE_HEADER.lower()):
        if required not in signed:
            raise SignatureError(f"{required} is not among the signed headers")
    if _TOKEN_HEADER.lower() in values and _TOKEN_HEADER.lower() not in signed:
        raise SignatureError(f"{_TOKEN_HEADER} is present but not signed")
    signed_values = [(name, _one(values, name).strip()) for name in signed]

    secret_key = secret_for(access_key)
    if secret_key is None:
        raise SignatureError(f"unknown access key {access_key!r}")

    date = _one(values, _DATE_HEADER.lower()).strip()
    sent_at = _parse_date(date, error=SignatureError)
    skew = abs(now - sent_at)
    if skew > max_skew:
        raise SignatureError(
            f"{_DATE_HEADER} {date} is out of range: {int(skew.total_seconds())} s away from "
            f"server time {_format_date(now)}, more than the {max_skew} allowed"
        )

    content_hash = ""
    if _CONTENT_HASH_HEADER.lower() in values:
        content_hash = _one(values, _CONTENT_HASH_HEADER.lower()).strip()
        actual = hashlib.sha256(body).hexdigest()
        declared = bool(body) and content_hash not in ("", UNSIGNED_PAYLOAD)
        if declared and not hmac.compare_digest(content_hash.encode(), actual.encode()):
            raise SignatureError(f"{_CONTENT_HASH_HEADER} does not match the body")
    canonical = _canonical_request(
        method=method,
        path=path,
        query=canonical_query(_parse_query(raw_query)),
        headers=signed_values,
        payload_hash=_payload_hash(body, content_hash),
    )
    if not hmac.compare_digest(_signature(secret_key, date, canonical), signature):
        raise SignatureError(f"signature does not match (signed headers: {';'.join(signed)})")
    return access_key


def _encode(text: str) -> str:
    return quote(text, safe="~")


def _canonical_uri(path: str) -> str:
    # As the SDK: decode, re-encode each segment, always end with "/".
    encoded = "/".join(_encode(segment) for segment in unquote(path).split("/"))
    return encoded if encoded.endswith("/") else encoded + "/"


def _wire_path(path: str) -> str:
    """The path to send: existing %XX escapes kept (so %2F stays inside its segment), the rest
    encoded. The server decodes it to the same segments the signature was computed over."""
    return quote(_LONE_PERCENT_RE.sub("%25", path), safe="/%~")


def _canonical_request(
    *, method: str, path: str, query: str, headers: Sequence[tuple[str, str]], payload_hash: str
) -> str:
    header_lines = "".join(f"{name}:{value}\n" for name, value in headers)
    signed = ";".join(name for name, _ in headers)
    return "\n".join(
        [method.upper(), _canonical_uri(path), query, header_lines, signed, payload_hash]
    )


def _payload_hash(body: bytes, content_hash_header: str) -> str:
    if not body:
        return _EMPTY_HASH
    # The SDK lets X-Sdk-Content-Sha256 (normally UNSIGNED-PAYLOAD) stand in for the body hash.
    return content_hash_header or hashlib.sha256(body).hexdigest()


def _signature(secret_key: str, date: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    string_to_sign = f"{ALGORITHM}\n{date}\n{digest}"
    key = secret_key.encode("utf-8")
    return hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def _format_date(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return moment.astimezone(UTC).strftime(DATE_FORMAT)


def _parse_date(text: str, *, error: type[Exception]) -> datetime:
    try:
        return datetime.strptime(text, DATE_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        # The value is not echoed: a malformed header could hold anything, even a pasted secret.
        raise error(f"{_DATE_HEADER} is not in the form YYYYMMDDTHHMMSSZ") from None


def _split_url(url: str) -> tuple[str, str, str]:
    # Not urlsplit: it drops tabs and newlines and strips spaces at the ends, changing the path.
    match = _URL_RE.fullmatch(url)
    if match is None:
        if "?" in url or "#" in url:
            raise ValueError("url must not contain a query or fragment; pass the query as params")
        raise ValueError(f"url must be http(s)://host[:port]/path, got {url!r}")
    if "@" in match["host"]:
        raise ValueError("url must not contain user information")
    return match["scheme"].lower(), match["host"], match["path"] or "/"


def _caller_headers(headers: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in headers.items():
        lower = name.lower()
        if not _TOKEN_RE.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if lower in seen:
            raise ValueError(f"header {name!r} is given more than once")
        if lower == _AUTH_HEADER.lower():
            raise ValueError("the request already has an Authorization header")
        seen.add(lower)
        out[name] = _checked_value(name, value, secret=lower == _TOKEN_HEADER.lower())
    return out


def _checked_value(name: str, value: str, *, secret: bool) -> str:
    stripped = value.strip()
    if any(char in stripped for char in "\r\n\0"):
        shown = "" if secret else f" {value!r}"
        raise ValueError(f"header {name} contains a line break or NUL{shown}")
    return stripped


def _reject_header(lowered: Mapping[str, str], name: str, argument: str) -> None:
    if name.lower() in lowered:
        raise ValueError(f"pass {argument} instead of an {name} header")


def _redact(name: str, value: str) -> str:
    if name.lower() in _REDACTED_HEADERS:
        return "<redacted>"
    if name.lower() == _AUTH_HEADER.lower():
        return _SIGNATURE_IN_AUTH_RE.sub("Signature=<redacted>", value)
    return value


def _received_headers(headers: Mapping[str, str]) -> dict[str, list[str]]:
    # items() rather than a dict lookup: a multidict yields every occurrence of a header.
    values: dict[str, list[str]] = {}
    for name, value in headers.items():
        values.setdefault(name.lower(), []).append(value)
    return values


def _one(values: Mapping[str, list[str]], name: str) -> str:
    found = values.get(name)
    if not found:
        raise SignatureError(f"missing {name} header")
    if len(found) > 1:
        raise SignatureError(f"header {name} appears {len(found)} times")
    return found[0]


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    match = _AUTH_RE.fullmatch(value.strip())
    if match is None:
        raise SignatureError(
            "malformed Authorization header: expected "
            f"'{ALGORITHM} Access=..., SignedHeaders=..., Signature=...'"
        )
    if match["algorithm"] != ALGORITHM:
        raise SignatureError(f"unsupported algorithm {match['algorithm']!r}, expected {ALGORITHM}")
    if not _SIGNATURE_RE.fullmatch(match["signature"]):
        raise SignatureError("malformed Authorization header: Signature is not 64 hex digits")
    signed = match["signed"].split(";")
    if any(not name or name != name.lower() for name in signed):
        raise SignatureError("malformed Authorization header: SignedHeaders must be lower case")
    return match["access"], signed, match["signature"]


def _parse_query(raw_query: str) -> list[tuple[str, str]]:
    # "+" is left alone: the SDK encodes a space as %20, so "+" on the wire is a literal plus.
    pairs = []
    for piece in raw_query.split("&"):
        if piece:
            key, _, value = piece.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs
