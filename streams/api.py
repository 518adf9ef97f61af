"""The brief's Python API on the Kafka-native core.

    from streams import DataIngestionPipeline, MarketDataPoint, ConfigurationManager, DataConnectorManager

`DataIngestionPipeline` has two modes, chosen by `kafka.enabled`:
- true (default): a client of the running pipeline. It validates a point with the same rules as
  validate_ticks and produces it to raw.<source>; the workers do the rest. `get_metrics()` reads the
  cluster's metrics from a worker's /pipeline/metrics, or, when no worker answers, what this client knows.
- false: no broker. The same rules (streams/rules.py), the same anomaly detectors and the same PostgreSQL
  sink (sinks/postgres.py) run in this process behind a bounded queue (notebooks, small jobs).
`ConfigurationManager` edits pipeline_config.yaml (API keys go to .env.pipeline, mode 0600, which settings
load automatically). `DataConnectorManager` runs the enabled provider sources in this process and feeds
them through the pipeline; a failing source is logged, shown in `status()` and restarted with back-off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import operator
import os
import re
import socket
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from pydantic import Field, model_validator
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_never, wait_exponential

from streams import histogram, redact
from streams.catalog import Catalog, load_catalog
from streams.config import key_env_by_source
from streams.errors import ConfigError, RejectedRecord, TickflowError
from streams.models import DataType, ShortStr
from streams.models import MarketDataPoint as _CanonicalPoint
from streams.rules import Validator
from streams.settings import (
    BRIEF_SECTIONS,
    Settings,
    SourcesSettings,
    as_brief,
    load_settings,
    read_config_file,
    secret_paths,
    to_settings_shape,
)

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

    from producers.base import Source
    from sinks.postgres import PostgresTickWriter
    from streams.anomalies import DetectorSuite

logger = logging.getLogger(__name__)


def _retriable(exc: BaseException) -> bool:
    """Only our errors that say so (streams/errors.py) are retried: an outage of the database, not bad data."""
    return isinstance(exc, TickflowError) and exc.retriable


def _restartable(exc: BaseException) -> bool:
    """Whether a source's failure is worth a restart, as the worker's supervisor decides it
    (streams/stages/produce.py `restartable`): our errors by `retriable` (a missing setting, a refused request
    stays failed), any other Exception (the network, a parser bug) yes; a cancellation is not an Exception."""
    if isinstance(exc, TickflowError):
        return exc.retriable
    return isinstance(exc, Exception)


def _log_sink_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("in-process sink: %s; retrying in %.1fs", exc, wait)


T = TypeVar("T")

__all__ = ["ConfigurationManager", "DataConnectorManager", "DataIngestionPipeline", "DataType", "MarketDataPoint"]

# Environment variable that carries each source's secret (never written to pipeline_config.yaml), from each
# provider section's own declaration (streams/config.py `key_env`; the first name is the documented one).
API_KEY_ENV = {name: names[0] for name, names in key_env_by_source().items()}
# The brief's service names -> our source names.
SERVICE_NAMES = {brief: base[-1] for brief, base in BRIEF_SECTIONS.items() if base[0] == "sources"}
# What a user may call a source that the brief does not name: its provider's other names.
SERVICE_ALIASES = {"twitter": "social", "x": "social", "quandl": "nasdaq_data_link", "nasdaq": "nasdaq_data_link",
                   "ndl": "nasdaq_data_link", "yahoo_finance": "yahoo", "alphavantage": "alpha_vantage",
                   "news_sentiment": "news", "sentiment": "news"}

# The brief's data_type words -> ours. "price": a price (and volume) observation, our tick.
BRIEF_DATA_TYPES = {"price": DataType.TICK}


class MarketDataPoint(_CanonicalPoint):
    """The canonical record, also accepting the brief's form: `source` defaults to "unknown" as in the brief,
    `data_type="price"` is a tick, `metadata=None` is no metadata. Serialises exactly like the canonical one."""

    source: ShortStr = "unknown"
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _brief_form(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "metadata" in data and data["metadata"] is None:
                data = {**data, "metadata": {}}
            kind = data.get("data_type")
            if isinstance(kind, str) and kind.lower() in BRIEF_DATA_TYPES:
                data = {**data, "data_type": BRIEF_DATA_TYPES[kind.lower()]}
        return data


def _as_settings(config: Settings | Mapping[str, Any] | str | Path | None) -> Settings:
    if config is None:
        return load_settings()
    if isinstance(config, Settings):
        return config
    if isinstance(config, (str, Path)):
        return ConfigurationManager(config).settings()
    return load_settings(**dict(config))


class _Done(Coroutine[Any, Any, Any]):
    """What stop() and start_data_collection() return: the work is done (or started); awaiting it is optional.
    A coroutine, so `asyncio.create_task(connectors.start_data_collection())` takes it as it takes any other."""

    def __init__(self, task: asyncio.Future[Any] | None = None) -> None:
        self.task = task
        self._steps: Generator[Any, Any, Any] | None = None

    def __await__(self) -> Generator[Any, Any, Any]:
        if self.task is None:
            return None
        return (yield from self.task.__await__())

    def _it(self) -> Generator[Any, Any, Any]:
        if self._steps is None:
            self._steps = self.__await__()
        return self._steps

    def send(self, value: Any) -> Any:
        return self._it().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._it().throw(typ if val is None else val)

    def close(self) -> None:
        self._it().close()


class _Engine:
    """The pipeline's own event loop, in a daemon thread. The Kafka producer or the in-process sink live here,
    so `stop()` can finish its work synchronously whether or not the caller awaits it (the brief calls it bare
    as the last line of `async def main`, after which asyncio.run cancels every task of the caller's loop),
    and the pipeline outlives the loop that started it (the brief's Flask example starts it in a thread with
    asyncio.run)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tickflow-pipeline", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(self.submit(coro))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            raise RuntimeError("stop() called from the pipeline's own thread")
        return self.submit(coro).result()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class _Stats:
    """This process's counters: what get_metrics() reports when no worker answers, and the in-process
    pipeline's metrics (and its data_quality_metrics rows)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.processed: Counter[str] = Counter()
        self.valid: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.written: Counter[str] = Counter()
        self.duplicates: Counter[str] = Counter()
        self.by_rule: dict[str, Counter[str]] = {}
        self.anomalies: Counter[str] = Counter()
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: Counter[str] = Counter()
        self.latency_n: Counter[str] = Counter()
        self.latency_range: dict[str, tuple[float | None, float | None]] = {}

    def reject(self, source: str, rule: str) -> None:
        self.processed[source] += 1
        self.rejected[source] += 1
        self.by_rule.setdefault(source, Counter())[rule] += 1

    def observe(self, source: str, values_ms: list[float]) -> None:
        histogram.observe_many(self.latency.setdefault(source, histogram.empty()), values_ms)
        self.latency_sum[source] += sum(values_ms)
        self.latency_n[source] += len(values_ms)
        self.latency_range[source] = histogram.extend_range(*self.latency_range.get(source, (None, None)), values_ms)

    def _summary(self, sources: list[str]) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        counts = histogram.empty()
        for s in sources:
            counts = histogram.merge(counts, self.latency.get(s, histogram.empty()))
        n = sum(self.latency_n[s] for s in sources)
        least, most = histogram.extend_range(None, None, [
            v for s in sources for v in self.latency_range.get(s, (None, None)) if v is not None])
        rules: Counter[str] = Counter()
        for s in sources:
            rules.update(self.by_rule.get(s, Counter()))

        def q(x: float) -> float:
            return round(histogram.percentile(counts, x, least, most) or 0.0, 3)

        return {
            "processed": sum(self.processed[s] for s in sources),
            "valid": sum(self.valid[s] for s in sources),
            "rejected": sum(self.rejected[s] for s in sources),
            "written": sum(self.written[s] for s in sources),
            "duplicates": sum(self.duplicates[s] for s in sources),
            "throughput_per_sec": sum(self.valid[s] for s in sources) / elapsed,
            "avg_latency_ms": round(sum(self.latency_sum[s] for s in sources) / n, 3) if n else 0.0,
            "p50_latency_ms": q(0.5), "p95_latency_ms": q(0.95), "p99_latency_ms": q(0.99),
            "rejected_by_rule": dict(rules),
        }

    def metrics(self) -> dict[str, Any]:
        s = self._summary(list(self.processed))
        return {"total_processed": s["processed"], "valid_points": s["valid"], "rejected_points": s["rejected"],
                "written_points": s["written"], "duplicate_points": s["duplicates"],
                "throughput_per_sec": s["throughput_per_sec"], "avg_latency_ms": s["avg_latency_ms"],
                "p50_latency_ms": s["p50_latency_ms"], "p95_latency_ms": s["p95_latency_ms"],
                "p99_latency_ms": s["p99_latency_ms"],
                "rejected_by_rule": s["rejected_by_rule"], "anomalies": dict(self.anomalies)}

    def snapshots(self) -> dict[str, dict[str, Any]]:
        return {source: self._summary([source]) for source in self.processed}


class _InProcess:
    """kafka.enabled false: rules, detectors and the PostgreSQL sink in this process, behind a bounded queue.
    A point is validated and checked by the detectors when ingested (so ingest_data_point answers at once);
    the sink writes batches of validation.batch_size, or what came within pipeline.batch_timeout_seconds."""

    def __init__(self, settings: Settings, stats: _Stats) -> None:
        self.settings = settings
        self.stats = stats
        self.validator = Validator(settings.validation)
        self.queue: asyncio.Queue[tuple[Any, float] | None] = asyncio.Queue(maxsize=settings.pipeline.max_queue_size)
        self.suites: dict[tuple[str, str], DetectorSuite] = {}
        self.writer: PostgresTickWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.worker = f"api-{socket.gethostname()}-{os.getpid()}"
        self.sink_error: str | None = None

    async def start(self) -> None:
        if self.settings.postgres.enabled:
            from sinks.postgres import PostgresTickWriter

            # No Kafka offsets here to hold back until the rows are flushed: each write is durable when it returns.
            self.writer = PostgresTickWriter(self.settings.postgres.model_copy(update={"async_commit": False}))
            await self.writer.start()
        else:
            logger.warning("kafka.enabled and postgres.enabled are both false: points are validated and counted, "
                           "not stored")
        self.task = asyncio.create_task(self._drain(), name="tickflow-in-process-sink")

    def check(self, point: _CanonicalPoint) -> bool:
        source = point.source
        try:
            self.validator.check_point(point)
        except RejectedRecord as rej:
            logger.warning("refused %s@%s: %s", point.symbol, point.timestamp.isoformat(), rej)
            self.stats.reject(source, rej.rule)
            return False
        if self.settings.validation.detect_anomalies:
            self._detect(point)
        return True

    def _detect(self, point: _CanonicalPoint) -> None:
        from streams.anomalies import DetectorSuite

        key = (point.source, point.symbol)
        suite = self.suites.get(key)
        if suite is None:
            suite = self.suites[key] = DetectorSuite(self.settings.anomalies)
        try:
            found = suite.update(point)
        except Exception:  # as in validate_ticks: a detector bug must not cost the record
            logger.exception("anomaly detectors failed on %s/%s", point.source, point.symbol)
            return
        for a in found:
            self.stats.anomalies[a.detector] += 1
            if a.kind == "tick":
                point.flags.append(f"anomaly:{a.detector}")
            elif a.kind == "corporate_action":
                point.flags.append("corporate_action.suspect")

    async def put(self, point: _CanonicalPoint) -> None:
        if self.task is None or self.task.done():
            raise RuntimeError(f"the in-process sink is not running{': ' + self.sink_error if self.sink_error else ''}")
        await self.queue.put((point, time.monotonic()))

    async def _drain(self) -> None:
        batch_size = self.settings.validation.batch_size
        timeout = self.settings.pipeline.batch_timeout_seconds
        flush_every = self.settings.worker.metrics_flush_seconds
        last_metrics = time.monotonic()
        closing = False
        while not closing:
            first = await self.queue.get()
            if first is None:  # stop(): nothing after it
                return
            batch = [first]
            deadline = time.monotonic() + timeout
            while len(batch) < batch_size:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                if item is None:  # stop(): write what we have now, without waiting out the timeout
                    closing = True
                    break
                batch.append(item)
            await self._write(batch)
            if time.monotonic() - last_metrics >= flush_every:
                last_metrics = time.monotonic()
                await self.write_metrics()

    async def _write(self, batch: list[tuple[Any, float]]) -> None:
        from sinks.base import WriteResult, write_bisecting
        from sinks.postgres import row_from_json

        refused: set[int] = set()
        if self.writer is not None:
            rows = [row_from_json(p.to_json()) for p, _ in batch]
            sink = self.settings.sink
            writer = self.writer

            async def write(part: list[Any]) -> WriteResult:
                retrying = AsyncRetrying(  # an outage (retriable) is waited out; anything else comes out
                    retry=retry_if_exception(_retriable), stop=stop_never, reraise=True,
                    before_sleep=_log_sink_retry,
                    wait=wait_exponential(multiplier=sink.retry_initial_seconds, max=sink.retry_max_seconds))
                async for attempt in retrying:
                    with attempt:
                        return await writer.write(part)
                raise AssertionError("unreachable: stop_never")

            try:
                # rows the database refuses for their data are bisected out, as a worker's write stage does: one
                # bad row no longer costs its batch and stops the sink
                result, bad = await write_bisecting(write, rows, operator.add, WriteResult(0, 0))
            except Exception as exc:
                self.sink_error = str(exc)
                logger.error("in-process sink failed, %d points lost: %s", len(batch), exc)
                raise
            refused = {i for i, _ in bad}
            for i, exc in bad:
                p = batch[i][0]
                self.stats.by_rule.setdefault(p.source, Counter())["write.refused"] += 1
                logger.error("in-process sink: PostgreSQL refused %s %s at %s, not stored: %s", p.source, p.symbol,
                             p.timestamp.isoformat(), redact.redact(str(exc)))
            written = Counter(result.written_by_source)  # inserted, or updated by a newer revision (as a worker)
            by_source = Counter(p.source for i, (p, _) in enumerate(batch) if i not in refused)
            for source, n in by_source.items():
                self.stats.written[source] += written.get(source, 0)
                self.stats.duplicates[source] += n - written.get(source, 0)
        done = time.monotonic()
        per_source: dict[str, list[float]] = {}
        for i, (p, t0) in enumerate(batch):
            if i not in refused:  # a refused row was never stored: no latency to it (as in a worker's write stage)
                per_source.setdefault(p.source, []).append((done - t0) * 1000.0)
        for source, values in per_source.items():
            self.stats.observe(source, values)

    async def write_metrics(self) -> None:
        if self.writer is None or not self.settings.pipeline.metrics_enabled or not self.stats.processed:
            return
        try:
            await self.writer.write_metrics(self.worker, self.stats.snapshots())
        except Exception as exc:  # metrics must not stop the data
            logger.warning("could not write data_quality_metrics: %s", exc)

    async def stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            if not task.done():
                await self.queue.put(None)  # after every point queued so far
            with contextlib.suppress(Exception):  # a fatal sink error was logged where it happened
                await task
        await self.write_metrics()
        if self.writer is not None:
            await self.writer.stop()
            self.writer = None


_OUR_LOGGERS = ("streams", "producers", "sinks")


class _UntilConfigured(logging.Filter):
    """Passes records while the process has no logging of its own (no handler on the root logger): then Python
    prints warnings only, and PIPELINE_LOG_LEVEL=DEBUG would show nothing. Once the application configures
    logging, its handlers take the records and this one steps aside (no line printed twice)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not logging.getLogger().handlers


def _show_until_configured(logger: logging.Logger) -> None:
    """A redacted stderr handler on one of our loggers, once, for pipeline.log_level to be seen."""
    if any(isinstance(f, _UntilConfigured) for h in logger.handlers for f in h.filters):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_UntilConfigured())
    handler.addFilter(redact.RedactingFilter())
    logger.addHandler(handler)


class DataIngestionPipeline:
    """The brief's pipeline object: Kafka client (kafka.enabled, default) or in-process pipeline (false).
    Its work runs on its own event loop in a daemon thread (_Engine); the methods are called from yours."""

    def __init__(self, config: Settings | Mapping[str, Any] | str | Path | None = None) -> None:
        self.settings = _as_settings(config)
        # Our exceptions never carry these settings' secrets; your process's logging is left as it is
        # (streams.redact.install(settings) adds the log redaction the worker has).
        redact.register(*redact.secrets_in(self.settings))
        level = self.settings.pipeline.log_level
        if level is not None:
            for name in _OUR_LOGGERS:
                logging.getLogger(name).setLevel(level)
                _show_until_configured(logging.getLogger(name))
        self.catalog: Catalog = load_catalog(suffix=self.settings.kafka.topic_suffix)
        self.validator = Validator(self.settings.validation)
        self._producer: AIOKafkaProducer | None = None
        self._local: _InProcess | None = None
        self._engine: _Engine | None = None
        self._stats = _Stats()
        self.source_errors: dict[str, str] = {}  # filled by DataConnectorManager: source -> last error
        self.local_counts = {"ingested": 0, "refused": 0}

    @property
    def in_process(self) -> bool:
        return not self.settings.kafka.enabled

    async def start(self) -> None:
        if self._engine is not None:
            return
        engine = _Engine()
        try:
            await engine.call(self._start())
        except BaseException:
            engine.run(self._close())
            engine.close()
            raise
        self._engine = engine

    async def _start(self) -> None:
        self._stats = _Stats()
        if self.in_process:
            self._local = _InProcess(self.settings, self._stats)
            await self._local.start()
        else:
            from producers.runner import new_producer
            from streams.broker import ensure_topics

            await ensure_topics(self.catalog, self.settings.kafka.bootstrap_servers, kafka=self.settings.kafka)
            self._producer = new_producer(self.settings)
            await self._producer.start()

    def stop(self) -> _Done:
        """Flush (the in-process queue is written out) and close; returns when done. Awaiting the result is
        optional, so the brief's bare `pipeline.stop()` and `await pipeline.stop()` both work."""
        engine, self._engine = self._engine, None
        if engine is not None:
            try:
                engine.run(self._close())
            finally:
                engine.close()
        return _Done()

    async def _close(self) -> None:
        producer, self._producer = self._producer, None
        local, self._local = self._local, None
        if producer is not None:
            await producer.stop()
        if local is not None:
            await local.stop()

    async def __aenter__(self) -> DataIngestionPipeline:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    async def ingest_data_point(self, point: _CanonicalPoint) -> bool:
        """True once the point passed the rules and is acknowledged on raw.<source> (Kafka) or queued for the
        in-process sink; False, with the reason logged and counted, when it is refused."""
        engine = self._engine
        if engine is None:
            raise RuntimeError("call `await pipeline.start()` first")
        return await engine.call(self._ingest(point.model_copy(deep=True)))

    async def ingest_raw(self, source: str, value: bytes) -> bool:
        """A source's record as bytes (what it could not make a point of: a replayed row it could not read, the
        simulated feed's deliberately bad ones), judged by the validate stage's rules as the worker judges its raw
        topic: a point that passes is ingested; else False, the rule and reason logged and counted (they were
        dropped without a word)."""
        engine = self._engine
        if engine is None:
            raise RuntimeError("call `await pipeline.start()` first")
        try:
            point = self.validator.check(value, source=source)
        except RejectedRecord as rej:
            logger.warning("refused a record of %s: %s", source, rej)
            await engine.call(self._refused(source, rej.rule))
            return False
        return await self.ingest_data_point(point)

    async def _refused(self, source: str, rule: str) -> None:
        self._stats.reject(source, rule)
        self.local_counts["refused"] += 1

    async def _ingest(self, point: _CanonicalPoint) -> bool:
        if self._local is not None:
            if not self._local.check(point):
                self.local_counts["refused"] += 1
                return False
            self._stats.processed[point.source] += 1
            self._stats.valid[point.source] += 1
            await self._local.put(point)
            self.local_counts["ingested"] += 1
            return True
        try:
            topic = self.catalog.raw(point.source).name
        except ConfigError:
            logger.warning("refused %s: no raw topic for source %r; declare raw.%s (role raw, source %s) in "
                           "topics.yaml, or set kafka.enabled false to run in-process", point.symbol,
                           point.source, point.source, point.source)
            self._stats.reject(point.source, "source.unknown")
            self.local_counts["refused"] += 1
            return False
        try:
            self.validator.check_point(point)
        except RejectedRecord as rej:
            logger.warning("refused %s@%s: %s", point.symbol, point.timestamp.isoformat(), rej)
            self._stats.reject(point.source, rej.rule)
            self.local_counts["refused"] += 1
            return False
        assert self._producer is not None
        t0 = time.monotonic()
        await (await self._producer.send(topic, point.to_json(), key=point.symbol.encode()))
        self._stats.processed[point.source] += 1
        self._stats.valid[point.source] += 1
        self._stats.observe(point.source, [(time.monotonic() - t0) * 1000.0])
        self.local_counts["ingested"] += 1
        return True

    def get_metrics(self, *, url: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        """The brief's metrics. In-process: this process's. With Kafka: the cluster's, from a worker (any worker
        answers for the whole group); when none answers, this client's own counts (`scope` says which, and
        `worker_error` why), latency being the produce round trip. Latencies are 0.0 before the first row."""
        local = self._local
        extra = {"queue_size": local.queue.qsize() if local is not None else 0,
                 "failed_sources": dict(self.source_errors)}
        if self.in_process:
            return {**self._stats.metrics(), **extra, "scope": "in_process",
                    "sink_error": local.sink_error if local is not None else None}
        w = self.settings.worker
        url = url or f"http://{w.advertised_host or w.web_host}:{w.web_port}/pipeline/metrics"
        try:
            request = urllib.request.Request(url, headers=w.web_headers())  # the token, when one is set
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                m = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            return {**self._stats.metrics(), **extra, "scope": "client",
                    "worker_error": f"no worker metrics at {url}: {getattr(exc, 'reason', exc)}"}
        for key in ("avg_latency_ms", "p50_latency_ms", "p95_latency_ms", "p99_latency_ms", "throughput_per_sec"):
            if m.get(key) is None:
                m[key] = 0.0
        m.setdefault("queue_size", 0)
        return {**m, "failed_sources": dict(self.source_errors), "scope": "cluster"}


class DataConnectorManager:
    """Runs the enabled provider sources in this process, feeding every point through `pipeline`. A source
    that fails is logged with its error, shown in `status()` and in the pipeline's metrics
    (`failed_sources`), and restarted after a back-off (1 s doubling to 60 s). `sources`: run these instead of
    the enabled ones the settings name (your own Source objects, or fakes in a test)."""

    def __init__(self, pipeline: DataIngestionPipeline,
                 config: Settings | Mapping[str, Any] | None = None, *,
                 sources: Sequence[Source] | None = None) -> None:
        self.pipeline = pipeline
        self.settings = _as_settings(config) if config is not None else pipeline.settings
        self._given_sources = list(sources) if sources is not None else None
        self._tasks: list[asyncio.Task[None]] = []
        self.sources: list[Source] = []
        self.errors: dict[str, str] = {}
        self.not_started: dict[str, str] = {}  # enabled sources that could not be built, and why
        self.failed: set[str] = set()  # sources stopped by an error that is not retriable (not restarted)
        self.failures: Counter[str] = Counter()
        self.ingested: Counter[str] = Counter()
        self.backoff_initial = 1.0
        self.backoff_max = 60.0
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # what the restarts wait with (tests)

    def start_data_collection(self) -> _Done:
        """Start every enabled source. Awaiting it is optional (the brief awaits it): the sources are started
        when it is called, inside a running event loop."""
        asyncio.get_running_loop()  # RuntimeError outside a loop: the sources need one to run in
        if self._given_sources is not None:
            self.sources = list(self._given_sources)
        else:
            from producers.registry import enabled_sources

            not_started: dict[str, str] = {}
            self.sources = enabled_sources(self.settings.sources, not_started=not_started)
            for name, why in not_started.items():  # enabled, but it could not be built (a missing key)
                self.not_started[name] = self.pipeline.source_errors[name] = redact.redact(why)
        if not self.sources:
            logger.warning("no source is enabled (config['yfinance']['enabled'] = True, ...)")
        for source in self.sources:
            self._tasks.append(asyncio.create_task(self._run(source), name=f"collect-{source.name}"))
        return _Done(None)

    async def _run(self, source: Source) -> None:
        """Run `source` until it ends; after a failure, restart it after a back-off (backoff_initial doubling to
        backoff_max), back to the shortest wait once it delivers a batch again. Cancelling stops it.

        A polling source fails the way the worker's supervisor sees it (streams/stages/produce.py): its fetch
        raises after a round in which every call failed (producers/base.py PollingSource), and yields a batch,
        empty when nothing was new, after every good round, which clears its error here."""
        import aiohttp

        self.failed.discard(source.name)  # started again (stop, then start_data_collection): not failed yet

        def failed(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            self.failures[source.name] += 1
            why = redact.redact(f"{type(exc).__name__}: {exc}")  # an aiohttp error prints its URL, key and all
            self.errors[source.name] = why
            self.pipeline.source_errors[source.name] = why
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            # An expected failure (a provider's error, the network) is its one line; a bug keeps its traceback.
            expected = isinstance(exc, TickflowError | aiohttp.ClientError | OSError | TimeoutError)
            logger.error("source %s failed (%d times; retrying in %.0fs): %s", source.name,
                         self.failures[source.name], wait, why, exc_info=None if expected else exc)

        # What a failure means is its `retriable` (_restartable, as in the worker): a restart after a back-off, or
        # the source stays `failed`; a CancelledError (stop()) is not an Exception, and ends the loop.
        retrying = AsyncRetrying(
            retry=retry_if_exception(_restartable), stop=stop_never, reraise=True,
            wait=wait_exponential(multiplier=self.backoff_initial, max=self.backoff_max), sleep=self.sleep,
            before_sleep=failed)
        try:
            async for attempt in retrying:
                with attempt:
                    async with aiohttp.ClientSession() as session:
                        async for batch in source.fetch(session):
                            for record in batch:
                                if isinstance(record, _CanonicalPoint):
                                    ok = await self.pipeline.ingest_data_point(record)
                                else:  # bytes as they would go on the raw topic (producers.base.RawRecord)
                                    ok = await self.pipeline.ingest_raw(source.name, record.value)
                                self.ingested[source.name] += ok
                            attempt.retry_state.attempt_number = 1  # delivering: the next failure waits the least
                            self.errors.pop(source.name, None)
                            self.pipeline.source_errors.pop(source.name, None)
                    # a finite source (replay) ended
        except Exception as exc:  # not retriable: restarting cannot help (a missing setting, a refused request)
            why = redact.redact(f"{type(exc).__name__}: {exc}")
            self.failures[source.name] += 1
            self.failed.add(source.name)
            self.errors[source.name] = self.pipeline.source_errors[source.name] = why
            logger.error("source %s failed and will not be restarted: %s", source.name, why)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per source: state (`running`; `failing` after a failure, waiting to restart or not yet past a good round;
        `failed`, it could not start or stopped on an error that is not retriable; `stopped`), running (its task is
        alive), points ingested, failures so far and the last error (redacted; None when healthy: never failed, or its
        last round after a failure went well). A provider whose every call of a round fails is a failure, as in
        /health."""
        tasks = {t.get_name().removeprefix("collect-"): t for t in self._tasks}

        def state(name: str, running: bool) -> str:  # the words /health uses for a source
            if running:
                return "failing" if name in self.errors else "running"
            return "failed" if name in self.failed else "stopped"

        return {**{name: {"state": "failed", "running": False, "ingested": 0, "failures": 0, "error": why}
                   for name, why in self.not_started.items()},
                **{s.name: {"state": state(s.name, running), "running": running, "ingested": self.ingested[s.name],
                            "failures": self.failures[s.name], "error": self.errors.get(s.name)}
                   for s in self.sources
                   for running in (s.name in tasks and not tasks[s.name].done(),)}}

    def stop(self) -> _Done:
        """Cancel every source (each stops at its next await). Awaiting the result is optional; awaited, it
        returns once every source has stopped."""
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if not tasks:
            return _Done()
        return _Done(asyncio.gather(*tasks, return_exceptions=True))


_SAFE_ENV_VALUE = re.compile(r"^[^'\\\x00-\x1f\x7f]*$")


def write_env_value(path: Path, var: str, value: str) -> None:
    """Set `var` in a dotenv file that holds secrets. The new file is created with mode 0600 before the secret
    is written into it and then renamed over the old one (never a moment where the secret is readable by
    others); the value is single-quoted, which dotenv readers and `sh` both read literally."""
    if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", var):
        raise ConfigError(f"{var!r} is not an environment variable name")
    if not _SAFE_ENV_VALUE.match(value):
        raise ConfigError(f"the value for {var} contains a quote, a backslash or a control character; set it in "
                          "the environment instead")
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [ln for ln in lines if not re.match(rf"^\s*(export\s+)?{var}\s*=", ln)]
    lines.append(f"{var}='{value}'")
    fd, tmp = tempfile.mkstemp(prefix=".env.", dir=path.parent)  # mkstemp: O_EXCL, mode 0600
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ConfigurationManager:
    """Reads and edits pipeline_config.yaml (our section names or the brief's); every change is validated,
    with the environment on top as at run time, before it is written."""

    def __init__(self, config_file: str | Path | None = None) -> None:
        self.path = Path(config_file or os.environ.get("TICKFLOW_CONFIG") or "pipeline_config.yaml")
        self.env_path = self.path.with_name(".env.pipeline")
        if not self.path.exists():
            self.generate()
        self._doc = self._read()

    def _read(self) -> dict[str, Any]:
        read_config_file(self.path)  # the file's own errors (YAML, unknown keys), naming the file
        doc = yaml.safe_load(self.path.read_text()) or {}
        self._check(doc)
        return doc

    def _check(self, doc: Mapping[str, Any]) -> Settings:
        """Settings as the worker would build them with `doc` as the file: the environment wins over it."""
        return load_settings(file_doc=doc, file_name=str(self.path))

    def settings(self) -> Settings:
        """Settings from this file with the environment on top (the worker's precedence)."""
        return self._check(self._doc)

    def get_config(self) -> dict[str, Any]:
        """The effective configuration as a plain dict in the brief's sections (pipeline, yfinance,
        alpha_vantage, finnhub, fred, kafka, postgresql) and our others. Secrets are real values, for the
        caller's memory: pass the dict on, never print it (display() masks them)."""
        return as_brief(self.settings())

    def display(self) -> dict[str, Any]:
        """get_config() with every secret masked, for showing."""
        config = self.get_config()
        for section, key in secret_paths():
            name = {"postgres": "postgresql"}.get(section, section)
            if config.get(name, {}).get(key):
                config[name][key] = "**********"
        return config

    def get_section(self, name: str) -> dict[str, Any]:
        config = self.get_config()
        if name not in config:
            raise ConfigError(f"{self.path}: no section {name!r} (sections: {', '.join(config)})")
        return config[name]

    def update_config(self, section: str, key: str, value: Any) -> None:
        """Set `section`.`key` (a dotted key reaches deeper: update_config("sources", "yahoo.enabled", True));
        brief names work too (update_config("yfinance", "enabled", True)). The setting is written where the
        file already spells it, so a file never holds one setting twice."""
        parts = key.split(".")
        update: dict[str, Any] = {}
        node = update.setdefault(section, {})
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        target = _leaf_paths(to_settings_shape(update, f"update_config({section!r}, {key!r})"))
        doc = json.loads(json.dumps(self._doc, default=str))
        for spelled in _spellings_in(doc):
            if spelled[1] in target:
                _delete(doc, spelled[0])
        where = [section, *parts[:-1]]
        node = doc
        for p in where:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        try:
            self._check(doc)
        except ConfigError as exc:  # it names the setting as stored (validation.batch_size): say which call it was
            raise ConfigError(f"update_config({section!r}, {key!r}, {str(value)[:40]!r}): {exc}") from None
        self._doc = doc
        self._write()

    def enable_service(self, name: str, api_key: str | None = None) -> None:
        """Enable a source (our name or the brief's: "yfinance"); `api_key` goes to .env.pipeline (0600),
        which settings load automatically, and into this process's environment."""
        source = self._source(name)
        if api_key:
            var = API_KEY_ENV.get(source)
            if var is None:
                raise ConfigError(f"service {name!r} takes no API key")
            write_env_value(self.env_path, var, api_key)
            os.environ[var] = api_key
            redact.register(api_key)
        self.update_config("sources", f"{source}.enabled", True)

    def disable_service(self, name: str) -> None:
        self.update_config("sources", f"{self._source(name)}.enabled", False)

    def _source(self, name: str) -> str:
        source = SERVICE_NAMES.get(name, SERVICE_ALIASES.get(name.lower(), name))
        if source not in SourcesSettings.model_fields:
            known = [*SERVICE_NAMES, *(n for n in SourcesSettings.model_fields if n not in SERVICE_NAMES.values())]
            raise ConfigError(f"unknown service {name!r} (known: {', '.join(known)})")
        return source

    def _write(self) -> None:
        self.path.write_text(yaml.safe_dump(self._doc, sort_keys=False))

    def generate(self) -> None:
        """Write pipeline_config.yaml with every setting at its default, in the brief's sections, and a
        .env.pipeline template. Secrets are left out of the YAML (they belong in the environment or
        .env.pipeline, listed in the template)."""
        defaults = as_brief(Settings.model_construct(**{n: f.default_factory()  # type: ignore[misc]
                                                        for n, f in Settings.model_fields.items()}), secrets=False)
        secret_env = [f"TICKFLOW_{section.upper()}__{key.upper()}" for section, key in secret_paths()]
        header = ("# tickflow pipeline configuration (the README's configuration reference explains every key).\n"
                  "# The environment overrides these values (TICKFLOW_<SECTION>__<KEY>, or POSTGRES_HOST and the\n"
                  "# other short names); secrets (passwords, API keys) belong in .env or .env.pipeline, not here.\n")
        self.path.write_text(header + yaml.safe_dump(defaults, sort_keys=False))
        if not self.env_path.exists():
            names = [*sorted(set(API_KEY_ENV.values())), "POSTGRES_PASSWORD", *secret_env]
            fd = os.open(self.env_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write("# Secrets for tickflow, read automatically at start-up (cp .env.pipeline .env works too).\n"
                        + "".join(f"# {n}=\n" for n in names))


def _leaf_paths(shape: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for k, v in shape.items():
        path = (*prefix, k)
        if isinstance(v, Mapping) and (len(path) < 2 or (path[0] == "sources" and len(path) < 3)):
            out |= _leaf_paths(v, path)
        else:
            out.add(path)
    return out


def _spellings_in(doc: Mapping[str, Any]) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(where a key is written in `doc`, the setting it sets) for every leaf of the doc."""
    found = []

    def walk(node: Mapping[str, Any], at: tuple[str, ...]) -> None:
        for k, v in node.items():
            here = (*at, str(k))
            if isinstance(v, Mapping) and v and (len(here) < 2 or (here[0] == "sources" and len(here) < 3)):
                walk(v, here)
                continue
            try:
                shape = to_settings_shape(_nest(here, v))
            except ConfigError:
                continue
            for path in _leaf_paths(shape):
                found.append((here, path))

    walk(doc, ())
    return found


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    node = out
    for p in path[:-1]:
        node = node.setdefault(p, {})
    node[path[-1]] = value
    return out


def _delete(doc: dict[str, Any], path: tuple[str, ...]) -> None:
    node = doc
    for p in path[:-1]:
        node = node.get(p, {})
    node.pop(path[-1], None)
