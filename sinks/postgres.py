"""PostgreSQL writer: COPY a batch into a per-connection staging table, then one
INSERT ... ON CONFLICT DO NOTHING into market_data, all in one transaction.

COPY is the fastest way into PostgreSQL; the staging hop keeps the write idempotent on the natural key
(a replayed batch inserts nothing twice). Errors are sorted by SQLSTATE family into retriable
(connection, shutdown, resources: SinkUnavailable) and data errors (SinkError).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any

import asyncpg
import orjson

from sinks.base import BatchWriter, WriteResult
from sinks.schema import MARKET_DATA_COLUMNS, MIGRATIONS, quote_ident
from streams import faults
from streams.errors import SinkError, SinkRefused, SinkUnavailable
from streams.settings import PostgresSettings

logger = logging.getLogger(__name__)

_STAGE = "tickflow_stage"
# SQLSTATE classes that mean "the database, not the data": connection (08), resources (53),
# operator intervention / shutdown (57), system errors (58), and serialization/deadlock (40).
_RETRIABLE_CLASSES = ("08", "53", "57", "58", "40")


def classify(exc: BaseException, where: str) -> SinkError:
    """Map a driver exception onto our tree; the message carries no DSN password."""
    if isinstance(exc, SinkError):
        return exc
    sqlstate = getattr(exc, "sqlstate", None) or ""
    retriable = (
        isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError))
        or sqlstate[:2] in _RETRIABLE_CLASSES
    )
    cls = SinkUnavailable if retriable else SinkRefused
    err = cls(f"{where}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _ts(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _date(value: Any) -> date | None:
    return date.fromisoformat(value) if value is not None else None


def _json_text(value: Any) -> str:
    return orjson.dumps(value).decode() if value else "{}"  # most records carry no metadata


def row_from_record(d: dict[str, Any]) -> tuple[Any, ...]:
    """A canonical record (decoded JSON from ticks.clean) -> a market_data row in MARKET_DATA_COLUMNS order."""
    g = d.get
    return (
        d["source"], d["symbol"], g("data_type", "tick"), datetime.fromisoformat(d["timestamp"]),
        g("item_id", ""), g("price"), g("volume"), g("bid"), g("ask"), g("bid_size"), g("ask_size"),
        g("open"), g("high"), g("low"), g("close"), g("interval"), g("value"),
        _date(g("realtime_start")), _date(g("realtime_end")), g("headline"), g("text"), g("url"),
        g("sentiment"), g("flags") or [], _json_text(g("metadata")), _ts(g("ingested_at")),
    )


class PostgresTickWriter(BatchWriter):
    """Owns an asyncpg pool; `start` migrates the schema (under an advisory lock) and opens the pool."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self.schema = settings.db_schema
        # The schema is the one name from settings that reaches SQL text: checked and quoted (sinks/schema.py);
        # every value is a bound parameter.
        self._q = quote_ident(self.schema)
        self.pool: asyncpg.Pool | None = None
        self._warned_transport = False
        cols = ", ".join(f'"{c}"' for c in MARKET_DATA_COLUMNS)
        self._insert = (
            f"WITH ins AS (INSERT INTO {self._q}.market_data ({cols}) SELECT {cols} FROM {_STAGE} "
            "ON CONFLICT DO NOTHING RETURNING source) SELECT source, count(*)::int AS n FROM ins GROUP BY source"
        )

    def _connect_kwargs(self) -> dict[str, Any]:
        if not self._warned_transport:
            self._warned_transport = True
            warning = self.settings.transport_warning()
            if warning:
                logger.warning("%s", warning)
        return {**self.settings.connect_kwargs(), "timeout": 10, "command_timeout": 60}

    async def migrate(self) -> None:
        try:
            conn = await asyncpg.connect(**self._connect_kwargs())
        except Exception as exc:
            raise classify(exc, f"connect {self.settings.dsn_for_display()}") from None
        try:
            if not await self._pending(conn):
                return
            async with conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"tickflow:{self.schema}")
                # Even with IF NOT EXISTS, CREATE SCHEMA needs the CREATE privilege on the database.
                if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                                           self.schema):
                    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._q}")
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self._q}.schema_migrations "
                    "(version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {self._q}.schema_migrations")}
                for version, sql in MIGRATIONS:
                    if version in done:
                        continue
                    await conn.execute(sql.format(schema=self._q))
                    await conn.execute(f"INSERT INTO {self._q}.schema_migrations (version) VALUES ($1)", version)
                    logger.info("applied migration %d to schema %s", version, self.schema)
        finally:
            await conn.close()

    async def _pending(self, conn: asyncpg.Connection) -> bool:
        """Whether a migration is missing, asked read-only first: a worker running as a least-privilege writer
        role (README "Security": no CREATE privilege, so not even CREATE ... IF NOT EXISTS) starts on a
        schema the owner role migrated."""
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{self._q}.schema_migrations"):
            return True
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {self._q}.schema_migrations")}
        return any(version not in done for version, _ in MIGRATIONS)

    async def _init_connection(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} "
            f"(LIKE {self._q}.market_data INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )

    async def start(self) -> None:
        if self.pool is not None:
            return
        await self.migrate()
        try:
            self.pool = await asyncpg.create_pool(
                **self._connect_kwargs(),
                min_size=self.settings.pool_min,
                max_size=self.settings.pool_max,
                init=self._init_connection,
            )
        except Exception as exc:
            raise classify(exc, f"pool {self.settings.dsn_for_display()}") from None
        logger.info("connected to %s (schema %s)", self.settings.dsn_for_display(), self.schema)

    async def stop(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            await pool.close()

    async def write(self, rows: Sequence[tuple[Any, ...]]) -> WriteResult:
        if not rows:
            return WriteResult(0, 0)
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.copy_records_to_table(_STAGE, records=rows, columns=MARKET_DATA_COLUMNS)
                counts = await conn.fetch(self._insert)
                faults.reach("write.after_insert")
        except Exception as exc:
            raise classify(exc, "write market_data") from None
        by_source = {r["source"]: r["n"] for r in counts}
        inserted = sum(by_source.values())
        return WriteResult(inserted, len(rows) - inserted, by_source)

    async def delete_older_than(self, cutoff: datetime, batch_rows: int) -> int:
        """Delete rows older than `cutoff` a batch at a time (short transactions, no long locks)."""
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        deleted = 0
        targets = ((f"{self._q}.market_data", "ts"), (f"{self._q}.data_quality_metrics", "recorded_at"))
        try:
            for table, column in targets:
                while True:
                    status = await self.pool.execute(
                        f"DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} WHERE {column} < $1 LIMIT $2)",
                        cutoff, batch_rows)
                    n = int(status.rsplit(" ", 1)[-1])
                    deleted += n
                    if n < batch_rows:
                        break
        except Exception as exc:
            raise classify(exc, "retention delete") from None
        return deleted

    async def recent(self, symbol: str, limit: int) -> list[dict[str, Any]]:
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        cols = ", ".join(f'"{c}"' for c in MARKET_DATA_COLUMNS)
        try:
            rows = await self.pool.fetch(
                f"SELECT {cols}, written_at FROM {self._q}.market_data WHERE symbol = $1 "
                "ORDER BY ts DESC LIMIT $2", symbol, limit)
        except Exception as exc:
            raise classify(exc, "read market_data") from None
        return [dict(r) for r in rows]

    async def write_metrics(self, worker: str, snapshots: dict[str, dict[str, Any]]) -> None:
        if self.pool is None:
            await self.start()
        assert self.pool is not None
        records = [
            (
                worker, source, s["processed"], s["valid"], s["rejected"], s["written"], s["duplicates"],
                s["throughput_per_sec"], s["avg_latency_ms"], s["p50_latency_ms"], s["p95_latency_ms"],
                s["p99_latency_ms"], orjson.dumps(s["rejected_by_rule"]).decode(),
            )
            for source, s in snapshots.items()
        ]
        try:
            async with self.pool.acquire() as conn:
                await conn.executemany(
                    f"INSERT INTO {self._q}.data_quality_metrics (worker, source, processed, valid, rejected,"
                    " written, duplicates, throughput_per_sec, avg_latency_ms, p50_latency_ms, p95_latency_ms,"
                    " p99_latency_ms, rejected_by_rule) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13::jsonb)",
                    records,
                )
        except Exception as exc:
            raise classify(exc, "write data_quality_metrics") from None
