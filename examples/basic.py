"""Basic usage: start the client, ingest a valid point and an invalid one, print what was accepted.

Run beside a worker (`make run`):  .cache/venv/bin/python examples/basic.py
"""

import asyncio
from datetime import UTC, datetime

from streams import DataIngestionPipeline, MarketDataPoint


async def main() -> None:
    pipeline = DataIngestionPipeline()
    await pipeline.start()
    ok = await pipeline.ingest_data_point(MarketDataPoint(
        symbol="AAPL", timestamp=datetime.now(UTC), price=189.5, volume=100, bid=189.49, ask=189.51,
        source="simulated", data_type="quote", metadata={"example": "basic"}, item_id="basic-1"))
    bad = await pipeline.ingest_data_point(MarketDataPoint(
        symbol="AAPL", timestamp=datetime.now(UTC), price=-1.0, source="simulated", item_id="basic-2"))
    print(f"valid point accepted: {ok}; negative price accepted: {bad}")
    await pipeline.stop()


if __name__ == "__main__":
    asyncio.run(main())
