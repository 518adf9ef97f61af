"""FRED observations parsing and FredSource against a local aiohttp server serving hand-written responses."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from producers.fred import FredSettings, FredSource, FredUnexpected, parse_observations, parse_series
from streams.errors import ConfigError, SourceError
from tests.unit.producers.conftest import Serve

FIX = Path(__file__).parent / "fixtures" / "fred"
KEY = "abcdef0123456789abcdef0123456789"



def load(name: str) -> Any:
    return json.loads((FIX / name).read_text())




# ---------------------------------------------------------------------------------------------- parsers


def test_vintages_are_distinct_rows_and_dot_is_missing() -> None:
    points = parse_observations(load("observations_gdp_vintages.json"), "gdp")
    assert [(p.timestamp.date(), p.item_id, p.value) for p in points] == [
        (date(2024, 4, 1), "2024-07-25", 28629.153),
        (date(2024, 4, 1), "2024-08-29", 28652.337),
        (date(2024, 4, 1), "2024-09-26", 29016.714),
        (date(2024, 7, 1), "2024-10-30", 29349.924),
        (date(2024, 10, 1), "2024-10-30", None),
    ]
    p = points[0]
    assert (p.symbol, p.source, p.data_type) == ("GDP", "fred", "economic")
    assert (p.realtime_start, p.realtime_end) == (date(2024, 7, 25), date(2024, 8, 28))
    assert points[2].realtime_end == date(9999, 12, 31)
    assert p.timestamp == datetime(2024, 4, 1, tzinfo=UTC)
    assert len({q.natural_key() for q in points}) == len(points)


def test_error_and_unexpected_payloads() -> None:
    with pytest.raises(SourceError, match="does not exist") as err:
        parse_observations(load("error_series_not_found.json"), "NOPE")
    assert err.value.retriable is False
    with pytest.raises(SourceError):
        parse_observations({"seriess": []}, "GDP")
    with pytest.raises(SourceError):
        parse_observations([], "GDP")
    doc = load("observations_unrate.json")
    doc["observations"].append({"date": "2024-12-01"})  # no realtime dates: skipped, not fatal
    assert len(parse_observations(doc, "UNRATE")) == 2


def test_key_from_environment_only() -> None:
    assert FredSettings().api_key({}) is None
    key = FredSettings().api_key({"FRED_API_KEY": KEY})
    assert isinstance(key, SecretStr) and key.get_secret_value() == KEY and KEY not in repr(key)
    with pytest.raises(ConfigError):
        FredSource(FredSettings(), env={})


# ---------------------------------------------------------------------------------------------- source


class FakeFred:
    def __init__(self, failures: dict[str, list[tuple[int, dict[str, str]]]] | None = None) -> None:
        self.seen: list[dict[str, str]] = []
        self.failures = failures or {}
        self.revise = False
        self.series_seen: list[dict[str, str]] = []
        self.series_body: Any = None  # /fred/series answer; None: the route is not there (404)

    async def observations(self, request: web.Request) -> web.Response:
        q = dict(request.query)
        self.seen.append(q)
        series = q["series_id"]
        script = self.failures.get(series)
        if script:
            status, headers = script.pop(0)
            return web.json_response({"error_code": status, "error_message": f"try later {request.url}"},
                                     status=status, headers=headers)
        if series == "NOPE":
            return web.json_response(load("error_series_not_found.json"), status=400)
        if q.get("api_key") != KEY:
            body = load("error_bad_api_key.json")
            body["error_message"] += f" (api_key={q.get('api_key')})"  # echoes the key, as a careless API might
            return web.json_response(body, status=400)
        doc = load({"GDP": "observations_gdp_vintages.json", "UNRATE": "observations_unrate.json"}[series])
        if self.revise and series == "UNRATE":
            doc["observations"][1]["realtime_end"] = "2025-01-09"  # superseded...
            doc["observations"].append({"realtime_start": "2025-01-10", "realtime_end": "9999-12-31",
                                        "date": "2024-11-01", "value": "4.3"})  # ...by a revision
        return web.json_response(doc)

    async def series(self, request: web.Request) -> web.Response:
        self.series_seen.append(dict(request.query))
        if self.series_body is None:
            return web.json_response({"error_code": 404, "error_message": "Not Found"}, status=404)
        if request.query["series_id"] == "NOPE":
            return web.json_response(load("error_series_not_found.json"), status=400)
        body = self.series_body(request.query["series_id"]) if callable(self.series_body) else self.series_body
        return web.json_response(body)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/fred/series/observations", self.observations)
        app.router.add_get("/fred/series", self.series)
        return app


def settings(base_url: str, **kw: Any) -> FredSettings:
    defaults: dict[str, Any] = {"base_url": base_url, "retry_attempts": 3, "retry_base_delay": 0.01,
                                "request_timeout_seconds": 2.0, "rate_limit_calls": 1000, "interval_seconds": 0.01,
                                "series": ["GDP", "UNRATE"]}
    return FredSettings(**{**defaults, **kw})


async def test_poll_params_and_only_new_or_changed_rows(serve: Serve) -> None:
    fake = FakeFred()
    src = FredSource(settings(await serve(fake.app()), lookback_days=365), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session, today=date(2025, 1, 15))
        assert await src.poll_once(session, today=date(2025, 1, 15)) == []
        fake.revise = True
        revised = await src.poll_once(session, today=date(2025, 1, 15))
    assert [p.symbol for p in first] == ["GDP"] * 5 + ["UNRATE"] * 2
    assert all(p.source == "fred" for p in first)
    assert fake.seen[0] == {"series_id": "GDP", "file_type": "json", "api_key": KEY, "realtime_start": "1776-07-04",
                            "realtime_end": "9999-12-31", "observation_start": "2024-01-16"}
    assert [(p.timestamp.date(), p.item_id, p.realtime_end, p.value) for p in revised] == [
        (date(2024, 11, 1), "2024-12-06", date(2025, 1, 9), 4.2),
        (date(2024, 11, 1), "2025-01-10", date(9999, 12, 31), 4.3),
    ]


class DailyVintages:
    """A daily series as ALFRED keeps one: a vintage every business day since 2010, each day's observation first
    published the next day and revised 30 days after. Like FRED, it refuses a real-time period of more than 2,000
    vintage dates and cuts the rows it answers to the period asked."""

    FIRST, END = date(2010, 1, 4), date(9999, 12, 31)

    def __init__(self) -> None:
        self.today = datetime.now(UTC).date()
        self.asked: list[tuple[str, str, int]] = []  # realtime_start, realtime_end, status

    def rows(self, since: date) -> list[tuple[date, date, date, float]]:
        out = []
        for n in range((self.today - since).days):
            d = since + timedelta(days=n)
            revised = d + timedelta(days=30)
            if revised <= self.today:
                out += [(d, d + timedelta(days=1), revised - timedelta(days=1), 5.0), (d, revised, self.END, 5.25)]
            else:
                out.append((d, d + timedelta(days=1), self.END, 5.0))
        return out

    async def observations(self, request: web.Request) -> web.Response:
        q = request.query
        a, b = date.fromisoformat(q["realtime_start"]), date.fromisoformat(q["realtime_end"])
        lo, hi = max(a, self.FIRST), min(b, self.today)
        vintages = sum(1 for n in range((hi - lo).days + 1) if (lo + timedelta(days=n)).weekday() < 5)
        self.asked.append((q["realtime_start"], q["realtime_end"], 400 if vintages > 2000 else 200))
        if vintages > 2000:
            return web.json_response({"error_code": 400, "error_message": (
                f"Bad Request.  There are {vintages} vintage dates in the specified real-time period: {a} to {b}."
                "  This exceeds the maximum number of vintage dates allowed (2000).")}, status=400)
        rows = [{"realtime_start": max(s, a).isoformat(), "realtime_end": min(e, b).isoformat(),
                 "date": d.isoformat(), "value": f"{v:.2f}"}
                for d, s, e, v in self.rows(date.fromisoformat(q["observation_start"])) if s <= b and e >= a]
        return web.json_response({"realtime_start": str(a), "realtime_end": str(b), "observations": rows})

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/fred/series/observations", self.observations)
        return app


async def test_a_daily_series_with_more_than_2000_vintages_is_asked_in_spans(serve: Serve) -> None:
    """DFF, DGS10, T10Y2Y: every poll failed with FRED's 400 (more than 2,000 vintage dates in 1776..9999)."""
    fake = DailyVintages()
    src = FredSource(settings(await serve(fake.app()), series=["DFF"], lookback_days=60, series_metadata=False),
                     api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
        calls = len(fake.asked)
        assert await src.poll_once(session) == []  # nothing new
    since = fake.today - timedelta(days=60)
    assert sorted((p.timestamp.date(), p.realtime_start, p.realtime_end, p.value) for p in points) == sorted(
        fake.rows(since))  # every vintage whole: none cut at a span's boundary, none twice
    assert all(p.item_id == p.realtime_start.isoformat() for p in points if p.realtime_start)
    assert fake.asked[0] == ("1776-07-04", "9999-12-31", 400)
    spans = [(a, b) for a, b, status in fake.asked[1:calls] if status == 200]
    assert spans[0][0] == "1776-07-04" and spans[-1][1] == "9999-12-31" and all(  # the whole period, no overlap
        date.fromisoformat(b) + timedelta(days=1) == date.fromisoformat(a2) for (_, b), (a2, _) in pairwise(spans))
    assert [(a, b) for a, b, _ in fake.asked[calls:]] == spans  # the spans remembered: no refused call again
    assert len(spans) == 3  # five-year steps back from today: no span of the empty centuries before 2010


async def test_without_vintages_and_history(serve: Serve) -> None:
    fake = FakeFred()
    src = FredSource(settings(await serve(fake.app()), vintages=False), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        points = await src.history(session, "unrate", date(2024, 1, 1), date(2024, 12, 31))
    assert len(points) == 2
    assert fake.seen[0] == {"series_id": "UNRATE", "file_type": "json", "api_key": KEY,
                            "observation_start": "2024-01-01", "observation_end": "2024-12-31"}


@pytest.mark.parametrize("status,headers", [(429, {"Retry-After": "0"}), (500, {})])
async def test_retry_then_success(serve: Serve, status: int, headers: dict[str, str]) -> None:
    fake = FakeFred({"GDP": [(status, headers)]})
    src = FredSource(settings(await serve(fake.app())), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        points = await src.observations(session, "GDP")
    assert len(points) == 5 and len(fake.seen) == 2


@pytest.mark.parametrize("series", ["NOPE", "BADKEY", "DOWN", "LIMIT"])
async def test_failures_redacted_and_others_continue(serve: Serve, caplog: pytest.LogCaptureFixture,
                                                     series: str) -> None:
    fake = FakeFred({"DOWN": [(500, {})] * 6, "LIMIT": [(429, {"Retry-After": "0"})] * 6})
    base = await serve(fake.app())
    wrong = "0000wrongkey0000wrongkey0000wron"
    key = wrong if series == "BADKEY" else KEY
    src = FredSource(settings(base, series=[series if series != "BADKEY" else "GDP", "UNRATE"]),
                     api_key=SecretStr(key))
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
        with pytest.raises(SourceError) as err:
            await src.observations(session, series if series != "BADKEY" else "GDP")
    assert key not in caplog.text and key not in str(err.value)
    assert err.value.retriable is (series in ("DOWN", "LIMIT"))
    if series == "BADKEY":
        assert points == [] and "api_key=***" in str(err.value)
    else:
        assert [p.symbol for p in points] == ["UNRATE", "UNRATE"]
        assert f"fred: {series} failed" in caplog.text


async def test_fetch_yields_then_waits_for_changes(serve: Serve) -> None:
    fake = FakeFred()
    src = FredSource(settings(await serve(fake.app()), series=["UNRATE"]), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        gen = src.fetch(session)
        first = await anext(gen)
        fake.revise = True
        second = await anext(gen)
        await gen.aclose()
    assert [len(first), len(second)] == [2, 2]


# ---------------------------------------------------------------------------------------------- metadata, vintages


def unrate_series(series_id: str = "UNRATE", last_updated: str = "2025-01-10 07:48:02-06") -> dict[str, Any]:
    doc = load("series_unrate.json")
    doc["seriess"][0]["id"] = series_id
    doc["seriess"][0]["last_updated"] = last_updated
    return doc


def test_parse_series_metadata() -> None:
    meta = parse_series(load("series_unrate.json"), "UNRATE")
    assert meta == {
        "title": "Unemployment Rate", "units": "Percent", "units_short": "%", "frequency": "Monthly",
        "frequency_short": "M", "seasonal_adjustment": "Seasonally Adjusted", "seasonal_adjustment_short": "SA",
        "last_updated": "2025-01-10T13:48:02+00:00",
    }
    with pytest.raises(FredUnexpected, match="seriess"):
        parse_series({"seriess": []}, "UNRATE")
    with pytest.raises(SourceError, match="does not exist"):
        parse_series(load("error_series_not_found.json"), "NOPE")


def test_by_vintage_rows_give_one_point_per_published_vintage() -> None:
    points = parse_observations(load("observations_gdp_by_vintage.json"), "GDP", metadata={"units": "Bil. $"})
    assert [(p.timestamp.date(), p.realtime_start, p.item_id, p.value) for p in points] == [
        (date(2024, 4, 1), date(2024, 7, 25), "2024-07-25", 28629.153),
        (date(2024, 4, 1), date(2024, 8, 29), "2024-08-29", 28652.337),
        (date(2024, 4, 1), date(2024, 9, 26), "2024-09-26", 29016.714),
        (date(2024, 7, 1), date(2024, 10, 30), "2024-10-30", 29349.924),
    ]
    assert all(p.realtime_end is None for p in points)
    assert points[0].metadata == {"units": "Bil. $", "output_type": 3}


def test_observations_of_no_readable_shape_are_unexpected() -> None:
    with pytest.raises(FredUnexpected, match="none of 2"):
        parse_observations({"observations": [{"when": "x"}, {"date": "2024-01-01", "val": "1"}]}, "GDP")


async def test_metadata_attached_and_unchanged_series_not_asked_again(serve: Serve) -> None:
    fake = FakeFred()
    fake.series_body = unrate_series
    src = FredSource(settings(await serve(fake.app()), series=["UNRATE"]), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session, today=date(2025, 1, 15))
        again = await src.poll_once(session, today=date(2025, 1, 15))
        fake.revise = True
        fake.series_body = lambda sid: unrate_series(sid, "2025-01-10 08:30:00-06")
        revised = await src.poll_once(session, today=date(2025, 1, 15))
    assert len(first) == 2 and again == [] and len(revised) == 2
    assert first[0].metadata["units"] == "Percent" and first[0].metadata["frequency_short"] == "M"
    assert first[0].metadata["seasonal_adjustment"] == "Seasonally Adjusted"
    assert first[0].metadata["title"] == "Unemployment Rate"
    assert revised[0].metadata["last_updated"] == "2025-01-10T14:30:00+00:00"
    assert len(fake.series_seen) == 3  # once per series per cycle
    assert len(fake.seen) == 2  # the unchanged cycle asked no observations
    assert fake.series_seen[0] == {"series_id": "UNRATE", "file_type": "json", "api_key": KEY}


async def test_metadata_failure_still_fetches_observations_and_warns_once(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFred()
    fake.series_body = {"seriess": "nope"}
    src = FredSource(settings(await serve(fake.app()), series=["GDP", "UNRATE"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        first = await src.poll_once(session, today=date(2025, 1, 15))
        await src.poll_once(session, today=date(2025, 1, 15))
    assert len(first) == 7 and all("units" not in p.metadata for p in first)
    assert src.unexpected == {"series": 4}
    assert caplog.text.count("unexpected /fred/series payload") == 1
    assert KEY not in caplog.text


async def test_unknown_series_is_warned_once_and_counted(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeFred()
    fake.series_body = unrate_series
    src = FredSource(settings(await serve(fake.app()), series=["NOPE", "UNRATE"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            await src.poll_once(session, today=date(2025, 1, 15))
    assert src.unknown == {"NOPE": 3}
    assert caplog.text.count("does not know this series") == 1
    assert not any(q["series_id"] == "NOPE" for q in fake.seen)  # /fred/series said so: no observations call


@pytest.mark.parametrize(("kw", "expected"), [
    ({}, {"realtime_start": "1776-07-04", "realtime_end": "9999-12-31"}),
    ({"output_type": 2}, {"realtime_start": "1776-07-04", "realtime_end": "9999-12-31", "output_type": "2"}),
    ({"output_type": 4, "realtime_start": date(2020, 1, 1)},
     {"realtime_start": "2020-01-01", "realtime_end": "9999-12-31", "output_type": "4"}),
    ({"vintages": False, "realtime_start": date(2024, 1, 1), "realtime_end": date(2024, 6, 30), "output_type": 3},
     {"realtime_start": "2024-01-01", "realtime_end": "2024-06-30", "output_type": "3"}),
    ({"vintages": False}, {}),
])
async def test_vintage_settings_reach_the_request(serve: Serve, kw: dict[str, Any], expected: dict[str, str]) -> None:
    fake = FakeFred()
    src = FredSource(settings(await serve(fake.app()), series_metadata=False, **kw), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        await src.observations(session, "UNRATE")
    sent = {k: v for k, v in fake.seen[0].items() if k in ("realtime_start", "realtime_end", "output_type")}
    assert sent == expected
    assert fake.series_seen == []


def test_realtime_period_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="after"):
        FredSettings(realtime_start=date(2025, 1, 2), realtime_end=date(2025, 1, 1))
