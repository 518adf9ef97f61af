"""The foundation's end-to-end contract on the real broker and database: 10,000 simulated points with a
known set of invalid ones go through raw.simulated; exactly the valid ones land in market_data, once each;
every invalid one is in ticks.rejected with its rule; the metrics agree; the worker stays up."""

from __future__ import annotations

import random
from collections import Counter

import orjson

from producers.simulated import SimulatedSource
from streams.settings import SimulatedSourceSettings
from streams.tools.measure import read_topic
from tests.integration.conftest import ensure_topics_for, wait_until

N = 10_000

# (bytes transform, expected rule) — each kind of bad input the issue names.
INVALID = {
    "not_json": (lambda d: b"{this is not json", "schema.not_json"),
    "wrong_type": (lambda d: orjson.dumps({**d, "price": "12.3.4"}), "schema.float_type"),
    "missing_field": (lambda d: orjson.dumps({k: v for k, v in d.items() if k != "timestamp"}), "schema.missing"),
    "nan": (lambda d: orjson.dumps({**d, "price": "__x__"}).replace(b'"__x__"', b"NaN"), "schema.finite_number"),
    "inf": (lambda d: orjson.dumps({**d, "bid": "__x__"}).replace(b'"__x__"', b"Infinity"), "schema.finite_number"),
    "negative_price": (lambda d: orjson.dumps({**d, "price": -1.5}), "price.non_positive"),
    "crossed": (lambda d: orjson.dumps({**d, "bid": d["ask"] + 1}), "quote.crossed"),
    "empty": (lambda d: b"", "schema.not_json"),
    "array": (lambda d: b"[1,2,3]", "schema.model_type"),
    "two_mib": (lambda d: b'{"symbol": "' + b"A" * (2 * 1024 * 1024) + b'"}', "size.too_large"),
}


def fat_finger_indices(n: int, k: int) -> list[int]:
    """Where build_inputs puts its k fat fingers: spread over the second half, when every symbol's detectors
    have seen hundreds of points."""
    return [n // 2 + j * (n // 2) // k for j in range(k)] if k else []


def build_inputs(seed: int = 11, fat_fingers: int = 0) -> tuple[list[tuple[bytes, bytes]], dict[int, str], set[tuple]]:
    """N simulated points, 5% of them made invalid (INVALID), and `fat_fingers` valid trades at ten times the
    symbol's price (fat_finger_indices), which the detectors must announce on ticks.anomalies."""
    src = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0, seed=seed), run_id=f"it{seed}")
    rng = random.Random(seed)
    messages: list[tuple[bytes, bytes]] = []
    expected_rule: dict[int, str] = {}
    valid_keys: set[tuple] = set()
    kinds = list(INVALID)
    fat = set(fat_finger_indices(N, fat_fingers))
    for i in range(N):
        p = src.point()
        invalid = rng.random() < 0.05  # drawn for every point, so the invalid ones do not move with `fat_fingers`
        if i in fat:
            p = p.model_copy(update={"data_type": "trade", "price": round(p.price * 10, 2), "bid": None, "ask": None,
                                     "item_id": f"{p.item_id}-fat-finger"})
            invalid = False
        doc = orjson.loads(p.to_json())
        if invalid:
            kind = kinds[i % len(kinds)]
            transform, rule = INVALID[kind]
            messages.append((p.symbol.encode(), transform(doc)))
            expected_rule[i] = rule
        else:
            messages.append((p.symbol.encode(), p.to_json()))
            valid_keys.add((p.source, p.symbol, p.data_type, p.timestamp, p.item_id))
    return messages, expected_rule, valid_keys


async def test_ten_thousand_points_end_to_end(iso, workers, producer, pg) -> None:
    from tests.integration.oracles import IMMUTABLE_KINDS, check_oracles, fault_inputs

    # 1% exact re-sends, of immutable kinds only (a re-sent trade is a no-op upsert the sink counts as a
    # duplicate; a re-sent quote may be an update), and three fat fingers the detectors must announce.
    inputs = fault_inputs(seed=11, dup_ratio=0.01, resend_kinds=IMMUTABLE_KINDS, fat_fingers=3)
    messages, expected_rule, valid_keys = inputs.messages, inputs.expected_rule, inputs.valid_keys
    resends = inputs.duplicates
    assert resends == 100 and len(inputs.anomalous) == 3
    n_invalid = len(expected_rule)
    assert 300 < n_invalid < 700 and len(valid_keys) == N - n_invalid
    await ensure_topics_for(iso)
    raw = iso.raw_topic()
    # Tag each message with its index so the dead-letter records can be matched back to their input.
    futures = [await producer.send(raw, value, key=key, headers=[("test.index", str(i).encode())])
               for i, (key, value) in enumerate(messages)]
    for f in futures:
        await f

    worker = workers()

    async def rows() -> int:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data")
        except Exception:
            return 0

    async def all_rows_written() -> bool:
        return await rows() >= len(valid_keys)

    await wait_until(all_rows_written, 180, f"{len(valid_keys)} rows in market_data")

    # Exactly the valid ones (each once per input, by content: the oracles at the end).
    got = await pg.fetch(f"SELECT source, symbol, data_type, ts, item_id FROM {iso.schema}.market_data")
    assert {tuple(r) for r in got} == valid_keys

    # Every invalid one dead-lettered with its rule, its original bytes and where it came from.
    async def dead() -> list:
        recs = await read_topic(iso.bootstrap, iso.topic("rejected"))
        return recs if len(recs) >= n_invalid else []

    rejected = await wait_until(dead, 60, f"{n_invalid} dead-lettered records")
    assert len(rejected) == n_invalid
    seen: dict[int, str] = {}
    for rec in rejected:
        h = {k: v.decode() for k, v in rec.headers}
        idx = int(h["test.index"])
        seen[idx] = h["tickflow.rule"]
        assert rec.value == messages[idx][1] or (rec.value in (None, b"") and messages[idx][1] == b"")
        assert h["tickflow.source.topic"] == raw
        assert h["tickflow.stage"] == "validate"
        assert h["tickflow.error"]
        assert int(h["tickflow.source.offset"]) >= 0
    assert seen == expected_rule

    # The metrics agree with both counts.
    async def settled() -> dict | None:
        status, m = worker.get("/pipeline/metrics")
        if status == 200 and m and m["written_points"] == len(valid_keys):
            return m
        return None

    m = await wait_until(settled, 60, "metrics to settle")
    assert m["total_processed"] == len(messages) == N + resends
    assert m["valid_points"] == len(valid_keys) + resends
    assert m["rejected_points"] == n_invalid
    assert m["duplicate_points"] == resends  # the sink's own count: every re-sent trade, no other row
    assert m["sources"]["simulated"]["rejected_by_rule"] == dict(Counter(expected_rule.values()))
    assert m["p99_latency_ms"] is not None and m["avg_latency_ms"] is not None

    # Metrics snapshots reach data_quality_metrics.
    async def snapshot() -> bool:
        return bool(await pg.fetchval(
            f"SELECT max(processed) = {len(messages)} FROM {iso.schema}.data_quality_metrics "
            "WHERE source = 'simulated'"))

    await wait_until(snapshot, 30, "a data_quality_metrics snapshot with every record")

    # The worker stayed up throughout, and no agent crashed.
    assert worker.alive(), worker.log_text()[-3000:]
    assert "Crashed reason" not in worker.log_text()
    status, health = worker.get("/health")
    assert status == 200 and health["status"] == "ok"

    # No fault here, so no topic may hold a record twice either, the sink dropped exactly the re-sends, and
    # each fat finger has its anomaly event.
    await check_oracles(iso, pg, inputs, "poison pills in the flow, no crash", strict_topics=True)
