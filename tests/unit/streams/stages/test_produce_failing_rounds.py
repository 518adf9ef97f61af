"""A polling source whose every call of a round fails is a failing source (producers/base.py PollingSource):
the supervisor counts it, shows it `failing` with a redacted last error and restarts it with backoff, and a
later good round, data or not, shows it `running` again. A round with a good call, or only throttled calls, is
not a failure. The source is scripted: per round, each symbol's call answers, comes back empty, or fails."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from producers.base import PollingSource
from streams.errors import SourceError
from streams.models import MarketDataPoint
from streams.stages.produce import SourceSupervisor
from streams.stages.publish import Outgoing

pytestmark = pytest.mark.timeout(30)  # without the fix a failing source is polled forever

FAKE_KEY = "fk_live_9f8e7d6c5b4a3210"  # a made-up provider key, in no pattern streams/redact.py knows


def dns_error(symbol: str) -> OSError:
    """What a call without network says: the URL with its query, and (badly behaved) the key itself."""
    return OSError(f"Cannot connect to host provider.example:443 for https://provider.example/q?symbol={symbol}"
                   f"&sig=abc123 [Name or service not known] key {FAKE_KEY}")


THROTTLED = SourceError("gave up after 5 attempts: 429 Too Many Requests from https://provider.example/q?...",
                        retriable=True)


class Rounds(PollingSource):
    """Each round plays the next script: symbol -> "ok" (a point), "empty" (a valid empty answer) or an exception,
    reported to the round's count as the connectors do. No script left: CancelledError (the supervisor stops)."""

    name = "scripted"

    def __init__(self, rounds: list[dict[str, Any]], on_round: Callable[[], None] = lambda: None) -> None:
        self.settings = SimpleNamespace(interval_seconds=0.0)
        self.rounds = rounds
        self.on_round = on_round

    def redact(self, text: str) -> str:  # as the connectors with a key of their own do
        return text.replace(FAKE_KEY, "***")

    async def poll_once(self, session: aiohttp.ClientSession) -> list[MarketDataPoint]:
        self.on_round()
        if not self.rounds:
            raise asyncio.CancelledError
        out: list[MarketDataPoint] = []
        for symbol, outcome in self.rounds.pop(0).items():
            try:
                if isinstance(outcome, Exception):
                    raise outcome
                if outcome == "ok":
                    out.append(MarketDataPoint(symbol=symbol, timestamp=datetime(2024, 1, 2, tzinfo=UTC),
                                               source="scripted", price=1.0))
                self.call_succeeded()
            except (SourceError, OSError) as exc:
                self.call_failed(exc)
        return out


class Harness:
    def __init__(self, source: PollingSource) -> None:
        self.sent: list[Outgoing] = []
        self.sleeps: list[tuple[float, dict[str, Any]]] = []  # each backoff wait, with the status during it
        self.sup = SourceSupervisor([source], send=self.send, topic_for=lambda n: f"raw.{n}", sleep=self.sleep,
                                    initial_backoff=1.0, max_backoff=5.0)

    async def send(self, messages: Sequence[Outgoing]) -> None:
        self.sent.extend(messages)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append((seconds, self.status()))

    def status(self) -> dict[str, Any]:
        (st,) = self.sup.status()
        return st


async def test_every_call_failing_shows_the_source_failing_until_a_good_round() -> None:
    failing = {"AAA": dns_error("AAA"), "BBB": dns_error("BBB")}
    states_at_round: list[str] = []
    source = Rounds([dict(failing), dict(failing), {"AAA": "empty", "BBB": "empty"}],
                    on_round=lambda: states_at_round.append(h.status()["state"]))
    h = Harness(source)
    with pytest.raises(asyncio.CancelledError):
        await h.sup._run(source)
    # two failed rounds: counted, backed off (1 s then 2 s, x0.5..1.5 jitter), shown failing during the waits
    assert len(h.sleeps) == 2 and 0.5 <= h.sleeps[0][0] <= 1.5 and 1.0 <= h.sleeps[1][0] <= 3.0
    first, second = h.sleeps[0][1], h.sleeps[1][1]
    assert (first["state"], first["failures"], second["state"], second["failures"]) == ("failing", 1, "failing", 2)
    error = first["last_error"]
    assert error and error.startswith("SourceError: scripted: all 2 calls of the round failed; the last: OSError")
    assert "Name or service not known" in error
    assert FAKE_KEY not in error and "symbol=" not in error and "sig=" not in error  # redacted: no key, no query
    # restarted, it stays failing until a round goes well; an empty good round is enough to be running again
    assert states_at_round == ["running", "failing", "failing", "running"]
    final = h.status()
    assert (final["state"], final["failures"], final["sent"]) == ("running", 2, 0)
    assert h.sup.states["scripted:Rounds"].failures_in_row == 0  # the next failure backs off from 1 s again


async def test_one_failing_and_one_good_symbol_stays_running() -> None:
    source = Rounds([{"AAA": dns_error("AAA"), "BBB": "ok"}, {"AAA": dns_error("AAA"), "BBB": "empty"}])
    h = Harness(source)
    with pytest.raises(asyncio.CancelledError):
        await h.sup._run(source)
    st = h.status()
    assert h.sleeps == [] and (st["state"], st["failures"], st["last_error"], st["sent"]) == ("running", 0, None, 1)


async def test_a_throttled_round_is_not_a_failure() -> None:
    source = Rounds([{"AAA": THROTTLED, "BBB": THROTTLED}, {"AAA": THROTTLED, "BBB": "ok"}])
    h = Harness(source)
    with pytest.raises(asyncio.CancelledError):
        await h.sup._run(source)
    st = h.status()
    assert h.sleeps == [] and (st["state"], st["failures"], st["last_error"]) == ("running", 0, None)


async def test_a_round_of_throttled_and_failed_calls_fails_on_the_failures() -> None:
    source = Rounds([{"AAA": THROTTLED, "BBB": dns_error("BBB")}])
    h = Harness(source)
    with pytest.raises(asyncio.CancelledError):
        await h.sup._run(source)
    assert len(h.sleeps) == 1 and "the one call of the round failed" in h.sleeps[0][1]["last_error"]
