"""bench/throughput.py runs tickflow before the peers and after them: the peers are compared with the mean of its
two drains, so a machine that slows (or speeds up) steadily during the run moves no ratio against tickflow."""

from __future__ import annotations

import re

from tests.unit.bench import scripts


def _drain(rate: float, cpu: float, *, lost: int = 0, dup: int = 0, rss: float = 200.0) -> dict[str, float]:
    return {"rows_per_sec_steady": rate, "cpu_us_per_row_steady": cpu, "cpu_cores_steady": 0.8,
            "stack_cpu_us_per_row_steady": 20.0, "machine_cpu_us_per_row_steady": 50.0,
            "machine_cores_busy_steady": 1.6, "cpu_us_per_row_total": cpu + 1, "peak_rss_mb": rss,
            "steady_seconds": 40.0, "landed": 1000 - lost + dup, "lost": lost, "duplicated": dup}


def test_two_drains_give_their_mean_rate_and_cost_and_every_row_lost_or_duplicated() -> None:
    bench = scripts.load("throughput")
    both = bench.both_drains([_drain(40_000, 22.0, lost=1, rss=210.0), _drain(30_000, 30.0, dup=2, rss=190.0)])
    assert both["rows_per_sec_steady"] == 35_000 and both["cpu_us_per_row_steady"] == 26.0
    assert both["lost"] == 1 and both["duplicated"] == 2 and both["peak_rss_mb"] == 210.0
    # a drift that is steady over the run: the peer in the middle measured at the machine's mean speed
    peer_in_the_middle = 17_500
    assert both["rows_per_sec_steady"] / peer_in_the_middle == 2.0
    assert bench.both_drains([_drain(40_000, 22.0)]) == {}  # one drain (no peers): its own numbers stand


def test_the_drain_before_the_peers_has_topics_group_and_schema_of_its_own() -> None:
    bench = scripts.load("throughput")
    after, before = bench.tickflow_env("0a1b2c3d"), bench.tickflow_env("0a1b2c3d-before")
    for key in ("TICKFLOW_WORKER__APP_ID", "TICKFLOW_KAFKA__TOPIC_SUFFIX", "TICKFLOW_POSTGRES__DB_SCHEMA"):
        assert after[key] != before[key]
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", before["TICKFLOW_POSTGRES__DB_SCHEMA"])
    assert "bench-0a1b2c3d" in before["TICKFLOW_KAFKA__TOPIC_SUFFIX"]  # dropped with the run's topics


def test_the_latency_phases_take_80_percent_of_the_maximum_the_table_shows() -> None:
    bench = scripts.load("throughput")
    drains = [_drain(40_000, 22.0), _drain(30_000, 30.0)]  # before the peers, then after them
    assert bench.tickflow_maximum(drains) == 35_000  # the mean, as the table's row: not the second drain's
    assert 28_000 in bench.latency_rates(bench.tickflow_maximum(drains))
    assert bench.tickflow_maximum([_drain(30_000, 30.0)]) == 30_000  # one drain (no peers): its own
