"""The one source contract. A source knows its provider and nothing of Kafka: it yields records, the
runner (producers/runner.py, or the worker's leader-only task in streams/produce.py) sends them to
raw.<name>. The HTTP session is injected, so tests point a source at a local server instead of patching.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
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
