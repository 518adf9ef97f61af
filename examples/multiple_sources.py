"""Multiple sources: enable the providers you have keys for, then let the connector manager collect.

Offline this runs the simulated feed only; with FINNHUB_API_KEY etc. set, those sources are enabled in
pipeline_config.yaml (ConfigurationManager.enable_service) and collect instead (the simulated feed runs by
default only while no other source is enabled; `simulated.enabled: true` keeps it beside them).

    .cache/venv/bin/python examples/multiple_sources.py
"""

import asyncio
import os

from streams import ConfigurationManager, DataConnectorManager, DataIngestionPipeline

KEYS = {"finnhub": "FINNHUB_API_KEY", "social": "TWITTER_BEARER_TOKEN"}


async def main(seconds: float = float(os.environ.get("EXAMPLE_SECONDS", "3"))) -> None:
    with_keys = [name for name, var in KEYS.items() if os.environ.get(var)]
    if with_keys:  # enabled for good in pipeline_config.yaml (ConfigurationManager creates it when missing)
        config = ConfigurationManager(os.environ.get("TICKFLOW_CONFIG", "pipeline_config.yaml"))
        for name in with_keys:
            config.enable_service(name)
    # This run only, on top of pipeline_config.yaml and the environment: a gentle simulated feed. Written into the
    # file (update_config), it made every later `make run` in this folder produce 200 points/s instead of 1,000.
    pipeline = DataIngestionPipeline({"sources": {"simulated": {"rate_per_second": 200}}})
    await pipeline.start()
    connectors = DataConnectorManager(pipeline)
    await connectors.start_data_collection()
    await asyncio.sleep(seconds)
    await connectors.stop()
    await pipeline.stop()
    print(f"sources: {[s.name for s in connectors.sources]}; ingested {pipeline.local_counts['ingested']}")


if __name__ == "__main__":
    asyncio.run(main())
