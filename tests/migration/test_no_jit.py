"""Migration 0009: no JIT in snapsync's database, for its own sessions and every other one."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import db

from ..conftest import _asyncpg_dsn

DATABASE_SETTINGS = """
SELECT COALESCE(array_agg(c), '{}') FROM pg_db_role_setting AS s
CROSS JOIN LATERAL unnest(s.setconfig) AS c
WHERE s.setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND s.setrole = 0
"""


async def _fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(**_asyncpg_dsn(url))  # type: ignore[arg-type]
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_the_database_default_is_set_and_taken_back(empty_database_url: str) -> None:
    engine = db.make_engine(empty_database_url, pool_size=1)
    try:
        await db.migrate(engine, "0008")
        assert await _fetchval(empty_database_url, DATABASE_SETTINGS) == []
        assert await _fetchval(empty_database_url, "SHOW jit") == "on"  # the server's default
        await db.migrate(engine)
        assert await _fetchval(empty_database_url, DATABASE_SETTINGS) == ["jit=off"]
        # A new session of any client (Grafana, psql) starts without JIT.
        assert await _fetchval(empty_database_url, "SHOW jit") == "off"
        await db.downgrade(engine, "0008")
        assert await _fetchval(empty_database_url, DATABASE_SETTINGS) == []
        assert await _fetchval(empty_database_url, "SHOW jit") == "on"
    finally:
        await engine.dispose()


async def test_snapsyncs_own_sessions_run_without_jit(database_url: str) -> None:
    # Test databases are copies of a template: CREATE DATABASE ... TEMPLATE does not carry the
    # database's settings, so this is the connection's own.
    assert await _fetchval(database_url, DATABASE_SETTINGS) == []
    engine = db.make_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SHOW jit"))).scalar_one() == "off"
    finally:
        await engine.dispose()


async def test_a_role_that_may_not_alter_the_database_gets_a_warning_not_a_failure(
    empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    role = f"snapsync_migrator_{uuid.uuid4().hex[:8]}"
    owner = db.make_engine(empty_database_url, pool_size=1)
    database = make_url(empty_database_url).database
    try:
        await db.migrate(owner, "0008")
        async with owner.begin() as conn:
            for statement in (
                f"CREATE ROLE {role} LOGIN",
                f"GRANT UPDATE, SELECT ON alembic_version TO {role}",
                f'GRANT CONNECT ON DATABASE "{database}" TO {role}',
            ):
                await conn.execute(text(statement))
        as_role = make_url(empty_database_url).set(username=role, password=None)
        engine = db.make_engine(as_role.render_as_string(hide_password=False), pool_size=1)
        try:
            await db.migrate(engine)
            assert await db.current_revision(engine) == db.head_revision()
        finally:
            await engine.dispose()
        assert await _fetchval(empty_database_url, DATABASE_SETTINGS) == []
        warned = [r.getMessage() for r in caplog.records if r.name == "snapsync.migrate"]
        assert any(
            f"role {role} may not change the defaults of database {database}" in m
            and f"ALTER DATABASE {database} SET jit = off" in m
            for m in warned
        ), warned
    finally:
        async with owner.begin() as conn:
            await conn.execute(text(f"DROP OWNED BY {role}"))
            await conn.execute(text(f"DROP ROLE {role}"))
        await owner.dispose()
