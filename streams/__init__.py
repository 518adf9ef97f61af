"""tickflow's stream stages: providers' raw topics -> validate_ticks -> ticks.clean -> write_ticks -> PostgreSQL.

Importing this package starts nothing. The brief's Python API is importable from here:

    from streams import DataIngestionPipeline, MarketDataPoint, ConfigurationManager, DataConnectorManager

`streams.MarketDataPoint` is the API's: the canonical record (streams.models) that also takes the brief's
form (data_type="price", no source, metadata=None).
"""

from typing import Any

from streams.models import DataType

__all__ = ["ConfigurationManager", "DataConnectorManager", "DataIngestionPipeline", "DataType", "MarketDataPoint"]


def __getattr__(name: str) -> Any:
    # The API pulls in the rules and the settings; load it only when asked for.
    if name in ("ConfigurationManager", "DataConnectorManager", "DataIngestionPipeline", "MarketDataPoint"):
        from streams import api

        return getattr(api, name)
    raise AttributeError(name)
