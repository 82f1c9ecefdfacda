"""The process environment (CONTRACT §3), loaded once by the command that starts a process.

Nothing reads the environment at import time: `load_settings()` is called by the CLI and the
result is passed down. A wrong value raises `ConfigError` with one line naming the variable.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.errors import ConfigError


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    connect_base_url: str | None = Field(default=None, alias="CONNECT_BASE_URL")
    connect_api_key: SecretStr | None = Field(default=None, alias="CONNECT_API_KEY")
    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    mappings_path: Path = Field(default=Path("mappings"), alias="BRIDGE_MAPPINGS")
    data_dir: Path = Field(default=Path(".leadbridge"), alias="BRIDGE_DATA_DIR")
    admin_token: SecretStr | None = Field(default=None, alias="BRIDGE_ADMIN_TOKEN")
    host: str = Field(default="127.0.0.1", alias="BRIDGE_HOST")
    port: int = Field(default=8000, ge=0, le=65535, alias="BRIDGE_PORT")
    worker_probe_port: int = Field(default=8001, ge=0, le=65535, alias="BRIDGE_WORKER_PROBE_PORT")
    max_body_bytes: int = Field(default=1_048_576, gt=0, alias="BRIDGE_MAX_BODY_BYTES")
    read_timeout_s: float = Field(default=30.0, gt=0, alias="BRIDGE_READ_TIMEOUT_S")
    log_format: Literal["json", "console"] | None = Field(default=None, alias="BRIDGE_LOG_FORMAT")
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", alias="BRIDGE_LOG_LEVEL")

    # Hardening (docs/security.md). Excess requests over the bound are answered 503 by uvicorn.
    max_concurrent_requests: int = Field(default=1000, ge=1, alias="BRIDGE_MAX_CONCURRENT_REQUESTS")
    keep_alive_timeout_s: int = Field(default=5, ge=1, le=3600, alias="BRIDGE_KEEP_ALIVE_TIMEOUT_S")
    header_timeout_s: float = Field(default=10.0, gt=0, alias="BRIDGE_HEADER_TIMEOUT_S")
    max_headers: int = Field(default=100, ge=10, alias="BRIDGE_MAX_HEADERS")
    max_header_bytes: int = Field(default=65_536, ge=4096, alias="BRIDGE_MAX_HEADER_BYTES")
    # Comma-separated base64 32-byte keys, newest first; parsed by bridge.queue.crypto.Keyring.
    encryption_keys: SecretStr | None = Field(default=None, alias="BRIDGE_ENCRYPTION_KEYS")

    # Delivery (issue: delivery guarantees). Units are in the names.
    dedupe_window_s: int = Field(default=7 * 86_400, gt=0, alias="BRIDGE_DEDUPE_WINDOW_S")
    retention_s: int = Field(default=7 * 86_400, gt=0, alias="BRIDGE_RETENTION_S")
    retry_window_s: float = Field(default=86_400.0, gt=0, alias="BRIDGE_RETRY_WINDOW_S")
    retry_base_s: float = Field(default=1.0, gt=0, alias="BRIDGE_RETRY_BASE_S")
    retry_max_delay_s: float = Field(default=3_600.0, gt=0, alias="BRIDGE_RETRY_MAX_DELAY_S")
    retry_max_attempts: int = Field(default=60, ge=1, alias="BRIDGE_RETRY_MAX_ATTEMPTS")
    link_wait_s: float = Field(default=300.0, ge=0, alias="BRIDGE_LINK_WAIT_S")
    worker_concurrency: int = Field(default=100, ge=1, le=10_000, alias="BRIDGE_WORKER_CONCURRENCY")
    # Read by bridge/launch.py before anything else loads; declared here so a wrong value is an error.
    worker_optimize: Literal["0", "1"] = Field(default="1", alias="BRIDGE_WORKER_OPTIMIZE")
    upstream_timeout_s: float = Field(default=10.0, gt=0, alias="BRIDGE_UPSTREAM_TIMEOUT_S")
    upstream_max_connections: int = Field(default=100, ge=1, alias="BRIDGE_UPSTREAM_MAX_CONNECTIONS")
    upstream_http: Literal["aiohttp", "httpx"] = Field(default="aiohttp", alias="BRIDGE_UPSTREAM_HTTP")
    table_cache_ttl_s: float = Field(default=300.0, ge=0, alias="BRIDGE_TABLE_CACHE_TTL_S")
    redis_wait_replicas: int = Field(default=0, ge=0, alias="BRIDGE_REDIS_WAIT_REPLICAS")
    redis_wait_timeout_ms: int = Field(default=1_000, ge=0, alias="BRIDGE_REDIS_WAIT_TIMEOUT_MS")
    job_timeout_s: float = Field(default=120.0, gt=0, alias="BRIDGE_JOB_TIMEOUT_S")
    shutdown_grace_s: float = Field(default=30.0, ge=0, alias="BRIDGE_SHUTDOWN_GRACE_S")
    max_commands_per_delivery: int = Field(default=100, ge=1, alias="BRIDGE_MAX_COMMANDS_PER_DELIVERY")
    # A running job's claim (and its record locks) last this long unless renewed: a job whose
    # worker died (kill -9, lost node) runs again after at most this long.
    job_lease_s: float = Field(default=30.0, ge=1, alias="BRIDGE_JOB_LEASE_S")
    # The upstream circuit breaker, shared by all workers (docs/delivery.md).
    circuit_window_s: int = Field(default=10, ge=1, le=3600, alias="BRIDGE_CIRCUIT_WINDOW_S")
    circuit_min_calls: int = Field(default=20, ge=1, alias="BRIDGE_CIRCUIT_MIN_CALLS")
    circuit_failure_ratio: float = Field(default=0.5, gt=0, le=1, alias="BRIDGE_CIRCUIT_FAILURE_RATIO")
    circuit_open_s: float = Field(default=5.0, gt=0, alias="BRIDGE_CIRCUIT_OPEN_S")
    circuit_max_open_s: float = Field(default=120.0, gt=0, alias="BRIDGE_CIRCUIT_MAX_OPEN_S")

    @field_validator("connect_base_url", "connect_api_key", "admin_token", "encryption_keys", mode="before")
    @classmethod
    def _strip_whitespace(cls, value: object) -> object:
        # A value read from a file (a Kubernetes Secret or ConfigMap, `echo` into a .env) often
        # ends in a newline: in a URL or an Authorization header it breaks every upstream call
        # (and every admin call).
        return value.strip() if isinstance(value, str) else value

    @field_validator("connect_base_url")
    @classmethod
    def _strip_slash(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("retry_window_s")
    @classmethod
    def _within_retention(cls, value: float, info: ValidationInfo) -> float:
        retention = info.data.get("retention_s")
        if retention is not None and value >= retention:
            raise ValueError(
                f"must be shorter than BRIDGE_RETENTION_S ({retention} s): a delivery still being "
                "retried would expire, and its lead be lost"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        if not value:
            return None
        if not value.startswith(("redis://", "rediss://", "unix://", "valkey://", "valkeys://")):
            raise ValueError("must be a redis:// (or rediss://, unix://) URL")
        try:
            urlsplit(value).port  # noqa: B018 (parsed for its error: redis-py's is a traceback)
        except ValueError:
            raise ValueError("its port is not a number") from None
        return value

    @property
    def effective_log_format(self) -> Literal["json", "console"]:
        if self.log_format is not None:
            return self.log_format
        return "console" if sys.stderr.isatty() else "json"

    def require_upstream(self, hint: str = "or use `leadbridge run --sandbox`") -> tuple[str, SecretStr]:
        """The upstream URL and key, or a ConfigError naming what is missing (and `hint`)."""
        if self.connect_base_url is None:
            raise ConfigError(f"CONNECT_BASE_URL is not set ({hint})")
        if self.connect_api_key is None or not self.connect_api_key.get_secret_value():
            raise ConfigError(f"CONNECT_API_KEY is not set ({hint})")
        return self.connect_base_url, self.connect_api_key


URL_SETTINGS = ("REDIS_URL", "CONNECT_BASE_URL")  # may carry credentials: never quoted whole


def redacted_url(url: str) -> str:
    """`url` without its password (REDIS_URL may carry one, in its user part or its query)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a URL that does not parse)"
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = user.partition(":")[0] + ":***@" + host
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else f"{name}={value}" if sep else name
        for name, sep, value in (pair.partition("=") for pair in parts.query.split("&") if pair)
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


PREFIX = "BRIDGE_"  # every variable named so is one of ours: no other is read


def unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """One line per variable named like a setting (`BRIDGE_…`) that is none, with the nearest
    setting's name: a misspelt one (`BRIDGE_RETRY_WINDOW` for `BRIDGE_RETRY_WINDOW_S`) leaves the
    default in force, and without a word nobody would know. Names only, never values."""
    known = [field.alias for field in Settings.model_fields.values() if field.alias]
    lines = []
    for name in sorted(n for n in environ if n.startswith(PREFIX) and n not in known):
        import difflib  # only then (a worker counts its memory)

        nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f" (did you mean {nearest[0]}?)" if nearest else ""
        lines.append(f"{name} is not a leadbridge setting and is ignored{hint}")
    return lines


def load_settings(**overrides: object) -> Settings:
    """Read the environment; a wrong value is a one-line ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        alias = Settings.model_fields[field].alias if field in Settings.model_fields else field
        got = first.get("input")
        if alias in URL_SETTINGS and isinstance(got, str):
            # It may carry a password, and this message ends up in logs: its scheme is the problem
            # (with none, `pass@host:6379`, nothing of it is shown).
            got = got.partition("://")[0] + "://…" if "://" in got else "… (no scheme)"
        raise ConfigError(f"{alias or field}: {first['msg']} (got {got!r})") from None
