"""producers/sentiment.py: VADER's compound score with the finance extension, checked by its properties (sign,
negation, range), not by exact numbers of a method."""

from __future__ import annotations

import socket
from importlib.metadata import version

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from producers import sentiment
from producers.sentiment import FINANCE_LEXICON, HENRY_NEGATIVE, HENRY_POSITIVE, SENTIMENT_METHOD, lexicon_sentiment

POSITIVE = [
    "Apple reports record profit and strong growth",
    "Microsoft beats estimates as cloud growth stays strong. Revenue rose on Azure demand.",
    "Great quarter, excellent margins, shares gain",
]
NEGATIVE = [
    "Weak guidance, disappointing results",
    "Revenue declined and the company reported a loss",
    "Fraud investigation sends shares tumbling",
    "$AAPL dump incoming, weak guidance",
]


def test_method_names_the_installed_vader_and_the_extension() -> None:
    assert SENTIMENT_METHOD == f"vader_{version('vaderSentiment')}+finance_1" == "vader_3.3.2+finance_1"


# Finance text plain VADER scores 0.0 (checked below, so the list cannot drift into what it already rates).
FINANCE_POSITIVE = [
    "AAPL looking bullish", "GME to the moon \U0001F680", "short squeeze incoming", "MSFT beat estimates",
    "Stock rallied to a record high", "Goldman upgrades NVDA", "TSLA soared", "$AMC new all-time high",
    "Revenue grew and exceeded guidance",
]
FINANCE_NEGATIVE = [
    "Very bearish on TSLA", "Analyst downgrade for INTC", "The stock plunged", "Revenue slumped and margins declined",
    "Bagholders everywhere, totally rekt", "Chipmakers underperform the index",
]


@pytest.mark.parametrize("text", FINANCE_POSITIVE + FINANCE_NEGATIVE)
def test_plain_vader_rates_these_zero(text: str) -> None:
    assert SentimentIntensityAnalyzer().polarity_scores(text)["compound"] == 0.0


@pytest.mark.parametrize("text", FINANCE_POSITIVE)
def test_finance_slang_positive(text: str) -> None:
    assert lexicon_sentiment(text) > 0.2


@pytest.mark.parametrize("text", FINANCE_NEGATIVE)
def test_finance_slang_negative(text: str) -> None:
    assert lexicon_sentiment(text) < -0.2


def test_market_senses_override_everyday_ones() -> None:
    """VADER reads these in their everyday sense: a rating, an earnings beat, a profit warning."""
    plain = SentimentIntensityAnalyzer()
    for text, sign in [("Morgan Stanley moves NVDA to overweight", 1), ("beating estimates again", 1),
                       ("Company issues profit warning", -1), ("a challenging quarter", -1)]:
        assert plain.polarity_scores(text)["compound"] * sign <= 0  # VADER: the wrong sign, or none
        assert lexicon_sentiment(text) * sign > 0.2


def test_finance_terms_keep_vaders_rules() -> None:
    assert lexicon_sentiment("not bullish") < 0 < lexicon_sentiment("bullish")  # negation
    assert lexicon_sentiment("SHORT SQUEEZE now") > lexicon_sentiment("short squeeze now") > 0  # caps emphasis
    assert lexicon_sentiment("short\nsqueeze") == lexicon_sentiment("short squeeze")


def test_the_extension_is_henrys_list_and_rated_on_vaders_scale() -> None:
    assert len(HENRY_POSITIVE) == len(set(HENRY_POSITIVE)) and len(HENRY_NEGATIVE) == len(set(HENRY_NEGATIVE))
    assert not set(HENRY_POSITIVE) & set(HENRY_NEGATIVE)
    assert all(-4.0 <= v <= 4.0 and v != 0 for v in FINANCE_LEXICON.values())
    assert all(" " not in w for w in FINANCE_LEXICON)  # VADER rates single tokens: phrases are joined first


@pytest.mark.parametrize("text", POSITIVE)
def test_clearly_positive_finance_text(text: str) -> None:
    assert 0.0 < lexicon_sentiment(text) <= 1.0


@pytest.mark.parametrize("text", NEGATIVE)
def test_clearly_negative_finance_text(text: str) -> None:
    assert -1.0 <= lexicon_sentiment(text) < 0.0


@pytest.mark.parametrize("word", ["good", "strong", "great"])
def test_negation_flips_the_sign(word: str) -> None:
    assert lexicon_sentiment(f"the quarter was {word}") > 0 > lexicon_sentiment(f"the quarter was not {word}")
    assert lexicon_sentiment(f"it isn\u2019t {word}") < 0  # curly apostrophe too


def test_negated_negative_is_not_negative() -> None:
    assert lexicon_sentiment("terrible") < 0 < lexicon_sentiment("not terrible")


def test_social_media_cues() -> None:
    assert lexicon_sentiment("earnings :)") > 0 > lexicon_sentiment("earnings :(")
    assert lexicon_sentiment("GREAT quarter!!!") > lexicon_sentiment("great quarter")  # caps and exclamation


def test_neutral_empty_and_range() -> None:
    assert lexicon_sentiment("Watching $AAPL at the open.") == 0.0
    assert lexicon_sentiment("") == 0.0 and lexicon_sentiment("   ") == 0.0
    assert 0.99 < lexicon_sentiment(" ".join(["excellent"] * 500)) <= 1.0
    assert -1.0 <= lexicon_sentiment(" ".join(["terrible"] * 500)) < -0.99


def test_lexicon_loads_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The analyzer reads the lexicon files shipped in the package: with every socket refused it still scores."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network refused in this test")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    sentiment._analyzer.cache_clear()
    try:
        assert lexicon_sentiment("strong growth") > 0
        assert len(sentiment._analyzer().lexicon) > 7000
    finally:
        sentiment._analyzer.cache_clear()
