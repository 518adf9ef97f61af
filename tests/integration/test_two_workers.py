"""Two workers on one consumer group split the partitions between them, and the counts still add up."""

from __future__ import annotations

from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.oracles import IMMUTABLE_KINDS, check_oracles, fault_inputs, produce_all


async def test_two_workers_share_partitions_and_counts_add_up(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    w1 = workers("w1")
    w2 = workers("w2")
    raw = iso.raw_topic()
    partitions = iso.catalog.raw("simulated").partitions

    def split() -> tuple[set[str], set[str]] | None:
        s1, h1 = w1.get("/health")
        s2, h2 = w2.get("/health")
        if s1 != 200 or s2 != 200:
            return None
        a = {p for p in h1["assigned"] if p.startswith(raw + "[")}
        b = {p for p in h2["assigned"] if p.startswith(raw + "[")}
        if a and b and len(a | b) == partitions:
            return a, b
        return None

    a, b = await wait_until(split, 90, "both workers to own raw partitions")
    assert not (a & b), f"a partition is owned twice: {a & b}"

    # 1% exact re-sends of immutable kinds (the sink must count each as a duplicate), three fat fingers.
    inputs = fault_inputs(seed=23, dup_ratio=0.01, resend_kinds=IMMUTABLE_KINDS, fat_fingers=3)
    messages, expected_rule, valid_keys = inputs.messages, inputs.expected_rule, inputs.valid_keys
    assert inputs.duplicates > 0
    await produce_all(producer, raw, messages)

    async def rows() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") >= len(valid_keys)
        except Exception:
            return False

    await wait_until(rows, 180, "all valid rows")
    # Per input, by content, in PostgreSQL and in every output topic (no fault: no topic duplicate either, and
    # the sink's duplicate count equals the re-sends).
    await check_oracles(iso, pg, inputs, "two workers share the partitions", strict_topics=True)

    def settled() -> dict | None:
        for w in (w1, w2):  # either worker answers; the one without the table proxies to its owner
            status, m = w.get("/pipeline/metrics")
            if status != 200 or not m or m["written_points"] != len(valid_keys):
                return None
        return m

    m = await wait_until(settled, 60, "metrics from both workers")
    assert m["total_processed"] == len(messages)
    assert m["valid_points"] == len(valid_keys) + inputs.duplicates
    assert m["rejected_points"] == len(expected_rule)
    assert m["duplicate_points"] == inputs.duplicates
    assert w1.alive() and w2.alive()
    assert "Crashed reason" not in w1.log_text() + w2.log_text()


async def test_stages_split_over_two_workers(iso, workers, producer, pg) -> None:
    """worker.stages: one worker validates, the other writes and archives; each owns every partition of its
    stages' topics and none of the other's, and the flow holds every oracle (no fault: no topic duplicate)."""
    await ensure_topics_for(iso)
    v = workers("v", TICKFLOW_WORKER__STAGES='["validate"]')
    w = workers("w", TICKFLOW_WORKER__STAGES='["write", "archive"]')
    raw, clean = iso.raw_topic(), iso.topic("clean")
    raw_parts = {f"{raw}[{p}]" for p in range(iso.catalog.raw("simulated").partitions)}
    clean_parts = {f"{clean}[{p}]" for p in range(iso.catalog.one("clean").partitions)}

    def ready() -> bool:
        (sv, hv), (sw, hw) = v.get("/health"), w.get("/health")
        return (sv == 200 and sw == 200 and set(hv["stages"]) == {"validate"}
                and set(hw["stages"]) == {"write", "archive"}
                and v.owned(raw, "validate") == raw_parts and w.owned(clean, "write") == clean_parts)

    await wait_until(ready, 120, "each worker to run its own stages on every partition of their topics")
    assert not v.owned(clean) and not w.owned(raw)
    inputs = fault_inputs(seed=29, dup_ratio=0.01, resend_kinds=IMMUTABLE_KINDS, fat_fingers=3)
    await produce_all(producer, raw, inputs.messages)
    await check_oracles(iso, pg, inputs, "stages split: a validate worker, a write worker", strict_topics=True)

    async def archived() -> bool:  # the archive stage ran too: every dead letter in PostgreSQL
        return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.dead_letters") == len(inputs.expected_rule)

    await wait_until(archived, 60, "the write worker's archive stage to store every dead letter")
    assert v.alive() and w.alive()
