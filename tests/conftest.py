"""Shared fixtures: a real PostgreSQL (the local server or an embedded one), fresh databases
copied from a migrated template, and the CLI run as users run it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.engine import make_url

os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = f"snapsync_tpl_{os.getpid()}"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the reliability tests long: 200 kills, many more hypothesis examples",
    )


def _asyncpg_dsn(url: str, database: str | None = None) -> dict[str, object]:
    """Connection keywords for asyncpg from a SQLAlchemy-style URL (TCP or Unix socket)."""
    parsed = make_url(url.replace("+asyncpg", ""))
    host = parsed.host or parsed.query.get("host")
    if isinstance(host, tuple):
        host = host[0]
    return {
        "user": parsed.username or "postgres",
        "password": parsed.password,
        "host": host,
        "port": parsed.port or 5432,
        "database": database or parsed.database or "postgres",
    }


def with_database(url: str, database: str) -> str:
    """The same server, another database, as a postgresql+asyncpg URL."""
    parsed = make_url(url.replace("postgresql://", "postgresql+asyncpg://", 1))
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed.set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """The server the suite uses: SNAPSYNC_TEST_DATABASE_URL, or an embedded PostgreSQL."""
    configured = os.environ.get("SNAPSYNC_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    from app import embedded

    directory = Path(tempfile.mkdtemp(prefix="snapsync-pg-"))
    server = embedded.EmbeddedPostgres(directory / "pg")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def _admin(server_url: str) -> asyncpg.Connection:
    return await asyncpg.connect(**_asyncpg_dsn(server_url))  # type: ignore[arg-type]


@pytest.fixture(scope="session")
async def template_db(pg_server_url: str) -> AsyncIterator[str]:
    """A database migrated once per session; every test database is copied from it."""
    from app import db

    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    finally:
        await admin.close()
    engine = db.make_engine(with_database(pg_server_url, TEMPLATE), pool_size=1)
    try:
        await db.migrate(engine)
    finally:
        await engine.dispose()
    yield TEMPLATE
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(pg_server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test; its URL (postgresql+asyncpg://...)."""
    name = f"snapsync_test_{uuid.uuid4().hex[:12]}"
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    yield with_database(pg_server_url, name)
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def empty_database_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all (migration tests)."""
    name = f"snapsync_empty_{uuid.uuid4().hex[:12]}"
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(pg_server_url, name)
    admin = await _admin(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def sql(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection to the test database, for assertions in SQL."""
    conn = await asyncpg.connect(**_asyncpg_dsn(database_url))  # type: ignore[arg-type]
    try:
        yield conn
    finally:
        await conn.close()


@dataclass
class CliResult:
    """What a `snapsync` process printed and how it ended."""

    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    """A clean environment for the CLI: no SNAPSYNC_* from the caller, only what the test sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPSYNC_")}
    env.update(extra)
    return env


async def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> CliResult:
    """Run `python -m app ARGS` as a real process and wait for it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        *args,
        env=cli_env(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def run_cli_sync(*args: str, env: dict[str, str], cwd: Path, timeout: float = 120) -> CliResult:
    """The blocking form of run_cli, for tests without an event loop."""
    done = subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=cli_env(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory (no stray .env is read)."""
    return tmp_path


with contextlib.suppress(ImportError):
    import hypothesis

    hypothesis.settings.register_profile("ci", deadline=None, print_blob=True)
    hypothesis.settings.load_profile("ci")
