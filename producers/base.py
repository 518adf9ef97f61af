"""The one source contract. A source knows its provider and nothing of Kafka: it yields records, the
runner (producers/runner.py, or the worker's leader-only task in streams/stages/produce.py) sends them to
raw.<name>. The HTTP session is injected, so tests point a source at a local server instead of patching.
"""

from __future__ import annotations

import asyncio
import re
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp

from streams.models import MarketDataPoint


@dataclass(frozen=True, slots=True)
class RawRecord:
    """Bytes as they go on the raw topic (the simulated feed uses it to inject deliberately bad records)."""

    key: bytes
    value: bytes


Record = MarketDataPoint | RawRecord


def encode(record: Record) -> RawRecord:
    if isinstance(record, RawRecord):
        return record
    return RawRecord(record.symbol.encode(), record.to_json())


class Source(ABC):
    name: str
    # A finite source (a file replay) ends when its fetch returns: the supervisor marks it finished instead of
    # starting it again. Others are restarted whenever their fetch ends.
    finite: bool = False

    @abstractmethod
    def fetch(self, session: aiohttp.ClientSession | None) -> AsyncIterator[list[Record]]:
        """Yield batches of records, pacing itself (poll interval, rate limit) between batches."""


class PollingSource(Source):
    """A source that asks its provider every `settings.interval_seconds` (measured from the start of a round,
    so a slow provider does not stretch the period). Subclasses implement one round in `poll_once`."""

    settings: Any

    @abstractmethod
    async def poll_once(self, session: aiohttp.ClientSession) -> list[MarketDataPoint]: ...

    async def fetch(self, session: aiohttp.ClientSession | None = None) -> AsyncIterator[list[Record]]:
        own = session is None
        session = session or aiohttp.ClientSession()
        try:
            while True:
                started = time.monotonic()
                points = await self.poll_once(session)
                if points:
                    yield list(points)
                await asyncio.sleep(max(0.0, self.settings.interval_seconds - (time.monotonic() - started)))
        finally:
            if own:
                await session.close()


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
