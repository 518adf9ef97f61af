"""The brief's Python API on the Kafka-native core.

    from streams import DataIngestionPipeline, MarketDataPoint, ConfigurationManager, DataConnectorManager

`DataIngestionPipeline` is a client of the running pipeline: it validates a point with the same rules as
validate_ticks and produces it to raw.<source>; the workers do the rest. `get_metrics()` reads the
cluster's metrics from a worker's /pipeline/metrics, not a local guess. `ConfigurationManager` edits
pipeline_config.yaml (and keeps API keys out of it, in .env.pipeline). `DataConnectorManager` runs the
enabled provider sources in this process and feeds them through the pipeline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import urllib.request
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import yaml
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr

from producers.base import Source, encode
from streams import redact
from streams.catalog import Catalog, load_catalog
from streams.config import key_env_by_source
from streams.errors import ConfigError, RejectedRecord
from streams.models import DataType, MarketDataPoint
from streams.rules import Validator
from streams.settings import Settings, SourcesSettings, load_settings

logger = logging.getLogger(__name__)

__all__ = ["ConfigurationManager", "DataConnectorManager", "DataIngestionPipeline", "DataType", "MarketDataPoint"]

# Environment variable that carries each source's secret (never written to pipeline_config.yaml), from each
# provider section's own declaration (streams/config.py `key_env`; the first name is the documented one).
API_KEY_ENV = {name: names[0] for name, names in key_env_by_source().items()}


def _secret_settings() -> dict[str, list[str]]:
    """The SecretStr settings by section (postgres.password, kafka.sasl_password, kafka.ssl_key_password)."""
    found: dict[str, list[str]] = {}
    for section, field in Settings.model_fields.items():
        model = field.annotation
        for key, f in getattr(model, "model_fields", {}).items():
            if f.annotation is SecretStr or f.annotation == SecretStr | None:
                found.setdefault(section, []).append(key)
    return found


def _as_settings(config: Settings | dict[str, Any] | str | Path | None) -> Settings:
    if config is None:
        return load_settings()
    if isinstance(config, Settings):
        return config
    if isinstance(config, (str, Path)):
        return ConfigurationManager(config).settings()
    return load_settings(**config)


def _run_or_schedule(coro: Awaitable[None]) -> Awaitable[None]:
    """Run `coro` now when no loop is running; otherwise schedule it and return the task (awaitable)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)  # type: ignore[arg-type]
        done: asyncio.Future[None] = asyncio.new_event_loop().create_future()
        done.set_result(None)
        return done
    return loop.create_task(coro)  # type: ignore[arg-type]


class DataIngestionPipeline:
    """Validate-and-produce client of the pipeline, as the brief's examples use it."""

    def __init__(self, config: Settings | dict[str, Any] | str | Path | None = None) -> None:
        self.settings = _as_settings(config)
        # Our exceptions never carry these settings' secrets; your process's logging is left as it is
        # (streams.redact.install(settings) adds the log redaction the worker has).
        redact.register(*redact.secrets_in(self.settings))
        self.catalog: Catalog = load_catalog(suffix=self.settings.kafka.topic_suffix)
        self.validator = Validator(self.settings.validation)
        self._producer: AIOKafkaProducer | None = None
        self.local_counts = {"ingested": 0, "refused": 0}

    async def start(self) -> None:
        from streams.broker import ensure_topics

        await ensure_topics(self.catalog, self.settings.kafka.bootstrap_servers, kafka=self.settings.kafka)
        if self._producer is None:
            from producers.runner import new_producer

            self._producer = new_producer(self.settings)
            await self._producer.start()

    def stop(self) -> Awaitable[None]:
        """Flush and close. Await it inside a coroutine; called outside a loop it runs to completion."""
        return _run_or_schedule(self._stop())

    async def _stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def __aenter__(self) -> DataIngestionPipeline:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def ingest_data_point(self, point: MarketDataPoint) -> bool:
        """True once the point is acknowledged on raw.<source>; False (with the reason logged) when invalid."""
        if self._producer is None:
            raise RuntimeError("call `await pipeline.start()` first")
        try:
            topic = self.catalog.raw(point.source).name
        except ConfigError as exc:
            logger.warning("refused %s: %s", point.symbol, exc)
            self.local_counts["refused"] += 1
            return False
        try:
            self.validator.check_point(point.model_copy(deep=True))
        except RejectedRecord as rej:
            logger.warning("refused %s@%s: %s", point.symbol, point.timestamp.isoformat(), rej)
            self.local_counts["refused"] += 1
            return False
        rec = encode(point)
        await (await self._producer.send(topic, rec.value, key=rec.key))
        self.local_counts["ingested"] += 1
        return True

    def get_metrics(self, *, url: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """The brief's metrics, read from a worker (any worker answers for the whole group)."""
        url = url or f"http://{self.settings.worker.advertised_host or self.settings.worker.web_host}:" \
                     f"{self.settings.worker.web_port}/pipeline/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            m = json.loads(resp.read())
        return {**m, "p95_latency_ms": m.get("p95_latency_ms"), "queue_size": m.get("queue_size")}


class DataConnectorManager:
    """Runs the enabled provider sources in this process, feeding every point through `pipeline`."""

    def __init__(self, pipeline: DataIngestionPipeline, config: Settings | dict[str, Any] | None = None) -> None:
        self.pipeline = pipeline
        self.settings = _as_settings(config) if config is not None else pipeline.settings
        self._tasks: list[asyncio.Task[None]] = []
        self.sources: list[Source] = []

    async def start_data_collection(self) -> None:
        from producers.registry import enabled_sources

        self.sources = enabled_sources(self.settings.sources)
        for source in self.sources:
            self._tasks.append(asyncio.create_task(self._run(source), name=f"collect-{source.name}"))

    async def _run(self, source: Source) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            async for batch in source.fetch(session):
                for record in batch:
                    if isinstance(record, MarketDataPoint):
                        await self.pipeline.ingest_data_point(record)

    def stop(self) -> Awaitable[None]:
        return _run_or_schedule(self._stop())

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class ConfigurationManager:
    """Reads and edits pipeline_config.yaml; every change is validated against the Settings model first."""

    def __init__(self, config_file: str | Path | None = None) -> None:
        self.path = Path(config_file or os.environ.get("TICKFLOW_CONFIG") or "pipeline_config.yaml")
        self.env_path = self.path.with_name(".env.pipeline")
        if not self.path.exists():
            self.generate()
        self._doc = self._read()

    def _read(self) -> dict[str, Any]:
        try:
            doc = yaml.safe_load(self.path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{self.path}: not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{self.path}: the top level must be a mapping of sections")
        self._check(doc)
        return doc

    def _check(self, doc: dict[str, Any]) -> Settings:
        from pydantic import ValidationError

        try:
            return Settings.model_validate(doc)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{self.path}: {problems}") from None

    def settings(self) -> Settings:
        """Settings from this file with the environment on top (the worker's precedence)."""
        old = os.environ.get("TICKFLOW_CONFIG")
        os.environ["TICKFLOW_CONFIG"] = str(self.path)
        try:
            return load_settings()
        finally:  # put the process's environment back as it was (it leaked into later settings before)
            if old is None:
                del os.environ["TICKFLOW_CONFIG"]
            else:
                os.environ["TICKFLOW_CONFIG"] = old

    def get_config(self) -> dict[str, Any]:
        return self.settings().model_dump(mode="json")

    def get_section(self, name: str) -> dict[str, Any]:
        config = self.get_config()
        if name not in config:
            raise ConfigError(f"{self.path}: no section {name!r} (sections: {', '.join(config)})")
        return config[name]

    def update_config(self, section: str, key: str, value: Any) -> None:
        doc = json.loads(json.dumps(self._doc))
        node = doc.setdefault(section, {})
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        self._check(doc)
        self._doc = doc
        self._write()

    def enable_service(self, name: str, api_key: str | None = None) -> None:
        if name not in SourcesSettings.model_fields:
            raise ConfigError(f"unknown service {name!r} (known: {', '.join(SourcesSettings.model_fields)})")
        self.update_config("sources", f"{name}.enabled", True)
        if api_key:
            var = API_KEY_ENV.get(name)
            if var is None:
                raise ConfigError(f"service {name!r} takes no API key")
            self._set_env(var, api_key)

    def disable_service(self, name: str) -> None:
        if name not in SourcesSettings.model_fields:
            raise ConfigError(f"unknown service {name!r}")
        self.update_config("sources", f"{name}.enabled", False)

    def _set_env(self, var: str, value: str) -> None:
        lines = self.env_path.read_text().splitlines() if self.env_path.exists() else []
        lines = [ln for ln in lines if not ln.startswith(f"{var}=")] + [f"{var}={value}"]
        self.env_path.write_text("\n".join(lines) + "\n")
        self.env_path.chmod(0o600)

    def _write(self) -> None:
        self.path.write_text(yaml.safe_dump(self._doc, sort_keys=False))

    def generate(self) -> None:
        """Write pipeline_config.yaml with every setting at its default, and a .env.pipeline template.
        Secret settings (every SecretStr field) are left out of the YAML and listed in the template instead:
        a masked default dumped into the YAML would read back as the password "**********"."""
        defaults = {name: field.default_factory().model_dump(mode="json")  # type: ignore[misc]
                    for name, field in Settings.model_fields.items()}
        secret_env: list[str] = []
        for section, keys in _secret_settings().items():
            for key in keys:
                defaults[section].pop(key, None)
                secret_env.append(f"TICKFLOW_{section.upper()}__{key.upper()}")
        header = ("# tickflow pipeline configuration. Environment variables TICKFLOW_<SECTION>__<KEY> override\n"
                  "# these values; secrets (passwords, API keys) belong in .env.pipeline, not here.\n")
        self.path.write_text(header + yaml.safe_dump(defaults, sort_keys=False))
        if not self.env_path.exists():
            names = [*sorted(set(API_KEY_ENV.values())), *secret_env]
            self.env_path.write_text("# Secrets for tickflow; load with `set -a; . ./.env.pipeline; set +a`.\n"
                                     + "".join(f"# {n}=\n" for n in names))
            self.env_path.chmod(0o600)
