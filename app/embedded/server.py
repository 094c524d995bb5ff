"""The server process of a cluster: what ``postmaster.pid`` says, starting and stopping it,
and clearing what a server that died left behind.

The server listens only on a Unix socket (no TCP), inside the cluster directory unless that
path is too long for a socket, in which case it lives in a private directory under ``/tmp``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shlex
import shutil
import signal
import tempfile
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped]

from app.embedded import programs
from app.embedded.programs import EmbeddedPostgresError, ServerUser

logger = logging.getLogger(__name__)

PORT = 5432
SOCKET_FILENAME = f".s.PGSQL.{PORT}"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
FALLBACK_SOCKET_PREFIX = "snapsync-pg-"
# Short on every Unix; mkdtemp makes a private directory there, so no S108 risk.
FALLBACK_SOCKET_PARENT = Path("/tmp")  # noqa: S108

STOP_TIMEOUT = 30.0
ORPHAN_TIMEOUT = 5.0
POLL_INTERVAL = 0.05


@dataclasses.dataclass(frozen=True)
class Postmaster:
    """What ``postmaster.pid`` says about a server: written by PostgreSQL as it starts."""

    pid: int
    start_time: int
    socket_dir: Path | None
    port: int
    status: str

    @classmethod
    def from_text(cls, text: str) -> Postmaster | None:
        """Parse the file's content; None when it is incomplete (a server still writing it)."""
        lines = text.splitlines()
        if len(lines) < 5:
            return None
        try:
            pid, start_time, port = int(lines[0]), int(lines[2]), int(lines[3])
        except ValueError:
            return None
        socket_dir = lines[4].strip().split(",")[0].strip()
        status = lines[7].strip() if len(lines) > 7 else ""
        return cls(pid, start_time, Path(socket_dir) if socket_dir else None, port, status)

    @property
    def identity(self) -> str:
        """One run of the server: its PID alone may be reused after it is gone."""
        return f"{self.pid} {self.start_time}"


def socket_dir_usable(socket_dir: Path) -> bool:
    """Whether the server's socket fits in `socket_dir` and the directory fits in a URL."""
    socket_path = os.fsencode(socket_dir / SOCKET_FILENAME)
    # SQLAlchemy reads a comma in ?host= as a list of hosts.
    return len(socket_path) <= MAX_SOCKET_PATH_BYTES and "," not in str(socket_dir)


def current(pgdata: Path) -> Postmaster | None:
    """The server ``postmaster.pid`` names, if that server runs."""
    postmaster = _read(pgdata)
    return postmaster if postmaster is not None and _runs(postmaster.pid, pgdata) else None


def healthy(pgdata: Path, log: Path) -> Postmaster | None:
    """The server running on `pgdata` once it accepts connections; None when none runs,
    after clearing what a dead one left behind."""
    began = time.monotonic()
    while True:
        try:
            postmaster = Postmaster.from_text((pgdata / "postmaster.pid").read_text())
        except FileNotFoundError:
            return None
        if postmaster is None and time.monotonic() - began < 1.0:
            time.sleep(POLL_INTERVAL)  # a server writing the file right now
            continue
        if postmaster is None or not _runs(postmaster.pid, pgdata):
            _clear_dead_server(pgdata, postmaster)
            return None
        if postmaster.socket_dir is None:
            raise EmbeddedPostgresError(
                f"the PostgreSQL server (PID {postmaster.pid}) running on {pgdata} has no Unix "
                f"socket, so snapsync cannot attach to it; stop it with `kill {postmaster.pid}` "
                "and start snapsync again"
            )
        if programs.accepts_connections(postmaster.socket_dir, postmaster.port):
            return postmaster
        if time.monotonic() - began > programs.START_TIMEOUT:
            raise EmbeddedPostgresError(
                f"the PostgreSQL server (PID {postmaster.pid}) running on {pgdata} does not "
                f"accept connections after {programs.START_TIMEOUT:.0f} s (status "
                f"{postmaster.status!r}); see {log}, then stop it with `kill {postmaster.pid}` "
                "and start snapsync again"
            )
        time.sleep(POLL_INTERVAL)


def launch(pgdata: Path, user: ServerUser, log: Path) -> Postmaster:
    """Start a server on the cluster `pgdata` as `user`, logging to `log`; wait until it is up."""
    began = time.monotonic()
    _wait_for_orphans(pgdata)
    socket_dir = pgdata
    if not socket_dir_usable(socket_dir):
        socket_dir = _make_fallback_socket_dir(user)
        logger.info(
            "Data directory path is too long for a Unix socket; the socket lives in %s",
            socket_dir,
        )
    _remove_stale_socket(socket_dir, PORT, pgdata)
    options = ["-c", "listen_addresses=", "-c", f'unix_socket_directories="{socket_dir}"']
    programs.run_as(
        user,
        "pg_ctl",
        *("start", "-D", str(pgdata), "-w", "-t", str(int(programs.START_TIMEOUT)), "-s"),
        *("-l", str(log), "-o", shlex.join([*options, "-p", str(PORT)])),
        cwd=pgdata,
        what=f"start the server in {pgdata}",
        log=log,
    )
    postmaster = current(pgdata)
    if postmaster is None:
        raise EmbeddedPostgresError(
            f"PostgreSQL in {pgdata} exited right after starting; see {log}{programs.log_tail(log)}"
        )
    logger.info(
        "Started embedded PostgreSQL (PID %d, user %s) in %s in %.2f s",
        postmaster.pid,
        user.name,
        pgdata,
        time.monotonic() - began,
    )
    return postmaster


def shutdown(postmaster: Postmaster, pgdata: Path) -> None:
    """Stop the server: a fast shutdown, an immediate one if that hangs; raise if it stays."""
    # SIGINT is PostgreSQL's "fast" shutdown; SIGQUIT its "immediate" one (crash recovery
    # on the next start, which is safe but slower).
    for signum, timeout in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, ORPHAN_TIMEOUT)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(postmaster.pid, signum)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _runs(postmaster.pid, pgdata):
                logger.info("Stopped embedded PostgreSQL (PID %d) in %s", postmaster.pid, pgdata)
                _remove_fallback_socket_dir(postmaster.socket_dir)
                return
            time.sleep(POLL_INTERVAL)
        logger.warning(
            "Embedded PostgreSQL (PID %d) did not stop within %.0f s after %s",
            postmaster.pid,
            timeout,
            signal.Signals(signum).name,
        )
    raise EmbeddedPostgresError(
        f"embedded PostgreSQL (PID {postmaster.pid}) in {pgdata} does not stop; "
        f"kill it with `kill -9 {postmaster.pid}`"
    )


def _read(pgdata: Path) -> Postmaster | None:
    try:
        return Postmaster.from_text((pgdata / "postmaster.pid").read_text())
    except FileNotFoundError:
        return None


def _clear_dead_server(pgdata: Path, postmaster: Postmaster | None) -> None:
    """Remove the lock files of a server that is gone (None: postmaster.pid is unreadable)."""
    pid_file = pgdata / "postmaster.pid"
    if postmaster is None:
        if live := _server_processes(pgdata):
            raise EmbeddedPostgresError(
                f"{pid_file} is unreadable but PostgreSQL processes still run there "
                f"(PIDs {', '.join(map(str, live))}); stop them and start again"
            )
        logger.warning("Removing unreadable %s", pid_file)
    else:
        logger.warning(
            "PostgreSQL (PID %d) in %s is gone without shutting down; clearing its lock files",
            postmaster.pid,
            pgdata,
        )
        _wait_for_orphans(pgdata)
    pid_file.unlink(missing_ok=True)
    if postmaster is not None and postmaster.socket_dir is not None:
        _remove_stale_socket(postmaster.socket_dir, postmaster.port, pgdata)
        _remove_fallback_socket_dir(postmaster.socket_dir)


def _wait_for_orphans(pgdata: Path) -> None:
    """Wait for (then kill) processes of a dead server, which would block a new one."""
    deadline = time.monotonic() + ORPHAN_TIMEOUT
    while orphans := _server_processes(pgdata):
        if time.monotonic() > deadline:
            logger.warning(
                "Killing %d leftover process(es) of a dead PostgreSQL server in %s: PIDs %s",
                len(orphans),
                pgdata,
                ", ".join(map(str, orphans)),
            )
            for pid in orphans:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + ORPHAN_TIMEOUT
        time.sleep(POLL_INTERVAL)


def _runs(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is a live PostgreSQL process of the cluster in `pgdata`.

    PostgreSQL processes work in their data directory, which tells a server apart from an
    unrelated process that got its PID after it died.
    """
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and str(process.cwd()) == str(pgdata)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        # Cannot look: assume it is the server rather than risk starting a second one.
        return True


def _server_processes(pgdata: Path) -> list[int]:
    """PIDs of all processes (postmaster and children) working in the cluster `pgdata`."""
    return [
        int(p.pid)
        for p in psutil.process_iter(["name", "cwd"])
        if p.info["name"] == "postgres" and p.info["cwd"] == str(pgdata)
    ]


def _remove_stale_socket(socket_dir: Path, port: int, pgdata: Path) -> None:
    """Remove a socket and its lock file left by a server of `pgdata` that is gone."""
    socket_path = socket_dir / f".s.PGSQL.{port}"
    lock_path = socket_dir / f".s.PGSQL.{port}.lock"
    try:
        owner: int | None = int(lock_path.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        owner = None
    if owner is not None and _runs(owner, pgdata):
        raise EmbeddedPostgresError(
            f"PostgreSQL (PID {owner}) still uses the socket {socket_path}; "
            f"stop it with `kill {owner}` and start snapsync again"
        )
    for path in (socket_path, lock_path):
        if path.exists() or path.is_symlink():
            logger.info("Removing %s, left by a server that is gone", path)
            path.unlink(missing_ok=True)


def _make_fallback_socket_dir(user: ServerUser) -> Path:
    socket_dir = Path(tempfile.mkdtemp(prefix=FALLBACK_SOCKET_PREFIX, dir=FALLBACK_SOCKET_PARENT))
    if user.switch:
        os.chown(socket_dir, user.uid, user.gid)
    if not socket_dir_usable(socket_dir):
        socket_dir.rmdir()
        raise EmbeddedPostgresError(
            f"cannot find a short enough directory under {FALLBACK_SOCKET_PARENT} for a socket"
        )
    return socket_dir


def _remove_fallback_socket_dir(socket_dir: Path | None) -> None:
    if (
        socket_dir is not None
        and socket_dir.parent == FALLBACK_SOCKET_PARENT
        and socket_dir.name.startswith(FALLBACK_SOCKET_PREFIX)
    ):
        shutil.rmtree(socket_dir, ignore_errors=True)
