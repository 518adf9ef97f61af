"""The PostgreSQL schema, as ordered migrations applied once each (recorded in schema_migrations).

Plain SQL a user can query: market_data holds every kind of point with typed columns, keyed by the
natural key; data_quality_metrics holds periodic snapshots of the pipeline's metrics table.
"""

from __future__ import annotations

from streams.config import check_identifier


def quote_ident(name: str) -> str:
    """The checked identifier, double-quoted for SQL text."""
    return f'"{check_identifier(name)}"'


MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS {schema}.market_data (
            source          text             NOT NULL,
            symbol          text             NOT NULL,
            data_type       text             NOT NULL,
            ts              timestamptz      NOT NULL,
            item_id         text             NOT NULL DEFAULT '',
            price           double precision,
            volume          double precision,
            bid             double precision,
            ask             double precision,
            bid_size        double precision,
            ask_size        double precision,
            "open"          double precision,
            high            double precision,
            low             double precision,
            "close"         double precision,
            "interval"      text,
            "value"         double precision,
            realtime_start  date,
            realtime_end    date,
            headline        text,
            "text"          text,
            url             text,
            sentiment       double precision,
            flags           text[]           NOT NULL DEFAULT '{{}}',
            metadata        jsonb            NOT NULL DEFAULT '{{}}',
            ingested_at     timestamptz,
            written_at      timestamptz      NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (source, symbol, data_type, ts, item_id)
        );
        CREATE INDEX IF NOT EXISTS market_data_symbol_ts ON {schema}.market_data (symbol, ts DESC);
        CREATE TABLE IF NOT EXISTS {schema}.data_quality_metrics (
            id                  bigserial PRIMARY KEY,
            recorded_at         timestamptz      NOT NULL DEFAULT now(),
            worker              text             NOT NULL,
            source              text             NOT NULL,
            processed           bigint           NOT NULL,
            valid               bigint           NOT NULL,
            rejected            bigint           NOT NULL,
            written             bigint           NOT NULL,
            duplicates          bigint           NOT NULL,
            throughput_per_sec  double precision NOT NULL,
            avg_latency_ms      double precision,
            p50_latency_ms      double precision,
            p95_latency_ms      double precision,
            p99_latency_ms      double precision,
            rejected_by_rule    jsonb            NOT NULL DEFAULT '{{}}'
        );
        CREATE INDEX IF NOT EXISTS data_quality_metrics_source_time
            ON {schema}.data_quality_metrics (source, recorded_at DESC);
        """,
    ),
]

# Column order shared by the COPY into the staging table and the rows built by row_from_record().
MARKET_DATA_COLUMNS: tuple[str, ...] = (
    "source", "symbol", "data_type", "ts", "item_id", "price", "volume", "bid", "ask", "bid_size",
    "ask_size", "open", "high", "low", "close", "interval", "value", "realtime_start", "realtime_end",
    "headline", "text", "url", "sentiment", "flags", "metadata", "ingested_at",
)
