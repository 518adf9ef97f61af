"""Nasdaq Data Link (formerly Quandl): dataset time series and datatables, written to
raw.nasdaq_data_link with source "nasdaq_data_link".

- Datasets: GET /api/v3/datasets/{db}/{code}/data.json -> dataset_data.column_names + data rows.
- Datatables: GET /api/v3/datatables/{code}.json -> datatable.columns [{name, type}] + data, paged
  with meta.next_cursor_id (sent back as qopts.cursor_id).
- Column names are matched case-insensitively after dropping punctuation ("Adj. Close" -> "adj close").
  A table with open, high, low and close (or settle, a futures settlement price) becomes bars; any
  other becomes economic points whose value is the first of value/close/settle/price/rate, else the
  first numeric column (named in metadata["value_column"]). Every other column goes to metadata.
- Raw, not adjusted: bars take the raw Open/High/Low/Close; "Adj. ..." columns stay in metadata, so
  adjusted and raw prices are never mixed in one series.
- Symbol: a dataset's code ("WIKI/AAPL" -> "AAPL"), a datatable row's ticker/symbol column, else the
  datatable code. item_id is the dataset or datatable path, so two databases never share a key.
- Key: NASDAQ_DATA_LINK_API_KEY, else QUANDL_API_KEY, sent as `api_key` and redacted everywhere.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
from pydantic import SecretStr

from producers.base import PollingSource
from producers.http import RateLimiter, get_json, redact
from streams.config import DatatableQuery, NasdaqDataLinkSettings
from streams.errors import ConfigError, SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "nasdaq_data_link"

_DATE_NAMES = ("date", "trade date", "period", "year", "month", "as of date", "per end date", "calendardate")
_VALUE_NAMES = ("value", "close", "settle", "price", "rate", "last")
_FIELD_NAMES: dict[str, str] = {
    "open": "open", "high": "high", "low": "low", "close": "close", "settle": "close",
    "volume": "volume", "value": "value",
}
_SYMBOL_NAMES = ("ticker", "symbol")
_FREQUENCIES = {"daily": "1d", "weekly": "1wk", "monthly": "1mo", "quarterly": "3mo", "annual": "1y"}


# ---------------------------------------------------------------------------------------------- parsing


def normalise(name: str) -> str:
    """"Adj. Close" -> "adj close", "per_end_date" -> "per end date"."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", name.lower()).split())


def parse_date(value: Any) -> datetime:
    """A date column value ("2024-01-31", "2024-01-31T00:00:00Z", 2024) to aware UTC midnight/instant."""
    if isinstance(value, int) and 1000 <= value <= 9999:
        return datetime(value, 12, 31, tzinfo=UTC)
    text = str(value).strip()
    if len(text) == 10:
        d = date.fromisoformat(text)
        return datetime(d.year, d.month, d.day, tzinfo=UTC)
    dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _date_index(names: Sequence[str], types: Sequence[str] | None = None) -> int:
    for candidate in _DATE_NAMES:
        if candidate in names:
            return names.index(candidate)
    if types:
        for i, t in enumerate(types):
            if t.lower() in ("date", "datetime"):
                return i
    return 0  # Quandl time series always put the date first


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def parse_table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    symbol: str,
    item_id: str,
    types: Sequence[str] | None = None,
    source: str = SOURCE,
    extra_meta: Mapping[str, Any] | None = None,
    interval: str = "1d",
) -> list[MarketDataPoint]:
    """Rows of a dataset or datatable -> bar or economic points, by the column names."""
    names = [normalise(c) for c in columns]
    di = _date_index(names, types)
    sym_i = next((names.index(n) for n in _SYMBOL_NAMES if n in names), None)
    fields = {i: _FIELD_NAMES[n] for i, n in enumerate(names) if n in _FIELD_NAMES and i != di}
    # "settle" is the close of a futures table, unless there is a real close too.
    if "close" in names and "settle" in names:
        fields.pop(names.index("settle"))
    is_bar = {"open", "high", "low", "close"} <= set(fields.values())
    value_i: int | None = None
    if not is_bar:
        value_i = next((names.index(n) for n in _VALUE_NAMES if n in names and names.index(n) != di), None)
    out: list[MarketDataPoint] = []
    skipped = 0
    for row in rows:
        if len(row) != len(columns):
            skipped += 1
            continue
        try:
            ts = parse_date(row[di])
        except (TypeError, ValueError):
            skipped += 1
            continue
        typed: dict[str, float | None] = {}
        meta: dict[str, Any] = dict(extra_meta or {})
        vi = value_i
        if not is_bar and vi is None:  # no value-like name: the first numeric column
            vi = next((i for i, v in enumerate(row) if i not in (di, sym_i) and _is_number(v)), None)
        for i, v in enumerate(row):
            if i in (di, sym_i):
                continue
            if is_bar and i in fields:
                typed[fields[i]] = None if v is None else float(v)
            elif i == vi:
                typed["value"] = None if v is None else float(v)
                if names[i] != "value":
                    meta["value_column"] = columns[i]
            elif v is not None:
                meta[columns[i]] = v
        if is_bar and any(typed.get(k) is None for k in ("open", "high", "low", "close")):
            skipped += 1
            continue
        row_symbol = str(row[sym_i]).upper() if sym_i is not None and row[sym_i] else symbol
        out.append(MarketDataPoint(
            symbol=row_symbol, timestamp=ts, source=source,
            data_type=DataType.BAR if is_bar else DataType.ECONOMIC,
            interval=interval if is_bar else None, item_id=item_id, metadata=meta, **typed,
        ))
    if skipped:
        logger.info("nasdaq_data_link: %s: skipped %d rows without a date or OHLC", item_id, skipped)
    return out


def parse_dataset(doc: Any, dataset: str, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """/datasets/{db}/{code}/data.json -> points; the symbol is the code."""
    if not isinstance(doc, dict) or not isinstance(doc.get("dataset_data"), dict):
        raise SourceError(f"unexpected Nasdaq Data Link dataset payload for {dataset}")
    dd = doc["dataset_data"]
    columns = dd.get("column_names") or []
    symbol = dataset.split("/")[-1].upper()
    frequency = str(dd.get("frequency") or "daily")
    return parse_table(columns, dd.get("data") or [], symbol=symbol, item_id=dataset.upper(), source=source,
                       interval=_FREQUENCIES.get(frequency, frequency[:16]))


def parse_datatable(doc: Any, code: str, *, source: str = SOURCE) -> tuple[list[MarketDataPoint], str | None]:
    """/datatables/{code}.json -> (points, next_cursor_id)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("datatable"), dict):
        raise SourceError(f"unexpected Nasdaq Data Link datatable payload for {code}")
    dt = doc["datatable"]
    cols = dt.get("columns") or []
    names = [str(c.get("name", "")) for c in cols]
    types = [str(c.get("type", "")) for c in cols]
    points = parse_table(names, dt.get("data") or [], symbol=code.split("/")[-1].upper(), item_id=code.upper(),
                         types=types, source=source)
    cursor = (doc.get("meta") or {}).get("next_cursor_id")
    return points, cursor or None


# ---------------------------------------------------------------------------------------------- source


class NasdaqDataLinkSource(PollingSource):
    """Polls the configured datasets (over a lookback window) and datatables (all pages) once per interval."""

    name = SOURCE

    def __init__(self, settings: NasdaqDataLinkSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        key = api_key or settings.api_key(env)
        if key is None:
            raise ConfigError("the nasdaq_data_link source needs NASDAQ_DATA_LINK_API_KEY (or QUANDL_API_KEY)")
        self.settings = settings
        self.api_key = key
        self.base_url = settings.base_url.rstrip("/")
        self.limiter = RateLimiter(settings.rate_limit_calls, settings.rate_limit_per_seconds)

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    async def _get(self, session: aiohttp.ClientSession, path: str, params: Mapping[str, Any]) -> Any:
        s = self.settings
        try:
            return await get_json(
                session, f"{self.base_url}{path}", params={**params, "api_key": self.api_key.get_secret_value()},
                secrets=[self.api_key], limiter=self.limiter, attempts=s.retry_attempts,
                base_delay=s.retry_base_delay, timeout=s.request_timeout_seconds,
                max_bytes=s.max_response_bytes, max_retry_after=s.max_retry_after_seconds,
            )
        except SourceError as exc:
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None

    async def dataset(self, session: aiohttp.ClientSession, dataset: str, *, start: date | None = None,
                      end: date | None = None) -> list[MarketDataPoint]:
        db, _, code = dataset.partition("/")
        if not db or not code:
            raise SourceError(f"dataset {dataset!r} is not DB/CODE")
        params = {"order": "asc"}
        if start:
            params["start_date"] = start.isoformat()
        if end:
            params["end_date"] = end.isoformat()
        return parse_dataset(await self._get(session, f"/api/v3/datasets/{db}/{code}/data.json", params), dataset)

    async def datatable(self, session: aiohttp.ClientSession, query: DatatableQuery) -> list[MarketDataPoint]:
        out: list[MarketDataPoint] = []
        cursor: str | None = None
        for _ in range(self.settings.max_pages):
            params = dict(query.params)
            if cursor:
                params["qopts.cursor_id"] = cursor
            points, cursor = parse_datatable(await self._get(session, f"/api/v3/datatables/{query.code}.json", params),
                                             query.code)
            out.extend(points)
            if not cursor:
                return out
        logger.warning("nasdaq_data_link: %s has more than %d pages; the rest waits for the next poll",
                       query.code, self.settings.max_pages)
        return out

    async def poll_once(self, session: aiohttp.ClientSession, today: date | None = None) -> list[MarketDataPoint]:
        today = today or datetime.now(UTC).date()
        start = today - timedelta(days=self.settings.lookback_days)
        out: list[MarketDataPoint] = []
        for dataset in self.settings.datasets:
            try:
                out.extend(await self.dataset(session, dataset, start=start))
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                logger.warning("nasdaq_data_link: dataset %s failed: %s", dataset,
                               self.redact(f"{type(exc).__name__}: {exc}"))
        for query in self.settings.datatables:
            try:
                out.extend(await self.datatable(session, query))
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                logger.warning("nasdaq_data_link: datatable %s failed: %s", query.code,
                               self.redact(f"{type(exc).__name__}: {exc}"))
        return out

