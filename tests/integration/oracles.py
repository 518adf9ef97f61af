"""The delivery contract's oracles, checked once a faulted flow has drained, and the fault report.

What a consumer sees is counted, per test input, never per primary key (the key makes key duplicates
impossible in PostgreSQL, so counting them proves nothing):

- every input is identified by its content: a valid one by (source, item_id), which the simulated source makes
  unique per generated point; an invalid one by its `test.index` header. Each row and record is compared with
  its input by a hash of the input's content (key and values), so a changed value is caught too;
- PostgreSQL: inputs with no row (lost), with more than one row (duplicated: possible when any key column was
  rewritten), rows with other values (changed), rows for no input (unexpected);
- ticks.clean, ticks.rejected, ticks.anomalies read fully as a consumer would (read_committed): records
  missing, records beyond their input's multiplicity (duplicates), dead letters as a multiset with their rule
  and original bytes; in ticks.anomalies, the inputs a test made anomalous on purpose (`Inputs.anomalous`)
  without any event (lost), and events whose record differs from its input (changed);
- conservation from four separate measurements: records in the raw topic = distinct inputs landed in
  PostgreSQL + distinct inputs dead-lettered + exact re-sends found in the raw topic;
- "dup dropped" is what the sink reported (data_quality_metrics.duplicates), reconciled with the re-sends
  measured in the raw topic: never fewer than the re-sends of immutable kinds (each is a no-op upsert; a
  re-sent revisable record carries a newer revision and is an update), and with no fault exactly the re-sends.

The checking core is pure (`Expected`, `Observed`, `evaluate`), so each oracle is shown to fail on a broken
outcome in tests/unit/test_oracles.py; `gather` does the I/O. Exactly-once into the topics is a setting
(kafka.exactly_once, off by default): with it off, a fault may make a consumer see a record twice, so topic
duplicates are reported (columns "clean dups", "rej dups", "anom dups") and fail only where a test asks for
`strict_topics` (no fault); test_exactly_once.py asserts them 0 with it on."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from sinks.base import REVISABLE_KINDS
from streams.models import DataType
from streams.stages.publish import TRUNCATE_TO

# ------------------------------------------------------------------------------------------ inputs

CONTENT_FIELDS = ("source", "symbol", "data_type", "ts", "item_id", "price", "volume", "bid", "ask")


@dataclass
class Inputs:
    """What a fault test sends: messages tagged by index, the rule each invalid index must be rejected
    with, the natural keys that must land, and how many messages are exact re-sends of earlier ones."""

    messages: list[tuple[bytes, bytes]]
    expected_rule: dict[int, str]
    valid_keys: set[tuple]
    duplicates: int = 0
    anomalous: set[int] = field(default_factory=set)  # indices of valid inputs that must raise an anomaly event


IMMUTABLE_KINDS = frozenset(str(k) for k in DataType) - REVISABLE_KINDS  # the sink keeps their first write


def fault_inputs(seed: int, dup_ratio: float = 0.02, resend_kinds: frozenset[str] | None = None,
                 fat_fingers: int = 0) -> Inputs:
    """The pipeline test's inputs (5% invalid) plus exact re-sends of valid messages, as a provider
    that polls overlapping windows produces them: the sink must drop them, not write them twice.
    `resend_kinds`: re-send only records of these data types (all: None); `fat_fingers`: see build_inputs."""
    from tests.integration.test_pipeline import build_inputs, fat_finger_indices

    messages, expected_rule, valid_keys = build_inputs(seed=seed, fat_fingers=fat_fingers)
    rng = random.Random(seed)
    valid_idx = [i for i in range(len(messages)) if i not in expected_rule
                 and (resend_kinds is None or orjson.loads(messages[i][1])["data_type"] in resend_kinds)]
    out = list(messages)
    for i in sorted(rng.sample(valid_idx, int(len(messages) * dup_ratio))):
        out.append(messages[i])
    rng.shuffle(tail := out[len(messages):])
    out[len(messages):] = tail
    return Inputs(out, dict(expected_rule), valid_keys, len(out) - len(messages),
                  set(fat_finger_indices(len(messages), fat_fingers)))


# ------------------------------------------------------------------------------------------ pure core


def _ts(value: Any) -> str:
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return dt.astimezone(UTC).isoformat()


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def content(d: Mapping[str, Any]) -> tuple[Any, ...]:
    """The input's content in one canonical form, from a record dict (`timestamp`) or a row dict (`ts`)."""
    ts = d.get("ts", d.get("timestamp"))
    return (d.get("source"), d.get("symbol"), str(d.get("data_type")), _ts(ts), d.get("item_id") or "",
            _num(d.get("price")), _num(d.get("volume")), _num(d.get("bid")), _num(d.get("ask")))


def content_hash(c: tuple[Any, ...]) -> str:
    return hashlib.sha1(orjson.dumps(list(c))).hexdigest()


def identity(c: tuple[Any, ...]) -> tuple[str, str]:
    """Which input a row or record came from: (source, item_id), not the primary key."""
    return (c[0], c[4])


def bytes_hash(b: bytes | None) -> str:
    return hashlib.sha1(b or b"").hexdigest()


@dataclass
class DeadLetter:
    """One record read from ticks.rejected."""

    index: int | None
    rule: str
    value_hash: str
    truncated: bool = False  # sent as a prefix of the original (streams/stages/publish._shrink)


@dataclass
class Expected:
    """What the inputs oblige: per valid identity its content hash and how many times it was sent; per
    invalid index its rule and the hash of its bytes (and of a truncated prefix, see streams/stages/publish)."""

    sent: int
    valid: dict[tuple[str, str], str]
    multiplicity: Counter
    invalid: dict[int, str]
    invalid_bytes: dict[int, bytes]
    anomalous: set[tuple[str, str]] = field(default_factory=set)  # identities that must raise an anomaly event

    @classmethod
    def from_inputs(cls, inputs: Inputs) -> Expected:
        valid: dict[tuple[str, str], str] = {}
        mult: Counter = Counter()
        invalid_bytes: dict[int, bytes] = {}
        anomalous: set[tuple[str, str]] = set()
        for i, (_, value) in enumerate(inputs.messages):
            if i in inputs.expected_rule:
                invalid_bytes[i] = value
                continue
            c = content(orjson.loads(value))
            valid[identity(c)] = content_hash(c)
            mult[identity(c)] += 1
            if i in inputs.anomalous:
                anomalous.add(identity(c))
        return cls(len(inputs.messages), valid, mult, dict(inputs.expected_rule), invalid_bytes, anomalous)


@dataclass
class Observed:
    """What was read after the flow drained: raw topic (test index, value), PostgreSQL rows, the three
    output topics as a consumer sees them, and the sink's own duplicate count (None: not reported)."""

    raw: list[tuple[int | None, bytes]]
    rows: list[dict[str, Any]]
    clean: list[bytes]
    rejected: list[DeadLetter]
    anomalies: list[bytes] = field(default_factory=list)
    sink_duplicates: int | None = None


@dataclass
class FaultResult:
    fault: str
    sent: int = 0
    landed: int = 0
    rejected: int = 0
    dup_injected: int = 0
    dup_dropped: int | None = None
    lost: int = 0
    duplicated: int = 0
    changed: int = 0
    clean_dups: int = 0
    rejected_dups: int = 0
    anomaly_dups: int = 0
    dup_immutable: int = 0  # re-sends of immutable kinds in the raw topic: the least the sink must have dropped
    conserved: bool = False
    failures: list[str] = field(default_factory=list)
    ok: bool = False


def count_rows(expected: Expected, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """PostgreSQL per input: lost, duplicated (more than one row for an input), changed, unexpected."""
    by_id: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        c = content(r)
        by_id.setdefault(identity(c), []).append(content_hash(c))
    lost = [k for k in expected.valid if k not in by_id]
    duplicated = sum(len(h) - 1 for k, h in by_id.items() if k in expected.valid and len(h) > 1)
    changed = [k for k, h in by_id.items() if k in expected.valid and any(x != expected.valid[k] for x in h)]
    unexpected = [k for k in by_id if k not in expected.valid]
    landed = sum(1 for k in by_id if k in expected.valid)
    return {"landed": landed, "lost": lost, "duplicated": duplicated, "changed": changed, "unexpected": unexpected}


def count_clean(expected: Expected, values: Iterable[bytes]) -> dict[str, Any]:
    """ticks.clean per input: records missing, records beyond the input's multiplicity, changed, unexpected."""
    seen: Counter = Counter()
    changed: list[tuple[str, str]] = []
    for v in values:
        c = content(orjson.loads(v))
        k = identity(c)
        seen[k] += 1
        if k in expected.valid and content_hash(c) != expected.valid[k]:
            changed.append(k)
    lost = sum(max(0, n - seen[k]) for k, n in expected.multiplicity.items())
    dups = sum(max(0, n - expected.multiplicity[k]) for k, n in seen.items() if k in expected.valid)
    unexpected = [k for k in seen if k not in expected.valid]
    return {"lost": lost, "dups": dups, "changed": changed, "unexpected": unexpected}


def count_dead_letters(expected: Expected, letters: Iterable[DeadLetter]) -> dict[str, Any]:
    """ticks.rejected as a multiset by test index: lost, duplicated, wrong rule, changed bytes, unexpected."""
    letters = list(letters)
    by_index: Counter = Counter(d.index for d in letters)
    lost = [i for i in expected.invalid if by_index[i] == 0]
    dups = sum(n - 1 for i, n in by_index.items() if i in expected.invalid and n > 1)
    wrong_rule = sorted({d.index for d in letters if d.index in expected.invalid
                         and d.rule != expected.invalid[d.index]})
    changed = []
    for d in letters:
        if d.index not in expected.invalid:
            continue
        original = expected.invalid_bytes[d.index]
        kept = original[:TRUNCATE_TO] if d.truncated else original
        if d.value_hash != bytes_hash(kept):
            changed.append(d.index)
    unexpected = [i for i in by_index if i not in expected.invalid]
    return {"rejected": sum(1 for i in by_index if i in expected.invalid), "lost": lost, "dups": dups,
            "wrong_rule": wrong_rule, "changed": changed, "unexpected": unexpected}


def count_anomaly_dups(values: Iterable[bytes]) -> int:
    """ticks.anomalies: events equal in everything but `detected_at` (the time it was sent) beyond the first."""
    seen: Counter = Counter()
    for v in values:
        event = orjson.loads(v)
        event.pop("detected_at", None)
        seen[orjson.dumps(event, option=orjson.OPT_SORT_KEYS)] += 1
    return sum(n - 1 for n in seen.values() if n > 1)


def count_anomalies(expected: Expected, values: Iterable[bytes]) -> dict[str, Any]:
    """ticks.anomalies per input: inputs made anomalous on purpose with no event naming their record (lost), and
    events whose record is a test input but differs from it (changed). Other events (the simulated walk's own
    volume spikes, feed-level events without a record) are allowed: which natural points a detector flags is
    not fixed by the inputs alone."""
    named: set[tuple[str, str]] = set()
    changed: list[tuple[str, str]] = []
    for v in values:
        record = orjson.loads(v).get("record")
        if not isinstance(record, dict):
            continue
        c = content(record)
        k = identity(c)
        named.add(k)
        if k in expected.valid and content_hash(c) != expected.valid[k]:
            changed.append(k)
    return {"lost": sorted(expected.anomalous - named), "changed": changed}


def raw_resends(expected: Expected, raw: Iterable[tuple[int | None, bytes]]) -> tuple[int, int, int]:
    """From the raw topic: (records, exact re-sends of a valid input, those of them of an immutable kind),
    measured, not taken from the test."""
    raw = list(raw)
    ids: Counter = Counter()
    immutable: set[tuple[str, str]] = set()
    for index, value in raw:
        if index is None or index in expected.invalid:
            continue
        c = content(orjson.loads(value))
        ids[identity(c)] += 1
        if c[2] not in REVISABLE_KINDS:
            immutable.add(identity(c))
    return len(raw), sum(n - 1 for n in ids.values()), sum(ids[k] - 1 for k in immutable)


def conserved(sent: int, landed: int, rejected: int, dup_dropped: int) -> bool:
    """Every record sent is accounted for exactly once: a row, a dead letter, or a dropped re-send."""
    return sent == landed + rejected + dup_dropped


def reconcile_dups(injected: int, immutable: int, sink_reported: int | None, exact: bool) -> str | None:
    """The sink's own duplicate count (sinks/postgres.py: rows staged but neither inserted nor updated) against
    the re-sends found in the raw topic. Each re-send of an immutable kind is such a row, so the sink counts at
    least those; a fault only adds (a replayed batch is all duplicates, its lost metrics delta included). A
    re-sent revisable record (quote, bar) carries a newer revision (its later Kafka timestamp) and is an update,
    unless its original is in the same batch; so `exact` (no fault) expects exactly `injected` and is for tests
    that re-send immutable kinds only."""
    if sink_reported is None:
        return "the sink reported no duplicate count" if exact or immutable else None
    if sink_reported < immutable:
        return (f"the sink dropped {sink_reported} duplicates, fewer than the {immutable} re-sends of immutable "
                "kinds in the raw topic")
    if exact and sink_reported != injected:
        return f"the sink dropped {sink_reported} duplicates, the raw topic holds {injected} re-sends"
    return None


def evaluate(fault: str, expected: Expected, observed: Observed, strict_topics: bool = False) -> FaultResult:
    """Every oracle over one outcome; `failures` says which failed (empty: the contract held)."""
    r = FaultResult(fault=fault)
    pg = count_rows(expected, observed.rows)
    clean = count_clean(expected, observed.clean)
    dead = count_dead_letters(expected, observed.rejected)
    anomalies = count_anomalies(expected, observed.anomalies)
    r.sent, r.dup_injected, r.dup_immutable = raw_resends(expected, observed.raw)
    r.landed, r.rejected = pg["landed"], dead["rejected"]
    r.dup_dropped = observed.sink_duplicates
    r.lost = len(pg["lost"]) + len(dead["lost"]) + len(anomalies["lost"])
    r.duplicated = pg["duplicated"]
    r.changed = len(pg["changed"]) + len(clean["changed"]) + len(dead["changed"]) + len(anomalies["changed"])
    r.clean_dups, r.rejected_dups = clean["dups"], dead["dups"]
    r.anomaly_dups = count_anomaly_dups(observed.anomalies)
    r.conserved = conserved(r.sent, r.landed, r.rejected, r.dup_injected)
    f = r.failures
    if r.sent != expected.sent:
        f.append(f"the raw topic holds {r.sent} test records, {expected.sent} were sent")
    if pg["lost"]:
        f.append(f"{len(pg['lost'])} valid inputs have no row, e.g. {sorted(pg['lost'])[:3]}")
    if pg["duplicated"]:
        f.append(f"{pg['duplicated']} extra rows for inputs already written")
    if pg["changed"]:
        f.append(f"{len(pg['changed'])} rows differ from their input, e.g. {sorted(pg['changed'])[:3]}")
    if pg["unexpected"]:
        f.append(f"{len(pg['unexpected'])} rows for no input, e.g. {sorted(pg['unexpected'])[:3]}")
    if clean["lost"]:
        f.append(f"{clean['lost']} valid inputs missing from ticks.clean")
    if clean["changed"]:
        f.append(f"{len(clean['changed'])} ticks.clean records differ from their input")
    if clean["unexpected"]:
        f.append(f"{len(clean['unexpected'])} ticks.clean records for no input")
    if dead["lost"]:
        f.append(f"{len(dead['lost'])} invalid inputs not dead-lettered, e.g. "
                 f"{[(i, expected.invalid[i]) for i in sorted(dead['lost'])[:5]]}")
    if dead["wrong_rule"]:
        f.append(f"{len(dead['wrong_rule'])} dead letters with the wrong rule, e.g. {dead['wrong_rule'][:5]}")
    if dead["changed"]:
        f.append(f"{len(dead['changed'])} dead letters differ from the bytes sent")
    if dead["unexpected"]:
        f.append(f"{len(dead['unexpected'])} dead letters for valid or untagged inputs")
    if anomalies["lost"]:
        f.append(f"{len(anomalies['lost'])} anomalous inputs without an event in ticks.anomalies, "
                 f"e.g. {anomalies['lost'][:3]}")
    if anomalies["changed"]:
        f.append(f"{len(anomalies['changed'])} ticks.anomalies events whose record differs from its input")
    if not r.conserved:
        f.append(f"not conserved: sent {r.sent} != landed {r.landed} + rejected {r.rejected} "
                 f"+ re-sends {r.dup_injected}")
    if (msg := reconcile_dups(r.dup_injected, r.dup_immutable, r.dup_dropped, exact=strict_topics)) is not None:
        f.append(msg)
    if strict_topics:
        for name, n in (("ticks.clean", r.clean_dups), ("ticks.rejected", r.rejected_dups),
                        ("ticks.anomalies", r.anomaly_dups)):
            if n:
                f.append(f"{n} duplicate records in {name}")
    r.ok = not f
    return r


RESULTS: list[FaultResult] = []


def report(results: list[FaultResult]) -> list[str]:
    """The fault table: one line per fault test. lost, duplicated, changed must be 0; the topic duplicate
    columns are what a consumer of that topic would see twice (0 expected only with kafka.exactly_once)."""
    cols = ("fault", "sent", "landed", "rejected", "dup sent", "dup dropped", "lost", "duplicated", "changed",
            "clean dups", "rej dups", "anom dups", "conserved", "ok")
    rows = [(r.fault, r.sent, r.landed, r.rejected, r.dup_injected,
             "n/a" if r.dup_dropped is None else r.dup_dropped, r.lost, r.duplicated, r.changed, r.clean_dups,
             r.rejected_dups, r.anomaly_dups, "yes" if r.conserved else "NO", "yes" if r.ok else "NO")
            for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(cols, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*cols), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]


# ------------------------------------------------------------------------------------------ I/O


async def produce_all(producer: Any, topic: str, messages: list[tuple[bytes, bytes]], start: int = 0) -> None:
    futures = [await producer.send(topic, v, key=k, headers=[("test.index", str(i).encode())])
               for i, (k, v) in enumerate(messages, start)]
    await asyncio.gather(*futures)


async def produce_paced(producer: Any, topic: str, messages: list[tuple[bytes, bytes]], start: int = 0,
                        chunk: int = 100, every: float = 0.5) -> None:
    """Produce in chunks, `every` seconds apart, so a flow is running whenever a fault strikes."""
    for off in range(0, len(messages), chunk):
        await produce_all(producer, topic, messages[off:off + chunk], start + off)
        await asyncio.sleep(every)


async def pg_count(iso: Any, pg: Any) -> int:
    import asyncpg

    try:
        return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data")
    except asyncpg.UndefinedTableError:
        return 0


async def wait_for_rows(iso: Any, pg: Any, more_than: int, what: str, timeout: float = 90) -> int:
    """Wait until market_data has more than `more_than` rows (the flow is running); returns the count."""
    from tests.integration.conftest import wait_until

    async def enough() -> int:
        n = await pg_count(iso, pg)
        return n if n > more_than else 0

    return await wait_until(enough, timeout, what)


def _headers(rec: Any) -> dict[str, str]:
    return {k: v.decode(errors="replace") for k, v in (rec.headers or [])}


async def read(iso: Any, role_topic: str) -> list[Any]:
    """A topic read fully from the beginning, as a consumer that only sees committed records would."""
    from streams.tools.measure import read_topic

    return await read_topic(iso.bootstrap, role_topic, isolation_level="read_committed")


async def sink_duplicates(iso: Any, pg: Any) -> int | None:
    """The sink's own count of rows it skipped as duplicates (the latest data_quality_metrics snapshot)."""
    import asyncpg

    try:
        return await pg.fetchval(
            f"SELECT duplicates FROM {iso.schema}.data_quality_metrics WHERE source = 'simulated' "
            "ORDER BY recorded_at DESC, id DESC LIMIT 1")
    except asyncpg.UndefinedTableError:
        return None


SNAPSHOT_COUNTERS = ("processed", "valid", "rejected", "written", "duplicates")


def snapshots_going_back(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The stored data_quality_metrics series of one source, in the order it was recorded: every place where a
    counter of the cluster-wide table went back (a stale copy of the table stored between the owner's)."""
    out: list[str] = []
    prev: Mapping[str, Any] | None = None
    for row in rows:
        if prev is not None:
            out += [f"{c} {prev[c]} -> {row[c]} ({prev['worker']} then {row['worker']})"
                    for c in SNAPSHOT_COUNTERS if row[c] < prev[c]]
        prev = row
    return out


async def stored_snapshots(iso: Any, pg: Any, source: str = "simulated") -> list[dict[str, Any]]:
    return [dict(r) for r in await pg.fetch(
        f"SELECT worker, {', '.join(SNAPSHOT_COUNTERS)} FROM {iso.schema}.data_quality_metrics WHERE source = $1 "
        "ORDER BY recorded_at, id", source)]


async def gather(iso: Any, pg: Any, expected: Expected) -> Observed:
    """Wait for the flow to drain (bounded), then read everything the oracles need."""
    from tests.integration.conftest import wait_until

    async def all_rows() -> bool:
        return await pg_count(iso, pg) >= len(expected.valid)

    async def all_dead() -> bool:
        got = {_headers(r).get("test.index") for r in await read(iso, iso.topic("rejected"))}
        return {str(i) for i in expected.invalid} <= got

    for check, timeout, what in ((all_rows, 240, "every valid row"), (all_dead, 60, "every dead letter")):
        try:
            await wait_until(check, timeout, what, interval=2.0)
        except AssertionError:
            pass  # measured and reported below

    raw = [(int(h["test.index"]) if "test.index" in (h := _headers(r)) else None, r.value or b"")
           for r in await read(iso, iso.raw_topic())]

    async def metrics_settled() -> int | None:
        n = await sink_duplicates(iso, pg)
        return n if n is not None and n >= raw_resends(expected, raw)[2] else None

    try:  # the snapshot is written every second by the metrics table's owner; give it time to catch up
        await wait_until(metrics_settled, 30, "the sink's duplicate count", interval=2.0)
        await asyncio.sleep(3)
    except AssertionError:
        pass
    cols = ", ".join(("source", "symbol", "data_type", "ts", "item_id", "price", "volume", "bid", "ask"))
    rows = [dict(r) for r in await pg.fetch(f"SELECT {cols} FROM {iso.schema}.market_data")]
    letters = []
    for rec in await read(iso, iso.topic("rejected")):
        h = _headers(rec)
        idx = int(h["test.index"]) if "test.index" in h else None
        value = rec.value or b""
        letters.append(DeadLetter(idx, h.get("tickflow.rule", ""), bytes_hash(value),
                                  "tickflow.value.truncated_from" in h))
    clean = [r.value for r in await read(iso, iso.topic("clean"))]
    anomalies = [r.value for r in await read(iso, iso.topic("anomalies"))]
    return Observed(raw, rows, clean, letters, anomalies, await sink_duplicates(iso, pg))


def label(fault: str, exactly_once: bool) -> str:
    """The fault table's row label: " (EOS)" marks a run with exactly-once into the topics on."""
    return f"{fault} (EOS)" if exactly_once else fault


async def check_oracles(iso: Any, pg: Any, inputs: Inputs, fault: str, strict_topics: bool = False) -> FaultResult:
    """Gather, evaluate, record the result for the session's fault table, and fail on any broken oracle."""
    expected = Expected.from_inputs(inputs)
    fault = label(fault, getattr(iso, "exactly_once", False))
    result = evaluate(fault, expected, await gather(iso, pg, expected), strict_topics=strict_topics)
    RESULTS.append(result)
    assert result.ok, f"{fault}: " + "; ".join(result.failures)
    return result
