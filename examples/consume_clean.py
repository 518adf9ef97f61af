"""Read ticks.clean downstream, the way the README's "Reading the clean topic downstream" describes it.

A plain aiokafka consumer (no tickflow worker code): read committed records only, check the schema header,
parse with the tolerant reader (fields added after v1 are ignored), and keep one record per natural key,
replacing a bar, quote or economic observation only by a newer revision. Prints one line per record kept.

The topic and the brokers are this deployment's, from tickflow's settings (TICKFLOW_KAFKA__BOOTSTRAP_SERVERS,
TICKFLOW_KAFKA__TOPIC_SUFFIX, pipeline_config.yaml, .env; the same as the worker and `tickflow`), unless
--topic and --bootstrap say otherwise. A topic that does not exist is a one-line error and exit code 2.

    .cache/venv/bin/python examples/consume_clean.py                      # new records, until Ctrl-C
    .cache/venv/bin/python examples/consume_clean.py --from-beginning --idle 5
    .cache/venv/bin/python examples/consume_clean.py --from-beginning --max 3   # exactly 3 records kept
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Iterator
from datetime import date, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError

from streams.catalog import catalog_of
from streams.contract import CLEAN, SCHEMA_HEADER, read_clean, schema_id
from streams.errors import ConfigError
from streams.settings import load_settings

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


class Dedupe:
    """One record per natural key, the newest revision of a revisable kind; at most `limit` records kept."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.latest: dict[tuple[Any, ...], Any] = {}
        self.kept = 0

    @property
    def done(self) -> bool:
        return self.limit is not None and self.kept >= self.limit

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.kept, 0)

    def feed(self, records: Iterable[Any]) -> Iterator[str]:
        """Each record kept, as its line, in the order given (per partition, offset order: per symbol, the order
        it was produced in). Stops at the `limit`-th record kept, leaving the rest of `records` unread."""
        if self.done:
            return
        for msg in records:
            line = self.offer(msg)
            if line is not None:
                yield line
                if self.done:
                    return

    def offer(self, msg: Any) -> str | None:
        """A consumer record (aiokafka's ConsumerRecord, or anything with its fields) -> its line if kept."""
        schema = dict(msg.headers or ()).get(SCHEMA_HEADER, b"").decode()
        where = f"{msg.topic}[{msg.partition}]@{msg.offset}"
        if schema and schema != schema_id(CLEAN):
            print(f"skipping {where}: schema {schema}")
            return None
        p = read_clean(msg.value)
        key = p.natural_key()
        old = self.latest.get(key)
        if old is not None and not (p.data_type in REVISABLE and newer(p, old)):
            return None  # a re-send, or an older revision than the one already kept
        self.latest[key] = p
        self.kept += 1
        what = "revised" if old is not None else "new"
        return (f"{what:7} {msg.key.decode() if msg.key else '-':8} p{msg.partition}@{msg.offset} "
                f"event {msg.timestamp} ms {p.data_type:8} {p.timestamp.isoformat()} "
                f"{p.price if p.price is not None else p.close if p.close is not None else p.value} "
                f"{','.join(p.flags)} schema={schema or '(none)'}")


def connection(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(topic, bootstrap servers, aiokafka security arguments): the options, else tickflow's settings (the clean
    topic of topics.yaml with kafka.topic_suffix, kafka.bootstrap_servers); ConfigError if they do not load."""
    kafka = load_settings().kafka
    topic = args.topic or catalog_of(kafka).one("clean").name
    return topic, args.bootstrap or kafka.bootstrap_servers, kafka.client_kwargs()


def fail(message: str, code: int) -> int:
    print(f"consume_clean: {message}", file=sys.stderr)
    return code


async def consume(args: argparse.Namespace) -> int:
    try:
        topic, bootstrap, security = connection(args)
    except ConfigError as exc:
        return fail(str(exc), 2)
    missing = (f"topic {topic} does not exist on {bootstrap} (the worker and `make topics` create it; "
               f"--topic names another, TICKFLOW_KAFKA__TOPIC_SUFFIX is the deployment's suffix)")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=args.group,
        isolation_level="read_committed",  # never see records of an aborted transaction
        auto_offset_reset="earliest" if args.from_beginning else "latest",
        enable_auto_commit=args.group is not None, **security)
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        await consumer.stop()
        return fail(f"cannot reach Kafka at {bootstrap}: {exc}", 1)
    dedupe = Dedupe(args.max)
    try:
        if topic not in await consumer.topics():
            return fail(missing, 2)
        consumer.subscribe([topic])
        while not dedupe.done:
            # No more records than are still wanted: a group's committed position never passes the last one kept.
            batches = await consumer.getmany(timeout_ms=int(args.idle * 1000), max_records=dedupe.remaining)
            if not batches and args.from_beginning:
                break  # caught up and nothing new for `idle` seconds
            for records in batches.values():
                for line in dedupe.feed(records):
                    print(line)
    except UnknownTopicOrPartitionError:
        return fail(missing, 2)
    finally:
        await consumer.stop()
    print(f"{dedupe.kept} records kept, {len(dedupe.latest)} natural keys")
    return 0


def at_least_one(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--bootstrap", default=None, help="brokers (default: kafka.bootstrap_servers of the settings)")
    ap.add_argument("--topic", default=None,
                    help="topic to read (default: the settings' clean topic, ticks.clean + kafka.topic_suffix)")
    ap.add_argument("--group", default=None, help="a consumer group, to resume where it stopped (default: none)")
    ap.add_argument("--from-beginning", action="store_true", help="read the whole topic, then stop when idle")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds without records before stopping")
    ap.add_argument("--max", type=at_least_one, default=None, help="stop after exactly this many records kept")
    return ap


def main(argv: list[str] | None = None) -> int:
    try:
        return asyncio.run(consume(parser().parse_args(argv)))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
