"""tickflow's stream stages: providers' raw topics -> validate_ticks -> ticks.clean -> write_ticks -> PostgreSQL.

Importing this package starts nothing. The brief's Python API is importable from here:

    from streams import DataIngestionPipeline, MarketDataPoint, ConfigurationManager, DataConnectorManager
"""

from typing import Any

from streams.models import DataType, MarketDataPoint

__all__ = ["ConfigurationManager", "DataConnectorManager", "DataIngestionPipeline", "DataType", "MarketDataPoint"]


def __getattr__(name: str) -> Any:
    # The API pulls in the Kafka client and the providers; load it only when asked for.
    if name in ("ConfigurationManager", "DataConnectorManager", "DataIngestionPipeline"):
        from streams import api

        return getattr(api, name)
    raise AttributeError(name)
