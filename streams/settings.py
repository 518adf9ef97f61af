"""Settings, built once at start-up from pipeline_config.yaml and the environment.

Order of precedence (highest first): keyword arguments, environment variables
(`TICKFLOW_<SECTION>__<KEY>`, e.g. `TICKFLOW_KAFKA__BOOTSTRAP_SERVERS`, then the short names in ENV_ALIASES
such as `POSTGRES_HOST`), the YAML file named by `TICKFLOW_CONFIG` (default `pipeline_config.yaml` in the
working directory, if present), defaults. `.env` and `.env.pipeline` (in the working directory and beside the
config file) are read into the environment first; a variable already set wins over them.

The file and keyword arguments may use our section names or the product brief's (pipeline, yfinance,
alpha_vantage, finnhub, fred, kafka, postgresql); BRIEF_KEYS is the one table of how the brief's keys map onto
ours. Unknown keys and unknown TICKFLOW_* names are errors that suggest the closest known one, so a typo never
silently falls back to a default. Secrets are SecretStr.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
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
    PipelineSettings,
    PostgresSettings,
    ReplaySettings,
    SimulatedSourceSettings,
    SinkSettings,
    SocialSettings,
    SourceSection,
    SourcesSettings,
    ValidationSettings,
    WorkerSettings,
    YahooSettings,
)
from streams.errors import ConfigError

# The sections are defined in streams/config.py; they are re-exported here for callers of the Settings API.
__all__ = [
    "BRIEF_KEYS",
    "ENV_ALIASES",
    "AlphaVantageSettings",
    "AnomalySettings",
    "FinnhubSettings",
    "FredSettings",
    "KafkaSettings",
    "NasdaqDataLinkSettings",
    "NewsSettings",
    "PipelineSettings",
    "PostgresSettings",
    "ReplaySettings",
    "Settings",
    "SimulatedSourceSettings",
    "SinkSettings",
    "SocialSettings",
    "SourcesSettings",
    "ValidationSettings",
    "WorkerSettings",
    "YahooSettings",
    "as_brief",
    "get_settings",
    "load_dotenv_files",
    "load_settings",
    "secret_paths",
    "to_settings_shape",
]

ROOT = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------------------------------------
# The brief's configuration, mapped onto ours. One table, used in both directions (reading a file or dict,
# and ConfigurationManager.get_config()) and printed in the README ("Configuration: the brief's keys").
# ---------------------------------------------------------------------------------------------------------

# Brief section -> our section (path). Keys not in BRIEF_KEYS keep their name inside the section.
BRIEF_SECTIONS: dict[str, tuple[str, ...]] = {
    "pipeline": ("pipeline",),
    "yfinance": ("sources", "yahoo"),
    "alpha_vantage": ("sources", "alpha_vantage"),
    "finnhub": ("sources", "finnhub"),
    "fred": ("sources", "fred"),
    "kafka": ("kafka",),
    "postgresql": ("postgres",),
}

logger = logging.getLogger(__name__)


def _key_env_note(section: type[SourceSection]) -> str:
    """The brief's `api_key` row, naming the section's own `key_env` (declared once, in streams/config.py)."""
    return f"must be empty: {' or '.join(section.key_env)} in the environment or .env"


# (brief key, our key or None when accepted without effect, why). Special case: `api_key` must be empty (keys
# come from the environment, never a settings file). `rate_limit_delay` keeps its name: the least number of
# seconds between two calls, on top of rate_limit_calls per rate_limit_per_seconds.
BRIEF_KEYS: list[tuple[str, str | None, str]] = [
    ("pipeline.batch_size", "validation.batch_size", "records per validate batch (worker and in-process)"),
    ("pipeline.batch_timeout", "pipeline.batch_timeout_seconds", "in-process: longest wait for a partial batch"),
    ("pipeline.max_queue_size", "pipeline.max_queue_size", "in-process: bounded queue before the sink"),
    ("pipeline.log_level", "pipeline.log_level", "level of the streams/producers/sinks loggers (shown on stderr "
     "while your process configures no logging); a worker's `--loglevel` unless `-l` is given"),
    ("pipeline.metrics_enabled", "pipeline.metrics_enabled", "in-process: write data_quality_metrics"),
    ("pipeline.data_retention_days", "sink.data_retention_days", "rows older than this are deleted"),
    ("yfinance.collection_interval", "sources.yahoo.interval_seconds", "seconds between polls"),
    ("alpha_vantage.collection_interval", "sources.alpha_vantage.interval_seconds", "seconds between polls"),
    ("alpha_vantage.api_key", None, _key_env_note(AlphaVantageSettings)),
    ("finnhub.collection_interval", "sources.finnhub.interval_seconds", "seconds between polls"),
    ("finnhub.websocket_enabled", "sources.finnhub.websocket", "also stream trades over the websocket"),
    ("finnhub.api_key", None, _key_env_note(FinnhubSettings)),
    ("fred.collection_interval", "sources.fred.interval_seconds", "seconds between polls"),
    ("fred.api_key", None, _key_env_note(FredSettings)),
    ("kafka.batch_size", "kafka.producer_max_batch_bytes", "producer batch size in bytes"),
    ("kafka.linger_ms", "kafka.producer_linger_ms", "producer linger"),
    ("kafka.compression_type", None, "accepted, no effect: records are small JSON, sent uncompressed"),
    ("kafka.acks", None, "accepted, no effect: tickflow always uses acks=all with an idempotent producer"),
    ("kafka.retries", None, "accepted, no effect: aiokafka retries until its request timeout"),
    ("postgresql.min_connections", "postgres.pool_min", "connection pool minimum"),
    ("postgresql.max_connections", "postgres.pool_max", "connection pool maximum"),
]

# The brief's environment names. A TICKFLOW_* name for the same setting wins over these.
ENV_ALIASES: dict[str, str] = {
    "POSTGRES_ENABLED": "postgres.enabled",
    "POSTGRES_HOST": "postgres.host",
    "POSTGRES_PORT": "postgres.port",
    "POSTGRES_DATABASE": "postgres.database",
    "POSTGRES_USER": "postgres.user",
    "POSTGRES_PASSWORD": "postgres.password",
    "KAFKA_ENABLED": "kafka.enabled",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka.bootstrap_servers",
    "PIPELINE_LOG_LEVEL": "pipeline.log_level",
}

# Brief keys that may also stand at the top level (the brief's DataIngestionPipeline({'batch_size': 50, ...})).
_TOP_PIPELINE_KEYS = ("batch_size", "batch_timeout", "max_queue_size", "log_level", "metrics_enabled",
                      "data_retention_days")
_RENAMES: dict[tuple[str, str], tuple[str, ...] | None] = {
    tuple(b.split(".", 1)): (tuple(o.split(".")) if o else None)  # type: ignore[misc]
    for b, o, _ in BRIEF_KEYS
}


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _model_at(path: tuple[str, ...]) -> type[BaseModel] | None:
    """The settings model at `path` (() is Settings), or None past a leaf."""
    model: Any = Settings
    for part in path:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def _key_env(path: tuple[str, ...]) -> tuple[str, ...]:
    model = _model_at(path)
    return model.key_env if model is not None and issubclass(model, SourceSection) else ()


def to_settings_shape(doc: Mapping[str, Any], where: str = "configuration") -> dict[str, Any]:
    """A configuration in our names, the brief's, or a mix -> our nested shape. A key given twice (under two
    names) and an unknown key are ConfigErrors naming the key, the closest known one and `where`."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{where}: the top level must be a mapping of sections, not {type(doc).__name__}")
    out: dict[str, Any] = {}
    spelled: dict[tuple[str, ...], str] = {}

    def put(path: tuple[str, ...], value: Any, name: str) -> None:
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if path in spelled:
            raise ConfigError(f"{where}: {name} and {spelled[path]} both set {'.'.join(path)}; keep one")
        node[path[-1]] = value
        spelled[path] = name

    def section(name: str, body: Any, base: tuple[str, ...], brief: str | None) -> None:
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where}: section {name!r} must be a mapping of keys, not {type(body).__name__}")
        model = _model_at(base)
        fields = set(model.model_fields) if model is not None else set()
        brief_keys = {k for (s, k) in _RENAMES if s == brief}
        for key, value in body.items():
            key = str(key)
            if brief is not None and (brief, key) in _RENAMES:
                target = _RENAMES[(brief, key)]
                if key == "api_key":
                    if value:  # never echoed; worded so the redactor (streams/redact.py) leaves the advice whole
                        env = (_key_env(base) or ("the provider's key variable",))[0]
                        raise ConfigError(f"{where}: {name}.api_key must be empty: API keys are not read from "
                                          f"configuration; set {env} in the environment or .env, or pass "
                                          f"it to ConfigurationManager.enable_service({base[-1]!r}, ...)")
                elif target is not None:
                    put(target, value, f"{name}.{key}")
            elif key in fields:
                if base == ("sources",) and isinstance(value, Mapping):
                    section(f"{name}.{key}", value, (*base, key), None)
                else:
                    put((*base, key), value, f"{name}.{key}")
            else:
                raise ConfigError(f"{where}: unknown key {name}.{key}{_suggest(key, fields | brief_keys)}")

    ours = set(Settings.model_fields)
    for top, body in doc.items():
        top = str(top)
        if top in BRIEF_SECTIONS:
            section(top, body, BRIEF_SECTIONS[top], top)
        elif top in _TOP_PIPELINE_KEYS:
            section("pipeline", {top: body}, ("pipeline",), "pipeline")
        elif top in ours:
            section(top, body, (top,), None)
        else:
            known = ours | set(BRIEF_SECTIONS) | set(_TOP_PIPELINE_KEYS)
            raise ConfigError(f"{where}: unknown section {top!r}{_suggest(top, known)}")
    return out


def secret_paths() -> list[tuple[str, str]]:
    """(section, key) of every SecretStr setting (postgres.password, kafka.sasl_password, ...)."""
    found = []
    for section, field in Settings.model_fields.items():
        for key, f in getattr(field.annotation, "model_fields", {}).items():
            if f.annotation is SecretStr or f.annotation == SecretStr | None:
                found.append((section, key))
    return found


def as_brief(settings: Settings, *, secrets: bool = True) -> dict[str, Any]:
    """Settings as a plain dict in the brief's sections (pipeline, yfinance, ..., postgresql) followed by our
    other sections, each setting once (so `tickflow init`'s file, written from it, has one key to edit per
    setting). `secrets`: real
    secret values (for the caller's memory only; never print it) or left out. to_settings_shape() reads it
    back unchanged."""
    d = settings.model_dump(mode="json")
    for section, key in secret_paths():
        value = getattr(getattr(settings, section), key)
        if secrets and value is not None:
            d[section][key] = value.get_secret_value()
        else:
            d[section].pop(key, None)
    out: dict[str, Any] = {}
    for brief, base in BRIEF_SECTIONS.items():
        node: dict[str, Any] = d
        for part in base[:-1]:
            node = node[part]
        out[brief] = node.pop(base[-1])
    for (brief, key), target in _RENAMES.items():
        if target is None:
            continue
        node = d if target[0] != BRIEF_SECTIONS[brief][0] or target[:-1] != BRIEF_SECTIONS[brief] else None
        if node is None:  # renamed inside its own section
            out[brief][key] = out[brief].pop(target[-1])
        else:  # lives in another of our sections (validation.batch_size -> pipeline.batch_size)
            for part in target[:-1]:
                node = node[part]
            out[brief][key] = node.pop(target[-1])
    out.update(d)
    return out


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def config_file_from_env() -> Path | None:
    path = os.environ.get("TICKFLOW_CONFIG")
    if path:
        return Path(path)
    default = Path("pipeline_config.yaml")
    return default if default.exists() else None


def _parse_env_file(path: Path) -> dict[str, str]:
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_dotenv_files(config_file: Path | None = None) -> list[Path]:
    """Read .env then .env.pipeline (working directory, then beside the config file) into os.environ without
    overriding what is set, so API keys (FINNHUB_API_KEY ...) reach the providers too. TICKFLOW_ENV_FILES
    (comma-separated, empty for none) replaces the default list. Returns the files read."""
    names = os.environ.get("TICKFLOW_ENV_FILES")
    listed = [n.strip() for n in names.split(",") if n.strip()] if names is not None else [".env", ".env.pipeline"]
    dirs = [Path.cwd()] + ([config_file.resolve().parent] if config_file is not None else [])
    read: list[Path] = []
    for d in dict.fromkeys(dirs):
        for name in listed:
            path = (d / name) if not Path(name).is_absolute() else Path(name)
            if path in read or not path.is_file():
                continue
            for key, value in _parse_env_file(path).items():
                os.environ.setdefault(key, value)
            read.append(path)
    return read


def _env_fields() -> dict[str, Any]:
    """Every TICKFLOW_<SECTION>__<KEY> name (upper case) -> the annotation of the setting it sets."""
    names: dict[str, Any] = {}

    def walk(model: type[BaseModel], prefix: str) -> None:
        for key, field in model.model_fields.items():
            name = f"{prefix}__{key.upper()}" if prefix != "TICKFLOW" else f"TICKFLOW_{key.upper()}"
            names[name] = field.annotation
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, name)

    walk(Settings, "TICKFLOW")
    return names


def _known_env_names() -> set[str]:
    return set(_env_fields())


def _shape_of(ann: Any) -> str | None:
    """"list" or "mapping" for a setting that the environment must give as JSON (pydantic-settings parses those
    as JSON), else None."""
    kind = get_origin(ann) or ann
    if isinstance(kind, type):
        if issubclass(kind, BaseModel | Mapping):
            return "mapping"
        return "list" if issubclass(kind, list | tuple | set | frozenset) else None
    return next((x for x in map(_shape_of, get_args(ann)) if x), None)  # X | None, Annotated[...]


def env_json_hint(exc: Exception, env: Mapping[str, str] | None = None) -> str:
    """pydantic-settings says only 'error parsing value for field "sources" from source "EnvSettingsSource"'
    when a TICKFLOW_* variable for a list or a mapping is not JSON: the one line that names the variable and
    the fix (e.g. TICKFLOW_SOURCES__REPLAY__FILES='["/data/a.csv"]')."""
    env = os.environ if env is None else env
    text = str(exc)
    field = text.split('field "', 1)[1].split('"', 1)[0] if 'field "' in text else ""
    prefix = f"TICKFLOW_{field.upper()}"
    fields = _env_fields()
    suspects = []
    for name, value in sorted(env.items()):
        upper = name.upper()
        if upper != prefix and not upper.startswith(f"{prefix}__"):
            continue
        try:
            json.loads(value)
        except ValueError:
            suspects.append((name, value, _shape_of(fields.get(upper))))
    if not suspects:
        return f"an environment variable {prefix}__* has a value that is not valid JSON ({text})"
    name, value, shape = next((s for s in suspects if s[2]), None) or next(
        (s for s in suspects if "," in s[1]), suspects[0])
    if shape == "mapping":
        pairs = [p.split("=", 1) if "=" in p else p.split(":", 1) for p in value.split(",") if p.strip()]
        example = (json.dumps({k.strip(): v.strip() for k, v in pairs}) if pairs and all(len(p) == 2 for p in pairs)
                   else '{"name": "value"}')
    else:
        example = json.dumps([v.strip() for v in value.split(",") if v.strip()])
    return f"{name}={value}: a list or mapping in the environment must be JSON, e.g. {name}='{example}'"


def check_env_names(env: Mapping[str, str] | None = None) -> None:
    """A TICKFLOW_<SECTION>__<KEY> name that names no setting is an error with the closest name, instead of
    being silently ignored (TICKFLOW_SOURCE__FINNHUB__ENABLED), and so is a setting's name spelled with single
    underscores (TICKFLOW_POSTGRES_PASSWORD); other TICKFLOW_* names (TICKFLOW_CONFIG, ...) are left alone."""
    env = os.environ if env is None else env
    known = _known_env_names()
    collapsed = {k.replace("__", "_"): k for k in known if "__" in k}
    for name in env:
        upper = name.upper()
        if upper.startswith("TICKFLOW_") and "__" in upper and upper not in known:
            raise ConfigError(f"environment variable {name} names no setting{_suggest(upper, known)}")
        # TICKFLOW_POSTGRES_PASSWORD: a setting's name with one underscore where two part section and key. Not
        # what Kubernetes sets for a Service named tickflow-postgres: TICKFLOW_POSTGRES_PORT=tcp://10.96.0.12:5432.
        if (upper.startswith("TICKFLOW_") and "__" not in upper and upper in collapsed
                and not re.match(r"(?i)(tcp|udp|sctp)://", env[name])):
            raise ConfigError(f"environment variable {name} names no setting; did you mean {collapsed[upper]}? "
                              "(two underscores between a section and its key)")


class _Layer(PydanticBaseSettingsSource):
    """A ready dict as a settings source (the file, or the brief's environment aliases)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return self.data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.data


# The file layer of the Settings being built (set by load_settings; None: no file).
_FILE_LAYER: ContextVar[dict[str, Any] | None] = ContextVar("tickflow_file_layer", default=None)


def _alias_layer(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, path in ENV_ALIASES.items():
        value = env.get(name)
        if value is None or value == "":
            continue
        section, key = path.split(".")
        if key == "log_level":
            value = value.upper()
        out.setdefault(section, {})[key] = value
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    """A settings file -> our nested shape (brief names accepted), errors naming the file."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    return refuse_file_secrets(to_settings_shape(doc or {}, str(path)), str(path))


def refuse_file_secrets(layer: dict[str, Any], where: str) -> dict[str, Any]:
    """A settings file holds no secret (README "Security"): a non-empty SecretStr setting in it is an error
    naming the environment variable to use instead. Keyword arguments (the Python API's dict) may pass them."""
    for section, key in secret_paths():
        if layer.get(section, {}).get(key) not in (None, ""):
            raise ConfigError(f"{where}: {section}.{key} is a secret and is not read from a settings file; set "
                              f"TICKFLOW_{section.upper()}__{key.upper()} in the environment or .env.pipeline")
    return layer


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
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        layers: list[PydanticBaseSettingsSource] = [init_settings, env_settings,
                                                     _Layer(settings_cls, _alias_layer(os.environ))]
        file_layer = _FILE_LAYER.get()
        if file_layer is None:
            path = config_file_from_env()
            file_layer = read_config_file(path) if path is not None and path.exists() else None
        if file_layer:
            layers.append(_Layer(settings_cls, file_layer))
        return tuple(layers)

    @model_validator(mode="after")
    def _symbols_pass_validation(self) -> Settings:
        """An enabled source's symbol that the validator refuses ('bad sym') would have every record of it
        rejected, and, a share of the source's records being rejected, trip its circuit breaker and pause the
        whole source, its good symbols too: a configuration error, said at start-up."""
        v = self.validation
        pattern = re.compile(v.symbol_pattern)
        names = type(self.sources).model_fields
        others_on = any(getattr(self.sources, n).enabled is True for n in names if n != "simulated")
        for name in names:
            section = getattr(self.sources, name)
            symbols = getattr(section, "symbols", None)
            # enabled unset: the simulated feed's default, on while no other source is (producers/registry.py)
            on = section.enabled if section.enabled is not None else not others_on
            if not on or not isinstance(symbols, list):
                continue
            sent: dict[str, str] = {}  # as sent -> as written, first spelling
            twice: list[str] = []
            for symbol in symbols:
                # as each source sends it: the simulated one as written, stocktwits stripped, the others upper-cased
                s = str(symbol) if name == "simulated" else str(symbol).upper()
                s = s.strip() if name == "stocktwits" else s
                if len(s) > v.max_symbol_length or not pattern.fullmatch(s):
                    raise ValueError(f"sources.{name}.symbols: {str(symbol)[:40]!r} is not a symbol validation "
                                     f"accepts (validation.symbol_pattern {v.symbol_pattern}, at most "
                                     f"{v.max_symbol_length} characters): every record of it would be rejected")
                # [AAPL, aapl]: a source that does not drop repeats itself (news, social, stocktwits) made each
                # call twice a round, spending its rate limit on the same answer: kept once, said once
                if s in sent:
                    twice.append(str(symbol)[:40])
                else:
                    sent[s] = str(symbol)
            if twice:
                logger.warning("sources.%s.symbols: %s listed more than once; each symbol is asked for once",
                               name, ", ".join(repr(t) for t in twice))
                section.symbols = list(sent.values())
        self._warn_news_twice()
        return self

    def _warn_news_twice(self) -> None:
        """Finnhub's company news read by both the finnhub source and the news source is stored twice (the source
        is part of the natural key): legal, but rarely meant, and it spends the shared 60 calls a minute twice."""
        fh, news = self.sources.finnhub, self.sources.news
        if not (fh.enabled and news.enabled and "company_news" in fh.endpoints):
            return
        both = sorted({s.upper() for s in fh.symbols} & {s.upper() for s in news.symbols})
        if both:
            logger.warning("sources.finnhub.endpoints has company_news and sources.news reads Finnhub's company news "
                           "too, for %s: each article is stored twice (source finnhub and source news); drop one",
                           ", ".join(both))


def _problems(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden" and loc:
            model = _model_at(loc[:-1])
            if model is not None:
                msg = f"unknown key{_suggest(loc[-1], model.model_fields)}"
        if err["type"] == "value_error":  # our own validators' messages, without pydantic's "Value error, "
            msg = msg.removeprefix("Value error, ")
        # After a secret's name a colon reads as "name: value" to the redactor, which hides the next word.
        sep = " " if loc and re.search(r"(?i)(key|token|secret|passw|pwd)$", loc[-1]) else ": "
        parts.append(f"{'.'.join(loc)}{sep}{msg}" if loc else msg)
    return "; ".join(parts)


def load_settings(*, file_doc: Mapping[str, Any] | None = None, file_name: str | None = None,
                  **overrides: Any) -> Settings:
    """Build Settings, turning every problem into a one-line ConfigError that names the key and where it
    came from, a TICKFLOW_* list that is not JSON included (every entry point builds its settings here: the
    worker, the `tickflow` commands, `python -m producers`, DataIngestionPipeline and ConfigurationManager).
    `file_doc` stands in for the config file (ConfigurationManager checks an edit before writing it);
    `overrides` may use the brief's names."""
    path = config_file_from_env()
    if file_doc is None and path is not None and not path.exists():
        raise ConfigError(f"config file {path} (from TICKFLOW_CONFIG) does not exist")
    load_dotenv_files(path if file_name is None else Path(file_name))
    check_env_names()
    where_file = file_name or (str(path) if path else None)
    layer = refuse_file_secrets(to_settings_shape(file_doc, where_file or "configuration"),
                                where_file or "configuration") if file_doc is not None else (
        read_config_file(path) if path is not None else {})
    init = to_settings_shape(overrides, "keyword arguments") if overrides else {}
    token = _FILE_LAYER.set(layer)
    try:
        return Settings(**init)
    except ValidationError as exc:
        where = f"{where_file} or the environment" if where_file else "the environment"
        raise ConfigError(f"invalid settings in {where}: {_problems(exc)}") from None
    except SettingsError as exc:  # a TICKFLOW_* list or mapping that is not JSON: for every entry point
        raise ConfigError(env_json_hint(exc)) from None
    finally:
        _FILE_LAYER.reset(token)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide Settings, built on first use. Every entry point gets its settings here first (the
    worker through streams/app.py, the `tickflow` commands, `python -m producers`, `make run`), so this is
    where their secrets are registered and log redaction is installed (streams/redact.py): before any
    client exists that could log one."""
    settings = load_settings()
    redact.install(settings)
    return settings
