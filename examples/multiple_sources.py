"""Multiple sources: enable the providers you have keys for, then let the connector manager collect.

Offline this runs the simulated feed only; with FINNHUB_API_KEY etc. set, those sources are enabled in
pipeline_config.yaml (ConfigurationManager.enable_service) and collect instead (the simulated feed runs by
default only while no other source is enabled; `simulated.enabled: true` keeps it beside them).

    .cache/venv/bin/python examples/multiple_sources.py
"""

import asyncio
import os

from streams import ConfigurationManager, DataConnectorManager, DataIngestionPipeline


async def main(seconds: float = float(os.environ.get("EXAMPLE_SECONDS", "3"))) -> None:
    config = ConfigurationManager(os.environ.get("TICKFLOW_CONFIG", "pipeline_config.yaml"))
    config.update_config("sources", "simulated.rate_per_second", 200)
    for name in ("finnhub", "social"):
        if os.environ.get({"finnhub": "FINNHUB_API_KEY", "social": "TWITTER_BEARER_TOKEN"}[name]):
            config.enable_service(name)
    pipeline = DataIngestionPipeline(config.settings())
    await pipeline.start()
    connectors = DataConnectorManager(pipeline)
    await connectors.start_data_collection()
    await asyncio.sleep(seconds)
    await connectors.stop()
    await pipeline.stop()
    print(f"sources: {[s.name for s in connectors.sources]}; ingested {pipeline.local_counts['ingested']}")


if __name__ == "__main__":
    asyncio.run(main())
