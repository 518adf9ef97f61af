"""The archive stage in a real worker (issue 14): what validate flags (ticks.anomalies) and refuses
(ticks.rejected) also lands in PostgreSQL's anomaly_events and dead_letters, the original bytes kept, and a
replay of the dead-letter topic stores nothing twice."""

from __future__ import annotations

import orjson

from streams.tools.measure import read_topic
from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.test_anomalies import warmup_and_fat_finger

INVALID = [b"not json at all \x00\xff", b'{"symbol": "BAD", "source": "simulated", "price": "abc"}',
           b'{"symbol": "BAD"}']


async def fetch(pg, sql: str, *args: object) -> list:
    try:
        return await pg.fetch(sql, *args)
    except Exception:  # the worker has not migrated the schema yet
        return []


async def test_worker_archives_anomalies_and_dead_letters(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    raw, q = iso.raw_topic(), iso.schema
    warm, bad, item = warmup_and_fat_finger()
    for v in warm:
        await producer.send(raw, v, key=b"ZZZ")
    sent_invalid = {}
    for v in INVALID:
        md = await (await producer.send(raw, v, key=b"BAD"))
        sent_invalid[(md.partition, md.offset)] = v
    await producer.send(raw, bad, key=b"ZZZ")
    await producer.flush()
    w = workers()

    async def anomalies() -> list:
        return await fetch(pg, f"SELECT * FROM {q}.anomaly_events WHERE record->>'item_id' = $1", item)

    stored = await wait_until(anomalies, 180, "the fat finger in anomaly_events")
    assert all((e["symbol"], e["source"]) == ("ZZZ", "simulated") and e["score"] >= e["threshold"] for e in stored)

    async def announced() -> set[str]:  # every event the detectors sent about it, one row each
        recs = await read_topic(iso.bootstrap, iso.topic("anomalies"))
        return {e["detector"] for e in (orjson.loads(r.value) for r in recs) if e["record"].get("item_id") == item}

    detectors = await announced()
    stored = await wait_until(_matching(anomalies, len(detectors)), 60, "every event stored")
    assert sorted(e["detector"] for e in stored) == sorted(detectors)

    async def dead() -> list:
        return await fetch(pg, f"SELECT * FROM {q}.dead_letters WHERE symbol = 'BAD' OR key = 'BAD'::bytea")

    async def all_dead() -> list:
        rows = await dead()
        return rows if len(rows) >= len(INVALID) else []

    got = await wait_until(all_dead, 60, "the invalid records in dead_letters")
    assert {(r["partition"], r["offset"]): bytes(r["value"]) for r in got} == sent_invalid
    assert all(r["topic"] == raw and r["source"] == "simulated" and r["stage"] == "validate" and r["rule"]
               for r in got)

    # A replay of the dead-letter topic (as after a crash before the commit) plus one new record behind it on the
    # same partition: the new one lands, the replayed ones are not stored again.
    originals = [r for r in await read_topic(iso.bootstrap, iso.topic("rejected")) if r.key == b"BAD"]
    assert len(originals) == len(INVALID)
    for r in originals:
        await producer.send(iso.topic("rejected"), r.value, key=r.key, headers=list(r.headers))
    sentinel = [(k, v) for k, v in originals[0].headers if k != "tickflow.source.offset"]
    await producer.send(iso.topic("rejected"), b"sentinel", key=b"BAD",
                        headers=[*sentinel, ("tickflow.source.offset", b"999999")])
    await producer.flush()
    async def with_sentinel() -> list:
        rows = await dead()
        return rows if any(bytes(r["value"]) == b"sentinel" for r in rows) else []

    got = await wait_until(with_sentinel, 60, "the sentinel dead letter")
    assert len(got) == len(INVALID) + 1
    assert len(await anomalies()) == len(detectors)
    _, health = w.get("/health")
    archive = health["stages"]["archive"]
    assert archive["stored"]["dead_letters"] == len(INVALID) + 1 and archive["skipped"] == 0, archive
    assert orjson.loads(got[0]["headers"])["tickflow.stage"] == "validate"


def _matching(check, n: int):
    """A check for wait_until: the rows once there are exactly n (a coroutine function, as wait_until wants)."""
    async def run() -> list:
        rows = await check()
        return rows if len(rows) == n else []
    return run
