"""The snapsync benchmark: how close `snapsync sync` comes to fetching the pages and COPYing rows.

    .venv/bin/python benchmarks/bench.py                 # 20 projects x 50,000 = 1,000,000
    .venv/bin/python benchmarks/bench.py --quick         # 2 x 2,000: a smoke run (CI)
    .venv/bin/python benchmarks/bench.py --projects 4 --snapshots 10000 \\
        --database-url postgresql://postgres@127.0.0.1:5432/postgres --json results.json

One run, one simulator process (benchmarks/sim_server.py, never ticking), one throwaway database
created on the server `--database-url` names and dropped at the end. Phases, in order:

- bare fetch: every page fetched and JSON-decoded (orjson) by a plain aiohttp loop, with
  snapsync's concurrency (8 projects at once, pages in order, the next page requested while one
  is handled); the median of 3 passes;
- COPY ceiling: the same rows (typed columns and `raw` jsonb) written with asyncpg
  `copy_records_to_table` into an UNLOGGED table without indexes, 8 connections at once;
  then, for reference, into a logged table with snapshot_records' keys and indexes;
- naive baseline: SQLAlchemy ORM, `session.merge()` per snapshot and a commit per page, on a
  sample, extrapolated;
- snapsync initial sync, unchanged resync, resync after a change (1 % of the snapshots change
  status, 0.1 % deleted, 0.1 % new, made through the simulator's control API) and the next
  resync (the one that confirms the deletions): `python -m app sync` as a child process, with
  SNAPSYNC_MAX_REQUESTS_PER_SECOND=0 unless --rate-limit says otherwise.

Printed: seconds, snapshots per second, CPU seconds (client, PostgreSQL, everything else on the
machine), the sync process's peak RSS (from wait4), its API requests, rows written per table
(pg_stat_user_tables deltas) and the ratios against their targets. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
from sqlalchemy import BigInteger, Boolean, DateTime, SmallInteger, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app import items

HERE = Path(__file__).resolve().parent
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
AUTH_TOKEN = "snapsync-dev-token"  # the simulator's well-known development token
PAGE_SIZE = 1000
# snapsync's defaults: SNAPSYNC_MAX_CONCURRENT_PROJECTS, and its aiohttp connector's limit.
CONCURRENT_PROJECTS = 8
CONNECTOR_LIMIT = 32
CONTROL_CONCURRENCY = 16
DEFAULT_RATE_LIMIT = 20.0  # SNAPSYNC_MAX_REQUESTS_PER_SECOND's default: the API's throttle
BARE_PASSES = 3
SNAPSYNC_TABLES = ("snapshot_records", "snapshot_status_history", "sync_runs", "projects")
COPY_TABLE = "bench_copy_ceiling"
COPY_INDEXED_TABLE = "bench_copy_indexed"
COPY_HISTORY_TABLES = ("bench_copy_records", "bench_copy_history")
NAIVE_TABLE = "bench_naive_snapshots"
# The change between the second and third sync, as fractions of all snapshots.
CHANGED_SHARE, DELETED_SHARE, ADDED_SHARE = 0.01, 0.001, 0.001
# Status a changed snapshot moves to, by its current status.
NEXT_STATUS = {
    "creating": "create_success",
    "restoring": "restore_success",
    "create_success": "restoring",
    "restore_success": "restoring",
    "restore_failed": "restoring",
    "create_failed": "create_success",
}
COPY_COLUMNS = (
    "project_id",
    "snapshot_id",
    "snapshot_name",
    "desktop_id",
    "desktop_name",
    "desktop_sid",
    "desktop_pool_id",
    "is_system_disk",
    "status",
    "process",
    "description",
    "create_time",
    "create_type",
    "last_restore_time",
    "restore_fail_reason",
    "raw",
    "content_hash",
    "first_seen_at",
    "last_seen_at",
    "last_changed_at",
    "deleted_at",
    "missed_listings",
    "last_run_id",
)
PHASE_ORDER = (
    "bare",
    "copy",
    "copy_indexed",
    "copy_history",
    "naive",
    "initial",
    "unchanged",
    "change",
    "confirm",
    "startup",
    "latency_fetch",
    "latency_initial",
    "latency_unchanged",
)
TARGETS = {
    "initial": 1.25,
    "initial_history": 1.5,
    "requests_per_page": 1.02,
    "unchanged": 1.25,
    "change": 1.3,
    "speedup": 10.0,
    "rss_mb": 256.0,
}
# The latency phase: one project behind an API that takes LATENCY_SECONDS per request, against
# a plain client that reads the first page and then the rest LATENCY_WIDTH at a time.
PHASE_GROUPS = ("main", "latency")
LATENCY_SECONDS = 0.25
LATENCY_SNAPSHOTS = 80_000
LATENCY_WIDTH = 4
LATENCY_PASSES = 3
LATENCY_TARGETS = {"latency_initial": 1.6, "latency_unchanged": 1.3}


class BenchError(Exception):
    """The benchmark could not run; the message says which step failed."""


# ---- results -----------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase."""

    name: str
    seconds: float
    snapshots: int
    peak_rss_mb: float | None = None
    writes: dict[str, list[int]] = field(default_factory=dict)  # table -> [ins, upd, del]
    note: str = ""
    counts: dict[str, int] = field(default_factory=dict)  # from snapsync's summary lines
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by whom, see CpuMeter
    requests: int | None = None  # API requests snapsync made (sync_runs.requests)

    @property
    def rate(self) -> float:
        return self.snapshots / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Results:
    """Everything one run measured, as printed and as written by --json."""

    machine: dict[str, Any]
    projects: int
    snapshots_per_project: int
    total: int
    phases: dict[str, Phase] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    change: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, phase: Phase) -> Phase:
        self.phases[key] = phase
        print(f"  {phase.name}: {phase.seconds:.2f}s", flush=True)
        return phase


# ---- database ------------------------------------------------------------------------------


def asyncpg_dsn(url: str, database: str | None = None) -> str:
    """A libpq-style DSN asyncpg accepts (TCP or a Unix socket in `?host=`)."""
    parsed = make_url(url.replace("+asyncpg", "", 1))
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_url(url: str, database: str) -> str:
    """The same server and another database as a postgresql+asyncpg URL (for snapsync too)."""
    parsed = make_url(url.replace("+asyncpg", "", 1)).set(database=database)
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def throwaway_database(server_url: str, keep: bool) -> AsyncIterator[str]:
    """Create a database for this run; drop it afterwards (unless `keep`)."""
    name = f"snapsync_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield name
    finally:
        if keep:
            print(f"# kept database {name}")
        else:
            admin = await asyncpg.connect(asyncpg_dsn(server_url))
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await admin.close()


async def quiesce(conn: asyncpg.Connection, *, vacuum: bool = False) -> None:
    """Start the next phase from the same place: optionally vacuumed, and checkpointed."""
    if vacuum:
        await conn.execute("VACUUM (ANALYZE)")
    with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
        await conn.execute("CHECKPOINT")


async def table_writes(conn: asyncpg.Connection, database: str) -> dict[str, list[int]]:
    """Rows inserted, updated and deleted per table so far, once every other session is gone.

    PostgreSQL 15 reports a backend's counts when its transaction ends (at most once a second)
    and when it exits, so this waits for the sync's sessions to end and the numbers to settle.
    """
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        others = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            database,
        )
        if not others:
            break
        await asyncio.sleep(0.05)
    with contextlib.suppress(asyncpg.UndefinedFunctionError):
        await conn.execute("SELECT pg_stat_force_next_flush()")
    previous: dict[str, list[int]] | None = None
    for _ in range(40):
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = await conn.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables"
        )
        current = {
            row["relname"]: [row["n_tup_ins"], row["n_tup_upd"], row["n_tup_del"]] for row in rows
        }
        if current == previous:
            return current
        previous = current
        await asyncio.sleep(0.3)
    assert previous is not None
    return previous


def writes_delta(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, list[int]]:
    """Per table, what happened between two readings (snapsync's tables always listed)."""
    delta: dict[str, list[int]] = {}
    for table, now in sorted(after.items()):
        if table.startswith("bench_"):
            continue
        then = before.get(table, [0, 0, 0])
        change = [a - b for a, b in zip(now, then, strict=True)]
        if table in SNAPSYNC_TABLES or any(change):
            delta[table] = change
    return delta


# ---- CPU accounting ------------------------------------------------------------------------


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int, *, children: bool = False) -> float:
    """utime+stime (and the reaped children's, when asked) of a process, in seconds."""
    try:
        fields = _stat_fields(pid)
    except (OSError, IndexError):
        return 0.0
    # After the command name: state is field 3; utime, stime, cutime, cstime are 14..17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / TICK


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _postgres_cpu(postmaster: int | None) -> float:
    """The PostgreSQL server the benchmark uses: its postmaster (with the backends it reaped)
    and its live children. 0 when the server is not on this machine."""
    if postmaster is None:
        return 0.0
    total = _process_cpu(postmaster, children=True)
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if int(_stat_fields(int(entry.name))[1]) == postmaster:
                        total += _process_cpu(int(entry.name))
    return total


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster of a backend, when the server runs on this machine (else None)."""
    try:
        for line in Path(f"/proc/{backend_pid}/status").read_text().splitlines():
            if line.startswith("PPid:"):
                parent = int(line.split()[1])
                comm = Path(f"/proc/{parent}/comm").read_text().strip()
                return parent if comm in ("postgres", "postmaster") else None
    except (OSError, ValueError):
        return None
    return None


def _machine_cpu() -> tuple[float, float]:
    """(busy, idle) seconds of all CPUs since boot."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, first[1:9])
    return (user + nice + system + irq + softirq + steal) / TICK, (idle + iowait) / TICK


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuMeter:
    """Who used the CPUs during a phase: the client (this process or the sync), the simulator,
    the PostgreSQL server (when it runs here), and everything else on the machine (other work
    skews wall times)."""

    server_pid: int
    postmaster_pid: int | None = None

    def read(self) -> dict[str, float]:
        busy, idle = _machine_cpu()
        return {
            "busy": busy,
            "idle": idle,
            "own": _own_cpu(),
            "server": _process_cpu(self.server_pid),
            "postgres": _postgres_cpu(self.postmaster_pid),
        }

    @staticmethod
    def usage(
        before: dict[str, float], after: dict[str, float], child: float | None = None
    ) -> dict[str, float]:
        d = {k: after[k] - before[k] for k in before}
        client = child if child is not None else d["own"]
        # The child is counted as the client; this process only waited for it.
        mine = client + d["server"] + d["postgres"] + (d["own"] if child is not None else 0)
        capacity = d["busy"] + d["idle"]
        return {
            "client": round(client, 2),
            "server": round(d["server"], 2),
            "postgres": round(d["postgres"], 2),
            "other": round(max(0.0, d["busy"] - mine), 2),
            "capacity": round(capacity, 2),
        }


# ---- the simulator -------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


@contextlib.contextmanager
def simulator(
    projects: int,
    snapshots: int,
    seed: int,
    workdir: Path,
    *,
    latency: float = 0.0,
    latency_per_item: float = 0.0,
) -> Iterator[Server]:
    """benchmarks/sim_server.py in a child process, while the block runs."""
    log_path = workdir / ("simulator.log" if not latency else "simulator-latency.log")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "sim_server.py"),
                f"--projects={projects}",
                f"--snapshots={snapshots}",
                f"--seed={seed}",
                f"--latency={latency}",
                f"--latency-per-item={latency_per_item}",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=workdir,
            env=child_env({}),
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("READY "):
            raise BenchError(f"the simulator did not start: {tail(log_path)}")
        yield Server(url=line.split(" ", 1)[1].strip(), pid=proc.pid)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log file, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a child: no SNAPSYNC_* of the caller, only what the benchmark sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPSYNC_")}
    env.update(extra)
    return env


# ---- HTTP ---------------------------------------------------------------------------------


def new_session() -> aiohttp.ClientSession:
    """An HTTP session like snapsync's (connector limit, token header)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=CONNECTOR_LIMIT),
        headers={"X-Auth-Token": AUTH_TOKEN, "Accept": "application/json"},
    )


async def get_page(
    session: aiohttp.ClientSession, base: str, project_id: str, offset: int
) -> dict[str, Any]:
    """One page, in snapsync's order and size, decoded with orjson (as snapsync does)."""
    params = [
        ("sort_field", "create_time"),
        ("sort_type", "ASC"),
        ("offset", str(offset)),
        ("limit", str(PAGE_SIZE)),
    ]
    async with session.get(f"{base}/v2/{project_id}/snapshots", params=params) as response:
        raw = await response.read()
        if response.status != 200:
            raise BenchError(f"GET page {offset} of {project_id}: {response.status} {raw[:200]!r}")
    page: dict[str, Any] = orjson.loads(raw)
    return page


PageHandler = Callable[[str, dict[str, Any]], None]


async def fetch_all(
    session: aiohttp.ClientSession,
    base: str,
    project_ids: Sequence[str],
    on_page: PageHandler | None = None,
) -> int:
    """Every page of every project, as snapsync pages them; returns the number of items."""
    gate = asyncio.Semaphore(CONCURRENT_PROJECTS)

    async def project(project_id: str) -> int:
        seen = 0
        async with gate:
            offset = 0
            pending: asyncio.Task[dict[str, Any]] | None = asyncio.create_task(
                get_page(session, base, project_id, 0)
            )
            while pending is not None:
                page = await pending
                pending = None
                offset += PAGE_SIZE
                if offset < page["total_count"]:
                    pending = asyncio.create_task(get_page(session, base, project_id, offset))
                seen += len(page["desktop_snapshots"])
                if on_page is not None:
                    on_page(project_id, page)
        return seen

    return sum(await asyncio.gather(*(project(pid) for pid in project_ids)))


async def project_ids_of(session: aiohttp.ClientSession, base: str) -> list[str]:
    async with session.get(f"{base}/_sim/projects") as response:
        answer = await response.json()
    return [p["project_id"] for p in answer["projects"]]


# ---- COPY ceiling --------------------------------------------------------------------------


Record = tuple[Any, ...]


def copy_record(project_id: str, item: dict[str, Any], at: datetime) -> Record:
    """The row snapshot_records would hold for an item, validated as snapsync validates it."""
    s = items.parse_item(item)
    return (
        project_id,
        s.snapshot_id,
        item.get("snapshot_name"),
        item.get("desktop_id"),
        item.get("desktop_name"),
        item.get("desktop_sid"),
        item.get("desktop_pool_id"),
        item.get("is_system_disk"),
        s.status,
        item.get("process"),
        item.get("description"),
        items.parse_time(item.get("create_time"), "create_time"),
        item.get("create_type"),
        items.parse_time(item.get("last_restore_time"), "last_restore_time"),
        item.get("restore_fail_reason"),
        s.json.decode("utf-8"),
        s.content_hash,
        at,
        at,
        at,
        None,
        0,
        None,
    )


async def copy_rows(pool: asyncpg.Pool, table: str, records: dict[str, list[Record]]) -> float:
    """COPY each project's rows, 8 projects at once; the seconds it took."""
    gate = asyncio.Semaphore(CONCURRENT_PROJECTS)

    async def one(rows: list[Record]) -> None:
        async with gate, pool.acquire() as conn:
            await conn.copy_records_to_table(table, records=rows, columns=COPY_COLUMNS)

    started = time.monotonic()
    await asyncio.gather(*(one(rows) for rows in records.values()))
    return time.monotonic() - started


# ---- naive baseline ------------------------------------------------------------------------


class NaiveBase(DeclarativeBase):
    pass


class NaiveSnapshot(NaiveBase):
    """The table a typical hand-written sync keeps: typed columns, the item as jsonb."""

    __tablename__ = NAIVE_TABLE

    project_id: Mapped[str] = mapped_column(Text, primary_key=True)
    snapshot_id: Mapped[str] = mapped_column(Text, primary_key=True)
    snapshot_name: Mapped[str | None] = mapped_column(Text)
    desktop_id: Mapped[str | None] = mapped_column(Text)
    desktop_name: Mapped[str | None] = mapped_column(Text)
    desktop_sid: Mapped[str | None] = mapped_column(Text)
    desktop_pool_id: Mapped[str | None] = mapped_column(Text)
    is_system_disk: Mapped[bool | None] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(Text)
    process: Mapped[int | None] = mapped_column(SmallInteger)
    description: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    create_type: Mapped[str | None] = mapped_column(Text)
    last_restore_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    restore_fail_reason: Mapped[str | None] = mapped_column(Text)
    raw: Mapped[dict[str, Any]] = mapped_column(JSONB)
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    version: Mapped[int] = mapped_column(BigInteger, default=0)


def _naive_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def naive_sync(
    url: str, session: aiohttp.ClientSession, base: str, project_ids: Sequence[str], sample: int
) -> tuple[int, float]:
    """Fetch pages one after another and merge every item, a commit per page, until `sample`
    snapshots are stored; (snapshots, seconds)."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(NaiveBase.metadata.create_all)
        sessions = async_sessionmaker(engine)
        done = 0
        started = time.monotonic()
        for project_id in project_ids:
            offset, total = 0, 1
            while offset < total and done < sample:
                page = await get_page(session, base, project_id, offset)
                total = page["total_count"]
                offset += PAGE_SIZE
                now = datetime.now(UTC)
                async with sessions() as db:
                    for item in page["desktop_snapshots"]:
                        await db.merge(
                            NaiveSnapshot(
                                project_id=project_id,
                                snapshot_id=item["snapshot_id"],
                                snapshot_name=item.get("snapshot_name"),
                                desktop_id=item.get("desktop_id"),
                                desktop_name=item.get("desktop_name"),
                                desktop_sid=item.get("desktop_sid"),
                                desktop_pool_id=item.get("desktop_pool_id"),
                                is_system_disk=item.get("is_system_disk"),
                                status=item["status"],
                                process=item.get("process"),
                                description=item.get("description"),
                                create_time=_naive_time(item.get("create_time")),
                                create_type=item.get("create_type"),
                                last_restore_time=_naive_time(item.get("last_restore_time")),
                                restore_fail_reason=item.get("restore_fail_reason"),
                                raw=item,
                                synced_at=now,
                            )
                        )
                        done += 1
                    await db.commit()
            if done >= sample:
                break
        seconds = time.monotonic() - started
        async with engine.begin() as conn:
            await conn.run_sync(NaiveBase.metadata.drop_all)
        return done, seconds
    finally:
        await engine.dispose()


# ---- snapsync ------------------------------------------------------------------------------


@dataclass
class ChildRun:
    """How a child process ended: exit status, wall seconds, peak RSS, what it printed."""

    code: int
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float
    stdout: str
    stderr_path: Path


# Linux carries a process's RSS high-water mark over fork and exec, so a child forked from this
# (large) process would report at least this process's size. A small interpreter started first
# spawns the command instead and reports the command's own wait4 figures:
# "<maxrss KiB> <wall seconds> <CPU seconds>".
MEASURE = """
import os, sys, time
started = time.monotonic()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
seconds = time.monotonic() - started
with open(sys.argv[1], "w") as report:
    report.write(f"{usage.ru_maxrss} {seconds} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(cmd: Sequence[str], env: dict[str, str], cwd: Path, name: str) -> ChildRun:
    """Run a command to its end: exit status, wall seconds and its own peak RSS."""
    out_path, err_path = cwd / f"{name}.out", cwd / f"{name}.err"
    report = cwd / f"{name}.rusage"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        code = subprocess.call(
            [sys.executable, "-S", "-c", MEASURE, str(report), *cmd],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=err,
        )
    try:
        maxrss_kib, seconds, cpu = report.read_text().split()
    except (OSError, ValueError):
        raise BenchError(f"could not run {cmd[0]}: {tail(err_path)}") from None
    return ChildRun(
        code=code,
        seconds=float(seconds),
        peak_rss_mb=int(maxrss_kib) / 1024,
        cpu_seconds=float(cpu),
        stdout=out_path.read_text(errors="replace"),
        stderr_path=err_path,
    )


@dataclass
class Snapsync:
    """Runs `python -m app ...` against the simulator and the benchmark's database."""

    env: dict[str, str]
    workdir: Path
    meter: CpuMeter
    profile_dir: Path | None = None

    async def run(self, name: str, *args: str) -> ChildRun:
        cmd: list[str] = [sys.executable, "-m", "app", *args]
        if self.profile_dir is not None and args[:1] == ("sync",):
            beside = Path(sys.executable).parent / "py-spy"
            py_spy = str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"
            output = self.profile_dir / f"{name}.txt"
            cmd = [
                py_spy,
                "record",
                "--idle",
                "--format",
                "raw",
                "--rate",
                "200",
                "-o",
                str(output),
                "--",
                *cmd,
            ]
        done = await asyncio.to_thread(run_child, cmd, self.env, self.workdir, name)
        if done.code != 0:
            raise BenchError(
                f"`snapsync {' '.join(args)}` exited {done.code}:\n{done.stdout}\n"
                f"{tail(done.stderr_path)}"
            )
        return done


SUMMARY_KEYS = ("pages", "seen", "inserted", "updated", "deleted", "transitions", "rejected")


def summary_counts(stdout: str, projects: int) -> dict[str, int]:
    """The sums of snapsync's per-project summary lines (`<id>: succeeded pages=... seen=...`);
    raises unless every project's line is there and says it succeeded."""
    totals = dict.fromkeys(SUMMARY_KEYS, 0)
    found = 0
    for line in stdout.splitlines():
        if not re.match(r"^[0-9a-f]{32}: \w+ ", line):
            continue
        found += 1
        status = line.split()[1]
        if status != "succeeded":
            raise BenchError(f"a project's sync did not succeed: {line}")
        for key, value in re.findall(r"(\w+)=(\d+)\b", line):
            if key in totals:
                totals[key] += int(value)
    if found != projects:
        raise BenchError(
            f"expected {projects} summary lines from snapsync sync, got {found}:\n{stdout[-2000:]}"
        )
    return totals


async def measure_sync(
    name: str, label: str, snapsync: Snapsync, admin: asyncpg.Connection, database: str, total: int
) -> Phase:
    """One `snapsync sync`, with the rows it wrote and the API requests it made."""
    before = await table_writes(admin, database)
    last_run = await admin.fetchval("SELECT coalesce(max(id), 0) FROM sync_runs")
    cpu_before = snapsync.meter.read()
    done = await snapsync.run(name, "sync")
    cpu = CpuMeter.usage(cpu_before, snapsync.meter.read(), child=done.cpu_seconds)
    try:
        counts = summary_counts(done.stdout, len(snapsync.env["SNAPSYNC_PROJECTS"].split(",")))
    except BenchError as exc:
        raise BenchError(f"{exc}\n{tail(done.stderr_path)}") from None
    after = await table_writes(admin, database)
    requests = await admin.fetchval(
        "SELECT coalesce(sum(requests), 0) FROM sync_runs WHERE id > $1", last_run
    )
    return Phase(
        name=label,
        seconds=done.seconds,
        snapshots=total,
        peak_rss_mb=done.peak_rss_mb,
        writes=writes_delta(before, after),
        counts=counts,
        cpu=cpu,
        requests=int(requests),
    )


# ---- the change ----------------------------------------------------------------------------


async def make_change(
    session: aiohttp.ClientSession,
    base: str,
    listing: dict[str, list[tuple[str, str]]],
    seed: int,
) -> dict[str, Any]:
    """Through the control API: 1 % change status, 0.1 % are deleted, 0.1 % are new."""
    rng = random.Random(f"{seed}:bench-change")
    gate = asyncio.Semaphore(CONTROL_CONCURRENCY)
    plan: list[tuple[str, str, Any]] = []
    changed = deleted = added = 0
    for project_id, snapshots in listing.items():
        n = len(snapshots)
        n_changed = max(1, round(n * CHANGED_SHARE))
        n_deleted = max(1, round(n * DELETED_SHARE))
        n_added = max(1, round(n * ADDED_SHARE))
        chosen = rng.sample(snapshots, min(n, n_changed + n_deleted))
        for sid, status in chosen[:n_changed]:
            new = NEXT_STATUS.get(status, "create_success")
            process = 10 if new in items.TRANSIENT_STATUSES else None
            plan.append(
                (
                    "PATCH",
                    f"/projects/{project_id}/snapshots/{sid}",
                    {"status": new, "process": process},
                )
            )
        for sid, _ in chosen[n_changed:]:
            plan.append(("DELETE", f"/projects/{project_id}/snapshots/{sid}", None))
        # New snapshots are added in one request per project: the control API takes a list.
        plan.append(("POST", f"/projects/{project_id}/snapshots", [{}] * n_added))
        changed += len(chosen[:n_changed])
        deleted += len(chosen[n_changed:])
        added += n_added

    async def call(method: str, path: str, body: Any) -> None:
        async with gate, session.request(method, f"{base}/_sim{path}", json=body) as response:
            if response.status >= 400:
                raise BenchError(f"{method} /_sim{path}: {response.status} {await response.text()}")
            await response.read()

    started = time.monotonic()
    await asyncio.gather(*(call(*step) for step in plan))
    return {
        "changed": changed,
        "deleted": deleted,
        "added": added,
        "requests": len(plan),
        "seconds": round(time.monotonic() - started, 2),
    }


# ---- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    projects: int
    snapshots: int
    naive_sample: int
    database_url: str
    seed: int
    rate_limit: float
    keep_database: bool
    json_path: Path | None
    profile_dir: Path | None
    logs_dir: Path | None
    phases: frozenset[str] = frozenset(PHASE_GROUPS)
    latency: float = LATENCY_SECONDS
    latency_per_item: float = 0.0
    latency_snapshots: int = LATENCY_SNAPSHOTS
    concurrent_requests: int | None = None

    def sync_env(self) -> dict[str, str]:
        """SNAPSYNC_* variables every measured sync gets beyond the connection."""
        env = {"SNAPSYNC_MAX_REQUESTS_PER_SECOND": f"{self.rate_limit:g}"}
        if self.concurrent_requests is not None:
            env["SNAPSYNC_MAX_CONCURRENT_REQUESTS"] = str(self.concurrent_requests)
        return env


async def run(options: Options) -> Results:
    """Every phase, in order, against one simulator and one database."""
    total = options.projects * options.snapshots
    with tempfile.TemporaryDirectory(prefix="snapsync-bench-") as tmp:
        workdir = options.logs_dir or Path(tmp)
        async with throwaway_database(options.database_url, options.keep_database) as database:
            results = Results(
                machine=await machine(options.database_url),
                projects=options.projects,
                snapshots_per_project=options.snapshots,
                total=total,
            )
            results.machine["rate_limit"] = options.rate_limit
            results.machine["concurrent_requests"] = options.concurrent_requests
            print_header(results, database)
            if "main" in options.phases:
                print(f"# starting the simulator ({total:,} snapshots)", flush=True)
                with simulator(
                    options.projects, options.snapshots, options.seed, workdir
                ) as server:
                    await measure(options, results, database, server, workdir)
        if "latency" in options.phases:
            await measure_latency(options, results, workdir)
    changed = code_version() != results.machine["code"]
    if changed:
        results.machine["code"] += " (app/ changed during the run: phases measured different code)"
    return results


async def measure(
    options: Options, results: Results, database: str, server: Server, workdir: Path
) -> None:
    total = results.total
    base = server.url
    meter = CpuMeter(server_pid=server.pid)
    probe = await asyncpg.connect(asyncpg_dsn(options.database_url, database))
    try:
        meter.postmaster_pid = postmaster_of(probe.get_server_pid())
    finally:
        await probe.close()
    async with new_session() as http:
        project_ids = await project_ids_of(http, base)
        snapsync = Snapsync(
            env=child_env(
                {
                    "SNAPSYNC_DATABASE_URL": sqlalchemy_url(options.database_url, database),
                    "SNAPSYNC_WORKSPACE_ENDPOINT": base,
                    "SNAPSYNC_IAM_ENDPOINT": base,
                    "SNAPSYNC_PROJECTS": ",".join(project_ids),
                    "SNAPSYNC_AUTH": "token",
                    "SNAPSYNC_AUTH_TOKEN": AUTH_TOKEN,
                    **options.sync_env(),
                }
            ),
            workdir=workdir,
            meter=meter,
            profile_dir=options.profile_dir,
        )
        migrated = await snapsync.run("migrate", "migrate")
        print(f"# snapsync migrate: {migrated.seconds:.2f}s", flush=True)
        # What every `snapsync sync` pays before its first request: interpreter and imports.
        starts = sorted([await snapsync.run("startup", "--help") for _ in range(3)], key=_secs)
        results.add(
            "startup",
            Phase(
                "snapsync start-up (python -m app --help)",
                starts[1].seconds,
                0,
                peak_rss_mb=starts[1].peak_rss_mb,
                cpu={"client": round(starts[1].cpu_seconds, 2)},
                note="median of 3",
            ),
        )

        # Untimed: one pass to warm connections and keep the rows for COPY and the change.
        records: dict[str, list[Record]] = {pid: [] for pid in project_ids}
        listing: dict[str, list[tuple[str, str]]] = {pid: [] for pid in project_ids}
        stamp = datetime.now(UTC)

        def keep(project_id: str, page: dict[str, Any]) -> None:
            for item in page["desktop_snapshots"]:
                records[project_id].append(copy_record(project_id, item, stamp))
                listing[project_id].append((item["snapshot_id"], item["status"]))

        print("# warm-up pass (untimed)", flush=True)
        seen = await fetch_all(http, base, project_ids, keep)
        if seen != total:
            raise BenchError(f"the simulator listed {seen} snapshots, expected {total}")

        print("# measuring", flush=True)
        passes = []
        for _ in range(BARE_PASSES):
            cpu_before = meter.read()
            started = time.monotonic()
            await fetch_all(http, base, project_ids)
            seconds = time.monotonic() - started
            passes.append((seconds, CpuMeter.usage(cpu_before, meter.read())))
        passes.sort(key=lambda p: p[0])
        seconds, cpu = passes[len(passes) // 2]
        results.add(
            "bare",
            Phase(
                "bare fetch + JSON decode",
                seconds,
                total,
                cpu=cpu,
                note=f"median of {BARE_PASSES}: " + ", ".join(f"{p[0]:.2f}s" for p in passes),
            ),
        )

        admin = await asyncpg.connect(asyncpg_dsn(options.database_url, database))
        try:
            await measure_copy(admin, options, database, records, results, meter)
            await measure_copy_history(admin, options, database, records, results, meter)
            records.clear()
            sample = min(options.naive_sample, total)
            cpu_before = meter.read()
            done, seconds = await naive_sync(
                sqlalchemy_url(options.database_url, database), http, base, project_ids, sample
            )
            results.add(
                "naive",
                Phase(
                    f"naive ORM merge (extrapolated from {done:,})",
                    seconds * total / done,
                    total,
                    cpu=CpuMeter.usage(cpu_before, meter.read()),
                    note=f"measured {done:,} snapshots in {seconds:.2f}s",
                ),
            )
            await quiesce(admin, vacuum=True)
            results.add(
                "initial",
                await measure_sync(
                    "initial", "snapsync initial sync", snapsync, admin, database, total
                ),
            )
            await quiesce(admin, vacuum=True)
            results.add(
                "unchanged",
                await measure_sync(
                    "unchanged", "snapsync unchanged resync", snapsync, admin, database, total
                ),
            )
            results.change = await make_change(http, base, listing, options.seed)
            print(f"# change made: {results.change}", flush=True)
            after = total + results.change["added"] - results.change["deleted"]
            await quiesce(admin, vacuum=True)
            results.add(
                "change",
                await measure_sync(
                    "change", "snapsync resync after change", snapsync, admin, database, after
                ),
            )
            await quiesce(admin, vacuum=True)
            results.add(
                "confirm",
                await measure_sync(
                    "confirm", "snapsync next resync (deletes)", snapsync, admin, database, after
                ),
            )
        finally:
            await admin.close()
    results.ratios = ratios(results)


def _secs(run: ChildRun) -> float:
    return run.seconds


async def measure_copy(
    admin: asyncpg.Connection,
    options: Options,
    database: str,
    records: dict[str, list[Record]],
    results: Results,
    meter: CpuMeter,
) -> None:
    total = results.total
    dsn = asyncpg_dsn(options.database_url, database)
    pool = await asyncpg.create_pool(
        dsn, min_size=CONCURRENT_PROJECTS, max_size=CONCURRENT_PROJECTS
    )
    try:
        for key, table, label, ddl in (
            (
                "copy",
                COPY_TABLE,
                "COPY ceiling (unlogged, no index)",
                "UNLOGGED TABLE {} (LIKE snapshot_records)",
            ),
            (
                "copy_indexed",
                COPY_INDEXED_TABLE,
                "COPY, logged + indexes (reference)",
                "TABLE {} (LIKE snapshot_records INCLUDING ALL)",
            ),
        ):
            await admin.execute("CREATE " + ddl.format(table))
            await quiesce(admin)
            cpu_before = meter.read()
            seconds = await copy_rows(pool, table, records)
            cpu = CpuMeter.usage(cpu_before, meter.read())
            results.add(key, Phase(label, seconds, total, cpu=cpu))
            await admin.execute(f"DROP TABLE {table}")
    finally:
        await pool.close()


def history_record(record: Record) -> Record:
    """The first-sighting history row a first sync writes for a record."""
    # (project_id, snapshot_id, from_status, to_status, observed_at, previous_observed_at,
    #  process, sync_run_id, create_time)
    return (record[0], record[1], None, record[8], record[17], None, record[9], None, record[11])


HISTORY_COLUMNS = (
    "project_id",
    "snapshot_id",
    "from_status",
    "to_status",
    "observed_at",
    "previous_observed_at",
    "process",
    "sync_run_id",
    "create_time",
)


async def measure_copy_history(
    admin: asyncpg.Connection,
    options: Options,
    database: str,
    records: dict[str, list[Record]],
    results: Results,
    meter: CpuMeter,
) -> None:
    """The floor of a first sync: a logged COPY of the records and of their first-sighting
    history rows into tables with the same columns, defaults and indexes as snapsync's, each
    project in one transaction, 8 projects at once."""
    records_table, history_table = COPY_HISTORY_TABLES
    await admin.execute(f"CREATE TABLE {records_table} (LIKE snapshot_records INCLUDING ALL)")
    await admin.execute(
        f"CREATE TABLE {history_table} (LIKE snapshot_status_history INCLUDING ALL)"
    )
    history = {pid: [history_record(r) for r in rows] for pid, rows in records.items()}
    await quiesce(admin)
    pool = await asyncpg.create_pool(
        asyncpg_dsn(options.database_url, database),
        min_size=CONCURRENT_PROJECTS,
        max_size=CONCURRENT_PROJECTS,
    )
    gate = asyncio.Semaphore(CONCURRENT_PROJECTS)

    async def one(pid: str) -> None:
        async with gate, pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table(
                records_table, records=records[pid], columns=COPY_COLUMNS
            )
            await conn.copy_records_to_table(
                history_table, records=history[pid], columns=HISTORY_COLUMNS
            )

    try:
        cpu_before = meter.read()
        started = time.monotonic()
        await asyncio.gather(*(one(pid) for pid in records))
        seconds = time.monotonic() - started
        cpu = CpuMeter.usage(cpu_before, meter.read())
    finally:
        await pool.close()
    results.add(
        "copy_history",
        Phase(
            "COPY, logged + indexes, records + history",
            seconds,
            results.total,
            cpu=cpu,
            note="the floor of a first sync's durable writes",
        ),
    )
    for table_name in COPY_HISTORY_TABLES:
        await admin.execute(f"DROP TABLE {table_name}")


def code_version() -> str:
    """The commit checked out and a digest of the code under app/ and migrations/ as it is."""
    digest = hashlib.sha256()
    for path in sorted(
        [*(HERE.parent / "app").rglob("*.py"), *(HERE.parent / "migrations").rglob("*.py")]
    ):
        digest.update(str(path.relative_to(HERE.parent)).encode())
        digest.update(path.read_bytes())
    commit = "unknown commit"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    return f"{commit}, app+migrations sha256 {digest.hexdigest()[:12]}"


def ratios(results: Results) -> list[dict[str, Any]]:
    """The ratios the issue asks for, each with its target and whether it is met."""
    p = results.phases
    out: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, at_most: bool, extra: str = "") -> None:
        met = value <= target if at_most else value >= target
        out.append(
            {
                "ratio": name,
                "value": round(value, 2),
                "target": f"{'<=' if at_most else '>='} {target:g}",
                "met": met,
                "detail": extra,
            }
        )

    add(
        "initial / (bare fetch + COPY ceiling)",
        p["initial"].seconds / (p["bare"].seconds + p["copy"].seconds),
        TARGETS["initial"],
        True,
    )
    outside = sum(
        sum(counts) for table, counts in p["unchanged"].writes.items() if table != "sync_runs"
    )
    value = p["unchanged"].seconds / p["bare"].seconds
    out.append(
        {
            "ratio": "unchanged / bare fetch",
            "value": round(value, 2),
            "target": f"<= {TARGETS['unchanged']:g}",
            "met": value <= TARGETS["unchanged"] and outside <= results.projects,
            "detail": f"{outside} rows written outside sync_runs (at most {results.projects})",
        }
    )
    add(
        "change / bare fetch",
        p["change"].seconds / p["bare"].seconds,
        TARGETS["change"],
        True,
        f"{p['change'].requests} API requests for {p['bare'].snapshots // PAGE_SIZE} pages",
    )
    add(
        "snapsync initial rate / naive rate",
        p["initial"].rate / p["naive"].rate,
        TARGETS["speedup"],
        False,
    )
    peak = max(p[k].peak_rss_mb or 0.0 for k in ("initial", "unchanged", "change", "confirm"))
    add("peak RSS of snapsync sync, MB", peak, TARGETS["rss_mb"], True)
    out.extend(floor_ratios(results))
    return out


# ---- the latency phase --------------------------------------------------------------------


async def fetch_wide(
    session: aiohttp.ClientSession, base: str, project_id: str, width: int
) -> tuple[int, int]:
    """A plain client: the first page, then every page it announces, `width` in flight at a
    time, each decoded with orjson; returns (items, pages)."""
    first = await get_page(session, base, project_id, 0)
    gate = asyncio.Semaphore(width)

    async def one(offset: int) -> int:
        async with gate:
            page = await get_page(session, base, project_id, offset)
        return len(page["desktop_snapshots"])

    offsets = range(PAGE_SIZE, first["total_count"], PAGE_SIZE)
    rest = await asyncio.gather(*(one(offset) for offset in offsets))
    return len(first["desktop_snapshots"]) + sum(rest), 1 + len(offsets)


async def measure_latency(options: Options, results: Results, workdir: Path) -> None:
    """One project of `latency_snapshots` behind an API with `latency` seconds per request (and
    `latency_per_item` per item a page holds), in its own simulator and database: the plain
    LATENCY_WIDTH-way fetch (median of LATENCY_PASSES), snapsync's first sync and an unchanged
    resync; their ratios to the plain fetch, and the requests the resync made."""
    n = options.latency_snapshots
    delay = f"{options.latency:g}s/request" + (
        f" + {options.latency_per_item:g}s/item" if options.latency_per_item else ""
    )
    print(f"# latency phase: 1 project x {n:,} snapshots, {delay}", flush=True)
    seed = options.seed + 1  # another project id than the main phases' first project
    async with throwaway_database(options.database_url, options.keep_database) as database:
        with simulator(
            1,
            n,
            seed,
            workdir,
            latency=options.latency,
            latency_per_item=options.latency_per_item,
        ) as server:
            meter = CpuMeter(server_pid=server.pid)
            admin = await asyncpg.connect(asyncpg_dsn(options.database_url, database))
            try:
                meter.postmaster_pid = postmaster_of(admin.get_server_pid())
                async with new_session() as http:
                    (project_id,) = await project_ids_of(http, server.url)
                    snapsync = Snapsync(
                        env=child_env(
                            {
                                "SNAPSYNC_DATABASE_URL": sqlalchemy_url(
                                    options.database_url, database
                                ),
                                "SNAPSYNC_WORKSPACE_ENDPOINT": server.url,
                                "SNAPSYNC_IAM_ENDPOINT": server.url,
                                "SNAPSYNC_PROJECTS": project_id,
                                "SNAPSYNC_AUTH": "token",
                                "SNAPSYNC_AUTH_TOKEN": AUTH_TOKEN,
                                **options.sync_env(),
                            }
                        ),
                        workdir=workdir,
                        meter=meter,
                    )
                    await snapsync.run("latency-migrate", "migrate")
                    passes = []
                    for _ in range(LATENCY_PASSES):
                        cpu_before = meter.read()
                        started = time.monotonic()
                        seen, pages = await fetch_wide(http, server.url, project_id, LATENCY_WIDTH)
                        seconds = time.monotonic() - started
                        if seen != n:
                            raise BenchError(f"the simulator listed {seen} snapshots, expected {n}")
                        passes.append((seconds, CpuMeter.usage(cpu_before, meter.read())))
                passes.sort(key=lambda p: p[0])
                seconds, cpu = passes[len(passes) // 2]
                results.add(
                    "latency_fetch",
                    Phase(
                        f"latency: plain fetch, page 1 then {LATENCY_WIDTH} at a time",
                        seconds,
                        n,
                        cpu=cpu,
                        requests=pages,
                        note=f"{delay}; median of {LATENCY_PASSES}: "
                        + ", ".join(f"{p[0]:.2f}s" for p in passes),
                    ),
                )
                for key, label in (
                    ("latency_initial", "latency: snapsync initial sync"),
                    ("latency_unchanged", "latency: snapsync unchanged resync"),
                ):
                    await quiesce(admin, vacuum=True)
                    results.add(
                        key,
                        await measure_sync(
                            key.replace("_", "-"), label, snapsync, admin, database, n
                        ),
                    )
            finally:
                await admin.close()
    results.machine["latency"] = delay
    results.ratios += latency_ratios(results)


def latency_ratios(results: Results) -> list[dict[str, Any]]:
    """The latency phase's ratios: each sync against the plain fetch, with its requests."""
    p = results.phases
    fetch = p["latency_fetch"]
    out = []
    for key, what in (("latency_initial", "initial"), ("latency_unchanged", "unchanged")):
        value = p[key].seconds / fetch.seconds
        out.append(
            {
                "ratio": f"latency: {what} / plain {LATENCY_WIDTH}-way fetch",
                "value": round(value, 2),
                "target": f"<= {LATENCY_TARGETS[key]:g}",
                "met": value <= LATENCY_TARGETS[key],
                "detail": f"{p[key].requests} API requests for {fetch.requests} pages",
            }
        )
    return out


def floor_ratios(results: Results) -> list[dict[str, Any]]:
    """The first sync against the floor of what it must write durably (records and their
    first-sighting history, logged, indexed), and the change resync's requests per page read."""
    p = results.phases
    out: list[dict[str, Any]] = []
    if "copy_history" in p and "initial" in p:
        value = p["initial"].seconds / (p["bare"].seconds + p["copy_history"].seconds)
        out.append(
            {
                "ratio": "initial / (bare fetch + logged COPY of records and history)",
                "value": round(value, 2),
                "target": f"<= {TARGETS['initial_history']:g}",
                "met": value <= TARGETS["initial_history"],
                "detail": "",
            }
        )
    change = p.get("change")
    if change is not None and change.requests and change.counts.get("pages"):
        value = change.requests / change.counts["pages"]
        out.append(
            {
                "ratio": "change resync: API requests / pages read",
                "value": round(value, 3),
                "target": f"<= {TARGETS['requests_per_page']:g}",
                "met": value <= TARGETS["requests_per_page"],
                "detail": f"{change.requests:,} requests for {change.counts['pages']:,} pages",
            }
        )
    return out


def requests_per_sync(results: Results) -> list[str]:
    """A line per sync phase: its API requests, the listing's pages, and their ratio."""
    rows = []
    for key in PHASE_ORDER:
        phase = results.phases.get(key)
        if phase is None or phase.requests is None or not phase.counts.get("pages"):
            continue
        pages = phase.counts["pages"]
        rows.append(
            [
                phase.name,
                f"{phase.requests:,}",
                f"{pages:,}",
                f"{phase.requests / pages:.3f}",
                f"{phase.requests - pages:,}",
            ]
        )
    if not rows:
        return []
    headers = ["phase", "API requests", "listing pages", "requests / page", "other requests"]
    return [
        "",
        "API requests per sync (other requests: the deletion rule's re-checks, retries)",
        "",
        table(headers, rows),
    ]


# ---- output --------------------------------------------------------------------------------


def host() -> dict[str, Any]:
    """The CPU and memory of this machine."""
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
                break
    return {"cpu": cpu, "cpus": os.cpu_count(), "memory": memory}


async def machine(server_url: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "synchronous_commit", "max_wal_size")
        }
    finally:
        await conn.close()
    return {
        **host(),
        "code": code_version(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "postgresql": version,
        "postgresql_settings": settings,
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def print_header(results: Results, database: str) -> None:
    m = results.machine
    print(
        f"# snapsync benchmark: {results.projects} projects x {results.snapshots_per_project:,} "
        f"snapshots = {results.total:,}; database {database}"
    )
    pg = ", ".join(f"{k}={v}" for k, v in m["postgresql_settings"].items())
    print(
        f"# {m['cpus']} x {m['cpu']}, {m['memory']}, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']} ({pg})",
    )
    print(
        f"# code: {m['code']}; load average at start {m['load_average']}; "
        f"SNAPSYNC_MAX_REQUESTS_PER_SECOND={m['rate_limit']:g}, "
        f"SNAPSYNC_MAX_CONCURRENT_REQUESTS={m['concurrent_requests'] or 'default'}",
        flush=True,
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, padded so it also reads well in a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join(
        [line(headers), "| " + " | ".join("-" * w for w in widths) + " |", *map(line, rows)]
    )


def render(results: Results) -> str:
    """The report: phases, rows written, ratios against targets."""
    order = [k for k in PHASE_ORDER if k in results.phases]
    phases = [results.phases[k] for k in order]
    main_rows = [
        [
            p.name,
            f"{p.seconds:.2f}",
            f"{p.rate:,.0f}" if p.snapshots else "-",
            _cpu(p.cpu, "client"),
            _cpu(p.cpu, "postgres"),
            _other_load(p.cpu),
            f"{p.peak_rss_mb:.0f}" if p.peak_rss_mb is not None else "-",
            f"{p.requests:,}" if p.requests is not None else "-",
        ]
        for p in phases
    ]
    headers = [
        "phase",
        "seconds",
        "snapshots/s",
        "client CPU s",
        "PG CPU s",
        "other load",
        "peak RSS MB",
        "API requests",
    ]
    m = results.machine
    out = [
        "",
        f"{results.projects} projects x {results.snapshots_per_project:,} snapshots = "
        f"{results.total:,}; {m['cpus']} x {m['cpu']}, {m['memory']}, Python {m['python']}, "
        f"PostgreSQL {m['postgresql']}; code {m['code']}; {m['when']}",
        "",
        table(headers, main_rows),
        "",
        "client CPU: this process (bare fetch, COPY, naive) or the snapsync process; PG CPU: the "
        "PostgreSQL server's processes (any other sessions on it included); other load: CPU used "
        "by anything else on the machine, as a share of its capacity (it slows every phase it "
        "overlaps).",
    ]
    limited = [p for p in phases if p.requests]
    if limited:
        default = DEFAULT_RATE_LIMIT
        floors = ", ".join(
            f"{p.name.removeprefix('snapsync ')} {p.requests / default:.1f}s" for p in limited
        )
        out.append(
            f"snapsync ran with SNAPSYNC_MAX_REQUESTS_PER_SECOND={results.machine['rate_limit']:g}"
            f" (0: no limit); at its default of {default:g} the API requests alone would take: "
            f"{floors}."
        )
    synced = [p for p in phases if p.writes]
    if synced:
        seen_tables = {t for p in synced for t in p.writes}
        tables = [t for t in SNAPSYNC_TABLES if t in seen_tables]
        tables += sorted(seen_tables - set(tables))
        rows = [[p.name, *(_writes(p.writes.get(t)) for t in tables)] for p in synced]
        out += [
            "",
            "rows written (pg_stat_user_tables deltas: +inserted ~updated -deleted)",
            "",
            table(["phase", *tables], rows),
        ]
        counts = [[p.name, *(f"{p.counts.get(k, 0):,}" for k in SUMMARY_KEYS)] for p in synced]
        out += ["", "snapsync's own counts (sum of its summary lines)", ""]
        out.append(table(["phase", *SUMMARY_KEYS], counts))
    out += requests_per_sync(results)
    if results.change:
        c = results.change
        out += [
            "",
            f"change between the 2nd and 3rd sync: {c['changed']:,} status changes, "
            f"{c['deleted']:,} deleted, {c['added']:,} new ({c['requests']:,} control requests, "
            f"{c['seconds']}s, not timed)",
        ]
    if results.ratios:
        rows = [
            [
                r["ratio"],
                f"{r['value']:g}",
                r["target"],
                "met" if r["met"] else "NOT met",
                r["detail"],
            ]
            for r in results.ratios
        ]
        out += ["", table(["ratio", "value", "target", "", "detail"], rows)]
    return "\n".join(out)


def _cpu(cpu: dict[str, float], key: str) -> str:
    return f"{cpu[key]:.1f}" if key in cpu else "-"


def _other_load(cpu: dict[str, float]) -> str:
    if not cpu.get("capacity"):
        return "-"
    return f"{100 * cpu['other'] / cpu['capacity']:.0f}%"


def _writes(counts: list[int] | None) -> str:
    if counts is None:
        return "-"
    ins, upd, dele = counts
    return f"+{ins:,} ~{upd:,} -{dele:,}"


def write_json(results: Results, path: Path) -> None:
    payload = asdict(results)
    for key, phase in results.phases.items():
        payload["phases"][key]["snapshots_per_second"] = round(phase.rate, 1)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


# ---- command line --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="Measure snapsync against a bare fetch, a COPY ceiling and a naive ORM sync.",
    )
    parser.add_argument("--quick", action="store_true", help="2 projects x 2,000 (a smoke run)")
    parser.add_argument("--projects", type=int, help="projects (default 20; --quick 2)")
    parser.add_argument("--snapshots", type=int, help="per project (default 50,000; --quick 2,000)")
    parser.add_argument(
        "--naive-sample",
        type=int,
        help="snapshots the naive sync stores (default 20,000; --quick 1,000)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("SNAPSYNC_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a PostgreSQL server to create the throwaway database on "
        f"(default $SNAPSYNC_BENCH_DATABASE_URL or {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=0.0,
        metavar="RPS",
        help="SNAPSYNC_MAX_REQUESTS_PER_SECOND for the syncs (default 0: no limit, as the bare "
        "fetch; snapsync's own default is 20, the API's throttle)",
    )
    parser.add_argument(
        "--concurrent-requests",
        type=int,
        metavar="N",
        help="SNAPSYNC_MAX_CONCURRENT_REQUESTS for the syncs (default: snapsync's own)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASE_GROUPS),
        help="comma-separated: main (bare fetch, COPY, naive, the syncs), latency (one project "
        "behind a slow API against a plain 4-way fetch); default both",
    )
    parser.add_argument(
        "--latency",
        type=float,
        default=LATENCY_SECONDS,
        metavar="SECONDS",
        help=f"the latency phase's seconds per request (default {LATENCY_SECONDS:g})",
    )
    parser.add_argument(
        "--latency-per-item",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="the latency phase's seconds per item a page holds, on top (default 0)",
    )
    parser.add_argument(
        "--latency-snapshots",
        type=int,
        help=f"the latency phase's project size (default {LATENCY_SNAPSHOTS:,}; --quick 4,000)",
    )
    parser.add_argument("--keep-database", action="store_true", help="do not drop it at the end")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each `snapsync sync` under py-spy (raw collapsed stacks in DIR; times inflate)",
    )
    parser.add_argument(
        "--logs",
        type=Path,
        metavar="DIR",
        help="keep what the simulator and each snapsync command printed in DIR",
    )
    args = parser.parse_args(argv)
    projects = args.projects or (2 if args.quick else 20)
    snapshots = args.snapshots or (2_000 if args.quick else 50_000)
    if projects < 1 or snapshots < 1:
        parser.error("--projects and --snapshots must be at least 1")
    phases = frozenset(p.strip() for p in args.phases.split(",") if p.strip())
    if not phases or not phases <= set(PHASE_GROUPS):
        parser.error(f"--phases takes a comma-separated list of {', '.join(PHASE_GROUPS)}")
    latency_snapshots = args.latency_snapshots or (4_000 if args.quick else LATENCY_SNAPSHOTS)
    if latency_snapshots < 1 or not 0 <= args.latency <= 600 or not 0 <= args.latency_per_item <= 1:
        parser.error(
            "--latency-snapshots >= 1, 0 <= --latency <= 600, 0 <= --latency-per-item <= 1"
        )
    if args.concurrent_requests is not None and not 1 <= args.concurrent_requests <= 64:
        parser.error("--concurrent-requests must be between 1 and 64")
    for directory in (args.profile, args.logs):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
    return Options(
        projects=projects,
        snapshots=snapshots,
        naive_sample=args.naive_sample or (1_000 if args.quick else 20_000),
        database_url=args.database_url,
        seed=args.seed,
        rate_limit=args.rate_limit,
        keep_database=args.keep_database,
        json_path=args.json,
        profile_dir=args.profile.resolve() if args.profile else None,
        logs_dir=args.logs.resolve() if args.logs else None,
        phases=phases,
        latency=args.latency,
        latency_per_item=args.latency_per_item,
        latency_snapshots=latency_snapshots,
        concurrent_requests=args.concurrent_requests,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        results = asyncio.run(run(options))
    except BenchError as exc:
        print(f"bench.py: {exc}", file=sys.stderr)
        return 1
    print(render(results))
    if options.json_path is not None:
        write_json(results, options.json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
