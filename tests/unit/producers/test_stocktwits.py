"""StockTwits symbol and user streams (producers/stocktwits.py), against hand-written fixtures from the documented
API v2 format and a local server that pages like StockTwits (newest first, `since` exclusive, `max` inclusive)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from producers.registry import enabled_sources
from producers.sentiment import SENTIMENT_METHOD, lexicon_sentiment
from producers.social import parse_search
from producers.stocktwits import USER_LABEL_METHOD, StocktwitsSource, Stream, parse_stream
from streams.config import SourcesSettings, StocktwitsSettings
from streams.errors import SourceError
from tests.unit.producers.conftest import Serve

FIX = Path(__file__).parent / "fixtures" / "stocktwits"
SOCIAL_FIX = Path(__file__).parent / "fixtures" / "social"
TOKEN = "st_SECRET_access_token_4242"
T0 = datetime(2024, 5, 30, 14, 0, tzinfo=UTC)


def load(name: str, folder: Path = FIX) -> Any:
    return json.loads((folder / name).read_text())


# ---------------------------------------------------------------------------------------------- parser


def test_symbol_stream_page() -> None:
    page = parse_stream(load("symbol_aapl.json"), Stream("symbol", "AAPL"))
    assert page.more and (page.newest, page.oldest) == (500000004, 500000001)
    bull, bear, unlabelled = page.points
    assert page.untagged == 1  # 500000001 lists only MSFT: not written under AAPL
    assert (bull.symbol, bull.source, bull.data_type, bull.item_id) == ("AAPL", "stocktwits", "social", "500000004")
    assert bull.timestamp == datetime(2024, 5, 30, 14, 0, 4, tzinfo=UTC)
    assert bull.url == "https://stocktwits.com/bull_one/message/500000004"
    # The user's own label is the score, and says so.
    assert (bull.sentiment, bull.metadata["sentiment_method"], bull.metadata["sentiment_label"]) == (
        1.0, USER_LABEL_METHOD, "Bullish")
    assert (bear.sentiment, bear.metadata["sentiment_method"]) == (-1.0, USER_LABEL_METHOD)
    # No label: the lexicon's score and method.
    assert unlabelled.metadata["sentiment_method"] == SENTIMENT_METHOD
    assert unlabelled.sentiment == lexicon_sentiment(unlabelled.text) and unlabelled.sentiment > 0
    assert bear.text == "$AAPL & $MSFT looking heavy into the close"  # HTML entities decoded
    assert bear.metadata["symbols"] == ["AAPL", "MSFT"] and bull.metadata["likes"] == 3
    assert (bull.metadata["username"], bull.metadata["user_id"], bull.metadata["stream"]) == ("bull_one", 11,
                                                                                              "symbol:AAPL")


def test_symbol_stream_tags_only_listed_symbols() -> None:
    page = parse_stream(load("symbol_aapl.json"), Stream("symbol", "MSFT"))
    assert [p.item_id for p in page.points] == ["500000003", "500000001"] and page.untagged == 2
    assert all(p.symbol == "MSFT" for p in page.points)


def test_user_stream_writes_one_item_per_listed_symbol() -> None:
    page = parse_stream(load("user_stream.json"), Stream("user", "howardlindzon"))
    assert [(p.symbol, p.item_id) for p in page.points] == [
        ("TSLA", "600000003"), ("NVDA", "600000003"), ("BTC.X", "600000001")]
    assert page.untagged == 1 and not page.more
    assert page.points[0].sentiment == lexicon_sentiment(page.points[0].text) < 0
    assert page.points[2].sentiment == 1.0 and page.points[0].metadata["stream"] == "user:howardlindzon"


def test_error_bodies_raise_with_their_message() -> None:
    with pytest.raises(SourceError, match="404: Symbol not found") as not_found:
        parse_stream(load("error_symbol_not_found.json"), Stream("symbol", "NOPE"))
    assert not not_found.value.retriable
    with pytest.raises(SourceError, match="429: Rate limit exceeded") as limited:
        parse_stream(load("error_rate_limit.json"), Stream("symbol", "AAPL"))
    assert limited.value.retriable


@pytest.mark.parametrize("body", [
    load("search_aapl_page1.json", SOCIAL_FIX),  # an X search body
    {"meta": {"result_count": 0}},  # an empty X search body
    {"messages": []},  # no response envelope
    {"response": {"status": 200}, "messages": {"id": 1}},
    [],
    "Symbol not found",
])
def test_bodies_of_another_shape_are_refused(body: Any) -> None:
    with pytest.raises(SourceError, match="not a StockTwits stream body"):
        parse_stream(body, Stream("symbol", "AAPL"))


def test_x_search_body_is_named_as_such() -> None:
    with pytest.raises(SourceError, match="X/Twitter"):
        parse_stream(load("search_aapl_page1.json", SOCIAL_FIX), Stream("symbol", "AAPL"))


def test_x_parser_refuses_a_stocktwits_body() -> None:
    with pytest.raises(SourceError, match=r"not an X search response \(a StockTwits stream body"):
        parse_search(load("symbol_aapl.json"), "AAPL")
    assert parse_search(load("search_empty.json", SOCIAL_FIX), "AAPL") == ([], None)  # a real empty page still is


def test_a_message_without_id_or_time_raises() -> None:
    doc = load("symbol_aapl.json")
    del doc["messages"][1]["created_at"]
    with pytest.raises(SourceError, match="without id or created_at"):
        parse_stream(doc, Stream("symbol", "AAPL"))


# ---------------------------------------------------------------------------------------------- source


class FakeStocktwits:
    """Symbol streams as StockTwits pages them: newest first, `since` exclusive, `max` inclusive, `page_size`
    a page, cursor.more when older messages match. `fail` maps a request number (1-based) to a response."""

    def __init__(self, page_size: int = 30) -> None:
        self.page_size = page_size
        self.ids: dict[str, list[int]] = {}
        self.next_id = 1000
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.fail: dict[int, web.Response] = {}

    def post(self, symbol: str, n: int) -> list[int]:
        new = list(range(self.next_id, self.next_id + n))
        self.next_id += n
        self.ids.setdefault(symbol, []).extend(new)
        return new

    def message(self, mid: int, symbol: str) -> dict[str, Any]:
        return {"id": mid, "body": f"${symbol} message {mid}",
                "created_at": (T0 + timedelta(seconds=mid)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "user": {"id": 7, "username": "u7"}, "symbols": [{"id": 1, "symbol": symbol}],
                "entities": {"sentiment": None}}

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.query)))
        if len(self.seen) in self.fail:
            return self.fail[len(self.seen)]
        kind, name = request.match_info["kind"], request.match_info["name"].removesuffix(".json")
        if kind == "user":
            return web.json_response(load("user_stream.json"))
        if name not in self.ids:
            return web.json_response(load("error_symbol_not_found.json"), status=404)
        since, top = int(request.query.get("since", 0)), request.query.get("max")
        match = sorted((i for i in self.ids[name] if i > since and (top is None or i <= int(top))), reverse=True)
        page = match[:self.page_size]
        return web.json_response({
            "response": {"status": 200}, "symbol": {"id": 1, "symbol": name},
            "cursor": {"more": len(match) > self.page_size, "since": page[0] if page else None,
                       "max": page[-1] if page else None},
            "messages": [self.message(i, name) for i in page]})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/2/streams/{kind}/{name}", self.handle)
        return app


def settings(base_url: str, **kw: Any) -> StocktwitsSettings:
    defaults: dict[str, Any] = {"symbols": ["aapl"], "users": [], "base_url": base_url, "retry_attempts": 2,
                                "retry_base_delay": 0.01, "rate_limit_calls": 1000, "interval_seconds": 0.01}
    return StocktwitsSettings(**{**defaults, **kw})


def ids(points: list[Any]) -> list[int]:
    return [int(p.item_id) for p in points]


async def test_since_and_max_read_every_message_once_across_polls(serve: Serve,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeStocktwits()
    fake.post("AAPL", 40)
    src = StocktwitsSource(settings(await serve(fake.app()), max_pages=2), env={})
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session)  # the newest page only: a live feed, not a backfill
        assert ids(first) == list(range(1039, 1009, -1)) and fake.seen[0][1] == {}
        new = fake.post("AAPL", 100)  # 1040..1139: more than max_pages x 30
        with caplog.at_level(logging.WARNING, logger="producers.stocktwits"):
            second = await src.poll_once(session)
        assert ids(second) == list(range(1139, 1080, -1))  # 30 + 29: `max` repeats the oldest id of a page
        assert "max_pages (2) reached" in caplog.text
        assert fake.seen[1][1] == {"since": "1039"} and fake.seen[2][1] == {"since": "1039", "max": "1110"}
        later = fake.post("AAPL", 5)  # arrives while the run above is still being read
        third = await src.poll_once(session)
        assert fake.seen[3][1] == {"since": "1039", "max": "1081"}
        assert ids(third) == list(range(1080, 1039, -1))  # the rest of the run; 1081 (repeated by max) not again
        fourth = await src.poll_once(session)
        assert fake.seen[-1][1] == {"since": "1139"}
        assert ids(fourth) == sorted(later, reverse=True)
        assert await src.poll_once(session) == []
    read = ids(second + third + fourth)
    assert sorted(read) == new + later and len(read) == len(set(read))


async def test_a_failed_later_page_is_asked_again(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeStocktwits(page_size=10)
    fake.post("AAPL", 5)
    src = StocktwitsSource(settings(await serve(fake.app()), retry_attempts=1), env={})
    async with aiohttp.ClientSession() as session:
        await src.poll_once(session)
        new = fake.post("AAPL", 25)
        fake.fail[3] = web.Response(status=500, text="boom")  # the second page of the next poll
        with caplog.at_level(logging.WARNING, logger="producers.stocktwits"):
            kept = await src.poll_once(session)
        assert ids(kept) == sorted(new, reverse=True)[:10] and "page 2 failed" in caplog.text
        rest = await src.poll_once(session)
        assert fake.seen[3][1]["max"] == fake.seen[2][1]["max"]  # the failed page, asked again
    assert sorted(ids(kept + rest)) == new


async def test_unknown_symbol_warns_once_and_others_still_read(serve: Serve,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeStocktwits()
    fake.post("AAPL", 3)
    src = StocktwitsSource(settings(await serve(fake.app()), symbols=["NOPE", "AAPL"]),
                           access_token=SecretStr(TOKEN))
    async with aiohttp.ClientSession() as session:
        with caplog.at_level(logging.DEBUG, logger="producers.stocktwits"):
            first = await src.poll_once(session)
            second = await src.poll_once(session)
    assert len(first) == 3 and second == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "symbol:NOPE" in warnings[0].getMessage()
    assert "Symbol not found" in warnings[0].getMessage()
    # The token goes as access_token, and never into a log line.
    assert all(q.get("access_token") == TOKEN for _, q in fake.seen)
    assert TOKEN not in caplog.text


async def test_429_is_retried_with_retry_after(serve: Serve) -> None:
    fake = FakeStocktwits()
    fake.post("AAPL", 2)
    fake.fail[1] = web.json_response(load("error_rate_limit.json"), status=429, headers={"Retry-After": "0"})
    src = StocktwitsSource(settings(await serve(fake.app())), env={})
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
    assert ids(points) == [1001, 1000] and len(fake.seen) == 2


async def test_rate_limited_to_the_end_loses_nothing(serve: Serve) -> None:
    fake = FakeStocktwits()
    fake.post("AAPL", 2)
    src = StocktwitsSource(settings(await serve(fake.app()), retry_attempts=1), env={})
    async with aiohttp.ClientSession() as session:
        await src.poll_once(session)
        new = fake.post("AAPL", 3)
        fake.fail[2] = web.json_response(load("error_rate_limit.json"), status=429, headers={"Retry-After": "0"})
        assert await src.poll_once(session) == []
        assert sorted(ids(await src.poll_once(session))) == new


async def test_user_stream_and_public_access(serve: Serve) -> None:
    fake = FakeStocktwits()
    src = StocktwitsSource(settings(await serve(fake.app()), symbols=[], users=["howardlindzon"]), env={})
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
    assert fake.seen == [("/api/2/streams/user/howardlindzon.json", {})]  # no key, no access_token
    assert [(p.symbol, p.source) for p in points] == [("TSLA", "stocktwits"), ("NVDA", "stocktwits"),
                                                      ("BTC.X", "stocktwits")]


def test_registry_builds_it_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STOCKTWITS_ACCESS_TOKEN", raising=False)
    s = SourcesSettings()
    s.simulated.enabled = False
    assert enabled_sources(s) == []
    s.stocktwits.enabled = True
    [src] = enabled_sources(s)
    assert isinstance(src, StocktwitsSource) and src.token is None
