"""The one source contract. A source knows its provider and nothing of Kafka: it yields records, the
runner (producers/runner.py, or the worker's leader-only task in streams/stages/produce.py) sends them to
raw.<name>. The HTTP session is injected, so tests point a source at a local server instead of patching.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from streams.errors import SourceError
from streams.models import MarketDataPoint, unreadable_json
from streams.redact import redact


@dataclass(frozen=True, slots=True)
class RawRecord:
    """Bytes as they go on the raw topic (the simulated feed uses it to inject deliberately bad records)."""

    key: bytes
    value: bytes


Record = MarketDataPoint | RawRecord


class RepeatedFailures:
    """A call that fails round after round (a provider down) is warned when its cause changes, every
    `again_seconds` while it lasts, and again after a success, not at every round: an outage of two symbols polled
    every 10 s was 12 lines a minute, while /health says the source is failing all along."""

    again_seconds = 300.0

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.last: dict[str, tuple[str, float]] = {}  # key (a symbol, an endpoint's) -> (cause last warned, when)

    def failed(self, key: str, cause: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self.last.get(key)
        if last is not None and last[0] == cause and now - last[1] < self.again_seconds:
            self.log.debug(message, *args)
            return
        self.last[key] = (cause, now)
        self.log.warning(message, *args)

    def succeeded(self, key: str) -> None:
        self.last.pop(key, None)


def unreadable_record(source: str, symbol: str, *, where: str, content: str, error: str) -> RawRecord:
    """What a source read and could not make a record of, for the dead-letter topic (rule source.unreadable,
    with `error` as the reason) rather than a log line: streams.models.unreadable_json."""
    return RawRecord(symbol.encode(), unreadable_json(source, symbol, where=where, content=content, error=error))


def encode(record: Record) -> RawRecord:
    if isinstance(record, RawRecord):
        return record
    return RawRecord(record.symbol.encode(), record.to_json())


class Source(ABC):
    name: str
    # A finite source (a file replay) ends when its fetch returns: the supervisor marks it finished instead of
    # starting it again. Others are restarted whenever their fetch ends.
    finite: bool = False
    # A source that yields after every good round (an empty batch when nothing was new) says by it that it works
    # again: after a failure the supervisor shows it `failing` until then. Any other (a stream, which may stay
    # quiet for hours) counts as running again as soon as it is restarted.
    yields_every_round: bool = False

    @abstractmethod
    def fetch(self, session: aiohttp.ClientSession | None) -> AsyncIterator[list[Record]]:
        """Yield batches of records, pacing itself (poll interval, rate limit) between batches."""


MAX_CAUSE_CHARS = 300  # of the last failed call's error, in a failed round's message


class PollingSource(Source):
    """A source that asks its provider every `settings.interval_seconds` (measured from the start of a round,
    so a slow provider does not stretch the period). Subclasses implement one round in `poll_once`.

    A round's calls are counted: `poll_once` catches each call's error, so one bad symbol never stops the others,
    and reports it with `call_failed(exc)`; a call that got its answer (data, or a valid empty one) reports
    `call_succeeded()`. A round in which calls failed and none succeeded is the provider failing (no network, a
    refused key, an outage): `fetch` raises a retriable SourceError saying how many failed and the last cause, so
    the supervisor shows the source `failing` and restarts it with backoff. A round of some failures and some
    successes is not a failed round (its failures are logged per call, as ever). Neither failure nor success:
    throttling (429, a budget spent: the provider works, it asks us to wait), a function dropped as not in the
    plan, a round of no calls at all. After every good round `fetch` yields, an empty batch when nothing was new,
    so the supervisor sees that the source works again."""

    settings: Any
    yields_every_round = True
    # The current round's calls (class defaults: subclasses need not call an __init__ of ours).
    _calls_failed: int = 0
    _calls_succeeded: int = 0
    _last_failure: str | None = None

    @abstractmethod
    async def poll_once(self, session: aiohttp.ClientSession) -> list[MarketDataPoint]: ...

    def redact(self, text: str) -> str:
        """A message without secrets; a source with a key of its own redacts it too (overridden)."""
        return redact(text)

    def call_succeeded(self) -> None:
        """One call of this round got its answer: data, a valid empty answer (nothing new, the market closed), or
        an unknown symbol the provider explains (the provider answered and the key works; the symbol is counted
        in `unknown` and warned about by the source, a configuration matter rather than a provider failing)."""
        self._calls_succeeded += 1

    def call_failed(self, exc: BaseException) -> None:
        """One call of this round failed (the source has logged it). Throttling is not counted (`throttled`)."""
        if throttled(exc):
            return
        self._calls_failed += 1
        # As the connectors log it, without the URL's query string (the symbol, dates, a key given as a parameter).
        text = _URL_QUERY.sub(r"\1?...", f"{type(exc).__name__}: {exc}")
        self._last_failure = self.redact(text)[:MAX_CAUSE_CHARS]

    def _start_round(self) -> None:
        self._calls_failed = self._calls_succeeded = 0
        self._last_failure = None

    def _failed_round(self) -> SourceError | None:
        """The round's error when at least one call failed and none succeeded, else None."""
        if self._calls_failed == 0 or self._calls_succeeded > 0:
            return None
        n = self._calls_failed
        return SourceError(f"{self.name}: {'the one call' if n == 1 else f'all {n} calls'} of the round failed; "
                           f"the last: {self._last_failure}", retriable=True)

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        own = session is None
        session = session or aiohttp.ClientSession()
        try:
            while True:
                started = time.monotonic()
                self._start_round()
                points = await self.poll_once(session)
                failed = None if points else self._failed_round()
                if failed is not None:
                    raise failed
                yield list(points)  # empty too: the round went well, with nothing new
                await asyncio.sleep(max(0.0, self.settings.interval_seconds - (time.monotonic() - started)))
        finally:
            if own:
                await session.close()


class ConnectionRun:
    """A stream's failed connections in a row. A connection fails when it does not open, or ends before it
    delivered a message and before it stayed open `steady_seconds` (a quiet feed a server closes after an hour is
    no failure). At `limit` failures in a row `ended` returns a retriable SourceError naming the last cause: the
    stream raises it, so the supervisor shows it `failing` in /health with that cause and restarts it with its
    backoff. A stream that only reconnected (a refused key, a wrong URL) would show `running` forever."""

    def __init__(self, name: str, limit: int = 5, steady_seconds: float = 60.0) -> None:
        self.name = name
        self.limit = limit
        self.steady_seconds = steady_seconds
        self.failed = 0
        self._opened_at: float | None = None
        self._delivered = False

    def opened(self) -> None:
        self._opened_at = time.monotonic()

    def delivered(self) -> None:
        self._delivered = True

    def ended(self, cause: str) -> SourceError | None:
        """The connection is over (`cause`: why, already redacted): None, or the error that ends the stream."""
        good = self._delivered or (self._opened_at is not None
                                   and time.monotonic() - self._opened_at >= self.steady_seconds)
        self._opened_at, self._delivered = None, False
        if good:
            self.failed = 0
            return None
        self.failed += 1
        if self.failed < self.limit:
            return None
        n, self.failed = self.failed, 0
        return SourceError(f"{self.name}: {n} connections in a row failed; the last: {cause[:MAX_CAUSE_CHARS]}",
                           retriable=True)


_THROTTLED = re.compile(r"\b(?:HTTP 429|429 Too Many Requests)\b", re.IGNORECASE)


def throttled(exc: BaseException) -> bool:
    """A provider asking us to slow down (HTTP 429, after producers/http.py's or yfinance's retries): not a failure
    of the source, which works and waits for its budget. The words are the ones http.py and yahoo.py use."""
    return bool(_THROTTLED.search(str(exc)))


class BadEpoch(ValueError):
    """A provider epoch that is no instant datetime can hold (NaN, infinite, beyond year 1..9999, not a number).

    One exception type whatever went wrong inside (datetime raises OverflowError, OSError or ValueError
    depending on the value and the platform), so a caller skips that one item instead of its whole round."""


def from_epoch(value: float | int | str, *, millis: bool = False) -> datetime:
    """Provider epoch (seconds, or milliseconds) to an aware UTC datetime; BadEpoch if it is none."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadEpoch(f"epoch is a {type(value).__name__}, not a number")
    try:
        seconds = float(value) / 1000.0 if millis else float(value)
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise BadEpoch(f"epoch {str(value)[:40]!r}{' ms' if millis else ''} is no instant in range: {exc}") from None


def parse_iso(value: str) -> datetime:
    """ISO 8601 (with Z or an offset; naive means UTC) to an aware UTC datetime."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class SeenIds:
    """Bounded memory of item ids already yielded, so a poll over an overlapping window repeats nothing."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._order: deque[str] = deque(maxlen=maxlen)
        self._set: set[str] = set()

    def add(self, key: str) -> bool:
        """True if the key is new (and remembers it)."""
        if key in self._set:
            return False
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(key)
        self._set.add(key)
        return True

    def new(self, points: Iterable[MarketDataPoint]) -> list[MarketDataPoint]:
        return [p for p in points if self.add(f"{p.symbol}|{p.data_type}|{p.item_id}")]


_URL_QUERY = re.compile(r"(https?://[^\s?'\"]*)\?[^\s'\"]*")
_LONG_NUMBER = re.compile(r"\d{4,}")


def failure_cause(exc: BaseException, symbol: str | None = None) -> str:
    """What went wrong, without what changes from call to call: the symbol, a URL's query string (dates,
    tokens), long numbers (epochs, ports, ids). A source warns once per cause and counts every occurrence, so
    a failure repeating every poll is one log line, yet a new kind of failure is still seen. An exception
    with a `cause` attribute (FinnhubUnexpected, say) names it itself."""
    named = getattr(exc, "cause", None)
    text = named if isinstance(named, str) and named else str(exc)
    text = _URL_QUERY.sub(r"\1?...", text)
    if symbol:
        text = re.sub(rf"\b{re.escape(symbol)}\b", "{symbol}", text, flags=re.IGNORECASE)
    return f"{type(exc).__name__}: {_LONG_NUMBER.sub('#', text)[:200]}"
