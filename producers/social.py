"""Social media: X (Twitter) API v2 recent search for cashtags, written to raw.social as social items
with source "social".

- GET {base_url}/2/tweets/search/recent?query=$AAPL -is:retweet ... with Authorization: Bearer
  <TWITTER_BEARER_TOKEN>; tweet.fields=created_at,public_metrics,lang,author_id,
  expansions=author_id and user.fields=username (includes.users -> metadata["author_username"]); pages via
  meta.next_token; since_id (the newest id seen per symbol) kept between polls, so a poll only asks for
  what is new. The first poll reads `lookback_seconds` back (start_time), not the whole 7-day window (a
  backfill is not what a live poll should spend the quota on). No page is skipped: a result set longer
  than max_pages is continued on the next poll (SocialSource).
- A post is written for a symbol only when its text carries that cashtag (X also matches quoted posts).
- X escapes &, < and > in `text` as HTML entities: the text is unescaped before it is stored and scored.
- X gives no sentiment: each post is scored with producers.sentiment.lexicon_sentiment (its SENTIMENT_METHOD,
  documented there) and metadata["sentiment_method"] says so.
- A post without created_at (the field was not requested) is stamped from its snowflake id.
- Rate limits: X's tiers differ (Free: 1 recent-search request per 15 min; Basic: 60 per 15 min); the
  default limiter is the Basic one. Set rate_limit_calls/rate_limit_per_seconds to your tier.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from pydantic import SecretStr

from producers.base import PollingSource, parse_iso
from producers.http import RateLimiter, get_json, http_options, redact
from producers.sentiment import SENTIMENT_METHOD, lexicon_sentiment
from streams.config import SocialSettings
from streams.errors import ConfigError, SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "social"
TWEET_FIELDS = "created_at,public_metrics,lang,author_id"
# Without the expansion X sends no includes.users, so no author's username.
EXPANSIONS = "author_id"
USER_FIELDS = "username"
_TWITTER_EPOCH_MS = 1288834974657
_SEARCH_WINDOW = timedelta(days=7) - timedelta(minutes=5)
_CASHTAG = re.compile(r"\$([A-Za-z][A-Za-z0-9.]{0,9})\b")


def snowflake_time(tweet_id: str | int) -> datetime:
    """The creation time encoded in an X id (milliseconds since the Twitter epoch in the top bits)."""
    return datetime.fromtimestamp(((int(tweet_id) >> 22) + _TWITTER_EPOCH_MS) / 1000.0, UTC)


def cashtags(text: str) -> list[str]:
    return list(dict.fromkeys(m.upper() for m in _CASHTAG.findall(text)))


@dataclass(slots=True)
class SearchPage:
    """One recent-search page: the posts tagged with the symbol, and where the result set goes on."""

    points: list[MarketDataPoint]
    next_token: str | None
    newest_id: str | None  # of every post on the page, tagged or not
    oldest_id: str | None
    untagged: int  # posts whose text does not carry the symbol's cashtag (not written)


def _max_id(ids: list[str | None]) -> str | None:
    known = [i for i in ids if i]
    return max(known, key=int) if known else None


def _min_id(ids: list[str | None]) -> str | None:
    known = [i for i in ids if i]
    return min(known, key=int) if known else None


def parse_page(doc: Any, symbol: str, *, source: str = SOURCE) -> SearchPage:
    """One recent-search page -> the social items for `symbol` (only posts whose text has its cashtag, any
    case: X also matches a cashtag in a quoted post or a link card, which would tag the wrong conversation)."""
    if not isinstance(doc, dict):
        raise SourceError(f"unexpected X search payload: {type(doc).__name__}")
    data = doc.get("data")
    if data is None and doc.get("errors"):
        first = doc["errors"][0] if isinstance(doc["errors"], list) and doc["errors"] else {}
        detail = first.get("detail") or first.get("message") or first.get("title") if isinstance(first, dict) else first
        raise SourceError(f"X search error: {str(detail)[:300]}")
    if "data" not in doc and "meta" not in doc:  # an empty X result still has meta.result_count
        hint = " (a StockTwits stream body?)" if "messages" in doc or "cursor" in doc else ""
        raise SourceError(f"not an X search response{hint}: no data or meta, keys {sorted(map(str, doc))[:8]}")
    symbol = symbol.upper()
    users = {u.get("id"): u.get("username") for u in (doc.get("includes") or {}).get("users") or []
             if isinstance(u, dict)}
    out = []
    ids: list[str | None] = []
    untagged = 0
    for tweet in data or []:
        if not isinstance(tweet, dict) or not tweet.get("id"):
            continue
        tid = str(tweet["id"])
        ids.append(tid)
        text = html.unescape(str(tweet.get("text") or ""))  # X sends &amp; &lt; &gt; in text
        tags = cashtags(text)
        if symbol not in tags:
            untagged += 1
            continue
        ts = parse_iso(tweet["created_at"]) if tweet.get("created_at") else snowflake_time(tid)
        meta: dict[str, Any] = {"sentiment_method": SENTIMENT_METHOD, "cashtags": tags}
        for key in ("lang", "author_id", "public_metrics"):
            if tweet.get(key) is not None:
                meta[key] = tweet[key]
        if users.get(tweet.get("author_id")):
            meta["author_username"] = users[tweet["author_id"]]
        out.append(MarketDataPoint(
            symbol=symbol, timestamp=ts, source=source, data_type=DataType.SOCIAL, text=text,
            url=f"https://x.com/i/web/status/{tid}", sentiment=lexicon_sentiment(text), item_id=tid, metadata=meta,
        ))
    meta_doc = doc.get("meta") or {}
    return SearchPage(
        points=out, next_token=meta_doc.get("next_token") or None,
        newest_id=_max_id([meta_doc.get("newest_id"), *ids]), oldest_id=_min_id([meta_doc.get("oldest_id"), *ids]),
        untagged=untagged,
    )


def parse_search(doc: Any, symbol: str, *, source: str = SOURCE) -> tuple[list[MarketDataPoint], str | None]:
    """One recent-search page -> (social items for `symbol`, meta.next_token)."""
    page = parse_page(doc, symbol, source=source)
    return page.points, page.next_token


@dataclass(slots=True)
class _Walk:
    """A result set being read newest to oldest, page by page, possibly over several polls. `params` are the
    ones its next_token belongs to (X pagination tokens are only valid with the same query)."""

    params: dict[str, str]
    next_token: str | None = None
    newest_id: str | None = None  # becomes since_id when the last page has been read
    oldest_id: str | None = None  # where to resume with until_id if a next_token is refused
    pages: int = 0
    posts: int = 0


class SocialSource(PollingSource):
    """Polls X recent search once per interval for each symbol's cashtag.

    Each symbol reads one result set at a time to its last page: the first covers `lookback_seconds`
    (start_time), each later one what is newer than the newest post of the previous (since_id). At most
    `max_pages` pages per symbol and poll; a result set with more is continued from its next_token on the
    next poll (with a WARNING), so no page is skipped; since_id moves only once a result set is read whole.
    """

    name = SOURCE

    def __init__(self, settings: SocialSettings, bearer_token: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        token = bearer_token or settings.api_key(env)
        if token is None:
            raise ConfigError(f"the social source needs {' or '.join(settings.key_env)} in the environment")
        self.settings = settings
        self.token = token
        self.base_url = settings.base_url.rstrip("/")
        self.limiter = RateLimiter.of(settings)
        self.since_id: dict[str, str] = {}
        self.start_time: dict[str, datetime] = {}
        self.walks: dict[str, _Walk] = {}

    def redact(self, text: str) -> str:
        return redact(text, [self.token])

    def query(self, symbol: str) -> str:
        return f"${symbol.upper()} {self.settings.query_suffix}".strip()

    def _new_walk(self, symbol: str, now: datetime) -> _Walk:
        s = self.settings
        params = {"query": self.query(symbol), "tweet.fields": TWEET_FIELDS, "expansions": EXPANSIONS,
                  "user.fields": USER_FIELDS, "max_results": str(s.max_results)}
        since = self.since_id.get(symbol)
        if since and snowflake_time(since) < now - _SEARCH_WINDOW:
            # X refuses a since_id older than its 7 days: what lay between it and the window is out of reach.
            self._out_of_reach(symbol, since, now - _SEARCH_WINDOW)
            del self.since_id[symbol]
            self.start_time[symbol] = now - _SEARCH_WINDOW
            since = None
        if since:
            params["since_id"] = since
        else:  # nothing seen yet: the lookback window, fixed at the first poll until a post shows up
            start = self.start_time.setdefault(symbol, now - timedelta(seconds=s.lookback_seconds))
            start = max(start, now - _SEARCH_WINDOW)  # X refuses a start_time older than its 7 days
            params["start_time"] = start.strftime("%Y-%m-%dT%H:%M:%SZ")
        return _Walk(params)

    def _resume(self, symbol: str, walk: _Walk | None, now: datetime) -> _Walk | None:
        """A result set left unfinished by an earlier poll. Once its lower bound (since_id or start_time) has left
        X's 7 days (it would be refused at every poll), it goes on below the oldest post it read (until_id), or
        from the window's start when it read none; its page token goes, being bound to the old parameters."""
        if walk is None:
            return None
        since, start = walk.params.get("since_id"), walk.params.get("start_time")
        floor = now - _SEARCH_WINDOW
        aged = (since is not None and snowflake_time(since) < floor) or (
            start is not None and datetime.strptime(start, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) < floor)
        if not aged:
            return walk
        if since is not None:
            self._out_of_reach(symbol, since, floor)
        params = {k: v for k, v in walk.params.items() if k not in ("since_id", "start_time", "until_id")}
        if walk.oldest_id:
            params["until_id"] = walk.oldest_id
        else:
            params["start_time"] = floor.strftime("%Y-%m-%dT%H:%M:%SZ")
        walk.params, walk.next_token = params, None
        return walk

    def _out_of_reach(self, symbol: str, since: str, floor: datetime) -> None:
        logger.warning("social: %s: the newest post read (id %s, %s) is older than recent search's 7 days; posts "
                       "between it and %s cannot be read", symbol, since, snowflake_time(since).isoformat(),
                       floor.isoformat())

    async def _page(self, session: aiohttp.ClientSession, params: Mapping[str, str]) -> Any:
        s = self.settings
        headers = {"Authorization": f"Bearer {self.token.get_secret_value()}"}
        try:
            return await get_json(session, f"{self.base_url}/2/tweets/search/recent", params=params,
                                  headers=headers, secrets=[self.token], limiter=self.limiter,
                                  **http_options(s))
        except SourceError as exc:
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None

    async def search(self, session: aiohttp.ClientSession, symbol: str,
                     now: datetime | None = None) -> list[MarketDataPoint]:
        """Up to max_pages pages of the symbol's current result set. A failure on the first page of this
        poll raises; a later one returns what was read, and the next poll asks for the failed page again."""
        symbol = symbol.upper()
        now = now or datetime.now(UTC)
        walk = self._resume(symbol, self.walks.pop(symbol, None), now) or self._new_walk(symbol, now)
        out: list[MarketDataPoint] = []
        untagged = 0
        for n in range(self.settings.max_pages):
            params = dict(walk.params)
            if walk.next_token:
                params["next_token"] = walk.next_token
            try:
                page = parse_page(await self._page(session, params), symbol)
            except SourceError as exc:
                if walk.next_token and not exc.retriable and walk.oldest_id:
                    # A refused (expired) next_token: go on below the oldest post read, by id.
                    logger.warning("social: %s: page token refused (%s); continuing below id %s", symbol,
                                   self.redact(str(exc)), walk.oldest_id)
                    # X refuses until_id beside start_time/end_time: the lookback's start gives way (what lies
                    # before it is read too, never skipped).
                    walk.params = {k: v for k, v in walk.params.items()
                                   if k not in ("until_id", "start_time", "end_time")}
                    walk.params["until_id"] = walk.oldest_id
                    walk.next_token = None
                if n == 0:
                    self.walks[symbol] = walk
                    raise
                logger.warning("social: %s: page %d failed, %d posts read this poll kept, the rest next poll: %s",
                               symbol, walk.pages + 1, len(out), self.redact(str(exc)))
                self.walks[symbol] = walk
                return out
            out.extend(page.points)
            untagged += page.untagged
            walk.pages += 1
            walk.posts += len(page.points)
            walk.newest_id = _max_id([walk.newest_id, page.newest_id])
            walk.oldest_id = _min_id([walk.oldest_id, page.oldest_id])
            walk.next_token = page.next_token
            if not page.next_token:
                break
        if untagged:
            logger.info("social: %s: %d posts without $%s in their text not written", symbol, untagged, symbol)
        if walk.next_token:
            self.walks[symbol] = walk
            logger.warning("social: %s: max_pages (%d) reached with more pages left: %d posts from %d pages read "
                           "so far, %d this poll; the rest is read on the next poll", symbol,
                           self.settings.max_pages, walk.posts, walk.pages, len(out))
        elif walk.newest_id and (symbol not in self.since_id or int(walk.newest_id) > int(self.since_id[symbol])):
            self.since_id[symbol] = walk.newest_id
        return out

    async def poll_once(self, session: aiohttp.ClientSession, now: datetime | None = None) -> list[MarketDataPoint]:
        out: list[MarketDataPoint] = []
        for symbol in self.settings.symbols:
            try:
                out.extend(await self.search(session, symbol, now))
                self.call_succeeded()
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                logger.warning("social: search for %s failed: %s", symbol.upper(),
                               self.redact(f"{type(exc).__name__}: {exc}"))
                self.call_failed(exc)  # a 429 (the plan's limit) is not counted: PollingSource.call_failed
        return out
