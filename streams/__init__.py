"""tickflow's stream stages: providers' raw topics -> validate_ticks -> ticks.clean -> write_ticks -> PostgreSQL.

Importing this package starts nothing; `streams.app` builds the Faust App from the Settings.
"""

from streams.models import DataType, MarketDataPoint

__all__ = ["DataType", "MarketDataPoint"]
