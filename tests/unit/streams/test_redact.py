"""Secrets never reach a log line or an error message (streams/redact.py, streams/errors.py).

The error-path tests register fake secrets the way a worker does (`redact.install(settings)`), configure
logging the way `faust worker` does (faust.Worker._setup_logging: the root handlers replaced by a file
handler, stdout/stderr redirected into logging), keep pytest's caplog attached, then provoke every failure
we can reach offline with those secrets in play, log it as our code would, and read both outputs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from streams import redact
from streams.config import key_env_by_source
from streams.errors import (
    BrokerUnavailable,
    ConfigError,
    RejectedRecord,
    SinkError,
    SinkUnavailable,
    SourceError,
    TickflowError,
)
from streams.settings import Settings
from tests.unit.producers import conftest as producer_fixtures
from tests.unit.producers.conftest import Serve

serve = producer_fixtures.serve  # the local fake-provider server fixture

PG_PASSWORD = "FAKE-SECRET-pg-abc123"
SASL_PASSWORD = "FAKE-SECRET-sasl-abc123"
FRED_KEY = "FAKE-SECRET-fredkey-abc123"
BEARER = "FAKE-SECRET-bearer-abc123"
MARK = "FAKE-SECRET"  # every fake secret contains it
logger = logging.getLogger("streams.test_redact")  # a child logger, as in our modules


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry() -> Iterator[None]:
    """Run with an empty registry and the factory installed; put back what was there."""
    before, was_installed = redact.known(), redact.installed()
    redact.forget_all()
    yield
    redact.forget_all()
    redact.register(*before)
    if not was_installed:
        redact.uninstall()


# ---------------------------------------------------------------------------------------------- redact()


@pytest.mark.parametrize(("text", "expected"), [
    ("GET https://api.x/q?series_id=GDP&api_key=abc123&file_type=json",
     "GET https://api.x/q?series_id=GDP&api_key=***&file_type=json"),
    ("https://www.alphavantage.co/query?function=X&apikey=K3Y", "https://www.alphavantage.co/query?function=X&apikey=***"),
    ("wss://ws.finnhub.io?token=t0k3n", "wss://ws.finnhub.io?token=***"),
    ("https://h/p?key=s3cr3t&x=1", "https://h/p?key=***&x=1"),
    ("connect password=hunter2 host=db", "connect password=*** host=db"),
    ("postgresql://tickflow:hunter2@db.internal:5432/tickflow", "postgresql://tickflow:***@db.internal:5432/tickflow"),
    ("Authorization: Bearer abc.def.ghi", "Authorization: Bearer ***"),
    ("{'Authorization': 'Bearer abc.def.ghi', 'Accept': 'json'}", "{'Authorization': 'Bearer ***', 'Accept': 'json'}"),
    ("headers={'X-Finnhub-Token': 'abcd'}", "headers={'X-Finnhub-Token': '***'}"),
    ('{"password": "hunter2", "user": "u"}', '{"password": "***", "user": "u"}'),
    ("sent bearer AAAAAAAAAAAAAAAAAAAAAMLheAAAAAAA0%2BuSeid", "sent bearer ***"),
    ("no bearer token configured", "no bearer token configured"),
    ("http://127.0.0.1:6066/pipeline/metrics", "http://127.0.0.1:6066/pipeline/metrics"),
    ("<ConsumerMessage: key=b'AAPL' offset=3>", "<ConsumerMessage: key=b'AAPL' offset=3>"),
])
def test_patterns(registry: None, text: str, expected: str) -> None:
    assert redact.redact(text) == expected


# Issue 15 item 8: each case with the pattern that catches it (a piece of that pattern's source), so the test
# below also shows that the case fails without that pattern.
GAPS = [
    ("PGPASSWORD=hunter2 psql -h db", "PGPASSWORD=*** psql -h db", r"pwd)=)"),
    ("export TICKFLOW_POSTGRES__PASSWORD=hunter2", "export TICKFLOW_POSTGRES__PASSWORD=***", r"pwd)=)"),
    ("postgres:\n  password: hunter2\n  user: u", "postgres:\n  password: ***\n  user: u", r"*:[ \t]*)(?!"),
    ("kafka: {sasl_password: hunter2}", "kafka: {sasl_password: ***}", r"*:[ \t]*)(?!"),
    ('connect password="x y" host=db', 'connect password="***" host=db', r"(?!\2)"),
    ("connect password='x y' host=db", "connect password='***' host=db", r"(?!\2)"),
    ("{'token': 'abc'}", "{'token': '***'}", r"(?!\2)"),
    ('secret: "x y"', 'secret: "***"', r"(?!\2)"),
    ('{"password": "a\\"b c", "user": "u"}', '{"password": "***", "user": "u"}', r"(?!\2)"),
    ("upstream answered 401 for Bearer abc", "upstream answered 401 for Bearer ***", r"(?!(?:token|tokens"),
    ("postgresql://u:p@ss/w@host/db", "postgresql://u:***@host/db", r"://[^:/?#"),
    ("connect postgresql://u:pa/ss@db:5432/x failed", "connect postgresql://u:***@db:5432/x failed", r"://[^:/?#"),
]


@pytest.mark.parametrize(("text", "expected", "pattern"), GAPS)
def test_gaps_of_issue_15_are_redacted_by_their_pattern(registry: None, monkeypatch: pytest.MonkeyPatch,
                                                        text: str, expected: str, pattern: str) -> None:
    assert redact.redact(text) == expected
    others = tuple(p for p in redact._PATTERNS if pattern not in p[0].pattern)
    assert len(others) == len(redact._PATTERNS) - 1, f"{pattern!r} must name exactly one pattern"
    monkeypatch.setattr(redact, "_PATTERNS", others)
    assert redact.redact(text) != expected  # that pattern, and no other, catches this case


@pytest.mark.parametrize("text", [
    "Bearer token missing", 'WWW-Authenticate: Bearer realm="tickflow"', "no bearer token configured",
    "http://127.0.0.1:6066/pipeline/data/AAPL?limit=5", "tokens: 5 used", "session key rotated",
])
def test_words_about_secrets_stay_readable(registry: None, text: str) -> None:
    assert redact.redact(text) == text


def test_registered_values_go_everywhere_longest_first(registry: None) -> None:
    redact.register(SecretStr("abc"), "abcdef", None, "")
    assert redact.redact("x abcdef y abc") == "x *** y ***"
    assert redact.redact("k=K1", [SecretStr("K1")]) == "k=***"


def test_every_secret_of_the_settings_and_the_environment_is_registered(
        registry: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Independent of the shell it runs in: a real provider key exported there (FINNHUB_API_KEY...) is not ours.
    for name in [n for n in os.environ if n.startswith("TICKFLOW_")]:
        monkeypatch.delenv(name)
    for names in key_env_by_source().values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRED_API_KEY", FRED_KEY)
    monkeypatch.setenv("TWITTER_BEARER_TOKEN", BEARER)
    s = Settings(postgres={"password": PG_PASSWORD},
                 kafka={"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": SASL_PASSWORD})
    redact.install(s)
    assert set(redact.known()) == {PG_PASSWORD, SASL_PASSWORD, FRED_KEY, BEARER}
    assert redact.installed()


def test_our_exceptions_are_redacted_when_made(registry: None) -> None:
    redact.register(PG_PASSWORD)
    errors: list[TickflowError] = [
        ConfigError(f"bad {PG_PASSWORD}"), SinkError(f"connect postgresql://u:{PG_PASSWORD}@h/db"),
        SinkUnavailable(f"x {PG_PASSWORD}"), SourceError(f"GET /q?apikey={FRED_KEY}", retriable=True),
        RejectedRecord("schema.missing", f"text has {PG_PASSWORD}"),
    ]
    for err in errors:
        assert MARK not in str(err) and MARK not in repr(err) and MARK not in str(err.args)
    assert errors[3].retriable is True
    assert MARK not in errors[4].reason and errors[4].rule == "schema.missing"


# --------------------------------------------------------------------------- logging as the worker does


@dataclass
class Captured:
    settings: Settings
    logfile: Path
    caplog: pytest.LogCaptureFixture
    worker: Any

    def redirect_stdouts(self) -> None:
        """The worker's stdout/stderr redirection, redone in the test's call phase (pytest put its own
        capture back on sys.stdout between set-up and call)."""
        self.worker._redirect_stdouts()

    def texts(self) -> list[str]:
        for handler in logging.root.handlers:
            handler.flush()
        return [self.logfile.read_text(), self.caplog.text]

    def assert_clean(self, *must_contain: str) -> None:
        """No fake secret anywhere; and the failures really were logged (the test is not vacuous)."""
        for text in self.texts():
            assert MARK not in text, text
            for needle in must_contain:
                assert needle in text, f"{needle!r} not logged:\n{text}"


@pytest.fixture
def worker_logging(registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   caplog: pytest.LogCaptureFixture) -> Iterator[Captured]:
    import faust

    from streams.app import app

    # Independent of the shell it runs in: a real provider key exported there (FINNHUB_API_KEY...) is not ours.
    for name in [n for n in os.environ if n.startswith("TICKFLOW_")]:
        monkeypatch.delenv(name)
    for names in key_env_by_source().values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRED_API_KEY", FRED_KEY)
    monkeypatch.setenv("TWITTER_BEARER_TOKEN", BEARER)
    settings = Settings(
        postgres={"password": PG_PASSWORD, "user": "nobody_tickflow_test"},
        kafka={"bootstrap_servers": f"127.0.0.1:{closed_port()}", "security_protocol": "SASL_PLAINTEXT",
               "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "svc", "sasl_password": SASL_PASSWORD},
    )
    redact.install(settings)
    root = logging.root
    saved = (list(root.handlers), root.level, sys.stdout, sys.stderr)
    logfile = tmp_path / "worker.log"
    worker = faust.Worker(app, loglevel="debug", logfile=str(logfile))
    worker._setup_logging()  # what `faust worker` does at start: root handlers replaced, stdouts redirected
    assert any(isinstance(h, logging.FileHandler) for h in root.handlers)
    root.addHandler(caplog.handler)
    caplog.set_level(logging.DEBUG)
    try:
        yield Captured(settings, logfile, caplog, worker)
    finally:
        worker.exit_stack.close()  # ends the stdout/stderr redirection
        for h in root.handlers:
            if h not in saved[0]:
                h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        sys.stdout, sys.stderr = saved[2], saved[3]


def test_logged_exceptions_args_and_prints_are_redacted(worker_logging: Captured) -> None:
    worker_logging.redirect_stdouts()
    try:
        try:
            raise RuntimeError(f"cannot log in as svc/{SASL_PASSWORD}")
        except RuntimeError as inner:
            raise ValueError(f"wrapped: postgresql://tickflow:{PG_PASSWORD}@db/tickflow") from inner
    except ValueError:
        logger.exception("request with apikey=%s failed %d times", FRED_KEY, 3)
    logger.warning("headers %s", {"Authorization": f"Bearer {BEARER}"})
    logger.info("plain line with %s and %r", PG_PASSWORD, SASL_PASSWORD)
    logging.getLogger("aiokafka.conn").error("third-party logger: %s", SASL_PASSWORD)
    print(f"stray print of {FRED_KEY}")  # the worker redirects stdout into logging
    print(f"stray stderr of {PG_PASSWORD}", file=sys.stderr)
    logger.info("a %d and a %.1f stay numbers", 7, 2.5)
    worker_logging.assert_clean("failed 3 times", "cannot log in as svc/***", "postgresql://tickflow:***@db",
                                "Bearer ***", "third-party logger: ***", "stray print of ***",
                                "stray stderr of ***", "a 7 and a 2.5 stay numbers")
    assert any(r.exc_info for r in worker_logging.caplog.records)  # the exception object itself is kept


async def test_http_connector_failures_with_the_key_in_the_query(worker_logging: Captured, serve: Serve) -> None:
    from producers.fred import FredSettings, FredSource

    async def echo(request: web.Request) -> web.Response:  # a provider that echoes the URL in its error
        return web.json_response({"error_message": f"Bad request for {request.url}"}, status=400)

    app = web.Application()
    app.router.add_get("/fred/series/observations", echo)
    base = await serve(app)
    sources = {
        "echoing": FredSource(FredSettings(base_url=base, series=["GDP"], retry_attempts=1)),
        "closed": FredSource(FredSettings(base_url=f"http://127.0.0.1:{closed_port()}", series=["GDP"],
                                          retry_attempts=1, retry_base_delay=0.0)),
    }
    async with aiohttp.ClientSession() as session:
        for name, source in sources.items():
            assert source.api_key.get_secret_value() == FRED_KEY  # from the environment, as in production
            assert await source.poll_once(session) == []  # logged by the source, not raised
            with pytest.raises(SourceError) as err:
                await source.observations(session, "GDP")
            assert MARK not in str(err.value) and MARK not in repr(err.value)
            logger.error("source %s failed: %s", name, err.value, exc_info=err.value)
            # A careless line that logs the raw URL is still caught by the log redaction.
            logger.warning("raw url %s/fred/series/observations?api_key=%s", base, FRED_KEY)
    worker_logging.assert_clean("fred: GDP failed", "api_key=***", "source echoing failed", "source closed failed")


async def test_kafka_sasl_connection_failures(worker_logging: Captured) -> None:
    """A producer, the topic check and the lag reader with SASL credentials against a closed port."""
    from aiokafka.errors import KafkaError

    from producers.runner import new_producer
    from streams.broker import ensure_topics
    from streams.catalog import load_catalog
    from streams.web.lag import LagReader

    settings = worker_logging.settings
    kafka = settings.kafka
    producer = new_producer(settings)
    with pytest.raises(KafkaError) as perr:
        await producer.start()
    await producer.stop()
    logger.error("producer failed", exc_info=perr.value)
    with pytest.raises(BrokerUnavailable) as cerr:
        await ensure_topics(load_catalog(), kafka.bootstrap_servers, kafka=kafka)
    logger.error("topics failed", exc_info=cerr.value)
    reader = LagReader(kafka.bootstrap_servers, {"g": ["t"]}, kafka=kafka)
    with pytest.raises(KafkaError) as lerr:
        await asyncio.wait_for(reader.lag_by_topic(), 30)
    await reader.close()
    logger.error("lag failed", exc_info=lerr.value)
    for err in (perr.value, cerr.value, lerr.value):
        assert MARK not in str(err) and MARK not in repr(err)
    worker_logging.assert_clean("producer failed", "topics failed", "lag failed", "Unable to bootstrap")
