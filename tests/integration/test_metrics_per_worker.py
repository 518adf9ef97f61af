"""Two workers share the partitions; each one's GET /metrics counts only what it did itself (its `worker`
label), so summing a counter over the pods gives what was sent, and the cluster-wide lag is exported once."""

from __future__ import annotations

import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Worker, ensure_topics_for, wait_until
from tests.integration.oracles import produce_all
from tests.integration.test_pipeline import build_inputs


def scrape(w: Worker) -> dict[str, list]:
    """The worker's /metrics samples by sample name ({} when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, list] = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append(s)
    return out


def total(samples: dict[str, list], name: str) -> float:
    return sum(s.value for s in samples.get(name, []))


async def test_each_workers_metrics_are_its_own_and_sum_to_the_cluster(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    w1, w2 = workers("w1"), workers("w2")
    raw = iso.raw_topic()
    partitions = iso.catalog.raw("simulated").partitions

    def split() -> bool:
        a, b = w1.owned(raw, "validate"), w2.owned(raw, "validate")
        return bool(a and b and len(a | b) == partitions)

    await wait_until(split, 90, "both workers to own raw partitions")
    messages, expected_rule, valid_keys = build_inputs(seed=31)
    await produce_all(producer, raw, messages)

    def settled() -> tuple[dict, dict] | None:
        s1, s2 = scrape(w1), scrape(w2)
        processed = total(s1, "tickflow_points_processed_total") + total(s2, "tickflow_points_processed_total")
        written = total(s1, "tickflow_rows_written_total") + total(s2, "tickflow_rows_written_total")
        return (s1, s2) if processed == len(messages) and written == len(valid_keys) else None

    s1, s2 = await wait_until(settled, 180, "the two workers' /metrics to add up to what was sent")
    for samples, w in ((s1, w1), (s2, w2)):
        mine = total(samples, "tickflow_points_processed_total")
        assert 0 < mine < len(messages), f"worker {w.name} counted {mine} of {len(messages)}: not its own share"
        labels = {s.labels.get("worker") for name, ss in samples.items() for s in ss}
        assert labels == {f"127.0.0.1:{w.port}"}, labels
    rejected = sum(total(s, "tickflow_points_rejected_total") for s in (s1, s2))
    assert rejected == len(expected_rule)
    latency_n = sum(total(s, "tickflow_end_to_end_latency_seconds_count") for s in (s1, s2))
    assert latency_n == len(valid_keys)
    # The cluster-wide table (GET /pipeline/metrics) holds the same totals.
    # The workers send their counts to it every 0.5 s and its agent folds them in: wait for it to catch up.
    def table() -> dict | None:
        status, m = w1.get("/pipeline/metrics")
        ok = status == 200 and m["total_processed"] == len(messages) and m["written_points"] == len(valid_keys)
        return m if ok else None

    await wait_until(table, 30, "the cluster table to hold the same totals")
    # Lag is the groups' (from the cluster): one worker exports it, so a sum over pods counts it once.
    exporting = [w.name for w, s in ((w1, s1), (w2, s2)) if s.get("tickflow_consumer_lag")]
    assert len(exporting) == 1, exporting
