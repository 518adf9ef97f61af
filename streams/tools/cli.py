"""The `tickflow` command line (also `python -m streams`). Faust's own commands (worker, agents, tables,
...) pass through to the app; these are ours:

  init [--config FILE]                 write pipeline_config.yaml and a .env.pipeline template
  topics [create|check]                make the cluster match topics.yaml (check only reports)
  db migrate                           create or migrate the PostgreSQL schema
  status [--url URL]                   sources, lag, throughput and rejects from a running worker
  backfill SOURCE --symbols A,B --start YYYY-MM-DD --end YYYY-MM-DD [--interval 1d]
                                       load history (yahoo, alpha_vantage, fred) through raw.<source>;
                                       rate-limited like the live source, safe to re-run (natural keys)
  replay-dlq [--rule R] [--source S] [--rate N] [--limit N] [--dry-run]
                                       re-inject dead-lettered records into their raw topic after a fix
  selftest [--keep] [--throughput-points N]
                                       the brief's test report, measured on the local stack with a worker
                                       of its own (isolated topics, schema, groups; removed afterwards)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time
import urllib.request
from typing import Any

from streams.errors import ConfigError


def cmd_init(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.api import ConfigurationManager

    path = Path(args.config)
    if path.exists() and not args.force:
        print(f"{path} exists; use --force to rewrite it with the defaults", file=sys.stderr)
        return 1
    cm = ConfigurationManager.__new__(ConfigurationManager)
    cm.path, cm.env_path = path, path.with_name(".env.pipeline")
    cm.generate()
    print(f"wrote {path} and {cm.env_path} (secrets go in the latter; it is git-ignored)")
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from streams.broker import ensure_topics
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    settings = get_settings()
    cat = catalog_of(settings.kafka)
    created = asyncio.run(ensure_topics(cat, settings.kafka.bootstrap_servers, create=args.action == "create",
                                         kafka=settings.kafka))
    for t in cat.topics:
        print(f"{t.name:32} partitions={t.partitions:<3} retention.ms={t.retention_ms:<12} "
              f"cleanup={t.cleanup_policy}{'  (created)' if t.name in created else ''}")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from sinks.postgres import PostgresTickWriter
    from streams.settings import get_settings

    asyncio.run(PostgresTickWriter(get_settings().postgres).migrate())
    print("schema up to date")
    return 0


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def cmd_status(args: argparse.Namespace) -> int:
    from streams.settings import get_settings

    w = get_settings().worker
    base = args.url or f"http://{w.advertised_host or w.web_host}:{w.web_port}"
    try:
        m = _get(f"{base}/pipeline/metrics")
        h = _get(f"{base}/health")
    except OSError as exc:
        print(f"no worker answers at {base} ({exc}); start one with `make run` or `make worker`", file=sys.stderr)
        return 1
    print(f"worker {h.get('worker')}  status {h.get('status')}  leader {h.get('leader')}  "
          f"lag {m.get('queue_size')}  throughput {m.get('throughput_per_sec')}/s  "
          f"p50 {m.get('p50_latency_ms')} ms  p99 {m.get('p99_latency_ms')} ms")
    print(f"\n{'source':18} {'processed':>10} {'rejected':>9} {'written':>10} {'rows/s':>8} {'p99 ms':>8}  top rejects")
    for src, s in m.get("sources", {}).items():
        top = ", ".join(f"{k} {v}" for k, v in sorted(s["rejected_by_rule"].items(), key=lambda kv: -kv[1])[:3])
        print(f"{src:18} {s['processed']:>10,} {s['rejected']:>9,} {s['written']:>10,} "
              f"{s['throughput_per_sec']:>8.1f} {s['p99_latency_ms'] or '-':>8}  {top}")
    if h.get("sources"):
        print(f"\n{'producer':28} {'state':8} {'sent':>10} {'failures':>8}  last error")
        for s in h["sources"]:
            print(f"{s['source'] + '/' + s['kind']:28} {s['state']:8} {s['sent']:>10,} {s['failures']:>8}  "
                  f"{(s['last_error'] or '')[:80]}")
    return 0


async def replay_dlq(args: argparse.Namespace) -> tuple[int, int]:
    """Re-produce matching dead letters to their original topic, keeping key, value and non-tickflow headers."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from producers.runner import new_producer
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    settings = get_settings()
    cat = catalog_of(settings.kafka)
    dlq = cat.one("rejected").name
    raw_names = {t.name for t in cat.by_role("raw")}
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False,
                                **settings.kafka.client_kwargs())
    await consumer.start()
    producer = None if args.dry_run else new_producer(settings)
    if producer is not None:
        await producer.start()
    matched = scanned = 0
    try:
        parts = consumer.partitions_for_topic(dlq)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(dlq)
        if not parts:
            raise ConfigError(f"topic {dlq} does not exist (run `tickflow topics create`)")
        tps = [TopicPartition(dlq, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends.values())
        remaining = {tp for tp in tps if ends[tp] > 0}
        interval = 1.0 / args.rate if args.rate else 0.0
        next_at = time.monotonic()
        while remaining:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, msgs in batch.items():
                for m in msgs:
                    if m.offset >= ends[tp]:
                        remaining.discard(tp)
                        continue
                    scanned += 1
                    h = {k: v.decode(errors="replace") for k, v in (m.headers or [])}
                    target = h.get("tickflow.source.topic", "")
                    if (target not in raw_names or (args.rule and not h.get("tickflow.rule", "").startswith(args.rule))
                            or (args.source and target != cat.raw(args.source).name)):
                        continue
                    if args.limit and matched >= args.limit:
                        remaining.clear()
                        break
                    matched += 1
                    if producer is not None:
                        wait = next_at - time.monotonic()
                        if wait > 0:
                            await asyncio.sleep(wait)
                        next_at = max(next_at, time.monotonic()) + interval
                        kept = [(k, v) for k, v in (m.headers or []) if not k.startswith("tickflow.")]
                        origin = f"{tp.partition}:{m.offset}".encode()
                        await producer.send(target, m.value, key=m.key,
                                            headers=[*kept, ("tickflow.replayed_from", origin)])
                    if m.offset + 1 >= ends[tp]:
                        remaining.discard(tp)
            print(f"\rscanned {scanned:,}/{total:,}  {'would replay' if args.dry_run else 'replayed'} {matched:,}",
                  end="", flush=True)
        print()
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
    return scanned, matched


BACKFILL_SOURCES = ("yahoo", "alpha_vantage", "fred")


async def backfill(args: argparse.Namespace) -> int:
    """History through the raw topic: the same validation, anomaly detection and idempotent sink as live data."""
    from datetime import date

    import aiohttp

    from producers.base import encode
    from producers.registry import BUILDERS
    from producers.runner import new_producer, send_batch
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    settings = get_settings()
    cfg = getattr(settings.sources, args.source)
    (source,) = BUILDERS[args.source](cfg)  # raises ConfigError when the key is missing
    topic = catalog_of(settings.kafka).raw(args.source).name
    start, end = date.fromisoformat(args.start), date.fromisoformat(args.end)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    producer = new_producer(settings)
    await producer.start()
    total = failed = 0
    try:
        async with aiohttp.ClientSession() as session:
            for i, symbol in enumerate(symbols, 1):
                try:
                    if args.source == "fred":
                        points = await source.history(session, symbol, start, end)  # type: ignore[attr-defined]
                    else:
                        points = await source.history(session, symbol, start, end,  # type: ignore[attr-defined]
                                                      args.interval)
                except Exception as exc:  # one symbol failing does not stop the others
                    failed += 1
                    print(f"\n{symbol}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                sent = await send_batch(producer, topic, [encode(p) for p in points])
                total += sent
                bar = "#" * int(30 * i / len(symbols))
                print(f"\r[{bar:<30}] {i}/{len(symbols)} {symbol}: {sent:,} points ({total:,} in all)",
                      end="", flush=True)
        print()
    finally:
        await producer.stop()
    print(f"backfilled {total:,} points from {args.source} into {topic}" + (f"; {failed} symbols failed" if failed
                                                                           else ""))
    return 1 if failed and not total else 0


def cmd_backfill(args: argparse.Namespace) -> int:
    return asyncio.run(backfill(args))


def cmd_replay_dlq(args: argparse.Namespace) -> int:
    asyncio.run(replay_dlq(args))
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    from streams.tools.selftest import main as selftest

    return selftest(keep=args.keep, throughput_points=args.throughput_points)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tickflow", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("init")
    s.add_argument("--config", default="pipeline_config.yaml")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_init)
    s = sub.add_parser("topics")
    s.add_argument("action", nargs="?", choices=["create", "check"], default="create")
    s.set_defaults(func=cmd_topics)
    s = sub.add_parser("db")
    s.add_argument("action", nargs="?", choices=["migrate"], default="migrate")
    s.set_defaults(func=cmd_db)
    s = sub.add_parser("status")
    s.add_argument("--url")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("backfill")
    s.add_argument("source", choices=BACKFILL_SOURCES)
    s.add_argument("--symbols", required=True, help="comma-separated symbols or FRED series ids")
    s.add_argument("--start", required=True)
    s.add_argument("--end", required=True)
    s.add_argument("--interval", default="1d", help="bar interval (yahoo: 1m..1d; alpha_vantage: 1min..60min, 1d)")
    s.set_defaults(func=cmd_backfill)
    s = sub.add_parser("replay-dlq")
    s.add_argument("--rule", help="only records whose rule starts with this (e.g. schema., quote.crossed)")
    s.add_argument("--source", help="only records from raw.<source>")
    s.add_argument("--rate", type=float, default=1000.0, help="records per second (0: unthrottled)")
    s.add_argument("--limit", type=int)
    s.add_argument("--dry-run", action="store_true")
    s.set_defaults(func=cmd_replay_dlq)
    s = sub.add_parser("selftest", help="run the brief's test report on the local stack (exit 0: all passed)")
    s.add_argument("--keep", action="store_true", help="keep the topics, schema and worker logs for inspection")
    s.add_argument("--throughput-points", type=int, default=20_000, help="points for the throughput check")
    s.set_defaults(func=cmd_selftest)
    return p


OURS = {"init", "topics", "db", "status", "backfill", "replay-dlq", "selftest"}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in OURS:
        args = parser().parse_args(argv)
        try:
            sys.exit(args.func(args))
        except ConfigError as exc:
            print(f"tickflow: {exc}", file=sys.stderr)
            sys.exit(2)
    if argv[:1] in (["-h"], ["--help"]):
        parser().print_help()
        print("\nFaust commands (worker, agents, tables, ...): tickflow worker --help")
        sys.exit(0)
    # uvloop unless F_LOOP says otherwise (Faust reads it when it is first imported, just below): the event
    # loop's own overhead is a share of every record's cost in a worker.
    if importlib.util.find_spec("uvloop") is not None:
        os.environ.setdefault("F_LOOP", "uvloop")
    # Faust's own command line, told where the App is by name: the tools never import the worker's App.
    from faust.cli.faust import cli as faust_cli

    sys.argv = [sys.argv[0], *argv]
    faust_cli(["-A", "streams.app:app", *argv])
