"""Security: hostile strings stored verbatim and shown safely, no secret in any output or table,
TLS certificates always verified, and the reporting role unable to write."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from sqlalchemy.engine import make_url

from app import settings as settings_module
from app.simulator import server, state

from ..conftest import _asyncpg_dsn, run_cli
from .simulated import RunningSimulator, serve
from .test_hostile_input import HOSTILE_STRINGS
from .test_reliability import report_figures
from .test_sync_e2e import assert_exact_mirror

APP = Path(__file__).resolve().parents[2] / "app"

# ---- hostile strings ------------------------------------------------------------------------

STRING_FIELDS = (
    "snapshot_name",
    "desktop_id",
    "desktop_name",
    "desktop_sid",
    "desktop_pool_id",
    "description",
    "create_type",
    "restore_fail_reason",
)


async def test_sql_shaped_and_control_strings_are_stored_verbatim(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=3, seed=12) as sim:
        pid = sim.project_ids[0]
        hostile_ids = []
        for n, text in enumerate(HOSTILE_STRINGS):
            fields: dict[str, Any] = dict.fromkeys(STRING_FIELDS, text)
            fields.update(snapshot_id=f"{text}#{n}", status=text)
            sim.population.add_snapshot(pid, fields)
            hostile_ids.append(f"{text}#{n}")
        result = await run_cli(
            "sync", env={**sim.env(), "SNAPSYNC_DATABASE_URL": database_url}, cwd=workdir
        )
        assert result.code == 0, result.output
        assert "rejected=0" in result.stdout
        await assert_exact_mirror(sql, sim)
        for n, text in enumerate(HOSTILE_STRINGS):
            row = await sql.fetchrow(
                "SELECT * FROM snapshots WHERE project_id = $1 AND snapshot_id = $2",
                pid,
                hostile_ids[n],
            )
            assert row is not None, repr(text)
            assert all(row[f] == text for f in (*STRING_FIELDS, "status")), repr(text)
            assert json.loads(row["raw"])["description"] == text
            history = await sql.fetchval(
                "SELECT to_status FROM snapshot_status_history WHERE snapshot_id = $1",
                hostile_ids[n],
            )
            assert history == text
        tables = await sql.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY($1)",
            ["snapshot_records", "snapshot_status_history", "sync_runs", "projects"],
        )
        assert tables == 4
        as_json = await run_cli(
            "status", "--json", env={"SNAPSYNC_DATABASE_URL": database_url}, cwd=workdir
        )
        assert as_json.code == 0, as_json.output
        counts = json.loads(as_json.stdout)[0]["snapshots_by_status"]
        assert all(counts.get(text) == 1 for text in HOSTILE_STRINGS), counts
    report_figures(
        "hostile_strings_verbatim",
        strings=len(HOSTILE_STRINGS),
        columns_checked=len(STRING_FIELDS) + 3,
    )


def _terminal_controls(text: str) -> list[str]:
    """Control characters a terminal acts on (newlines and tabs aside)."""
    return sorted({c for c in text if (ord(c) < 32 and c not in "\n\t") or c == "\x7f"})


async def test_status_shows_hostile_api_text_literally(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=2) as sim:
        pid = sim.project_ids[0]
        sim.population.add_snapshot(
            pid,
            {"status": "create_failed", "desktop_name": "[/] [bold]desk[/bold]"},
        )
        env = {**sim.env(), "SNAPSYNC_DATABASE_URL": database_url}
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
        status = await run_cli("status", env=env, cwd=workdir)
        assert status.code == 0, status.output
        assert "Traceback" not in status.output
        assert "[/] [bold]desk[/bold]" in status.stdout


async def test_status_output_carries_no_terminal_control_characters(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    """Escape sequences in API fields are stored verbatim but never reach the terminal."""
    async with serve(projects=1, snapshots=2) as sim:
        pid = sim.project_ids[0]
        sim.population.add_snapshot(pid, {"status": "\x1b[2J\x1b[31mred"})
        sim.population.add_snapshot(
            pid, {"status": "create_failed", "desktop_name": "\x1b]0;title\x07\x1b[31mdesk"}
        )
        env = {**sim.env(), "SNAPSYNC_DATABASE_URL": database_url}
        assert (await run_cli("sync", env=env, cwd=workdir)).code == 0
        status = await run_cli("status", env=env, cwd=workdir)
        assert status.code == 0, status.output
        assert "red=1" in status.stdout and "desk" in status.stdout, status.stdout
        assert _terminal_controls(status.stdout) == []
        stored = await sql.fetchval(
            "SELECT count(*) FROM snapshots WHERE status = $1", "\x1b[2J\x1b[31mred"
        )
        assert stored == 1


async def test_api_data_cannot_forge_console_log_lines(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    async with serve(projects=1, snapshots=2) as sim:
        pid = sim.project_ids[0]
        forged = "x\n2026-01-01T00:00:00Z ERROR   app.sync forged line\x1b[2K"
        items = [s.to_api() for s in sim.population.snapshots(pid)]
        page = {"total_count": len(items), "desktop_snapshots": [*items, {"snapshot_id": forged}]}
        await sim.control(
            "POST", f"/_sim/projects/{pid}/raw-pages", [{"status": 200, "body": json.dumps(page)}]
        )
        env = {**sim.env(), "SNAPSYNC_DATABASE_URL": database_url}
        result = await run_cli("sync", env=env, cwd=workdir)
        assert result.code == 0, result.output
        assert "rejected=1" in result.stdout
        lines = result.stderr.splitlines()
        assert not [line for line in lines if line.startswith("2026-01-01T00:00:00Z")]
        assert _terminal_controls(result.stderr) == []


# ---- secrets ------------------------------------------------------------------------------


def _secret(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


class CaptureIamTokens:
    """A simulator middleware that remembers every token IAM issues (they are secrets too)."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    async def __call__(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        token = response.headers.get("X-Subject-Token")
        if token:
            self.tokens.append(token)
        return response


def _with_password(url: str, password: str) -> str:
    return make_url(url).set(password=password).render_as_string(hide_password=False)


def _assert_json_lines(stderr: str) -> int:
    """Every line is a JSON object (or the CLI's own one-line `snapsync:` message)."""
    count = 0
    for line in stderr.splitlines():
        if not line.strip() or line.startswith("snapsync: "):
            continue
        entry = json.loads(line)
        assert isinstance(entry, dict) and "message" in entry, line
        count += 1
    return count


async def _dump_tables(sql: asyncpg.Connection) -> str:
    names = await sql.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
    )
    parts = []
    for (name,) in names:
        rows = await sql.fetch(f'SELECT t::text FROM "{name}" AS t')
        parts.extend(r[0] for r in rows)
    return "\n".join(parts)


@pytest.mark.parametrize("mode", ["aksk", "password", "token"])
async def test_no_secret_in_any_output_or_table(
    mode: str, database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    """At DEBUG, console and JSON: migrate, sync through faults, status, and a sync with wrong
    credentials print no secret (credentials, IAM tokens, the database password), and no
    table stores one."""
    secrets = {
        "aksk": _secret("sk"),
        "password": _secret("pw"),
        "token": _secret("tok"),
        "database": _secret("dbpw"),
        "wrong": _secret("wrong"),
    }
    iam = CaptureIamTokens()
    async with serve(
        projects=2,
        snapshots=60,
        fault_500=0.2,
        secret_key=secrets["aksk"],
        iam_password=secrets["password"],
        auth_token=secrets["token"],
        middlewares=[iam],
    ) as sim:
        url = _with_password(database_url, secrets["database"])
        base = {
            **sim.env(),
            "SNAPSYNC_DATABASE_URL": url,
            "SNAPSYNC_LOG_LEVEL": "DEBUG",
            "SNAPSYNC_MAX_RETRIES": "10",
        }
        credentials = {
            "aksk": {"SNAPSYNC_ACCESS_KEY": "SIMULATORAK", "SNAPSYNC_SECRET_KEY": secrets["aksk"]},
            "password": {
                "SNAPSYNC_IAM_USER": "simuser",
                "SNAPSYNC_IAM_PASSWORD": secrets["password"],
                "SNAPSYNC_IAM_DOMAIN": "simdomain",
            },
            "token": {"SNAPSYNC_AUTH_TOKEN": secrets["token"]},
        }[mode]
        wrong = {
            "aksk": {"SNAPSYNC_SECRET_KEY": secrets["wrong"]},
            "password": {"SNAPSYNC_IAM_PASSWORD": secrets["wrong"]},
            "token": {"SNAPSYNC_AUTH_TOKEN": secrets["wrong"]},
        }[mode]
        env = {**base, "SNAPSYNC_AUTH": mode, **credentials}
        as_json = {**env, "SNAPSYNC_LOG_FORMAT": "json"}
        migrate, good, bad = await asyncio.gather(
            run_cli("migrate", env=as_json, cwd=workdir),
            run_cli("sync", env=as_json, cwd=workdir),
            run_cli("sync", env={**env, **wrong}, cwd=workdir),
        )
        assert migrate.code == 0, migrate.output
        assert good.code == 0, good.output
        assert bad.code == 1, bad.output
        status, status_json = await asyncio.gather(
            run_cli("status", env=env, cwd=workdir),
            run_cli("status", "--json", env=as_json, cwd=workdir),
        )
        assert status.code == 0 and status_json.code == 0
        json_lines = sum(_assert_json_lines(r.stderr) for r in (migrate, good, status_json))
        outputs = [migrate, good, bad, status, status_json]
        text = "\n".join(r.output for r in outputs)
        assert "DEBUG" in bad.stderr and '"level": "debug"' in good.stderr
        await assert_exact_mirror(sql, sim)
        stored = await _dump_tables(sql)
        if mode == "password":
            assert iam.tokens, "no IAM token was issued"
        for name, value in [*secrets.items(), *(("iam token", t) for t in iam.tokens)]:
            assert value not in text, f"{name} printed in {mode} mode"
            assert value not in stored, f"{name} stored in {mode} mode"
    report_figures(
        f"no_secrets_{mode}",
        commands_run=len(outputs),
        output_lines_checked=text.count("\n") + 1,
        json_log_lines=json_lines,
        secrets_checked=len(secrets) + len(iam.tokens),
    )


async def test_no_database_password_when_the_database_is_unreachable_or_misconfigured(
    workdir: Path,
) -> None:
    secret = _secret("dbpw")
    unreachable = {"SNAPSYNC_DATABASE_URL": f"postgresql://postgres:{secret}@127.0.0.1:1/x"}
    misconfigured = {"SNAPSYNC_DATABASE_URL": f"mysql://root:{secret}@127.0.0.1/x"}
    projects = {"SNAPSYNC_PROJECTS": "0" * 32, "SNAPSYNC_AUTH": "token"}
    projects["SNAPSYNC_AUTH_TOKEN"] = _secret("tok")
    results = await asyncio.gather(
        run_cli("migrate", env=unreachable, cwd=workdir),
        run_cli("status", env={**unreachable, "SNAPSYNC_LOG_LEVEL": "DEBUG"}, cwd=workdir),
        run_cli("sync", env={**unreachable, **projects}, cwd=workdir),
        run_cli("status", env=misconfigured, cwd=workdir),
    )
    for result in results[:3]:
        assert result.code == 1, result.output
    assert results[3].code == 2, results[3].output
    for result in results:
        assert "Traceback" not in result.output
        assert secret not in result.output
        assert projects["SNAPSYNC_AUTH_TOKEN"] not in result.output


# ---- TLS ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_https(
    tmp_path: Path, *names: str, **options: Any
) -> AsyncIterator[tuple[RunningSimulator, Path]]:
    """The simulator over HTTPS with a certificate for `names` from a fresh private CA."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    ca_file = tmp_path / f"ca-{uuid.uuid4().hex[:8]}.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    opts = state.SimulatorOptions(port=0, tick_seconds=0, **options)
    population = state.build_population(opts)
    runner = web.AppRunner(server.create_app(opts, population=population), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield (
            RunningSimulator(
                url=f"https://127.0.0.1:{port}",
                population=population,
                options=dataclasses.replace(opts, port=port),
            ),
            ca_file,
        )
    finally:
        await runner.cleanup()


async def test_tls_is_verified_and_a_ca_bundle_is_the_only_way_through(
    database_url: str, sql: asyncpg.Connection, workdir: Path, tmp_path: Path
) -> None:
    async with (
        serve_https(tmp_path, "127.0.0.1", "localhost", projects=1, snapshots=30) as (sim, ca),
        serve_https(tmp_path, "localhost", projects=1, snapshots=5) as (wrong_name, wrong_ca),
    ):
        env = {**sim.env(SNAPSYNC_MAX_RETRIES="0"), "SNAPSYNC_DATABASE_URL": database_url}
        untrusted, trusted, mismatched = await asyncio.gather(
            run_cli("sync", env=env, cwd=workdir),
            run_cli("sync", env={**env, "SNAPSYNC_CA_BUNDLE": str(ca)}, cwd=workdir),
            run_cli(
                "sync",
                env={
                    **wrong_name.env(SNAPSYNC_MAX_RETRIES="0"),
                    "SNAPSYNC_DATABASE_URL": database_url,
                    "SNAPSYNC_CA_BUNDLE": str(wrong_ca),
                },
                cwd=workdir,
            ),
        )
        assert trusted.code == 0, trusted.output
        await assert_exact_mirror(sql, sim)
        for refused in (untrusted, mismatched):
            assert refused.code == 1, refused.output
            assert "Traceback" not in refused.output
            assert "TLS" in refused.stdout and "SNAPSYNC_CA_BUNDLE" in refused.stdout
        assert "certificate verify failed" in untrusted.stdout, untrusted.stdout
        assert "hostname" in mismatched.stdout.lower() or "IP address" in mismatched.stdout
        errors = await sql.fetch("SELECT error FROM sync_runs WHERE status = 'failed'")
        assert all("TLS" in e["error"] for e in errors)
    report_figures(
        "tls",
        refused_untrusted=True,
        refused_wrong_hostname=True,
        accepted_with_ca_bundle=True,
    )


async def test_a_ca_bundle_without_certificates_is_a_configuration_error(
    database_url: str, workdir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    async with serve_https(tmp_path, "127.0.0.1", projects=1, snapshots=5) as (sim, _):
        env = {
            **sim.env(),
            "SNAPSYNC_DATABASE_URL": database_url,
            "SNAPSYNC_CA_BUNDLE": str(empty),
        }
        result = await run_cli("sync", env=env, cwd=workdir)
        assert result.code == 2, result.output
        assert "Traceback" not in result.output
        assert "SNAPSYNC_CA_BUNDLE" in result.stderr


async def test_tls_failure_at_iam_login_names_the_ca_bundle(
    database_url: str, workdir: Path, tmp_path: Path
) -> None:
    async with serve_https(tmp_path, "127.0.0.1", projects=1, snapshots=5) as (sim, _):
        env = {
            **sim.env(SNAPSYNC_MAX_RETRIES="0"),
            "SNAPSYNC_DATABASE_URL": database_url,
            "SNAPSYNC_AUTH": "password",
            "SNAPSYNC_IAM_USER": "simuser",
            "SNAPSYNC_IAM_PASSWORD": "simpassword",
            "SNAPSYNC_IAM_DOMAIN": "simdomain",
        }
        result = await run_cli("sync", env=env, cwd=workdir)
        assert result.code == 1, result.output
        assert "TLS" in result.stdout and "SNAPSYNC_CA_BUNDLE" in result.stdout, result.stdout


UNVERIFIED = re.compile(
    r"verify_ssl\s*=\s*False|ssl\s*=\s*False|verify\s*=\s*False|CERT_NONE"
    r"|check_hostname\s*=\s*False|_create_unverified_context|PYTHONHTTPSVERIFY"
)


def test_no_setting_or_code_path_turns_tls_verification_off() -> None:
    fields = set(settings_module.Settings.model_fields)
    suspicious = {f for f in fields if re.search(r"verif|insecure|ssl|tls|cert", f)}
    assert suspicious == set(), suspicious
    assert "ca_bundle" in fields
    offenders = [
        f"{path.relative_to(APP.parent)}:{n}"
        for path in APP.rglob("*.py")
        if "simulator" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if UNVERIFIED.search(line)
    ]
    assert offenders == []


# ---- the reporting role ---------------------------------------------------------------------


async def test_reader_role_reads_everything_and_writes_nothing(
    database_url: str, sql: asyncpg.Connection, workdir: Path
) -> None:
    if not await sql.fetchval("SELECT 1 FROM pg_roles WHERE rolname = 'snapsync_reader'"):
        pytest.skip("no snapsync_reader role: migration 0002 has not created it")
    async with serve(projects=1, snapshots=20) as sim:
        result = await run_cli(
            "sync", env={**sim.env(), "SNAPSYNC_DATABASE_URL": database_url}, cwd=workdir
        )
        assert result.code == 0, result.output
    login = f"snapsync_reader_probe_{uuid.uuid4().hex[:10]}"
    await sql.execute(f'CREATE ROLE "{login}" LOGIN IN ROLE snapsync_reader')
    refused: list[str] = []
    try:
        reader = await asyncpg.connect(**{**_asyncpg_dsn(database_url), "user": login})  # type: ignore[arg-type]
        try:
            relations = await sql.fetch(
                "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
                "AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1"
            )
            assert {"snapshots", "snapshot_records", "sync_runs"} <= {r[0] for r in relations}
            for name, kind in relations:
                await reader.fetch(f'SELECT * FROM "{name}" LIMIT 1')
                first = await sql.fetchval(
                    "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass "
                    "AND attnum > 0 AND NOT attisdropped ORDER BY attnum LIMIT 1",
                    f'public."{name}"',
                )
                granted = await sql.fetchrow(
                    "SELECT has_table_privilege($1, $2, 'SELECT') AS can_read, "
                    "has_table_privilege($1, $2, "
                    "'INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER') AS can_write",
                    login,
                    f'public."{name}"',
                )
                assert granted["can_read"] and not granted["can_write"], (name, dict(granted))
                statements = [
                    f'INSERT INTO "{name}" DEFAULT VALUES',
                    f'UPDATE "{name}" SET "{first}" = "{first}"',
                    f'DELETE FROM "{name}"',
                ]
                if kind == "r":
                    statements.append(f'TRUNCATE "{name}"')
                # A view that cannot be updated at all says so before checking privileges.
                refusal = (
                    asyncpg.InsufficientPrivilegeError
                    if kind == "r"
                    else (
                        asyncpg.InsufficientPrivilegeError,
                        asyncpg.ObjectNotInPrerequisiteStateError,
                    )
                )
                for statement in statements:
                    with pytest.raises(refusal):
                        await reader.execute(statement)
                    refused.append(statement)
            sequences = await sql.fetch(
                "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
            )
            for (sequence,) in sequences:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await reader.fetchval("SELECT nextval($1)", f'public."{sequence}"')
                refused.append(f"nextval({sequence})")
            for statement in ("CREATE TABLE intruder (x int)", "CREATE VIEW intruder AS SELECT 1"):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await reader.execute(statement)
                refused.append(statement)
        finally:
            await reader.close()
    finally:
        await sql.execute(f'DROP ROLE IF EXISTS "{login}"')
    report_figures(
        "reader_role",
        relations_read=len(relations),
        writes_refused=len(refused),
    )
