import logging
import os
import re
from pathlib import Path

import pytest

from streams.errors import ConfigError
from streams.settings import load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Makefile exports TICKFLOW_* variables; these tests set their own."""
    import os

    for name in list(os.environ):
        if name.startswith("TICKFLOW_"):
            monkeypatch.delenv(name)


def test_yaml_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: yaml:1\nsink:\n  batch_size: 123\n")
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    monkeypatch.setenv("TICKFLOW_SINK__BATCH_SIZE", "456")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "yaml:1"
    assert s.sink.batch_size == 456


def test_unknown_key_is_an_error_naming_key_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "conf.yaml"
    cfg.write_text("sink:\n  batch_sise: 10\n")
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=r"conf.yaml.*sink.batch_sise"):
        load_settings()


def test_wrong_type_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_POSTGRES__PORT", "five")
    with pytest.raises(ConfigError, match=r"postgres.port"):
        load_settings()


def test_password_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_POSTGRES__PASSWORD", "hunter2")
    s = load_settings()
    assert s.postgres.password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())
    assert "hunter2" not in s.postgres.dsn_for_display()


def test_configuration_manager_leaves_the_environment_as_it_was(tmp_path, monkeypatch) -> None:
    from streams.api import ConfigurationManager

    monkeypatch.delenv("TICKFLOW_CONFIG", raising=False)
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("sink:\n  batch_size: 123\n")
    assert ConfigurationManager(cfg).get_section("sink")["batch_size"] == 123
    assert "TICKFLOW_CONFIG" not in os.environ  # it leaked into every later load_settings() before


def test_a_worker_runs_every_stage_unless_told_which(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().worker.stages == ["validate", "write", "archive"]
    monkeypatch.setenv("TICKFLOW_WORKER__STAGES", '["write", "archive"]')
    assert load_settings().worker.stages == ["write", "archive"]
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("worker:\n  stages: [validate]\n")
    monkeypatch.delenv("TICKFLOW_WORKER__STAGES")
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    assert load_settings().worker.stages == ["validate"]
    for bad in ('["validate", "publish"]', "[]", '["write", "write"]'):
        monkeypatch.setenv("TICKFLOW_WORKER__STAGES", bad)
        with pytest.raises(ConfigError, match=r"worker.stages"):
            load_settings()


POLLED = {"yfinance": "yahoo", "alpha_vantage": "alpha_vantage", "finnhub": "finnhub", "fred": "fred"}


@pytest.mark.parametrize("brief", list(POLLED))
def test_an_edited_rate_limit_in_the_init_file_takes_effect(brief: str, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`tickflow init` writes each setting once; an edited rate limit, and the brief's troubleshooting advice
    (add `rate_limit_delay: 15` to the section) on that same file, both take effect: the delay is the least
    time between two calls, on top of the rate limit, so the two never contradict each other."""
    import yaml

    from streams.api import ConfigurationManager

    cfg = tmp_path / "pipeline_config.yaml"
    ConfigurationManager(cfg)  # writes the file as `tickflow init` does (ConfigurationManager.generate)
    doc = yaml.safe_load(cfg.read_text())
    assert doc[brief]["rate_limit_delay"] == 0.0
    doc[brief]["rate_limit_calls"] = 2.0
    doc[brief]["rate_limit_per_seconds"] = 7.0
    doc[brief]["rate_limit_delay"] = 15
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    s = getattr(load_settings().sources, POLLED[brief])
    assert (s.rate_limit_calls, s.rate_limit_per_seconds, s.rate_limit_delay) == (2.0, 7.0, 15.0)


def test_the_init_file_reads_back_as_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.api import ConfigurationManager

    defaults = load_settings()
    cfg = tmp_path / "pipeline_config.yaml"
    ConfigurationManager(cfg)
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    assert load_settings() == defaults  # 5 calls a minute stays that, not 1 call every 12 s


def test_the_brief_rate_limit_delay_is_kept_beside_the_rate_limit() -> None:
    s = load_settings(alpha_vantage={"rate_limit_delay": 12}).sources.alpha_vantage
    assert (s.rate_limit_calls, s.rate_limit_per_seconds, s.rate_limit_delay) == (5.0, 60.0, 12.0)
    s = load_settings(sources={"yahoo": {"rate_limit_calls": 3.0}}, yfinance={"rate_limit_delay": 2.0}).sources.yahoo
    assert (s.rate_limit_calls, s.rate_limit_delay) == (3.0, 2.0)
    with pytest.raises(ConfigError, match=r"rate_limit_delay.*both set sources.yahoo.rate_limit_delay"):
        load_settings(yfinance={"rate_limit_delay": 2.0}, sources={"yahoo": {"rate_limit_delay": 3.0}})
    with pytest.raises(ConfigError, match="rate_limit_delay"):
        load_settings(alpha_vantage={"rate_limit_delay": -1})


def test_update_config_of_a_rate_limit_in_the_init_file(tmp_path: Path) -> None:
    import yaml

    from streams.api import ConfigurationManager

    cfg = tmp_path / "pipeline_config.yaml"
    cm = ConfigurationManager(cfg)
    cm.update_config("alpha_vantage", "rate_limit_delay", 20)
    s = cm.settings().sources.alpha_vantage
    assert (s.rate_limit_calls, s.rate_limit_per_seconds, s.rate_limit_delay) == (5.0, 60.0, 20)
    assert yaml.safe_load(cfg.read_text())["alpha_vantage"]["rate_limit_delay"] == 20
    cm.update_config("alpha_vantage", "rate_limit_calls", 2)
    assert ConfigurationManager(cfg).settings().sources.alpha_vantage.rate_limit_calls == 2


def test_a_plain_list_in_the_environment_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised where settings are built, so the Python API gets it as well as the command lines."""
    from streams.api import DataIngestionPipeline

    monkeypatch.delenv("TICKFLOW_CONFIG", raising=False)
    monkeypatch.setenv("TICKFLOW_SOURCES__YAHOO__ENABLED", "true")  # valid JSON: not the culprit
    monkeypatch.setenv("TICKFLOW_SOURCES__REPLAY__FILES", "/path/a.csv")
    want = ("TICKFLOW_SOURCES__REPLAY__FILES=/path/a.csv: a list or mapping in the environment must be JSON, "
            """e.g. TICKFLOW_SOURCES__REPLAY__FILES='["/path/a.csv"]'""")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == want
    with pytest.raises(ConfigError) as err:
        DataIngestionPipeline()
    assert str(err.value) == want


@pytest.mark.parametrize(("name", "value", "example"), [
    ("TICKFLOW_SOURCES__FRED__SERIES", "UNRATE, GDP", '["UNRATE", "GDP"]'),
    ("TICKFLOW_SOURCES__REPLAY__SYMBOLS", "aapl=AAPL,msft=MSFT", '{"aapl": "AAPL", "msft": "MSFT"}'),
    ("TICKFLOW_WORKER__STAGES", "validate,write", '["validate", "write"]'),
])
def test_the_json_hint_fits_the_setting(name: str, value: str, example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TICKFLOW_CONFIG", raising=False)
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("TICKFLOW_SOURCES__NEWS__BASE_URL", "http://x")  # a str setting, not JSON: no suspect
    with pytest.raises(ConfigError) as err:
        load_settings()
    must = "a list or mapping in the environment must be JSON"
    assert str(err.value) == f"{name}={value}: {must}, e.g. {name}='{example}'"


def test_python_m_producers_says_a_configuration_error_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKFLOW_")}
    out = subprocess.run([sys.executable, "-m", "producers", "replay"], cwd=tmp_path, capture_output=True, text=True,
                         env={**env, "PYTHONPATH": str(Path(__file__).resolve().parents[3]), "TICKFLOW_CONFIG": "",
                              "TICKFLOW_SOURCES__REPLAY__FILES": "/path/a.csv"}, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        "python -m producers: TICKFLOW_SOURCES__REPLAY__FILES=/path/a.csv: a list or mapping in the environment must "
        """be JSON, e.g. TICKFLOW_SOURCES__REPLAY__FILES='["/path/a.csv"]'"""]


def test_an_api_key_in_the_file_is_refused_with_readable_advice(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The redactor (streams/redact.py) used to take the advice for secrets: `finnhub.api_key: *** keys are not
    settings ... api_key=***`. The value itself is never echoed."""
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("finnhub: {api_key: sk_live_abcdef}\n")
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert str(err.value) == (
        f"{cfg}: finnhub.api_key must be empty: API keys are not read from configuration; set FINNHUB_API_KEY "
        "in the environment or .env, or pass it to ConfigurationManager.enable_service('finnhub', ...)")
    monkeypatch.delenv("TICKFLOW_CONFIG")
    with pytest.raises(ConfigError) as err:
        load_settings(alpha_vantage={"api_key": "sk_live_abcdef"})
    assert "***" not in str(err.value) and "sk_live" not in str(err.value)
    assert "set ALPHA_VANTAGE_API_KEY in the environment" in str(err.value)


@pytest.mark.parametrize(("section", "value", "key"), [
    ({"sink": {"batch_size": 0}}, 0, "sink.batch_size"),  # the worker died in Faust: max_poll_records
    ({"sources": {"simulated": {"rate_per_second": -5}}}, -5, "sources.simulated.rate_per_second"),  # sent nothing
    ({"sources": {"fred": {"rate_limit_calls": 0}}}, 0, "sources.fred.rate_limit_calls"),
    ({"sources": {"yahoo": {"interval_seconds": 0}}}, 0, "sources.yahoo.interval_seconds"),
    ({"postgres": {"port": 70000}}, 70000, "postgres.port"),
    # a poll every `inf` seconds never polls again; NaN passes every bound check
    ({"sources": {"alpha_vantage": {"interval_seconds": float("inf")}}}, 0, "sources.alpha_vantage.interval_seconds"),
    ({"pipeline": {"batch_timeout_seconds": float("nan")}}, 0, "pipeline.batch_timeout_seconds"),
    ({"anomalies": {"bg_trim": float("nan")}}, 0, "anomalies.bg_trim"),
])
def test_a_value_out_of_range_is_an_error_naming_its_key(section: dict, value: int, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{re.escape(key)}: Input should be"):
        load_settings(**section)


def test_an_enabled_sources_symbol_that_validation_refuses_is_an_error_at_start() -> None:
    """'bad sym' beside AAPL had every one of its records rejected, tripped the source's circuit breaker and
    paused AAPL too, for good: the records in the topic tripped it again after the fix."""
    with pytest.raises(ConfigError, match=r"^invalid settings in [^:]+: sources.simulated.symbols: 'bad sym' is "
                                          r"not a symbol validation accepts"):
        load_settings(sources={"simulated": {"symbols": ["AAPL", "bad sym"]}})
    with pytest.raises(ConfigError, match=r"sources.yahoo.symbols: '\$\$\$'"):
        load_settings(sources={"yahoo": {"enabled": True, "symbols": ["AAPL", "$$$"]}})
    load_settings(sources={"yahoo": {"enabled": False, "symbols": ["bad sym"]}})  # not enabled: not used
    # the simulated feed's symbols while another source is enabled: it does not run, they are not used
    load_settings(sources={"yahoo": {"enabled": True}, "simulated": {"symbols": ["bad sym"]}})
    s = load_settings(sources={"yahoo": {"enabled": True, "symbols": ["brk-b", "^GSPC", "EURUSD=X"]}})
    assert s.sources.yahoo.symbols == ["brk-b", "^GSPC", "EURUSD=X"]  # upper-cased as the source sends them
    with pytest.raises(ConfigError, match="' \\^GSPC'"):  # sent with its space, and refused
        load_settings(sources={"yahoo": {"enabled": True, "symbols": [" ^GSPC"]}})
    load_settings(sources={"stocktwits": {"enabled": True, "symbols": [" tsla "]}})  # stocktwits strips them


def test_a_short_web_token_says_so_readably(monkeypatch: pytest.MonkeyPatch) -> None:
    """'worker.web_token: Value error, ...' read as `token: <value>` to the redactor: '*** error, ...'."""
    monkeypatch.setenv("TICKFLOW_WORKER__WEB_TOKEN", "short")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "worker.web_token needs at least 16 characters" in str(err.value)
    assert "***" not in str(err.value) and "short" not in str(err.value)


def test_a_symbol_pattern_that_is_no_regular_expression_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"validation.symbol_pattern: is not a regular expression"):
        load_settings(validation={"symbol_pattern": "^[A-Z"})


def test_finnhub_company_news_beside_the_news_source_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    """Both read Finnhub's company news: each article would land twice (source is in the natural key)."""
    caplog.set_level(logging.WARNING, logger="streams.settings")
    load_settings(sources={"finnhub": {"enabled": True, "symbols": ["AAPL", "MSFT"], "endpoints": ["quote"]},
                           "news": {"enabled": True, "symbols": ["AAPL"]}})
    assert "stored twice" not in caplog.text  # no company_news on the finnhub source
    load_settings(sources={"finnhub": {"enabled": True, "symbols": ["AAPL", "MSFT"],
                                       "endpoints": ["quote", "company_news"]},
                           "news": {"enabled": True, "symbols": ["aapl", "TSLA"]}})
    assert "company_news and sources.news reads Finnhub's company news too, for AAPL: each article is stored twice" \
        in caplog.text


def test_a_symbol_listed_twice_is_asked_for_once(caplog: pytest.LogCaptureFixture) -> None:
    """[TSLA, " tsla"] made a source that does not drop repeats itself (news, social, stocktwits) ask twice a
    round, against its provider's limit: kept once, with a warning, not a start-up failure."""
    caplog.set_level(logging.WARNING, logger="streams.settings")
    s = load_settings(sources={"stocktwits": {"enabled": True, "symbols": ["TSLA", "MSFT", " tsla"]},
                               "yahoo": {"enabled": True, "symbols": ["AAPL", "aapl", "AAPL"]}})
    assert s.sources.stocktwits.symbols == ["TSLA", "MSFT"] and s.sources.yahoo.symbols == ["AAPL"]
    assert "sources.yahoo.symbols: 'aapl', 'AAPL' listed more than once" in caplog.text
    # the simulated feed sends its symbols as written: two cases are two symbols
    assert load_settings(sources={"simulated": {"symbols": ["custom", "CUSTOM"]}}).sources.simulated.symbols == [
        "custom", "CUSTOM"]
