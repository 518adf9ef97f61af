"""The detect stage's wiring (the detectors themselves are tested under tests/unit/streams/anomalies)."""

from __future__ import annotations


def test_the_calendars_prewarmed_are_the_default_the_configured_and_fx() -> None:
    from streams.config import AnomalySettings
    from streams.stages.detect import calendars_in_use

    got = calendars_in_use(AnomalySettings(default_exchange="XNYS", exchanges={"SAP": "XETR", "BMW": "XETR"}))
    assert got == ["XNYS", "XETR", "24/5"]
