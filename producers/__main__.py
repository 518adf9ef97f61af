"""python -m producers simulated [--rate N] [--seconds S] [--count N] [--invalid-ratio R]"""

from __future__ import annotations

import argparse
import asyncio
import logging

from producers.runner import SourceRunner
from producers.simulated import SimulatedSource
from streams.catalog import catalog_of
from streams.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m producers")
    parser.add_argument("source", choices=["simulated"])
    parser.add_argument("--rate", type=float, help="points per second")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--count", type=int)
    parser.add_argument("--invalid-ratio", type=float)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    sim = settings.sources.simulated
    given = {"rate_per_second": args.rate, "invalid_ratio": args.invalid_ratio}
    updates = {k: v for k, v in given.items() if v is not None}
    source = SimulatedSource(sim.model_copy(update=updates))
    runner = SourceRunner(settings, catalog_of(settings.kafka))
    sent = asyncio.run(runner.run(source, seconds=args.seconds, limit=args.count))
    print(f"sent {sent}")


if __name__ == "__main__":
    main()
