"""The PostgreSQL schema, as ordered migrations applied once each (recorded in schema_migrations).

Plain SQL a user can query: market_data holds every kind of point with typed columns, keyed by the
natural key; data_quality_metrics holds periodic snapshots of the pipeline's metrics table; anomaly_events
and dead_letters keep what was flagged and refused. Views: latest_prices, bars; function economic_as_of.
Migrations only add: an applied one is never edited.
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
    (
        2,
        # Issue 14: revisable kinds keep their newest revision (sinks/base.py revision_of). A constant
        # default makes this ADD COLUMN a catalog change (no table rewrite); existing rows get 0, the lowest
        # revision, so any re-sent revision of them wins once.
        """
        ALTER TABLE {schema}.market_data ADD COLUMN IF NOT EXISTS revision bigint NOT NULL DEFAULT 0;
        COMMENT ON COLUMN {schema}.market_data.revision IS
            'Monotonic revision key (larger = newer): 0 for immutable kinds (tick, trade, news, social); for '
            'bar, quote and economic the producer publish time in microseconds since 1970, plus 2^56 for an '
            'economic observation whose vintage is closed (realtime_end set). An upsert replaces a row only '
            'with a strictly larger revision.';
        """,
    ),
    (
        3,
        # Issue 14: the brief's queries run as written (`ORDER BY timestamp`). PostgreSQL 15 has only STORED
        # generated columns: 8 bytes a row, always equal to ts, never written by the sink. The per-symbol index
        # moves from (symbol, ts) to (symbol, "timestamp"), so `WHERE symbol = ... ORDER BY timestamp DESC
        # LIMIT n` reads n index entries and the writer still maintains two indexes: keeping both cost the
        # writer about a third of its rows/s (measured, issue 14 report). `ORDER BY ts` still answers the
        # same, with a sort. ADD COLUMN ... STORED rewrites an existing table once, under its lock: run
        # `tickflow db migrate` before starting the workers on a big table.
        """
        ALTER TABLE {schema}.market_data
            ADD COLUMN IF NOT EXISTS "timestamp" timestamptz GENERATED ALWAYS AS (ts) STORED;
        COMMENT ON COLUMN {schema}.market_data."timestamp" IS
            'The event time: always equal to ts (generated); the per-symbol index is on (symbol, "timestamp").';
        CREATE INDEX IF NOT EXISTS market_data_symbol_timestamp ON {schema}.market_data (symbol, "timestamp" DESC);
        DROP INDEX IF EXISTS {schema}.market_data_symbol_ts;
        ALTER TABLE {schema}.data_quality_metrics
            ADD COLUMN IF NOT EXISTS "timestamp" timestamptz GENERATED ALWAYS AS (recorded_at) STORED;
        CREATE INDEX IF NOT EXISTS data_quality_metrics_timestamp
            ON {schema}.data_quality_metrics ("timestamp" DESC);
        """,
    ),
    (
        4,
        # Issue 14: views for users. Each lists its columns (a view of `*` would freeze the column list).
        """
        -- The newest trade or tick price and the newest quote of every (symbol, source). The (source, symbol)
        -- pairs come from a skip scan of the primary key (one index probe per pair, not a table scan); each
        -- latest row is one backward probe of the primary key (source, symbol, data_type, ts, ...).
        CREATE OR REPLACE VIEW {schema}.latest_prices AS
        WITH RECURSIVE pairs (source, symbol) AS (
            (SELECT source, symbol FROM {schema}.market_data ORDER BY source, symbol LIMIT 1)
            UNION ALL
            SELECT nxt.source, nxt.symbol FROM pairs p, LATERAL (
                SELECT m.source, m.symbol FROM {schema}.market_data m
                WHERE (m.source, m.symbol) > (p.source, p.symbol) ORDER BY m.source, m.symbol LIMIT 1) nxt
        )
        SELECT p.symbol, p.source,
               px.data_type AS price_kind, px.ts AS price_ts, px.price, px.volume,
               q.ts AS quote_ts, q.bid, q.ask, q.bid_size, q.ask_size, q.price AS quote_price,
               greatest(px.ts, q.ts) AS "timestamp"
        FROM pairs p
        LEFT JOIN LATERAL (
            SELECT * FROM (
                (SELECT 'trade'::text AS data_type, m.ts, m.price, m.volume FROM {schema}.market_data m
                 WHERE m.source = p.source AND m.symbol = p.symbol AND m.data_type = 'trade'
                   AND m.price IS NOT NULL ORDER BY m.ts DESC LIMIT 1)
                UNION ALL
                (SELECT 'tick'::text, m.ts, m.price, m.volume FROM {schema}.market_data m
                 WHERE m.source = p.source AND m.symbol = p.symbol AND m.data_type = 'tick'
                   AND m.price IS NOT NULL ORDER BY m.ts DESC LIMIT 1)
            ) both_kinds ORDER BY ts DESC, data_type DESC LIMIT 1
        ) px ON true
        LEFT JOIN LATERAL (
            SELECT m.ts, m.bid, m.ask, m.bid_size, m.ask_size, m.price FROM {schema}.market_data m
            WHERE m.source = p.source AND m.symbol = p.symbol AND m.data_type = 'quote'
            ORDER BY m.ts DESC LIMIT 1
        ) q ON true
        WHERE px.ts IS NOT NULL OR q.ts IS NOT NULL;
        COMMENT ON VIEW {schema}.latest_prices IS
            'Per symbol and source: the newest trade or tick price (price_kind says which) and the newest quote.';

        -- Bars of every interval; filter on "interval" ('1m', '5m', '1d', ...).
        CREATE OR REPLACE VIEW {schema}.bars AS
        SELECT symbol, source, "interval", ts, ts AS "timestamp", "open", high, low, "close", volume, flags,
               metadata, revision, ingested_at, written_at
        FROM {schema}.market_data WHERE data_type = 'bar';
        COMMENT ON VIEW {schema}.bars IS 'Bars (the newest revision of each): filter on "interval".';

        -- An economic series as it was known on `as_of` (FRED ALFRED semantics: a vintage is current from
        -- realtime_start to realtime_end, both inclusive; the open vintage ends 9999-12-31, stored as
        -- 'infinity'). Exactly one row per observation date: should vintages overlap, the latest-starting wins.
        CREATE OR REPLACE FUNCTION {schema}.economic_as_of(series text, as_of date)
        RETURNS TABLE (observation_date date, "value" double precision, realtime_start date,
                       realtime_end date, source text)
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
            SELECT DISTINCT ON (m.ts) (m.ts AT TIME ZONE 'UTC')::date, m."value", m.realtime_start,
                   m.realtime_end, m.source
            FROM {schema}.market_data m
            WHERE m.symbol = series AND m.data_type = 'economic'
              AND m.realtime_start <= as_of AND as_of <= m.realtime_end
            ORDER BY m.ts, m.realtime_start DESC, m.revision DESC, m.source
        $$;
        COMMENT ON FUNCTION {schema}.economic_as_of(text, date) IS
            'One value per observation date of the series, as known on as_of '
            '(realtime_start <= as_of <= realtime_end).';
        """,
    ),
    (
        5,
        # Issue 14: anomaly events and dead letters in PostgreSQL too (Kafka keeps them for its retention
        # only). Same idempotent contract as market_data: a natural key, INSERT ... ON CONFLICT DO NOTHING,
        # so a replayed batch writes nothing twice. Indexed for "by symbol / source / detector or rule, in time".
        """
        CREATE TABLE IF NOT EXISTS {schema}.anomaly_events (
            symbol       text             NOT NULL,
            detector     text             NOT NULL,
            ts           timestamptz      NOT NULL,  -- the flagged record's event time
            source       text             NOT NULL,
            kind         text             NOT NULL,
            score        double precision,
            threshold    double precision,
            message      text             NOT NULL DEFAULT '',
            record       jsonb            NOT NULL DEFAULT '{{}}',
            details      jsonb            NOT NULL DEFAULT '{{}}',
            detected_at  timestamptz      NOT NULL,
            written_at   timestamptz      NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (symbol, detector, ts, source)
        );
        CREATE INDEX IF NOT EXISTS anomaly_events_symbol_ts ON {schema}.anomaly_events (symbol, ts DESC);
        CREATE INDEX IF NOT EXISTS anomaly_events_source_ts ON {schema}.anomaly_events (source, ts DESC);
        CREATE INDEX IF NOT EXISTS anomaly_events_detector_ts ON {schema}.anomaly_events (detector, ts DESC);
        CREATE INDEX IF NOT EXISTS anomaly_events_ts ON {schema}.anomaly_events (ts DESC);
        CREATE TABLE IF NOT EXISTS {schema}.dead_letters (
            topic        text             NOT NULL,  -- where the refused record was read (raw.<source>, ticks.clean)
            "partition"  int              NOT NULL,
            "offset"     bigint           NOT NULL,
            stage        text             NOT NULL,
            rule         text             NOT NULL,
            error        text             NOT NULL DEFAULT '',
            exception    text,
            source       text,
            symbol       text,
            ts           timestamptz      NOT NULL,  -- when it was refused (tickflow.time)
            record_ts    timestamptz,                -- the original record's Kafka timestamp
            "key"        bytea,
            "value"      bytea,                      -- the original bytes, as the broker had them
            headers      jsonb            NOT NULL DEFAULT '{{}}',
            written_at   timestamptz      NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (topic, "partition", "offset")
        );
        CREATE INDEX IF NOT EXISTS dead_letters_ts ON {schema}.dead_letters (ts DESC);
        CREATE INDEX IF NOT EXISTS dead_letters_symbol_ts ON {schema}.dead_letters (symbol, ts DESC);
        CREATE INDEX IF NOT EXISTS dead_letters_source_ts ON {schema}.dead_letters (source, ts DESC);
        CREATE INDEX IF NOT EXISTS dead_letters_rule_ts ON {schema}.dead_letters (rule, ts DESC);
        """,
    ),
]

# Column order shared by the COPY into the staging table and the rows built by row_from_record().
# Callers read a row through sinks.postgres.row_origin, never by position.
MARKET_DATA_COLUMNS: tuple[str, ...] = (
    "source", "symbol", "data_type", "ts", "item_id", "price", "volume", "bid", "ask", "bid_size",
    "ask_size", "open", "high", "low", "close", "interval", "value", "realtime_start", "realtime_end",
    "headline", "text", "url", "sentiment", "flags", "metadata", "revision", "ingested_at",
)
# The natural key (the primary key): the conflict target of the upsert.
MARKET_DATA_KEY: tuple[str, ...] = ("source", "symbol", "data_type", "ts", "item_id")

# Anomaly events and dead letters (migration 5): the column order of the rows built by sinks.postgres
# anomaly_row / dead_letter_row, and each table's natural key.
ANOMALY_COLUMNS: tuple[str, ...] = (
    "symbol", "detector", "ts", "source", "kind", "score", "threshold", "message", "record", "details",
    "detected_at",
)
ANOMALY_KEY: tuple[str, ...] = ("symbol", "detector", "ts", "source")
DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "topic", "partition", "offset", "stage", "rule", "error", "exception", "source", "symbol", "ts",
    "record_ts", "key", "value", "headers",
)
DEAD_LETTER_KEY: tuple[str, ...] = ("topic", "partition", "offset")
