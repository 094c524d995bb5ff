"""Alembic environment: async, the URL from snapsync's settings (or a connection handed in)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from alembic import context
from sqlalchemy import pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app import models, settings

config = context.config
target_metadata = models.Base.metadata

# One migrator at a time: several replicas may run `snapsync migrate` as they start.
MIGRATION_LOCK_KEY = 0x534E_4150_4D49_4752  # "SNAPMIGR"


def _url() -> str:
    url = config.attributes.get("url")
    if url:
        return settings.to_asyncpg_url(str(url))
    configured = settings.load_settings().async_database_url()
    if configured is None:
        raise RuntimeError(
            "SNAPSYNC_DATABASE_URL is not set; run `snapsync migrate`, which also "
            "starts the embedded PostgreSQL when no URL is configured"
        )
    return configured


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


log = logging.getLogger("snapsync.migrate")


def _forward_server_warning(_conn: Any, message: Any) -> None:
    severity = getattr(message, "severity_en", None) or getattr(message, "severity", "")
    level = logging.WARNING if severity == "WARNING" else logging.DEBUG
    log.log(level, "%s", message.message)


@contextlib.contextmanager
def server_warnings_logged(connection: Connection) -> Iterator[None]:
    """What a migration RAISEs as a WARNING (a right it lacks, what an administrator should run)
    goes to snapsync's log: asyncpg drops notices that no listener takes."""
    raw = getattr(connection.connection, "driver_connection", None)
    if raw is None or not hasattr(raw, "add_log_listener"):
        yield
        return
    raw.add_log_listener(_forward_server_warning)
    try:
        yield
    finally:
        raw.remove_log_listener(_forward_server_warning)


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with server_warnings_logged(connection), context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        context.run_migrations()


async def run_async_migrations() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
