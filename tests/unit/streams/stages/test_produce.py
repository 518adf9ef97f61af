"""The source supervisor without a broker or a provider: scripted sources, a list to send to, a fake sleep.
Retriable failures back off (capped, counted from the last good batch); a non-retriable SourceError marks the
source `failed` and it is not restarted; the error it shows is redacted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from producers.base import Source
from streams import redact
from streams.errors import SourceError
from streams.models import MarketDataPoint
from streams.stages.produce import SourceSupervisor
from streams.stages.publish import Outgoing

FAKE_KEY = "fk_live_9f8e7d6c5b4a3210"  # a made-up provider key


def point(i: int) -> MarketDataPoint:
    return MarketDataPoint(symbol="AAPL", timestamp=datetime(2024, 1, 2, tzinfo=UTC), source="scripted", price=1.0 + i)


class Scripted(Source):
    """Each fetch plays the next script: a list of items, each a batch size to yield or an exception to raise."""

    name = "scripted"

    def __init__(self, scripts: list[list[Any]]) -> None:
        self.scripts = scripts
        self.fetches = 0

    async def fetch(self, session: aiohttp.ClientSession | None) -> AsyncIterator[list[Any]]:
        self.fetches += 1
        script = self.scripts.pop(0) if self.scripts else [asyncio.CancelledError()]
        for item in script:
            if isinstance(item, BaseException):
                raise item
            yield [point(i) for i in range(item)]


class NoSession:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class Harness:
    def __init__(self, source: Source, cap: float = 300.0) -> None:
        self.sent: list[Outgoing] = []
        self.sleeps: list[float] = []
        self.sup = SourceSupervisor([source], send=self.send, topic_for=lambda n: f"raw.{n}", session=NoSession,
                                    sleep=self.sleep, initial_backoff=1.0, max_backoff=cap)

    async def send(self, messages: Sequence[Outgoing]) -> None:
        self.sent.extend(messages)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def client_error_with_key() -> aiohttp.ClientResponseError:
    """What aiohttp raises for e.g. too many redirects: its str() carries the full URL, key included."""
    url = URL(f"https://provider.example/query?symbol=AAPL&apikey={FAKE_KEY}")
    info = aiohttp.RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    return aiohttp.ClientResponseError(info, (), status=502, message="Bad Gateway")


async def test_retriable_failures_back_off_capped_and_reset_after_a_good_batch() -> None:
    boom = SourceError("provider down", retriable=True)
    source = Scripted([[boom], [boom], [boom], [boom], [2, boom], [boom]])
    h = Harness(source, cap=5.0)
    with pytest.raises(asyncio.CancelledError):
        await h.sup._run(source)
    assert source.fetches == 7 and len(h.sent) == 2
    # 1, 2, 4, then capped at 5 (each x0.5..1.5 jitter, never above the cap); after a good batch: 1 again
    lo_hi = [(0.5, 1.5), (1.0, 3.0), (2.0, 5.0), (2.5, 5.0), (0.5, 1.5), (1.0, 3.0)]
    assert len(h.sleeps) == 6 and all(lo <= s <= hi for s, (lo, hi) in zip(h.sleeps, lo_hi, strict=True))
    (st,) = h.sup.status()
    assert st["failures"] == 6 and st["sent"] == 2 and st["last_error"] == "SourceError: provider down"


async def test_a_non_retriable_error_marks_the_source_failed_and_it_stays_down() -> None:
    source = Scripted([[1, SourceError("invalid API key", retriable=False)]])
    h = Harness(source)
    await h.sup._run(source)  # returns: not retried
    assert h.sleeps == [] and source.fetches == 1
    (st,) = h.sup.status()
    assert st["state"] == "failed" and st["last_error"] == "SourceError: invalid API key" and st["sent"] == 1
    await h.sup.reconcile(leader=True)
    assert h.sup.tasks == {} and source.fetches == 1  # not restarted
    await h.sup.stop()
    assert h.sup.status()[0]["state"] == "failed"


async def test_an_unexpected_exception_is_restarted() -> None:
    source = Scripted([[KeyError("parser bug")], [1]])
    h = Harness(source)
    with pytest.raises(asyncio.CancelledError):
        await h.sup._run(source)
    assert source.fetches == 3 and len(h.sleeps) == 1 and len(h.sent) == 1


async def test_a_finite_source_that_ends_is_finished_not_replayed_again() -> None:
    source = Scripted([[2, 3]])
    source.finite = True  # a file replay
    h = Harness(source)
    await h.sup._run(source)  # returns after the one pass
    assert source.fetches == 1 and len(h.sent) == 5 and h.sleeps == []
    assert h.sup.status()[0]["state"] == "finished"
    await h.sup.reconcile(leader=True)
    assert h.sup.tasks == {} and source.fetches == 1  # not started again
    await h.sup.stop()
    assert h.sup.status()[0]["state"] == "finished"


async def test_an_endless_source_whose_fetch_ends_is_started_again() -> None:
    source = Scripted([[2], [1]])  # then the script raises CancelledError: the test's way out
    h = Harness(source)
    with pytest.raises(asyncio.CancelledError):
        await h.sup._run(source)
    assert source.fetches == 3 and len(h.sent) == 3


@pytest.mark.parametrize("exc", [
    client_error_with_key(),
    RuntimeError(f"upstream said: bad key {FAKE_KEY}"),  # no pattern: the registered secret value
    ValueError(f"Authorization: Bearer {FAKE_KEY}"),
])
async def test_a_secret_in_an_exception_never_reaches_health(exc: BaseException) -> None:
    from streams.web.health import health_report

    redact.register(FAKE_KEY)
    try:
        source = Scripted([[exc]])
        h = Harness(source)
        with pytest.raises(asyncio.CancelledError):
            await h.sup._run(source)
        body = health_report(stages={}, sources=h.sup.status(), lag={}, now=0.0, stuck_after=300.0,
                             recovering=False, leader=True, worker="w")
        text = orjson.dumps(body).decode()
        assert body["sources"][0]["failures"] == 1 and body["sources"][0]["last_error"]
        assert FAKE_KEY not in text and FAKE_KEY[:12] not in text
        assert "***" in body["sources"][0]["last_error"]
    finally:
        redact.forget_all()


def test_an_enabled_source_that_cannot_start_is_shown_as_failed_with_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source enabled without its key was logged once and then absent from /health, the dashboard and
    /metrics, as if it had never been asked for."""
    from producers.registry import enabled_sources
    from streams.settings import SourcesSettings

    monkeypatch.delenv("FINNHUB_API_KEY", raising=False)
    s = SourcesSettings()
    s.finnhub.enabled = True
    not_started: dict[str, str] = {}
    assert enabled_sources(s, not_started=not_started) == []
    assert "FINNHUB_API_KEY" in not_started["finnhub"]
    sup = SourceSupervisor([], send=lambda *a: None, topic_for=lambda n: f"raw.{n}",  # type: ignore[arg-type]
                           not_started=not_started)
    (st,) = sup.status()
    assert (st["source"], st["kind"], st["state"]) == ("finnhub", "not started", "failed")
    assert "FINNHUB_API_KEY" in st["last_error"]
