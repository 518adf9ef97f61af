"""Custom ingestion: push your own data (here a CSV-like list of bars) through the same validation.

    .cache/venv/bin/python examples/custom_ingestion.py
"""

import asyncio
from datetime import UTC, datetime, timedelta

from streams import DataIngestionPipeline, DataType, MarketDataPoint

BARS = [("2024-05-01", 169.58, 172.71, 169.11, 169.30, 50_383_100),
        ("2024-05-02", 172.51, 173.42, 170.89, 173.03, 94_214_900),
        ("2024-05-03", 186.65, 187.00, 182.66, 183.38, 163_224_100)]


async def main() -> None:
    async with DataIngestionPipeline() as pipeline:
        accepted = 0
        for day, o, h, low, c, v in BARS:
            ts = datetime.fromisoformat(day).replace(tzinfo=UTC) + timedelta(hours=20)
            point = MarketDataPoint(symbol="AAPL", timestamp=ts, source="simulated", data_type=DataType.BAR,
                                    open=o, high=h, low=low, close=c, volume=v, interval="1d", item_id="1d")
            accepted += await pipeline.ingest_data_point(point)
        print(f"accepted {accepted} of {len(BARS)} bars")


if __name__ == "__main__":
    asyncio.run(main())
