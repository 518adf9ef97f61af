"""The API's configuration layer: the brief's keys and environment names, precedence, secrets, .env files."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams import ConfigurationManager, MarketDataPoint
from streams.errors import ConfigError
from streams.models import MarketDataPoint as Canonical
from streams.settings import BRIEF_KEYS, Settings, as_brief, load_settings, to_settings_shape


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test in its own directory and environment: .env files read into os.environ are undone after."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("TICKFLOW_", "POSTGRES_", "KAFKA_", "PIPELINE_")) or name.endswith("_API_KEY"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _get(shape: dict, dotted: str) -> object:
    node = shape
    for part in dotted.split("."):
        node = node[part]
    return node


@pytest.mark.parametrize("brief,ours", [(b, o) for b, o, _ in BRIEF_KEYS if o and "rate_limit_delay" not in b])
def test_every_brief_key_reaches_its_setting(brief: str, ours: str) -> None:
    section, key = brief.split(".")
    value = {"log_level": "DEBUG", "metrics_enabled": False, "websocket_enabled": True}.get(key, 7)
    shape = to_settings_shape({section: {key: value}})
    assert _get(shape, ours) == value
    settings = load_settings(**{section: {key: value}})
    assert _get(settings.model_dump(), ours) == value


def test_brief_yaml_file_is_accepted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "pipeline_config.yaml"
    path.write_text(yaml.safe_dump({
        "pipeline": {"batch_size": 100, "batch_timeout": 1.0, "max_queue_size": 10000, "log_level": "INFO",
                     "metrics_enabled": True, "data_retention_days": 30},
        "yfinance": {"enabled": True, "collection_interval": 60, "symbols": ["AAPL", "SPY"], "rate_limit_delay": 0.5},
        "alpha_vantage": {"enabled": False, "api_key": "", "collection_interval": 300, "symbols": ["TSLA"],
                          "rate_limit_delay": 12},
        "finnhub": {"enabled": False, "api_key": "", "symbols": ["AAPL"], "websocket_enabled": True},
        "fred": {"enabled": False, "api_key": "", "series": ["GDP"], "collection_interval": 3600},
        "kafka": {"enabled": False, "bootstrap_servers": "localhost:9092", "compression_type": "gzip",
                  "batch_size": 16384, "linger_ms": 10, "retries": 3, "acks": "1"},
        "postgresql": {"enabled": False, "host": "localhost", "port": 5432, "database": "trading_data",
                       "user": "postgres", "password": "", "min_connections": 5, "max_connections": 20},
    }))
    monkeypatch.setenv("TICKFLOW_CONFIG", str(path))
    s = load_settings()
    assert (s.validation.batch_size, s.pipeline.log_level, s.sink.data_retention_days) == (100, "INFO", 30)
    assert s.sources.yahoo.enabled and s.sources.yahoo.symbols == ["AAPL", "SPY"]
    # rate_limit_delay: the least time between two calls, on top of each provider's rate limit
    assert (s.sources.yahoo.rate_limit_calls, s.sources.yahoo.rate_limit_delay) == (60.0, 0.5)
    assert (s.sources.alpha_vantage.rate_limit_calls, s.sources.alpha_vantage.rate_limit_delay) == (5.0, 12)
    assert s.sources.finnhub.websocket and s.sources.fred.interval_seconds == 3600
    assert (s.kafka.enabled, s.kafka.producer_linger_ms, s.kafka.producer_max_batch_bytes) == (False, 10, 16384)
    assert (s.postgres.database, s.postgres.pool_min, s.postgres.pool_max, s.postgres.port) == (
        "trading_data", 5, 20, 5432)


def test_api_key_in_a_file_is_refused_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="FINNHUB_API_KEY"):
        to_settings_shape({"finnhub": {"api_key": "abc"}})


@pytest.mark.parametrize("doc,suggestion", [
    ({"yfinance": {"colection_interval": 5}}, "collection_interval"),
    ({"postgresq": {"host": "x"}}, "postgresql"),
    ({"kafka": {"linger_m": 5}}, "linger_ms"),
    ({"batch_sise": 5}, "batch_size"),
])
def test_typo_is_an_error_with_the_right_key(doc: dict, suggestion: str) -> None:
    with pytest.raises(ConfigError, match=f"did you mean '{suggestion}'"):
        load_settings(**doc)


def test_typo_in_a_nested_section_of_ours_suggests_too() -> None:
    with pytest.raises(ConfigError, match="did you mean 'rate_per_second'"):
        load_settings(sources={"simulated": {"rate_per_secnd": 5}})


def test_typo_in_an_environment_name_suggests_the_right_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_SOURCE__FINNHUB__ENABLED", "true")
    with pytest.raises(ConfigError, match="TICKFLOW_SOURCES__FINNHUB__ENABLED"):
        load_settings()


@pytest.mark.parametrize(("typo", "right"), [("TICKFLOW_POSTGRES_PASSWORD", "TICKFLOW_POSTGRES__PASSWORD"),
                                              ("TICKFLOW_SINK_BATCH_SIZE", "TICKFLOW_SINK__BATCH_SIZE"),
                                              ("tickflow_kafka_bootstrap_servers",
                                               "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS")])
def test_a_setting_spelled_with_single_underscores_is_an_error(typo: str, right: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """It was silently ignored: the password or the batch size a user set never took effect."""
    monkeypatch.setenv(typo, "5")
    with pytest.raises(ConfigError, match=f"{typo} names no setting; did you mean {right}"):
        load_settings()
    monkeypatch.delenv(typo)
    monkeypatch.setenv("TICKFLOW_CONFIG_DIR", "x")  # not a setting's name: another tool's variable, left alone
    load_settings()
    # what Kubernetes sets for a Service named tickflow-postgres in the namespace: not ours, left alone
    monkeypatch.setenv("TICKFLOW_POSTGRES_PORT", "tcp://10.96.0.12:5432")
    load_settings()


def test_one_setting_under_two_names_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"both set sources\.yahoo\.interval_seconds"):
        to_settings_shape({"yfinance": {"collection_interval": 5},
                           "sources": {"yahoo": {"interval_seconds": 6}}})


def test_brief_environment_names_are_aliases_below_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_HOST", "db.example")
    monkeypatch.setenv("POSTGRES_PORT", "5433")
    monkeypatch.setenv("POSTGRES_DATABASE", "trading_data")
    monkeypatch.setenv("POSTGRES_USER", "postgres")
    monkeypatch.setenv("POSTGRES_PASSWORD", "pw-alias")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.setenv("PIPELINE_LOG_LEVEL", "debug")
    s = load_settings()
    assert (s.postgres.host, s.postgres.port, s.postgres.database, s.postgres.user) == (
        "db.example", 5433, "trading_data", "postgres")
    assert s.postgres.password.get_secret_value() == "pw-alias"
    assert (s.kafka.bootstrap_servers, s.pipeline.log_level) == ("kafka:9092", "DEBUG")
    monkeypatch.setenv("TICKFLOW_POSTGRES__HOST", "ours.example")
    assert load_settings().postgres.host == "ours.example"


def test_get_config_round_trips_through_the_pipeline_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(yfinance={"enabled": True, "collection_interval": 30}, postgresql={"max_connections": 9},
                      pipeline={"batch_size": 77}, sources={"simulated": {"rate_per_second": 5}})
    config = as_brief(s)
    assert config["yfinance"]["collection_interval"] == 30 and config["pipeline"]["batch_size"] == 77
    assert load_settings(**config) == s


def test_environment_wins_over_the_file_in_configuration_manager(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"},
                                    "postgresql": {"host": "from-file"}}))
    monkeypatch.setenv("TICKFLOW_KAFKA__SASL_PASSWORD", "kafka-secret")  # only the environment completes SASL
    monkeypatch.setenv("TICKFLOW_POSTGRES__HOST", "from-env")
    cm = ConfigurationManager(path)
    s = cm.settings()
    assert s.postgres.host == "from-env" and s.kafka.sasl_password.get_secret_value() == "kafka-secret"
    cm.update_config("postgresql", "port", 6543)  # validated with the environment on top, so accepted
    assert cm.get_config()["postgresql"]["port"] == 6543
    assert yaml.safe_load(path.read_text())["postgresql"]["host"] == "from-file"


def test_get_config_gives_real_secrets_and_display_masks_them(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    monkeypatch.setenv("POSTGRES_PASSWORD", "real-pw")
    cm = ConfigurationManager(tmp_path / "pipeline_config.yaml")
    assert cm.get_config()["postgresql"]["password"] == "real-pw"
    assert cm.display()["postgresql"]["password"] == "**********"
    assert "real-pw" not in (tmp_path / "pipeline_config.yaml").read_text()
    # the brief's pattern: the dict goes back in and the password is still the real one
    assert load_settings(**cm.get_config()).postgres.password.get_secret_value() == "real-pw"


def test_brief_get_config_then_enable_a_source(tmp_path: Path) -> None:
    from producers.registry import enabled_sources
    from streams import DataConnectorManager, DataIngestionPipeline

    config = ConfigurationManager(tmp_path / "pipeline_config.yaml").get_config()
    assert {"pipeline", "yfinance", "alpha_vantage", "finnhub", "fred", "kafka", "postgresql"} <= set(config)
    assert [s.name for s in enabled_sources(load_settings(**config).sources)] == ["simulated"]
    config["yfinance"]["enabled"] = True
    pipeline = DataIngestionPipeline(config)
    manager = DataConnectorManager(pipeline, config)
    # The simulated feed's default is "while no other source is": made-up AAPL prices never land beside Yahoo's.
    assert [s.name for s in enabled_sources(manager.settings.sources)] == ["yahoo"]
    config["sources"]["simulated"]["enabled"] = True  # asked for, it runs beside them
    assert [s.name for s in enabled_sources(load_settings(**config).sources)] == ["simulated", "yahoo"]
    config["sources"]["simulated"]["enabled"] = False
    config["yfinance"]["enabled"] = False
    assert enabled_sources(load_settings(**config).sources) == []


def test_enable_service_key_goes_to_a_private_file_that_settings_load(tmp_path: Path) -> None:
    old = os.umask(0)  # a permissive umask must not leak the key
    try:
        cm = ConfigurationManager(tmp_path / "pipeline_config.yaml")
        cm.enable_service("finnhub", api_key="k3y-value")
    finally:
        os.umask(old)
    env_file = tmp_path / ".env.pipeline"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert "FINNHUB_API_KEY='k3y-value'" in env_file.read_text().splitlines()
    assert "k3y-value" not in (tmp_path / "pipeline_config.yaml").read_text()
    del os.environ["FINNHUB_API_KEY"]  # a new process: only the file has it
    s = load_settings()
    assert s.sources.finnhub.enabled
    assert s.sources.finnhub.api_key().get_secret_value() == "k3y-value"
    cm.enable_service("finnhub", api_key="k3y-second")  # a secret: the redactor masks it from now on
    assert [ln for ln in env_file.read_text().splitlines() if ln.startswith("FINNHUB_API_KEY=")] == [
        "FINNHUB_API_KEY='k3y-second'"]


def test_enable_service_refuses_values_it_cannot_quote(tmp_path: Path) -> None:
    cm = ConfigurationManager(tmp_path / "pipeline_config.yaml")
    with pytest.raises(ConfigError, match="quote"):
        cm.enable_service("fred", api_key="a'b\nEVIL=1")
    assert not (tmp_path / ".env.pipeline").read_text().count("EVIL")


def test_brief_service_names_work(tmp_path: Path) -> None:
    cm = ConfigurationManager(tmp_path / "pipeline_config.yaml")
    cm.enable_service("yfinance")
    assert cm.settings().sources.yahoo.enabled
    cm.disable_service("yfinance")
    assert not cm.settings().sources.yahoo.enabled
    with pytest.raises(ConfigError, match="unknown service"):
        cm.enable_service("quandl_typo")


def test_a_provider_s_other_names_find_its_source(tmp_path: Path) -> None:
    """`enable_service("twitter")` answered "unknown service" while the X source is `social`; Quandl is Nasdaq Data
    Link's former name."""
    cm = ConfigurationManager(tmp_path / "pipeline_config.yaml")
    cm.enable_service("twitter")
    cm.enable_service("Quandl")
    sources = cm.settings().sources
    assert sources.social.enabled and sources.nasdaq_data_link.enabled


def test_update_config_never_writes_a_setting_twice(tmp_path: Path) -> None:
    path = tmp_path / "pipeline_config.yaml"
    cm = ConfigurationManager(path)
    cm.update_config("yfinance", "collection_interval", 30)
    cm.update_config("sources", "yahoo.interval_seconds", 45)
    cm.update_config("yfinance", "rate_limit_delay", 15)
    assert ConfigurationManager(path).settings().sources.yahoo.interval_seconds == 45
    s = cm.settings().sources.yahoo
    assert (s.rate_limit_calls, s.rate_limit_per_seconds, s.rate_limit_delay) == (60.0, 60.0, 15)


def test_dotenv_files_are_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("POSTGRES_HOST=from-dotenv\nPOSTGRES_USER=dotenv-user\n")
    (tmp_path / ".env.pipeline").write_text("POSTGRES_USER=pipeline-user\nFRED_API_KEY='fred-k'\n")
    monkeypatch.setenv("POSTGRES_HOST", "from-env")
    s = load_settings()
    assert s.postgres.host == "from-env"
    assert s.postgres.user == "dotenv-user"  # .env wins over .env.pipeline (the brief copies one to the other)
    assert s.sources.fred.api_key().get_secret_value() == "fred-k"


def test_settings_default_has_the_api_sections() -> None:
    s = Settings()
    assert s.kafka.enabled and s.postgres.enabled and s.pipeline.max_queue_size == 10_000


def test_brief_market_data_point_form() -> None:
    ts = datetime(2024, 5, 1, 14, 30, tzinfo=UTC)
    p = MarketDataPoint(symbol="CUSTOM", timestamp=ts, price=123.45, volume=1000, source="custom_feed",
                        data_type="price", metadata={"custom_field": "value"})
    assert p.data_type == "tick" and isinstance(p, Canonical)
    assert Canonical.model_validate_json(p.to_json()) == Canonical(
        symbol="CUSTOM", timestamp=ts, price=123.45, volume=1000, source="custom_feed",
        metadata={"custom_field": "value"})
    q = MarketDataPoint(symbol="X", timestamp=ts, price=1.0, volume=1, metadata=None)
    assert q.source == "unknown" and q.metadata == {}
    with pytest.raises(ValueError, match="data_type"):
        MarketDataPoint(symbol="X", timestamp=ts, price=1.0, data_type="nonsense")


def test_readme_documents_every_mapping_row_and_alias() -> None:
    from streams.settings import ENV_ALIASES, ROOT

    readme = (ROOT / "README.md").read_text()
    for brief, ours, why in BRIEF_KEYS:
        assert f"| `{brief}` | {'`' + ours + '`' if ours else '(none)'} | {why} |" in readme, brief
    for name, path in ENV_ALIASES.items():
        assert f"`{name}` (`{path}`)" in readme, name


class _FakePipeline:
    def __init__(self) -> None:
        self.source_errors: dict[str, str] = {}
        self.points: list[Any] = []

    async def ingest_data_point(self, point: Any) -> bool:
        self.points.append(point)
        return True


def _point(i: int) -> Any:
    return Canonical(symbol="X", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source="fake", price=1.0 + i,
                     item_id=str(i))


async def test_a_failing_source_is_restarted_with_backoff_reset_once_it_delivers() -> None:
    """The connector restart (tenacity): 1 s doubling to the cap after each failure in a row, the shortest
    wait again once the source delivered a batch, the error shown until then; a finite source ends the loop."""
    from streams import DataConnectorManager

    script = ["fail", "fail", "fail", "fail", "batch", "fail", "fail", "batch", "end"]

    class FlakySource:
        name = "fake"

        async def fetch(self, session: Any) -> Any:
            while script:
                step = script.pop(0)
                if step == "fail":
                    raise ConnectionError("provider away")
                if step == "end":
                    return
                yield [_point(len(script))]

    pipeline = _FakePipeline()
    manager = DataConnectorManager(pipeline, {})  # type: ignore[arg-type]
    manager.backoff_max = 4.0
    waits: list[float] = []
    seen_errors: list[str | None] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        seen_errors.append(pipeline.source_errors.get("fake"))

    manager.sleep = sleep
    await manager._run(FlakySource())  # type: ignore[arg-type]
    assert waits == [1.0, 2.0, 4.0, 4.0, 1.0, 2.0]
    assert manager.failures["fake"] == 6 and len(pipeline.points) == 2 and manager.ingested["fake"] == 2
    assert seen_errors[0] == "ConnectionError: provider away"
    assert manager.errors == {} and pipeline.source_errors == {}  # cleared once it delivered


async def test_a_cancelled_source_is_not_restarted() -> None:
    from streams import DataConnectorManager

    class Hanging:
        name = "fake"

        async def fetch(self, session: Any) -> Any:
            await asyncio.Event().wait()
            yield []

    manager = DataConnectorManager(_FakePipeline(), {})  # type: ignore[arg-type]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    manager.sleep = sleep
    task = asyncio.create_task(manager._run(Hanging()))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert waits == [] and manager.failures["fake"] == 0


async def test_the_in_process_sink_waits_out_an_outage_and_leaves_refused_rows_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sinks.base import BatchWriter, WriteResult
    from sinks.schema import MARKET_DATA_COLUMNS
    from streams.api import _InProcess, _Stats
    from streams.errors import SinkRefused, SinkUnavailable

    class Writer(BatchWriter):
        def __init__(self, failures: list[Exception]) -> None:
            self.failures, self.calls = failures, 0

        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def write(self, rows: Any) -> WriteResult:
            self.calls += 1
            if self.failures:
                raise self.failures.pop(0)
            return WriteResult(len(rows), 0, {"fake": len(rows)})

    waits: list[float] = []
    real = asyncio.sleep

    async def fake_sleep(seconds: float, *args: Any) -> None:
        waits.append(seconds)
        await real(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    settings = load_settings(sink={"retry_initial_seconds": 0.5, "retry_max_seconds": 2.0})
    sink = _InProcess(settings, _Stats())
    sink.writer = Writer([SinkUnavailable("down")] * 4)  # type: ignore[assignment]
    await sink._write([(_point(1), 0.0), (_point(2), 0.0)])
    assert sink.writer.calls == 5 and waits == [0.5, 1.0, 2.0, 2.0]  # type: ignore[attr-defined]
    assert sink.stats.written["fake"] == 2 and sink.sink_error is None

    # Refused data is bisected out, as a worker's write stage does: the other rows are written, the sink goes on
    # (one bad row cost its batch and stopped the in-process sink for good).
    class Refusing(Writer):
        async def write(self, rows: Any) -> WriteResult:
            self.calls += 1
            if any(r[MARKET_DATA_COLUMNS.index("item_id")] == "4" for r in rows):
                raise SinkRefused("numeric field overflow")
            return WriteResult(len(rows), 0, {"fake": len(rows)})

    waits.clear()
    sink.writer = Refusing([])  # type: ignore[assignment]
    await sink._write([(_point(i), 0.0) for i in range(3, 7)])
    assert waits == [] and sink.sink_error is None
    # as a worker counts it: in rejected_by_rule, not in rejected (validation passed it: valid + rejected = processed)
    assert sink.stats.written["fake"] == 2 + 3 and sink.stats.rejected["fake"] == 0
    assert sink.stats.by_rule["fake"] == {"write.refused": 1}
    assert sink.stats.latency_n["fake"] == 2 + 3  # the refused row was never stored: no ingest-to-stored latency


async def test_the_in_process_sink_counts_a_newer_revision_as_written() -> None:
    """As a worker does: a row a newer revision updated changed the store (it was counted a duplicate)."""
    from sinks.base import BatchWriter, WriteResult
    from streams.api import _InProcess, _Stats

    class Writer(BatchWriter):
        async def start(self) -> None: ...

        async def stop(self) -> None: ...

        async def write(self, rows: Any) -> WriteResult:  # one new row, one revised, one re-sent
            return WriteResult(1, 1, {"fake": 1}, 1, {"fake": 1}, {"fake": 1})

    sink = _InProcess(load_settings(), _Stats())
    sink.writer = Writer()  # type: ignore[assignment]
    await sink._write([(_point(1), 0.0), (_point(2), 0.0), (_point(2), 0.0)])
    assert (sink.stats.written["fake"], sink.stats.duplicates["fake"]) == (2, 1)


def test_in_process_percentiles_stay_within_the_latencies_seen() -> None:
    """The in-process mode's latency is mostly its batch_timeout: a trickle of points at 1,057 ms each is a p50
    of 1,057 ms, not 1,500 (the middle of the histogram's 1-2 s bucket)."""
    from streams.api import _Stats

    stats = _Stats()
    stats.processed.update({"custom_feed": 100, "other": 3})
    stats.observe("custom_feed", [1057.0] * 100)
    stats.observe("other", [12.0] * 3)
    m = stats.metrics()
    assert m["p50_latency_ms"] == m["p99_latency_ms"] == 1057.0
    assert stats.snapshots()["other"]["p95_latency_ms"] == 12.0


def test_pipeline_log_level_debug_shows_our_debug_lines_in_a_process_without_logging(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The brief's "Or set in environment: PIPELINE_LOG_LEVEL=DEBUG": with no logging configured Python prints
    warnings only, so the level alone showed nothing. Once the application configures logging, its handlers
    print the lines and ours stays quiet (no line twice)."""
    import logging

    from streams.api import DataIngestionPipeline, _UntilConfigured

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setenv("PIPELINE_LOG_LEVEL", "DEBUG")
    try:
        DataIngestionPipeline({"kafka": {"enabled": False}})
        DataIngestionPipeline({"kafka": {"enabled": False}})  # a second pipeline adds no second handler
        logging.getLogger("streams.api").debug("debug line %d", 1)
        assert capsys.readouterr().err.count("DEBUG streams.api: debug line 1") == 1
        app_handler = logging.StreamHandler()
        root.handlers = [app_handler]  # the application configures logging: our handler steps aside
        logging.getLogger("streams.api").debug("debug line %d", 2)
        err = capsys.readouterr().err
        assert err.count("debug line 2") == 1 and "DEBUG streams.api: debug line 2" not in err  # the app's line
    finally:
        for name in ("streams", "producers", "sinks"):
            logger = logging.getLogger(name)
            for h in [h for h in logger.handlers if any(isinstance(f, _UntilConfigured) for f in h.filters)]:
                logger.removeHandler(h)
            logger.setLevel(logging.NOTSET)


async def test_a_source_failing_as_expected_logs_one_line_and_a_bug_its_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """A network failure printed a full traceback at every restart (five in 20 s): a provider's or the network's
    error is its one line; an unexpected exception (a bug) keeps its traceback."""
    from streams import DataConnectorManager
    from streams.errors import SourceError

    script: list[BaseException | None] = [SourceError("HTTP 503", retriable=True), ConnectionError("refused"),
                                          KeyError("bug"), None]

    class Scripted:
        name = "fake"

        async def fetch(self, session: Any) -> Any:
            while script:
                step = script.pop(0)
                if step is None:
                    return
                raise step
            yield []

    manager = DataConnectorManager(_FakePipeline(), {})  # type: ignore[arg-type]

    async def sleep(seconds: float) -> None:
        return None

    manager.sleep = sleep
    with caplog.at_level("ERROR", logger="streams.api"):
        await manager._run(Scripted())  # type: ignore[arg-type]
    failed = [r for r in caplog.records if "source fake failed" in r.getMessage()]
    assert [r.exc_info is not None for r in failed] == [False, False, True]


async def test_a_source_failing_with_an_error_that_is_not_retriable_is_not_restarted() -> None:
    """`retriable` decides, as in the worker's supervisor (streams/stages/produce.py): a replay with no files (a
    ConfigError) or a refused request stays `failed` with its error, instead of being restarted every minute."""
    from streams import DataConnectorManager
    from streams.errors import ConfigError

    calls: list[int] = []

    class Misconfigured:
        name = "fake"

        async def fetch(self, session: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise ConfigError("replay: no files to replay")
            yield []

    pipeline = _FakePipeline()
    manager = DataConnectorManager(pipeline, {})  # type: ignore[arg-type]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    manager.sleep = sleep
    source = Misconfigured()
    manager.sources = [source]  # type: ignore[list-item]
    await manager._run(source)  # type: ignore[arg-type]
    assert calls == [1] and waits == []
    assert manager.failures["fake"] == 1
    assert pipeline.source_errors["fake"] == "ConfigError: replay: no files to replay"
    assert manager.status()["fake"]["state"] == "failed"
    # fixed and started again, a finite source that then ends is `stopped`, not still `failed`
    await manager._run(source)  # type: ignore[arg-type]
    assert calls == [1, 1] and manager.status()["fake"]["state"] == "stopped"


def test_a_refused_update_names_the_call_that_made_it(tmp_path: Path) -> None:
    """The error named the setting as stored (validation.batch_size) only: the caller wrote pipeline.batch_size."""
    cm = ConfigurationManager(tmp_path / "pipeline_config.yaml")
    with pytest.raises(ConfigError) as err:
        cm.update_config("pipeline", "batch_size", "lots")
    assert str(err.value).startswith("update_config('pipeline', 'batch_size', 'lots'): ")
    assert "validation.batch_size" in str(err.value)
