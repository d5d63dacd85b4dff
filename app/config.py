"""Settings: `XBUS_*` environment variables over an optional YAML file over defaults.

Command-line flags (`xbusd serve --host ...`) are passed as init values and win over both.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

MiB = 1024 * 1024
_FILE_VALUES: ContextVar[dict[str, Any]] = ContextVar("xbus_config_file_values", default={})  # noqa: B039


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def parse_log_levels(spec: str) -> dict[str, str]:
    """`app.bus=debug, uvicorn.access=warning` -> {"app.bus": "debug", ...}."""
    levels: dict[str, str] = {}
    for part in spec.replace(";", ",").split(","):
        if not part.strip():
            continue
        name, sep, level = part.partition("=")
        name, level = name.strip(), level.strip().lower()
        if not sep or not name or level not in LOG_LEVELS:
            raise ValueError(
                f"{part.strip()!r}: expected logger=level, level one of {', '.join(LOG_LEVELS)}"
            )
        levels[name] = level
    return levels


class ConfigFileError(ValueError):
    """The configuration file cannot be read or holds unknown keys."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="XBUS_", extra="forbid", validate_default=True)

    # --- where things are
    data_dir: Path = Field(Path("xbus-data"), description="Embedded servers' data, admin.key, CA.")
    host: str = Field("127.0.0.1", description="HTTP listen address of `xbusd serve`.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP listen port of `xbusd serve`.")
    workers: int | None = Field(
        None,
        ge=1,
        description="HTTP worker processes of `xbusd serve`, each a full replica (its own "
        "database pool, NATS connection, duties). Unset: the number of CPUs this process may "
        "run on. 1: serve in the `xbusd` process itself.",
    )
    database_url: str | None = Field(
        None,
        description="PostgreSQL URL (13+). Unset: embedded PostgreSQL under <data-dir>/postgres.",
    )
    nats_url: str | None = Field(
        None, description="NATS URL. Unset: embedded nats-server (JetStream) under <data-dir>/nats."
    )
    nats_host: str = Field("127.0.0.1", description="Listen address of the embedded nats-server.")
    nats_port: int = Field(
        4222, ge=0, le=65535, description="Embedded nats-server port; 0 picks a free one."
    )
    nats_tls: bool = Field(
        True, description="The embedded nats-server requires TLS client certificates."
    )
    nats_cert_hosts: list[str] = Field(
        default_factory=list,
        description="Extra host names/IPs in the embedded nats-server's certificate.",
    )
    embedded_restart_max: int = Field(
        5,
        ge=1,
        description="Failed restarts in a row of an embedded server (PostgreSQL, nats-server) "
        "before `xbusd serve` gives up and exits non-zero.",
    )
    embedded_down_grace: float = Field(
        30.0,
        gt=0,
        description="/healthz fails once an embedded server has been down this long (s).",
    )
    embedded_status_file: Path | None = Field(
        None,
        description="Where the embedded servers' watchdog writes their state (set by `xbusd "
        "serve` itself for its workers).",
    )
    pki_dir: Path | None = Field(
        None,
        description="The CA (ca.crt, ca.key) that signs the actors' certificates, and the embedded "
        "nats-server's certificates. Unset: <data-dir>/pki, the CA created at first start.",
    )
    nats_tls_ca: Path | None = Field(None, description="CA file for xbusd's own NATS connection.")
    nats_tls_cert: Path | None = Field(None, description="Client certificate of xbusd on NATS.")
    nats_tls_key: Path | None = Field(None, description="Key of that client certificate.")
    nats_auth_file: Path | None = Field(
        None, description="NATS authorization file xbusd writes from the accounts (embedded: set)."
    )
    nats_pid_file: Path | None = Field(
        None, description="nats-server pid file: xbusd sends SIGHUP after writing the auth file."
    )
    nats_monitor_url: str | None = Field(
        None, description="nats-server monitoring URL (varz, connz); embedded: set."
    )
    nats_public_url: str | None = Field(
        None, description="NATS URL told to actors by /api/v1/info (default: the URL in use)."
    )
    # --- start-up
    migrate_on_start: bool = Field(True, description="`xbusd serve` upgrades the schema at start.")
    admin_api_key: SecretStr | None = Field(
        None, description="Bootstrap admin key. Unset: generated once into <data-dir>/admin.key."
    )
    # --- HTTP
    max_body_size: int = Field(16 * MiB, ge=1024, description="Request body limit (bytes); 413.")
    page_size_default: int = Field(50, ge=1, description="Default page size of lists.")
    page_size_max: int = Field(1000, ge=1, description="Largest page size a client may ask for.")
    long_poll_max: float = Field(60.0, ge=0, description="Longest `?wait=` a client may ask (s).")
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    http_shutdown_grace: int = Field(
        10,
        ge=0,
        description="On SIGTERM, HTTP requests in flight (long-polls included) get this long "
        "to finish before they are cut (s).",
    )
    # --- web console
    console_enabled: bool = Field(
        True, description="Serve the web console at /console (false: it answers 404)."
    )
    console_session_ttl: int = Field(
        8 * 3600,
        ge=60,
        description="Life of a console sign-in (s): the session cookie then stops working.",
    )
    # --- database
    db_pool_size: int = Field(20, ge=1, description="SQLAlchemy pool size per process.")
    db_max_overflow: int = Field(10, ge=0, description="Extra connections over the pool size.")
    db_hot_pool_size: int = Field(
        10,
        ge=1,
        description="Connections of the plain asyncpg pool that the hot routes (emit, lease, "
        "report), the NATS services' hot calls and dispatcher, and the webhook dispatcher use "
        "without the ORM, per process, opened as needed.",
    )
    # --- envelopes
    envelope_max_items: int = Field(100_000, ge=1, description="Most items in one envelope.")
    envelope_max_bytes: int = Field(256 * MiB, ge=1, description="Largest envelope (item bytes).")
    emission_batch_max: int = Field(
        10_000, ge=1, description="Most envelopes in one `POST .../outputs` batch."
    )
    emission_group_max: int = Field(
        500,
        ge=0,
        description="Most envelopes of `POST .../output` written by one transaction (group "
        "commit of the emissions that arrive while the previous group is written); 0: each "
        "emission its own transaction.",
    )
    envelope_stall_timeout: float = Field(
        30.0, gt=0, description="An envelope with no new fragment for this long is stalled (s)."
    )
    inline_envelope_max_bytes: int = Field(
        1 * MiB, ge=0, description="Larger envelopes are linked, not inlined, in requests."
    )
    # --- delivery
    request_lease: float = Field(60.0, gt=0, description="Lease of a polled request (s).")
    request_max_attempts: int = Field(5, ge=1, description="Deliveries of a request before error.")
    nats_survey_interval: float = Field(
        30.0, gt=0, description="Interval of the Sentinel survey published to NATS actors (s)."
    )
    nats_actor_timeout: float = Field(
        30.0,
        gt=0,
        description="Longest silence tolerated on an actor's ActorAgent.Process stream (s).",
    )
    nats_fragment_size: int = Field(
        128 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest envelope fragment sent to NATS actors (bytes; a larger item goes "
        "alone in its fragment).",
    )
    nats_detached_lease: float = Field(
        86400.0, gt=0, description="How long a NATS actor may take to end a detached job (s)."
    )
    webhook_allow_private: bool = Field(
        False, description="Allow webhook URLs on loopback/private/link-local addresses."
    )
    webhook_poll_interval: float = Field(
        0.5, gt=0, description="Webhook dispatcher: look for due requests this often (s)."
    )
    webhook_max_in_flight: int = Field(
        256,
        ge=1,
        description="Webhook attempts at once, per replica, from their claim until their "
        "outcome is recorded.",
    )
    webhook_lease_margin: float = Field(
        30.0, gt=0, description="Lease of a webhook attempt beyond its timeout (s)."
    )
    webhook_probe_interval: float = Field(
        60.0, gt=0, description="Time between probes of a webhook suspended by failures (s)."
    )
    webhook_max_response_bytes: int = Field(
        16 * MiB, ge=1024, description="Largest webhook response body read (bytes)."
    )
    webhook_excerpt_bytes: int = Field(
        1024, ge=0, description="First bytes of a webhook response kept in the attempt log."
    )
    webhook_shutdown_grace: float = Field(
        5.0, ge=0, description="At shutdown, let webhook attempts in flight finish this long (s)."
    )
    # --- logging
    log_level: str = Field("info", description="Root log level (debug, info, warning, error).")
    log_format: Literal["console", "json"] = Field("console", description="Log line format.")
    log_levels: str = Field(
        "",
        description="Levels per logger, over `log_level`: `app.bus=debug,uvicorn.access=info`. "
        "`uvicorn.access` is at warning unless named here.",
    )
    log_queue_size: int = Field(
        10_000,
        ge=1,
        description="Log records waiting for a slow output; past this they are dropped and "
        "counted (xbus_log_records_dropped_total): the bus never waits for its log output.",
    )
    # --- metrics and Sentry
    metrics_token: SecretStr | None = Field(
        None,
        description="When set, /metrics answers only `Authorization: Bearer <token>` (else 401).",
    )
    metrics_cache_seconds: float = Field(
        5.0,
        ge=0,
        description="Scrape-time gauges read from the database and nats-server are reused for "
        "this long, however many scrapes come (s).",
    )
    metrics_query_timeout: float = Field(
        2.0, gt=0, description="Statement timeout of each scrape-time database query (s)."
    )
    sentry_dsn: SecretStr | None = Field(
        None, description="Sentry DSN. Unset: nothing of Sentry is initialised."
    )
    sentry_environment: str | None = Field(
        None, description="Sentry environment of the events (production, staging...)."
    )
    sentry_report_max_age: float = Field(
        86_400.0,
        gt=0,
        description="Processes that ended in error at most this long ago are reported to "
        "Sentry; older ones (from before Sentry was configured) are not (s).",
    )
    # --- operations (process control, export, purge, supervision)
    ops_batch_size: int = Field(
        500, ge=1, description="Processes per transaction in batch pause/resume/cancel/replay."
    )
    purge_batch_size: int = Field(1000, ge=1, description="Rows deleted per purge transaction.")
    purge_jobs_max: int = Field(
        8, ge=1, description="Most parallel purge transactions (also at most half the DB pool)."
    )
    export_batch_size: int = Field(
        200, ge=1, description="Processes read per query while streaming an export."
    )
    export_envelope_max_bytes: int = Field(
        64 * MiB,
        ge=0,
        description="Largest per-envelope size limit an export may ask for (bytes); larger "
        "envelopes are exported as metadata only.",
    )
    supervision_interval: float = Field(
        5.0, gt=0, description="Period of the stalled-emission and unresponsive-actor duties (s)."
    )
    actor_unresponsive_after: float = Field(
        120.0,
        gt=0,
        description="A polling actor with requests waiting this long and no poll meanwhile is "
        "marked unresponsive (s).",
    )
    stats_interval: float = Field(
        600.0, gt=0, description="Period of the storage statistics refresh (ANALYZE) duty (s)."
    )
    process_counts_fold_interval: float = Field(
        5.0,
        gt=0,
        description="Period of the duty that folds the process count deltas into their "
        "totals (s): the process summary reads the deltas not folded yet, so a longer period "
        "makes it slower, never wrong.",
    )
    stats_exact_max_rows: int = Field(
        1_000_000,
        ge=0,
        description="/api/v1/stats counts tables estimated below this many rows exactly; "
        "larger ones are estimated.",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("must be one of debug, info, warning, error, critical")
        return value.lower()

    @field_validator("log_levels")
    @classmethod
    def _known_levels(cls, value: str) -> str:
        parse_log_levels(value)
        return value

    @property
    def logger_levels(self) -> dict[str, str]:
        return parse_log_levels(self.log_levels)

    @property
    def serve_workers(self) -> int:
        """`workers`, or the number of CPUs this process may run on (its affinity mask, which
        `taskset` and container cpusets narrow; CPU quotas are not seen: set `workers`)."""
        if self.workers is not None:
            return self.workers
        try:
            return len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # not Linux
            return os.cpu_count() or 1

    @property
    def db_connections_per_worker(self) -> int:
        return self.db_pool_size + self.db_max_overflow + self.db_hot_pool_size

    @property
    def admin_key_file(self) -> Path:
        return self.data_dir / "admin.key"

    @property
    def pki_path(self) -> Path:
        return self.pki_dir or self.data_dir / "pki"

    @property
    def nats_server_hosts(self) -> list[str]:
        hosts = ["localhost", "127.0.0.1", *self.nats_cert_hosts]
        if self.nats_host not in ("", "0.0.0.0", "::"):  # noqa: S104
            hosts.append(self.nats_host)
        return sorted(set(hosts))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        file_values = _FILE_VALUES.get()
        return (init_settings, env_settings, InitSettingsSource(settings_cls, file_values))


def read_config_file(path: Path) -> dict[str, Any]:
    """Flatten a YAML file into setting names: `database: {url: x}` and `database-url: x`
    both give `database_url`."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"config file {path} is not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigFileError(f"config file {path} must hold a mapping of settings")
    flat: dict[str, Any] = {}

    def walk(prefix: str, mapping: dict[Any, Any]) -> None:
        for key, value in mapping.items():
            name = f"{prefix}{str(key).replace('-', '_').replace('.', '_').lower()}"
            if isinstance(value, dict) and name not in Settings.model_fields:
                walk(name + "_", value)
            else:
                flat[name] = value

    walk("", raw)
    unknown = sorted(set(flat) - set(Settings.model_fields))
    if unknown:
        raise ConfigFileError(f"config file {path}: unknown settings {', '.join(unknown)}")
    return flat


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build settings from defaults < config file < environment < explicit overrides."""
    file_values = read_config_file(config_file) if config_file else {}
    if "data_dir" in file_values and config_file is not None:
        # A relative data dir in a config file is relative to that file.
        data_dir = Path(file_values["data_dir"])
        if not data_dir.is_absolute():
            file_values["data_dir"] = config_file.parent / data_dir

    values = {k: v for k, v in overrides.items() if v is not None}
    token = _FILE_VALUES.set(file_values)
    try:
        return Settings(**values)
    finally:
        _FILE_VALUES.reset(token)
