"""Logging set-up: console or JSON lines, project and run ids on every sync line, no secrets."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

CONTEXT_FIELDS = ("project_id", "run_id")

Fields = dict[str, object]
# The fields of the innermost `context` block; tasks started inside it inherit them.
_fields: contextvars.ContextVar[Fields | None] = contextvars.ContextVar(
    "snapsync_log_fields", default=None
)


@contextlib.contextmanager
def context(**fields: object) -> Iterator[Fields]:
    """Every log line written inside the block, and by the tasks started in it, carries `fields`
    (project_id, run_id); one set in the dict yielded later (a hot run's id) is on later lines."""
    token = _fields.set(merged := {**(_fields.get() or {}), **fields})
    try:
        yield merged
    finally:
        _fields.reset(token)


class _ContextFilter(logging.Filter):
    """Stamps each record with the fields of the `context` it was written in; a field the call
    passed itself (`extra=`) wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (_fields.get() or {}).items():
            record.__dict__.setdefault(name, value)
        return True


class _Redactor(logging.Filter):
    """Last line of defence: replace any known secret value that reached a log record."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        cleaned = message
        for secret in self._secrets:
            cleaned = cleaned.replace(secret, "**********")
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            record.exc_text = self._clean(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "**********")
        return text


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _visible(text: str) -> str:
    """Control characters (newlines too) as escapes: API data cannot forge a log line."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class ConsoleFormatter(logging.Formatter):
    """`2026-11-27T08:00:00Z INFO  app.sync [project=… run=…] message`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        context = " ".join(
            f"{name.removesuffix('_id')}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None
        )
        text = f"{stamp} {record.levelname:<7} {record.name}"
        if context:
            text += f" [{context}]"
        text += f" {_visible(record.getMessage())}"
        if record.exc_text:
            text += "\n" + record.exc_text
        elif record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_text:
            entry["exception"] = record.exc_text
        elif record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup(*, fmt: str = "console", level: str = "INFO", secrets: Iterable[str] = ()) -> None:
    """Route every logger of the process to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(_ContextFilter())
    handler.addFilter(_Redactor(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter stays at WARNING unless the operator asked for DEBUG.
    for noisy in ("aiohttp.access", "asyncio", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
