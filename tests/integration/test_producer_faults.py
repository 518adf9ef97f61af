"""tickflow's own producers under a fault: a worker runs the `replay` source (producers/replay.py, supervised by
streams/stages/produce.py) over a yfinance CSV written by the test, and is killed with -9 mid-replay.

What happens (measured by this test, reported in the fault table): the replay has no checkpoint, so the
restarted worker replays the file from its first row. Every bar that had already reached raw.replay is sent
again ("dup sent"); bars are revisable (sinks/base.py), so the sink replaces each re-sent bar's row with the
same values under a newer revision: PostgreSQL holds each bar once, by its natural key. ticks.clean is read as
a consumer sees it, and holds the re-sent bars again ("clean dups"): a consumer of ticks.clean must dedupe by
the natural key. (A replay that reaches the end of its files is finished, not started again by the supervisor.)

The oracles (tests/integration/oracles.py) identify an input by (source, item_id) and compare the values
`content` covers. A bar's item_id is its interval, shared by every bar, so each row and record is seen through
`bar_view`: the CSV's Adj Close column carries a serial number per bar (the producer keeps it untouched in
metadata.adj_close), which becomes the identity, so a row written twice under a rewritten key is a duplicate,
not a pass; and `price` carries a fingerprint of interval, open, high, low and close, so the oracle's content
hash covers every value of the bar (symbol, time, volume it covers itself)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from streams.tools.measure import read_topic
from tests.integration.conftest import ensure_topics_for, wait_until
from tests.integration.oracles import (
    RESULTS,
    DeadLetter,
    Expected,
    Observed,
    bytes_hash,
    content,
    content_hash,
    evaluate,
    identity,
    pg_count,
    wait_for_rows,
)

SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOG")
DAYS = 700  # business days: 3,500 bars
STEP_SECONDS = 0.05  # each day's bars wait this long (max_wait_seconds): one pass takes about 35 s


def fingerprint(*values: Any) -> float:
    """A 48-bit digest as a float (exact in a double), so the oracle's content hash covers these values."""
    return float(int(hashlib.sha1(orjson.dumps(list(values))).hexdigest()[:12], 16))


def bar_view(d: dict[str, Any]) -> dict[str, Any]:
    """A bar (a record dict or a PostgreSQL row) as the oracles see an input: identity from the serial in
    metadata.adj_close, every value of the bar in `content`."""
    meta = d.get("metadata") or {}
    if isinstance(meta, str | bytes):
        meta = orjson.loads(meta)
    ts = d.get("ts", d.get("timestamp"))
    return {
        "source": d.get("source"),
        "symbol": d.get("symbol"),
        "data_type": str(d.get("data_type")),
        "ts": ts.isoformat() if isinstance(ts, datetime) else ts,
        "item_id": f"bar#{meta.get('adj_close')}",
        "price": fingerprint(
            d.get("item_id"), d.get("interval"), d.get("open"), d.get("high"), d.get("low"), d.get("close")
        ),
        "volume": d.get("volume"),
    }


def view_bytes(value: bytes | None) -> bytes:
    return orjson.dumps(bar_view(orjson.loads(value or b"{}")))


def business_days(start: date, n: int) -> list[date]:
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


def write_bars(path: Path, seed: int = 61) -> list[dict[str, Any]]:
    """A yfinance >= 0.2.51 multi-ticker CSV (three header rows, auto_adjust=False) of daily random-walk bars;
    returns every bar as the pipeline must store it (UTC midnight, interval 1d, source replay)."""
    rng = random.Random(seed)
    days = business_days(date(2021, 1, 4), DAYS)
    fields = ("Adj Close", "Close", "High", "Low", "Open", "Volume")
    lines = [
        "Price," + ",".join(f for f in fields for _ in SYMBOLS),
        "Ticker," + ",".join(s for _ in fields for s in SYMBOLS),
        "Date" + "," * (len(fields) * len(SYMBOLS)),
    ]
    bars: list[dict[str, Any]] = []
    last = {s: 50.0 + 40 * i for i, s in enumerate(SYMBOLS)}
    serial = 0
    for day in days:
        cols: dict[str, dict[str, str]] = {f: {} for f in fields}
        for s in SYMBOLS:
            serial += 1
            o = round(last[s] * (1 + rng.uniform(-0.004, 0.004)), 2)
            c = round(o * (1 + rng.uniform(-0.008, 0.008)), 2)
            h = round(max(o, c) * (1 + rng.uniform(0, 0.004)), 2)
            lo = round(min(o, c) * (1 - rng.uniform(0, 0.004)), 2)
            v = rng.randrange(100_000, 5_000_000)
            last[s] = c
            for f, x in zip(fields, (float(serial), c, h, lo, o, v), strict=True):
                cols[f][s] = repr(x)
            bars.append(
                {
                    "source": "replay",
                    "symbol": s,
                    "data_type": "bar",
                    "ts": datetime(day.year, day.month, day.day, tzinfo=UTC),
                    "item_id": "1d",
                    "interval": "1d",
                    "open": o,
                    "high": h,
                    "low": lo,
                    "close": c,
                    "volume": float(v),
                    "metadata": {"adj_close": float(serial)},
                }
            )
        lines.append(day.isoformat() + "," + ",".join(cols[f][s] for f in fields for s in SYMBOLS))
    path.write_text("\n".join(lines) + "\n")
    return bars


def expected_of(bars: list[dict[str, Any]], sent: int) -> Expected:
    """Each bar of the file once. `sent` is what the raw topic holds: the producer under test decides how many
    records it sends (a restarted replay sends the file again), so it is measured, never fixed by the test."""
    valid: dict[tuple[str, str], str] = {}
    for b in bars:
        c = content(bar_view(b))
        valid[identity(c)] = content_hash(c)
    assert len(valid) == len(bars)
    return Expected(sent=sent, valid=valid, multiplicity=Counter(dict.fromkeys(valid, 1)), invalid={}, invalid_bytes={})


async def distinct_in_raw(bootstrap: str, topic: str) -> tuple[int, int]:
    """(records, distinct bars) in raw.replay, as a read_committed consumer sees them."""
    recs = await read_topic(bootstrap, topic, isolation_level="read_committed")
    return len(recs), len({identity(content(orjson.loads(view_bytes(r.value)))) for r in recs})


def replay_sent(health: Any) -> int | None:
    """The replay source's `sent` count from a worker's /health (None: not running yet)."""
    for s in (health or {}).get("sources", []) if isinstance(health, dict) else []:
        if s.get("source") == "replay":
            return int(s.get("sent", 0))
    return None


async def test_kill_9_mid_replay_then_restart(iso, workers, pg, tmp_path) -> None:
    """kill -9 while the replay is producing and rows are landing; the restarted worker's replay (from the file's
    start) must leave every bar in PostgreSQL exactly once with its values, and lose none."""
    await ensure_topics_for(iso)
    csv_path = tmp_path / "bars.csv"
    bars = write_bars(csv_path)
    n = len(bars)
    raw = iso.raw_topic("replay")
    env = {
        "TICKFLOW_SOURCES__REPLAY__ENABLED": "true",
        "TICKFLOW_SOURCES__REPLAY__FILES": orjson.dumps([str(csv_path)]).decode(),
        "TICKFLOW_SOURCES__REPLAY__SPEED": "1",  # paced, so the kill lands inside the replay
        "TICKFLOW_SOURCES__REPLAY__MAX_WAIT_SECONDS": str(STEP_SECONDS),
        "TICKFLOW_SOURCES__REPLAY__BATCH_SIZE": "50",
    }
    seed = int(os.environ.get("TICKFLOW_TEST_KILL_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill -9 mid-replay: timing seed {seed} (TICKFLOW_TEST_KILL_SEED={seed} repeats it)")
    rng = random.Random(seed)

    victim = workers("victim", **env)
    before = await wait_for_rows(iso, pg, 0, "replayed bars to land in PostgreSQL", timeout=180)
    delay = rng.uniform(0.0, 3.0)
    await asyncio.sleep(delay)
    status, health = victim.get("/health")
    sent = replay_sent(health)
    at_kill = await pg_count(iso, pg)
    assert victim.alive() and sent is not None and 0 < sent < n, (
        f"the replay was not mid-way when killed: sent {sent} of {n} (/health {status})"
    )
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.proc.wait(timeout=10) == -signal.SIGKILL
    records_at_kill, distinct_at_kill = await distinct_in_raw(iso.bootstrap, raw)
    print(
        f"killed {delay:.2f} s after rows landed: {before} -> {at_kill} rows in PostgreSQL, "
        f"{distinct_at_kill} of {n} bars in {raw} ({records_at_kill} records)"
    )
    assert 0 < before <= at_kill < n, (before, at_kill, n)  # rows were landing, not all of them yet
    assert 0 < distinct_at_kill < n, (distinct_at_kill, n)  # the replay was cut short: confirmed in the topic

    survivor = workers("survivor", **env)
    try:
        await wait_until(
            lambda: survivor.alive() and replay_sent(survivor.get("/health")[1]),
            180,
            "the restarted worker's replay to send",
        )

        async def all_landed() -> bool:
            return await pg_count(iso, pg) >= n

        try:
            await wait_until(all_landed, 300, "every bar in PostgreSQL", interval=2.0)
        except AssertionError:
            pass  # measured and reported by the oracles below
        await asyncio.sleep(3)  # a metrics snapshot (every second) covers the last batches
    finally:
        assert survivor.alive(), survivor.log_text()[-3000:]
        survivor.stop()  # the replay repeats while the worker runs: stop producing before reading

    observed = await observe(iso, pg, raw)
    expected = expected_of(bars, sent=len(observed.raw))
    result = evaluate("kill -9 mid-replay (tickflow's replay producer)", expected, observed)
    RESULTS.append(result)
    print(
        f"fault row: sent {result.sent}, landed {result.landed}, dup sent {result.dup_injected}, "
        f"dup dropped {result.dup_dropped}, lost {result.lost}, duplicated {result.duplicated}, "
        f"changed {result.changed}, clean dups {result.clean_dups}, conserved {result.conserved}"
    )
    assert result.ok, "; ".join(result.failures)
    assert result.landed == n and result.lost == 0 and result.duplicated == 0 and result.changed == 0
    # The restart replayed from the file's first row: bars that had reached the topic were sent again.
    assert result.dup_injected >= distinct_at_kill, (result.dup_injected, distinct_at_kill)


async def observe(iso: Any, pg: Any, raw: str) -> Observed:
    """Everything the oracles read, each row and record through `bar_view`."""
    import asyncpg

    raw_records = await read_topic(iso.bootstrap, raw, isolation_level="read_committed")
    cols = 'source, symbol, data_type, ts, item_id, "interval", "open", high, low, "close", volume, metadata'
    rows = [bar_view(dict(r)) for r in await pg.fetch(f"SELECT {cols} FROM {iso.schema}.market_data")]
    letters = []
    for rec in await read_topic(iso.bootstrap, iso.topic("rejected"), isolation_level="read_committed"):
        h = {k: v.decode(errors="replace") for k, v in (rec.headers or [])}
        letters.append(DeadLetter(None, h.get("tickflow.rule", ""), bytes_hash(rec.value)))
    clean = [
        view_bytes(r.value)
        for r in await read_topic(iso.bootstrap, iso.topic("clean"), isolation_level="read_committed")
    ]
    anomalies = [
        r.value for r in await read_topic(iso.bootstrap, iso.topic("anomalies"), isolation_level="read_committed")
    ]
    try:
        dups = await pg.fetchval(
            f"SELECT duplicates FROM {iso.schema}.data_quality_metrics WHERE source = 'replay' "
            "ORDER BY recorded_at DESC, id DESC LIMIT 1"
        )
    except asyncpg.UndefinedTableError:
        dups = None
    # Index 0 marks every raw record as a test input (valid: none is expected to be rejected).
    return Observed([(0, view_bytes(r.value)) for r in raw_records], rows, clean, letters, anomalies, dups)


def test_bar_view_lets_the_oracles_fail(tmp_path) -> None:
    """Pure (no stack): through `bar_view`, a lost bar, a changed high, and a bar written twice under a rewritten
    time (two rows, one serial) each fail the oracles; the file's bars as written pass."""
    bars = write_bars(tmp_path / "bars.csv")[:50]

    def outcome(rows: list[dict[str, Any]]) -> list[str]:
        records = [orjson.dumps(bar_view(r)) for r in bars]
        observed = Observed([(0, r) for r in records], [bar_view(r) for r in rows], records, [])
        return evaluate("view", expected_of(bars, sent=len(bars)), observed).failures

    assert outcome(bars) == []
    assert any("have no row" in f for f in outcome(bars[1:]))
    assert any(
        "differ from their input" in f for f in outcome([{**bars[0], "high": bars[0]["high"] + 0.01}, *bars[1:]])
    )
    moved = {**bars[0], "ts": bars[0]["ts"] + timedelta(hours=5)}
    assert any("extra rows" in f for f in outcome([*bars, moved]))
