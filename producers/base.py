"""The one source contract. A source knows its provider and nothing of Kafka: it yields records, the
runner (producers/runner.py, or the worker's leader-only task in streams/produce.py) sends them to
raw.<name>. The HTTP session is injected, so tests point a source at a local server instead of patching.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

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
