"""Start-up of the command line: each command imports only what it uses (alembic only to
migrate, rich only to draw, the simulator, the daemon and the demo only when run), and
`simulate`, whose options are the simulator's own command's, is listed as that command says."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from app import cli

from ..conftest import REPO, cli_env
from .simulated import serve

# Imported by commands that need them; a module named here covers its submodules.
DAEMON_ONLY = ("apscheduler", "prometheus_client", "aiohttp.web", "app.daemon", "app.health")
DEMO_ONLY = ("app.demo", "app.simulator", "app.embedded")
NOT_FOR_SYNC = ("alembic", "rich", "app.status", *DAEMON_ONLY, *DEMO_ONLY)

# Runs the command line like `python -m app ARGS`, then prints the loaded modules on stderr.
WITH_MODULES_AT_EXIT = """
import atexit, json, sys
atexit.register(lambda: print(json.dumps(sorted(sys.modules)), file=sys.stderr))
from app import cli
cli.main()
"""


def loaded(modules: set[str], prefixes: tuple[str, ...]) -> set[str]:
    """The modules of `modules` that are one of `prefixes` or inside one."""
    return {m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)}


def modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running `code`."""
    done = subprocess.run(
        [sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


async def run_with_modules(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, set[str]]:
    """Run the command line with ARGS; its exit code and the modules it had loaded."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        WITH_MODULES_AT_EXIT,
        *args,
        env=cli_env(env),
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    lines = err.decode().splitlines()
    assert lines, out.decode()
    return proc.returncode, set(json.loads(lines[-1]))


def test_help_imports_click_and_the_cli_only() -> None:
    modules = modules_after(
        "import sys\nfrom app import cli\nsys.argv = ['snapsync', '--help']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass"
    )
    assert {m for m in modules if m.startswith("app")} == {"app", "app.cli", "app.errors"}
    assert not loaded(modules, ("sqlalchemy", "pydantic", "aiohttp", *NOT_FOR_SYNC))


def test_what_sync_needs_leaves_out_alembic_and_the_rest() -> None:
    # The modules `sync` imports, and the schema check's head revision.
    modules = modules_after(
        "from app import auth, cli, client, db, logs, settings, sync\nassert db.head_revision()"
    )
    assert not loaded(modules, NOT_FOR_SYNC)


async def test_sync_and_status_check_the_schema_without_alembic(
    database_url: str, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=5, seed=3) as sim:
        env = {**sim.env(), "SNAPSYNC_DATABASE_URL": database_url}
        code, modules = await run_with_modules("sync", env=env, cwd=workdir)
        assert code == 0
        assert not loaded(modules, NOT_FOR_SYNC)
    code, modules = await run_with_modules("status", "--json", env=env, cwd=workdir)
    assert code == 0
    assert not loaded(modules, ("alembic", "rich", *DAEMON_ONLY, *DEMO_ONLY))
    code, modules = await run_with_modules("status", env=env, cwd=workdir)
    assert code == 0
    assert not loaded(modules, ("alembic", *DAEMON_ONLY, *DEMO_ONLY))


@pytest.mark.parametrize("name", ["run", "demo", "simulate"])
def test_a_command_that_imports_its_module_when_run_is_listed_by_its_own_help(name: str) -> None:
    with click.Context(cli.cli) as ctx:
        command = cli.cli.get_command(ctx, name)
        assert name in cli.cli.list_commands(ctx)
    assert isinstance(command, click.Command)
    assert command.name == name and not command.hidden
    assert command.get_short_help_str(300).startswith(("Sync every", "The one-command", "Serve"))


def test_simulate_is_listed_as_the_simulators_own_help_says() -> None:
    # `snapsync simulate` hands its arguments to the simulator's command, whose options it is.
    from app.simulator import command

    listed = cli.cli.commands["simulate"]
    # `--help` shortens each summary to the room left on the line: any width gives the same.
    for limit in range(10, 300):
        assert listed.get_short_help_str(limit) == command.simulate.get_short_help_str(limit), limit
    done = subprocess.run(
        [sys.executable, "-m", "app", "simulate", "-h"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.startswith("Usage: snapsync simulate [OPTIONS]")
    assert "--fault-502-html" in done.stdout
