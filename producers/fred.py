"""FRED (St. Louis Fed): series observations for configured series ids, with the series' metadata, written to
raw.fred with source "fred" and data_type "economic".

- GET {base_url}/fred/series/observations?series_id=..&api_key=..&file_type=json. The key is in the
  query string: every URL and message is redacted (http.redact with the key) before it is logged or
  raised.
- Series metadata: GET /fred/series once per series per poll cycle. Its title, units, frequency, seasonal
  adjustment and last_updated (and their short forms) go into every observation's metadata, so a value is
  never read without its units. The last_updated seen at the last successful observations request is
  cached: while it has not moved, FRED has published nothing new and the observations request is skipped.
  A failing metadata call is logged once per cause and counted; the observations are still fetched.
- Vintages: with `vintages` on (the default) the request asks for every real-time period
  (realtime_start=1776-07-04, realtime_end=9999-12-31), so each row carries the true first date of
  its vintage. item_id = realtime_start, so a revision is a new row, the superseded one gets its
  realtime_end on the next poll, and re-polling maps onto the same natural keys. Without it, FRED
  answers with today's vintage, and item_id is today's date. `realtime_start`/`realtime_end` settings
  narrow (or, without `vintages`, set) the real-time period. FRED refuses a period of more than 2,000
  vintage dates (daily series: DFF, DGS10): such a series is asked in spans of the period FRED accepts,
  remembered, and a vintage a span boundary cut is joined again (join_vintages).
- output_type (FRED's own parameter): 1 observations by real-time period (the default, sent only when not
  1), 2 by vintage date with all observations, 3 by vintage date with new and revised observations only,
  4 initial release only. Rows in the real-time-period shape (date, realtime_start, realtime_end, value)
  are read as above; rows in the by-vintage shape ({"date": .., "GDP_20240730": "..", ...}) give one point
  per vintage column with a value, realtime_start = the vintage date (item_id too), realtime_end None.
  metadata["output_type"] records a non-default output type.
- FRED writes "." for a missing value: it stays value=None (validation flags it value.missing),
  never 0 and never dropped, so the gap is visible (in the by-vintage shape "." means "not in this
  vintage" and is skipped).
- Timestamps: the observation date (period start) at UTC midnight.
- A series FRED does not know ("The series does not exist.") is logged once and counted in
  `FredSource.unknown[series]`; payloads of a shape nothing here reads (FredUnexpected) once per endpoint
  and cause, counted in `FredSource.unexpected[endpoint]`.
- Free tier: 120 requests/minute. Each poll asks for the last `lookback_days` of observations and
  yields only rows that are new or changed since the previous poll.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
from pydantic import SecretStr

from producers.base import PollingSource, SeenIds
from producers.http import RateLimiter, get_json, http_options, redact
from streams.config import FredSettings
from streams.errors import ConfigError, SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "fred"
ALL_REALTIME = {"realtime_start": "1776-07-04", "realtime_end": "9999-12-31"}
SERIES_FIELDS = ("title", "units", "units_short", "frequency", "frequency_short", "seasonal_adjustment",
                 "seasonal_adjustment_short", "last_updated")
_VINTAGE_KEY = re.compile(r"^(?P<series>.+)_(?P<day>\d{8})$")


class FredUnexpected(SourceError):
    """A FRED payload of a shape nothing here can read; `cause` leaves the series out (warned once per cause)."""

    def __init__(self, cause: str, series_id: str = "") -> None:
        super().__init__(f"unexpected FRED payload{f' for {series_id}' if series_id else ''}: {cause}",
                         retriable=False)
        self.cause = cause


# ---------------------------------------------------------------------------------------------- parsing


def _value(text: Any) -> float | None:
    """FRED's "." (and an empty string) is a missing value, not zero."""
    if text is None:
        return None
    s = str(text).strip()
    if s in ("", "."):
        return None
    return float(s)


def _check_error(doc: Any, series_id: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise FredUnexpected(f"a {type(doc).__name__}, not an object", series_id)
    if doc.get("error_message") or doc.get("error_code"):
        raise SourceError(f"FRED error for {series_id}: {str(doc.get('error_message'))[:300]}", retriable=False)
    return doc


def _iso_utc(text: str) -> str:
    """FRED's "2024-10-30 07:54:01-05" -> "2024-10-30T12:54:01+00:00" (unparsable text is kept as it is)."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        return text
    return (dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)).isoformat()


def parse_series(doc: Any, series_id: str) -> dict[str, Any]:
    """/fred/series -> the metadata attached to observations (title, units, frequency, seasonal adjustment,
    last_updated in UTC ISO form, plus FRED's short forms)."""
    d = _check_error(doc, series_id)
    seriess = d.get("seriess")
    if not isinstance(seriess, list) or not seriess or not isinstance(seriess[0], dict):
        raise FredUnexpected("series payload without seriess[0]", series_id)
    info = seriess[0]
    if not info.get("last_updated") or not info.get("units"):
        raise FredUnexpected("series without units or last_updated", series_id)
    meta = {k: str(info[k]) for k in SERIES_FIELDS if info.get(k) not in (None, "")}
    meta["last_updated"] = _iso_utc(meta["last_updated"])
    return meta


def parse_observations(doc: Any, series_id: str, *, metadata: Mapping[str, Any] | None = None,
                       source: str = SOURCE) -> list[MarketDataPoint]:
    """/fred/series/observations -> economic points, one per observation and vintage (either row shape)."""
    d = _check_error(doc, series_id)
    observations = d.get("observations")
    if not isinstance(observations, list):
        raise FredUnexpected("no observations array", series_id)
    sym = series_id.upper()
    meta = dict(metadata or {})
    output_type = d.get("output_type")
    if output_type not in (None, 1, "1"):
        meta["output_type"] = int(output_type)
    out: list[MarketDataPoint] = []
    skipped = 0
    for obs in observations:
        try:
            d_ = date.fromisoformat(str(obs["date"]))
            ts = datetime(d_.year, d_.month, d_.day, tzinfo=UTC)
            if "realtime_start" in obs or "value" in obs:
                start = date.fromisoformat(str(obs["realtime_start"]))
                end = date.fromisoformat(str(obs["realtime_end"]))
                out.append(MarketDataPoint(
                    symbol=sym, timestamp=ts, source=source, data_type=DataType.ECONOMIC,
                    value=_value(obs.get("value")), realtime_start=start, realtime_end=end,
                    item_id=start.isoformat(), metadata=dict(meta),
                ))
                continue
            vintages = [(m, v) for k, v in obs.items() if (m := _VINTAGE_KEY.match(k))]
            if not vintages:
                raise KeyError("no value and no vintage columns")
            for m, v in vintages:
                value = _value(v)
                if value is None:
                    continue  # not published in this vintage
                day = m["day"]
                vintage = date(int(day[:4]), int(day[4:6]), int(day[6:]))
                out.append(MarketDataPoint(
                    symbol=sym, timestamp=ts, source=source, data_type=DataType.ECONOMIC, value=value,
                    realtime_start=vintage, item_id=vintage.isoformat(), metadata=dict(meta),
                ))
        except (KeyError, TypeError, ValueError, AttributeError):
            skipped += 1
            continue
    if skipped and not out:
        raise FredUnexpected(f"none of {skipped} observations could be read", series_id)
    if skipped:
        logger.info("fred: %s: skipped %d malformed observations", sym, skipped)
    return out


def is_unknown_series(exc: BaseException) -> bool:
    return isinstance(exc, SourceError) and "does not exist" in str(exc)


def too_many_vintages(exc: BaseException) -> bool:
    """FRED's 400 for a real-time period of more than 2,000 vintage dates."""
    return isinstance(exc, SourceError) and "maximum number of vintage dates" in str(exc)


def join_vintages(points: list[MarketDataPoint]) -> list[MarketDataPoint]:
    """Rows of spans of the real-time period: a vintage that ran across a span boundary comes back as two rows of
    one value, the first ending the day before the second starts; joined into one, as FRED gives it. Rows of the
    by-vintage shape (no realtime_end) are each one vintage: only repeats are dropped."""
    out: dict[tuple[datetime, str], MarketDataPoint] = {}
    last: dict[datetime, MarketDataPoint] = {}
    for p in sorted(points, key=lambda p: (p.timestamp, p.realtime_start or date.min)):
        prev = last.get(p.timestamp)
        if (prev is not None and prev.realtime_end is not None and p.realtime_start is not None
                and prev.realtime_end + timedelta(days=1) == p.realtime_start and prev.value == p.value):
            joined = prev.model_copy(update={"realtime_end": p.realtime_end})
            out[(prev.timestamp, prev.item_id)] = last[p.timestamp] = joined
            continue
        out.setdefault((p.timestamp, p.item_id), p)
        last[p.timestamp] = p
    return list(out.values())


# ---------------------------------------------------------------------------------------------- source


class FredSource(PollingSource):
    """Polls every configured series once per interval; `history` loads a date range for backfills."""

    name = SOURCE

    def __init__(self, settings: FredSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        key = api_key or settings.api_key(env)
        if key is None:
            raise ConfigError(f"the fred source needs {' or '.join(settings.key_env)} in the environment")
        self.settings = settings
        self.api_key = key
        self.base_url = settings.base_url.rstrip("/")
        self.limiter = RateLimiter.of(settings)
        self.seen = SeenIds(maxlen=100_000)
        self.series_meta: dict[str, dict[str, Any]] = {}  # per series: the last /fred/series answer
        self._fetched_updated: dict[str, str] = {}  # per series: last_updated at the last observations fetch
        self._spans: dict[str, list[tuple[date, date]]] = {}  # per series: the real-time spans FRED accepts
        self.unknown: Counter[str] = Counter()  # per series: "The series does not exist."
        self.unexpected: Counter[str] = Counter()  # per endpoint ("series", "observations"): unreadable payloads
        self._warned: set[str] = set()

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    async def _get(self, session: aiohttp.ClientSession, path: str, params: dict[str, Any]) -> Any:
        s = self.settings
        params = {**params, "file_type": "json", "api_key": self.api_key.get_secret_value()}
        try:
            return await get_json(session, f"{self.base_url}{path}", params=params,
                                  secrets=[self.api_key], limiter=self.limiter, **http_options(s))
        except SourceError as exc:
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None

    def realtime_params(self) -> dict[str, str]:
        """The real-time period and output type sent with every observations request."""
        s = self.settings
        params: dict[str, str] = dict(ALL_REALTIME) if s.vintages else {}
        if s.realtime_start:
            params["realtime_start"] = s.realtime_start.isoformat()
        if s.realtime_end:
            params["realtime_end"] = s.realtime_end.isoformat()
        if s.output_type != 1:
            params["output_type"] = str(s.output_type)
        return params

    async def series_info(self, session: aiohttp.ClientSession, series_id: str) -> dict[str, Any]:
        """/fred/series for one series (title, units, frequency, seasonal adjustment, last_updated); cached."""
        sid = series_id.upper()
        meta = parse_series(await self._get(session, "/fred/series", {"series_id": sid}), sid)
        self.series_meta[sid] = meta
        return meta

    async def observations(self, session: aiohttp.ClientSession, series_id: str, *, start: date | None = None,
                           end: date | None = None, metadata: Mapping[str, Any] | None = None
                           ) -> list[MarketDataPoint]:
        """Observations dated start..end of every vintage in the real-time period (realtime_params). FRED refuses
        a period holding more than 2,000 vintage dates (a daily series such as DFF or DGS10 over 1776..9999):
        the period is then asked in spans it accepts (remembered per series), and a vintage a span boundary cut
        in two is joined again."""
        sid = series_id.upper()
        params: dict[str, Any] = {"series_id": sid, **self.realtime_params()}
        if start:
            params["observation_start"] = start.isoformat()
        if end:
            params["observation_end"] = end.isoformat()
        spans = self._spans.get(sid)
        if spans is None:
            try:
                return parse_observations(await self._get(session, "/fred/series/observations", params), sid,
                                          metadata=metadata)
            except SourceError as exc:
                if not too_many_vintages(exc) or "realtime_start" not in params:
                    raise
            first = date.fromisoformat(params["realtime_start"])
            last = date.fromisoformat(params.get("realtime_end") or datetime.now(UTC).date().isoformat())
            recent = max(first, min(last, datetime.now(UTC).date()) - timedelta(days=5 * 365))
            spans = [(first, recent - timedelta(days=1)), (recent, last)] if recent > first else [(first, last)]
        points: list[MarketDataPoint] = []
        done: list[tuple[date, date]] = []
        while spans:
            a, b = spans.pop(0)
            try:
                doc = await self._get(session, "/fred/series/observations",
                                      {**params, "realtime_start": a.isoformat(), "realtime_end": b.isoformat()})
            except SourceError as exc:
                upper = min(b, datetime.now(UTC).date())
                if not too_many_vintages(exc) or upper - a < timedelta(days=2):
                    raise
                # Vintages crowd the recent years (a daily series' began in the 2000s): the newest five years
                # apart, then halves; a midpoint of 1776..today left spans of none, each a call at every poll.
                mid = upper - timedelta(days=5 * 365)
                if not a < mid < upper:
                    mid = a + (upper - a) / 2
                spans[:0] = [(a, mid), (mid + timedelta(days=1), b)]
                continue
            points.extend(parse_observations(doc, sid, metadata=metadata))
            done.append((a, b))
        self._spans[sid] = done
        return join_vintages(points)

    async def _metadata(self, session: aiohttp.ClientSession, series_id: str) -> dict[str, Any] | None:
        """This cycle's metadata, or None (logged once per cause, counted) when /fred/series fails."""
        sid = series_id.upper()
        if not self.settings.series_metadata:
            return None
        try:
            return await self.series_info(session, sid)
        except FredUnexpected as exc:
            self.unexpected["series"] += 1
            self._warn_once(f"series|{exc.cause}", "fred: unexpected /fred/series payload for %s (counted in "
                            "unexpected['series'], not warned again for this cause): %s", sid, self.redact(str(exc)))
        except SourceError as exc:
            if is_unknown_series(exc):
                raise
            self._warn_once(f"series-failed|{sid}", "fred: metadata of %s failed (observations are still fetched, "
                            "without it; not warned again): %s", sid, self.redact(str(exc)))
        return None

    async def history(self, session: aiohttp.ClientSession, series_id: str, start: date,
                      end: date) -> list[MarketDataPoint]:
        """Observations dated start..end (inclusive), every vintage if `vintages` is on, with the metadata."""
        sid = series_id.upper()
        meta = self.series_meta.get(sid)
        if meta is None:
            try:
                meta = await self._metadata(session, sid)
            except SourceError:
                meta = None  # the observations call says what is wrong
        return await self.observations(session, series_id, start=start, end=end, metadata=meta)

    async def _poll_series(self, session: aiohttp.ClientSession, sid: str, start: date) -> list[MarketDataPoint]:
        meta = await self._metadata(session, sid)
        updated = meta.get("last_updated") if meta else None
        if updated is not None and self._fetched_updated.get(sid) == updated:
            logger.debug("fred: %s unchanged since %s, observations not asked again", sid, updated)
            return []
        points = await self.observations(session, sid, start=start, metadata=meta)
        if updated is not None:
            self._fetched_updated[sid] = updated
        return points

    async def poll_once(self, session: aiohttp.ClientSession, today: date | None = None) -> list[MarketDataPoint]:
        """New or changed rows of every series; a failing series is logged and skipped."""
        today = today or datetime.now(UTC).date()
        start = today - timedelta(days=self.settings.lookback_days)
        out: list[MarketDataPoint] = []
        for series_id in dict.fromkeys(s.upper() for s in self.settings.series):
            try:
                points = await self._poll_series(session, series_id, start)
            except FredUnexpected as exc:
                self.unexpected["observations"] += 1
                self._warn_once(f"observations|{exc.cause}", "fred: %s failed: unexpected observations payload "
                                "(counted in unexpected['observations'], not warned again for this cause): %s",
                                series_id, self.redact(str(exc)))
                self.call_failed(exc)
                continue
            except SourceError as exc:
                if is_unknown_series(exc):
                    self.unknown[series_id] += 1
                    self._warn_once(f"unknown|{series_id}", "fred: %s failed: FRED does not know this series "
                                    "(counted in unknown[%r], not warned again): %s", series_id, series_id,
                                    self.redact(str(exc)))
                    self.call_succeeded()  # FRED answered and explained: the provider works
                else:
                    logger.warning("fred: %s failed: %s", series_id, self.redact(f"{type(exc).__name__}: {exc}"))
                    self.call_failed(exc)
                continue
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning("fred: %s failed: %s", series_id, self.redact(f"{type(exc).__name__}: {exc}"))
                self.call_failed(exc)
                continue
            self.call_succeeded()  # new rows, none, or unchanged since last_updated: answered
            out.extend(p for p in points
                       if self.seen.add(f"{p.symbol}|{p.timestamp.date()}|{p.item_id}|{p.realtime_end}|{p.value}"))
        return out
