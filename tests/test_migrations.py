"""Migrations: stairway (up, down, up for each revision) and models == migrations."""

from __future__ import annotations

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app import db, models

from .conftest import _asyncpg_dsn


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(db.alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(**_asyncpg_dsn(url))  # type: ignore[arg-type]
    try:
        rows = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
    finally:
        await conn.close()
    return {r["table_name"] for r in rows}


async def test_stairway_up_down_up_every_revision(empty_database_url: str) -> None:
    engine = db.make_engine(empty_database_url, pool_size=1)
    try:
        previous = "base"
        for revision in _revisions():
            await db.migrate(engine, revision)
            await db.downgrade(engine, previous)
            await db.migrate(engine, revision)
            previous = revision
        assert await db.current_revision(engine) == db.head_revision()
        await db.downgrade(engine, "base")
        assert await _tables(empty_database_url) <= {"alembic_version"}
    finally:
        await engine.dispose()


async def test_contract_relations_exist_after_migrate(database_url: str) -> None:
    assert {"snapshots", "snapshot_status_history", "sync_runs"} <= await _tables(database_url)


async def test_models_and_migrations_agree(database_url: str) -> None:
    engine = db.make_engine(database_url, pool_size=1)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection)
        return list(compare_metadata(context, models.Base.metadata))

    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []
