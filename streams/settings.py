"""Settings, built once at start-up from pipeline_config.yaml and the environment.

Order of precedence (highest first): keyword arguments, environment variables
(`TICKFLOW_<SECTION>__<KEY>`, e.g. `TICKFLOW_KAFKA__BOOTSTRAP_SERVERS`), the YAML file named by
`TICKFLOW_CONFIG` (default `pipeline_config.yaml` in the working directory, if present), defaults.
Unknown keys are errors, so a typo never silently falls back to a default. Secrets are SecretStr.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
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
from streams.anomalies import AnomalySettings
from streams.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    # Test runs and side-by-side deployments add a suffix to every catalog topic name.
    topic_suffix: str = ""
    # 0: send as soon as the previous request is done; batches still form under load (measured: p50 16 ms
    # -> 5 ms at 1,000 points/s, same throughput). Raise it to trade latency for fewer requests.
    producer_linger_ms: int = 0
    producer_max_batch_bytes: int = 1_048_576


class PostgresSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 15432
    user: str = "tickflow"
    password: SecretStr = SecretStr("")
    database: str = "tickflow"
    # Tables live in this schema; tests use one schema each.
    db_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    pool_min: int = 1
    pool_max: int = 4

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
    """The process-wide Settings, built on first use."""
    return load_settings()
