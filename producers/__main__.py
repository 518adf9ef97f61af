"""python -m producers SOURCE [--seconds S] [--count N] [--symbols A,B] [--rate N] [--invalid-ratio R]

Runs one source from producers/registry.py outside the worker (its settings from the usual configuration; the
source need not be enabled there: naming it here is enough), sending to its raw.<source> topic.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

from producers.quota import KafkaQuotaStore
from producers.registry import BUILDERS, Collaborators
from producers.runner import SourceRunner
from streams.catalog import catalog_of
from streams.errors import TickflowError
from streams.settings import get_settings

SIMULATED_ONLY = {"rate": "rate_per_second", "invalid_ratio": "invalid_ratio"}


class Parser(argparse.ArgumentParser):
    """Usage errors as one line that names the fix (the valid sources for an unknown one)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if message.startswith("argument SOURCE: invalid choice"):
            wrong = message.split("invalid choice: ", 1)[1].split(" (", 1)[0]
            message = f"unknown source {wrong}; valid sources: {', '.join(BUILDERS)}"
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m producers", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", choices=list(BUILDERS), metavar="SOURCE",
                   help=f"one of: {', '.join(BUILDERS)}")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--count", type=int, help="stop after sending this many records")
    p.add_argument("--symbols", help="comma-separated symbols overriding the source's configured ones")
    p.add_argument("--rate", type=float, help="simulated only: points per second")
    p.add_argument("--invalid-ratio", type=float, help="simulated only: share of deliberately invalid points")
    return p


def overrides(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    """The command line's changes to the source's settings; options that do not apply are errors."""
    update: dict[str, Any] = {"enabled": True}
    for opt, field in SIMULATED_ONLY.items():
        value = getattr(args, opt)
        if value is not None:
            if args.source != "simulated":
                raise TickflowError(f"--{opt.replace('_', '-')} applies to the simulated source only")
            update[field] = value
    if args.symbols is not None:
        if "symbols" not in type(cfg).model_fields:
            raise TickflowError(f"source {args.source} has no symbols; configure it in its settings section instead")
        update["symbols"] = [s.strip() for s in args.symbols.split(",") if s.strip()]
    return update


async def run_all(runner: SourceRunner, sources: list[Any], seconds: float | None, count: int | None,
                  store: KafkaQuotaStore | None = None) -> int:
    """Some providers are several sources (Finnhub: quotes and the trade stream); they run side by side."""
    try:
        sent = await asyncio.gather(*(runner.run(s, seconds=seconds, limit=count) for s in sources))
    finally:
        if store is not None:
            await store.close()
    return sum(sent)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the raised error says it once, below
    try:
        settings = get_settings()
        cfg = getattr(settings.sources, args.source)
        # Daily quotas are counted on the broker, as in the worker: a run here spends the same day's budget.
        store = KafkaQuotaStore.for_settings(settings.kafka)
        sources = BUILDERS[args.source](cfg.model_copy(update=overrides(args, cfg)), Collaborators(quota_store=store))
        runner = SourceRunner(settings, catalog_of(settings.kafka))
        sent = asyncio.run(run_all(runner, sources, args.seconds, args.count, store))
    except KeyboardInterrupt:
        return 130
    except TickflowError as exc:  # 2: fix the settings; 1: a provider or service down, try again later
        print(f"python -m producers: {exc}", file=sys.stderr)
        return 1 if exc.retriable else 2
    except Exception as exc:
        if type(exc).__name__ != "KafkaConnectionError":
            raise
        print(f"python -m producers: cannot reach Kafka ({exc}); start it (`make stack-up`) or set "
              "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS", file=sys.stderr)
        return 1
    print(f"sent {sent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
