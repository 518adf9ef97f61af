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

# Migration 6 (issue 14): market_data becomes a table range-partitioned by ts. A table cannot be partitioned
# in place, so: functions that list, create and drop partitions; the old table renamed (with its indexes)
# to market_data_unpartitioned; a partitioned market_data LIKE it (same columns in the same order, defaults,
# the generated "timestamp", comments), the same primary key (it includes ts, so it is legal and ON CONFLICT
# works) and index; a DEFAULT partition; monthly partitions for every month that holds rows plus the
# current month and 3 ahead; the rows copied (INSERT ... SELECT under the migration's transaction and
# advisory lock: writers and readers of market_data wait until it commits, so on a big table run
# `tickflow db migrate` with the workers stopped); the old table's grants re-granted; the views re-created
# (a view binds its table by oid, not by name; economic_as_of names it in its body, so it follows the
# name); the old table dropped when it was empty, else left for the operator.
#
# Partition maintenance runs as SECURITY DEFINER functions owned by the migrating role, so a worker running
# as the least-privilege writer (no CREATE, not the owner) creates and drops partitions through them, and the
# partitions belong to the owner like the rest of the schema. EXECUTE is revoked from PUBLIC: grant it to the
# writer (README "Security"). Bounds are UTC midnights (the functions fix timezone = 'UTC'); a partition is
# named market_data_YYYYMMDD after its lower bound. Creating a partition whose range has rows in the DEFAULT
# partition would fail (PostgreSQL checks it), so those rows are moved: the new partition is made as a plain
# table, the DEFAULT's rows of its range moved into it, then it is attached. A period slot that overlaps
# existing partitions (the period changed) is clipped to the uncovered part.
_PARTITION_MARKET_DATA = r"""
        CREATE OR REPLACE FUNCTION {schema}.market_data_partitions()
        RETURNS TABLE (partition_name text, lower_bound timestamptz, upper_bound timestamptz, is_default boolean)
        LANGUAGE sql STABLE SET timezone = 'UTC' AS $$
            SELECT c.relname::text,
                   (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\)'))[1]::timestamptz,
                   (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'))[1]::timestamptz,
                   pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = '{schema}.market_data'::regclass
            ORDER BY 2 NULLS LAST
        $$;
        COMMENT ON FUNCTION {schema}.market_data_partitions() IS
            'The partitions of market_data with their [lower_bound, upper_bound) ranges (UTC); DEFAULT last.';

        CREATE OR REPLACE FUNCTION {schema}.market_data_create_partitions(period text, from_ts timestamptz,
                                                                         to_ts timestamptz)
        RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' SET lock_timeout = '10s' AS $$
        DECLARE
            step interval;
            slot timestamptz;
            lo timestamptz;
            hi timestamptz;
            edge timestamptz;
            part text;
            deflt text;
            cols text;
        BEGIN
            IF period IS NULL OR period NOT IN ('day', 'week', 'month') THEN
                RAISE EXCEPTION 'partition period must be day, week or month, not %', period
                    USING ERRCODE = '22023';
            END IF;
            PERFORM pg_advisory_xact_lock(hashtext('tickflow-partitions:' || '{schema}'));
            step := ('1 ' || period)::interval;
            SELECT format('{schema}.%I', p.partition_name) INTO deflt
            FROM {schema}.market_data_partitions() p WHERE p.is_default;
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
            FROM pg_attribute a WHERE a.attrelid = '{schema}.market_data'::regclass AND a.attnum > 0
              AND NOT a.attisdropped AND a.attgenerated = '';
            slot := date_trunc(period, from_ts);
            WHILE slot < to_ts LOOP
                lo := slot;
                hi := slot + step;
                slot := hi;
                LOOP  -- past the partitions that already cover lo
                    SELECT max(p.upper_bound) INTO edge FROM {schema}.market_data_partitions() p
                    WHERE NOT p.is_default AND p.lower_bound <= lo AND p.upper_bound > lo;
                    EXIT WHEN edge IS NULL;
                    lo := edge;
                END LOOP;
                SELECT least(hi, min(p.lower_bound)) INTO hi FROM {schema}.market_data_partitions() p
                WHERE NOT p.is_default AND p.lower_bound > lo AND p.lower_bound < hi;
                CONTINUE WHEN lo >= hi;
                part := 'market_data_' || to_char(lo, 'YYYYMMDD');
                EXECUTE format('CREATE TABLE {schema}.%I (LIKE {schema}.market_data INCLUDING DEFAULTS '
                               'INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION)', part);
                IF deflt IS NOT NULL THEN
                    EXECUTE format('WITH moved AS (DELETE FROM %s WHERE ts >= $1 AND ts < $2 RETURNING %s) '
                                   'INSERT INTO {schema}.%I (%s) SELECT %s FROM moved', deflt, cols, part, cols,
                                   cols) USING lo, hi;
                END IF;
                EXECUTE format('ALTER TABLE {schema}.market_data ATTACH PARTITION {schema}.%I '
                               'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
                RETURN NEXT part;
            END LOOP;
        END
        $$;
        COMMENT ON FUNCTION {schema}.market_data_create_partitions(text, timestamptz, timestamptz) IS
            'Create the missing partitions of period day, week or month covering [from_ts, to_ts), moving the '
            'DEFAULT partition''s rows of their ranges into them; returns the names created.';

        CREATE OR REPLACE FUNCTION {schema}.market_data_drop_partitions(cutoff timestamptz)
        RETURNS TABLE (partition_name text, approx_rows bigint) LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' SET lock_timeout = '10s' AS $$
        DECLARE
            r record;
        BEGIN
            PERFORM pg_advisory_xact_lock(hashtext('tickflow-partitions:' || '{schema}'));
            FOR r IN SELECT p.partition_name AS part, c.reltuples
                     FROM {schema}.market_data_partitions() p
                     JOIN pg_class c ON c.oid = format('{schema}.%I', p.partition_name)::regclass
                     WHERE NOT p.is_default AND p.upper_bound <= cutoff ORDER BY p.lower_bound LOOP
                EXECUTE format('ALTER TABLE {schema}.market_data DETACH PARTITION {schema}.%I', r.part);
                EXECUTE format('DROP TABLE {schema}.%I', r.part);
                partition_name := r.part;
                approx_rows := greatest(r.reltuples, 0)::bigint;
                RETURN NEXT;
            END LOOP;
        END
        $$;
        COMMENT ON FUNCTION {schema}.market_data_drop_partitions(timestamptz) IS
            'Detach and drop the partitions whose whole range is older than cutoff; returns their names and '
            'their planner row estimates.';
        REVOKE EXECUTE ON FUNCTION {schema}.market_data_create_partitions(text, timestamptz, timestamptz),
            {schema}.market_data_drop_partitions(timestamptz) FROM PUBLIC;

        LOCK TABLE {schema}.market_data IN ACCESS EXCLUSIVE MODE;
        ALTER TABLE {schema}.market_data RENAME TO market_data_unpartitioned;
        ALTER INDEX {schema}.market_data_pkey RENAME TO market_data_unpartitioned_pkey;
        ALTER INDEX {schema}.market_data_symbol_timestamp RENAME TO market_data_unpartitioned_symbol_timestamp;
        CREATE TABLE {schema}.market_data (LIKE {schema}.market_data_unpartitioned INCLUDING DEFAULTS
            INCLUDING GENERATED INCLUDING COMMENTS INCLUDING STORAGE INCLUDING COMPRESSION INCLUDING STATISTICS)
            PARTITION BY RANGE (ts);
        ALTER TABLE {schema}.market_data ADD CONSTRAINT market_data_pkey
            PRIMARY KEY (source, symbol, data_type, ts, item_id);
        CREATE INDEX market_data_symbol_timestamp ON {schema}.market_data (symbol, "timestamp" DESC);
        CREATE TABLE {schema}.market_data_default PARTITION OF {schema}.market_data DEFAULT;
        COMMENT ON TABLE {schema}.market_data IS
            'Every point, range-partitioned by ts (see market_data_partitions()); key (source, symbol, '
            'data_type, ts, item_id).';
        SELECT count(*) FROM (
            SELECT {schema}.market_data_create_partitions('month', d.m, d.m + interval '1 month')
            FROM (SELECT DISTINCT date_trunc('month', ts, 'UTC') AS m FROM {schema}.market_data_unpartitioned) d
        ) made;
        SELECT count(*) FROM {schema}.market_data_create_partitions('month', now(), now() + interval '3 months');
        DO $$
        DECLARE
            cols text;
            g record;
        BEGIN
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
            FROM pg_attribute a WHERE a.attrelid = '{schema}.market_data_unpartitioned'::regclass
              AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '';
            EXECUTE format('INSERT INTO {schema}.market_data (%s) SELECT %s FROM {schema}.market_data_unpartitioned',
                           cols, cols);
            FOR g IN SELECT a.grantee, a.privilege_type, a.is_grantable
                     FROM pg_class c, aclexplode(c.relacl) a
                     WHERE c.oid = '{schema}.market_data_unpartitioned'::regclass AND a.grantee <> c.relowner LOOP
                EXECUTE format('GRANT %s ON {schema}.market_data TO %s%s', g.privilege_type,
                               CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                               CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
            END LOOP;
        END
        $$;
"""
_DROP_UNPARTITIONED_IF_EMPTY = """
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM {schema}.market_data_unpartitioned) THEN
                DROP TABLE {schema}.market_data_unpartitioned;
            END IF;
        END
        $$;
        ANALYZE {schema}.market_data;
"""
assert MIGRATIONS[3][0] == 4  # the views and economic_as_of: CREATE OR REPLACE, re-bound to the new table
MIGRATIONS.append((6, _PARTITION_MARKET_DATA + MIGRATIONS[3][1] + _DROP_UNPARTITIONED_IF_EMPTY))

# Migration 7: an anomaly event's identity includes the flagged record's data_type, interval and item_id (a 1m
# bar and a 1d bar of one symbol at one time, flagged by one detector, are two events, not one). The columns
# default to '' so the key stays NOT NULL (an event without a record: a stale feed has none of them). Rows
# stored before are back-filled from their record with anomaly_row's rule, so an exact re-send of an old
# event still finds its row. ALTER in place: rows, grants, indexes and comments stay.
_ANOMALY_IDENTITY = """
        ALTER TABLE {schema}.anomaly_events
            ADD COLUMN IF NOT EXISTS data_type  text NOT NULL DEFAULT '',
            ADD COLUMN IF NOT EXISTS "interval" text NOT NULL DEFAULT '',
            ADD COLUMN IF NOT EXISTS item_id    text NOT NULL DEFAULT '';
        UPDATE {schema}.anomaly_events
        SET data_type = coalesce(record->>'data_type', ''), "interval" = coalesce(record->>'interval', ''),
            item_id = coalesce(record->>'item_id', '')
        WHERE jsonb_typeof(record) = 'object' AND record ?| ARRAY['data_type', 'interval', 'item_id'];
        ALTER TABLE {schema}.anomaly_events DROP CONSTRAINT anomaly_events_pkey,
            ADD CONSTRAINT anomaly_events_pkey
                PRIMARY KEY (symbol, detector, ts, source, data_type, "interval", item_id);
        COMMENT ON COLUMN {schema}.anomaly_events.data_type IS
            'The flagged record''s data_type (with "interval" and item_id, '''' when it has none): part of the key.';
"""
MIGRATIONS.append((7, _ANOMALY_IDENTITY))

# Migration 8: partitions for the history in the DEFAULT partition. Partitions were made only from now
# forward, so a backfilled month (2020 bars) stayed in market_data_default for ever: never dropped whole by
# retention, and scanned by every query that cannot prune DEFAULT. market_data_create_partitions(period,
# NULL, NULL) now makes a partition for every period the DEFAULT partition holds rows of (the leader's
# partition timer calls it: streams/stages/retention.py), moving them in. Same name and arguments: the EXECUTE
# grants and the SECURITY DEFINER owner stay (CREATE OR REPLACE keeps both).
#
# Locking. A new partition is a plain table filled from DEFAULT and then attached, in one transaction (CREATE
# ... PARTITION OF is refused while DEFAULT holds rows of its range; detaching DEFAULT instead would leave the
# rows of every other uncovered range without a partition, and writers inserting them would fail). Before the
# first partition is made, market_data itself is locked ACCESS EXCLUSIVE, so concurrent statements wait at the
# parent, before they read its partition list, and plan with the new partition once this commits. ATTACH alone
# takes only SHARE UPDATE EXCLUSIVE on the parent: a writer that planned before the commit routes a row of the
# new range to DEFAULT and fails DEFAULT's new constraint (23514), its revision UPDATE misses the moved rows,
# a reader's plan misses them; and a row inserted into the range after the move makes the ATTACH fail. The
# lock lasts the move plus ATTACH's scan of DEFAULT (made anyway, under ATTACH's own ACCESS EXCLUSIVE lock on
# DEFAULT, which already blocks every query that cannot prune DEFAULT); lock_timeout (10 s) bounds the wait
# for it. The new table gets a CHECK of its range before the move, so ATTACH need not scan it. DEFAULT gets an
# index on ts: finding its periods, the move and retention's batched DELETE (DEFAULT is never pruned) read
# ranges of ts through it.
_PARTITIONS_FROM_DEFAULT = r"""
        CREATE INDEX IF NOT EXISTS market_data_default_ts ON {schema}.market_data_default (ts);

        CREATE OR REPLACE FUNCTION {schema}.market_data_create_partitions(period text, from_ts timestamptz,
                                                                         to_ts timestamptz)
        RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp SET timezone = 'UTC' SET lock_timeout = '10s' AS $$
        DECLARE
            step interval;
            slot timestamptz;
            lo timestamptz;
            hi timestamptz;
            edge timestamptz;
            nxt timestamptz;
            los timestamptz[] := '{{}}';
            his timestamptz[] := '{{}}';
            part text;
            deflt text;
            cols text;
        BEGIN
            IF period IS NULL OR period NOT IN ('day', 'week', 'month') THEN
                RAISE EXCEPTION 'partition period must be day, week or month, not %', period
                    USING ERRCODE = '22023';
            END IF;
            IF (from_ts IS NULL) <> (to_ts IS NULL) THEN
                RAISE EXCEPTION 'give from_ts and to_ts, or neither (the periods the DEFAULT partition holds)'
                    USING ERRCODE = '22023';
            END IF;
            PERFORM pg_advisory_xact_lock(hashtext('tickflow-partitions:' || '{schema}'));
            step := ('1 ' || period)::interval;
            SELECT format('{schema}.%I', p.partition_name) INTO deflt
            FROM {schema}.market_data_partitions() p WHERE p.is_default;
            IF from_ts IS NULL THEN
                -- The period of DEFAULT's oldest row (one probe of its ts index), clipped to the gap between the
                -- partitions around that row. One partition a call, so the lock below is held for one period's
                -- move at a time: the caller calls again until nothing is returned.
                IF deflt IS NULL THEN
                    RETURN;
                END IF;
                EXECUTE format('SELECT min(ts) FROM %s', deflt) INTO nxt;
                IF nxt IS NULL THEN
                    RETURN;
                END IF;
                slot := date_trunc(period, nxt);
                SELECT greatest(slot, max(p.upper_bound)) INTO lo FROM {schema}.market_data_partitions() p
                WHERE NOT p.is_default AND p.upper_bound <= nxt;
                SELECT least(slot + step, min(p.lower_bound)) INTO hi FROM {schema}.market_data_partitions() p
                WHERE NOT p.is_default AND p.lower_bound > nxt;
                los := ARRAY[lo];
                his := ARRAY[hi];
            ELSE
                slot := date_trunc(period, from_ts);
                WHILE slot < to_ts LOOP
                    lo := slot;
                    hi := slot + step;
                    slot := hi;
                    LOOP  -- past the partitions that already cover lo
                        SELECT max(p.upper_bound) INTO edge FROM {schema}.market_data_partitions() p
                        WHERE NOT p.is_default AND p.lower_bound <= lo AND p.upper_bound > lo;
                        EXIT WHEN edge IS NULL;
                        lo := edge;
                    END LOOP;
                    SELECT least(hi, min(p.lower_bound)) INTO hi FROM {schema}.market_data_partitions() p
                    WHERE NOT p.is_default AND p.lower_bound > lo AND p.lower_bound < hi;
                    CONTINUE WHEN lo >= hi;
                    los := los || lo;
                    his := his || hi;
                END LOOP;
            END IF;
            IF cardinality(los) = 0 THEN
                RETURN;
            END IF;
            LOCK TABLE {schema}.market_data IN ACCESS EXCLUSIVE MODE;  -- why: the comment of migration 8
            SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) INTO cols
            FROM pg_attribute a WHERE a.attrelid = '{schema}.market_data'::regclass AND a.attnum > 0
              AND NOT a.attisdropped AND a.attgenerated = '';
            FOR i IN 1 .. cardinality(los) LOOP
                lo := los[i];
                hi := his[i];
                part := 'market_data_' || to_char(lo, 'YYYYMMDD');
                EXECUTE format('CREATE TABLE {schema}.%I (LIKE {schema}.market_data INCLUDING DEFAULTS '
                               'INCLUDING GENERATED INCLUDING STORAGE INCLUDING COMPRESSION)', part);
                EXECUTE format('ALTER TABLE {schema}.%I ADD CONSTRAINT %I CHECK (ts >= %L AND ts < %L)',
                               part, part || '_range', lo, hi);
                IF deflt IS NOT NULL THEN
                    EXECUTE format('WITH moved AS (DELETE FROM %s WHERE ts >= $1 AND ts < $2 RETURNING %s) '
                                   'INSERT INTO {schema}.%I (%s) SELECT %s FROM moved', deflt, cols, part, cols,
                                   cols) USING lo, hi;
                END IF;
                EXECUTE format('ALTER TABLE {schema}.market_data ATTACH PARTITION {schema}.%I '
                               'FOR VALUES FROM (%L) TO (%L)', part, lo, hi);
                EXECUTE format('ALTER TABLE {schema}.%I DROP CONSTRAINT %I', part, part || '_range');
                RETURN NEXT part;
            END LOOP;
        END
        $$;
        COMMENT ON FUNCTION {schema}.market_data_create_partitions(text, timestamptz, timestamptz) IS
            'Create the missing partitions of period day, week or month covering [from_ts, to_ts), or with '
            'both NULL the one of the DEFAULT partition''s oldest row, moving the DEFAULT partition''s rows of '
            'their ranges into them; returns the names created.';
"""
MIGRATIONS.append((8, _PARTITIONS_FROM_DEFAULT))

# Migration 9: FRED's by-vintage rows (output_type 2 and 3) carry no realtime_end (NULL: FRED gives only the
# vintage date), and `as_of <= NULL` is never true, so economic_as_of hid every one of them. NULL is read as an
# open vintage ('infinity') in the function rather than stored: rows already written need no rewrite, the
# revision key is unchanged (sinks/base.py revision_of: a real realtime_end, a closed vintage, still
# outranks them). Among the vintages current on as_of the latest-starting wins: for by-vintage rows, the
# newest vintage published by then. Same signature: CREATE OR REPLACE keeps the grants.
_ECONOMIC_OPEN_NULL = """
        CREATE OR REPLACE FUNCTION {schema}.economic_as_of(series text, as_of date)
        RETURNS TABLE (observation_date date, "value" double precision, realtime_start date,
                       realtime_end date, source text)
        LANGUAGE sql STABLE PARALLEL SAFE AS $$
            SELECT DISTINCT ON (m.ts) (m.ts AT TIME ZONE 'UTC')::date, m."value", m.realtime_start,
                   coalesce(m.realtime_end, 'infinity'::date), m.source
            FROM {schema}.market_data m
            WHERE m.symbol = series AND m.data_type = 'economic'
              AND m.realtime_start <= as_of AND as_of <= coalesce(m.realtime_end, 'infinity'::date)
            ORDER BY m.ts, m.realtime_start DESC, m.revision DESC, m.source
        $$;
        COMMENT ON FUNCTION {schema}.economic_as_of(text, date) IS
            'One value per observation date of the series, as known on as_of '
            '(realtime_start <= as_of <= realtime_end; a NULL realtime_end, as FRED''s by-vintage rows have, '
            'is an open vintage, returned as infinity).';
"""
MIGRATIONS.append((9, _ECONOMIC_OPEN_NULL))

# Migration 10: the newest rows of the whole table, as the brief reads them (`SELECT ... FROM market_data ORDER
# BY timestamp DESC LIMIT 100`), were a parallel scan and a sort of every partition (3M rows: ~480 ms, linear in
# the table). With an index on "timestamp" in each partition the plan is a merge of the partitions' newest
# entries (a few ms at any size), as a time-series store keeps one by default. Its price is one more index entry
# per written row (bench/README.md, session 40). A partitioned index: partitions created later get their own.
_TIMESTAMP_INDEX = """
        CREATE INDEX IF NOT EXISTS market_data_timestamp ON {schema}.market_data ("timestamp" DESC);
"""
MIGRATIONS.append((10, _TIMESTAMP_INDEX))

# Column order shared by the COPY into the staging table and the rows built by row_from_record().
# Callers read a row through sinks.postgres.row_origin, never by position.
MARKET_DATA_COLUMNS: tuple[str, ...] = (
    "source", "symbol", "data_type", "ts", "item_id", "price", "volume", "bid", "ask", "bid_size",
    "ask_size", "open", "high", "low", "close", "interval", "value", "realtime_start", "realtime_end",
    "headline", "text", "url", "sentiment", "flags", "metadata", "revision", "ingested_at",
)
# The natural key (the primary key): the conflict target of the upsert.
MARKET_DATA_KEY: tuple[str, ...] = ("source", "symbol", "data_type", "ts", "item_id")

# Anomaly events (migrations 5 and 7) and dead letters (migration 5): the column order of the rows built by
# sinks.postgres anomaly_row / dead_letter_row, and each table's natural key.
ANOMALY_COLUMNS: tuple[str, ...] = (
    "symbol", "detector", "ts", "source", "data_type", "interval", "item_id", "kind", "score", "threshold",
    "message", "record", "details", "detected_at",
)
ANOMALY_KEY: tuple[str, ...] = ("symbol", "detector", "ts", "source", "data_type", "interval", "item_id")
DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "topic", "partition", "offset", "stage", "rule", "error", "exception", "source", "symbol", "ts",
    "record_ts", "key", "value", "headers",
)
DEAD_LETTER_KEY: tuple[str, ...] = ("topic", "partition", "offset")
