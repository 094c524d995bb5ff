"""Settings: contract names, defaults, and one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import errors, settings

from ..conftest import run_cli_sync


def test_defaults_match_the_contract(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = settings.Settings()
    assert s.region == "cn-north-4"
    assert s.auth == "aksk"
    assert s.sync_interval == 300
    assert s.hot_interval == 15
    assert s.page_size == 1000
    assert s.max_concurrent_projects == 8
    assert s.max_concurrent_requests == 8
    assert s.request_timeout == 30
    assert s.max_retries == 5
    assert s.delete_after_misses == 2
    assert (s.http_host, s.http_port) == ("127.0.0.1", 9108)
    assert (s.log_format, s.log_level) == ("console", "INFO")
    assert s.data_dir == Path(".snapsync")
    assert s.endpoint_for("ap-southeast-1") == "https://workspace.ap-southeast-1.myhuaweicloud.com"


def test_projects_with_and_without_region() -> None:
    got = settings.parse_projects(" aaa , bbb@ap-southeast-1,aaa,", "cn-north-4")
    assert got == [
        settings.Project("aaa", "cn-north-4"),
        settings.Project("bbb", "ap-southeast-1"),
    ]


@pytest.mark.parametrize("entry", ["a b", "id@", "id@Bad Region", "@cn-north-4", "x/y"])
def test_malformed_project_entries_name_the_variable(entry: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        settings.parse_projects(entry, "cn-north-4")
    assert info.value.variable == "SNAPSYNC_PROJECTS"


def test_dotenv_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("SNAPSYNC_PAGE_SIZE=17\nSNAPSYNC_AUTH=token\n")
    s = settings.load_settings()
    assert (s.page_size, s.auth) == (17, "token")


def test_postgresql_scheme_is_accepted_and_made_asyncpg() -> None:
    s = settings.load_settings(database_url="postgresql://u:p@h:5432/d")
    assert s.async_database_url() == "postgresql+asyncpg://u:p@h:5432/d"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SNAPSYNC_PAGE_SIZE": "0"}, "SNAPSYNC_PAGE_SIZE"),
        ({"SNAPSYNC_PAGE_SIZE": "1001"}, "SNAPSYNC_PAGE_SIZE"),
        ({"SNAPSYNC_MAX_CONCURRENT_REQUESTS": "0"}, "SNAPSYNC_MAX_CONCURRENT_REQUESTS"),
        ({"SNAPSYNC_MAX_CONCURRENT_REQUESTS": "65"}, "SNAPSYNC_MAX_CONCURRENT_REQUESTS"),
        ({"SNAPSYNC_MAX_CONCURRENT_REQUESTS": "four"}, "SNAPSYNC_MAX_CONCURRENT_REQUESTS"),
        ({"SNAPSYNC_AUTH": "kerberos"}, "SNAPSYNC_AUTH"),
        ({"SNAPSYNC_PROJECTS": "ok,not ok"}, "SNAPSYNC_PROJECTS"),
        ({"SNAPSYNC_AUTH": "token", "SNAPSYNC_AUTH_TOKEN": ""}, "SNAPSYNC_AUTH_TOKEN"),
        ({"SNAPSYNC_AUTH": "aksk", "SNAPSYNC_ACCESS_KEY": "AK"}, "SNAPSYNC_SECRET_KEY"),
        ({"SNAPSYNC_AUTH": "password", "SNAPSYNC_IAM_USER": "u"}, "SNAPSYNC_IAM_PASSWORD"),
        ({"SNAPSYNC_SYNC_INTERVAL": "soon"}, "SNAPSYNC_SYNC_INTERVAL"),
        ({"SNAPSYNC_DATABASE_URL": "mysql://x/y"}, "SNAPSYNC_DATABASE_URL"),
        ({"SNAPSYNC_WORKSPACE_ENDPOINT": "ftp://x"}, "SNAPSYNC_WORKSPACE_ENDPOINT"),
        ({"SNAPSYNC_LOG_LEVEL": "LOUD"}, "SNAPSYNC_LOG_LEVEL"),
    ],
)
def test_bad_configuration_exits_2_with_one_line_naming_the_variable(
    tmp_path: Path, env: dict[str, str], variable: str
) -> None:
    base = {"SNAPSYNC_PROJECTS": "p1", "SNAPSYNC_AUTH": "token", "SNAPSYNC_AUTH_TOKEN": "t0ken"}
    result = run_cli_sync("sync", env={**base, **env}, cwd=tmp_path)
    assert result.code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    assert "Traceback" not in result.output


def test_missing_projects_exit_2(tmp_path: Path) -> None:
    result = run_cli_sync(
        "sync", env={"SNAPSYNC_AUTH": "token", "SNAPSYNC_AUTH_TOKEN": "t"}, cwd=tmp_path
    )
    assert result.code == 2
    assert "SNAPSYNC_PROJECTS" in result.stderr


def test_secret_values_are_not_echoed_in_config_errors(tmp_path: Path) -> None:
    result = run_cli_sync(
        "sync",
        env={"SNAPSYNC_DATABASE_URL": "mysql://user:hunter2secret@h/d", "SNAPSYNC_PROJECTS": "p"},
        cwd=tmp_path,
    )
    assert result.code == 2
    assert "hunter2secret" not in result.output
