"""The fault oracles (tests/integration/oracles.py) fail on the outcomes they exist to catch.

Each test builds a correct outcome, shows it passes, then breaks it one way (a lost row, a duplicate row or
record, a changed value, a duplicate or lost dead letter, a record that was never conserved) and shows the
oracle reports it. The oracles' core is pure, so no broker or database is needed here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from tests.integration.oracles import (
    DeadLetter,
    Expected,
    Inputs,
    Observed,
    bytes_hash,
    conserved,
    count_anomaly_dups,
    evaluate,
    reconcile_dups,
    report,
)

T0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


def point(i: int) -> dict:
    return {"source": "simulated", "symbol": "AAPL" if i % 2 else "MSFT", "data_type": "quote",
            "timestamp": (T0 + timedelta(milliseconds=i)).isoformat(), "item_id": f"run-{i}",
            "price": 100.0 + i, "volume": 10.0, "bid": 99.5 + i, "ask": 100.5 + i}


def make_inputs() -> Inputs:
    """Six valid points, two invalid ones (indices 2 and 5), and one exact re-send of point 0 (index 8)."""
    msgs: list[tuple[bytes, bytes]] = []
    rule: dict[int, str] = {}
    for i in range(8):
        if i == 2:
            msgs.append((b"AAPL", b"{not json")); rule[i] = "schema.not_json"  # noqa: E702
        elif i == 5:
            msgs.append((b"MSFT", orjson.dumps({**point(i), "price": -1.0}))); rule[i] = "price.non_positive"  # noqa: E702
        else:
            msgs.append((b"X", orjson.dumps(point(i))))
    msgs.append(msgs[0])
    return Inputs(msgs, rule, set(), duplicates=1)


def row(i: int, **change: object) -> dict:
    d = point(i)
    ts = datetime.fromisoformat(d.pop("timestamp"))
    return {**d, "ts": ts, **change}


def good() -> tuple[Expected, Observed]:
    inputs = make_inputs()
    valid = [i for i in range(8) if i not in inputs.expected_rule]
    raw = [(i, v) for i, (_, v) in enumerate(inputs.messages)]
    clean = [orjson.dumps(point(i)) for i in valid] + [orjson.dumps(point(0))]  # the re-send passes validation
    dead = [DeadLetter(i, inputs.expected_rule[i], bytes_hash(inputs.messages[i][1])) for i in (2, 5)]
    observed = Observed(raw=raw, rows=[row(i) for i in valid], clean=clean, rejected=dead,
                        anomalies=[b'{"detector": "spread", "symbol": "AAPL", "detected_at": 1.0}'],
                        sink_duplicates=1)
    return Expected.from_inputs(inputs), observed


def test_a_correct_outcome_passes_every_oracle() -> None:
    expected, observed = good()
    r = evaluate("ok", expected, observed, strict_topics=True)
    assert r.failures == [] and r.ok
    assert (r.sent, r.landed, r.rejected, r.dup_injected, r.dup_dropped) == (9, 6, 2, 1, 1)
    assert r.conserved and (r.lost, r.duplicated, r.changed, r.clean_dups, r.rejected_dups) == (0, 0, 0, 0, 0)


def test_a_lost_row_fails() -> None:
    expected, observed = good()
    observed.rows = observed.rows[1:]
    r = evaluate("lost", expected, observed)
    assert not r.ok and r.lost == 1 and not r.conserved
    assert any("have no row" in f for f in r.failures)


def test_a_duplicate_row_of_one_input_fails_even_with_another_primary_key() -> None:
    """The same input written twice under a rewritten timestamp: distinct primary keys, one input."""
    expected, observed = good()
    observed.rows.append(row(1, ts=T0 + timedelta(hours=1)))
    r = evaluate("dup row", expected, observed)
    assert not r.ok and r.duplicated == 1
    assert any("extra rows" in f for f in r.failures)


def test_a_changed_value_fails() -> None:
    expected, observed = good()
    observed.rows[2] = row(3, price=123.45)  # same natural key, another price
    r = evaluate("changed", expected, observed)
    assert not r.ok and r.changed == 1 and r.lost == 0 and r.duplicated == 0
    assert any("differ from their input" in f for f in r.failures)


def test_a_row_for_no_input_fails() -> None:
    expected, observed = good()
    observed.rows.append(row(99))
    assert not evaluate("unexpected", expected, observed).ok


def test_a_duplicate_clean_record_is_reported_and_fails_only_when_strict() -> None:
    expected, observed = good()
    observed.clean.append(orjson.dumps(point(3)))
    relaxed = evaluate("kill", expected, observed)
    assert relaxed.ok and relaxed.clean_dups == 1  # reported in the table, the fault test still asserts PostgreSQL
    strict = evaluate("no fault", expected, observed, strict_topics=True)
    assert not strict.ok and any("ticks.clean" in f for f in strict.failures)


def test_the_injected_resend_is_not_a_clean_duplicate_but_a_third_copy_is() -> None:
    expected, observed = good()
    assert evaluate("x", expected, observed).clean_dups == 0  # point 0 was sent twice and is there twice
    observed.clean.append(orjson.dumps(point(0)))
    assert evaluate("x", expected, observed).clean_dups == 1


def test_a_record_missing_from_the_clean_topic_fails() -> None:
    expected, observed = good()
    observed.clean = observed.clean[1:]
    r = evaluate("clean lost", expected, observed)
    assert not r.ok and any("missing from ticks.clean" in f for f in r.failures)


def test_a_duplicate_dead_letter_is_counted_as_a_multiset() -> None:
    expected, observed = good()
    observed.rejected.append(observed.rejected[0])
    relaxed = evaluate("kill", expected, observed)
    assert relaxed.rejected_dups == 1 and relaxed.rejected == 2  # distinct inputs, not records
    assert relaxed.conserved
    strict = evaluate("no fault", expected, observed, strict_topics=True)
    assert not strict.ok and any("ticks.rejected" in f for f in strict.failures)


def test_a_lost_dead_letter_a_wrong_rule_and_changed_bytes_fail() -> None:
    expected, observed = good()
    lost = Observed(**{**observed.__dict__, "rejected": observed.rejected[:1]})
    assert any("not dead-lettered" in f for f in evaluate("x", expected, lost).failures)
    second = observed.rejected[1]
    wrong = Observed(**{**observed.__dict__, "rejected": [observed.rejected[0],
                                                         DeadLetter(5, "schema.not_json", second.value_hash)]})
    assert any("wrong rule" in f for f in evaluate("x", expected, wrong).failures)
    changed = Observed(**{**observed.__dict__, "rejected": [observed.rejected[0],
                                                           DeadLetter(5, "price.non_positive", bytes_hash(b"other"))]})
    assert any("differ from the bytes sent" in f for f in evaluate("x", expected, changed).failures)
    valid_dead = Observed(**{**observed.__dict__, "rejected": [*observed.rejected,
                                                              DeadLetter(1, "x", bytes_hash(b""))]})
    assert not evaluate("x", expected, valid_dead).ok


def test_a_truncated_dead_letter_matches_only_its_prefix() -> None:
    big = b'{"symbol": "' + b"A" * 100_000 + b'"}'
    inputs = Inputs([(b"A", big)], {0: "size.too_large"}, set())
    expected = Expected.from_inputs(inputs)
    ok = Observed([(0, big)], [], [], [DeadLetter(0, "size.too_large", bytes_hash(big[:64 * 1024]), truncated=True)])
    assert evaluate("big", expected, ok).ok
    bad = Observed([(0, big)], [], [], [DeadLetter(0, "size.too_large", bytes_hash(big[:1000]), truncated=True)])
    assert not evaluate("big", expected, bad).ok


def test_a_record_missing_from_the_raw_topic_breaks_conservation() -> None:
    expected, observed = good()
    observed.raw = observed.raw[:-1]  # the re-send never reached the broker
    r = evaluate("raw", expected, observed)
    assert not r.ok and r.sent == 8 and r.dup_injected == 0


def test_conservation_needs_each_side() -> None:
    assert conserved(9, 6, 2, 1)
    assert not conserved(9, 5, 2, 1) and not conserved(9, 6, 1, 1) and not conserved(9, 6, 2, 0)


def test_the_sinks_duplicate_count_is_reconciled_with_the_resends() -> None:
    assert reconcile_dups(1, 1, exact=True) is None
    assert reconcile_dups(1, 3, exact=True) is not None  # the sink saw replays without a fault
    assert reconcile_dups(1, 0, exact=True) is not None
    assert reconcile_dups(1, None, exact=True) is not None
    assert reconcile_dups(1, 3, exact=False) is None  # after a fault, replays are reported
    expected, observed = good()
    observed.sink_duplicates = 0
    assert not evaluate("x", expected, observed, strict_topics=True).ok


def test_anomaly_duplicates_ignore_only_the_send_time() -> None:
    a = b'{"detector": "spread", "symbol": "AAPL", "score": 3.0, "detected_at": 1.0}'
    again = b'{"detector": "spread", "symbol": "AAPL", "score": 3.0, "detected_at": 2.0}'
    other = b'{"detector": "spread", "symbol": "AAPL", "score": 4.0, "detected_at": 2.0}'
    assert count_anomaly_dups([a, other]) == 0
    assert count_anomaly_dups([a, again, other]) == 1
    expected, observed = good()
    observed.anomalies += [observed.anomalies[0].replace(b"1.0", b"9.0")]  # the same event sent again
    assert not evaluate("x", expected, observed, strict_topics=True).ok


@pytest.mark.parametrize("broken", ["lost", "dup"])
def test_the_report_shows_a_failed_row(broken: str) -> None:
    expected, observed = good()
    if broken == "lost":
        observed.rows.pop()
    else:
        observed.clean.append(observed.clean[0])
    r = evaluate(broken, expected, observed, strict_topics=True)
    lines = report([r])
    assert lines[0].split()[:3] == ["fault", "sent", "landed"] and "clean dups" in lines[0]
    assert lines[2].split()[-1] == "NO"
