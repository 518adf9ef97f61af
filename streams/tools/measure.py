"""Measurements on the real stack, shared by bench/throughput.py and `tickflow selftest` (streams/tools/selftest.py).

- `preload`: simulated points into a raw topic as fast as the idempotent producer goes (acks=all).
- `latency_run`: the simulated feed at a fixed rate for some seconds (`paced_feed`), then every row's end-to-end
  latency read back from PostgreSQL: `written_at` (set by the database when the row is inserted) minus
  `ingested_at` (the producer's record timestamp), as avg / p50 / p95 / p99 / max in milliseconds.
- `drop_topics`: a run's topics deleted at its end.

Rows of one run are found by their item_id prefix: the simulated source stamps `<run_id>-<seq>`, so a run
id must be plain letters and digits (it is used in a LIKE pattern).
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner

from producers.base import encode
from producers.runner import new_producer, send_batch
from producers.simulated import SimulatedSource
from streams.catalog import Catalog
from streams.settings import Settings, SimulatedSourceSettings


async def count_rows(conn: asyncpg.Connection, schema: str, run_id: str | None = None) -> int:
    """Rows in <schema>.market_data (of one run when `run_id` is given); 0 before the table exists."""
    try:
        if run_id is None:
            return await conn.fetchval(f"SELECT count(*) FROM {schema}.market_data")
        return await conn.fetchval(f"SELECT count(*) FROM {schema}.market_data WHERE item_id LIKE $1", run_id + "-%")
    except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
        return 0


async def wait_for_rows(conn: asyncpg.Connection, schema: str, run_id: str, n: int, timeout: float,
                        interval: float = 0.2) -> int:
    """Poll until the run has `n` rows or `timeout` seconds passed; returns the last count."""
    deadline = time.monotonic() + timeout
    got = await count_rows(conn, schema, run_id)
    while got < n and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        got = await count_rows(conn, schema, run_id)
    return got


async def preload(settings: Settings, topic: str, n: int, *, run_id: str | None = None, seed: int = 1,
                  chunk: int = 5000) -> float:
    """Send `n` valid simulated points to `topic` as fast as possible; returns the producer's points/s."""
    src = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0, seed=seed), run_id=run_id or uuid.uuid4().hex[:8])
    producer = new_producer(settings)
    await producer.start()
    t0 = time.perf_counter()
    try:
        sent = 0
        while sent < n:
            k = min(chunk, n - sent)
            sent += await send_batch(producer, topic, [encode(r) for r in src.batch(k)])
    finally:
        await producer.stop()
    return n / (time.perf_counter() - t0)


_CDF_AT = [i / 100 for i in range(1, 100)] + [0.995, 0.999]


async def latency_stats(conn: asyncpg.Connection, schema: str, run_id: str) -> dict[str, Any]:
    """End-to-end latency of a run's rows (written_at - ingested_at), in ms; None values when it has none."""
    row = await conn.fetchrow(
        f"SELECT count(*) AS n, percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms) AS p, "
        f"percentile_cont($2::float8[]) WITHIN GROUP (ORDER BY ms) AS cdf, "
        f"max(ms) AS max, avg(ms) AS avg FROM "
        f"(SELECT (extract(epoch FROM written_at - ingested_at) * 1000)::float8 AS ms "
        f"FROM {schema}.market_data WHERE item_id LIKE $1) x", run_id + "-%", _CDF_AT)
    p50, p95, p99 = row["p"] or (None, None, None)

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 2)

    return {"rows": row["n"], "p50_ms": r(p50), "p95_ms": r(p95), "p99_ms": r(p99), "max_ms": r(row["max"]),
            "avg_ms": r(row["avg"]),
            "cdf": [[q, r(v)] for q, v in zip(_CDF_AT, row["cdf"] or [], strict=False)]}  # for the plot


# The event time the points of a paced feed are encoded with, replaced by the time of their send.
_STAMP_MARK = datetime(2000, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
_STAMP_BYTES = b'"2000-01-01T00:00:00.123456Z"'
PACE_TICK = 0.01  # seconds between two sends of a paced feed


class SendClock:
    """Now, as a paced feed stamps a point: its event time as JSON bytes (as `_STAMP_BYTES`, to the microsecond,
    UTC) and its record timestamp in milliseconds, both from one reading of the clock. Only the part to the
    second goes through datetime, once a second: datetime.now and isoformat per point cost ~2.3 us."""

    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self.clock = clock
        self.second: int | None = None
        self.prefix = b""

    def __call__(self) -> tuple[bytes, int]:
        micros = self.clock() // 1000
        second, fraction = divmod(micros, 1_000_000)
        if second != self.second:
            self.second = second
            self.prefix = b'"' + datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.").encode()
        return self.prefix + b'%06dZ"' % fraction, micros // 1000


@dataclass
class FeedStats:
    """What a paced feed measured between its clock's start and its last acknowledgement (not while it built
    its points): how long it ran, this process's CPU meanwhile (the load generator's own cost), and how much
    each of the caller's probes (counters such as CPU seconds of other processes) moved."""

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    probed: dict[str, float] = field(default_factory=dict)


Probe = Callable[[], Mapping[str, float]]


async def paced_feed(settings: Settings, topic: str, rate: float, seconds: float, *, run_id: str, seed: int = 5,
                     tick: float = PACE_TICK, stats: FeedStats | None = None, probe: Probe | None = None) -> int:
    """`rate` simulated points per second into `topic` for `seconds`, as the live feed sends them (every point
    stamped with the time it is sent, its event time and its record timestamp; keyed by symbol, partitioned as
    the producers partition), at little CPU: the points are built and encoded before the clock starts, and
    each tick's are appended to one record batch per partition. The measured system shares this machine's
    cores with the load; the live feed's own path (a pydantic model and a send per point) cost ~40 us per point:
    0.41 of a core at 9,000 points/s, against 0.29 here with the build included (bench/README.md). A symbol's
    partition is hashed once, and the stamp is formatted from the clock's integer (`SendClock`): ~5 us per point
    instead of ~12 while sending. Returns the points sent (all acknowledged); `stats`, when given, is filled in
    (`probe` read as the clock starts and after the last acknowledgement)."""
    total = max(int(rate * seconds), 0)
    src = SimulatedSource(SimulatedSourceSettings(invalid_ratio=0.0, seed=seed), run_id=run_id)
    keys: dict[str, bytes] = {}
    points = [(keys.setdefault(p.symbol, p.symbol.encode()), p.to_json())
              for p in (src.point(_STAMP_MARK) for _ in range(total))]
    if points and _STAMP_BYTES not in points[0][1]:  # the encoding changed: fail here, not with rows never come
        raise RuntimeError(f"paced_feed: no {_STAMP_BYTES!r} in {points[0][1][:120]!r}")
    producer = new_producer(settings)
    await producer.start()
    partitioner, clock = DefaultPartitioner(), SendClock()
    # The points just built (a million objects for 30 s at 29,000/s) out of the garbage collector's reach while
    # the clock runs: a full collection walks them all (36-78 ms measured), a stall of the feed after which the
    # points due go out as one burst the live feed does not send (bench/README.md, session 32). Reference
    # counting still frees them as before.
    frozen_before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        partition_of = {key: partitioner(key, partitions, partitions) for key in keys.values()}
        probed0 = dict(probe()) if probe is not None else {}
        cpu0, start = time.process_time(), time.monotonic()
        sent = 0
        while sent < total:
            await asyncio.sleep(tick)
            due = min(total, int((time.monotonic() - start) * rate))
            if due <= sent:
                continue
            by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
            for key, value in points[sent:due]:
                by_partition[partition_of[key]].append((key, value))
            acks = []
            for partition, msgs in by_partition.items():
                batch = producer.create_batch()
                for key, value in msgs:
                    stamp, ms = clock()
                    while batch.append(key=key, value=value.replace(_STAMP_BYTES, stamp),
                                       timestamp=ms) is None:  # full: send, new batch
                        batch.close()
                        acks.append(await producer.send_batch(batch, topic, partition=partition))
                        batch = producer.create_batch()
                batch.close()
                acks.append(await producer.send_batch(batch, topic, partition=partition))
            await asyncio.gather(*acks)
            sent = due
        if stats is not None:
            stats.seconds, stats.cpu_seconds = time.monotonic() - start, time.process_time() - cpu0
            if probe is not None:
                stats.probed = {k: v - probed0[k] for k, v in probe().items() if k in probed0}
    finally:
        if not frozen_before:  # a caller's own frozen start-up objects stay where it put them
            gc.unfreeze()
        await producer.stop()
    return sent


async def latency_run(settings: Settings, catalog: Catalog, conn: asyncpg.Connection, schema: str, rate: float,
                      seconds: float, *, run_id: str | None = None, wait_seconds: float = 120,
                      stats: FeedStats | None = None, probe: Probe | None = None) -> dict[str, Any]:
    """The simulated feed at `rate` points/s for `seconds` into the catalog's raw.simulated (`paced_feed`, which
    fills `stats`), then the latency of every row of the run, once they are all in PostgreSQL (or after
    `wait_seconds`)."""
    run_id = run_id or f"lat{uuid.uuid4().hex[:6]}"
    sent = await paced_feed(settings, catalog.raw("simulated").name, rate, seconds, run_id=run_id, stats=stats,
                            probe=probe)
    await wait_for_rows(conn, schema, run_id, sent, wait_seconds, interval=1.0)
    return {"rate": rate, "sent": sent, **await latency_stats(conn, schema, run_id)}


async def read_topic(bootstrap: str, topic: str, **client_kwargs: Any) -> list[Any]:
    """Every record in a topic from the beginning up to its end offsets as of now (tests, selftest)."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **client_kwargs)
    await c.start()
    try:
        parts = c.partitions_for_topic(topic)
        if not parts:
            await c._client.force_metadata_update()
            parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        out: list[Any] = []
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            for tp, msgs in (await c.getmany(timeout_ms=1000)).items():
                out.extend(m for m in msgs if m.offset < ends[tp])
            # By position, not by the last record's offset: a transaction's commit/abort marker (and aborted
            # records, read_committed) take offsets no record is returned for, up to the end.
            remaining = {tp for tp in remaining if await c.position(tp) < ends[tp]}
        return out
    finally:
        await c.stop()


async def drop_topics(settings: Settings, names: Sequence[str] = (), *, containing: str | None = None) -> None:
    """Delete the topics named, and every topic whose name holds `containing` (a run's tag: its catalog's topics
    and its worker's internal ones carry it). A benchmark run that left its topics behind left ~1 GB and dozens
    of partitions on the broker: thousands of leftover partitions slow the broker down for every later run.
    Best effort: a leftover is said, not raised."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers, **settings.kafka.client_kwargs())
    try:
        await admin.start()
        doomed = set(names)
        if containing:
            doomed.update(t for t in await admin.list_topics() if containing in t)
        if doomed:
            await admin.delete_topics(sorted(doomed))
    except Exception as exc:
        print(f"  note: could not delete topics ({', '.join(names) or containing}): {exc!r}", flush=True)
    finally:
        await admin.close()
