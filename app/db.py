"""Database access: the engine for the configured URL, or for the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from app import errors
from app import settings as settings_module

log = logging.getLogger("app.db")

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def make_engine(url: str, *, pool_size: int = 5) -> AsyncEngine:
    """An asyncpg engine; pre-ping so a restarted server costs one failed checkout, not a crash."""
    return create_async_engine(
        settings_module.to_asyncpg_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args={
            "server_settings": {"application_name": "snapsync"},
            "timeout": 10,
        },
    )


@contextlib.asynccontextmanager
async def database_url(settings: settings_module.Settings) -> AsyncIterator[str]:
    """The configured URL, or the embedded server's (started here, stopped on exit if we did)."""
    configured = settings.async_database_url()
    if configured is not None:
        yield configured
        return
    from app import embedded

    server = embedded.EmbeddedPostgres(settings.data_dir)
    try:
        url = await asyncio.to_thread(server.start)
    except embedded.EmbeddedPostgresError as exc:
        raise errors.DatabaseError(f"embedded PostgreSQL in {settings.data_dir}: {exc}") from None
    try:
        yield url
    finally:
        await asyncio.to_thread(server.stop)


@contextlib.asynccontextmanager
async def open_engine(
    settings: settings_module.Settings, *, pool_size: int | None = None
) -> AsyncIterator[AsyncEngine]:
    """An engine sized for the configured concurrency, disposed on exit."""
    size = pool_size or settings.max_concurrent_projects * 2 + 2
    async with database_url(settings) as url:
        engine = make_engine(url, pool_size=size)
        try:
            yield engine
        finally:
            await engine.dispose()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration without any ini file; the migrations ship inside the package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        config.attributes["connection"] = connection
    if url is not None:
        config.attributes["url"] = url
    return config


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to `revision` (the newest by default)."""

    def upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    async with engine.connect() as conn:
        await conn.run_sync(upgrade)
        await conn.commit()


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to `revision` (tests and operators undoing a migration)."""

    def run(connection: Connection) -> None:
        command.downgrade(alembic_config(connection), revision)

    async with engine.connect() as conn:
        await conn.run_sync(run)
        await conn.commit()


def head_revision() -> str:
    """The newest revision the installed code knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    """The database's revision, or None when it was never migrated."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


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


async def ping(engine: AsyncEngine) -> None:
    """One round trip, to tell whether the database answers."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def describe_db_error(exc: BaseException) -> str:
    """A one-line description of a database error, without URLs or credentials."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        inner = exc.orig.__cause__ or exc.orig
        text_ = f"{type(inner).__name__}: {inner}"
    else:
        text_ = f"{type(exc).__name__}: {exc}"
    return " ".join(text_.split())[:500]
