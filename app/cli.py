"""The `snapsync` command line: thin commands, each one short coroutine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import NoReturn, TypeVar

import click

import app
from app import auth, client, db, errors, logs, sync
from app import settings as settings_module

T = TypeVar("T")

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def fail(message: str, code: int) -> NoReturn:
    """Print one line on stderr and exit with `code`."""
    click.echo(f"snapsync: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Configuration errors exit 2 and database errors exit 1, each as one line."""
    try:
        yield
    except errors.ConfigError as exc:
        fail(f"configuration error: {exc}", EXIT_CONFIG)
    except errors.DatabaseError as exc:
        fail(f"database error: {exc}", EXIT_FAILED)


def load(**overrides: object) -> settings_module.Settings:
    """Settings, with logging set up from them."""
    settings = settings_module.load_settings(**overrides)
    logs.setup(fmt=settings.log_format, level=settings.log_level, secrets=secret_values(settings))
    return settings


def secret_values(settings: settings_module.Settings) -> list[str]:
    """Every secret the settings hold, for the log redactor."""
    values = [
        settings.access_key,
        settings.secret_key,
        settings.security_token,
        settings.iam_password,
        settings.auth_token,
    ]
    found = [v.get_secret_value() for v in values if v is not None]
    if settings.database_url is not None:
        password = _url_password(settings.database_url.get_secret_value())
        if password:
            found.append(password)
    return found


def _url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    try:
        return make_url(settings_module.to_asyncpg_url(url)).password
    except Exception:  # a malformed URL fails later with its own message
        return None


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine; Ctrl-C ends it without a traceback."""

    async def main() -> T:
        return await factory()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        fail("interrupted", 130)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(app.__version__, prog_name="snapsync")
def cli() -> None:
    """Keep a PostgreSQL record of Huawei Cloud Workspace desktop snapshots and their history."""


@cli.command()
def migrate() -> None:
    """Bring the database schema to the newest revision."""
    with reported_errors():
        settings = load()
        if settings.log_level != "DEBUG":
            logging.getLogger("alembic").setLevel(logging.INFO)

        async def go() -> str:
            async with db.open_engine(settings, pool_size=1) as engine:
                try:
                    await db.migrate(engine)
                    return await db.current_revision(engine) or "?"
                except errors.SnapsyncError:
                    raise
                except Exception as exc:
                    fail(f"migration failed: {db.describe_db_error(exc)}", EXIT_FAILED)

        revision = run_async(go)
    click.echo(f"database schema is at revision {revision} (newest)")


@cli.command(name="sync")
@click.option(
    "--project",
    "project_ids",
    multiple=True,
    metavar="ID",
    help="Sync only this project (ID or ID@REGION); repeatable.",
)
def sync_command(project_ids: tuple[str, ...]) -> None:
    """One full sync pass of every configured project (or those named), in parallel."""
    with reported_errors():
        settings = load()
        projects = select_projects(settings, project_ids)
        settings.require_credentials()
        results = run_async(lambda: _sync(settings, projects))
    for result in results:
        click.echo(result.summary())
    failed = [r for r in results if r.status == "failed"]
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


async def _sync(
    settings: settings_module.Settings,
    projects: list[settings_module.Project],
) -> list[sync.RunResult]:
    async with db.open_engine(settings) as engine:
        await db.check_schema(engine)
        async with client.new_session(settings) as session:
            authenticator = auth.build_authenticator(settings, session)
            workspace = client.WorkspaceClient(
                session=session, settings=settings, authenticator=authenticator
            )
            try:
                syncer = sync.Syncer(engine=engine, client=workspace, settings=settings)
                return await syncer.sync_all(projects)
            finally:
                await authenticator.close()


def select_projects(
    settings: settings_module.Settings, named: tuple[str, ...]
) -> list[settings_module.Project]:
    """The configured projects, or those named on the command line."""
    if not named:
        return settings.require_projects()
    configured = {p.project_id: p for p in settings.project_list()}
    chosen: list[settings_module.Project] = []
    for entry in named:
        try:
            (parsed,) = settings_module.parse_projects(entry, settings.region)
        except ValueError:
            raise errors.ConfigError("--project", f"{entry!r} is not ID or ID@REGION") from None
        if "@" not in entry and parsed.project_id in configured:
            parsed = configured[parsed.project_id]
        if parsed not in chosen:
            chosen.append(parsed)
    return chosen


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(as_json: bool) -> None:
    """Per project: last run, outcome and counts, age of the last success, snapshots."""
    from app import status as status_module

    with reported_errors():
        settings = load()

        async def go() -> list[status_module.ProjectStatus]:
            async with db.open_engine(settings, pool_size=1) as engine:
                await db.check_schema(engine)
                return await status_module.collect(engine)

        statuses = run_async(go)
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([s.as_json(now) for s in statuses], indent=2))
    else:
        if sys.stdout.isatty():
            status_module.print_report(statuses, now)
        else:
            click.echo(status_module.render_text(statuses, now))


def _attach_optional_commands() -> None:
    try:
        from app.simulator import command as simulator_command
    except ImportError:  # pragma: no cover - the simulator ships with the package
        return
    cli.add_command(simulator_command.simulate)
    from app import daemon, demo

    cli.add_command(daemon.run_command)
    cli.add_command(demo.demo_command)


_attach_optional_commands()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="snapsync")
