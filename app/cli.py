"""The `snapsync` command line: thin commands, each one short coroutine.

Each command imports what it uses when it runs, so that start-up costs only what the command
needs: `--help` imports click, `sync` neither alembic (only `migrate` does) nor rich, and
`run`, `demo` and `simulate` are imported only when named (LAZY_COMMANDS).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

import app
from app import errors

if TYPE_CHECKING:
    from app import settings as settings_module
    from app import sync

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
    from app import logs
    from app import settings as settings_module

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

    from app import settings as settings_module

    try:
        return make_url(settings_module.to_asyncpg_url(url)).password
    except Exception:  # a malformed URL fails later with its own message
        return None


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run one coroutine; Ctrl-C ends it without a traceback."""
    import asyncio

    async def main() -> T:
        return await factory()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        fail("interrupted", 130)


class LazyGroup(click.Group):
    """A group whose `lazy_commands` (name: module, attribute, summary) are imported only when
    named; the listing of `--help` shows their summary, the first paragraph of their help."""

    def __init__(
        self, *args: object, lazy_commands: dict[str, tuple[str, str, str]], **kwargs: object
    ):
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            module, attribute, _ = self.lazy_commands[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listing = click.Group(commands=dict(self.commands))
        for name, (_, _, summary) in self.lazy_commands.items():
            if name not in listing.commands:
                listing.add_command(click.Command(name, help=summary))
        listing.format_commands(ctx, formatter)


# tests/test_cli.py checks each summary against the command's own help.
LAZY_COMMANDS = {
    "run": (
        "app.daemon",
        "run_command",
        "Sync every project on its interval until SIGTERM/SIGINT, serving /healthz, /readyz"
        " and /metrics.",
    ),
    "demo": (
        "app.demo",
        "demo_command",
        "The one-command tour: embedded PostgreSQL, the API simulator and the daemon for a"
        " minute, with live progress, then a report and the psql command to explore the data.",
    ),
    "simulate": (
        "app.simulator.command",
        "simulate",
        "Serve a simulated Workspace snapshots API (and IAM token endpoint) whose snapshots"
        " change over time. Prints the settings snapsync needs; stops cleanly on SIGINT/SIGTERM.",
    ),
}


@click.group(
    cls=LazyGroup,
    lazy_commands=LAZY_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(app.__version__, prog_name="snapsync")
def cli() -> None:
    """Keep a PostgreSQL record of Huawei Cloud Workspace desktop snapshots and their history."""


@cli.command()
def migrate() -> None:
    """Bring the database schema to the newest revision."""
    from app import db

    with reported_errors():
        settings = load()
        if settings.log_level != "DEBUG":
            logging.getLogger("alembic").setLevel(logging.INFO)
            # Alembic 1.17+ announces each of its plugins at INFO: not news for an operator.
            logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

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
    from app import auth, client, db, sync

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
    from app import settings as settings_module

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
@click.option(
    "--project",
    "project_ids",
    multiple=True,
    metavar="ID",
    help="Only this project (shown in full); repeatable.",
)
def status(as_json: bool, project_ids: tuple[str, ...]) -> None:
    """Per project: last run, outcome and counts, age of the last success, snapshots."""
    from app import db
    from app import status as status_module

    with reported_errors():
        settings = load()

        async def go() -> list[status_module.ProjectStatus]:
            async with db.open_engine(settings, pool_size=1) as engine:
                await db.check_schema(engine)
                return await status_module.collect(engine, project_ids=list(project_ids))

        statuses = run_async(go)
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([s.as_json(now) for s in statuses], indent=2))
    else:
        detail = bool(project_ids) or len(statuses) <= status_module.DETAILED_UP_TO
        if sys.stdout.isatty():
            status_module.print_report(statuses, now, detail=detail)
        else:
            click.echo(status_module.render_text(statuses, now, detail=detail))


@cli.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
def prune(dry_run: bool) -> None:
    """Apply the retention settings now (old runs, long-deleted snapshots)."""
    from app import db, retention

    with reported_errors():
        settings = load()
        policy = settings.retention_policy()

        async def go() -> retention.Outcome:
            async with db.open_engine(settings, pool_size=1) as engine:
                await db.check_schema(engine)
                try:
                    return await retention.prune(engine, policy, dry_run=dry_run)
                except errors.SnapsyncError:
                    raise
                except Exception as exc:
                    fail(f"prune failed: {db.describe_db_error(exc)}", EXIT_FAILED)

        outcome = run_async(go)
    for line in outcome.lines(policy):
        click.echo(line)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="snapsync")
