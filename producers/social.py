"""Social media: X (Twitter) API v2 recent search for cashtags, written to raw.social as social items
with source "social".

- GET {base_url}/2/tweets/search/recent?query=$AAPL -is:retweet ... with Authorization: Bearer
  <TWITTER_BEARER_TOKEN>; tweet.fields=created_at,public_metrics,lang,author_id; pages via
  meta.next_token; since_id (the newest id seen per symbol) kept between polls, so a poll only asks for
  what is new. The first poll reads one page (the recent-search window is 7 days; a backfill is not
  what a live poll should spend the quota on).
- X gives no sentiment: each post is scored with producers.sentiment.lexicon_sentiment ("finance_lexicon_v1",
  documented there) and metadata["sentiment_method"] says so.
- A post without created_at (the field was not requested) is stamped from its snowflake id.
- Rate limits: X's tiers differ (Free: 1 recent-search request per 15 min; Basic: 60 per 15 min); the
  default limiter is the Basic one. Set rate_limit_calls/rate_limit_per_seconds to your tier.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp
from pydantic import SecretStr

from producers.base import PollingSource, parse_iso
from producers.http import RateLimiter, get_json, redact
from producers.sentiment import SENTIMENT_METHOD, lexicon_sentiment
from streams.config import SocialSettings
from streams.errors import ConfigError, SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "social"
TWEET_FIELDS = "created_at,public_metrics,lang,author_id"
_TWITTER_EPOCH_MS = 1288834974657
_CASHTAG = re.compile(r"\$([A-Za-z][A-Za-z0-9.]{0,9})\b")


def snowflake_time(tweet_id: str | int) -> datetime:
    """The creation time encoded in an X id (milliseconds since the Twitter epoch in the top bits)."""
    return datetime.fromtimestamp(((int(tweet_id) >> 22) + _TWITTER_EPOCH_MS) / 1000.0, UTC)


def cashtags(text: str) -> list[str]:
    return list(dict.fromkeys(m.upper() for m in _CASHTAG.findall(text)))


def parse_search(doc: Any, symbol: str, *, source: str = SOURCE) -> tuple[list[MarketDataPoint], str | None]:
    """One recent-search page -> (social items for `symbol`, meta.next_token)."""
    if not isinstance(doc, dict):
        raise SourceError(f"unexpected X search payload: {type(doc).__name__}")
    data = doc.get("data")
    if data is None and doc.get("errors"):
        first = doc["errors"][0] if isinstance(doc["errors"], list) and doc["errors"] else {}
        detail = first.get("detail") or first.get("message") or first.get("title") if isinstance(first, dict) else first
        raise SourceError(f"X search error: {str(detail)[:300]}")
    users = {u.get("id"): u.get("username") for u in (doc.get("includes") or {}).get("users") or []
             if isinstance(u, dict)}
    out = []
    for tweet in data or []:
        if not isinstance(tweet, dict) or not tweet.get("id") or not tweet.get("text"):
            continue
        tid, text = str(tweet["id"]), str(tweet["text"])
        ts = parse_iso(tweet["created_at"]) if tweet.get("created_at") else snowflake_time(tid)
        meta: dict[str, Any] = {"sentiment_method": SENTIMENT_METHOD, "cashtags": cashtags(text)}
        for key in ("lang", "author_id", "public_metrics"):
            if tweet.get(key) is not None:
                meta[key] = tweet[key]
        if users.get(tweet.get("author_id")):
            meta["author_username"] = users[tweet["author_id"]]
        out.append(MarketDataPoint(
            symbol=symbol.upper(), timestamp=ts, source=source, data_type=DataType.SOCIAL, text=text,
            url=f"https://x.com/i/web/status/{tid}", sentiment=lexicon_sentiment(text), item_id=tid, metadata=meta,
        ))
    token = (doc.get("meta") or {}).get("next_token")
    return out, token or None


class SocialSource(PollingSource):
    """Polls X recent search once per interval for each symbol's cashtag, newer than the last post seen."""

    name = SOURCE

    def __init__(self, settings: SocialSettings, bearer_token: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        token = bearer_token or settings.api_key(env)
        if token is None:
            raise ConfigError("the social source needs TWITTER_BEARER_TOKEN in the environment")
        self.settings = settings
        self.token = token
        self.base_url = settings.base_url.rstrip("/")
        self.limiter = RateLimiter(settings.rate_limit_calls, settings.rate_limit_per_seconds)
        self.since_id: dict[str, str] = {}

    def redact(self, text: str) -> str:
        return redact(text, [self.token])

    def query(self, symbol: str) -> str:
        return f"${symbol.upper()} {self.settings.query_suffix}".strip()

    async def search(self, session: aiohttp.ClientSession, symbol: str) -> list[MarketDataPoint]:
        """Every page newer than since_id (one page on the first poll); advances since_id."""
        s = self.settings
        symbol = symbol.upper()
        since = self.since_id.get(symbol)
        headers = {"Authorization": f"Bearer {self.token.get_secret_value()}"}
        out: list[MarketDataPoint] = []
        next_token: str | None = None
        for _ in range(s.max_pages if since else 1):
            params: dict[str, Any] = {"query": self.query(symbol), "tweet.fields": TWEET_FIELDS,
                                      "max_results": s.max_results}
            if since:
                params["since_id"] = since
            if next_token:
                params["next_token"] = next_token
            try:
                doc = await get_json(session, f"{self.base_url}/2/tweets/search/recent", params=params,
                                     headers=headers, secrets=[self.token], limiter=self.limiter,
                                     attempts=s.retry_attempts, base_delay=s.retry_base_delay,
                                     timeout=s.request_timeout_seconds)
            except SourceError as exc:
                raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None
            points, next_token = parse_search(doc, symbol)
            out.extend(points)
            if not next_token:
                break
        else:
            if next_token and since:
                logger.info("social: %s has more than %d new pages; older ones are skipped", symbol, s.max_pages)
        if out:
            newest = max(out, key=lambda p: int(p.item_id)).item_id
            if since is None or int(newest) > int(since):
                self.since_id[symbol] = newest
        return out

    async def poll_once(self, session: aiohttp.ClientSession) -> list[MarketDataPoint]:
        out: list[MarketDataPoint] = []
        for symbol in self.settings.symbols:
            try:
                out.extend(await self.search(session, symbol))
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                logger.warning("social: search for %s failed: %s", symbol.upper(),
                               self.redact(f"{type(exc).__name__}: {exc}"))
        return out

