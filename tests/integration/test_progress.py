"""`snapsync sync`'s live progress: drawn on a terminal (a pseudo-terminal 80 columns wide,
against a simulator with latency), absent otherwise and with --quiet, where the output is
the summary lines exactly; and the view's fitting of short ids and columns to a width."""

from __future__ import annotations

import asyncio
import fcntl
import io
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

from app import progress

from ..conftest import cli_env, run_cli
from .simulated import serve

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-B]")
SECONDS = re.compile(r" seconds=\d+\.\d\d")


@dataclass
class Terminal:
    """What a command wrote to a pseudo-terminal: its exit code and the chunks, each with the
    time it was read."""

    returncode: int
    chunks: list[tuple[float, str]]

    @property
    def text(self) -> str:
        return "".join(chunk for _, chunk in self.chunks)

    def screen_lines(self) -> list[str]:
        """Every line as the terminal shows it: escapes removed, split at \\r and \\n."""
        plain = ANSI.sub("", self.text)
        return [part for line in plain.split("\n") for part in line.split("\r")]


def run_in_pty(
    *args: str, env: dict[str, str], cwd: Path, columns: int = 80, rows: int = 24
) -> Terminal:
    """Run `python -m app ARGS` with stdin, stdout and stderr on a pseudo-terminal of that size."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in cli_env(env).items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm-256color"},
        cwd=cwd,
        start_new_session=True,
    )
    os.close(slave)
    chunks: list[tuple[float, str]] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not data:
                return
            chunks.append((time.monotonic(), data.decode(errors="replace")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(10)
        os.close(master)
    return Terminal(returncode, chunks)


async def test_sync_on_a_terminal_shows_live_progress_within_80_columns(
    database_url: str, workdir: Path
) -> None:
    # A quarter of the requests answered 429 with Retry-After: 1, which the view shows.
    async with serve(projects=3, snapshots=60, seed=7, latency=0.15, fault_429=0.25) as sim:
        env = {
            **sim.env(),
            "SNAPSYNC_DATABASE_URL": database_url,
            "SNAPSYNC_PAGE_SIZE": "5",
            "SNAPSYNC_MAX_RETRIES": "20",
        }
        done = await asyncio.to_thread(run_in_pty, "sync", env=env, cwd=workdir)
    assert done.returncode == 0, done.text
    lines = done.screen_lines()
    summaries = [i for i, line in enumerate(lines) if ": succeeded run=" in line]
    assert len(summaries) == 3, done.text
    names = progress.short_ids(sim.project_ids)
    shown = [
        line
        for line in lines[: summaries[0]]
        if any(line.startswith(name + " ") for name in names.values())
    ]
    # Project lines, with pages done of expected, drawn many times while the sync ran.
    counts = {m.group(0) for line in shown for m in re.finditer(r"\b\d+/12\b", line)}
    assert len(counts) >= 3, shown
    assert any("syncing" in line for line in shown)
    assert any("429 wait" in line for line in shown), shown
    # The last two columns: retries and waits (for the rate limit or a Retry-After).
    last_columns = [line.split()[-2:] for line in shown]
    assert any(int(retries) > 0 and int(waits) > 0 for retries, waits in last_columns), shown
    assert " INFO " not in done.text  # at INFO the view, not log lines, tells what happens
    assert any(re.search(r"\d+/\d+ pages, \d/3 projects", line) for line in lines)
    # The view's header ("project   state ..."), not a warning line about a project above it.
    headers = [line for line in lines if re.match(r"project {2,}", line)]
    assert headers and all("pages" in h and "seen" in h and "waits" in h for h in headers), headers
    # Progress first, then the summary lines as they are off a terminal.
    first_progress = next(t for t, chunk in done.chunks if "syncing" in ANSI.sub("", chunk))
    first_summary = next(t for t, chunk in done.chunks if ": succeeded run=" in chunk)
    assert first_progress < first_summary
    drawn = lines[: summaries[0]]  # the summary lines are as long as they are off a terminal
    assert max(len(line) for line in drawn) <= 80, max(drawn, key=len)
    # The view used the width it was given: the table is 80 columns wide.
    assert any(len(line.rstrip()) == 80 for line in headers), headers
    for pid in sim.project_ids:
        assert any(line.startswith(f"{pid}: succeeded run=") for line in lines[summaries[0] :])


async def test_off_a_terminal_and_with_quiet_the_output_is_the_summary_lines(
    database_url: str, workdir: Path
) -> None:
    async with serve(projects=2, snapshots=12, seed=4, latency=0.05) as sim:
        env = {
            **sim.env(),
            "SNAPSYNC_DATABASE_URL": database_url,
            "SNAPSYNC_PAGE_SIZE": "5",
            "SNAPSYNC_LOG_LEVEL": "WARNING",
            "SNAPSYNC_MAX_CONCURRENT_PROJECTS": "1",  # run ids in the order of the projects
        }
        piped = await run_cli("sync", env=env, cwd=workdir)
        quiet = await asyncio.to_thread(run_in_pty, "sync", "--quiet", env=env, cwd=workdir)
    a, b = sim.project_ids
    # Only each run's seconds differ from one run to the next.
    assert piped.code == 0
    assert piped.stderr == ""
    assert SECONDS.sub(" seconds=S", piped.stdout) == (
        f"{a}: succeeded run=1 pages=3 seen=12 inserted=12 updated=0 deleted=0 "
        "transitions=12 rejected=0 seconds=S\n"
        f"{b}: succeeded run=2 pages=3 seen=12 inserted=12 updated=0 deleted=0 "
        "transitions=12 rejected=0 seconds=S\n"
    )
    # On a terminal with --quiet: the same lines (the second pass finds nothing new), with
    # the terminal's line endings, and no escape sequence.
    assert quiet.returncode == 0
    assert SECONDS.sub(" seconds=S", quiet.text) == (
        f"{a}: succeeded run=3 pages=3 seen=12 inserted=0 updated=0 deleted=0 "
        "transitions=0 rejected=0 seconds=S\r\n"
        f"{b}: succeeded run=4 pages=3 seen=12 inserted=0 updated=0 deleted=0 "
        "transitions=0 rejected=0 seconds=S\r\n"
    )


def test_short_ids_are_the_shortest_prefix_that_tells_projects_apart() -> None:
    assert progress.short_ids(["0123456789ab", "fedcba987654"]) == {
        "0123456789ab": "012345",
        "fedcba987654": "fedcba",
    }
    # A common prefix: the first characters that differ, for every id alike.
    assert progress.short_ids(["abcdef0001-zone-east", "abcdef0002-zone-east", "zz"]) == {
        "abcdef0001-zone-east": "abcdef0001",
        "abcdef0002-zone-east": "abcdef0002",
        "zz": "zz",
    }
    # A long common prefix and distinct endings: the end, marked as such.
    assert progress.short_ids(["tenant-0000-aaaaaa", "tenant-0000-bbbbbb"]) == {
        "tenant-0000-aaaaaa": "…aaaaaa",
        "tenant-0000-bbbbbb": "…bbbbbb",
    }
    assert progress.short_ids(["abc"], minimum=6) == {"abc": "abc"}
    assert progress.short_ids([]) == {}


def test_columns_drop_least_important_first_and_the_bar_takes_the_rest() -> None:
    # Three columns that need 8, 5 and 6, the bar (index 1) at least BAR_MIN.
    needed = [8, 8, 5, 6]
    full = 8 + progress.BAR_MIN + 5 + 6 + 3 * 3
    assert progress.fit(needed, full, bar=1) == [8, progress.BAR_MIN, 5, 6]
    assert progress.fit(needed, full + 7, bar=1) == [8, progress.BAR_MIN + 7, 5, 6]
    assert progress.fit(needed, full - 1, bar=1) == [8, progress.BAR_MIN + 8, 5, None]
    assert progress.fit(needed, 8 + 3 + progress.BAR_MIN, bar=1) == [
        8,
        progress.BAR_MIN,
        None,
        None,
    ]
    assert progress.fit(needed, 12, bar=1) == [8, None, None, None]
    assert progress.fit(needed, 3, bar=1) == [8, None, None, None]  # the project stays
    assert progress.fit([4, 4], 11) == [4, 4]
    assert progress.fit([4, 4], 10) == [4, None]


@pytest.mark.parametrize("width", [40, 60, 80, 100, 160])
def test_the_view_fills_the_width_without_cutting_or_wrapping(width: int) -> None:
    ids = [f"{n:02d}f0c2a8e1b7d94c3a9e5f6b0d1c2e3f" for n in range(12)]
    tracker = progress.Tracker(ids, clock=lambda: 100.0)
    tracker.started = 40.0
    tracker.lines[ids[0]] = progress.ProjectLine(
        ids[0],
        syncing=True,
        pages=117,
        pages_expected=2048,
        snapshots=116_812,
        run_transitions=1234,
        retries=3,
        waits=12,
        waiting="Retry-After",
        wait_until=104.0,
    )
    tracker.lines[ids[1]] = progress.ProjectLine(
        ids[1], syncing=True, pages=5, pages_expected=9, snapshots=4500
    )
    tracker.lines[ids[2]] = progress.ProjectLine(
        ids[2], succeeded=1, finished_at=90.0, last_seconds=2.5, pages=3
    )
    tracker.lines[ids[3]] = progress.ProjectLine(
        ids[3], failed=1, finished_at=90.0, error="HTTP 403"
    )
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    for view in (
        progress.sync_view(tracker),
        progress.View(tracker, progress.DEMO_COLUMNS, progress.sync_overall),
    ):
        console.print(view)
        out = console.export_text().splitlines()
        assert all(len(row) <= width for row in out), out
        assert "…" not in "".join(out)  # nothing cut (these ids differ in their first two)
        header = next(row for row in out if row.startswith("project"))
        assert len(header.rstrip()) == width or width < 60, out
        rows = {row.split()[0]: row for row in out[2:14]}
        assert set(rows) == set(progress.short_ids(ids).values()), out
        assert "429 wait 4s" in rows[progress.short_ids(ids)[ids[0]]]
        if width >= 80:
            assert "117/2048" in out[2] and "116,812" in out[2], out


async def test_the_rate_limiter_says_when_a_request_has_to_wait() -> None:
    from app import ratelimit

    now = [0.0]
    limiter = ratelimit.AdaptiveRateLimiter(rate=1.0, clock=lambda: now[0])
    waits: list[str] = []
    await limiter.acquire(waiting=lambda: waits.append("first"))
    assert waits == []  # the bucket held a token
    second = asyncio.create_task(limiter.acquire(waiting=lambda: waits.append("second")))
    await asyncio.sleep(0)
    assert waits == ["second"] and not second.done()
    now[0] = 1.0
    await asyncio.wait_for(second, 5)
