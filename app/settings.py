"""Configuration: `SNAPSYNC_*` variables from the environment and `.env`, validated once."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pydantic
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app import errors, regions, retention

_PROJECT_ID = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,63}$")
_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
# SNAPSYNC_PROJECTS=auto: every project IAM lists for the credentials, in Workspace regions.
AUTO = "auto"


@dataclass(frozen=True)
class Project:
    """One configured cloud project and the region its endpoints live in."""

    project_id: str
    region: str


class Settings(BaseSettings):
    """Every `SNAPSYNC_*` variable of the contract; build it with `load_settings()`."""

    model_config = SettingsConfigDict(
        env_prefix="SNAPSYNC_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    database_url: SecretStr | None = None
    data_dir: Path = Path(".snapsync")
    projects: str = ""
    # With SNAPSYNC_PROJECTS=auto: the regions to keep (comma-separated); empty: every one.
    regions: str = ""
    region: str = "cn-north-4"
    # None: each region's endpoints come from the region table (app/regions.py).
    workspace_endpoint: str | None = None
    iam_endpoint: str | None = None
    auth: Literal["aksk", "password", "token"] = "aksk"
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    security_token: SecretStr | None = None
    iam_user: str | None = None
    iam_password: SecretStr | None = None
    iam_domain: str | None = None
    auth_token: SecretStr | None = None
    sync_interval: float = Field(default=300, gt=0, allow_inf_nan=False)
    hot_interval: float = Field(default=15, gt=0, allow_inf_nan=False)
    discovery_interval: float = Field(default=3600, gt=0, allow_inf_nan=False)
    page_size: int = Field(default=1000, ge=1, le=1000)
    max_concurrent_projects: int = Field(default=8, ge=1, le=256)
    # Pages of one project's listing in flight at once (after its first page).
    max_concurrent_requests: int = Field(default=8, ge=1, le=64)
    request_timeout: float = Field(default=30, gt=0, allow_inf_nan=False)
    max_retries: int = Field(default=5, ge=0, le=50)
    max_requests_per_second: float = Field(default=20, ge=0, allow_inf_nan=False)
    ca_bundle: Path | None = None
    delete_after_misses: int = Field(default=2, ge=1, le=1000)
    # Retention (app/retention.py); an empty value keeps for ever.
    retain_runs_days: float | None = Field(default=90, gt=0, allow_inf_nan=False)
    retain_deleted_days: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    prune_batch_size: int = Field(default=1000, ge=1, le=100_000)
    prune_interval: float = Field(default=3600, gt=0, allow_inf_nan=False)
    shutdown_grace: float = Field(default=30, ge=0, allow_inf_nan=False)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9108, ge=0, le=65535)
    log_format: Literal["json", "console"] = "console"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("auth", "log_format", mode="before")
    @classmethod
    def _lower_choice(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("retain_runs_days", "retain_deleted_days", mode="before")
    @classmethod
    def _keep_for_ever(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def retention_policy(self) -> retention.Policy:
        """The retention settings as the prune takes them."""
        return retention.Policy(
            runs_days=self.retain_runs_days,
            deleted_days=self.retain_deleted_days,
            batch_size=self.prune_batch_size,
        )

    @field_validator("workspace_endpoint", "iam_endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// base URL")
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is None or not str(value).strip():
            return None
        if not value.is_file():
            raise ValueError(f"{value} is not a readable file of PEM certificates")
        try:
            ssl.create_default_context(cafile=str(value))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise ValueError(f"{value} holds no usable PEM certificate ({exc})") from None
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        value = value.strip()
        if not _REGION.match(value):
            raise ValueError(f"{value!r} is not a region name such as cn-north-4")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        url = value.get_secret_value().strip()
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme not in ("postgresql", "postgres", "postgresql+asyncpg"):
            raise ValueError(
                "must start with postgresql+asyncpg:// or postgresql:// "
                f"(got scheme {scheme or 'none'!r})"
            )
        return SecretStr(url)

    # -- derived values -------------------------------------------------------------------

    @property
    def discovers(self) -> bool:
        """Whether SNAPSYNC_PROJECTS is `auto`: the projects come from IAM (app/discovery.py)."""
        return self.projects.strip().lower() == AUTO

    def project_list(self) -> list[Project]:
        """The configured projects, in order, without duplicates; ConfigError for a region
        whose endpoints are neither in the region table nor given by a template. Empty with
        `auto` (discovery finds them), whose SNAPSYNC_REGIONS it checks."""
        self.kept_regions()
        if self.discovers:
            # Discovery asks the IAM of the home region.
            regions.iam_url(self.region, self.iam_endpoint, variable="SNAPSYNC_REGION")
            return []
        projects = parse_projects(self.projects, self.region)
        for project in projects:
            self.check_region(
                project.region,
                variable="SNAPSYNC_REGION"
                if project.region == self.region
                else "SNAPSYNC_PROJECTS",
            )
        return projects

    def kept_regions(self) -> list[str] | None:
        """SNAPSYNC_REGIONS as a list of Workspace regions, or None (every region)."""
        kept = [r.strip() for r in self.regions.split(",") if r.strip()]
        unknown = [r for r in kept if not regions.is_workspace_region(r)]
        if unknown:
            raise errors.ConfigError(
                "SNAPSYNC_REGIONS",
                f"{', '.join(map(repr, unknown))} is not a Workspace region "
                f"({', '.join(regions.known())})",
            )
        if kept and not self.discovers:
            raise errors.ConfigError(
                "SNAPSYNC_REGIONS", "applies only with SNAPSYNC_PROJECTS=auto; unset it"
            )
        return list(dict.fromkeys(kept)) or None

    def check_region(self, region: str, *, variable: str) -> None:
        """Raise ConfigError naming `variable` unless the endpoints this configuration needs
        in `region` are known: Workspace always, IAM for password login."""
        regions.workspace_url(region, self.workspace_endpoint, variable=variable)
        if self.auth == "password":
            regions.iam_url(region, self.iam_endpoint, variable=variable)

    def endpoint_for(self, region: str) -> str:
        """The Workspace base URL of one region: SNAPSYNC_WORKSPACE_ENDPOINT's template, else
        the region table."""
        return regions.workspace_url(region, self.workspace_endpoint, variable="SNAPSYNC_REGION")

    def iam_endpoint_for(self, region: str) -> str:
        """The IAM base URL of one region: SNAPSYNC_IAM_ENDPOINT's template, else the table."""
        return regions.iam_url(region, self.iam_endpoint, variable="SNAPSYNC_REGION")

    def async_database_url(self) -> str | None:
        """The configured URL with the asyncpg driver, or None for the embedded server."""
        if self.database_url is None:
            return None
        return to_asyncpg_url(self.database_url.get_secret_value())

    def require_credentials(self) -> None:
        """Raise ConfigError unless the credentials of the chosen auth mode are all set."""
        needed: dict[str, object] = {}
        if self.auth == "aksk":
            needed = {
                "SNAPSYNC_ACCESS_KEY": self.access_key,
                "SNAPSYNC_SECRET_KEY": self.secret_key,
            }
        elif self.auth == "password":
            needed = {
                "SNAPSYNC_IAM_USER": self.iam_user,
                "SNAPSYNC_IAM_PASSWORD": self.iam_password,
                "SNAPSYNC_IAM_DOMAIN": self.iam_domain,
            }
        else:
            needed = {"SNAPSYNC_AUTH_TOKEN": self.auth_token}
        for variable, value in needed.items():
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if not text or not str(text).strip():
                raise errors.ConfigError(
                    variable, f"is required when SNAPSYNC_AUTH={self.auth} but is not set"
                )

    def require_projects(self) -> list[Project]:
        """The project list (empty with `auto`), or ConfigError when none is configured."""
        projects = self.project_list()
        if not projects and not self.discovers:
            raise errors.ConfigError(
                "SNAPSYNC_PROJECTS",
                "no project configured (comma-separated PROJECT_ID[@REGION], or auto)",
            )
        return projects


def parse_projects(text: str, default_region: str) -> list[Project]:
    """Parse `ID[@REGION],...`; raise ConfigError naming the bad entry."""
    projects: list[Project] = []
    seen: set[str] = set()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        if entry.lower() == AUTO:
            raise errors.ConfigError(
                "SNAPSYNC_PROJECTS",
                "'auto' cannot be mixed with project ids: set auto alone (narrowed by "
                "SNAPSYNC_REGIONS) or list the ids",
            )
        project_id, _, region = entry.partition("@")
        project_id, region = project_id.strip(), region.strip() or default_region
        if "@" in entry and not entry.partition("@")[2].strip():
            raise errors.ConfigError("SNAPSYNC_PROJECTS", f"entry {entry!r} has an empty region")
        if not _PROJECT_ID.match(project_id):
            raise errors.ConfigError(
                "SNAPSYNC_PROJECTS",
                f"entry {entry!r} is not PROJECT_ID or PROJECT_ID@REGION "
                "(the id is letters, digits, '-' or '_')",
            )
        if not _REGION.match(region):
            raise errors.ConfigError(
                "SNAPSYNC_PROJECTS", f"entry {entry!r} has a malformed region {region!r}"
            )
        if project_id in seen:
            continue
        seen.add(project_id)
        projects.append(Project(project_id=project_id, region=region))
    return projects


def to_asyncpg_url(url: str) -> str:
    """Accept postgresql:// and postgres:// as the contract allows; SQLAlchemy needs +asyncpg."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    return url


def load_settings(**overrides: object) -> Settings:
    """Build the settings; a bad value becomes ConfigError naming its variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        variable = "SNAPSYNC_" + field.upper()
        message = str(first["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        value = first.get("input")
        shown = "" if _is_secret_field(field) or isinstance(value, dict) else f" (got {value!r})"
        raise errors.ConfigError(variable, message + shown) from None


def _is_secret_field(field: str) -> bool:
    return field in {
        "database_url",
        "access_key",
        "secret_key",
        "security_token",
        "iam_password",
        "auth_token",
    }
