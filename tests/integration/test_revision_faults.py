"""Revision semantics on the real stack (issue 14): worker processes, the broker, PostgreSQL, a kill -9.

Several revisions of the same keys (a forming 1m bar growing, the day's quote re-polled, FRED vintages closed
on the next poll) and immutable items (trades, ticks) that also arrive in a second, different version are sent
shuffled, some of them twice, into their raw topics while a worker runs; the worker is killed with -9 while
rows advance and a new one finishes the stream. Once drained:

- every row equals the newest revision of its key, compared by content (prices, sizes, realtime dates,
  ingested_at), and an immutable key keeps the version sent first;
- there is exactly one row per distinct key (nothing lost, nothing extra);
- `economic_as_of` (sinks/schema.py) answers exactly one value per observation date, from the vintage that
  was current on the probed date.

"Newest" is the test's own order (the last poll, the latest publish time), built so that the sink's revision
key (sinks/base.py revision_of) grows with it; the builder checks that premise. The comparison is pure
(`revision_failures`, `as_of_failures`) and is shown to fail on a broken outcome without the stack.

The FRED observations are dated over a year back, as real ones are: their clean records carry the publish time
as the Kafka timestamp (streams/contract.py MAX_PAST_MS), so retention cannot take them before the writer."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from sinks.base import OPEN_VINTAGE_END, REVISABLE_KINDS, revision_of
from streams.models import MarketDataPoint
from tests.integration.conftest import Isolation, Worker, ensure_topics_for, wait_until
from tests.integration.oracles import pg_count, wait_for_rows

Key = tuple[str, str, str, datetime, str]  # the natural key: source, symbol, data_type, ts, item_id
Content = tuple[Any, ...]
CONTENT_FIELDS = ("price", "volume", "bid", "ask", "bid_size", "ask_size", "open", "high", "low", "close",
                  "interval", "value", "realtime_start", "realtime_end", "ingested_at")
SEED_ENV = "TICKFLOW_TEST_REVISION_SEED"

# ------------------------------------------------------------------------------------------ pure oracle


def _utc(value: Any) -> datetime | None:
    if value is None:
        return None
    dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return dt.astimezone(UTC)


def _day(value: Any) -> date | None:
    """A realtime date from JSON text or from PostgreSQL (asyncpg reads the open end, 'infinity', as date.max)."""
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(str(value))


def _num(value: Any) -> float | None:
    return None if value is None else float(value)


def key_of(d: Mapping[str, Any]) -> Key:
    """The natural key of a record dict (`timestamp`) or a row dict (`ts`)."""
    ts = _utc(d.get("ts", d.get("timestamp")))
    assert ts is not None
    return (d["source"], d["symbol"], str(d["data_type"]), ts, d.get("item_id") or "")


def content_of(d: Mapping[str, Any]) -> Content:
    """What a revision says, in one canonical form for a record dict and a row dict alike. Flags and metadata
    are left out: the detectors may add flags on the way (they do not make another revision of the values)."""
    out: list[Any] = []
    for f in CONTENT_FIELDS:
        v = d.get(f)
        if f in ("realtime_start", "realtime_end"):
            out.append(_day(v))
        elif f == "ingested_at":
            out.append(_utc(v))
        elif f == "interval":
            out.append(v)
        else:
            out.append(_num(v))
    return tuple(out)


@dataclass
class Truth:
    """What the inputs oblige: per key the content that must be stored, and the other versions sent (so a
    wrong row is named stale, an older revision or a later immutable version, rather than just changed)."""

    want: dict[Key, Content] = field(default_factory=dict)
    others: dict[Key, set[Content]] = field(default_factory=dict)


def revision_failures(truth: Truth, rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """Each stored row against the content its key must hold: keys with no row (missing), with more than one
    (duplicated), holding another version that was sent (stale), holding content never sent (changed), rows
    for keys never sent (unexpected). All empty: the outcome is right."""
    by_key: dict[Key, list[Content]] = {}
    for r in rows:
        by_key.setdefault(key_of(r), []).append(content_of(r))
    out: dict[str, list[Any]] = {"missing": [], "duplicated": [], "stale": [], "changed": [], "unexpected": []}
    for k, want in truth.want.items():
        got = by_key.get(k)
        if not got:
            out["missing"].append(k)
            continue
        if len(got) > 1:
            out["duplicated"].append((k, len(got)))
        for c in got:
            if c == want:
                continue
            out["stale" if c in truth.others.get(k, ()) else "changed"].append((k, c, want))
    out["unexpected"] = [k for k in by_key if k not in truth.want]
    return out


def as_of_failures(want: Mapping[date, tuple[date, float]], got: Iterable[Mapping[str, Any]]) -> list[str]:
    """One economic_as_of answer against the vintages that were current then: per observation date exactly one
    row, from the right vintage (realtime_start) with its value; no date missing, none extra."""
    rows: dict[date, list[tuple[date, float]]] = {}
    for r in got:
        rows.setdefault(r["observation_date"], []).append((r["realtime_start"], r["value"]))
    fails = [f"{d}: {len(v)} values {v}" for d, v in sorted(rows.items()) if len(v) != 1]
    fails += [f"{d}: no value, want {w}" for d, w in sorted(want.items()) if d not in rows]
    fails += [f"{d}: {v[0]}, want {want[d]}" for d, v in sorted(rows.items())
              if len(v) == 1 and d in want and v[0] != want[d]]
    fails += [f"{d}: {v} for a date unknown then" for d, v in sorted(rows.items()) if d not in want]
    return fails


# ------------------------------------------------------------------------------------------ inputs


@dataclass
class Series:
    """One FRED series' ground truth: its observation dates and, per date, the vintages (start, end, value)."""

    symbol: str
    vintages: dict[date, list[tuple[date, date, float]]]

    def as_of(self, day: date) -> dict[date, tuple[date, float]]:
        """The value of each observation date as known on `day` (FRED ALFRED: start <= day <= end)."""
        out: dict[date, tuple[date, float]] = {}
        for obs, vs in self.vintages.items():
            for start, end, value in vs:
                if start <= day <= end:
                    out[obs] = (start, value)
        return out


@dataclass
class Inputs:
    """Messages as (source, Kafka key, value) in send order, the truth they oblige, and how they were made."""

    messages: list[tuple[str, bytes, bytes]]
    truth: Truth
    series: list[Series]
    resends: int
    revisable_keys: int
    immutable_keys: int


def _point(**kw: Any) -> dict[str, Any]:
    """A record as a producer writes it (the model's own JSON), as a dict."""
    return orjson.loads(MarketDataPoint(**kw).to_json())


def build_inputs(rng: random.Random, now: datetime) -> Inputs:
    """Revisable keys with several revisions each (newest last in `versions`), immutable keys some of which
    get a second, different version, shuffled, with ~10% of the messages re-sent later."""
    base = now.replace(second=0, microsecond=0) - timedelta(hours=2)
    today = now.date()
    versions: dict[Key, list[dict[str, Any]]] = {}  # revisable: oldest ... newest

    def add(rec: dict[str, Any]) -> None:
        versions.setdefault(key_of(rec), []).append(rec)

    # Yahoo 1m bars re-sent as they form: close moves, high/low widen, volume grows; the final one is the bar.
    for sym in ("AAPL", "MSFT", "NVDA", "SPY"):
        for m in range(25):
            ts = base + timedelta(minutes=m)
            level = 100.0 + 0.002 * m  # a calm market: no bar is an outlier, so no detector re-sends one
            for r in range(5):
                close = level + 0.004 * (r - 2)
                add(_point(symbol=sym, timestamp=ts, source="yahoo", data_type="bar", interval="1m", item_id="1m",
                           open=level, high=max(level, close) + 0.001 * r, low=min(level, close) - 0.001 * r,
                           close=close, volume=100.0 * (r + 1), ingested_at=ts + timedelta(seconds=10 * (r + 1))))
    # Alpha Vantage: the day's quote, one row per symbol and UTC day, re-polled through the day.
    for sym in ("AAPL", "MSFT", "IBM"):
        for back in range(3):
            day = today - timedelta(days=back)
            ts = datetime(day.year, day.month, day.day, tzinfo=UTC)
            for r in range(5):
                price = 150.0 + back + 0.05 * r
                add(_point(symbol=sym, timestamp=ts, source="alpha_vantage", data_type="quote",
                           item_id="global_quote", price=price, bid=price - 0.01, ask=price + 0.01,
                           bid_size=100.0 + r, ask_size=200.0 + r,
                           ingested_at=base + timedelta(minutes=3 * r, seconds=back)))
    # FRED, as producers/fred.py sends it (item_id = realtime_start): vintage j starts on release day j; every
    # poll answers every vintage known so far, the newest open (9999-12-31), each older one closed the day
    # before its successor began. Two polls a release day; publish times are minutes apart (a day compressed).
    releases = [today - timedelta(days=2 - j) for j in range(3)]
    series: list[Series] = []
    for s, sym in enumerate(("DGS10", "DFF", "T10Y2Y")):
        truth: dict[date, list[tuple[date, date, float]]] = {}
        for d in range(4):
            obs = today - timedelta(days=400 + 6 - d)
            ends = [releases[j + 1] - timedelta(days=1) for j in range(len(releases) - 1)] + [OPEN_VINTAGE_END]
            truth[obs] = [(start, ends[j], 4.0 + s + 0.1 * d + 0.01 * j) for j, start in enumerate(releases)]
            for k in range(len(releases)):
                for half in range(2):
                    published = base + timedelta(minutes=10 * (2 * k + half), seconds=d)
                    for j in range(k + 1):
                        start, _, value = truth[obs][j]
                        end = OPEN_VINTAGE_END if j == k else truth[obs][j][1]
                        add(_point(symbol=sym, timestamp=datetime(obs.year, obs.month, obs.day, tzinfo=UTC),
                                   source="fred", data_type="economic", value=value, realtime_start=start,
                                   realtime_end=end, item_id=start.isoformat(), ingested_at=published))
        series.append(Series(sym, truth))

    sent: list[dict[str, Any]] = [rec for vs in versions.values() for rec in vs]
    # Immutable kinds: Finnhub trades and Yahoo ticks. About 30% also come in a second, different version
    # published later: the first one sent must stay whatever its revision key would say.
    immutable: list[dict[str, Any]] = []
    for source, kind, symbols, n in (("finnhub", "trade", ("AAPL", "MSFT", "TSLA", "AMZN"), 120),
                                     ("yahoo", "tick", ("AAPL", "SPY"), 80)):
        for sym in symbols:
            for i in range(n):
                ts = base + timedelta(seconds=i, milliseconds=250 * (i % 4))
                first = _point(symbol=sym, timestamp=ts, source=source, data_type=kind, item_id=f"{sym}:{i}",
                               price=200.0 + 0.01 * i, volume=10.0, ingested_at=ts + timedelta(milliseconds=100))
                immutable.append(first)
                if rng.random() < 0.3:
                    immutable.append({**first, "price": first["price"] + 0.5, "volume": 20.0,
                                      "ingested_at": (ts + timedelta(seconds=30)).isoformat()})
    sent += immutable
    rng.shuffle(sent)
    # Re-sends: a copy of ~10% of the messages, each somewhere after its original (a re-poll, a producer retry).
    n = len(sent)
    placed = [(float(i), rec) for i, rec in enumerate(sent)]
    resend_idx = rng.sample(range(n), n // 10)
    placed += [(rng.uniform(i + 0.5, n), sent[i]) for i in resend_idx]
    placed.sort(key=lambda p: p[0])
    order = [rec for _, rec in placed]

    t = Truth()
    for k, vs in versions.items():
        assert k[2] in REVISABLE_KINDS
        revs = [revision_of(k[2], _utc(v["ingested_at"]), _day(v.get("realtime_end"))) for v in vs]
        # The premise: the sink's revision key grows with the version this test calls newest.
        assert revs[-1] > max(revs[:-1]), (k, revs)
        t.want[k] = content_of(vs[-1])
        t.others[k] = {content_of(v) for v in vs[:-1]}
    revisable_keys = len(t.want)
    for rec in order:  # immutable: the first version in send order (one key, one partition: order is kept)
        k = key_of(rec)
        if k[2] in REVISABLE_KINDS:
            continue
        if k not in t.want:
            t.want[k] = content_of(rec)
            t.others[k] = set()
        elif content_of(rec) != t.want[k]:
            t.others[k].add(content_of(rec))
    messages = [(rec["source"], rec["symbol"].encode(), orjson.dumps(rec)) for rec in order]
    return Inputs(messages, t, series, len(resend_idx), revisable_keys, len(t.want) - revisable_keys)


# ------------------------------------------------------------------------------------------ I/O


async def produce_paced(producer: Any, iso: Isolation, messages: list[tuple[str, bytes, bytes]],
                        chunk: int = 80, every: float = 0.3) -> None:
    """Into each record's raw topic, in send order, `chunk` at a time: the flow runs while the fault strikes."""
    for off in range(0, len(messages), chunk):
        futures = [await producer.send(iso.raw_topic(source), value, key=key)
                   for source, key, value in messages[off:off + chunk]]
        await asyncio.gather(*futures)
        await asyncio.sleep(every)


ROW_COLUMNS = ("source", "symbol", "data_type", "ts", "item_id", *CONTENT_FIELDS)


async def fetch_rows(iso: Isolation, pg: Any) -> list[dict[str, Any]]:
    cols = ", ".join(f'"{c}"' for c in ROW_COLUMNS)
    return [dict(r) for r in await pg.fetch(f"SELECT {cols} FROM {iso.schema}.market_data")]


async def trace(iso: Isolation, keys: list[Key]) -> list[str]:
    """Where each of `keys` went: every version of it in its raw topic and in the clean topic (committed
    transactions only, as the writer reads), in log order, so a failure says which hop changed the order."""
    out: list[str] = []
    for topic, source in [*((iso.raw_topic(s), s) for s in sorted({k[0] for k in keys})), (iso.topic("clean"), "")]:
        consumer = AIOKafkaConsumer(topic, bootstrap_servers=iso.bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, isolation_level="read_committed")
        await consumer.start()
        try:
            while batch := await consumer.getmany(timeout_ms=2000, max_records=5000):
                for tp, recs in batch.items():
                    for r in recs:
                        try:
                            k = key_of(orjson.loads(r.value))
                        except Exception:
                            continue
                        if k in keys and (not source or k[0] == source):
                            d = orjson.loads(r.value)
                            out.append(f"{topic}[{tp.partition}]@{r.offset} ts={r.timestamp} {k[1]} {k[4]} "
                                       f"price={d.get('price')} ingested_at={d.get('ingested_at')}")
        finally:
            await consumer.stop()
    return out


async def drained(iso: Isolation, pg: Any, w: Worker, truth: Truth) -> bool:
    """Every key has a row and no stage group has lag left (read from the cluster through the worker)."""
    keys = {key_of(r) for r in await pg.fetch(
        f"SELECT source, symbol, data_type, ts, item_id FROM {iso.schema}.market_data")}
    if not truth.want.keys() <= keys:
        return False
    _, health = w.get("/health")  # any status: a worker still catching up answers 503 with the same body
    if not isinstance(health, dict):
        return False
    lag = health.get("lag") or {}
    return bool(lag) and iso.topic("clean") in lag and all(n == 0 for n in lag.values())


# ------------------------------------------------------------------------------------------ tests


async def test_shuffled_revisions_and_kill_9_end_at_the_newest(iso, workers, producer, pg) -> None:
    started = time.monotonic()
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(2**32))
    print(f"revisions under kill -9: seed {seed} ({SEED_ENV}={seed} repeats it)")
    rng = random.Random(seed)
    inputs = build_inputs(rng, datetime.now(UTC))
    truth = inputs.truth
    keys = len(truth.want)
    await ensure_topics_for(iso)

    victim = workers("victim")
    raw = iso.raw_topic("yahoo")
    await wait_until(lambda: victim.owned(raw, "validate"), 90, "the victim to own the raw partitions")
    owned_at = time.monotonic() - started
    feeder = asyncio.create_task(produce_paced(producer, iso, inputs.messages))
    try:
        landed = await wait_for_rows(iso, pg, 0, "rows to land under the victim", timeout=60)
        delay = rng.uniform(0.2, 1.5)
        await asyncio.sleep(delay)  # somewhere in a batch: fetch, validate, send, insert or commit
        at_kill = await pg_count(iso, pg)
        assert victim.alive() and victim.owned(raw, "validate"), "the victim was not working when killed"
        os.kill(victim.pid, signal.SIGKILL)
        kill_wall = datetime.now(UTC)
        assert victim.proc is not None and victim.proc.wait(timeout=10) == -signal.SIGKILL
        print(f"killed the victim {delay:.2f} s after rows landed ({landed} -> {at_kill} of {keys} keys)")
        survivor = workers("survivor")
        killed_at = time.monotonic() - started
        await feeder
    finally:
        feeder.cancel()
    assert 0 < at_kill < keys, f"the kill was not mid-flow: {at_kill} rows of {keys} keys"

    # The victim's membership lapses after the stages' 30 s session timeout; then the survivor re-reads
    # whatever the victim had not committed.
    async def done() -> bool:
        return await drained(iso, pg, survivor, truth)

    await wait_until(done, 120, "every key written and no lag left", interval=1.0)
    drained_at = time.monotonic() - started
    await asyncio.sleep(2)  # a last look: nothing in flight changes a row after the drain
    assert await drained(iso, pg, survivor, truth), "lag came back after the drain"

    rows = await fetch_rows(iso, pg)
    fails = revision_failures(truth, rows)
    summary = {k: len(v) for k, v in fails.items()}
    print(f"sent {len(inputs.messages)} messages ({inputs.resends} re-sends) for {keys} keys "
          f"({inputs.revisable_keys} revisable, {inputs.immutable_keys} immutable); {len(rows)} rows; {summary}")
    if fails["stale"]:
        stale = [f[0] for f in fails["stale"][:3]]
        written = [f"stored {k[1]} {k[4]}: price {r['price']} written at {r['written_at']}" for k in stale
                   for r in await pg.fetch(f"SELECT price, written_at FROM {iso.schema}.market_data WHERE "
                                           "source = $1 AND symbol = $2 AND item_id = $3", k[0], k[1], k[4])]
        print(f"killed at {kill_wall}; trace of the stale keys:", *written, *await trace(iso, stale), sep="\n  ")
    assert not any(fails.values()), f"{summary}; e.g. " + "; ".join(
        f"{kind}: {example}" for kind, found in fails.items() for example in found[:2])
    assert len(rows) == keys

    q = iso.schema
    for s in inputs.series:
        starts = sorted({start for vs in s.vintages.values() for start, _, _ in vs})
        probes = [starts[0] - timedelta(days=1), *starts, starts[-1] + timedelta(days=400), OPEN_VINTAGE_END]
        for day in probes:
            got = await pg.fetch(f"SELECT * FROM {q}.economic_as_of($1, $2)", s.symbol, day)
            want = s.as_of(day)
            assert len(got) == len(want), (s.symbol, day, len(got), len(want))
            assert not (bad := as_of_failures(want, got)), (s.symbol, day, bad)
        assert s.as_of(starts[-1]) and not s.as_of(starts[0] - timedelta(days=1))  # the probes bite both ways
    assert survivor.alive()
    print(f"victim owned at {owned_at:.1f} s, killed at {killed_at:.1f} s, drained at {drained_at:.1f} s, "
          f"wall time {time.monotonic() - started:.1f} s")


def test_the_oracle_fails_on_a_stale_revision_a_lost_key_and_two_current_vintages() -> None:
    """The comparison above must be able to fail: an older revision stored in place of the newest is
    stale, a later immutable version in place of the first is stale, a lost key is missing, a key written
    twice is duplicated, and an as-of answer with two vintages for one date is refused."""
    inputs = build_inputs(random.Random(5), datetime.now(UTC))
    truth = inputs.truth

    def row(k: Key, c: Content) -> dict[str, Any]:
        return {"source": k[0], "symbol": k[1], "data_type": k[2], "ts": k[3], "item_id": k[4],
                **dict(zip(CONTENT_FIELDS, c, strict=True))}

    right = [row(k, c) for k, c in truth.want.items()]
    assert not any(revision_failures(truth, right).values())

    bar = next(k for k in truth.want if k[2] == "bar")
    older = sorted(truth.others[bar], key=lambda c: c[-1])[0]  # its first revision (by ingested_at)
    broken = [row(k, older if k == bar else c) for k, c in truth.want.items()]
    fails = revision_failures(truth, broken)
    assert [f[0] for f in fails["stale"]] == [bar] and not fails["changed"] and not fails["missing"]

    fred = next(k for k in truth.want if k[2] == "economic" and truth.want[k][-2] != OPEN_VINTAGE_END)
    still_open = next(c for c in truth.others[fred] if c[-2] == OPEN_VINTAGE_END)  # the closing never landed
    assert [f[0] for f in revision_failures(
        truth, [row(k, still_open if k == fred else c) for k, c in truth.want.items()])["stale"]] == [fred]

    trade = next(k for k in truth.want if k[2] == "trade" and truth.others[k])
    later = next(iter(truth.others[trade]))
    assert [f[0] for f in revision_failures(
        truth, [row(k, later if k == trade else c) for k, c in truth.want.items()])["stale"]] == [trade]

    lost = revision_failures(truth, right[1:])
    assert lost["missing"] == [next(iter(truth.want))]
    doubled = revision_failures(truth, [*right, right[0]])
    assert [d[0] for d in doubled["duplicated"]] == [next(iter(truth.want))]

    s = inputs.series[0]
    day = max(start for vs in s.vintages.values() for start, _, _ in vs)
    want = s.as_of(day)
    good = [{"observation_date": d, "realtime_start": st, "value": v} for d, (st, v) in want.items()]
    assert as_of_failures(want, good) == []
    obs = next(iter(want))
    prev_start, _, prev_value = s.vintages[obs][-2]
    two = [*good, {"observation_date": obs, "realtime_start": prev_start, "value": prev_value}]
    assert as_of_failures(want, two) and "2 values" in as_of_failures(want, two)[0]
    old_only = [g if g["observation_date"] != obs else {**g, "realtime_start": prev_start, "value": prev_value}
                for g in good]
    assert len(as_of_failures(want, old_only)) == 1
