"""X recent search and the finance-lexicon sentiment, against a local aiohttp server with hand-written fixtures."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from producers.sentiment import SENTIMENT_METHOD, lexicon_sentiment, sentiment_counts
from producers.social import (
    SocialSettings,
    SocialSource,
    cashtags,
    parse_search,
    snowflake_time,
)
from streams.errors import ConfigError, SourceError
from tests.unit.producers.conftest import Serve

FIX = Path(__file__).parent / "fixtures" / "social"
TOKEN = "AAAAAAAAAAAAAAAAAAAAA_SECRET_bearer_%2Fxyz"


def load(name: str) -> Any:
    return json.loads((FIX / name).read_text())






# ---------------------------------------------------------------------------------------------- sentiment


def test_lexicon_positive() -> None:
    assert sentiment_counts("Beat estimates, strong growth, bullish") == (4, 0)
    assert lexicon_sentiment("Beat estimates, strong growth, bullish") == pytest.approx(4 / 5)
    assert lexicon_sentiment("$AAPL to the moon 🚀") == pytest.approx(2 / 3)


def test_lexicon_negative() -> None:
    assert lexicon_sentiment("Weak guidance, time to short and dump") == pytest.approx(-3 / 4)
    assert lexicon_sentiment("lawsuit") == pytest.approx(-0.5)


def test_lexicon_negation_flips_within_the_window() -> None:
    assert sentiment_counts("not bullish") == (0, 1)
    assert lexicon_sentiment("I'm not bullish here") == pytest.approx(-0.5)
    assert lexicon_sentiment("don\u2019t short this") == pytest.approx(0.5)  # curly apostrophe too
    assert lexicon_sentiment("no reason to sell") == pytest.approx(0.5)
    # Punctuation ends the negation window; a far-away word is not negated.
    assert sentiment_counts("not today. bullish") == (1, 0)
    assert sentiment_counts("never said that it was going to rally") == (1, 0)


def test_lexicon_neutral_and_mixed() -> None:
    assert lexicon_sentiment("Watching $AAPL at the open.") == 0.0
    assert lexicon_sentiment("") == 0.0
    assert lexicon_sentiment("strong quarter but weak guidance") == 0.0


def test_lexicon_is_bounded() -> None:
    many = " ".join(["bullish"] * 500)
    assert 0.99 < lexicon_sentiment(many) <= 1.0
    assert -1.0 <= lexicon_sentiment(" ".join(["crash"] * 500)) < -0.99


# ---------------------------------------------------------------------------------------------- parser


def test_parse_search_page() -> None:
    points, token = parse_search(load("search_aapl_page1.json"), "aapl")
    assert token == "page-2-token"
    bull, bear = points
    assert (bull.symbol, bull.source, bull.data_type, bull.item_id) == ("AAPL", "social", "social",
                                                                        "1796000000000000003")
    assert bull.url == "https://x.com/i/web/status/1796000000000000003"
    assert bull.timestamp == datetime(2024, 5, 30, 14, 0, 3, tzinfo=UTC)
    assert bull.text.startswith("$AAPL bullish")
    assert bull.sentiment is not None and bull.sentiment > 0 and bear.sentiment is not None and bear.sentiment < 0
    assert bull.metadata["sentiment_method"] == SENTIMENT_METHOD
    assert bull.metadata["public_metrics"]["like_count"] == 10 and bull.metadata["lang"] == "en"
    assert bear.metadata["cashtags"] == ["AAPL", "MSFT"]


def test_parse_search_empty_and_errors() -> None:
    assert parse_search(load("search_empty.json"), "AAPL") == ([], None)
    with pytest.raises(SourceError, match="Invalid query"):
        parse_search(load("invalid_query.json"), "AAPL")


def test_snowflake_time_when_created_at_is_missing() -> None:
    doc = {"data": [{"id": "1578516068309794817", "text": "hello"}], "meta": {"result_count": 1}}
    [p], _ = parse_search(doc, "AAPL")
    assert p.timestamp == snowflake_time("1578516068309794817")
    assert p.timestamp.replace(microsecond=0) == datetime(2022, 10, 7, 22, 42, 12, tzinfo=UTC)


def test_cashtags() -> None:
    assert cashtags("$aapl and $BRK.B vs $AAPL, not $5") == ["AAPL", "BRK.B"]


def test_token_from_environment_only() -> None:
    assert SocialSettings().api_key({}) is None
    token = SocialSettings().api_key({"TWITTER_BEARER_TOKEN": TOKEN})
    assert isinstance(token, SecretStr) and TOKEN not in repr(token)
    with pytest.raises(ConfigError):
        SocialSource(SocialSettings(), env={})


# ---------------------------------------------------------------------------------------------- source


class FakeX:
    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], dict[str, str]]] = []

    async def search(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.query), dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401, body=(FIX / "unauthorized.json").read_bytes(),
                                content_type="application/json")
        q = request.query
        if q["query"].startswith("$FAIL"):
            # Echo the credentials back in an error, as a careless proxy might.
            return web.json_response({"detail": f"{request.headers['Authorization']} at {request.url}"}, status=403)
        if q["query"].startswith("$NONE"):
            name = "search_empty.json"
        elif "next_token" in q:
            name = "search_aapl_page2.json"
        elif "since_id" in q:
            name = "search_aapl_newer.json" if len(self.seen) > 3 else "search_aapl_page1.json"
        else:
            name = "search_aapl_page1.json"
        return web.Response(body=(FIX / name).read_bytes(), content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/2/tweets/search/recent", self.search)
        return app


def settings(base_url: str, **kw: Any) -> SocialSettings:
    defaults: dict[str, Any] = {
        "symbols": ["AAPL"], "base_url": base_url, "retry_attempts": 2, "retry_base_delay": 0.01,
        "request_timeout_seconds": 2.0, "rate_limit_calls": 1000, "interval_seconds": 0.01,
    }
    return SocialSettings(**{**defaults, **kw})


async def test_first_poll_one_page_then_since_id_and_pagination(serve: Serve) -> None:
    fake = FakeX()
    base = await serve(fake.app())
    src = SocialSource(settings(base), bearer_token=SecretStr(TOKEN))
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)
        assert [p.item_id for p in first] == ["1796000000000000003", "1796000000000000002"]
        assert src.since_id == {"AAPL": "1796000000000000003"}
        second = await src.poll_once(session)  # since_id sent, two pages followed
        third = await src.poll_once(session)
    q0, h0 = fake.seen[0]
    assert q0["query"] == "$AAPL -is:retweet" and "since_id" not in q0
    assert q0["tweet.fields"] == "created_at,public_metrics,lang,author_id" and q0["max_results"] == "100"
    assert h0["Authorization"] == f"Bearer {TOKEN}"
    assert fake.seen[1][0]["since_id"] == "1796000000000000003" and fake.seen[2][0]["next_token"] == "page-2-token"
    assert len(second) == 3
    assert [p.item_id for p in third] == ["1796000000000000010"] and third[0].sentiment < 0
    assert src.since_id["AAPL"] == "1796000000000000010"
    assert fake.seen[3][0]["since_id"] == "1796000000000000003"
    assert all(p.source == "social" and p.symbol == "AAPL" for p in first + second + third)


async def test_failing_symbol_is_logged_redacted_and_others_continue(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeX()
    base = await serve(fake.app())
    src = SocialSource(settings(base, symbols=["FAIL", "NONE", "AAPL"]), bearer_token=SecretStr(TOKEN))
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
        with pytest.raises(SourceError) as err:
            await src.search(session, "FAIL")
    assert {p.symbol for p in points} == {"AAPL"} and "NONE" not in src.since_id
    assert "search for FAIL failed" in caplog.text and "403" in caplog.text
    assert TOKEN not in caplog.text and TOKEN not in str(err.value)


async def test_bad_token_401_never_leaks(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeX()
    base = await serve(fake.app())
    wrong = "WRONG_bearer_SECRET_999"
    src = SocialSource(settings(base), bearer_token=SecretStr(wrong))
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        assert await src.poll_once(session) == []
        with pytest.raises(SourceError) as err:
            await src.search(session, "AAPL")
    assert "401" in str(err.value) and err.value.retriable is False
    assert wrong not in caplog.text and wrong not in str(err.value)


async def test_fetch_yields_only_new_posts(serve: Serve) -> None:
    fake = FakeX()
    base = await serve(fake.app())
    src = SocialSource(settings(base), bearer_token=SecretStr(TOKEN))
    async with aiohttp.ClientSession() as session:
        gen = src.fetch(session)
        batches = [await anext(gen), await anext(gen)]
        await gen.aclose()
    assert [len(b) for b in batches] == [2, 3]
