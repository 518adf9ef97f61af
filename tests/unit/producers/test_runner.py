"""producers/runner.py: a source run outside a worker (`python -m producers`) outlives a failed round."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from producers import runner as runner_mod
from producers.base import Source
from streams.catalog import load_catalog
from streams.errors import SourceError
from streams.models import MarketDataPoint
from streams.settings import load_settings


class Flaky(Source):
    """Fails its first round (every call failed), then delivers one point per round."""

    name = "simulated"

    def __init__(self, error: SourceError) -> None:
        self.error = error
        self.starts = 0

    async def fetch(self, session: Any) -> AsyncIterator[list[Any]]:
        self.starts += 1
        if self.starts == 1:
            raise self.error
        while True:
            yield [MarketDataPoint(symbol="AAPL", timestamp=datetime.now(UTC), source="simulated", price=1.0)]


class FakeProducer:
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    counts: list[int] = []

    async def send_batch(producer: Any, topic: str, records: list[Any]) -> int:
        counts.append(len(records))
        return len(records)

    monkeypatch.setattr(runner_mod, "new_producer", lambda settings: FakeProducer())
    monkeypatch.setattr(runner_mod, "send_batch", send_batch)
    monkeypatch.setattr(runner_mod, "RETRY_INITIAL_SECONDS", 0.01)
    return counts


async def test_a_failed_round_is_retried_and_the_run_goes_on(sent: list[int]) -> None:
    source = Flaky(SourceError("simulated: all 3 calls of the round failed", retriable=True))
    runner = runner_mod.SourceRunner(load_settings(), load_catalog())
    assert await runner.run(source, limit=2) == 2
    assert source.starts == 2 and sum(sent) == 2


async def test_an_error_that_is_not_retriable_ends_the_run(sent: list[int]) -> None:
    source = Flaky(SourceError("refused", retriable=False))
    with pytest.raises(SourceError):
        await runner_mod.SourceRunner(load_settings(), load_catalog()).run(source, limit=2)
    assert source.starts == 1
