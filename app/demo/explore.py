"""How to explore the data a demo left: the psql commands it prints, and `demo --psql`."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from app import embedded, errors
from app import settings as settings_module
from app.embedded import programs


def self_command() -> str:
    """How the user invoked snapsync, to print commands they can paste."""
    argv0 = sys.argv[0]
    if Path(argv0).name == "snapsync":
        on_path = shutil.which("snapsync")
        if on_path and Path(on_path).resolve() == Path(argv0).resolve():
            return "snapsync"
        return shlex.quote(argv0)
    return f"{shlex.quote(sys.executable)} -m app"


def libpq_url(url: str) -> tuple[str, str | None]:
    """A psql-usable URL without its password, and the password apart (for PGPASSWORD)."""
    parsed = make_url(settings_module.to_asyncpg_url(url))
    password = parsed.password
    plain = URL.create(
        drivername="postgresql",
        username=parsed.username,
        host=parsed.host,
        port=parsed.port,
        database=parsed.database,
        query=parsed.query,
    )
    return plain.render_as_string(hide_password=False), (
        None if password is None else str(password)
    )


def explore_lines(url: str, server: embedded.EmbeddedPostgres | None) -> str:
    """The commands that open psql on the data the demo left (at `url`, on `server` if embedded)."""
    me = self_command()
    example = '"SELECT status, count(*) FROM snapshots GROUP BY 1"'
    if server is None:
        url, password = libpq_url(url)
        hint = " (it asks for the password)" if password else ""
        return (
            f"Explore the data{hint}:\n  {shlex.join(['psql', url])}\n"
            f"  {me} demo --psql -- -c {example}"
        )
    return (
        "Explore the data with psql (the embedded PostgreSQL stops with the demo; this starts\n"
        "it for the psql session and stops it afterwards):\n"
        f"  {me} demo --psql\n"
        f"  {me} demo --psql -- -c {example}\n"
        "While a snapsync process keeps the embedded server running, psql itself works too:\n"
        f"  {server.psql_command}"
    )


def open_psql(settings: settings_module.Settings, psql_args: Sequence[str]) -> int:
    """Run psql on the demo's database (starting the embedded server for it); its exit code."""
    configured = settings.async_database_url()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if configured is not None:
        url, password = libpq_url(configured)
        if password:
            env["PGPASSWORD"] = password
        psql = shutil.which("psql") or str(programs.program("psql"))
        return _run_foreground([psql, url, *psql_args], env)
    if not (settings.data_dir / embedded.PGDATA_DIRNAME / "PG_VERSION").exists():
        raise errors.ConfigError(
            "SNAPSYNC_DATA_DIR",
            f"no embedded PostgreSQL in {settings.data_dir.resolve()}: run `snapsync demo` first",
        )
    with embedded.EmbeddedPostgres(settings.data_dir) as server:
        return _run_foreground([*shlex.split(server.psql_command), *psql_args], env)


def _run_foreground(command: list[str], env: dict[str, str]) -> int:
    # psql handles Ctrl-C itself (it cancels the query); this process must not die of it
    # while psql runs, or the embedded server would be stopped under it. A Python handler
    # (unlike SIG_IGN) is reset to the default in the child.
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        return subprocess.run(command, env=env, check=False).returncode  # noqa: S603
    finally:
        signal.signal(signal.SIGINT, previous)
