"""News: helpers every news or social source shares (the finance sentiment lexicon, epoch and clip
helpers) and NewsSentimentSource, which polls Finnhub company news and news sentiment for its symbols
and writes them as news items to raw.news.

The sentiment lexicon lives here and only here; producers/social.py imports it.

Sentiment method "finance_lexicon_v1" (used where a provider gives no score, e.g. X posts or a single
Finnhub article):
- Tokens are lower-cased words (apostrophes kept, so "don't" is one token) plus a few emoji.
- Each token found in POSITIVE_WORDS counts +1, in NEGATIVE_WORDS +1 to the negative side. The word
  lists are Loughran & McDonald (2011) style: financial-report words whose polarity holds in a finance
  context ("loss", "impairment", "beat", "upgrade"), not general-purpose ones ("liability" is not
  negative here), plus common trading slang ("bullish", "moon", "short", "dump", "bagholder").
- Negation: a negator ("not", "no", "never", "without", any "...n't") flips the polarity of the next
  sentiment word within NEGATION_WINDOW tokens; punctuation ends the window.
- score = (pos - neg) / (pos + neg + 1), clipped to [-1, 1]. The "+1" damps one-word texts (a lone
  "bullish" scores 0.5, not 1.0); a text with no sentiment words scores 0.0.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from producers.base import PollingSource
from producers.finnhub import FinnhubClient, finnhub_api_key
from streams.errors import ConfigError, SourceError
from streams.models import MarketDataPoint

logger = logging.getLogger(__name__)

SENTIMENT_METHOD = "finance_lexicon_v1"
NEGATION_WINDOW = 3

POSITIVE_WORDS: frozenset[str] = frozenset({
    # Loughran-McDonald-style positive words
    "achieve", "achieved", "achievement", "advance", "advanced", "advances", "attractive", "beat", "beats",
    "benefit", "benefited", "benefits", "best", "better", "boost", "boosted", "boosts", "breakthrough",
    "efficient", "exceed", "exceeded", "exceeds", "excellent", "gain", "gained", "gains", "good", "great",
    "grew", "grow", "growing", "growth", "highest", "improve", "improved", "improvement", "improves",
    "improving", "innovative", "opportunity", "optimistic", "outperform", "outperformed", "outperforms",
    "positive", "profitable", "profitability", "rebound", "rebounded", "record", "recovery", "rise",
    "rises", "rising", "rose", "soar", "soared", "soaring", "strength", "strong", "stronger", "strongest",
    "succeed", "success", "successful", "surge", "surged", "surges", "surpass", "surpassed", "upgrade",
    "upgraded", "upside", "upturn", "win", "winning",
    # trading slang
    "bull", "bullish", "buy", "buying", "calls", "green", "long", "moon", "mooning", "pump", "rally",
    "rallying", "rip", "ripping", "squeeze", "undervalued", "🚀", "📈", "💎",
})

NEGATIVE_WORDS: frozenset[str] = frozenset({
    # Loughran-McDonald-style negative words
    "adverse", "bankrupt", "bankruptcy", "concern", "concerns", "crisis", "decline", "declined",
    "declines", "declining", "default", "deficit", "delay", "delayed", "disappoint", "disappointed",
    "disappointing", "downgrade", "downgraded", "downturn", "drop", "dropped", "drops", "fail", "failed",
    "failure", "fall", "falling", "fell", "fraud", "impairment", "investigation", "lawsuit", "layoff",
    "layoffs", "lose", "losing", "loss", "losses", "lost", "miss", "missed", "misses", "negative",
    "plunge", "plunged", "plunges", "poor", "probe", "recall", "recession", "restructuring", "risk",
    "risks", "slump", "slumped", "slowdown", "tumble", "tumbled", "underperform", "warning", "weak",
    "weaker", "weakness", "worse", "worst", "writedown",
    # trading slang
    "bagholder", "bagholders", "bear", "bearish", "crash", "crashing", "dump", "dumping", "overvalued",
    "puts", "red", "rekt", "sell", "selling", "short", "shorting", "shorts", "tank", "tanked", "tanking",
    "📉", "🩸",
})

NEGATORS: frozenset[str] = frozenset({
    "not", "no", "never", "neither", "nor", "without", "hardly", "cannot", "cant", "dont", "didnt", "isnt",
    "wasnt", "wont", "arent", "doesnt", "aint",
})

_TOKEN = re.compile(r"[a-z][a-z']*|[.,;:!?]|[\U0001F300-\U0001FAFF]")
_BREAK = frozenset(".,;:!?")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


def _is_negator(token: str) -> bool:
    return token in NEGATORS or token.endswith("n't")


def sentiment_counts(text: str) -> tuple[int, int]:
    """(positive, negative) counts after negation, as the score formula uses them."""
    pos = neg = 0
    window = 0  # tokens left in which a sentiment word is negated
    for token in tokenize(text):
        if token in _BREAK:
            window = 0
            continue
        if _is_negator(token):
            window = NEGATION_WINDOW
            continue
        polarity = 1 if token in POSITIVE_WORDS else -1 if token in NEGATIVE_WORDS else 0
        if polarity and window:
            polarity = -polarity
            window = 0
        elif window:
            window -= 1
        if polarity > 0:
            pos += 1
        elif polarity < 0:
            neg += 1
    return pos, neg


def lexicon_sentiment(text: str) -> float:
    """The documented finance_lexicon_v1 score in [-1, 1] (see the module docstring)."""
    pos, neg = sentiment_counts(text)
    return clip((pos - neg) / (pos + neg + 1))


def clip(value: float, low: float = -1.0, high: float = 1.0) -> float:
    return max(low, min(high, value))


def from_epoch(value: float | int | str, *, millis: bool = False) -> datetime:
    """Provider epoch (seconds, or milliseconds) to an aware UTC datetime."""
    seconds = float(value) / 1000.0 if millis else float(value)
    return datetime.fromtimestamp(seconds, UTC)


def parse_iso(value: str) -> datetime:
    """ISO 8601 (with Z or an offset; naive means UTC) to an aware UTC datetime."""
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


class SeenIds:
    """Bounded memory of item ids already yielded, so a poll over an overlapping window repeats nothing."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self._order: deque[str] = deque(maxlen=maxlen)
        self._set: set[str] = set()

    def add(self, key: str) -> bool:
        """True if the key is new (and remembers it)."""
        if key in self._set:
            return False
        if len(self._order) == self._order.maxlen:
            self._set.discard(self._order[0])
        self._order.append(key)
        self._set.add(key)
        return True

    def new(self, points: Iterable[MarketDataPoint]) -> list[MarketDataPoint]:
        return [p for p in points if self.add(f"{p.symbol}|{p.data_type}|{p.item_id}")]


def score_missing(points: Iterable[MarketDataPoint]) -> list[MarketDataPoint]:
    """Give news items without a provider score the lexicon score, and say so in metadata."""
    out = []
    for p in points:
        if p.sentiment is None and (p.headline or p.text):
            p = p.model_copy(update={
                "sentiment": lexicon_sentiment(f"{p.headline or ''}. {p.text or ''}"),
                "metadata": {**p.metadata, "sentiment_method": SENTIMENT_METHOD},
            })
        out.append(p)
    return out


class NewsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "MSFT"])
    interval_seconds: float = 900.0
    # Shares Finnhub's free tier (60 calls/minute) with the finnhub source: keep the two under it together.
    rate_limit_calls: float = 30.0
    rate_limit_per_seconds: float = 60.0
    base_url: str = "https://finnhub.io"
    lookback_days: int = Field(default=2, ge=1, le=30)
    # news-sentiment is a premium Finnhub endpoint (403 on the free tier); then only articles are written.
    sentiment: bool = True
    request_timeout_seconds: float = 20.0
    retry_attempts: int = Field(default=5, ge=1)
    retry_base_delay: float = 0.5


class NewsSentimentSource(PollingSource):
    """Finnhub articles (scored with the lexicon, Finnhub gives no per-article score) plus Finnhub's own
    per-symbol news sentiment, as news items with source "news"."""

    name = "news"

    def __init__(self, settings: NewsSettings, api_key: SecretStr | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        key = api_key or finnhub_api_key(env)
        if key is None:
            raise ConfigError("the news source needs FINNHUB_API_KEY in the environment")
        self.settings = settings
        self.client = FinnhubClient(
            key, base_url=settings.base_url, calls=settings.rate_limit_calls,
            per_seconds=settings.rate_limit_per_seconds, timeout=settings.request_timeout_seconds,
            attempts=settings.retry_attempts, base_delay=settings.retry_base_delay,
        )
        self.seen = SeenIds()
        self.sentiment_enabled = settings.sentiment

    async def poll_once(self, session: aiohttp.ClientSession, now: datetime | None = None) -> list[MarketDataPoint]:
        now = now or datetime.now(UTC).replace(microsecond=0)
        out: list[MarketDataPoint] = []
        for symbol in (s.upper() for s in self.settings.symbols):
            try:
                news = await self.client.company_news(session, symbol, now=now, days=self.settings.lookback_days,
                                                      source=self.name)
                out.extend(self.seen.new(score_missing(news)))
            except (SourceError, ValueError, TypeError, KeyError) as exc:
                logger.warning("news: company news for %s failed: %s", symbol, self.client.redact(str(exc)))
            if not self.sentiment_enabled:
                continue
            try:
                out.extend(await self.client.news_sentiment(session, symbol, now=now, source=self.name))
            except SourceError as exc:
                if self.client.is_access_denied(exc):
                    logger.warning("news: Finnhub news-sentiment is not in this plan; writing articles only")
                    self.sentiment_enabled = False
                else:
                    logger.warning("news: sentiment for %s failed: %s", symbol, self.client.redact(str(exc)))
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning("news: sentiment for %s failed: %s", symbol, self.client.redact(str(exc)))
        return out

