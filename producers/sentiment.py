"""The finance sentiment lexicon, shared by every news or social source (one copy, here).

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

import re
from collections.abc import Iterable

from streams.models import MarketDataPoint

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


