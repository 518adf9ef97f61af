"""producers/sentiment.py: VADER's compound score, checked by its properties (sign, negation, range), not by
exact numbers of a method."""

from __future__ import annotations

import socket
from importlib.metadata import version

import pytest

from producers import sentiment
from producers.sentiment import SENTIMENT_METHOD, lexicon_sentiment

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


def test_method_names_the_installed_vader() -> None:
    assert SENTIMENT_METHOD == f"vader_{version('vaderSentiment')}" == "vader_3.3.2"


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
