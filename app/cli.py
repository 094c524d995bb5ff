"""The `snapsync` command line: every command, each a thin function.

Each command imports what it uses when it runs, so that start-up costs only what the command
needs: `--help` imports click, `sync` neither alembic (only `migrate` does) nor rich (unless
its progress is drawn on a terminal), and the daemon, the demo and the simulator are imported
only by `run`, `demo` and `simulate`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn, TypeVar

import click

import app
from app import errors

if TYPE_CHECKING:
    from app import runs, runtime
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
    except errors.DiscoveryError as exc:
        fail(f"discovery failed: {exc}", EXIT_FAILED)
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


@click.group(
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
@click.option(
    "--quiet", "-q", is_flag=True, help="No live progress on a terminal: the summary lines only."
)
def sync_command(project_ids: tuple[str, ...], quiet: bool) -> None:
    """One full sync pass of every configured project (or those named), in parallel.

    On a terminal, stderr shows a live line per project and an overall bar while it runs.
    With SNAPSYNC_PROJECTS=auto and no --project, the projects come from IAM first.
    """
    with reported_errors():
        settings = load()
        projects = select_projects(settings, project_ids)
        settings.require_credentials()
        live = not quiet and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        if live and "log_level" not in settings.model_fields_set:
            # The view says what INFO lines would; warnings and errors still print above it.
            logging.getLogger().setLevel(logging.WARNING)
        discover = settings.discovers and not project_ids
        results = run_async(lambda: sync_projects(settings, projects, live=live, discover=discover))
    for result in results:
        click.echo(result.summary())
    failed = [r for r in results if r.status == "failed"]
    sys.exit(EXIT_FAILED if failed else EXIT_OK)


async def sync_projects(
    settings: settings_module.Settings,
    projects: list[settings_module.Project],
    *,
    live: bool,
    discover: bool = False,
) -> list[runs.RunResult]:
    """One pass over `projects` (with `discover`, over those IAM lists); with `live`, drawn by
    app.progress on stderr meanwhile."""
    from app import runtime

    if not live:
        async with runtime.open_runtime(settings) as built:
            assert built is not None  # without `ready`, a wrong schema raises instead
            if discover:
                projects = await discovered(built, settings)
            return await built.syncer.sync_all(projects)
    from rich.console import Console

    from app import progress

    tracker = progress.Tracker([p.project_id for p in projects])
    progress.follow_stderr()
    async with runtime.open_runtime(
        settings,
        on_request=tracker.on_request,
        on_retry=tracker.on_retry,
        on_wait=tracker.on_wait,
        on_progress=tracker.on_progress,
        on_finished=tracker.on_finished,
    ) as built:
        assert built is not None
        if discover:
            # Before the view: the probes of the discovery are no lines of it.
            projects = await discovered(built, settings)
            tracker.project_ids = [p.project_id for p in projects]
            tracker.lines = {pid: progress.ProjectLine(pid) for pid in tracker.project_ids}
        tracker.started = time.monotonic()
        async with progress.shown(progress.sync_view(tracker), Console(stderr=True)):
            return await built.syncer.sync_all(projects)


async def discovered(
    built: runtime.Runtime, settings: settings_module.Settings
) -> list[settings_module.Project]:
    """SNAPSYNC_PROJECTS=auto: the projects IAM lists that Workspace serves; ConfigError when
    there are none."""
    from app import discovery

    found = await discovery.discover(built, settings)
    nothing = found.nothing_served()
    if nothing is not None:
        raise nothing
    return found.projects


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
        else:
            settings.check_region(parsed.region, variable="--project")
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

        async def go() -> tuple[
            list[status_module.ProjectStatus], status_module.DiscoveryRecord | None
        ]:
            async with db.open_engine(settings, pool_size=1) as engine:
                await db.check_schema(engine)
                found = await status_module.collect(engine, project_ids=list(project_ids))
                return found, await status_module.collect_discovery(engine)

        statuses, discovered = run_async(go)
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([s.as_json(now) for s in statuses], indent=2))
    else:
        detail = bool(project_ids) or len(statuses) <= status_module.DETAILED_UP_TO
        if sys.stdout.isatty():
            status_module.print_report(statuses, now, detail=detail)
        else:
            click.echo(status_module.render_text(statuses, now, detail=detail))
        if not project_ids:
            click.echo(status_module.source_line(settings, [s.project_id for s in statuses]))
            if settings.discovers:
                for line in status_module.discovery_lines(discovered, now):
                    click.echo(line)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Count what would be removed; remove nothing.")
def prune(dry_run: bool) -> None:
    """Apply the retention settings now (old runs, long-deleted snapshots)."""
    from app import coverage, db, retention, store

    with reported_errors():
        settings = load()
        policy = settings.retention_policy()

        async def go() -> retention.Outcome:
            async with db.open_engine(settings, pool_size=1) as engine:
                await db.check_schema(engine)
                try:
                    with store.database_errors():
                        return await retention.prune(
                            engine, policy, refresh=coverage.refresh, dry_run=dry_run
                        )
                except errors.DatabaseError as exc:
                    fail(f"prune failed: {exc}", EXIT_FAILED)

        outcome = run_async(go)
    for line in outcome.lines(policy):
        click.echo(line)


@cli.command(name="run")
def run() -> None:
    """Sync every project on its interval until SIGTERM/SIGINT, serving /healthz, /readyz and
    /metrics."""
    import signal

    from app import daemon

    # A signal during start-up (settings, the embedded database) still means a clean stop.
    started: list[daemon.Daemon] = []
    early: list[int] = []

    def stop_early(signum: int, frame: object) -> None:
        if started:
            started[0].stop()
        else:
            early.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop_early)
    with reported_errors():
        settings = load()
        settings.require_projects()
        settings.require_credentials()
        runner = daemon.Daemon(settings, shutdown_grace=daemon.shutdown_grace(settings))
        started.append(runner)
        if early:
            daemon.log.info("received %s while starting: stopping", signal.Signals(early[0]).name)
            runner.stop()
        run_async(runner.run)


@cli.command(name="demo", context_settings={"show_default": True})
@click.option(
    "--duration",
    type=click.FloatRange(min=1.0),
    default=60.0,
    help="Seconds the daemon runs before the report.",
)
@click.option("--projects", type=click.IntRange(1, 64), default=4, help="Simulated projects.")
@click.option(
    "--snapshots",
    type=click.IntRange(0, 200_000),
    default=2000,
    help="Snapshots per simulated project.",
)
@click.option("--seed", type=int, default=1, help="Same seed, same projects.")
@click.option(
    "--psql",
    "psql",
    is_flag=True,
    help="Instead of the demo: open psql on the data it left (extra arguments after --).",
)
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def demo_command(
    *,
    duration: float,
    projects: int,
    snapshots: int,
    seed: int,
    psql: bool,
    psql_args: tuple[str, ...],
) -> None:
    """The one-command tour: embedded PostgreSQL, the API simulator and the daemon for a
    minute, with live progress, then a report and the psql command to explore the data.

    SNAPSYNC_PROJECTS and the credentials are ignored: the demo syncs its own simulator.
    SNAPSYNC_DATABASE_URL, when set, is used instead of the embedded PostgreSQL.
    """
    from app import settings as settings_module
    from app.demo import dashboard

    if psql_args and not psql:
        raise click.UsageError(f"unexpected argument {psql_args[0]!r} (psql arguments need --psql)")
    with reported_errors():
        base = settings_module.load_settings()
        dashboard.setup_logging(base, secret_values(base))
        if psql:
            from app.demo import explore

            sys.exit(explore.open_psql(base, psql_args))
        from app.demo import tour

        options = tour.DemoOptions(
            duration=duration, projects=projects, snapshots=snapshots, seed=seed
        )
        console = dashboard.make_console()
        run_async(lambda: tour.run_demo(base, options, console))


@cli.command(
    name="simulate",
    context_settings={"ignore_unknown_options": True},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def simulate(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Serve a simulated Workspace snapshots API (and IAM token endpoint) whose snapshots
    change over time. Prints the settings snapsync needs; stops cleanly on SIGINT/SIGTERM."""
    # The simulator parses its own options (app.simulator.command): their defaults are its own.
    from app.simulator import command

    command.simulate.main(
        list(args), prog_name=ctx.command_path, help_option_names=ctx.help_option_names
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="snapsync")
