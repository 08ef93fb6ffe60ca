"""The one typed settings object. Read once at start-up from ``LEADPULSE_*`` env vars, frozen, passed down.

Why wrap pydantic's error: a user who mistypes ``LEADPULSE_WEB_PORT=80x`` should read the variable's name,
not a pydantic location tuple.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from leadpulse.native import ENV_SWITCH

ENV_PREFIX = "LEADPULSE_"
#: The shipped email-hash key: public, so only for local data (``Settings.default_email_hash_key``).
DEFAULT_EMAIL_HASH_KEY = "leadpulse-local-default-change-me"
MIN_EMAIL_HASH_KEY = 16


def _check_host_and_port(url: str) -> None:
    """A URL's host is present and its port a number; the message never shows the URL (it may hold a
    password or a token)."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("the port is not a number between 0 and 65535") from None
    if not parts.hostname or any(c.isspace() for c in parts.hostname):
        raise ValueError("no valid host name")


class SettingsError(Exception):
    """A setting is wrong; the message names the environment variable and the problem."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    # Kafka. Unset bootstrap = start (or reuse) the embedded Tansu broker on loopback.
    kafka_bootstrap: str | None = None
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    # Replicas of each topic `topics create` (and the processes' start) creates: -1 = the broker's
    # default.replication.factor (Kafka >= 2.4; 1 on the embedded broker). Existing topics are not changed.
    topic_replication_factor: int = Field(default=-1, ge=-1, le=32767)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=9092, ge=1, le=65535)
    tansu_bin: Path | None = None
    # Tansu end-offset workaround (streams/tansu_compat.py): None = auto-detect by the broker's cluster id.
    tansu_workaround: bool | None = None

    # ClickHouse. Unset DSN = embedded chDB under the data directory.
    clickhouse_dsn: str | None = None
    clickhouse_user: str | None = None
    clickhouse_password: SecretStr | None = None

    data_dir: Path = Path(".leadpulse")
    rules: Path | None = None

    # HTTP endpoints: worker web (metrics/health), collector, sink (metrics + read-only query API).
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=0, le=65535)
    collector_port: int = Field(default=8088, ge=0, le=65535)
    # How long the collector waits for the broker's acknowledgement before answering 503 (client retries).
    collector_publish_timeout_s: float = Field(default=10.0, gt=0, le=300)
    # At SIGTERM, how long requests in flight may still wait for the broker before they are answered 503
    # (the client re-sends): bounds the stop whatever the publish timeout (docs/operations.md, Shutdown).
    collector_stop_grace_s: float = Field(default=10.0, ge=0, le=120)
    # How long the collector retries a broker it cannot reach at start (serving, /ready not ready) before it
    # exits 1; 0 = exit at the first failed attempt (docs/ingestion.md).
    collector_broker_wait_s: float = Field(default=60.0, ge=0, le=3600)
    # Per write key: events per second (0 = no limit) and the burst above it (429 + Retry-After beyond).
    collector_rate_limit: float = Field(default=2000.0, ge=0)
    collector_rate_burst: int = Field(default=10_000, ge=500)  # >= the largest batch (500 events)
    sink_port: int = Field(default=6067, ge=0, le=65535)
    # Ids the sink remembers per partition to drop re-sent records before the insert (sinks/recent_ids.py);
    # 0 = off (re-sends are then stored twice and collapse only under FINAL).
    sink_recent_ids: int = Field(default=10_000, ge=0, le=10_000_000)
    notifier_port: int = Field(default=6068, ge=0, le=65535)  # the notifier's /metrics, /health, /ready
    # How often the worker writes its leads' states and commits its offsets (each lead's state once per
    # interval, not once per batch: agents/worker_checkpoint.py); 0 = after every batch. A crash repeats at
    # most this much work (same output ids, dropped downstream).
    worker_commit_interval_s: float = Field(default=1.0, ge=0, le=60)

    # Collector write keys: JSON object {"source name": "key"}; webhook targets and signing secret.
    write_keys: dict[str, SecretStr] = Field(default_factory=dict)
    # Write-key sources allowed to send server-side types (``sales_activity``): a JSON list of names from
    # write_keys. Unset = the historical convention, every source whose name starts with "crm".
    crm_write_key_sources: list[str] | None = None
    webhook_urls: list[str] = Field(default_factory=list)
    slack_webhook_urls: list[str] = Field(default_factory=list)
    webhook_secret: SecretStr | None = None
    # Notifier delivery policy per target (sinks/webhook.py RetryPolicy): attempts, per-attempt timeout,
    # exponential backoff base and cap, and concurrent deliveries per target.
    webhook_max_attempts: int = Field(default=12, ge=1, le=100)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=600)
    webhook_backoff_base_s: float = Field(default=0.5, ge=0, le=600)
    webhook_backoff_cap_s: float = Field(default=30.0, ge=0, le=3600)
    webhook_concurrency: int = Field(default=4, ge=1, le=256)
    # Key of the HMAC that turns emails into the keyed hashes stored in ClickHouse (DESIGN §10).
    email_hash_key: SecretStr = SecretStr(DEFAULT_EMAIL_HASH_KEY)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_hosts(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        for part in value.split(","):
            host, sep, port = part.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {part.strip()!r}")
        return value

    @field_validator("topic_replication_factor")
    @classmethod
    def _replicas(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 replicas: give 1 or more, or -1 for the broker's default")
        return value

    @field_validator("clickhouse_dsn")
    @classmethod
    def _dsn_scheme(cls, value: str | None) -> str | None:
        # a bare chdb:// is DESIGN §8's default (under the data directory), not chDB's in-memory engine,
        # which lost everything migrated or stored at exit (chdb://:memory: still asks for that one)
        if value is None or value in ("", "chdb://"):
            return None
        if not value.startswith(("chdb://", "http://", "https://", "clickhouse://", "clickhouses://")):
            scheme = value.split(":", 1)[0]  # only the scheme: a DSN may carry a password
            raise ValueError(f"expected a chdb://, http:// or https:// DSN, got scheme {scheme!r}")
        if not value.startswith("chdb://"):
            _check_host_and_port(value)
        return value

    @field_validator("webhook_urls", "slack_webhook_urls")
    @classmethod
    def _webhook_urls(cls, value: list[str]) -> list[str]:
        """Refused at start, not at the first hot lead (where it was retried as if temporary). Messages
        name the position, scheme and host only: a webhook URL's path is often its secret token."""
        for i, url in enumerate(value):
            scheme = urlsplit(url).scheme.lower() if "://" in url else ""
            if scheme not in ("http", "https"):
                raise ValueError(
                    f"[{i}]: expected an http:// or https:// URL, got scheme {scheme or '(none)'!r}"
                )
            try:
                _check_host_and_port(url)
            except ValueError as exc:
                raise ValueError(f"[{i}]: {exc}") from None
        return value

    @field_validator("write_keys")
    @classmethod
    def _distinct_write_keys(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        """The collector takes the last source whose key matches, so one key for two sources (the page's
        public key pasted as the CRM's) would give every visitor the CRM's rights; an empty key identifies
        nobody. Named by source, never by key."""
        seen: dict[str, str] = {}
        for source, key in value.items():
            secret = key.get_secret_value()
            if not secret.strip():
                raise ValueError(f"{source!r} has an empty key")
            if secret in seen:
                raise ValueError(f"{seen[secret]!r} and {source!r} have the same key: give each its own")
            seen[secret] = source
        return value

    @field_validator("email_hash_key")
    @classmethod
    def _email_key_length(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < MIN_EMAIL_HASH_KEY:
            raise ValueError(f"must be at least {MIN_EMAIL_HASH_KEY} characters (a random string)")
        return value

    @model_validator(mode="after")
    def _crm_sources_have_keys(self) -> Settings:
        """A CRM source without a write key is a typo that would silently refuse the CRM's activities.

        Checked only when write keys are configured: processes other than the collector do not need them.
        """
        if self.crm_write_key_sources and self.write_keys:
            unknown = [s for s in self.crm_write_key_sources if s not in self.write_keys]
            if unknown:
                names = ", ".join(repr(s) for s in unknown)
                known = ", ".join(sorted(self.write_keys))
                raise ValueError(
                    f"{ENV_PREFIX}CRM_WRITE_KEY_SOURCES: {names} is not a source in "
                    f"{ENV_PREFIX}WRITE_KEYS (sources: {known}); add its write key or remove it from the list"
                )
        return self

    @property
    def crm_sources(self) -> frozenset[str]:
        """Write-key sources that may send ``sales_activity`` (see ``crm_write_key_sources``)."""
        if self.crm_write_key_sources is not None:
            return frozenset(self.crm_write_key_sources)
        return frozenset(s for s in self.write_keys if s.lower().startswith("crm"))

    @property
    def default_email_hash_key(self) -> bool:
        """True while the key is the public placeholder: the stored hashes can then be reversed by anyone
        with a list of emails (fine for a local demo, not for real data)."""
        return self.email_hash_key.get_secret_value() == DEFAULT_EMAIL_HASH_KEY

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def bootstrap(self) -> str:
        return self.kafka_bootstrap or f"{self.broker_host}:{self.broker_port}"

    @property
    def chdb_path(self) -> Path:
        return (self.data_dir / "clickhouse").resolve()

    @property
    def dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{self.chdb_path}"

    @property
    def dsn_setting(self) -> str:
        """The variable that chose ``dsn``, for messages telling the user which one to change (with a DSN
        set, "set LEADPULSE_DATA_DIR" did nothing)."""
        return "LEADPULSE_CLICKHOUSE_DSN" if self.clickhouse_dsn else "LEADPULSE_DATA_DIR"

    @property
    def shown_dsn(self) -> str:
        """The DSN for messages and logs: a password written into it is masked."""
        parts = urlsplit(self.dsn)
        if parts.password is None:
            return self.dsn
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}{port}"
        return urlunsplit(parts._replace(netloc=netloc))

    @property
    def embedded_clickhouse(self) -> bool:
        return self.dsn.startswith("chdb://")

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"


def load_settings(**overrides: Any) -> Settings:
    """Build and validate settings; on error raise SettingsError naming each bad ``LEADPULSE_*`` variable."""
    try:
        return Settings(**overrides)
    except SourceError as exc:  # e.g. LEADPULSE_WRITE_KEYS is not JSON; names the field, not the value
        cause = f" ({type(exc.__cause__).__name__}: {exc.__cause__})" if exc.__cause__ else ""
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else "?"
        raise SettingsError(f"invalid settings: {ENV_PREFIX}{field.upper()}: not valid JSON{cause}") from None
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err["loc"]:  # a check across fields: its message names the variables itself
                problems.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            problems.append(f"{ENV_PREFIX}{str(err['loc'][0]).upper()}: {err['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


def environ_without_settings() -> dict[str, str]:
    """The environment for a child process given settings of its own: every ``LEADPULSE_*`` setting of this
    one dropped, the compiled modules' switch kept (``LEADPULSE_NATIVE`` is not a setting,
    leadpulse/native.py: dropped, ``LEADPULSE_NATIVE=0 leadpulse demo`` ran its worker compiled)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) or k == ENV_SWITCH}
