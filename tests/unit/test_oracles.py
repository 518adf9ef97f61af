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
    label,
    raw_resends,
    reconcile_dups,
    report,
    snapshots_going_back,
)

T0 = datetime(2024, 3, 1, 14, 30, tzinfo=UTC)


KIND0 = {"kind": "quote"}  # point 0's data type (the re-sent one): a test sets "trade" for an immutable re-send


def point(i: int) -> dict:
    kind = KIND0["kind"] if i == 0 else "quote"
    return {"source": "simulated", "symbol": "AAPL" if i % 2 else "MSFT", "data_type": kind,
            "timestamp": (T0 + timedelta(milliseconds=i)).isoformat(), "item_id": f"run-{i}",
            "price": 100.0 + i, "volume": 10.0, "bid": 99.5 + i, "ask": 100.5 + i}


@pytest.fixture
def trade_resend() -> object:
    """Point 0, the one sent twice, is a trade: an immutable kind, whose re-send the sink must drop."""
    KIND0["kind"] = "trade"
    yield
    KIND0["kind"] = "quote"


def make_inputs() -> Inputs:
    """Six valid points, two invalid ones (indices 2 and 5), one exact re-send of point 0 (index 8); point 3 is
    anomalous on purpose (it must raise an anomaly event)."""
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
    return Inputs(msgs, rule, set(), duplicates=1, anomalous={3})


def row(i: int, **change: object) -> dict:
    d = point(i)
    ts = datetime.fromisoformat(d.pop("timestamp"))
    return {**d, "ts": ts, **change}


def anomaly(record: dict, detector: str = "clearly_erroneous", at: float = 1.0) -> bytes:
    """A ticks.anomalies event as streams/stages/detect.py sends it: the detector, its score and the record."""
    return orjson.dumps({"detector": detector, "kind": "tick", "symbol": record["symbol"], "score": 9.0,
                         "threshold": 0.03, "record": record, "source": record["source"], "detected_at": at})


def good() -> tuple[Expected, Observed]:
    inputs = make_inputs()
    valid = [i for i in range(8) if i not in inputs.expected_rule]
    raw = [(i, v) for i, (_, v) in enumerate(inputs.messages)]
    clean = [orjson.dumps(point(i)) for i in valid] + [orjson.dumps(point(0))]  # the re-send passes validation
    dead = [DeadLetter(i, inputs.expected_rule[i], bytes_hash(inputs.messages[i][1])) for i in (2, 5)]
    observed = Observed(raw=raw, rows=[row(i) for i in valid], clean=clean, rejected=dead,
                        anomalies=[b'{"detector": "spread", "symbol": "AAPL", "detected_at": 1.0}',
                                   anomaly(point(3)), anomaly(point(4), "volume_spike")],
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


def test_a_changed_clean_record_fails() -> None:
    """A clean record for a real input whose price differs from it: the clean topic's own "changed" check."""
    expected, observed = good()
    observed.clean[1] = orjson.dumps({**point(1), "price": 555.0})
    r = evaluate("clean changed", expected, observed)
    assert not r.ok and r.changed == 1 and r.lost == 0
    assert any("ticks.clean records differ from their input" in f for f in r.failures), r.failures


def test_a_clean_record_for_no_input_fails() -> None:
    expected, observed = good()
    observed.clean.append(orjson.dumps(point(99)))
    r = evaluate("clean unexpected", expected, observed)
    assert not r.ok
    assert any("ticks.clean records for no input" in f for f in r.failures), r.failures


def test_a_swapped_raw_record_breaks_conservation_alone() -> None:
    """The raw topic holds as many records as were sent, but one is another input's copy (point 3's slot holds
    point 1 again): PostgreSQL and the dead letters look right, only the conservation sum is off."""
    expected, observed = good()
    observed.raw[3] = (3, orjson.dumps(point(1)))
    r = evaluate("swapped", expected, observed)
    assert r.sent == expected.sent and r.dup_injected == 2
    assert not r.conserved and not r.ok
    assert r.failures and all(f.startswith("not conserved") for f in r.failures), r.failures


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
    assert reconcile_dups(1, 1, 1, exact=True) is None
    assert reconcile_dups(1, 1, 3, exact=True) is not None  # the sink saw replays without a fault
    assert reconcile_dups(1, 0, 0, exact=True) is not None
    assert reconcile_dups(1, 0, None, exact=True) is not None
    assert reconcile_dups(1, 1, 3, exact=False) is None  # after a fault, replays only add
    assert reconcile_dups(3, 2, 1, exact=False) is not None  # fewer than the immutable re-sends: never
    assert reconcile_dups(3, 2, None, exact=False) is not None  # there was something to count
    assert reconcile_dups(3, 0, 0, exact=False) is None  # re-sent quotes are updates, not duplicates
    assert reconcile_dups(3, 0, None, exact=False) is None
    expected, observed = good()
    observed.sink_duplicates = 0
    assert not evaluate("x", expected, observed, strict_topics=True).ok


def test_the_immutable_resends_are_measured_in_the_raw_topic(trade_resend: object) -> None:
    expected, observed = good()
    assert raw_resends(expected, observed.raw) == (9, 1, 1)
    assert evaluate("kill", expected, observed).ok


def test_a_sink_that_dropped_fewer_than_the_immutable_resends_fails_after_a_fault(trade_resend: object) -> None:
    """Not only without a fault: a re-sent trade is a duplicate row whatever happened, so a sink count below
    the immutable re-sends is wrong after a kill too."""
    expected, observed = good()
    observed.sink_duplicates = 0
    r = evaluate("kill", expected, observed)
    assert not r.ok and r.dup_immutable == 1
    assert any("fewer than the 1 re-sends of immutable kinds" in f for f in r.failures), r.failures
    observed.sink_duplicates = None
    assert any("reported no duplicate count" in f for f in evaluate("kill", expected, observed).failures)


def test_a_resent_quote_need_not_be_counted_after_a_fault() -> None:
    """A re-sent quote has a newer revision: an update, not a duplicate; so after a fault 0 is possible."""
    expected, observed = good()
    observed.sink_duplicates = 0
    assert evaluate("kill", expected, observed).ok


def test_a_lost_anomaly_event_fails() -> None:
    """Point 3 was made anomalous on purpose: without an event naming its record, the oracle fails."""
    expected, observed = good()
    assert expected.anomalous == {("simulated", "run-3")}
    observed.anomalies = [a for a in observed.anomalies if b"run-3" not in a]
    r = evaluate("anomaly lost", expected, observed)
    assert not r.ok and r.lost == 1
    assert any("anomalous inputs without an event" in f for f in r.failures), r.failures


def test_a_changed_anomaly_event_fails() -> None:
    """An event for an input (anomalous on purpose or not) whose record differs from the input."""
    expected, observed = good()
    observed.anomalies[2] = anomaly({**point(4), "price": 4.0}, "volume_spike")
    r = evaluate("anomaly changed", expected, observed)
    assert not r.ok and r.changed == 1 and r.lost == 0
    assert any("ticks.anomalies events whose record differs" in f for f in r.failures), r.failures


def test_the_fault_tables_label_marks_exactly_once() -> None:
    assert label("kill -9", True) == "kill -9 (EOS)" and label("kill -9", False) == "kill -9"


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


def test_a_metrics_snapshot_series_that_goes_back_is_caught() -> None:
    def row(worker: str, processed: int, duplicates: int = 0) -> dict:
        return {"worker": worker, "processed": processed, "valid": processed, "rejected": 0, "written": processed,
                "duplicates": duplicates}

    assert snapshots_going_back([row("b", 1), row("b", 1), row("a", 5, 2), row("b", 9, 2)]) == []
    assert snapshots_going_back([]) == [] and snapshots_going_back([row("a", 3)]) == []
    back = snapshots_going_back([row("b", 100, 5), row("a", 40, 5), row("b", 120, 6)])
    assert back and all("(b then a)" in f for f in back) and any(f.startswith("processed 100 -> 40") for f in back)
    assert snapshots_going_back([row("b", 100, 5), row("b", 100, 4)]) == ["duplicates 5 -> 4 (b then b)"]
