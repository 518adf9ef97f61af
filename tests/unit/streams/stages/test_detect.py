"""The detect stage's wiring (the detectors themselves are tested under tests/unit/streams/anomalies)."""

from __future__ import annotations


def test_the_calendars_prewarmed_are_the_default_the_configured_and_fx() -> None:
    from streams.config import AnomalySettings
    from streams.stages.detect import calendars_in_use

    got = calendars_in_use(AnomalySettings(default_exchange="XNYS", exchanges={"SAP": "XETR", "BMW": "XETR"}))
    assert got == ["XNYS", "XETR", "24/5"]


class RefusingStore(dict):
    """A state table whose writes fail until told otherwise, as Faust's does while its changelog topic has no
    metadata yet (TypeError from the producer's partitioner)."""

    refuse = True

    def __setitem__(self, key, value) -> None:
        if self.refuse:
            raise TypeError("'NoneType' object is not iterable")
        super().__setitem__(key, value)


def test_a_store_that_refuses_a_write_does_not_stop_the_stage_and_is_written_again_later() -> None:
    from datetime import UTC, datetime

    from streams.config import AnomalySettings
    from streams.models import MarketDataPoint
    from streams.stages.detect import AnomalyTracker

    store = RefusingStore()
    tracker = AnomalyTracker(AnomalySettings(), 0.0, store)
    for sym in ("AAPL", "MSFT"):
        tracker.detect(MarketDataPoint(symbol=sym, timestamp=datetime(2024, 5, 6, 14, tzinfo=UTC), source="sim",
                                       data_type="trade", price=100.0, volume=1.0))
    assert tracker.save() == 0 and tracker.failed_saves == 1  # no exception out: the batch goes on
    assert tracker.dirty == {"AAPL", "MSFT"} and not store
    store.refuse = False
    assert tracker.save() == 2 and set(store) == {"AAPL", "MSFT"} and not tracker.dirty
