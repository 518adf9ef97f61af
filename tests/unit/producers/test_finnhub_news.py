"""NewsSentimentSource (producers/finnhub.py: Finnhub articles + sentiment) and the shared helpers it uses
(producers/sentiment.py, producers/base.py)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from producers.base import SeenIds, failure_cause, from_epoch, parse_iso
from producers.finnhub import FinnhubUnexpected, NewsSentimentSource
from producers.sentiment import SENTIMENT_METHOD, lexicon_sentiment, score_missing
from streams.config import NewsSettings
from streams.errors import ConfigError, SourceError
from streams.models import DataType, MarketDataPoint
from tests.unit.producers.conftest import Serve

FIX = Path(__file__).parent / "fixtures" / "finnhub"
KEY = "fk_SECRET_news_0987654321"
NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)





# ---------------------------------------------------------------------------------------------- helpers


def test_epoch_and_iso_are_utc() -> None:
    assert from_epoch(1717171200) == datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
    assert from_epoch(1717171200123, millis=True) == datetime(2024, 5, 31, 16, 0, 0, 123000, tzinfo=UTC)
    assert parse_iso("2024-05-31T16:00:00Z") == datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
    assert parse_iso("2024-05-31T12:00:00-04:00") == datetime(2024, 5, 31, 16, 0, tzinfo=UTC)
    assert parse_iso("2024-05-31T16:00:00").tzinfo is UTC


def test_failure_cause_leaves_out_what_changes_between_calls() -> None:
    a = SourceError("HTTP 500 from http://h:18080/api/v1/company-news?symbol=AAPL&from=2024-05-30 for AAPL")
    b = SourceError("HTTP 500 from http://h:18080/api/v1/company-news?symbol=MSFT&from=2024-06-02 for MSFT")
    assert failure_cause(a, "AAPL") == failure_cause(b, "MSFT")
    assert "AAPL" not in failure_cause(a, "AAPL") and "2024" not in failure_cause(a, "AAPL")
    assert failure_cause(a, "AAPL") != failure_cause(SourceError("HTTP 403 from http://h/x"), "AAPL")
    assert failure_cause(FinnhubUnexpected("quote without c and t", "keys [a]")) == \
        "FinnhubUnexpected: quote without c and t"


def test_seen_ids_is_bounded_and_forgets_the_oldest() -> None:
    seen = SeenIds(maxlen=2)
    assert seen.add("a") and seen.add("b") and not seen.add("a")
    assert seen.add("c")  # evicts "a"
    assert seen.add("a") and not seen.add("c")


def test_seen_ids_tell_items_apart_by_symbol_kind_and_id() -> None:
    """A news article and a social post may share an id (both providers' own numbering), and one article is news
    of several symbols: each is an item of its own, none left out as a repeat."""
    seen = SeenIds()
    news = _item("Microsoft and Apple sign a deal").model_copy(update={"item_id": "7"})
    post = news.model_copy(update={"data_type": DataType.SOCIAL, "text": "$MSFT", "headline": None})
    other = news.model_copy(update={"symbol": "AAPL"})
    assert seen.new([news, post, other]) == [news, post, other]
    assert seen.new([news, post, other]) == []


def _item(headline: str, sentiment: float | None = None) -> MarketDataPoint:
    return MarketDataPoint(symbol="MSFT", timestamp=NOW, source="news", data_type=DataType.NEWS,
                           headline=headline, sentiment=sentiment, item_id=headline)


def test_score_missing_scores_only_unscored_items() -> None:
    scored, kept = score_missing([_item("Microsoft posts strong growth"), _item("Anything", sentiment=-0.2)])
    assert scored.sentiment == pytest.approx(lexicon_sentiment("Microsoft posts strong growth. "))
    assert scored.sentiment is not None and scored.sentiment > 0
    assert scored.metadata["sentiment_method"] == SENTIMENT_METHOD
    assert kept.sentiment == -0.2 and "sentiment_method" not in kept.metadata


# ---------------------------------------------------------------------------------------------- source


class FakeFinnhubNews:
    def __init__(self, sentiment_status: int = 200) -> None:
        self.sentiment_status = sentiment_status
        self.seen: list[tuple[str, dict[str, str], str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.query), request.headers.get("X-Finnhub-Token", "")))
        symbol = request.query.get("symbol")
        if symbol == "ODD":  # a shape no parser reads
            return web.json_response({"unexpected": "shape"})
        if symbol in ("FAIL", "FAIL2"):
            return web.json_response({"error": f"server error for token {request.headers['X-Finnhub-Token']}"},
                                     status=500)
        if request.path.endswith("company-news"):
            name = "company_news_msft.json"
        elif self.sentiment_status != 200:
            return web.Response(status=self.sentiment_status, body=(FIX / "error_no_access.json").read_bytes(),
                                content_type="application/json")
        else:
            name = "news_sentiment_msft.json"
        return web.Response(body=(FIX / name).read_bytes(), content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/{tail:.*}", self.handle)
        return app

    def calls(self, suffix: str) -> int:
        return sum(1 for p, _, _ in self.seen if p.endswith(suffix))


def settings(base_url: str, **kw: Any) -> NewsSettings:
    defaults: dict[str, Any] = {
        "symbols": ["msft"], "base_url": base_url, "retry_attempts": 2, "retry_base_delay": 0.01,
        "rate_limit_calls": 1000, "interval_seconds": 0.01,
    }
    return NewsSettings(**{**defaults, **kw})


async def test_articles_scored_plus_provider_sentiment(serve: Serve) -> None:
    fake = FakeFinnhubNews()
    base = await serve(fake.app())
    src = NewsSentimentSource(settings(base), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session, now=NOW)
        second = await src.poll_once(session, now=NOW)
    assert all(p.source == "news" and p.data_type == "news" and p.symbol == "MSFT" for p in first)
    articles, [senti] = first[:2], first[2:]
    assert [a.item_id for a in articles] == ["120001", "120002"]
    beats, probe = articles
    assert beats.sentiment is not None and beats.sentiment > 0
    # VADER rates no word of "Regulators open probe into Microsoft bundling" (a finance sense of "probe"):
    # scored, neutral, and labelled with the method.
    assert probe.sentiment == lexicon_sentiment("Regulators open probe into Microsoft bundling. ") == 0.0
    assert probe.metadata["sentiment_method"] == SENTIMENT_METHOD
    assert beats.metadata["sentiment_method"] == SENTIMENT_METHOD and beats.url == "https://example.com/news/120001"
    assert probe.metadata["tickers"] == ["MSFT", "GOOGL"]
    assert senti.sentiment == pytest.approx(-0.5) and senti.timestamp == NOW
    assert senti.metadata["sentiment_method"] == "finnhub_company_news_score" and senti.metadata["buzz"] == 1.25
    # Articles already produced are not produced again; the sentiment snapshot is.
    assert [p.item_id for p in second] == ["news-sentiment:MSFT"]
    news_query = fake.seen[0][1]
    assert (news_query["symbol"], news_query["from"], news_query["to"]) == ("MSFT", "2024-05-30", "2024-06-01")
    assert all(token == KEY for _, _, token in fake.seen)


async def test_sentiment_403_keeps_articles_and_stops_asking(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFinnhubNews(sentiment_status=403)
    base = await serve(fake.app())
    src = NewsSentimentSource(settings(base), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, now=NOW)
        await src.poll_once(session, now=NOW)
    assert [p.item_id for p in points] == ["120001", "120002"]
    assert fake.calls("news-sentiment") == 1 and fake.calls("company-news") == 2
    assert "not in this plan" in caplog.text


async def test_sentiment_refused_is_asked_again_after_the_cool_down(serve: Serve) -> None:
    """A key's plan can be upgraded while the worker runs: news-sentiment, refused with 403, is asked once more
    after denied_retry_seconds, and kept once it answers."""
    fake = FakeFinnhubNews(sentiment_status=403)
    src = NewsSentimentSource(settings(await serve(fake.app()), denied_retry_seconds=3600), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        await src.poll_once(session, now=NOW)
        await src.poll_once(session, now=NOW + timedelta(seconds=3599))
        assert fake.calls("news-sentiment") == 1
        fake.sentiment_status = 200  # the plan was upgraded
        points = await src.poll_once(session, now=NOW + timedelta(seconds=3600))
        await src.poll_once(session, now=NOW + timedelta(seconds=3601))
    assert fake.calls("news-sentiment") == 3 and src.sentiment_enabled
    assert any(p.metadata.get("sentiment_method") != SENTIMENT_METHOD and p.sentiment is not None for p in points)


async def test_failing_symbol_is_redacted_and_others_continue(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFinnhubNews()
    base = await serve(fake.app())
    src = NewsSentimentSource(settings(base, symbols=["FAIL", "MSFT"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, now=NOW)
    assert {p.symbol for p in points} == {"MSFT"} and len(points) == 3
    assert "company news for FAIL failed" in caplog.text and "sentiment for FAIL failed" in caplog.text
    assert KEY not in caplog.text


async def test_failures_are_warned_once_per_cause_and_counted(serve: Serve,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Two symbols failing the same way on two polls: one warning per endpoint and cause, every failure counted;
    a payload of an odd shape is another cause, counted as unexpected too."""
    fake = FakeFinnhubNews()
    base = await serve(fake.app())
    src = NewsSentimentSource(settings(base, symbols=["FAIL", "FAIL2", "ODD", "MSFT"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        await src.poll_once(session, now=NOW)
        await src.poll_once(session, now=NOW)
    warnings = sorted(r.getMessage().split(" failed")[0] + " failed" for r in caplog.records
                      if r.levelno == logging.WARNING)
    # FAIL2 fails as FAIL does (HTTP 500): the same cause, not warned again; ODD's odd payloads are another.
    assert warnings == ["news: company news for FAIL failed", "news: company news for ODD failed",
                        "news: sentiment for FAIL failed", "news: sentiment for ODD failed"]
    assert src.errors == {"company_news": 6, "news_sentiment": 6}  # 3 failing symbols x 2 polls
    assert src.unexpected == {"company_news": 2, "news_sentiment": 2}  # ODD's; an HTTP 500 is no payload shape
    assert KEY not in caplog.text


async def test_fetch_loop_and_missing_key(serve: Serve) -> None:
    with pytest.raises(ConfigError):
        NewsSentimentSource(NewsSettings(), env={})
    fake = FakeFinnhubNews()
    base = await serve(fake.app())
    src = NewsSentimentSource(settings(base, sentiment=False), env={"FINNHUB_API_KEY": KEY})
    async with aiohttp.ClientSession() as session:
        gen = src.fetch(session)
        batch = await anext(gen)
        await gen.aclose()
    assert [p.item_id for p in batch] == ["120001", "120002"] and fake.calls("news-sentiment") == 0
