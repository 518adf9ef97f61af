"""Two workers on one consumer group split the partitions between them, and the counts still add up."""

from __future__ import annotations

from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.oracles import Inputs, check_oracles, produce_all
from tests.integration.test_pipeline import build_inputs


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

    messages, expected_rule, valid_keys = build_inputs(seed=23)
    await produce_all(producer, raw, messages)

    async def rows() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") >= len(valid_keys)
        except Exception:
            return False

    await wait_until(rows, 180, "all valid rows")
    # Per input, by content, in PostgreSQL and in every output topic (no fault: no topic duplicate either).
    await check_oracles(iso, pg, Inputs(messages, expected_rule, valid_keys), "two workers share the partitions",
                        strict_topics=True)

    def settled() -> dict | None:
        for w in (w1, w2):  # either worker answers; the one without the table proxies to its owner
            status, m = w.get("/pipeline/metrics")
            if status != 200 or not m or m["written_points"] != len(valid_keys):
                return None
        return m

    m = await wait_until(settled, 60, "metrics from both workers")
    assert m["total_processed"] == len(messages)
    assert m["valid_points"] == len(valid_keys)
    assert m["rejected_points"] == len(expected_rule)
    assert w1.alive() and w2.alive()
    assert "Crashed reason" not in w1.log_text() + w2.log_text()
