"""Migrations: stairway (up, down, up for each revision) and models == migrations; the
schema check's own reading of the revisions (without alembic) against alembic's."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from app import db, models

from ..conftest import _asyncpg_dsn


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
        assert await db.current_revision(engine) is None  # no alembic_version table
        previous = "base"
        for revision in _revisions():
            await db.migrate(engine, revision)
            await db.downgrade(engine, previous)
            assert await db.current_revision(engine) == (None if previous == "base" else previous)
            await db.migrate(engine, revision)
            assert await db.current_revision(engine) == revision
            previous = revision
        assert await db.current_revision(engine) == db.head_revision()
        await db.check_schema(engine)
        await db.downgrade(engine, "base")
        assert await db.current_revision(engine) is None  # an empty alembic_version table
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


def test_the_schema_check_reads_alembics_head_from_the_files() -> None:
    alembic_head = ScriptDirectory.from_config(db.alembic_config()).get_current_head()
    # Read without falling back to alembic, and the same answer.
    assert db.head_from_sources(db.VERSIONS_DIR) == alembic_head
    assert db.head_revision() == alembic_head == _revisions()[-1]


def _revision_file(directory: Path, name: str, body: str) -> None:
    directory.mkdir(exist_ok=True)
    (directory / name).write_text(
        f'"""A revision."""\n\n{body}\n\n\ndef upgrade() -> None:\n    pass\n'
    )


def test_head_from_sources_follows_alembics_conventions(tmp_path: Path) -> None:
    _revision_file(tmp_path, "a.py", 'revision: str = "a"\ndown_revision: str | None = None')
    _revision_file(tmp_path, "b.py", "revision = 'b'  # a comment\ndown_revision = 'a'")
    (tmp_path / "__init__.py").write_text('revision = "not a revision"\n')
    (tmp_path / "notes.txt").write_text('revision = "not a revision"\n')
    assert db.head_from_sources(tmp_path) == "b"
    _revision_file(tmp_path, "c.py", 'revision = "c"\ndown_revision = "a"')
    assert db.head_from_sources(tmp_path) is None  # two heads: alembic's to answer
    _revision_file(tmp_path, "m.py", 'revision = "m"\ndown_revision = ("b", "c")')
    assert db.head_from_sources(tmp_path) == "m"  # a merge


@pytest.mark.parametrize(
    "body",
    [
        "revision = NAME\ndown_revision = None",  # not a literal
        'revision = "x"\nrevision = "y"\ndown_revision = None',  # which one?
        'revision = "x"\ndown_revision = None\ndepends_on = "other"',
        "down_revision = None",  # no revision line
    ],
)
def test_head_from_sources_leaves_what_it_cannot_read_to_alembic(tmp_path: Path, body: str) -> None:
    _revision_file(tmp_path, "x.py", body)
    assert db.head_from_sources(tmp_path) is None
    assert db.head_from_sources(tmp_path / "missing") is None
