"""`tickflow selftest`: the brief's test report, measured for real on the local stack.

Eight checks, each printed as it finishes (`PASS|FAIL  <name>  <what was measured>`), then the report in the
product brief's `python test_pipeline.py` format: test summary, performance metrics, individual results under
the brief's check names. Exit code 0 only when all pass.

  config_management   settings load and validate; a bad value and an unknown key are refused by name
  data_quality        the Validator (streams/rules.py) accepts a good point and rejects bad ones with their rules
  core_functionality  2,000 points (24 invalid) through a real `faust worker`: the valid ones in market_data,
                      the invalid ones in ticks.rejected with the expected rule
  throughput_performance  20,000 points produced as fast as possible; rows/s from the first producer timestamp to
                      the last row's insert (PASS at >= 1,000/s)
  latency_performance the simulated feed at 1,000 points/s for 5 s after a 6 s warm-up at the same rate (its
                      rows not counted: the benchmark measures a worker that has run for minutes, and the warm-up
                      takes the worker's one-off start-up work, e.g. the first stale-feed check building its exchange
                      calendars, out of the window); written_at - ingested_at of every row (streams/tools/measure.py,
                      as bench/throughput.py), PASS when the average < 50 ms
  yfinance_connector  the yahoo source (yfinance), then fred, alpha_vantage and finnhub, against a local aiohttp
                      server answering in each provider's documented format (through their base_url setting);
                      every point validates
  full_integration    GET /health is ok; GET /pipeline/metrics counts exactly what was sent, rejected, written
  error_recovery      kill -9 of the worker mid-flow, a new worker started: every row once (count = count
                      distinct natural key = sent), none lost

It isolates itself: its own app id (consumer groups), topic suffix and PostgreSQL schema, a worker on a
free web port started in a temporary directory (Faust's data dir), all removed afterwards (`--keep` keeps
them, and the worker logs are kept whenever a check fails).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import asyncpg
import orjson
from aiohttp import web
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from producers.base import RawRecord, encode
from producers.runner import SourceRunner, new_producer
from producers.simulated import INVALID_KINDS, SimulatedSource
from streams.catalog import Catalog, load_catalog
from streams.errors import ConfigError, RejectedRecord
from streams.models import MarketDataPoint
from streams.rules import Validator
from streams.settings import (
    Settings,
    SimulatedSourceSettings,
    SourcesSettings,
    config_file_from_env,
    get_settings,
    load_settings,
)
from streams.tools import measure

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# The rule each deliberately invalid simulated record must be refused with (producers/simulated.py).
EXPECTED_RULE = {
    "not_json": "schema.not_json", "wrong_type": "schema.float_type", "missing_field": "schema.missing",
    "nan": "schema.finite_number", "negative_price": "price.non_positive", "crossed": "quote.crossed",
}
THROUGHPUT_FLOOR = 1000.0  # points/s, the brief's figure
LATENCY_CEILING_MS = 50.0  # average, the brief's figure


@dataclass
class Result:
    name: str
    passed: bool
    figure: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable(host: str, port: int) -> str | None:
    try:
        socket.create_connection((host, port), timeout=3).close()
        return None
    except OSError as exc:
        return str(exc)


class Worker:
    """One `python -m streams worker` process, run in the self-test's own directory and environment."""

    def __init__(self, env: dict[str, str], workdir: Path, name: str) -> None:
        self.port = free_port()
        self.env = {**env, "TICKFLOW_WORKER__WEB_PORT": str(self.port)}
        self.workdir = workdir
        self.log_path = workdir / f"worker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "streams", "worker", "-l", "info"],
                                         cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.splitlines()[-lines:])

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status, await resp.json(content_type=None)
    except (TimeoutError, aiohttp.ClientError, ValueError):
        return 0, None


def n(v: float) -> str:
    return f"{v:,.0f}"


# ------------------------------------------------------------------------------------------ provider fakes
# Minimal responses in each provider's documented format (the unit tests' fixtures are fuller, but they are
# not installed with the package).

YAHOO_T0 = 1732285800  # 2024-11-22 14:30 UTC
YAHOO_CHART = {"chart": {"error": None, "result": [{
    "meta": {"currency": "USD", "symbol": "MSFT", "exchangeName": "NMS", "exchangeTimezoneName": "America/New_York",
             "gmtoffset": -18000, "regularMarketPrice": 417.25, "regularMarketTime": YAHOO_T0 + 207,
             "regularMarketDayHigh": 417.9, "regularMarketDayLow": 411.06, "regularMarketVolume": 1523400,
             "chartPreviousClose": 412.87, "dataGranularity": "1m", "range": "1d", "instrumentType": "EQUITY",
             "validRanges": ["1d", "5d", "1mo", "3mo", "6mo", "1y", "2y", "5y", "10y", "ytd", "max"],
             "currentTradingPeriod": {
                 "pre": {"timezone": "EST", "gmtoffset": -18000, "start": YAHOO_T0 - 19800, "end": YAHOO_T0},
                 "regular": {"timezone": "EST", "gmtoffset": -18000, "start": YAHOO_T0, "end": YAHOO_T0 + 23400},
                 "post": {"timezone": "EST", "gmtoffset": -18000, "start": YAHOO_T0 + 23400,
                          "end": YAHOO_T0 + 37800}},
             "tradingPeriods": [[{"timezone": "EST", "gmtoffset": -18000, "start": YAHOO_T0,
                                  "end": YAHOO_T0 + 23400}]]},
    "timestamp": [YAHOO_T0, YAHOO_T0 + 60, YAHOO_T0 + 120, YAHOO_T0 + 180],
    "indicators": {"quote": [{"open": [411.37, 412.0, None, 416.8], "high": [412.5, 413.1, None, 417.4],
                              "low": [411.06, 411.9, None, 416.5], "close": [412.1, 413.0, None, 417.25],
                              "volume": [523400, 301200, None, 98000]}]},
}]}}
FRED_OBSERVATIONS = {
    "realtime_start": "1776-07-04", "realtime_end": "9999-12-31", "observation_start": "2024-09-01",
    "observation_end": "9999-12-31", "units": "lin", "output_type": 1, "file_type": "json",
    "order_by": "observation_date", "sort_order": "asc", "count": 2, "offset": 0, "limit": 100000,
    "observations": [
        {"realtime_start": "2024-11-01", "realtime_end": "9999-12-31", "date": "2024-10-01", "value": "4.1"},
        {"realtime_start": "2024-12-06", "realtime_end": "9999-12-31", "date": "2024-11-01", "value": "."},
    ],
}
ALPHA_VANTAGE_QUOTE = {"Global Quote": {
    "01. symbol": "IBM", "02. open": "210.0000", "03. high": "212.1000", "04. low": "209.0000",
    "05. price": "211.4500", "06. volume": "3512004", "07. latest trading day": "2024-11-12",
    "08. previous close": "210.0000", "09. change": "1.4500", "10. change percent": "0.6905%",
}}
FINNHUB_QUOTE = {"c": 415.5, "d": 2.1, "dp": 0.508, "h": 417.0, "l": 411.2, "o": 412.0, "pc": 413.4, "t": 1717185600}
FAKE_KEY = "selftest0key0not0secret"


def fake_providers() -> web.Application:
    """One local server for the four providers; a request without the key is refused as the real ones do."""

    async def yahoo(request: web.Request) -> web.Response:
        if request.match_info["symbol"] != "MSFT" or "Mozilla" not in request.headers.get("User-Agent", ""):
            return web.json_response({"chart": {"result": None, "error": {"code": "Not Found"}}}, status=404)
        return web.json_response(YAHOO_CHART)

    async def fred(request: web.Request) -> web.Response:
        if request.query.get("api_key") != FAKE_KEY or request.query.get("file_type") != "json":
            return web.json_response({"error_code": 400, "error_message": "Bad Request. api_key."}, status=400)
        return web.json_response(FRED_OBSERVATIONS)

    async def fred_series(request: web.Request) -> web.Response:  # the metadata FRED's observations carry
        if request.query.get("api_key") != FAKE_KEY or request.query.get("series_id") != "UNRATE":
            return web.json_response({"error_code": 400, "error_message": "Bad Request."}, status=400)
        return web.json_response({"realtime_start": "2024-12-06", "realtime_end": "2024-12-06", "seriess": [{
            "id": "UNRATE", "title": "Unemployment Rate", "frequency": "Monthly", "frequency_short": "M",
            "units": "Percent", "units_short": "%", "seasonal_adjustment": "Seasonally Adjusted",
            "seasonal_adjustment_short": "SA", "last_updated": "2024-12-06 07:45:02-06"}]})

    async def alpha_vantage(request: web.Request) -> web.Response:
        if request.query.get("apikey") != FAKE_KEY or request.query.get("function") != "GLOBAL_QUOTE":
            return web.json_response({"Error Message": "Invalid API call."})
        return web.json_response(ALPHA_VANTAGE_QUOTE)

    async def finnhub(request: web.Request) -> web.Response:
        if request.headers.get("X-Finnhub-Token") != FAKE_KEY:
            return web.json_response({"error": "Invalid API key"}, status=401)
        return web.json_response(FINNHUB_QUOTE)

    app = web.Application()
    app.router.add_get("/v8/finance/chart/{symbol}", yahoo)
    app.router.add_get("/fred/series/observations", fred)
    app.router.add_get("/fred/series", fred_series)
    app.router.add_get("/query", alpha_vantage)
    app.router.add_get("/api/v1/quote", finnhub)
    return app


# ------------------------------------------------------------------------------------------ the run


class SelfTest:
    def __init__(self, settings: Settings, *, out: TextIO = sys.stdout, throughput_points: int = 20_000,
                 core_points: int = 2_000, latency_rate: float = 1000.0, latency_seconds: float = 5.0,
                 recovery_points: int = 10_000, keep: bool = False, warmup_seconds: float = 6.0) -> None:
        self.settings = settings
        self.out = out
        self.throughput_points = throughput_points
        self.core_points = core_points
        self.latency_rate = latency_rate
        self.latency_seconds = latency_seconds
        self.warmup_seconds = warmup_seconds
        self.recovery_points = recovery_points
        self.keep = keep
        self.tag = uuid.uuid4().hex[:8]
        self.app_id = f"selftest-{self.tag}"
        self.suffix = f".selftest-{self.tag}"
        self.schema = f"selftest_{self.tag}"
        self.catalog: Catalog = load_catalog(suffix=self.suffix)
        self.bootstrap = settings.kafka.bootstrap_servers
        self.workdir = Path(tempfile.mkdtemp(prefix=f"tickflow-selftest-{self.tag}-"))
        self.env = self._worker_env()
        self.results: list[Result] = []
        self.workers: list[Worker] = []
        self.worker: Worker | None = None
        self.conn: asyncpg.Connection | None = None
        self.http: aiohttp.ClientSession | None = None
        self.stack_problem: str | None = None
        self.topics_created = False
        # What was sent so far, for the metrics check.
        self.sent = 0
        self.invalid = 0
        self.numbers: dict[str, float | None] = {"throughput": None, "avg_latency": None, "p95": None, "p99": None}

    def _worker_env(self) -> dict[str, str]:
        pg = self.settings.postgres
        env = {
            **os.environ,
            "TICKFLOW_WORKER__APP_ID": self.app_id,
            "TICKFLOW_KAFKA__TOPIC_SUFFIX": self.suffix,
            "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
            "TICKFLOW_POSTGRES__DB_SCHEMA": self.schema,
            "TICKFLOW_POSTGRES__HOST": pg.host,
            "TICKFLOW_POSTGRES__PORT": str(pg.port),
            "TICKFLOW_WORKER__WEB_HOST": "127.0.0.1",
            "TICKFLOW_WORKER__ADVERTISED_HOST": "127.0.0.1",
            "TICKFLOW_WORKER__METRICS_FLUSH_SECONDS": "1",
            "TICKFLOW_VALIDATION__QUARANTINE_SOURCES": "[]",
            # The worker imports this tree's modules whatever its working directory (the temporary one).
            "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        }
        for name in SourcesSettings.model_fields:  # no live feed: the self-test produces what it checks
            env[f"TICKFLOW_SOURCES__{name.upper()}__ENABLED"] = "false"
        config = config_file_from_env()
        if config is not None:
            env["TICKFLOW_CONFIG"] = str(config.resolve())
        return env

    # -------------------------------------------------------------------------------------- plumbing

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    async def check(self, name: str, fn: Callable[[], Awaitable[tuple[bool, str]]], timeout: float,
                    needs_stack: bool = True) -> None:
        if needs_stack and self.stack_problem:
            result = Result(name, False, f"not run: {self.stack_problem}")
        else:
            try:
                passed, figure = await asyncio.wait_for(fn(), timeout)
                result = Result(name, passed, figure)
            except TimeoutError:
                result = Result(name, False, f"timed out after {timeout:.0f} s")
            except Exception as exc:
                result = Result(name, False, f"{type(exc).__name__}: {exc}")
        self.results.append(result)
        self.say(f"{'PASS' if result.passed else 'FAIL'}  {result.name:<22} {result.figure}")

    async def wait_until(self, probe: Callable[[], Awaitable[Any]], timeout: float, what: str,
                         interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = await probe()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no {what} after {timeout:.0f} s (last: {last!r})")
            await asyncio.sleep(interval)

    def start_worker(self, name: str) -> Worker:
        w = Worker(self.env, self.workdir, name).start()
        self.workers.append(w)
        self.worker = w
        return w

    async def wait_healthy(self, w: Worker, timeout: float = 120) -> float:
        assert self.http is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not w.alive():
                raise RuntimeError(f"the worker exited with code {w.proc.returncode if w.proc else '?'}: "
                                   f"{w.log_tail()}")
            status, body = await get_json(self.http, f"{w.url}/health")
            if status == 200 and isinstance(body, dict) and body.get("status") == "ok":
                return time.monotonic() - t0
            await asyncio.sleep(0.25)
        raise TimeoutError(f"the worker was not healthy after {timeout:.0f} s: {w.log_tail()}")

    async def produce(self, topic: str, records: list[tuple[RawRecord, list[tuple[str, bytes]]]]) -> None:
        producer = new_producer(self.settings)
        await producer.start()
        try:
            futures = [await producer.send(topic, r.value, key=r.key, headers=h) for r, h in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    async def rows_of(self, run_id: str) -> int:
        assert self.conn is not None
        return await measure.count_rows(self.conn, self.schema, run_id)

    # -------------------------------------------------------------------------------------- checks

    async def check_configuration(self) -> tuple[bool, str]:
        t0 = time.perf_counter()
        s = load_settings()
        ms = (time.perf_counter() - t0) * 1000
        refused = []
        for bad, key in (({"postgres": {"port": "fifteen"}}, "postgres.port"),
                         ({"sink": {"batch_sise": 100}}, "sink.batch_sise")):
            try:
                load_settings(**bad)
                refused.append(f"{key} accepted")
            except ConfigError as exc:
                refused.append(str(exc).split(": ", 1)[1] if key in str(exc) else f"{key} not named: {exc}")
        ok = all(not r.endswith("accepted") and "not named" not in r for r in refused)
        where = config_file_from_env() or "defaults + environment"
        return ok, (f"settings from {where} valid in {ms:.0f} ms (Kafka {s.kafka.bootstrap_servers}, PostgreSQL "
                    f"{s.postgres.host}:{s.postgres.port}); refused: {'; '.join(refused)}")

    async def check_data_quality(self) -> tuple[bool, str]:
        v = Validator(self.settings.validation)
        now = datetime.now(UTC)
        good = MarketDataPoint(symbol="AAPL", timestamp=now, source="simulated", data_type="quote", price=190.1,
                               bid=190.0, ask=190.2, volume=100, item_id="selftest-good")
        doc = orjson.loads(good.to_json())
        cases: list[tuple[str, bytes, str | None]] = [
            ("good quote", good.to_json(), None),
            ("negative price", orjson.dumps({**doc, "price": -190.1}), "price.non_positive"),
            ("crossed quote", orjson.dumps({**doc, "bid": 190.3, "ask": 190.2}), "quote.crossed"),
            ("NaN price", orjson.dumps({**doc, "price": "__nan__"}).replace(b'"__nan__"', b"NaN"),
             "schema.finite_number"),
            ("not JSON", b"{AAPL 190.1", "schema.not_json"),
            ("future timestamp", orjson.dumps({**doc, "timestamp": (now + timedelta(minutes=5)).isoformat()}),
             "timestamp.future"),
        ]
        right, wrong = 0, []
        for what, raw, rule in cases:
            try:
                v.check(raw, source="simulated")
                got = None
            except RejectedRecord as exc:
                got = exc.rule
            if got == rule:
                right += 1
            else:
                wrong.append(f"{what}: expected {rule or 'accepted'}, got {got or 'accepted'}")
        verdicts = ", ".join(f"{w} -> {r or 'accepted'}" for w, _, r in cases)
        return not wrong, f"{right}/{len(cases)} verdicts right ({'; '.join(wrong) if wrong else verdicts})"

    async def check_core_flow(self) -> tuple[bool, str]:
        assert self.worker is not None
        ready = await self.wait_healthy(self.worker)
        run_id = f"core{self.tag}"
        src = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0, seed=11), run_id=run_id)
        invalid = [(src.invalid(kind), kind) for _ in range(4) for kind in INVALID_KINDS]
        valid = [encode(p) for p in src.batch(self.core_points - len(invalid))]
        records: list[tuple[RawRecord, list[tuple[str, bytes]]]] = [(r, []) for r in valid]
        step = len(records) // len(invalid)
        for i, (r, kind) in enumerate(invalid):  # spread through the flow
            records.insert(i * (step + 1), (r, [("selftest.expect", EXPECTED_RULE[kind].encode())]))
        t0 = time.monotonic()
        await self.produce(self.catalog.raw("simulated").name, records)
        self.sent += len(records)
        self.invalid += len(invalid)

        async def all_rows() -> bool:
            return await self.rows_of(run_id) >= len(valid)

        await self.wait_until(all_rows, 90, f"{len(valid)} rows")
        rejected_topic = self.catalog.one("rejected").name

        async def dead_letters() -> list[Any] | None:
            recs = [r for r in await measure.read_topic(self.settings.kafka.bootstrap_servers, rejected_topic,
                                                              **self.settings.kafka.client_kwargs())
                    if "selftest.expect" in dict(r.headers or [])]
            return recs if len(recs) >= len(invalid) else None

        dlq = await self.wait_until(dead_letters, 60, f"{len(invalid)} dead letters", interval=0.5)
        elapsed = time.monotonic() - t0
        assert self.conn is not None
        row = await self.conn.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT (source, symbol, data_type, ts, item_id)) AS keys "
            f"FROM {self.schema}.market_data WHERE item_id LIKE $1", run_id + "-%")
        wrong_rule = [h for h in (dict(r.headers) for r in dlq)
                      if h.get("tickflow.rule") != h["selftest.expect"]]
        ok = row["n"] == row["keys"] == len(valid) and len(dlq) == len(invalid) and not wrong_rule
        return ok, (f"{n(len(records))} points in {elapsed:.1f} s: {n(row['n'])} rows in market_data "
                    f"({n(row['keys'])} distinct keys, {n(len(valid))} valid sent), {len(dlq)} in {rejected_topic} "
                    f"({len(dlq) - len(wrong_rule)}/{len(invalid)} with the expected rule); worker ready in "
                    f"{ready:.1f} s")

    async def check_throughput(self) -> tuple[bool, str]:
        assert self.conn is not None
        run_id = f"tp{self.tag}"
        topic = self.catalog.raw("simulated").name
        produce_rate = await measure.preload(self.settings, topic, self.throughput_points, run_id=run_id, seed=13)
        self.sent += self.throughput_points
        got = await measure.wait_for_rows(self.conn, self.schema, run_id, self.throughput_points, 120, interval=0.1)
        row = await self.conn.fetchrow(
            f"SELECT count(*) AS n, extract(epoch FROM max(written_at) - min(ingested_at))::float8 AS s "
            f"FROM {self.schema}.market_data WHERE item_id LIKE $1", run_id + "-%")
        rate = row["n"] / row["s"] if row["s"] else 0.0
        self.numbers["throughput"] = rate
        ok = got == self.throughput_points and rate >= THROUGHPUT_FLOOR
        return ok, (f"{n(rate)} points/s: {n(row['n'])}/{n(self.throughput_points)} rows committed "
                    f"{row['s'] or 0:.2f} s after the first was produced (producer {n(produce_rate)} points/s; "
                    f"needs >= {n(THROUGHPUT_FLOOR)}/s)")

    async def check_latency(self) -> tuple[bool, str]:
        assert self.conn is not None
        # Warm-up at the same rate, its rows not measured: bench/throughput.py measures a worker that has run for
        # minutes. A young worker does one-off work in its event loop in its first seconds of live data (the
        # first stale-feed check imports exchange_calendars and builds the calendars: a 300-470 ms stall here
        # under load, ~60 ms added to a 5 s average); the check runs every 5 s, so a 6 s warm-up takes it.
        warm = await measure.latency_run(self.settings, self.catalog, self.conn, self.schema, self.latency_rate,
                                         self.warmup_seconds, run_id=f"warm{self.tag}", wait_seconds=60)
        self.sent += warm["sent"]
        lat = await measure.latency_run(self.settings, self.catalog, self.conn, self.schema, self.latency_rate,
                                        self.latency_seconds, run_id=f"lat{self.tag}", wait_seconds=60)
        self.sent += lat["sent"]
        self.numbers.update(avg_latency=lat["avg_ms"], p95=lat["p95_ms"], p99=lat["p99_ms"])
        avg = lat["avg_ms"]
        ok = lat["rows"] == lat["sent"] > 0 and avg is not None and avg < LATENCY_CEILING_MS
        return ok, (f"avg {avg} ms, p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms, max "
                    f"{lat['max_ms']} ms over {n(lat['rows'])}/{n(lat['sent'])} rows at {n(self.latency_rate)} "
                    f"points/s for {self.latency_seconds:.0f} s (producer timestamp -> row written; needs avg < "
                    f"{LATENCY_CEILING_MS:.0f} ms)")

    async def check_connectors(self) -> tuple[bool, str]:
        from producers.alpha_vantage import AlphaVantageSettings, AlphaVantageSource
        from producers.finnhub import FinnhubSettings, FinnhubSource
        from producers.fred import FredSettings, FredSource
        from producers.yahoo import YahooSettings, YahooSource

        runner = web.AppRunner(fake_providers(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        base = f"http://{host}:{port}"
        key = SecretStr(FAKE_KEY)
        fast = {"retry_attempts": 1, "request_timeout_seconds": 5}
        sources = [
            ("yahoo", YahooSource(YahooSettings(base_url=base, symbols=["MSFT"], **fast))),
            ("fred", FredSource(FredSettings(base_url=base, series=["UNRATE"], **fast), api_key=key)),
            ("alpha_vantage", AlphaVantageSource(AlphaVantageSettings(base_url=base, symbols=["IBM"], **fast),
                                                 api_key=key)),
            ("finnhub", FinnhubSource(FinnhubSettings(base_url=base, symbols=["MSFT"], **fast), api_key=key)),
        ]
        expected: dict[str, Callable[[list[MarketDataPoint]], bool]] = {
            "yahoo": lambda ps: [p.data_type for p in ps] == ["tick", "bar", "bar", "bar"] and ps[0].price == 417.25,
            "fred": lambda ps: [p.value for p in ps] == [4.1, None] and "value.missing" in ps[1].flags
                    and ps[0].metadata.get("title") == "Unemployment Rate",
            "alpha_vantage": lambda ps: [(p.symbol, p.data_type, p.close) for p in ps] == [("IBM", "bar", 211.45)],
            "finnhub": lambda ps: [(p.symbol, p.price) for p in ps] == [("MSFT", 415.5)],
        }
        validator = Validator(self.settings.validation)
        parts, ok = [], True
        try:
            async with aiohttp.ClientSession() as session:
                for name, source in sources:
                    points = await source.poll_once(session)  # type: ignore[attr-defined]
                    rejected = []
                    for p in points:
                        try:
                            validator.check_point(p)
                        except RejectedRecord as exc:
                            rejected.append(exc.rule)
                    good = bool(points) and not rejected and expected[name](points)
                    ok &= good
                    what = ", ".join(f"{p.data_type} {p.symbol} {p.price or p.close or p.value}"
                                     for p in points[:2]) + (" ..." if len(points) > 2 else "")
                    parts.append(f"{name} {len(points)} ({what})" + ("" if good else f" WRONG {rejected}"))
        finally:
            await runner.cleanup()
        yahoo = next((p for p in parts if p.startswith("yahoo ")), "yahoo 0").split()[1]
        return ok, (f"YFinance connector processed {yahoo} data points; {len(sources)} connectors parsed their "
                    f"provider's documented format from a local server ({base}) and every point validated: "
                    + "; ".join(parts))

    async def check_integration(self) -> tuple[bool, str]:
        assert self.worker is not None and self.http is not None and self.conn is not None
        w = self.worker
        status, health = await get_json(self.http, f"{w.url}/health")
        health_ok = status == 200 and isinstance(health, dict) and health.get("status") == "ok"
        rows = await measure.count_rows(self.conn, self.schema)

        async def metrics_agree() -> dict[str, Any] | None:
            code, m = await get_json(self.http, f"{w.url}/pipeline/metrics")  # type: ignore[arg-type]
            if code == 200 and isinstance(m, dict) and m.get("total_processed") == self.sent \
                    and m.get("rejected_points") == self.invalid and m.get("written_points") == rows:
                return m
            return None

        try:
            m = await self.wait_until(metrics_agree, 30, "agreement", interval=0.5)
            agree = True
        except TimeoutError:
            m = (await get_json(self.http, f"{w.url}/pipeline/metrics"))[1] or {}
            agree = False
        async with self.http.get(f"{w.url}/dashboard", timeout=aiohttp.ClientTimeout(total=5)) as resp:
            dash_status = resp.status
        figure = (f"GET /health {status} {health.get('status') if isinstance(health, dict) else health!r} "
                  f"(leader {health.get('leader') if isinstance(health, dict) else '?'}); GET /pipeline/metrics: "
                  f"processed {n(m.get('total_processed') or 0)} (sent {n(self.sent)}), rejected "
                  f"{n(m.get('rejected_points') or 0)} (sent invalid {self.invalid}), written "
                  f"{n(m.get('written_points') or 0)} (rows in PostgreSQL {n(rows)}), "
                  f"{n(m.get('throughput_per_sec') or 0)} rows/s in the last 10 s; "
                  f"GET /dashboard {dash_status}")
        return health_ok and agree and dash_status == 200, figure

    async def check_recovery(self) -> tuple[bool, str]:
        assert self.worker is not None and self.conn is not None
        run_id = f"rec{self.tag}"
        total = self.recovery_points
        sim = SimulatedSourceSettings(invalid_ratio=0.0, rate_per_second=max(total / 4, 1.0), seed=17)
        feed = asyncio.create_task(
            SourceRunner(self.settings, self.catalog).run(SimulatedSource(sim, run_id=run_id), limit=total))
        try:
            async def writing() -> bool:
                if feed.done():
                    feed.result()  # the feed failed: say why
                return await self.rows_of(run_id) >= total // 5

            await self.wait_until(writing, 60, "rows before the kill", interval=0.05)
            victim = self.worker
            victim.kill9()
            t_kill = time.monotonic()
            at_kill = await self.rows_of(run_id)
            self.start_worker("after-kill")
            sent = await feed
        finally:
            if not feed.done():
                feed.cancel()
                await asyncio.gather(feed, return_exceptions=True)
        self.sent += sent
        got = await measure.wait_for_rows(self.conn, self.schema, run_id, sent, 150, interval=0.25)
        recovered = time.monotonic() - t_kill
        row = await self.conn.fetchrow(
            f"SELECT count(*) AS n, count(DISTINCT (source, symbol, data_type, ts, item_id)) AS keys "
            f"FROM {self.schema}.market_data WHERE item_id LIKE $1", run_id + "-%")
        ids = {r["item_id"] for r in await self.conn.fetch(
            f"SELECT item_id FROM {self.schema}.market_data WHERE item_id LIKE $1", run_id + "-%")}
        lost = len({f"{run_id}-{i}" for i in range(1, sent + 1)} - ids)
        ok = got == sent == total and row["n"] == row["keys"] == sent and lost == 0
        # Informative: what the new worker re-read after the kill and the natural key absorbed.
        assert self.http is not None and self.worker is not None
        code, m = await get_json(self.http, f"{self.worker.url}/pipeline/metrics")
        again = (f"; {n(m['duplicate_points'])} re-read after the kill and absorbed by the natural key"
                 if code == 200 and isinstance(m, dict) and m.get("duplicate_points") is not None else "")
        return ok, (f"kill -9 of pid {victim.proc.pid if victim.proc else '?'} at {n(at_kill)}/{n(total)} rows; "
                    f"a new worker finished: {n(row['n'])} rows = {n(row['keys'])} distinct natural keys = "
                    f"{n(sent)} sent, {lost} lost, {row['n'] - row['keys']} duplicates; all in "
                    f"{recovered:.1f} s after the kill{again}")

    # -------------------------------------------------------------------------------------- run

    async def run(self) -> int:
        t_start = time.monotonic()
        pg = self.settings.postgres
        self.say("tickflow Data Ingestion Pipeline Test Suite")
        self.say("Testing pipeline performance, functionality, and integration")
        self.say("-" * 60)
        self.say(f"tickflow selftest  {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
        self.say(f"  Kafka {self.bootstrap}, PostgreSQL {pg.dsn_for_display()}")
        self.say(f"  isolated: app id {self.app_id}, topics *{self.suffix}, schema {self.schema}, "
                 f"work dir {self.workdir}")
        self.say()
        kafka_host, kafka_port = self.bootstrap.split(",")[0].strip().rsplit(":", 1)
        for what, host, port in (("Kafka", kafka_host, int(kafka_port)), ("PostgreSQL", pg.host, pg.port)):
            why = reachable(host, port)
            if why and not self.stack_problem:
                self.stack_problem = f"{what} is not reachable at {host}:{port} ({why}); run `make stack-up`"
        self.http = aiohttp.ClientSession()
        try:
            if not self.stack_problem:
                try:
                    from streams.broker import ensure_topics

                    self.topics_created = True  # from here on, cleanup deletes them (even if this fails half-way)
                    await ensure_topics(self.catalog, self.bootstrap, kafka=self.settings.kafka)
                    self.conn = await asyncpg.connect(**self.settings.postgres.connect_kwargs(), timeout=10)
                    self.start_worker("1")  # starts up while the in-process checks run
                except Exception as exc:
                    self.stack_problem = f"{type(exc).__name__}: {exc}"
            await self.check("config_management", self.check_configuration, 30, needs_stack=False)
            await self.check("data_quality", self.check_data_quality, 30, needs_stack=False)
            await self.check("core_functionality", self.check_core_flow, 240)
            await self.check("throughput_performance", self.check_throughput, 150)
            await self.check("latency_performance", self.check_latency, 120)
            await self.check("yfinance_connector", self.check_connectors, 60, needs_stack=False)
            await self.check("full_integration", self.check_integration, 60)
            await self.check("error_recovery", self.check_recovery, 240)
        finally:
            await self.cleanup()
        passed = sum(r.passed for r in self.results)
        self.say()
        self.report(time.monotonic() - t_start)
        if passed != len(self.results) and any(w.log_path.exists() for w in self.workers):
            self.say(f"worker logs kept in {self.workdir}")
        return 0 if passed == len(self.results) else 1

    def mark(self, passed: bool) -> str:
        """The brief's ✅/❌, or PASS/FAIL where the output cannot encode them (a C-locale terminal)."""
        mark = "✅" if passed else "❌"
        try:
            mark.encode(getattr(self.out, "encoding", None) or "utf-8")
        except (UnicodeEncodeError, LookupError):
            return "PASS" if passed else "FAIL"
        return mark

    def report(self, seconds: float) -> None:
        """The brief's `python test_pipeline.py` report: summary, performance metrics, individual results."""
        total, passed = len(self.results), sum(r.passed for r in self.results)
        tp, avg, p95 = self.numbers["throughput"], self.numbers["avg_latency"], self.numbers["p95"]
        rule = "=" * 60
        self.say(rule)
        self.say("DATA INGESTION PIPELINE TEST REPORT")
        self.say(rule)
        self.say("Test Summary:")
        self.say(f"  Total Tests: {total}")
        self.say(f"  Passed: {passed}")
        self.say(f"  Failed: {total - passed}")
        self.say("  Warnings: 0")
        self.say(f"  Success Rate: {100.0 * passed / total if total else 0.0:.1f}%")
        self.say()
        self.say("Performance Metrics:")
        self.say(f"  Throughput: {f'{tp:.1f}' if tp is not None else '-'} data points/sec "
                 f"(target: {THROUGHPUT_FLOOR:.0f})")
        self.say(f"  Average Latency: {f'{avg:.2f}' if avg is not None else '-'}ms "
                 f"(target: <{LATENCY_CEILING_MS:.0f}ms)")
        self.say(f"  95th Percentile Latency: {f'{p95:.2f}' if p95 is not None else '-'}ms")
        self.say()
        self.say("Individual Test Results:")
        for r in self.results:
            self.say(f"  {self.mark(r.passed)} {r.name}: {r.figure}")
        self.say(rule)
        self.say(f"{passed}/{total} tests passed in {seconds:.0f} s")

    async def cleanup(self) -> None:
        for w in self.workers:
            await asyncio.to_thread(w.stop)
        if self.http is not None:
            await self.http.close()
        if self.conn is not None:
            if not self.keep:
                try:
                    if self.conn.is_closed():  # the database restarted under us: a new connection to clean up
                        self.conn = await asyncpg.connect(**self.settings.postgres.connect_kwargs(), timeout=10)
                    await self.conn.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
                except Exception as exc:
                    self.say(f"note: could not drop schema {self.schema}: {exc}")
            await self.conn.close()
        if self.topics_created and not self.keep:
            try:
                await self.delete_kafka_state()
            except Exception as exc:
                self.say(f"note: could not delete the self-test's topics or groups: {exc!r}")
        failed = any(not r.passed for r in self.results)
        if self.keep or (failed and self.workers):
            shutil.rmtree(self.workdir / f"{self.app_id}-data", ignore_errors=True)
            if self.keep:
                self.say(f"kept: topics *{self.suffix}, schema {self.schema}, logs in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def delete_kafka_state(self) -> None:
        """The topics with our suffix, Faust's internal topics of our app id, and our consumer groups."""
        from aiokafka.protocol.admin import DeleteGroupsRequest

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=15000,
                                    **self.settings.kafka.client_kwargs())
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.endswith(self.suffix) or t.startswith(f"{self.app_id}-")]
            if ours:
                await admin.delete_topics(ours)
            groups = [self.app_id, f"{self.app_id}-validate", f"{self.app_id}-write"]
            for group in groups:  # best effort: a group the broker still sees members of stays
                try:
                    node = await admin.find_coordinator(group)
                    await admin._send_request_to_node(node, DeleteGroupsRequest([group]))
                except Exception:
                    pass
        finally:
            await admin.close()


def main(*, keep: bool = False, throughput_points: int = 20_000, out: TextIO = sys.stdout) -> int:
    settings = get_settings()  # a ConfigError here is reported by the CLI, exit code 2
    # A broker that goes away mid-run makes aiokafka warn in a tight loop; the failed check says why.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    if throughput_points < 1:
        raise ConfigError("--throughput-points must be at least 1")
    return asyncio.run(SelfTest(settings, out=out, keep=keep, throughput_points=throughput_points).run())
