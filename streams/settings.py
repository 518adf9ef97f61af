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

from pydantic import Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from streams import redact
from streams.config import (
    AlphaVantageSettings,
    AnomalySettings,
    FinnhubSettings,
    FredSettings,
    KafkaSettings,
    NasdaqDataLinkSettings,
    NewsSettings,
    PostgresSettings,
    ReplaySettings,
    SimulatedSourceSettings,
    SinkSettings,
    SocialSettings,
    SourcesSettings,
    ValidationSettings,
    WorkerSettings,
    YahooSettings,
)
from streams.errors import ConfigError

# The sections are defined in streams/config.py; they are re-exported here for callers of the Settings API.
__all__ = [
    "AlphaVantageSettings", "AnomalySettings", "FinnhubSettings", "FredSettings", "KafkaSettings",
    "NasdaqDataLinkSettings", "NewsSettings", "PostgresSettings", "ReplaySettings", "Settings",
    "SimulatedSourceSettings", "SinkSettings", "SocialSettings", "SourcesSettings", "ValidationSettings",
    "WorkerSettings", "YahooSettings", "get_settings", "load_settings",
]

ROOT = Path(__file__).resolve().parent.parent


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
