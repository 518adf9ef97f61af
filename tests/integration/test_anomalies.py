"""Anomaly detection in the running stream: a decimal-shift fat finger after a restart is still caught
(the detectors' state came back from the changelog), it is flagged on the clean row and announced on
ticks.anomalies; with quarantine on for the source it goes to ticks.rejected instead."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from producers.simulated import SimulatedSource
from streams.settings import SimulatedSourceSettings
from streams.tools.measure import read_topic
from tests.integration.conftest import ensure_topics_for, wait_until


def warmup_and_fat_finger(n: int = 300) -> tuple[list[bytes], bytes, str]:
    src = SimulatedSource(SimulatedSourceSettings(symbols=["ZZZ"], invalid_ratio=0.0, seed=4), run_id="an")
    warm = [src.point(datetime.now(UTC)).to_json() for _ in range(n)]
    last = src.point(datetime.now(UTC))
    bad = last.model_copy(update={"data_type": "trade", "price": round(last.price * 10, 2), "item_id": "fat-finger",
                                  "bid": None, "ask": None})
    return warm, bad.to_json(), "fat-finger"


async def rows(pg, schema: str, where: str = "true") -> int:
    try:
        return await pg.fetchval(f"SELECT count(*) FROM {schema}.market_data WHERE {where}")
    except Exception:
        return 0


async def test_fat_finger_flagged_after_restart(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    raw = iso.raw_topic()
    warm, bad, item = warmup_and_fat_finger()
    for v in warm:
        await producer.send(raw, v, key=b"ZZZ")
    await producer.flush()
    w1 = workers("w1")

    async def warmed() -> bool:
        return await rows(pg, iso.schema) >= len(warm)

    await wait_until(warmed, 90, "the warm-up rows")
    w1.stop()  # a clean stop saves the detector state to its changelog
    w2 = workers("w2")
    await producer.send_and_wait(raw, bad, key=b"ZZZ")

    async def flagged() -> list:
        try:
            return await pg.fetch(f"SELECT flags FROM {iso.schema}.market_data WHERE item_id = $1", item)
        except Exception:
            return []

    (row,) = await wait_until(flagged, 90, "the fat-finger row")
    assert any(f.startswith("anomaly:") for f in row["flags"]), row["flags"]

    async def announced() -> list:
        recs = await read_topic(iso.bootstrap, iso.topic("anomalies"))
        return [orjson.loads(r.value) for r in recs if b"fat-finger" in r.value]

    events = await wait_until(announced, 30, "an anomaly event")
    e = events[0]
    assert e["symbol"] == "ZZZ" and e["record"]["item_id"] == item
    assert e["score"] >= e["threshold"] and e["detector"]
    def counted() -> bool:  # the cluster table gets each worker's counts every 0.5 s
        status, m = w2.get("/pipeline/metrics")
        return status == 200 and bool(m["anomalies_by_detector"].get("simulated"))

    await wait_until(counted, 30, "the anomaly counted in /pipeline/metrics")


async def test_quarantine_sends_anomalous_ticks_to_the_dead_letter_topic(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    raw = iso.raw_topic()
    warm, bad, _ = warmup_and_fat_finger()
    for v in [*warm, bad]:
        await producer.send(raw, v, key=b"ZZZ")
    await producer.flush()
    workers(TICKFLOW_VALIDATION__QUARANTINE_SOURCES='["simulated"]')

    async def dead() -> list:
        recs = await read_topic(iso.bootstrap, iso.topic("rejected"))
        return [r for r in recs if b"fat-finger" in r.value]

    (rec,) = await wait_until(dead, 90, "the quarantined record")
    h = {k: v.decode() for k, v in rec.headers}
    assert h["tickflow.rule"].startswith("anomaly.") and rec.value == bad
    assert await rows(pg, iso.schema, "item_id = 'fat-finger'") == 0


async def test_a_feed_that_goes_quiet_is_reported_stale(iso, workers, producer, pg) -> None:
    import asyncio

    await ensure_topics_for(iso)
    w = workers()
    # A feed is judged stale only while its market is open: a crypto pair trades 24x7, so the test does not
    # depend on the time of day it runs at (an equity symbol is never stale at night).
    symbol = "QUIET-USD"
    src = SimulatedSource(SimulatedSourceSettings(symbols=[symbol], invalid_ratio=0.0, seed=8), run_id="st")
    for _ in range(80):  # a live feed at ~20 updates/s, then silence
        await producer.send(iso.raw_topic(), src.point(datetime.now(UTC)).to_json(), key=symbol.encode())
        await asyncio.sleep(0.05)
    await producer.flush()

    def stale() -> list:
        _, h = w.get("/health")
        return [f for f in (h or {}).get("stale_feeds", []) if f["symbol"] == symbol]

    (feed,) = await wait_until(stale, 60, f"{symbol} reported stale in /health")
    assert feed["source"] == "simulated" and "no update" in feed["message"]

    async def announced() -> list:
        recs = await read_topic(iso.bootstrap, iso.topic("anomalies"))
        return [e for e in (orjson.loads(r.value) for r in recs) if e["kind"] == "feed" and e["symbol"] == symbol]

    (event,) = await wait_until(announced, 30, "a feed-level anomaly event")
    assert event["score"] > event["threshold"]
