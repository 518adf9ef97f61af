"""One market_data write's client CPU and wall time, in-process, against the running PostgreSQL: the two ways
in (one JSON parameter for batches up to sinks.postgres.SMALL_BATCH_ROWS, COPY into the staging table above),
at each batch size given, alternating, on a schema of its own that it drops at the end.

Why: at moderate rates the write stage writes ~75 small batches a second, and their fixed cost (round trips,
statement preparation) is most of a small write's time; this measures that cost without Kafka's noise. The
stack must run (dev/stack.sh start); every key is new.

    .cache/venv/bin/python bench/write_cost.py --sizes 13,64,200,2000 [--kind quote]

`--records`: the clean records' own JSON instead (write_json, the write stage's way above SMALL_BATCH_ROWS), by
its two INSERTs alternating: the plain one for new, distinct keys, and the ON CONFLICT one with the dedupe sort
that a batch meeting a stored key takes (bench/README.md, session 28):

    .cache/venv/bin/python bench/write_cost.py --records --sizes 4000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from sinks import postgres  # noqa: E402
from sinks.postgres import PostgresTickWriter, row_from_record  # noqa: E402
from streams.models import MarketDataPoint  # noqa: E402
from streams.settings import load_settings  # noqa: E402

T0 = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _server_cpu(pid: int) -> float:
    """A PostgreSQL backend's CPU seconds so far (utime + stime, in clock ticks, /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _records(n: int, first: int, kind: str) -> list[bytes]:
    """Clean records with fresh keys, over 8 symbols; a quote is revisable (its revision is its ingestion time),
    a trade is not."""
    fields = ({"data_type": "quote", "bid": 99.5, "ask": 100.5, "bid_size": 3, "ask_size": 4} if kind == "quote"
              else {"data_type": "trade", "price": 100.0, "volume": 10})
    return [MarketDataPoint(
        symbol=f"SYM{(first + i) % 8}", timestamp=T0 + timedelta(milliseconds=first + i), source="simulated",
        item_id=str(first + i), metadata={"i": i}, ingested_at=T0, **fields).to_json() for i in range(n)]


def _rows(n: int, first: int, kind: str) -> list[tuple]:
    """Fresh keys; a quote is revisable (its revision is its ingestion time), a trade is not."""
    fields = ({"data_type": "quote", "bid": 99.5, "ask": 100.5, "bid_size": 3, "ask_size": 4} if kind == "quote"
              else {"data_type": "trade", "price": 100.0, "volume": 10})
    return [row_from_record(orjson.loads(MarketDataPoint(
        symbol="AAPL", timestamp=T0 + timedelta(milliseconds=first + i), source="simulated", item_id=str(first + i),
        metadata={"i": i}, **fields).to_json())) for i in range(n)]


async def _timed(write: Callable[[Any], Awaitable[Any]], batches: list[Any], n: int,
                 backend: int) -> tuple[float, float, float]:
    """Client CPU, server CPU and wall seconds to write the batches, each of n new keys."""
    c0, s0, t0 = _cpu(), _server_cpu(backend), time.perf_counter()
    for batch in batches:
        assert (await write(batch)).inserted == n
    return _cpu() - c0, _server_cpu(backend) - s0, time.perf_counter() - t0


def _medians(runs: list[tuple[float, float, float]]) -> tuple[float, ...]:
    return tuple(sorted(r[i] for r in runs)[len(runs) // 2] for i in range(3))


async def _measure_records(writer: PostgresTickWriter, backend: int, n: int, writes: int, rounds: int, kind: str,
                           first: int) -> None:
    """write_json of n fresh clean records: the plain INSERT against the ON CONFLICT one, alternating."""
    postgres.SMALL_BATCH_ROWS = 0
    results: dict[str, list[tuple[float, float, float]]] = {"on conflict": [], "plain": []}
    for _ in range(rounds):
        for way in results:
            writer._careful_batches = 10**9 if way == "on conflict" else 0  # which INSERT write_json runs
            reps = max(3, writes * 13 // max(n, 13))
            batches = [_records(n, first + k * n, kind) for k in range(reps)]
            first += reps * n
            spent = await _timed(writer.write_json, batches, n, backend)
            results[way].append(tuple(x / reps / n * 1e6 for x in spent))  # type: ignore[arg-type]
    for way, runs in results.items():
        cpu, server, wall = _medians(runs)
        print(f"{n:>5} {kind}s  {way:11s}  client CPU {cpu:6.2f} us  server CPU {server:6.2f} us"
              f"  wall {wall:6.2f} us  per row (median of {rounds}; server: "
              + ", ".join(f"{r[1]:.2f}" for r in runs) + ")")


async def measure(sizes: list[int], writes: int, rounds: int, kind: str, records: bool = False) -> None:
    # One connection, so the server's CPU for the writes is its one backend process's (/proc/<pid>/stat).
    pg = load_settings().postgres.model_copy(update={"db_schema": f"wc_{uuid.uuid4().hex[:8]}",
                                                     "pool_min": 1, "pool_max": 1})
    writer = PostgresTickWriter(pg)
    await writer.start()
    assert writer.pool is not None
    backend = await writer.pool.fetchval("SELECT pg_backend_pid()")
    small = postgres.SMALL_BATCH_ROWS
    next_key = 0
    try:
        if records:
            for n in sizes:
                await _measure_records(writer, backend, n, writes, rounds, kind, next_key)
                next_key += 10**9
            return
        for n in sizes:
            results: dict[str, list[tuple[float, float, float]]] = {"json": [], "copy": []}
            for _ in range(rounds):
                for way in ("copy", "json"):
                    postgres.SMALL_BATCH_ROWS = max(n, small) if way == "json" else 0
                    reps = max(3, writes * 13 // max(n, 13))
                    batches = [_rows(n, next_key + k * n, kind) for k in range(reps)]
                    next_key += reps * n
                    spent = await _timed(writer.write, batches, n, backend)
                    results[way].append(tuple(x / reps * 1e3 for x in spent))  # type: ignore[arg-type]
            for way, runs in results.items():
                cpu, server, wall = _medians(runs)
                print(f"{n:>5} {kind}s  {way:7s}  client CPU {cpu:7.3f} ms  server CPU {server:7.3f} ms"
                      f"  wall {wall:7.3f} ms  per write (median of {rounds})")
    finally:
        postgres.SMALL_BATCH_ROWS = small
        assert writer.pool is not None
        await writer.pool.execute(f'DROP SCHEMA "{pg.db_schema}" CASCADE')
        await writer.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="13,64,200,2000", help="rows per batch, comma-separated")
    ap.add_argument("--writes", type=int, default=300, help="13-row writes per measurement (fewer when larger)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating measurements per way and size")
    ap.add_argument("--kind", choices=("trade", "quote"), default="trade", help="the rows' kind (default trade)")
    ap.add_argument("--records", action="store_true",
                    help="clean records' JSON by write_json: the plain INSERT against the ON CONFLICT one")
    args = ap.parse_args()
    asyncio.run(measure([int(s) for s in args.sizes.split(",")], args.writes, args.rounds, args.kind,
                        args.records))


if __name__ == "__main__":
    main()
