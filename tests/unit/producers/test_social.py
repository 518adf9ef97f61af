"""X recent search (scored by producers/sentiment.py, tested in test_sentiment.py), against a local aiohttp server
with hand-written fixtures."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from producers.sentiment import SENTIMENT_METHOD, lexicon_sentiment
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
    assert (bull.sentiment, bear.sentiment) == (lexicon_sentiment(bull.text), lexicon_sentiment(bear.text))
    assert bull.metadata["sentiment_method"] == SENTIMENT_METHOD
    assert bull.metadata["public_metrics"]["like_count"] == 10 and bull.metadata["lang"] == "en"
    assert bear.metadata["cashtags"] == ["AAPL", "MSFT"]


def test_parse_search_empty_and_errors() -> None:
    assert parse_search(load("search_empty.json"), "AAPL") == ([], None)
    with pytest.raises(SourceError, match="Invalid query"):
        parse_search(load("invalid_query.json"), "AAPL")


def test_snowflake_time_when_created_at_is_missing() -> None:
    doc = {"data": [{"id": "1578516068309794817", "text": "hello $AAPL"}], "meta": {"result_count": 1}}
    [p], _ = parse_search(doc, "AAPL")
    assert p.timestamp == snowflake_time("1578516068309794817")
    assert p.timestamp.replace(microsecond=0) == datetime(2022, 10, 7, 22, 42, 12, tzinfo=UTC)


def test_text_is_unescaped_before_it_is_stored_and_scored() -> None:
    """X API v2 sends &, < and > in `text` as &amp; &lt; &gt;."""
    doc = {"data": [{"id": "1796000000000000009", "text": "$AAPL &gt; $MSFT &amp; I &lt;3 it, great quarter",
                     "created_at": "2024-05-30T14:00:09.000Z", "author_id": "2244994945"}],
           "includes": {"users": [{"id": "2244994945", "name": "X Developers", "username": "XDevelopers"}]},
           "meta": {"result_count": 1, "newest_id": "1796000000000000009", "oldest_id": "1796000000000000009"}}
    [p], _ = parse_search(doc, "AAPL")
    assert p.text == "$AAPL > $MSFT & I <3 it, great quarter"
    # scored as read: VADER knows "<3", not "&lt;3"
    assert p.sentiment == lexicon_sentiment(p.text) != lexicon_sentiment(doc["data"][0]["text"])
    assert p.metadata["cashtags"] == ["AAPL", "MSFT"] and p.metadata["author_username"] == "XDevelopers"


def test_cashtags() -> None:
    assert cashtags("$aapl and $BRK.B vs $AAPL, not $5") == ["AAPL", "BRK.B"]


def test_token_from_environment_only() -> None:
    assert SocialSettings().api_key({}) is None
    token = SocialSettings().api_key({"TWITTER_BEARER_TOKEN": TOKEN})
    assert isinstance(token, SecretStr) and TOKEN not in repr(token)
    with pytest.raises(ConfigError):
        SocialSource(SocialSettings(), env={})


# ---------------------------------------------------------------------------------------------- source


# Ids of posts made an hour ago: X refuses a since_id older than its 7 days, so the source drops one that old.
BASE_ID = (int(time.time() * 1000) - 3_600_000 - 1288834974657) << 22


class FakeX:
    """X API v2 recent search over an in-memory timeline, as documented: newest first, `max_results` per page,
    since_id / until_id / start_time filters, meta {newest_id, oldest_id, result_count, next_token}; a
    next_token is valid only with the query it came from. Every post matches the query (X's matching is
    looser than the text: the source checks the cashtag itself)."""

    def __init__(self, tweets: list[dict[str, str]] | None = None) -> None:
        self.tweets = tweets or []
        self.seen: list[tuple[dict[str, str], dict[str, str]]] = []
        self.fail_tokens: dict[str, int] = {}  # next_token -> status to answer once

    def post(self, n: int, text: str = "$AAPL looks strong", start: int = 0, author_id: str = "111") -> list[str]:
        ids = [str(BASE_ID + start + i) for i in range(n)]
        for tid in ids:
            self.tweets.append({"id": tid, "text": text, "created_at": "2024-05-30T14:00:00.000Z",
                                "author_id": author_id})
        return ids

    async def search(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.seen.append((dict(q), dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401, body=(FIX / "unauthorized.json").read_bytes(),
                                content_type="application/json")
        if q["query"].startswith("$FAIL"):
            # Echo the credentials back in an error, as a careless proxy might.
            return web.json_response({"detail": f"{request.headers['Authorization']} at {request.url}"}, status=403)
        if ("since_id" in q or "until_id" in q) and ("start_time" in q or "end_time" in q):
            return web.json_response({"errors": [{"message": "Invalid use of 'since_id' or 'until_id' in conjunction "
                                                             "with 'start_time' or 'end_time'"}],
                                      "title": "Invalid Request"}, status=400)
        if "since_id" in q and snowflake_time(q["since_id"]) < datetime.now(UTC) - timedelta(days=7):
            return web.json_response({"errors": [{"message": "Invalid 'since_id':'...'. 'since_id' must be a tweet id "
                                                             "created after ..."}],
                                      "title": "Invalid Request"}, status=400)
        token = q.pop("next_token", None)
        if token and token in self.fail_tokens:
            return web.json_response({"title": "Invalid Request"}, status=self.fail_tokens.pop(token))
        rows = sorted(self.tweets, key=lambda t: int(t["id"]), reverse=True)
        if q["query"].startswith("$NONE"):
            rows = []
        if "since_id" in q:
            rows = [t for t in rows if int(t["id"]) > int(q["since_id"])]
        if "until_id" in q:
            rows = [t for t in rows if int(t["id"]) < int(q["until_id"])]
        if token:  # a cursor: the posts below the last one of the previous page, whatever arrived since
            key, _, below = token.rpartition(":")
            assert key == str(hash(tuple(sorted(q.items())))), "next_token used with other parameters"
            rows = [t for t in rows if int(t["id"]) < int(below)]
        size = int(q["max_results"])
        page = rows[:size]
        meta: dict[str, Any] = {"result_count": len(page)}
        if page:
            meta.update(newest_id=page[0]["id"], oldest_id=page[-1]["id"])
        if size < len(rows):
            meta["next_token"] = f"{hash(tuple(sorted(q.items())))}:{page[-1]['id']}"
        body: dict[str, Any] = {"data": page, "meta": meta} if page else {"meta": meta}
        if page and "author_id" in q.get("expansions", "").split(","):  # X's default user fields: id, name, username
            authors = dict.fromkeys(t["author_id"] for t in page)
            body["includes"] = {"users": [{"id": a, "name": f"User {a}", "username": f"user{a}"} for a in authors]}
        return web.json_response(body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/2/tweets/search/recent", self.search)
        return app


def settings(base_url: str, **kw: Any) -> SocialSettings:
    defaults: dict[str, Any] = {
        "symbols": ["AAPL"], "base_url": base_url, "retry_attempts": 1, "retry_base_delay": 0.01,
        "request_timeout_seconds": 2.0, "rate_limit_calls": 1000, "interval_seconds": 0.01, "max_results": 10,
    }
    return SocialSettings(**{**defaults, **kw})


NOW = datetime(2024, 5, 30, 15, 0, tzinfo=UTC)


async def test_every_page_is_read_across_polls_none_skipped(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeX()
    first_batch = fake.post(25)
    base = await serve(fake.app())
    src = SocialSource(settings(base, max_pages=2), bearer_token=SecretStr(TOKEN))
    caplog.set_level(logging.INFO)
    async with aiohttp.ClientSession() as session:
        one = await src.poll_once(session, NOW)  # 2 of 3 pages: the cap
        assert "max_pages (2) reached" in caplog.text and "20 posts from 2 pages" in caplog.text
        assert any(r.levelno == logging.WARNING for r in caplog.records if "max_pages" in r.getMessage())
        assert src.since_id == {}  # not moved before the result set is read whole
        newer = fake.post(3, start=100)  # arrive meanwhile
        two = await src.poll_once(session, NOW)  # the third page, same start_time, then since_id moves
        assert src.since_id == {"AAPL": max(first_batch, key=int)}
        three = await src.poll_once(session, NOW)  # what arrived meanwhile
        four = await src.poll_once(session, NOW)
    read = [p.item_id for p in one + two + three]
    assert sorted(read) == sorted(first_batch + newer) and len(read) == len(set(read))  # each once, none lost
    assert [len(one), len(two), len(three), four] == [20, 5, 3, []]
    queries = [q for q, _ in fake.seen]
    assert queries[0]["start_time"] == "2024-05-30T14:00:00Z" and "since_id" not in queries[0]
    assert queries[2]["start_time"] == "2024-05-30T14:00:00Z" and "next_token" in queries[2]
    assert queries[3]["since_id"] == max(first_batch, key=int) and "start_time" not in queries[3]
    assert queries[0]["tweet.fields"] == "created_at,public_metrics,lang,author_id"
    assert queries[0]["query"] == "$AAPL -is:retweet"
    assert all(h["Authorization"] == f"Bearer {TOKEN}" for _, h in fake.seen)


async def test_author_username_is_asked_for_and_stored(serve: Serve) -> None:
    fake = FakeX()
    fake.post(1, author_id="111")
    fake.post(1, "$AAPL &amp; $MSFT", start=1, author_id="222")
    base = await serve(fake.app())
    src = SocialSource(settings(base), bearer_token=SecretStr(TOKEN))
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, NOW)
    query = fake.seen[0][0]
    assert query["expansions"] == "author_id" and "username" in query["user.fields"].split(",")
    assert sorted((p.metadata["author_id"], p.metadata["author_username"]) for p in points) == [
        ("111", "user111"), ("222", "user222")]
    assert {p.text for p in points} == {"$AAPL looks strong", "$AAPL & $MSFT"}


async def test_only_posts_with_the_cashtag_in_their_text_are_tagged(serve: Serve) -> None:
    fake = FakeX()
    tagged = fake.post(1, "$aapl breaking out", start=0) + fake.post(1, "long $MSFT and $AAPL", start=1)
    fake.post(1, "AAPL without the dollar", start=2)
    fake.post(1, "quoting a post about $AAPLX", start=3)
    fake.post(1, "look at this chart", start=4)  # matched by a quoted post or a link card only
    base = await serve(fake.app())
    src = SocialSource(settings(base), bearer_token=SecretStr(TOKEN))
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, NOW)
    assert sorted(p.item_id for p in points) == sorted(tagged)
    assert all(p.symbol == "AAPL" and p.source == "social" for p in points)
    assert src.since_id["AAPL"] == str(BASE_ID + 4)  # the untagged newest still counts as read


async def test_a_failed_page_is_asked_again_next_poll(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeX()
    ids = fake.post(25)
    base = await serve(fake.app())
    src = SocialSource(settings(base, max_pages=5), bearer_token=SecretStr(TOKEN))
    async with aiohttp.ClientSession() as session:
        doc = await (await session.get(f"{base}/2/tweets/search/recent", headers={"Authorization": f"Bearer {TOKEN}"},
                                       params=src._new_walk("AAPL", NOW).params)).json()
        fake.fail_tokens[doc["meta"]["next_token"]] = 503
        fake.seen.clear()
        one = await src.poll_once(session, NOW)
        assert "page 2 failed, 10 posts read this poll kept" in caplog.text
        two = await src.poll_once(session, NOW)
    assert len(one) == 10 and len(two) == 15
    assert sorted(p.item_id for p in one + two) == sorted(ids)
    assert fake.seen[2][0]["next_token"] == fake.seen[1][0]["next_token"]  # the same page again


async def test_a_refused_page_token_goes_on_below_the_oldest_read(serve: Serve) -> None:
    fake = FakeX()
    ids = fake.post(25)
    base = await serve(fake.app())
    src = SocialSource(settings(base, max_pages=1), bearer_token=SecretStr(TOKEN))
    async with aiohttp.ClientSession() as session:
        one = await src.poll_once(session, NOW)
        fake.fail_tokens[src.walks["AAPL"].next_token or ""] = 400  # expired
        assert await src.poll_once(session, NOW) == []
        two = await src.poll_once(session, NOW)
        three = await src.poll_once(session, NOW)
    # X refuses until_id beside start_time (the first result set's bound): it gives way
    assert fake.seen[2][0]["until_id"] == min((p.item_id for p in one), key=int)
    assert "start_time" in fake.seen[0][0] and "start_time" not in fake.seen[2][0]
    assert sorted(p.item_id for p in one + two + three) == sorted(ids)
    assert src.since_id["AAPL"] == max(ids, key=int)


async def test_a_since_id_older_than_the_search_window_gives_way_to_the_window(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """A quiet cashtag, or a week of downtime: X refuses the stored since_id at every poll, for good."""
    fake = FakeX()
    ids = fake.post(3)
    base = await serve(fake.app())
    src = SocialSource(settings(base), bearer_token=SecretStr(TOKEN))
    now = datetime.now(UTC)
    stale = str((int((now - timedelta(days=9)).timestamp() * 1000) - 1288834974657) << 22)
    src.since_id["AAPL"] = stale
    src.walks["AAPL"] = src._new_walk("AAPL", now - timedelta(days=8))  # and an unfinished result set that old
    src.since_id["AAPL"] = stale
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, now)
    assert sorted(p.item_id for p in points) == sorted(ids)
    assert "since_id" not in fake.seen[0][0] and fake.seen[0][0]["start_time"] < now.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "older than recent search's 7 days" in caplog.text
    assert src.since_id["AAPL"] == max(ids, key=int)


async def test_an_unfinished_result_set_whose_start_left_the_window_goes_on_below_what_it_read(
        serve: Serve) -> None:
    """A busy cashtag read back 7 days (or after a week's downtime): the start_time is X's window's edge, so by
    the next poll it has left the window; the result set was dropped and begun again at every poll, for good."""
    fake = FakeX()
    ids = fake.post(25)
    base = await serve(fake.app())
    src = SocialSource(settings(base, max_pages=1, lookback_seconds=7 * 86400), bearer_token=SecretStr(TOKEN))
    now = datetime.now(UTC)
    got = []
    async with aiohttp.ClientSession() as session:
        for i in range(4):
            got += await src.poll_once(session, now + timedelta(minutes=10 * i))
    assert sorted(p.item_id for p in got) == sorted(ids)  # every post once
    assert "until_id" in fake.seen[1][0] and "start_time" not in fake.seen[1][0]
    assert src.since_id["AAPL"] == max(ids, key=int)


async def test_failing_symbol_is_logged_redacted_and_others_continue(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeX()
    fake.post(2)
    base = await serve(fake.app())
    src = SocialSource(settings(base, symbols=["FAIL", "NONE", "AAPL"]), bearer_token=SecretStr(TOKEN))
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, NOW)
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
    fake.post(2)
    base = await serve(fake.app())
    src = SocialSource(settings(base), bearer_token=SecretStr(TOKEN))
    async with aiohttp.ClientSession() as session:
        gen = src.fetch(session)
        first = await anext(gen)
        fake.post(3, start=10)
        second = await anext(gen)
        await gen.aclose()
    assert [len(first), len(second)] == [2, 3]
