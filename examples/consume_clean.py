"""Read ticks.clean downstream, the way the README's "Reading the clean topic downstream" describes it.

A plain aiokafka consumer (no tickflow worker code): read committed records only, check the schema header,
parse with the tolerant reader (fields added after v1 are ignored), and keep one record per natural key,
replacing a bar, quote or economic observation only by a newer revision. Prints one line per record kept.

    .cache/venv/bin/python examples/consume_clean.py                      # new records, until Ctrl-C
    .cache/venv/bin/python examples/consume_clean.py --from-beginning --idle 5
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import date, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer

from streams.contract import CLEAN, SCHEMA_HEADER, read_clean, schema_id

REVISABLE = {"bar", "quote", "economic"}  # the kinds whose records are revised under the same natural key
OPEN_VINTAGE = date(9999, 12, 31)


def revision(p: Any) -> tuple[int, datetime | None]:
    """Larger = newer: a closed economic vintage beats an open one, then the later ingested_at wins."""
    closed = p.data_type == "economic" and p.realtime_end not in (None, OPEN_VINTAGE)
    return (1 if closed else 0, p.ingested_at)


def newer(p: Any, q: Any) -> bool:
    rp, rq = revision(p), revision(q)
    if rp[0] != rq[0]:
        return rp[0] > rq[0]
    return rp[1] is not None and (rq[1] is None or rp[1] > rq[1])


async def consume(args: argparse.Namespace) -> int:
    consumer = AIOKafkaConsumer(
        args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
        isolation_level="read_committed",  # never see records of an aborted transaction
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        enable_auto_commit=args.group is not None)
    await consumer.start()
    latest: dict[tuple[Any, ...], Any] = {}
    kept = 0
    try:
        while args.max is None or kept < args.max:
            batches = await consumer.getmany(timeout_ms=int(args.idle * 1000))
            if not batches and args.from_beginning:
                break  # caught up and nothing new for `idle` seconds
            for tp, records in batches.items():
                for msg in records:  # in offset order: per symbol (the key), the order it was produced in
                    schema = dict(msg.headers or ()).get(SCHEMA_HEADER, b"").decode()
                    if schema and schema != schema_id(CLEAN):
                        print(f"skipping {tp.topic}[{tp.partition}]@{msg.offset}: schema {schema}")
                        continue
                    p = read_clean(msg.value)
                    key = p.natural_key()
                    old = latest.get(key)
                    if old is not None and not (p.data_type in REVISABLE and newer(p, old)):
                        continue  # a re-send, or an older revision than the one already kept
                    latest[key] = p
                    kept += 1
                    what = "revised" if old is not None else "new"
                    print(f"{what:7} {msg.key.decode() if msg.key else '-':8} p{tp.partition}@{msg.offset} "
                          f"event {msg.timestamp} ms {p.data_type:8} {p.timestamp.isoformat()} "
                          f"{p.price if p.price is not None else p.close if p.close is not None else p.value} "
                          f"{','.join(p.flags)} schema={schema or '(none)'}")
    finally:
        await consumer.stop()
    print(f"{kept} records kept, {len(latest)} natural keys")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="127.0.0.1:19092")
    ap.add_argument("--topic", default="ticks.clean")
    ap.add_argument("--group", default=None, help="a consumer group, to resume where it stopped (default: none)")
    ap.add_argument("--from-beginning", action="store_true", help="read the whole topic, then stop when idle")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds without records before stopping")
    ap.add_argument("--max", type=int, default=None, help="stop after this many records kept")
    return asyncio.run(consume(ap.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
