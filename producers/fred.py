"""FRED (St. Louis Fed): series observations for configured series ids, written to raw.fred with source
"fred" and data_type "economic".

- GET {base_url}/fred/series/observations?series_id=..&api_key=..&file_type=json. The key is in the
  query string: every URL and message is redacted (http.redact with the key) before it is logged or
  raised.
- Vintages: with `vintages` on (the default) the request asks for every real-time period
  (realtime_start=1776-07-04, realtime_end=9999-12-31), so each row carries the true first date of
  its vintage. item_id = realtime_start, so a revision is a new row, the superseded one gets its
  realtime_end on the next poll, and re-polling maps onto the same natural keys. Without it, FRED
  answers with today's vintage, and item_id is today's date.
- FRED writes "." for a missing value: it stays value=None (validation flags it value.missing),
  never 0 and never dropped, so the gap is visible.
- Timestamps: the observation date (period start) at UTC midnight.
- Free tier: 120 requests/minute. Each poll asks for the last `lookback_days` of observations and
  yields only rows that are new or changed since the previous poll.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

import aiohttp
from pydantic import SecretStr

from producers.base import PollingSource, SeenIds
from producers.http import RateLimiter, get_json, redact
from streams.config import FredSettings
from streams.errors import ConfigError, SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "fred"
ALL_REALTIME = {"realtime_start": "1776-07-04", "realtime_end": "9999-12-31"}


# ---------------------------------------------------------------------------------------------- parsing


def _value(text: Any) -> float | None:
    """FRED's "." (and an empty string) is a missing value, not zero."""
    if text is None:
        return None
    s = str(text).strip()
    if s in ("", "."):
        return None
    return float(s)


def parse_observations(doc: Any, series_id: str, *, source: str = SOURCE) -> list[MarketDataPoint]:
    """/fred/series/observations -> economic points, one per observation and vintage."""
    if not isinstance(doc, dict):
        raise SourceError(f"unexpected FRED payload for {series_id}: {type(doc).__name__}")
    if doc.get("error_message") or doc.get("error_code"):
        raise SourceError(f"FRED error for {series_id}: {str(doc.get('error_message'))[:300]}", retriable=False)
    observations = doc.get("observations")
    if not isinstance(observations, list):
        raise SourceError(f"FRED payload for {series_id} has no observations")
    sym = series_id.upper()
    out: list[MarketDataPoint] = []
    skipped = 0
    for obs in observations:
        try:
            d = date.fromisoformat(str(obs["date"]))
            start = date.fromisoformat(str(obs["realtime_start"]))
            end = date.fromisoformat(str(obs["realtime_end"]))
            value = _value(obs.get("value"))
        except (KeyError, TypeError, ValueError):
            skipped += 1
            continue
        out.append(MarketDataPoint(
            symbol=sym, timestamp=datetime(d.year, d.month, d.day, tzinfo=UTC), source=source,
            data_type=DataType.ECONOMIC, value=value, realtime_start=start, realtime_end=end,
            item_id=start.isoformat(),
        ))
    if skipped:
        logger.info("fred: %s: skipped %d malformed observations", sym, skipped)
    return out


# ---------------------------------------------------------------------------------------------- source


class FredSource(PollingSource):
    """Polls every configured series once per interval; `history` loads a date range for backfills."""

    name = SOURCE

    def __init__(self, settings: FredSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        key = api_key or settings.api_key(env)
        if key is None:
            raise ConfigError("the fred source needs FRED_API_KEY in the environment")
        self.settings = settings
        self.api_key = key
        self.base_url = settings.base_url.rstrip("/")
        self.limiter = RateLimiter(settings.rate_limit_calls, settings.rate_limit_per_seconds)
        self.seen = SeenIds(maxlen=100_000)

    def redact(self, text: str) -> str:
        return redact(text, [self.api_key])

    async def observations(self, session: aiohttp.ClientSession, series_id: str, *, start: date | None = None,
                           end: date | None = None) -> list[MarketDataPoint]:
        s = self.settings
        params: dict[str, Any] = {"series_id": series_id.upper(), "file_type": "json",
                                  "api_key": self.api_key.get_secret_value()}
        if s.vintages:
            params.update(ALL_REALTIME)
        if start:
            params["observation_start"] = start.isoformat()
        if end:
            params["observation_end"] = end.isoformat()
        try:
            doc = await get_json(session, f"{self.base_url}/fred/series/observations", params=params,
                                 secrets=[self.api_key], limiter=self.limiter, attempts=s.retry_attempts,
                                 base_delay=s.retry_base_delay, timeout=s.request_timeout_seconds,
                                 max_bytes=s.max_response_bytes, max_retry_after=s.max_retry_after_seconds)
            return parse_observations(doc, series_id)
        except SourceError as exc:
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None

    async def history(self, session: aiohttp.ClientSession, series_id: str, start: date,
                      end: date) -> list[MarketDataPoint]:
        """Observations dated start..end (inclusive), every vintage if `vintages` is on."""
        return await self.observations(session, series_id, start=start, end=end)

    async def poll_once(self, session: aiohttp.ClientSession, today: date | None = None) -> list[MarketDataPoint]:
        """New or changed rows of every series; a failing series is logged and skipped."""
        today = today or datetime.now(UTC).date()
        start = today - timedelta(days=self.settings.lookback_days)
        out: list[MarketDataPoint] = []
        for series_id in self.settings.series:
            try:
                points = await self.observations(session, series_id, start=start)
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                logger.warning("fred: %s failed: %s", series_id, self.redact(f"{type(exc).__name__}: {exc}"))
                continue
            out.extend(p for p in points
                       if self.seen.add(f"{p.symbol}|{p.timestamp.date()}|{p.item_id}|{p.realtime_end}|{p.value}"))
        return out

