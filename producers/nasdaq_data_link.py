"""Nasdaq Data Link (formerly Quandl): dataset time series and datatables, written to
raw.nasdaq_data_link with source "nasdaq_data_link".

- Datasets: GET /api/v3/datasets/{db}/{code}/data.json -> dataset_data.column_names + data rows, or
  data.csv (DatasetQuery.format = "csv") -> a header line + rows. CSV bodies (v3 data.csv, and the legacy
  v1 /api/v1/datasets/{db}/{code}.csv, the same layout) are parsed whatever was asked for: a body is read as
  JSON when it starts with "{" or "[", else as CSV, never refused as "not JSON".
- Transformed or collapsed series (DatasetQuery transform = diff|rdiff|rdiff_from|cumul|normalize, collapse
  = daily|weekly|monthly|quarterly|annual; the JSON answer's own dataset_data.transform/collapse win) are
  economic points, never bars: a row of an rdiff series is a change, not a price, and a collapsed row is the
  period's last row (its "Open" is the last day's open), not a bar of the period. metadata["transform"] and
  metadata["collapse"] say so, item_id is "DB/CODE|transform=rdiff|collapse=monthly" (so the plain series
  never shares a key with it) and interval is the period plus the transform ("1mo:rdiff"). The period is the
  coarser of the collapse and the dataset's own frequency (dataset_data.frequency, else the CSV rows' spacing):
  an annual dataset collapsed monthly is "1y".
- Datatables: GET /api/v3/datatables/{code}.json -> datatable.columns [{name, type}] + data, paged
  with meta.next_cursor_id (sent back as qopts.cursor_id). A poll reads at most max_pages pages; the cursor
  where it stopped is kept (per code and params) and the next poll continues from it, so a long table is read
  over several polls without skipping rows; after its last page the next poll starts again at page 1.
- Column names are matched case-insensitively after dropping punctuation ("Adj. Close" -> "adj close").
  A table with open, high, low and close (or settle, a futures settlement price) becomes bars; any
  other becomes economic points whose value is the first of value/close/settle/price/rate, else the
  first numeric column (named in metadata["value_column"]). Every other column goes to metadata.
- Raw, not adjusted: bars take the raw Open/High/Low/Close; "Adj. ..." columns stay in metadata, so
  adjusted and raw prices are never mixed in one series.
- Symbol: a dataset's code ("WIKI/AAPL" -> "AAPL"), a datatable row's ticker/symbol column, else the
  datatable code. item_id is the dataset or datatable path, so two databases never share a key; a datatable's
  key columns (DatatableQuery.key_columns, default dimension and per_type: Sharadar's SF1 has a row per
  dimension for each ticker and date) join it ("SHARADAR/SF1|dimension=ARQ"). Rows of one page that still share
  a natural key are warned of once per table (naming the label columns that differ) and counted in `collisions`.
- Key: NASDAQ_DATA_LINK_API_KEY, else QUANDL_API_KEY, sent as `api_key` and redacted everywhere.
- An unknown dataset (quandl_error QECx02, "incorrect ... code") is logged once and counted in
  `unknown[code]`; a payload of a shape nothing here reads (NdlUnexpected) once per kind and cause, counted in
  `unexpected[kind]` (kind: dataset, datatable).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from typing import Any

import aiohttp
import orjson
from pydantic import SecretStr

from producers.base import PollingSource
from producers.http import RateLimiter, get_text, http_options, redact
from streams.config import DatasetQuery, DatatableQuery, NasdaqDataLinkSettings
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
_COARSENESS = list(_FREQUENCIES)  # finest first
# The shortest gap in days between two rows of each frequency, coarsest first (rows sit on period ends or starts:
# a quarter is 89 to 92 days, a month 28 to 31).
_MIN_GAP_DAYS = (("annual", 365), ("quarterly", 89), ("monthly", 28), ("weekly", 7))
_UNKNOWN_CODES = ("QECx02",)
# Columns that, beside the ticker and the date, tell a datatable's rows apart in the tables we know: Sharadar's
# dimension (ARQ, ART, MRQ, MRY: one row each per ticker and date), Zacks' per_type (A, Q).
DEFAULT_KEY_COLUMNS = ("dimension", "per_type")


class NdlUnexpected(SourceError):
    """A Nasdaq Data Link payload of a shape nothing here can read; `cause` leaves the code out."""

    def __init__(self, cause: str, what: str = "") -> None:
        super().__init__(f"unexpected Nasdaq Data Link payload{f' for {what}' if what else ''}: {cause}",
                         retriable=False)
        self.cause = cause


def is_unknown_code(exc: BaseException) -> bool:
    """The provider's "you have submitted an incorrect code" (QECx02), in an error body or a 404's snippet."""
    text = str(exc)
    return any(c in text for c in _UNKNOWN_CODES) or "incorrect Quandl code" in text


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
    economic: bool = False,
    value_interval: str | None = None,
    key_columns: Sequence[str] = (),
) -> list[MarketDataPoint]:
    """Rows of a dataset or datatable -> bar or economic points, by the column names. `economic` forces
    economic points (transformed or collapsed series), whose interval is then `value_interval`. `key_columns`:
    the columns that, beside the symbol and the date, tell rows apart; their values join item_id
    ("SHARADAR/SF1|dimension=ARQ")."""
    names = [normalise(c) for c in columns]
    di = _date_index(names, types)
    sym_i = next((names.index(n) for n in _SYMBOL_NAMES if n in names), None)
    wanted = {normalise(k) for k in key_columns}
    key_i = [i for i, n in enumerate(names) if n in wanted and i not in (di, sym_i)]
    fields = {i: _FIELD_NAMES[n] for i, n in enumerate(names) if n in _FIELD_NAMES and i != di}
    # "settle" is the close of a futures table, unless there is a real close too.
    if "close" in names and "settle" in names:
        fields.pop(names.index("settle"))
    is_bar = not economic and {"open", "high", "low", "close"} <= set(fields.values())
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
        row_id = "|".join([item_id, *(f"{columns[i]}={row[i]}" for i in key_i)]) if key_i else item_id
        out.append(MarketDataPoint(
            symbol=row_symbol, timestamp=ts, source=source,
            data_type=DataType.BAR if is_bar else DataType.ECONOMIC,
            interval=interval if is_bar else value_interval, item_id=row_id, metadata=meta, **typed,
        ))
    if rows and not out:
        raise NdlUnexpected(f"none of {len(rows)} rows has a date and values", item_id)
    if skipped:
        logger.info("nasdaq_data_link: %s: skipped %d rows without a date or OHLC", item_id, skipped)
    return out


def _check_error(doc: Any, what: str) -> None:
    if isinstance(doc, dict) and isinstance(doc.get("quandl_error"), dict):
        err = doc["quandl_error"]
        raise SourceError(f"Nasdaq Data Link error for {what}: {str(err.get('code'))[:20]} "
                          f"{str(err.get('message'))[:300]}", retriable=False)


def spacing_frequency(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str | None:
    """The frequency the rows' dates are spaced at, from the shortest gap between two of them (a missing period
    only widens other gaps); None with fewer than three dates, whose gaps could all be such holes."""
    di = _date_index([normalise(c) for c in columns])
    days: set[date] = set()
    for row in rows:
        try:
            days.add(parse_date(row[di]).date())
        except (TypeError, ValueError, IndexError):
            continue
    ordered = sorted(days)
    if len(ordered) < 3:
        return None
    gap = min((b - a).days for a, b in pairwise(ordered))
    return next((name for name, least in _MIN_GAP_DAYS if gap >= least), "daily")


def _coarser(a: str, b: str | None) -> str:
    """The coarser of two Quandl frequencies; an unknown `b` does not count."""
    if b not in _COARSENESS or a not in _COARSENESS:
        return a
    return max(a, b, key=_COARSENESS.index)


def series_points(columns: Sequence[str], rows: Sequence[Sequence[Any]], dataset: str, *,
                  frequency: str | None = None, transform: str | None = None, collapse: str | None = None,
                  source: str = SOURCE) -> list[MarketDataPoint]:
    """A dataset's rows -> points, recording a transform or collapse (then economic points, see the module)."""
    symbol = dataset.split("/")[-1].upper()
    t = None if transform in (None, "", "none") else str(transform)[:16]
    c = None if collapse in (None, "", "none") else str(collapse)[:16]
    freq = str(c or frequency or "daily")
    if c:
        # Collapsing never makes a series finer than it is (an annual dataset collapsed monthly is still one row
        # a year): the interval is the coarser of the collapse and the dataset's frequency, from the answer
        # (JSON) or else the rows' spacing (CSV says nothing).
        freq = _coarser(freq, str(frequency) if frequency else spacing_frequency(columns, rows))
    period = _FREQUENCIES.get(freq, freq[:16])
    if not t and not c:
        return parse_table(columns, rows, symbol=symbol, item_id=dataset.upper(), source=source, interval=period)
    extra = {k: v for k, v in (("transform", t), ("collapse", c)) if v}
    # item_id keeps the collapse as asked, not the effective period: it names the query (what a re-run asks
    # again), so points already stored keep their key and are not duplicated under a new one.
    item_id = "|".join([dataset.upper(), *(f"{k}={v}" for k, v in extra.items())])
    return parse_table(columns, rows, symbol=symbol, item_id=item_id, source=source, extra_meta=extra,
                       economic=True, value_interval=f"{period}:{t}"[:16] if t else period)


def parse_dataset(doc: Any, dataset: str, *, transform: str | None = None, collapse: str | None = None,
                  source: str = SOURCE) -> list[MarketDataPoint]:
    """/datasets/{db}/{code}/data.json -> points; the symbol is the code. The answer's own transform and
    collapse (dataset_data.transform/collapse) win over the requested ones."""
    _check_error(doc, dataset)
    if not isinstance(doc, dict) or not isinstance(doc.get("dataset_data"), dict):
        raise NdlUnexpected("no dataset_data object", dataset)
    dd = doc["dataset_data"]
    columns, data = dd.get("column_names") or [], dd.get("data") or []
    if not isinstance(columns, list) or not isinstance(data, list) or (data and not columns):
        raise NdlUnexpected("dataset_data without column_names or data arrays", dataset)
    return series_points(columns, data, dataset, frequency=dd.get("frequency"),
                         transform=dd.get("transform") or transform, collapse=dd.get("collapse") or collapse,
                         source=source)


def _cell(text: str) -> Any:
    """A CSV cell: "" -> None, a number -> float, anything else stays text."""
    text = text.strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def parse_csv(text: str, dataset: str, *, transform: str | None = None, collapse: str | None = None,
              source: str = SOURCE) -> list[MarketDataPoint]:
    """A dataset as CSV (v3 data.csv or legacy v1 .csv): a header line, then one row per date."""
    lines = [row for row in csv.reader(io.StringIO(text.lstrip("\ufeff"))) if row and any(c.strip() for c in row)]
    if not lines or len(lines[0]) < 2 or any(not c.strip() for c in lines[0]):
        raise NdlUnexpected("CSV without a header of at least two named columns", dataset)
    header = [c.strip() for c in lines[0]]
    rows = [[_cell(c) for c in row] for row in lines[1:]]
    return series_points(header, rows, dataset, transform=transform, collapse=collapse, source=source)


def parse_body(body: str, dataset: str, *, transform: str | None = None, collapse: str | None = None,
               source: str = SOURCE) -> list[MarketDataPoint]:
    """A dataset body of either kind: JSON when it starts with { or [, else CSV."""
    head = body.lstrip("\ufeff \t\r\n")[:1]
    if head in ("{", "["):
        try:
            doc = orjson.loads(body.encode())
        except orjson.JSONDecodeError:
            raise NdlUnexpected("body starts like JSON but does not parse", dataset) from None
        return parse_dataset(doc, dataset, transform=transform, collapse=collapse, source=source)
    return parse_csv(body, dataset, transform=transform, collapse=collapse, source=source)


def parse_datatable(doc: Any, code: str, *, source: str = SOURCE,
                    key_columns: Sequence[str] = DEFAULT_KEY_COLUMNS) -> tuple[list[MarketDataPoint], str | None]:
    """/datatables/{code}.json -> (points, next_cursor_id). Rows that share a symbol and a date are told apart
    by `key_columns` (parse_table)."""
    _check_error(doc, code)
    if not isinstance(doc, dict) or not isinstance(doc.get("datatable"), dict):
        raise NdlUnexpected("no datatable object", code)
    dt = doc["datatable"]
    cols = dt.get("columns") or []
    if not isinstance(cols, list) or not all(isinstance(c, dict) for c in cols) or not isinstance(
            dt.get("data") or [], list):
        raise NdlUnexpected("datatable without a columns array of objects or a data array", code)
    names = [str(c.get("name", "")) for c in cols]
    types = [str(c.get("type", "")) for c in cols]
    points = parse_table(names, dt.get("data") or [], symbol=code.split("/")[-1].upper(), item_id=code.upper(),
                         types=types, source=source, key_columns=key_columns)
    cursor = (doc.get("meta") or {}).get("next_cursor_id")
    return points, cursor or None


# ---------------------------------------------------------------------------------------------- source


class NasdaqDataLinkSource(PollingSource):
    """Polls the configured datasets (over a lookback window) and datatables (all pages) once per interval.
    Unknown codes and unexpected payloads are logged once and counted (`unknown`, `unexpected`)."""

    name = SOURCE

    def __init__(self, settings: NasdaqDataLinkSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        key = api_key or settings.api_key(env)
        if key is None:
            raise ConfigError(f"the nasdaq_data_link source needs {' or '.join(settings.key_env)} in the environment")
        self.settings = settings
        self.api_key = key
        self.base_url = settings.base_url.rstrip("/")
        self.limiter = RateLimiter.of(settings)
        self.queries: list[DatasetQuery] = [DatasetQuery(code=c) for c in settings.datasets]
        self.queries += settings.dataset_queries
        self.unknown: Counter[str] = Counter()  # per dataset/datatable code: "incorrect code" answers
        self.unexpected: Counter[str] = Counter()  # per kind (dataset, datatable): unreadable payloads
        self.collisions: Counter[str] = Counter()  # per datatable code: pages with rows sharing a natural key
        self._warned: set[str] = set()
        # Per datatable query (code, params): the cursor of the first page not read yet, and its page number.
        self._cursors: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, int]] = {}

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    async def _get_text(self, session: aiohttp.ClientSession, path: str, params: Mapping[str, Any]) -> str:
        s = self.settings
        try:
            return await get_text(
                session, f"{self.base_url}{path}", params={**params, "api_key": self.api_key.get_secret_value()},
                secrets=[self.api_key], limiter=self.limiter, **http_options(s),
            )
        except SourceError as exc:
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None

    async def dataset(self, session: aiohttp.ClientSession, dataset: str | DatasetQuery, *,
                      start: date | None = None, end: date | None = None) -> list[MarketDataPoint]:
        q = dataset if isinstance(dataset, DatasetQuery) else DatasetQuery(code=dataset)
        db, _, code = q.code.partition("/")
        if not db or not code:
            raise SourceError(f"dataset {q.code!r} is not DB/CODE")
        params = {"order": "asc"}
        if start:
            params["start_date"] = start.isoformat()
        if end:
            params["end_date"] = end.isoformat()
        if q.transform != "none":
            params["transform"] = q.transform
        if q.collapse != "none":
            params["collapse"] = q.collapse
        body = await self._get_text(session, f"/api/v3/datasets/{db}/{code}/data.{q.format}", params)
        try:
            return parse_body(body, q.code, transform=q.transform, collapse=q.collapse)
        except NdlUnexpected:
            raise
        except SourceError as exc:  # an error body may echo the request URL, key and all
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None

    @staticmethod
    def _table_key(query: DatatableQuery) -> tuple[str, tuple[tuple[str, str], ...]]:
        return query.code.upper(), tuple(sorted(query.params.items()))

    async def datatable(self, session: aiohttp.ClientSession, query: DatatableQuery) -> list[MarketDataPoint]:
        """Up to max_pages pages of a datatable. A listing longer than that continues at the next call from the
        cursor where this one stopped (kept per code and params), so no page is skipped; once the last page is
        read, the next call starts again at the first. A failure raises and keeps the cursor this call started
        from (a retriable one) or drops it (a refused one: an expired cursor must not block the table forever)."""
        key = self._table_key(query)
        saved = self._cursors.get(key)
        cursor: str | None = saved[0] if saved else None
        page = saved[1] if saved else 1
        out: list[MarketDataPoint] = []
        try:
            for _ in range(self.settings.max_pages):
                points, cursor = await self._table_page(session, query, cursor)
                out.extend(points)
                if not cursor:
                    self._cursors.pop(key, None)
                    return out
                page += 1
        except SourceError as exc:
            if saved and not exc.retriable and self._cursors.pop(key, None) is not None:
                logger.warning("nasdaq_data_link: %s failed when continuing from page %d (%s); the next poll "
                               "starts again at page 1", query.code, saved[1], type(exc).__name__)
            raise
        assert cursor is not None  # the loop returned otherwise
        self._cursors[key] = (cursor, page)
        logger.warning("nasdaq_data_link: %s has more than max_pages=%d pages per poll; the next poll continues "
                       "at page %d", query.code, self.settings.max_pages, page)
        return out

    async def _table_page(self, session: aiohttp.ClientSession, query: DatatableQuery,
                          cursor: str | None) -> tuple[list[MarketDataPoint], str | None]:
        """One datatable page: its points and the cursor of the next page (None after the last)."""
        params = dict(query.params)
        if cursor:
            params["qopts.cursor_id"] = cursor
        body = await self._get_text(session, f"/api/v3/datatables/{query.code}.json", params)
        try:
            doc = orjson.loads(body.encode())
        except orjson.JSONDecodeError:
            raise NdlUnexpected("datatable body is not JSON", query.code) from None
        try:
            keys = DEFAULT_KEY_COLUMNS if query.key_columns is None else query.key_columns
            points, cursor = parse_datatable(doc, query.code, key_columns=keys)
        except NdlUnexpected:
            raise
        except SourceError as exc:
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None
        seen: dict[tuple[Any, ...], MarketDataPoint] = {}
        for p in points:
            other = seen.setdefault(p.natural_key(), p)
            if other is not p:  # the sink would keep one of them: say which columns would tell them apart
                differ = sorted(k for k in {*p.metadata, *other.metadata} if p.metadata.get(k) != other.metadata.get(k)
                                and isinstance(p.metadata.get(k, other.metadata.get(k)), str))  # labels, not values
                self._warn_once(f"collide|{query.code}", "nasdaq_data_link: %s has rows with the same symbol, date and "
                                "key columns (%s at %s): the sink keeps one of each; set this datatable's key_columns "
                                "to the columns that tell them apart (these differ: %s)", query.code, p.symbol,
                                p.timestamp.date(), ", ".join(differ[:8]) or "none")
                self.collisions[query.code.upper()] += 1
                break
        return points, cursor

    def _failed(self, kind: str, code: str, exc: Exception) -> None:
        """A failed call, logged and reported to the round's count (an unknown code: answered, not a failure)."""
        text = self.redact(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, NdlUnexpected):
            self.unexpected[kind] += 1
            self._warn_once(f"{kind}|{exc.cause}", "nasdaq_data_link: %s %s failed: unexpected payload (counted in "
                            "unexpected[%r], not warned again for this cause): %s", kind, code, kind, text)
            self.call_failed(exc)
        elif is_unknown_code(exc):
            self.unknown[code] += 1
            self._warn_once(f"unknown|{code}", "nasdaq_data_link: %s %s failed: unknown code (counted in "
                            "unknown[%r], not warned again): %s", kind, code, code, text)
            self.call_succeeded()  # the provider answered and explained: it works
        else:
            logger.warning("nasdaq_data_link: %s %s failed: %s", kind, code, text)
            self.call_failed(exc)

    async def poll_once(self, session: aiohttp.ClientSession, today: date | None = None) -> list[MarketDataPoint]:
        today = today or datetime.now(UTC).date()
        start = today - timedelta(days=self.settings.lookback_days)
        out: list[MarketDataPoint] = []
        for query in self.queries:
            try:
                out.extend(await self.dataset(session, query, start=start))
                self.call_succeeded()
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                self._failed("dataset", query.code, exc)
        for table in self.settings.datatables:
            try:
                out.extend(await self.datatable(session, table))
                self.call_succeeded()
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                self._failed("datatable", table.code, exc)
        return out
