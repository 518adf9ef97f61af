"""Anomaly detection inside the validate stage (streams/stages/validate.py calls it per batch).

Reads: the points of a batch that passed the rules. Writes: flags on those points (they go on to
ticks.clean), anomaly events for ticks.anomalies (detector, score, threshold, the record), and the
per-symbol detector state in the `anomaly_state` table.

The detectors (streams/anomalies/detectors.py) are plain classes; this module only keeps their state. The table is
keyed by symbol and global (every worker reads the whole changelog), so whichever worker the validate
group hands a symbol's partition to finds the symbol's state; it is recovered from its changelog after a
restart, before the validate stage starts. Suites are kept in memory between batches and saved at most every
`anomaly_state_flush_seconds` per symbol (the state is a few KB: saving it on every record would
multiply the changelog traffic), so after a crash a symbol's detectors resume from a state at most that
old, and the records replayed from the last committed offset warm them up again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import faust

from streams import anomalies, calendars
from streams.anomalies import Anomaly, AnomalySettings, DetectorSuite
from streams.app import app, internal_topic_configs, settings
from streams.models import MarketDataPoint
from streams.stages.topics import catalog

logger = logging.getLogger(__name__)

anomaly_state = app.GlobalTable(
    "anomaly_state",
    default=None,
    partitions=catalog.by_role("raw")[0].partitions,
    use_partitioner=True,
    schema=faust.Schema(key_type=str, key_serializer="raw", value_serializer="json"),
    extra_topic_configs=internal_topic_configs(settings),
    help="Per-symbol detector state: {source: DetectorSuite.to_state()}.",
)


class AnomalyTracker:
    """The detector suites of the symbols this worker sees, kept in memory and saved to `store` (the
    anomaly_state table in the worker; a dict in a test)."""

    def __init__(self, anomaly_settings: AnomalySettings, flush_seconds: float,
                 store: MutableMapping[str, Any]) -> None:
        self.settings = anomaly_settings
        self.store = store
        self.flush_seconds = flush_seconds
        self.suites: dict[str, dict[str, DetectorSuite]] = {}
        self.saved_at: dict[str, float] = {}
        self.dirty: set[str] = set()
        self.arrived_at: dict[str, float] = {}  # wall clock of the last point per symbol
        self.stale_feeds: dict[tuple[str, str], dict[str, Any]] = {}  # (source, symbol) -> what /health shows
        self.failed_saves = 0  # saves the store refused (kept dirty, saved again at the next call)

    def _suites_for(self, symbol: str) -> dict[str, DetectorSuite]:
        suites = self.suites.get(symbol)
        if suites is None:
            state = self.store.get(symbol) or {}
            suites = {}
            for source, st in state.items():
                try:
                    suites[source] = DetectorSuite.from_state(st, self.settings)
                except Exception:  # state from an older version: start that symbol afresh
                    logger.warning("discarding unreadable detector state for %s/%s", source, symbol)
            self.suites[symbol] = suites
        return suites

    def detect(self, point: MarketDataPoint, now: float | None = None) -> list[Anomaly]:
        """`now`: the wall clock, which a caller with a batch of points reads once for all of them."""
        symbol, source = point.symbol, point.source
        suites = self.suites.get(symbol)
        if suites is None:
            suites = self._suites_for(symbol)
        suite = suites.get(source)
        if suite is None:
            suite = suites[source] = DetectorSuite(self.settings)
        self.dirty.add(symbol)
        self.arrived_at[symbol] = time.time() if now is None else now
        if self.stale_feeds:
            self.stale_feeds.pop((source, symbol), None)
        return suite.update(point)

    def check_stale(self, now: float | None = None, live_within: float = 3600.0) -> list[tuple[str, Anomaly]]:
        """Feed-level staleness for the symbols this worker owns that were live recently (a backfill's
        old timestamps say nothing about a feed). Returns (source, anomaly) pairs, each reported once."""
        now = time.time() if now is None else now
        found = []
        for symbol, suites in self.suites.items():
            if now - self.arrived_at.get(symbol, 0.0) > live_within:
                continue
            for source, suite in suites.items():
                for a in suite.check_stale(datetime.fromtimestamp(now, UTC)):
                    self.stale_feeds[(source, symbol)] = {"source": source, "symbol": symbol, "detector": a.detector,
                                                          "message": a.message, "since": a.record.get("timestamp")}
                    found.append((source, a))
        return found

    def save(self, now: float | None = None, *, force: bool = False) -> int:
        """Write the changed suites to the store; returns how many. A store that refuses a write is not the data's
        fault and must not stop the stage: the worker's table sends each write to its changelog topic, and
        while that topic's metadata is unknown to the producer (a cluster still electing leaders, a broker just
        restarted) Faust raises TypeError. The symbols stay dirty and are saved again at the next call."""
        now = time.monotonic() if now is None else now
        saved = 0
        for symbol in list(self.dirty):
            if force or now - self.saved_at.get(symbol, 0.0) >= self.flush_seconds:
                try:
                    self.store[symbol] = {src: s.to_state() for src, s in self.suites[symbol].items()}
                except Exception as exc:
                    self.failed_saves += 1
                    if self.failed_saves == 1 or self.failed_saves % 100 == 0:
                        logger.warning("detector state not saved (%d times so far): %r; saved again with the "
                                       "next batch", self.failed_saves, exc)
                    break  # the next symbols would meet the same store
                self.saved_at[symbol] = now
                self.dirty.discard(symbol)
                saved += 1
        return saved

    def forget(self) -> None:
        """After a rebalance the table is the truth again: drop the in-memory suites."""
        self.suites.clear()
        self.dirty.clear()
        self.stale_feeds.clear()


def calendars_in_use(anomaly_settings: AnomalySettings) -> list[str | None]:
    """The calendars the detectors will surely ask for: the default, the configured ones, FX's."""
    return list(dict.fromkeys([anomaly_settings.default_exchange, *anomaly_settings.exchanges.values(), "24/5"]))


@app.task
async def prewarm_calendars() -> None:
    """Build the exchange calendars in a thread at start-up, not on the first record that needs one (a 0.4-0.7 s
    stall of the event loop, measured during the self-test)."""
    if settings.validation.detect_anomalies:
        logger.info("anomaly detectors: %s", f"compiled with mypyc ({anomalies.NATIVE})" if anomalies.NATIVE
                    else "Python (no compiled build of these sources: dev/build_detectors.py)")
        await asyncio.to_thread(calendars.prewarm, calendars_in_use(settings.anomalies))


def event_for(anomaly: Anomaly, source: str) -> dict[str, Any]:
    return {**anomaly.to_dict(), "source": source, "detected_at": time.time()}
