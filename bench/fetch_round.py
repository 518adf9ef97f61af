"""CPU per fetch round of one consumer over the validate stage's layout (9 topics x 4 partitions, one of them
fed), aiokafka's consumer against the stages' own (streams/stages/fetch.py), alternating, on the real broker.

Why: at low and moderate rates a stage's batch is a few records, and what a batch costs is mostly the round
that fetched it; this measures the round alone, without the stage's work, so the two consumers' difference
is not lost in the noise of a whole worker. The feed runs in its own process; the consumer only consumes
(getmany in a loop, records dropped), so it turns over as fast as records come.

    .cache/venv/bin/python bench/fetch_round.py --rate 1000 --seconds 10 --rounds 2
    .cache/venv/bin/python bench/fetch_round.py --records     # CPU per record handed out, in-process, no broker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # noqa: E402
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords  # noqa: E402
from aiokafka.consumer.subscription_state import SubscriptionState  # noqa: E402
from aiokafka.record.default_records import DefaultRecordBatchBuilder  # noqa: E402
from aiokafka.record.memory_records import MemoryRecords  # noqa: E402
from aiokafka.structs import TopicPartition  # noqa: E402

from streams.settings import load_settings  # noqa: E402
from streams.stages.fetch import LeanPartitionRecords, StageConsumer  # noqa: E402

TOPICS, PARTITIONS = 9, 4
CONSUMERS: dict[str, type[AIOKafkaConsumer]] = {"aiokafka": AIOKafkaConsumer, "stage": StageConsumer}


async def feed(bootstrap: str, topic: str, rate: float) -> None:
    """`rate` records a second of ~200 bytes, keyed over 50 symbols, until killed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    sent, start = 0, time.monotonic()
    while True:
        due = int((time.monotonic() - start) * rate)
        while sent < due:
            await producer.send(topic, b"x" * 200, key=str(sent % 50).encode())
            sent += 1
        await asyncio.sleep(0.001)


async def one(bootstrap: str, topics: list[str], kind: str, seconds: float) -> dict[str, float]:
    """One consumer of `kind` over every partition: rounds that returned records, records, CPU per round."""
    consumer = CONSUMERS[kind](*topics, bootstrap_servers=bootstrap, group_id=f"fetch-round-{uuid.uuid4().hex[:8]}",
                               enable_auto_commit=False, auto_offset_reset="latest", isolation_level="read_committed")
    await consumer.start()
    try:
        while len(consumer.assignment()) < len(topics) * PARTITIONS:
            await consumer.getmany(timeout_ms=200)
        for _ in range(20):  # past the first rounds (the group's positions)
            await consumer.getmany(timeout_ms=200)
        rounds = records = 0
        cpu, start = time.process_time(), time.monotonic()
        while time.monotonic() - start < seconds:
            batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
            if batch:
                rounds += 1
                records += sum(len(v) for v in batch.values())
        cpu = time.process_time() - cpu
    finally:
        await consumer.stop()
    return {"rounds_per_s": rounds / seconds, "records_per_round": records / max(rounds, 1),
            "cpu_us_per_round": cpu / max(rounds, 1) * 1e6, "cores": cpu / seconds}


async def record_cost(batch_records: int = 2000, repeat: int = 7) -> dict[str, float]:
    """CPU per record handed out by FetchResult.getall (the CRC checked, as the stages' consumers do) over one
    fetched batch of `batch_records` clean-record-sized records, with aiokafka's PartitionRecords and the stages'
    LeanPartitionRecords: best of `repeat` runs, alternating."""
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 24)
    for i in range(batch_records):
        builder.append(i, timestamp=1_700_000_000_000 + i, key=b"AAPL", value=b"x" * 250, headers=[])
    data = bytes(builder.build())
    tp = TopicPartition("raw.simulated", 0)
    subscription = SubscriptionState()
    subscription.assign_from_user({tp})
    assignment = subscription.subscription.assignment
    state = assignment.state_value(tp)
    best = {"aiokafka": float("inf"), "stage": float("inf")}
    for _ in range(repeat):
        for kind, cls in (("aiokafka", PartitionRecords), ("stage", LeanPartitionRecords)):
            state.seek(0) if state.has_valid_position else state.reset_to(0)
            extra = {"message_set": data} if cls is LeanPartitionRecords else {}  # as FastFetcher builds it
            result = FetchResult(tp, assignment=assignment, backoff=0.0, partition_records=cls(
                tp, MemoryRecords(data), [], 0, None, None, True, 1, **extra))
            cpu = time.process_time()
            got = result.getall(batch_records)
            best[kind] = min(best[kind], (time.process_time() - cpu) / len(got) * 1e6)
    return best


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="records/s into the fed topic (default 1000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per consumer and round (default 10)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; each runs both consumers (default 2)")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    ap.add_argument("--records", action="store_true", help="only the CPU per record handed out (no broker)")
    args = ap.parse_args()
    if args.records:
        cost = await record_cost()
        print(f"CPU per record handed out: aiokafka {cost['aiokafka']:.3f} µs, stage {cost['stage']:.3f} µs")
        if args.out:
            args.out.write_text(json.dumps({"records": cost}, indent=1) + "\n")
        return
    bootstrap = load_settings().kafka.bootstrap_servers
    tag = uuid.uuid4().hex[:8]
    topics = [f"fetch-round-{tag}.{i}" for i in range(TOPICS)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in topics])
    feeder = await asyncio.create_subprocess_exec(sys.executable, __file__, "--feed", bootstrap, topics[0],
                                                  str(args.rate))
    rows = []
    try:
        await asyncio.sleep(2)
        for r in range(args.rounds):
            for kind in (("aiokafka", "stage") if r % 2 == 0 else ("stage", "aiokafka")):
                row = {"consumer": kind, "round": r + 1, **await one(bootstrap, topics, kind, args.seconds)}
                rows.append(row)
                print(f"  {kind:8s} round {r + 1}: {row['rounds_per_s']:.0f} rounds/s of "
                      f"{row['records_per_round']:.1f} records, {row['cpu_us_per_round']:.0f} µs CPU per round, "
                      f"{row['cores']:.3f} cores", flush=True)
    finally:
        feeder.kill()
        await feeder.wait()
        await admin.delete_topics(topics)
        await admin.close()
    for kind in CONSUMERS:
        per = sorted(x["cpu_us_per_round"] for x in rows if x["consumer"] == kind)
        print(f"{kind}: median {per[len(per) // 2]:.0f} µs CPU per fetch round over {TOPICS * PARTITIONS} partitions")
    if args.out:
        args.out.write_text(json.dumps({"rate": args.rate, "seconds": args.seconds, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--feed":
        asyncio.run(feed(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    else:
        asyncio.run(main())
