"""Settings, built once at start-up from pipeline_config.yaml and the environment.

Order of precedence (highest first): keyword arguments, environment variables
(`TICKFLOW_<SECTION>__<KEY>`, e.g. `TICKFLOW_KAFKA__BOOTSTRAP_SERVERS`), the YAML file named by
`TICKFLOW_CONFIG` (default `pipeline_config.yaml` in the working directory, if present), defaults.
Unknown keys are errors, so a typo never silently falls back to a default. Secrets are SecretStr.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from producers.alpha_vantage import AlphaVantageSettings
from producers.finnhub import FinnhubSettings
from producers.fred import FredSettings
from producers.nasdaq_data_link import NasdaqDataLinkSettings
from producers.news import NewsSettings
from producers.replay import ReplaySettings
from producers.social import SocialSettings
from producers.yahoo import YahooSettings
from sinks.schema import check_identifier
from streams import redact
from streams.anomalies import AnomalySettings
from streams.errors import ConfigError

if TYPE_CHECKING:
    import ssl

    from faust.types.auth import CredentialsT

ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    # hide_input_in_errors: a validation error must not echo what it was given (a password, say).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


def _existing_file(path: Path | None) -> Path | None:
    """Certificate and key files are checked at start-up, not at the first connection an hour later."""
    if path is not None and not path.is_file():
        raise ValueError(f"file {path} does not exist or is not a file")
    return path


def _ignored(what: str, fields: dict[str, bool], hint: str = "") -> None:
    """A security setting that the chosen protocol or mode would silently not use is an error, like a typo."""
    names = [name for name, is_set in fields.items() if is_set]
    if names:
        raise ValueError(f"{', '.join(names)} set, but {what} does not use {'it' if len(names) == 1 else 'them'}"
                         + hint)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    # Test runs and side-by-side deployments add a suffix to every catalog topic name.
    topic_suffix: str = ""
    # 0: send as soon as the previous request is done; batches still form under load (measured: p50 16 ms
    # -> 5 ms at 1,000 points/s, same throughput). Raise it to trade latency for fewer requests.
    producer_linger_ms: int = 0
    producer_max_batch_bytes: int = 1_048_576
    # Security (README "Security"). PLAINTEXT is the local stack; managed clusters usually want SASL_SSL.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    # PEM files. ssl_cafile: the CA of the brokers' certificates (default: the system's CAs);
    # ssl_certfile/ssl_keyfile (+ ssl_key_password if the key is encrypted): a client certificate (mutual TLS).
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr = SecretStr("")
    # Off only for brokers reached by an address their certificate does not name; the chain is still verified.
    ssl_check_hostname: bool = True

    _files_exist = field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")(_existing_file)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        p = self.security_protocol
        if self.uses_sasl and not (self.sasl_username and self.sasl_password.get_secret_value()):
            raise ValueError(f"security_protocol {p} needs sasl_username and sasl_password "
                             "(TICKFLOW_KAFKA__SASL_USERNAME, TICKFLOW_KAFKA__SASL_PASSWORD)")
        if not self.uses_sasl:
            _ignored(f"security_protocol {p}", {
                "sasl_mechanism": self.sasl_mechanism != "PLAIN", "sasl_username": bool(self.sasl_username),
                "sasl_password": bool(self.sasl_password.get_secret_value())})
        if not self.uses_tls:
            _ignored(f"security_protocol {p}", {
                "ssl_cafile": self.ssl_cafile is not None, "ssl_certfile": self.ssl_certfile is not None,
                "ssl_keyfile": self.ssl_keyfile is not None,
                "ssl_key_password": bool(self.ssl_key_password.get_secret_value()),
                "ssl_check_hostname": not self.ssl_check_hostname})
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
        if self.ssl_key_password.get_secret_value() and self.ssl_certfile is None:
            raise ValueError("ssl_key_password needs ssl_certfile (and ssl_keyfile when the key is separate)")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL (None otherwise), made by aiokafka's helper: server
        certificates verified against ssl_cafile or the system's CAs, TLS 1.2+."""
        if not self.uses_tls:
            return None
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile,
            password=self.ssl_key_password.get_secret_value() or None,
        )
        context.check_hostname = self.ssl_check_hostname
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments for every aiokafka client we build (producer, consumer, admin).
        PLAINTEXT gives aiokafka's own default, so the local stack behaves as before."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.uses_sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password.get_secret_value())
        return kwargs

    def faust_credentials(self) -> CredentialsT | None:
        """The Faust app's `broker_credentials`: Faust turns them into the same aiokafka arguments for its
        own consumer and producers (faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import faust

        context = self.ssl_context()
        if not self.uses_sasl:
            return faust.SSLCredentials(context)
        # SASLCredentials means SASL_SSL when it has a context, SASL_PLAINTEXT when not.
        return faust.SASLCredentials(username=self.sasl_username, password=self.sasl_password.get_secret_value(),
                                     ssl_context=context, mechanism=self.sasl_mechanism)


def _is_local(host: str) -> bool:
    if host.startswith("/") or host == "localhost":  # a unix socket directory, or this machine
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PostgresSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "tickflow"
    password: SecretStr = SecretStr("")
    database: str = "tickflow"
    # Tables live in this schema; tests use one schema each. Checked (sinks/schema.py) and always quoted.
    db_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    pool_min: int = 1
    pool_max: int = 4
    # TLS, with libpq's meanings. The default "prefer" is libpq's and asyncpg's own: it keeps the local stack
    # (no TLS) working and encrypts whenever the server offers TLS, but it verifies nothing and silently
    # falls back to plaintext. Production: "verify-full" (or at least "require"); a non-local host with
    # less than "require" is logged as a warning when the sink connects.
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    # PEM files: the CA of the server's certificate (require, verify-ca, verify-full), and a client
    # certificate and its key for certificate authentication.
    sslrootcert: Path | None = None
    sslcert: Path | None = None
    sslkey: Path | None = None

    _files_exist = field_validator("sslrootcert", "sslcert", "sslkey")(_existing_file)

    @field_validator("db_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        check_identifier(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PostgresSettings:
        if self.sslmode == "disable":
            _ignored("sslmode disable", {"sslrootcert": self.sslrootcert is not None,
                                         "sslcert": self.sslcert is not None, "sslkey": self.sslkey is not None})
        elif self.sslmode in ("allow", "prefer"):
            _ignored(f"sslmode {self.sslmode}", {"sslrootcert": self.sslrootcert is not None},
                     " (it verifies no certificate: use verify-full)")
        if self.sslkey is not None and self.sslcert is None:
            raise ValueError("sslkey needs sslcert (the client certificate it belongs to)")
        return self

    def connect_kwargs(self) -> dict[str, Any]:
        """asyncpg.connect()/create_pool() arguments: address, credentials and TLS. Every connection we open
        (the sink, `tickflow db`, `make run`, the benchmark) is described here, so they all connect alike."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password.get_secret_value() or None,
            "database": self.database,
            "ssl": self.sslmode,
        }
        files = {k: str(v) for k, v in (("sslrootcert", self.sslrootcert), ("sslcert", self.sslcert),
                                        ("sslkey", self.sslkey)) if v is not None}
        if files:
            # asyncpg takes certificate files only from a DSN's query (or PG* variables), and then applies them
            # with libpq's rules for the sslmode; the address and credentials stay keyword arguments.
            kwargs["dsn"] = "postgresql://?" + urllib.parse.urlencode(files)
        return kwargs

    def transport_warning(self) -> str | None:
        """Why this connection may travel in clear over a network, or None."""
        if self.sslmode in ("require", "verify-ca", "verify-full") or _is_local(self.host):
            return None
        why = ("is not encrypted" if self.sslmode == "disable"
               else "is not verified and falls back to plaintext without a word")
        return f"postgres.sslmode={self.sslmode} to {self.host}: the connection {why}; use verify-full or require"

    def dsn_for_display(self) -> str:
        """The connection address without the password, for logs and errors."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


class WorkerSettings(_Section):
    app_id: str = "tickflow"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    # The host other workers use to reach this one (table-routed requests); defaults to web_host.
    advertised_host: str | None = None
    # Where Faust keeps table state; memory:// rebuilds tables from their changelogs at start.
    store: str = "memory://"
    metrics_flush_seconds: float = 10.0
    # /health answers 503 ("stuck") when a stage owns partitions with lag but finished no batch for this
    # long, so an orchestrator restarts the worker.
    stuck_after_seconds: float = 300.0


class ValidationSettings(_Section):
    max_message_bytes: int = 64 * 1024
    future_tolerance_seconds: float = 5.0
    timestamp_floor: str = "1970-01-02T00:00:00Z"
    max_symbol_length: int = 32
    # Tickers, FX and crypto pairs, indices (^GSPC), futures (ES=F), vendor prefixes (CRYPTO:BTC).
    symbol_pattern: str = r"^[A-Za-z0-9^][A-Za-z0-9.\-_=^/:]{0,31}$"
    max_text_length: int = 20_000
    # Run the anomaly detectors (streams/anomalies.py) after the rules.
    detect_anomalies: bool = True
    # Sources whose anomalous ticks are quarantined to ticks.rejected (rule anomaly.<detector>)
    # instead of being flagged and passed on to ticks.clean.
    quarantine_sources: list[str] = Field(default_factory=list)
    # Circuit breaker: stop the worker (clearly logged) when more than this share of the last
    # `circuit_breaker_window` records was rejected, instead of dead-lettering everything after a bad
    # deploy or a provider format change. 1.0 turns it off.
    circuit_breaker_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    circuit_breaker_window: int = Field(default=2000, ge=10)
    # How often per symbol the detectors' state is saved to its changelog-backed table.
    anomaly_state_flush_seconds: float = 1.0
    # Raw records per validate batch (per fetch, per producer flush, per offset commit): larger amortises
    # those, and under load each record waits for its batch (README, Performance: tuning knobs).
    batch_size: int = Field(default=2000, ge=1, le=100_000)


class SinkSettings(_Section):
    batch_size: int = 2000
    retry_initial_seconds: float = 0.2
    retry_max_seconds: float = 10.0
    # Rows of market_data (by timestamp) and data_quality_metrics older than this are deleted, in bounded
    # batches, by the leader every `retention_check_seconds`. 0 keeps everything.
    data_retention_days: float = Field(default=0, ge=0)
    retention_check_seconds: float = Field(default=3600, gt=0)
    retention_batch_rows: int = Field(default=10_000, ge=100)


class SimulatedSourceSettings(_Section):
    enabled: bool = True
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "SPY", "QQQ"])
    rate_per_second: float = 1000.0
    # Share of deliberately bad records (schema or rule violations) so the dead-letter path shows up.
    invalid_ratio: float = Field(default=0.001, ge=0.0, le=1.0)
    seed: int = 7


class SourcesSettings(_Section):
    """One section per provider (producers/<name>.py defines its settings). API keys are never settings:
    they come from the environment only (ALPHA_VANTAGE_API_KEY, FINNHUB_API_KEY, FRED_API_KEY,
    NASDAQ_DATA_LINK_API_KEY or QUANDL_API_KEY, TWITTER_BEARER_TOKEN)."""

    simulated: SimulatedSourceSettings = Field(default_factory=SimulatedSourceSettings)
    yahoo: YahooSettings = Field(default_factory=YahooSettings)
    alpha_vantage: AlphaVantageSettings = Field(default_factory=AlphaVantageSettings)
    finnhub: FinnhubSettings = Field(default_factory=FinnhubSettings)
    fred: FredSettings = Field(default_factory=FredSettings)
    nasdaq_data_link: NasdaqDataLinkSettings = Field(default_factory=NasdaqDataLinkSettings)
    news: NewsSettings = Field(default_factory=NewsSettings)
    social: SocialSettings = Field(default_factory=SocialSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)


def config_file_from_env() -> Path | None:
    path = os.environ.get("TICKFLOW_CONFIG")
    if path:
        return Path(path)
    default = Path("pipeline_config.yaml")
    return default if default.exists() else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TICKFLOW_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
        hide_input_in_errors=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    validation: ValidationSettings = Field(default_factory=ValidationSettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    anomalies: AnomalySettings = Field(default_factory=AnomalySettings)
    sources: SourcesSettings = Field(default_factory=SourcesSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = config_file_from_env()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning validation errors into a ConfigError that names the key and the file."""
    path = config_file_from_env()
    if path is not None and not path.exists():
        raise ConfigError(f"config file {path} (from TICKFLOW_CONFIG) does not exist")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        where = f"{path} or the TICKFLOW_* environment" if path else "the TICKFLOW_* environment"
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid settings in {where}: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, built on first use. Every entry point gets its settings here first (the
    worker through streams/app.py, the `tickflow` commands, `python -m producers`, `make run`), so this is
    where their secrets are registered and log redaction is installed (streams/redact.py): before any
    client exists that could log one."""
    settings = load_settings()
    redact.install(settings)
    return settings
