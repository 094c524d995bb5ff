"""Database access: the engine for the configured URL, or for the embedded PostgreSQL.

Alembic is imported only to migrate: it costs about a third of a second at start-up, and
`sync`, `status` and `run` only need to know whether the schema is at the newest revision,
which `check_schema` answers from the revision files and the `alembic_version` table.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import functools
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import errors
from app import settings as settings_module

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import Connection

    from app import embedded

log = logging.getLogger("app.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
VERSIONS_DIR = MIGRATIONS_DIR / "versions"
VERSION_TABLE = "alembic_version"


def make_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An asyncpg engine; pre-ping so a restarted server costs one failed checkout, not a crash."""
    return create_async_engine(
        settings_module.to_asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            # UTC: a time the API sends without an offset is read as UTC (store.UPSERT_PAGE).
            # No JIT: every statement reads by index, and compiling a plan costs more than it
            # saves (migration 0009 sets the same for the database's other sessions).
            "server_settings": {"application_name": "snapsync", "timezone": "UTC", "jit": "off"},
            "timeout": 10,
        },
    )


@contextlib.asynccontextmanager
async def open_database(
    settings: settings_module.Settings,
) -> AsyncIterator[tuple[str, embedded.EmbeddedPostgres | None]]:
    """The configured URL, or the embedded server's with the server (started here, stopped on
    exit if we did)."""
    configured = settings.async_database_url()
    if configured is not None:
        yield configured, None
        return
    from app import embedded
    from app.embedded import programs

    server = embedded.EmbeddedPostgres(settings.data_dir)
    try:
        url = await asyncio.to_thread(server.start)
    except programs.EmbeddedPostgresError as exc:
        raise errors.DatabaseError(f"embedded PostgreSQL in {settings.data_dir}: {exc}") from None
    try:
        yield url, server
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def open_engine(
    settings: settings_module.Settings, *, pool_size: int | None = None
) -> AsyncIterator[AsyncEngine]:
    """An engine sized for the configured concurrency, disposed on exit."""
    size = pool_size or settings.max_concurrent_projects * 2 + 2
    async with open_database(settings) as (url, _):
        engine = make_engine(url, pool_size=size)
        try:
            yield engine
        finally:
            await engine.dispose()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration without any ini file; the migrations ship inside the package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    if url is not None:
        config.attributes["url"] = url
    return config


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision` (the newest by default)."""

    from alembic import command

    def upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    async with engine.connect() as conn:
        await conn.run_sync(upgrade)
        await conn.commit()


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to `revision` (tests and operators undoing a migration)."""

    from alembic import command

    def run(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), revision)

    async with engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()


@functools.cache
def head_revision() -> str:
    """The newest revision the installed code knows.

    Read from the `revision = ...` and `down_revision = ...` lines of the revision files: the
    same values alembic reads, but alembic gets them by importing itself and executing every
    file. Whatever this reading cannot settle (a value that is not a literal, a `depends_on`, a
    file without exactly one `revision` line, not exactly one head) is left to alembic, so the
    answer is alembic's either way; tests/migration/test_migrations.py checks that the shipped
    files are read without that fallback and give alembic's head.
    """
    return head_from_sources(VERSIONS_DIR) or _alembic_head()


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


# A top-level `name = literal` or `name: annotation = literal`, as alembic's template writes it.
_IDENTIFIER_LINE = re.compile(
    r"^(revision|down_revision|depends_on)[ \t]*(?::[^=\n]*)?=[ \t]*(.+?)[ \t]*$", re.MULTILINE
)


def head_from_sources(versions_dir: Path) -> str | None:
    """The single head of the revision files in `versions_dir`, or None if unsure."""
    revisions: set[str] = set()
    parents: set[str] = set()
    try:
        paths = sorted(versions_dir.iterdir())
    except OSError:
        return None
    for path in paths:
        # alembic reads every *.py file of the directory but __init__ and editor lock files
        if not path.name.endswith(".py") or path.name.startswith(("__init__", ".#")):
            continue
        found: dict[str, list[object]] = {}
        try:
            source = path.read_text(encoding="utf-8")
            for match in _IDENTIFIER_LINE.finditer(source):
                found.setdefault(match[1], []).append(ast.literal_eval(match[2]))
        except (OSError, UnicodeDecodeError, ValueError, SyntaxError):
            return None
        if any(len(values) != 1 for values in found.values()):
            return None
        revision = found.get("revision", [None])[0]
        down = found.get("down_revision", [None])[0]
        if not isinstance(revision, str) or found.get("depends_on", [None])[0] is not None:
            return None
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list) and all(isinstance(d, str) for d in down):
            parents.update(down)
        elif down is not None:
            return None
        if revision in revisions:
            return None
        revisions.add(revision)
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision, or None when it was never migrated.

    What alembic's MigrationContext.get_current_revision() answers, without importing alembic.
    """

    def read(connection: Connection) -> tuple[str, ...]:
        if not connection.dialect.has_table(connection, VERSION_TABLE):
            return ()
        return tuple(connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())

    async with engine.connect() as conn:
        revisions = await conn.run_sync(read)
    if len(revisions) > 1:
        raise errors.ConfigError(
            "database", f"{VERSION_TABLE} holds more than one revision: {', '.join(revisions)}"
        )
    return revisions[0] if revisions else None


async def check_schema(engine: AsyncEngine) -> None:
    """Raise ConfigError unless the schema is at the newest revision."""
    try:
        current = await current_revision(engine)
    except (SQLAlchemyError, OSError) as exc:
        raise errors.DatabaseError(f"cannot reach the database: {describe_db_error(exc)}") from None
    head = head_revision()
    if current != head:
        state = "has no snapsync schema" if current is None else f"is at revision {current}"
        raise errors.ConfigError(
            "database", f"the database {state}, the code needs {head}: run `snapsync migrate`"
        )


def describe_db_error(exc: BaseException) -> str:
    """A one-line description of a database error, without URLs or credentials."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        inner = exc.orig.__cause__ or exc.orig
        text_ = f"{type(inner).__name__}: {inner}"
    else:
        text_ = f"{type(exc).__name__}: {exc}"
    return " ".join(text_.split())[:500]
