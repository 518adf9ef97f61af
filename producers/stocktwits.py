"""StockTwits: symbol and user message streams, written to raw.stocktwits as social items.

- GET {base_url}/api/2/streams/symbol/{SYMBOL}.json and /api/2/streams/user/{id or username}.json (API v2).
  Both answer {"response": {"status": 200}, "cursor": {"more", "since", "max"}, "messages": [...]}, newest
  first, 30 messages a page; `since` asks for ids above it, `max` for ids at or below it. Public streams need
  no key; an access token (STOCKTWITS_ACCESS_TOKEN, optional) goes as `access_token` and is redacted.
- Paging: each stream keeps the newest id it has read whole (`since`). A poll reads the messages above it
  newest to oldest, page by page with `max`, until the old `since` is reached or the cursor says no more;
  `since` moves only once that is done. At most `max_pages` pages per stream and poll: a longer run is
  continued from its `max` on the next poll (WARNING), so nothing is skipped, and ids already written are
  not written again (SeenIds). The first poll of a stream reads only the newest page (a live feed, not a
  backfill).
- Tags: a message is written for a symbol only when that symbol is in the message's own `symbols` list. A
  symbol stream writes the stream's symbol; a user stream writes one item per symbol the message lists
  (messages listing none are not written).
- Sentiment: the user's own label where given (entities.sentiment.basic "Bullish" -> +1.0, "Bearish" -> -1.0,
  sentiment_method "stocktwits_user_label"); otherwise producers.sentiment.lexicon_sentiment of the body and
  its SENTIMENT_METHOD.
- Errors: a StockTwits error body ({"response": {"status": 404}, "errors": [{"message": ...}]}) raises
  SourceError with its message (429 and 5xx retriable); HTTP 429 is retried by producers/http.py with
  Retry-After; a body of any other shape (an X search body, say) raises, never an empty page.
- Unknown streams: StockTwits' own 404 body (a symbol or user it does not know) is an answer, not the provider
  failing: counted in `StocktwitsSource.unknown[stream]` and warned once, so a round of unknown symbols does
  not show the source `failing`. A 404 without that body (a wrong base_url) is a failed call.
"""

from __future__ import annotations

import html
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from pydantic import SecretStr

from producers.base import PollingSource, SeenIds, parse_iso
from producers.http import RateLimiter, get_json, http_options, redact
from producers.sentiment import SENTIMENT_METHOD, lexicon_sentiment
from streams.config import StocktwitsSettings
from streams.errors import SourceError
from streams.models import DataType, MarketDataPoint

logger = logging.getLogger(__name__)

SOURCE = "stocktwits"
USER_LABEL_METHOD = "stocktwits_user_label"
LABELS = {"bullish": 1.0, "bearish": -1.0}


@dataclass(frozen=True, slots=True)
class Stream:
    """One StockTwits stream: kind "symbol" or "user", and the symbol or user id/username."""

    kind: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def path(self) -> str:
        return f"/api/2/streams/{self.kind}/{quote(self.name, safe='')}.json"


@dataclass(slots=True)
class StreamPage:
    """One page of a stream: the items written, and the ids that drive paging."""

    points: list[MarketDataPoint]
    ids: list[int]  # of every message on the page, written or not
    more: bool  # the cursor says there are older messages
    untagged: int  # messages without the stream's symbol (or, in a user stream, without any symbol)

    @property
    def newest(self) -> int | None:
        return max(self.ids) if self.ids else None

    @property
    def oldest(self) -> int | None:
        return min(self.ids) if self.ids else None


def _error_text(doc: Mapping[str, Any]) -> str:
    errors = doc.get("errors")
    if isinstance(errors, list):
        msgs = [str(e.get("message") if isinstance(e, dict) else e) for e in errors]
        return "; ".join(msgs)[:300] or "no message"
    return "no message"


_UNKNOWN = re.compile(r'StockTwits error 404\b|^HTTP 404 from .*"status"\s*:\s*404\b', re.DOTALL)


def is_unknown_stream(exc: BaseException) -> bool:
    """StockTwits saying, in its own error body, that it does not know the stream's symbol or user (on a 200
    or a 404 answer); another server's 404 page (a wrong base_url) is not that."""
    return isinstance(exc, SourceError) and bool(_UNKNOWN.search(str(exc)))


def check_body(doc: Any) -> list[Any]:
    """The messages of a StockTwits stream body; SourceError for an error body or a body of another shape."""
    if not isinstance(doc, dict):
        raise SourceError(f"not a StockTwits stream body: a JSON {type(doc).__name__}", retriable=False)
    response = doc.get("response")
    status = response.get("status") if isinstance(response, dict) else None
    if doc.get("errors") or (isinstance(status, int) and status != 200):
        code = status if isinstance(status, int) else 0
        raise SourceError(f"StockTwits error {code or '(no status)'}: {_error_text(doc)}",
                          retriable=code == 429 or code >= 500)
    messages = doc.get("messages")
    if not isinstance(response, dict) or not isinstance(messages, list):
        hint = " (an X/Twitter search body?)" if "data" in doc or "meta" in doc else ""
        raise SourceError(f"not a StockTwits stream body{hint}: keys {sorted(map(str, doc))[:8]}", retriable=False)
    return messages


def _symbols(message: Mapping[str, Any]) -> list[str]:
    out = []
    for s in message.get("symbols") or []:
        sym = s.get("symbol") if isinstance(s, dict) else None
        if isinstance(sym, str) and sym.strip():
            out.append(sym.strip().upper())
    return list(dict.fromkeys(out))


def _point(message: Mapping[str, Any], symbol: str, tags: list[str], stream: Stream,
           source: str) -> MarketDataPoint:
    mid = str(message["id"])
    body = html.unescape(str(message.get("body") or ""))  # StockTwits escapes &, <, > in bodies
    user = message.get("user") if isinstance(message.get("user"), dict) else {}
    sentiment_doc = (message.get("entities") or {}).get("sentiment") if isinstance(message.get("entities"), dict) \
        else None
    label = sentiment_doc.get("basic") if isinstance(sentiment_doc, dict) else None
    meta: dict[str, Any] = {"stream": stream.key, "symbols": tags}
    if isinstance(label, str) and label.lower() in LABELS:
        score = LABELS[label.lower()]
        meta.update(sentiment_method=USER_LABEL_METHOD, sentiment_label=label)
    else:
        score = lexicon_sentiment(body)
        meta["sentiment_method"] = SENTIMENT_METHOD
    username = user.get("username")
    for key, value in (("user_id", user.get("id")), ("username", username), ("followers", user.get("followers")),
                       ("official", user.get("official"))):
        if value is not None:
            meta[key] = value
    likes = message.get("likes")
    if isinstance(likes, dict) and likes.get("total") is not None:
        meta["likes"] = likes["total"]
    url = f"https://stocktwits.com/{username}/message/{mid}" if username else f"https://stocktwits.com/message/{mid}"
    return MarketDataPoint(symbol=symbol, timestamp=parse_iso(str(message["created_at"])), source=source,
                           data_type=DataType.SOCIAL, text=body, url=url, sentiment=score, item_id=mid,
                           metadata=meta)


def parse_stream(doc: Any, stream: Stream, *, source: str = SOURCE) -> StreamPage:
    """One stream page -> social items. A symbol stream writes a message only if it lists that symbol; a user
    stream writes it once per symbol it lists. A message without id or created_at raises (a changed format
    must be seen, not skipped)."""
    messages = check_body(doc)
    cursor = doc.get("cursor") if isinstance(doc.get("cursor"), dict) else {}
    points: list[MarketDataPoint] = []
    ids: list[int] = []
    untagged = 0
    for message in messages:
        if not isinstance(message, dict) or message.get("id") is None or not message.get("created_at"):
            raise SourceError(f"StockTwits message without id or created_at in {stream.key}: "
                              f"{str(message)[:200]}", retriable=False)
        try:
            ids.append(int(message["id"]))
        except (TypeError, ValueError):
            raise SourceError(f"StockTwits message id {message['id']!r} is not a number", retriable=False) from None
        tags = _symbols(message)
        wanted = [stream.name.upper()] if stream.kind == "symbol" else tags
        wanted = [s for s in wanted if s in tags]
        if not wanted:
            untagged += 1
            continue
        points.extend(_point(message, sym, tags, stream, source) for sym in wanted)
    return StreamPage(points=points, ids=ids, more=bool(cursor.get("more")), untagged=untagged)


@dataclass(slots=True)
class _Walk:
    """The messages above `since` being read newest to oldest, possibly over several polls."""

    since: int | None  # the newest id read whole before this walk (None: the stream's first poll)
    max_id: int | None = None  # where the next page starts (inclusive), None for the newest page
    newest: int | None = None  # becomes the stream's `since` once the walk is done
    pages: int = 0
    posts: int = 0


class StocktwitsSource(PollingSource):
    """Polls each configured symbol stream and user stream once per interval (see the module docstring)."""

    name = SOURCE

    def __init__(self, settings: StocktwitsSettings, access_token: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.token = access_token or settings.api_key(env)
        self.base_url = settings.base_url.rstrip("/")
        self.limiter = RateLimiter.of(settings)
        self.streams = [Stream("symbol", s.strip().upper()) for s in settings.symbols if s.strip()] + \
                       [Stream("user", u.strip()) for u in settings.users if u.strip()]
        self.since: dict[str, int] = {}
        self.walks: dict[str, _Walk] = {}
        self.seen = SeenIds()
        self._logged: set[tuple[str, str]] = set()
        self.unknown: Counter[str] = Counter()  # per stream: StockTwits' 404 (a symbol or user it does not know)

    def redact(self, text: str) -> str:
        return redact(text, [self.token])

    async def _get(self, session: aiohttp.ClientSession, stream: Stream, params: dict[str, str]) -> Any:
        s = self.settings
        if self.token is not None:
            params = {**params, "access_token": self.token.get_secret_value()}
        try:
            return await get_json(session, f"{self.base_url}{stream.path}", params=params, secrets=[self.token],
                                  limiter=self.limiter, **http_options(s))
        except SourceError as exc:
            raise SourceError(self.redact(str(exc)), retriable=exc.retriable) from None

    async def read(self, session: aiohttp.ClientSession, stream: Stream) -> list[MarketDataPoint]:
        """Up to max_pages pages of the stream's unread messages. A failure on this poll's first page raises;
        a later one returns what was read, and the next poll asks for the failed page again."""
        walk = self.walks.pop(stream.key, None) or _Walk(since=self.since.get(stream.key))
        out: list[MarketDataPoint] = []
        untagged = 0
        done = False
        for n in range(self.settings.max_pages):
            params: dict[str, str] = {}
            if walk.since is not None:
                params["since"] = str(walk.since)
            if walk.max_id is not None:
                params["max"] = str(walk.max_id)
            try:
                page = parse_stream(await self._get(session, stream, params), stream, source=self.name)
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                self.walks[stream.key] = walk
                if n == 0:
                    raise
                out = self.seen.new(out)
                walk.posts += len(out)
                logger.warning("stocktwits: %s: page %d failed, %d items read this poll kept, the rest next poll: %s",
                               stream.key, walk.pages + 1, len(out), self.redact(f"{type(exc).__name__}: {exc}"))
                return out
            oldest = page.oldest
            progress = oldest is not None and (walk.max_id is None or oldest < walk.max_id)
            walk.pages += 1
            out.extend(p for p in page.points if walk.since is None or int(p.item_id) > walk.since)
            untagged += page.untagged
            walk.newest = max([i for i in (walk.newest, page.newest) if i is not None], default=None)
            # Done: the first poll's newest page, the cursor's end, an empty or repeated page (no progress),
            # or the page reaching down to the ids read before.
            if walk.since is None or not page.more or not progress or oldest is None or oldest <= walk.since:
                done = True
                break
            walk.max_id = oldest  # `max` is inclusive: the one repeated id is dropped above and by SeenIds
        out = self.seen.new(out)
        walk.posts += len(out)
        if untagged:
            logger.debug("stocktwits: %s: %d messages without a matching symbol not written", stream.key, untagged)
        if not done:
            self.walks[stream.key] = walk
            logger.warning("stocktwits: %s: max_pages (%d) reached with more messages left: %d items from %d pages "
                           "read so far, %d this poll; the rest is read on the next poll", stream.key,
                           self.settings.max_pages, walk.posts, walk.pages, len(out))
        elif walk.newest is not None and walk.newest > self.since.get(stream.key, -1):
            self.since[stream.key] = walk.newest
        return out

    async def poll_once(self, session: aiohttp.ClientSession) -> list[MarketDataPoint]:
        out: list[MarketDataPoint] = []
        for stream in self.streams:
            try:
                out.extend(await self.read(session, stream))
                self.call_succeeded()
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                text = self.redact(f"{type(exc).__name__}: {exc}")
                # Once per stream and cause at WARNING (an unknown symbol would otherwise repeat every poll).
                level = logging.DEBUG if (stream.key, text) in self._logged else logging.WARNING
                self._logged.add((stream.key, text))
                if is_unknown_stream(exc):
                    self.unknown[stream.key] += 1
                    logger.log(level, "stocktwits: %s: StockTwits does not know it (counted in unknown[%r]): %s",
                               stream.key, stream.key, text)
                    self.call_succeeded()  # answered: a configuration matter, not the provider failing
                    continue
                logger.log(level, "stocktwits: %s failed: %s", stream.key, text)
                self.call_failed(exc)  # a 429 (the plan's limit) is not counted: PollingSource.call_failed
        return out
