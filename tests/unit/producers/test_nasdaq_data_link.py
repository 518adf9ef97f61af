"""Nasdaq Data Link datasets and datatables against a local aiohttp server serving hand-written fixtures."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

from producers.nasdaq_data_link import (
    DatasetQuery,
    DatatableQuery,
    NasdaqDataLinkSettings,
    NasdaqDataLinkSource,
    NdlUnexpected,
    normalise,
    parse_body,
    parse_csv,
    parse_dataset,
    parse_datatable,
    parse_table,
)
from streams.errors import ConfigError, SourceError
from tests.unit.producers.conftest import Serve

FIX = Path(__file__).parent / "fixtures" / "nasdaq_data_link"
KEY = "ndl_SECRET_key_abcdef123456"


def load(name: str) -> Any:
    return json.loads((FIX / name).read_text())






# ---------------------------------------------------------------------------------------------- parsers


def test_normalise_column_names() -> None:
    assert normalise("Adj. Close") == "adj close"
    assert normalise("per_end_date") == "per end date"
    assert normalise("  SETTLE ") == "settle"


def test_futures_dataset_settle_is_the_close_and_last_goes_to_metadata() -> None:
    bars = parse_dataset(load("dataset_chris_cme_cl1.json"), "CHRIS/CME_CL1")
    assert len(bars) == 3
    b = bars[0]
    assert (b.symbol, b.source, b.data_type, b.interval, b.item_id) == (
        "CME_CL1", "nasdaq_data_link", "bar", "1d", "CHRIS/CME_CL1")
    assert b.timestamp == datetime(2024, 5, 29, tzinfo=UTC)
    assert (b.open, b.high, b.low, b.close, b.volume) == (79.5, 80.1, 78.9, 79.23, 250123.0)
    assert b.metadata == {"Last": 79.2, "Change": -0.3, "Previous Day Open Interest": 310000.0}
    assert bars[2].volume is None and "Change" not in bars[2].metadata


def test_wiki_dataset_keeps_raw_prices_and_adjusted_in_metadata() -> None:
    bars = parse_dataset(load("dataset_wiki_aapl.json"), "WIKI/AAPL")
    assert len(bars) == 1  # the row without an Open is skipped, not half-filled
    b = bars[0]
    assert (b.symbol, b.close, b.volume) == ("AAPL", 168.34, 38962839.0)
    assert b.metadata["Adj. Close"] == 168.34 and b.metadata["Split Ratio"] == 1.0
    assert "Close" not in b.metadata and "Open" not in b.metadata


def test_value_dataset_is_economic() -> None:
    points = parse_dataset(load("dataset_fred_gdp.json"), "FRED/GDP")
    assert [(p.symbol, p.data_type, p.value) for p in points] == [
        ("GDP", "economic", 27956.998), ("GDP", "economic", 28269.174)]
    assert points[1].timestamp == datetime(2024, 1, 1, tzinfo=UTC)
    assert points[0].metadata == {} and points[0].interval is None


def test_dataset_without_value_column_uses_first_numeric_and_year_as_date() -> None:
    points = parse_dataset(load("dataset_snap_participation.json"), "USDAFNS/SNAP")
    p = points[0]
    assert (p.symbol, p.data_type, p.value) == ("SNAP", "economic", 46609072.0)
    assert p.timestamp == datetime(2012, 12, 31, tzinfo=UTC)
    assert p.metadata == {"value_column": "Avg Participation", "Avg Benefit per Person": 133.41}


def test_parse_table_date_column_by_type_and_bad_rows() -> None:
    rows = [["x", "2024-02-01", 1.5], ["y", "not a date", 2.0], ["z"]]
    points = parse_table(["code", "as_at", "Rate"], rows, symbol="EUR", item_id="T/X",
                         types=["String", "Date", "Float"])
    assert [(p.timestamp.date(), p.value, p.metadata) for p in points] == [
        (date(2024, 2, 1), 1.5, {"code": "x", "value_column": "Rate"})]


def test_parse_datatable_symbol_column_and_cursor() -> None:
    points, cursor = parse_datatable(load("datatable_prices_page1.json"), "WIKI/PRICES")
    assert cursor == "cursor-page-2"
    assert [(p.symbol, p.data_type, p.close) for p in points] == [("AAPL", "bar", 172.77), ("AAPL", "bar", 168.34)]
    assert points[0].metadata == {"adj_close": 172.77} and points[0].item_id == "WIKI/PRICES"
    _, last = parse_datatable(load("datatable_prices_page2.json"), "WIKI/PRICES")
    assert last is None


def test_rows_of_one_ticker_and_date_are_told_apart_by_their_key_columns() -> None:
    """Sharadar's SF1 holds a row per dimension (ARQ, ART, MRQ, MRY) for each ticker and date: all four had
    one natural key, and the sink kept one of them."""
    points, _ = parse_datatable(load("datatable_sharadar_sf1.json"), "SHARADAR/SF1")
    assert [(p.symbol, p.item_id, p.value) for p in points] == [
        ("AAPL", "SHARADAR/SF1|dimension=ARQ", 85777000000.0), ("AAPL", "SHARADAR/SF1|dimension=ART", 385603000000.0),
        ("AAPL", "SHARADAR/SF1|dimension=MRQ", 85777000000.0), ("AAPL", "SHARADAR/SF1|dimension=MRY", 391035000000.0)]
    assert len({p.natural_key() for p in points}) == 4
    assert points[0].metadata["netinc"] == 21448000000.0 and points[0].metadata["value_column"] == "revenue"
    points, _ = parse_datatable(load("datatable_sharadar_sf1.json"), "SHARADAR/SF1", key_columns=["reportperiod"])
    assert [p.item_id for p in points][-2:] == ["SHARADAR/SF1|reportperiod=2024-06-29",
                                                "SHARADAR/SF1|reportperiod=2024-09-28"]


async def test_rows_that_share_a_key_are_warned_of_once_and_counted(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNdl()
    table = DatatableQuery(code="SHARADAR/SF1", key_columns=[])  # told not to use dimension
    src = NasdaqDataLinkSource(settings(await serve(fake.app()), datatables=[table]), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        assert len(await src.poll_once(session)) == 4
        assert len(await src.poll_once(session)) == 4
    assert caplog.text.count("SHARADAR/SF1 has rows with the same symbol, date and key columns") == 1
    assert "(these differ: dimension)" in caplog.text and src.collisions["SHARADAR/SF1"] == 2


def test_parse_rejects_unexpected_payloads() -> None:
    with pytest.raises(SourceError):
        parse_dataset(load("error_incorrect_code.json"), "NOPE/NOPE")
    with pytest.raises(SourceError):
        parse_datatable([], "WIKI/PRICES")


def test_key_env_names() -> None:
    assert NasdaqDataLinkSettings().api_key({}) is None
    assert NasdaqDataLinkSettings().api_key({"QUANDL_API_KEY": "q"}).get_secret_value() == "q"  # type: ignore[union-attr]
    both = {"QUANDL_API_KEY": "q", "NASDAQ_DATA_LINK_API_KEY": "n"}
    key = NasdaqDataLinkSettings().api_key(both)
    assert isinstance(key, SecretStr) and key.get_secret_value() == "n"
    with pytest.raises(ConfigError):
        NasdaqDataLinkSource(NasdaqDataLinkSettings(), env={})


# ---------------------------------------------------------------------------------------------- source


class FakeNdl:
    def __init__(self, cursor_failures: list[int] | None = None) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.cursor_failures = cursor_failures or []  # statuses answered, in turn, to requests with a cursor

    async def dataset(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.query)))
        name = f"{request.match_info['db']}/{request.match_info['code']}"
        files = {"CHRIS/CME_CL1": "dataset_chris_cme_cl1.json", "FRED/GDP": "dataset_fred_gdp.json",
                 "WIKI/AAPL": "dataset_wiki_aapl.csv", "USDAFNS/SNAP": "dataset_snap_v1_legacy.csv",
                 "WIKI/RDIFF": "dataset_wiki_aapl_rdiff_monthly.json"}
        if name == "ODD/SHAPE":
            return web.json_response({"dataset": {"data": []}})
        if name == "ODD/CSV":
            return web.Response(text="just one line without columns\n", content_type="text/csv")
        if name == "SLOW/ONE":
            await asyncio.sleep(1.0)
        if name == "TRUNC/ONE":
            return web.Response(body=(FIX / "dataset_fred_gdp.json").read_bytes()[:40], content_type="application/json")
        if name == "LIMIT/ONE":
            return web.json_response({"quandl_error": {"code": "QELx01", "message": f"limit for {request.url}"}},
                                     status=429, headers={"Retry-After": "0"})
        if name == "DOWN/ONE":
            return web.json_response({"quandl_error": {"code": "QEMx01", "message": f"{request.url}"}}, status=500)
        if name not in files:
            body = load("error_incorrect_code.json")
            body["quandl_error"]["message"] += f" ({request.url})"  # echoes the key back, as a careless API might
            return web.json_response(body, status=404)
        kind = "text/csv" if files[name].endswith(".csv") else "application/json"
        return web.Response(body=(FIX / files[name]).read_bytes(), content_type=kind)

    async def datatable(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.query)))
        if request.query.get("qopts.cursor_id") and self.cursor_failures:
            return web.json_response({"quandl_error": {"code": "QEPx04", "message": "cursor refused"}},
                                     status=self.cursor_failures.pop(0))
        page = "datatable_prices_page2.json" if request.query.get("qopts.cursor_id") else "datatable_prices_page1.json"
        if request.match_info["db"] == "SHARADAR":
            page = "datatable_sharadar_sf1.json"
        return web.Response(body=(FIX / page).read_bytes(), content_type="application/json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v3/datasets/{db}/{code}/data.json", self.dataset)
        app.router.add_get("/api/v3/datasets/{db}/{code}/data.csv", self.dataset)
        app.router.add_get("/api/v3/datatables/{db}/{code}.json", self.datatable)
        return app


def settings(base_url: str, **kw: Any) -> NasdaqDataLinkSettings:
    defaults: dict[str, Any] = {
        "base_url": base_url, "retry_attempts": 2, "retry_base_delay": 0.01, "request_timeout_seconds": 0.3,
        "rate_limit_calls": 1000, "interval_seconds": 0.01,
    }
    return NasdaqDataLinkSettings(**{**defaults, **kw})


async def test_source_datasets_and_paged_datatable(serve: Serve) -> None:
    fake = FakeNdl()
    base = await serve(fake.app())
    s = settings(base, datasets=["CHRIS/CME_CL1", "FRED/GDP"], lookback_days=10,
                 datatables=[DatatableQuery(code="WIKI/PRICES", params={"ticker": "AAPL,MSFT"})])
    src = NasdaqDataLinkSource(s, api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, today=date(2024, 6, 1))
    assert [p.data_type for p in points] == ["bar"] * 3 + ["economic"] * 2 + ["bar"] * 3
    assert [p.symbol for p in points[-3:]] == ["AAPL", "AAPL", "MSFT"]
    assert all(p.source == "nasdaq_data_link" for p in points)
    assert all(q["api_key"] == KEY for _, q in fake.seen)
    assert fake.seen[0][1]["start_date"] == "2024-05-22" and fake.seen[0][1]["order"] == "asc"
    tables = [q for p, q in fake.seen if "datatables" in p]
    assert [q.get("qopts.cursor_id") for q in tables] == [None, "cursor-page-2"]
    assert all(q["ticker"] == "AAPL,MSFT" for q in tables)


async def test_max_pages_bounds_pagination(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNdl()
    base = await serve(fake.app())
    src = NasdaqDataLinkSource(settings(base, max_pages=1), api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        points = await src.datatable(session, DatatableQuery(code="WIKI/PRICES"))
    assert len(points) == 2 and len(fake.seen) == 1
    assert "more than max_pages=1 pages per poll; the next poll continues at page 2" in caplog.text


async def test_pages_past_max_pages_are_read_by_the_next_poll(serve: Serve) -> None:
    """The cursor where a poll stopped is kept per query: the next poll continues there (nothing skipped), and
    after the last page the one after starts again at page 1. Another query of the same code has its own."""
    fake = FakeNdl()
    table = DatatableQuery(code="WIKI/PRICES", params={"ticker": "AAPL,MSFT"})
    other = DatatableQuery(code="WIKI/PRICES", params={"ticker": "MSFT"})
    src = NasdaqDataLinkSource(settings(await serve(fake.app()), max_pages=1, datatables=[table]),
                               api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        polls = [await src.poll_once(session) for _ in range(3)]
        assert [p.symbol for p in await src.datatable(session, other)] == ["AAPL", "AAPL"]  # its own first page
    assert [[(p.symbol, p.timestamp.day) for p in points] for points in polls] == [
        [("AAPL", 26), ("AAPL", 27)], [("MSFT", 27)], [("AAPL", 26), ("AAPL", 27)]]
    assert [q.get("qopts.cursor_id") for _, q in fake.seen] == [None, "cursor-page-2", None, None]


@pytest.mark.parametrize("status,next_cursor", [(500, "cursor-page-2"), (400, None)])
async def test_a_failed_continuation_keeps_or_drops_the_cursor(
        serve: Serve, caplog: pytest.LogCaptureFixture, status: int, next_cursor: str | None) -> None:
    """A retriable failure asks for the same page at the next poll; a refused cursor (expired, say) is dropped,
    so the table starts again at page 1 rather than failing forever."""
    fake = FakeNdl(cursor_failures=[status] * 2)  # get_json's two attempts
    table = DatatableQuery(code="WIKI/PRICES")
    src = NasdaqDataLinkSource(settings(await serve(fake.app()), max_pages=1, datatables=[table]),
                               api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        await src.poll_once(session)
        assert await src.poll_once(session) == []
        await src.poll_once(session)
    asked = [q.get("qopts.cursor_id") for _, q in fake.seen]
    assert asked[0] is None and set(asked[1:-1]) == {"cursor-page-2"} and asked[-1] == next_cursor
    assert KEY not in caplog.text


@pytest.mark.parametrize("dataset", ["NOPE/NOPE", "LIMIT/ONE", "DOWN/ONE", "SLOW/ONE", "TRUNC/ONE"])
async def test_failures_are_logged_redacted_and_do_not_stop_others(
        serve: Serve, caplog: pytest.LogCaptureFixture, dataset: str) -> None:
    fake = FakeNdl()
    base = await serve(fake.app())
    src = NasdaqDataLinkSource(settings(base, datasets=[dataset, "FRED/GDP"]), api_key=SecretStr(KEY))
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session)
        with pytest.raises(SourceError) as err:
            await src.dataset(session, dataset)
    assert [p.symbol for p in points] == ["GDP", "GDP"]
    assert f"dataset {dataset} failed" in caplog.text
    assert KEY not in caplog.text and KEY not in str(err.value)
    if dataset == "NOPE/NOPE":
        assert "404" in str(err.value) and err.value.retriable is False
        assert "api_key=***" in str(err.value)  # the echoed URL arrives, redacted


async def test_fetch_yields_and_repeats(serve: Serve) -> None:
    fake = FakeNdl()
    base = await serve(fake.app())
    src = NasdaqDataLinkSource(settings(base, datasets=["FRED/GDP"]), api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        gen = src.fetch(session)
        batches = [await anext(gen), await anext(gen)]
        await gen.aclose()
    assert [len(b) for b in batches] == [2, 2]


# ---------------------------------------------------------------------------------------------- CSV, transforms


def test_v3_csv_dataset_gives_the_same_raw_bars_as_json() -> None:
    bars = parse_csv((FIX / "dataset_wiki_aapl.csv").read_text(), "WIKI/AAPL")
    assert [(b.timestamp.date(), b.data_type, b.interval, b.close, b.volume) for b in bars] == [
        (date(2018, 3, 26), "bar", "1d", 172.77, 36272617.0), (date(2018, 3, 27), "bar", "1d", 168.34, 38962839.0)]
    assert bars[1].metadata["Adj. Close"] == 168.34 and "Close" not in bars[1].metadata
    assert bars[0].item_id == "WIKI/AAPL"


def test_legacy_v1_csv_is_parsed_not_refused() -> None:
    points = parse_body((FIX / "dataset_snap_v1_legacy.csv").read_text(), "USDAFNS/SNAP")
    assert [(p.timestamp.date(), p.value) for p in points] == [
        (date(2013, 12, 31), 47636084.0), (date(2012, 12, 31), 46609072.0), (date(2011, 12, 31), 44709000.0)]
    assert points[0].data_type == "economic" and points[0].metadata == {"value_column": "Avg Participation"}


def test_transformed_series_is_never_a_price() -> None:
    points = parse_dataset(load("dataset_wiki_aapl_rdiff_monthly.json"), "WIKI/AAPL")
    assert [p.data_type for p in points] == ["economic", "economic"]
    assert all(p.close is None and p.open is None for p in points)
    assert [p.value for p in points] == [-0.0106, 0.0638]  # the Close column's relative change
    p = points[0]
    assert p.metadata["transform"] == "rdiff" and p.metadata["collapse"] == "monthly"
    assert p.metadata["value_column"] == "Close" and p.metadata["Open"] == 0.0134
    assert p.item_id == "WIKI/AAPL|transform=rdiff|collapse=monthly" and p.interval == "1mo:rdiff"
    # The requested transform is recorded when the body (CSV) cannot say it.
    [q, *_] = parse_csv((FIX / "dataset_wiki_aapl.csv").read_text(), "WIKI/AAPL", transform="normalize")
    assert (q.data_type, q.metadata["transform"], q.interval, q.value) == ("economic", "normalize", "1d:normalize",
                                                                           172.77)
    [c, *_] = parse_csv((FIX / "dataset_wiki_aapl.csv").read_text(), "WIKI/AAPL", collapse="weekly")
    assert (c.data_type, c.interval, c.item_id) == ("economic", "1wk", "WIKI/AAPL|collapse=weekly")


def annual_collapsed(frequency: str | None, collapse: str = "monthly", transform: str = "none") -> dict[str, Any]:
    """A v3 data.json answer as documented (dataset_data echoes transform/collapse and gives the dataset's own
    frequency) for a yearly series asked with a collapse."""
    dd: dict[str, Any] = {
        "limit": None, "transform": transform, "column_index": None, "column_names": ["Year", "Value"],
        "start_date": "2019-12-31", "end_date": "2022-12-31", "collapse": collapse, "order": "asc",
        "data": [["2019-12-31", 10.0], ["2020-12-31", 11.0], ["2021-12-31", 12.5], ["2022-12-31", 13.0]]}
    if frequency is not None:
        dd["frequency"] = frequency
    return {"dataset_data": dd}


def test_collapse_finer_than_the_dataset_keeps_the_datasets_frequency() -> None:
    points = parse_dataset(annual_collapsed("annual"), "ODA/POP")
    assert {(p.interval, p.item_id) for p in points} == {("1y", "ODA/POP|collapse=monthly")}  # item_id: the query's
    assert points[0].metadata["collapse"] == "monthly"
    [p, *_] = parse_dataset(annual_collapsed("annual", transform="rdiff"), "ODA/POP")
    assert (p.interval, p.item_id) == ("1y:rdiff", "ODA/POP|transform=rdiff|collapse=monthly")
    # A collapse coarser than the dataset wins, as before.
    assert parse_dataset(annual_collapsed("weekly"), "ODA/POP")[0].interval == "1mo"
    assert parse_dataset(annual_collapsed("daily", collapse="annual"), "ODA/POP")[0].interval == "1y"
    # No frequency in the answer: the rows' spacing says it (yearly here).
    assert parse_dataset(annual_collapsed(None), "ODA/POP")[0].interval == "1y"


def test_collapse_of_a_csv_body_reads_the_frequency_from_the_rows_spacing() -> None:
    yearly = "Year,Value\n2022-12-31,13.0\n2021-12-31,12.5\n2019-12-31,10.0\n2018-12-31,9.0\n"  # 2020 missing
    points = parse_csv(yearly, "ODA/POP", collapse="monthly")
    assert {(p.interval, p.item_id) for p in points} == {("1y", "ODA/POP|collapse=monthly")}
    quarterly = "Date,Value\n2024-01-01,1.0\n2024-04-01,2.0\n2024-07-01,3.0\n2024-10-01,4.0\n"
    assert parse_csv(quarterly, "FRED/GDP", collapse="monthly")[0].interval == "3mo"
    assert parse_csv(quarterly, "FRED/GDP", collapse="annual")[0].interval == "1y"
    # Two dates could be one period apart or a hole apart: the collapse is kept.
    two = "Year,Value\n2021-12-31,12.5\n2022-12-31,13.0\n"
    assert parse_csv(two, "ODA/POP", collapse="monthly")[0].interval == "1mo"


@pytest.mark.parametrize("text", ["", "Date\n2024-01-01\n", "Date,Value\nnot a date,x\n"])
def test_unreadable_csv_is_unexpected(text: str) -> None:
    with pytest.raises(NdlUnexpected):
        parse_csv(text, "X/Y")


async def test_source_asks_for_csv_and_transforms_and_parses_csv_on_the_json_path(serve: Serve) -> None:
    fake = FakeNdl()
    base = await serve(fake.app())
    s = settings(base, datasets=["USDAFNS/SNAP"], dataset_queries=[
        DatasetQuery(code="WIKI/AAPL", format="csv"),
        DatasetQuery(code="WIKI/RDIFF", transform="rdiff", collapse="monthly")])
    src = NasdaqDataLinkSource(s, api_key=SecretStr(KEY))
    async with aiohttp.ClientSession() as session:
        points = await src.poll_once(session, today=date(2024, 6, 1))
    assert [(p.symbol, p.data_type) for p in points] == (
        [("SNAP", "economic")] * 3 + [("AAPL", "bar")] * 2 + [("RDIFF", "economic")] * 2)
    paths = [p for p, _ in fake.seen]
    assert paths == ["/api/v3/datasets/USDAFNS/SNAP/data.json", "/api/v3/datasets/WIKI/AAPL/data.csv",
                     "/api/v3/datasets/WIKI/RDIFF/data.json"]
    rdiff_query = fake.seen[2][1]
    assert (rdiff_query["transform"], rdiff_query["collapse"]) == ("rdiff", "monthly")
    assert "transform" not in fake.seen[1][1] and "collapse" not in fake.seen[1][1]
    assert src.unexpected == {} and src.unknown == {}


async def test_unknown_codes_and_odd_payloads_are_warned_once_and_counted(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNdl()
    base = await serve(fake.app())
    src = NasdaqDataLinkSource(settings(base, datasets=["NOPE/NOPE", "ODD/SHAPE", "ODD/CSV", "FRED/GDP"]),
                               api_key=SecretStr(KEY))
    caplog.set_level(logging.WARNING)
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            points = await src.poll_once(session)
            assert [p.symbol for p in points] == ["GDP", "GDP"]
    assert src.unknown == {"NOPE/NOPE": 2}
    assert src.unexpected == {"dataset": 4}
    assert caplog.text.count("unknown code") == 1
    assert caplog.text.count("unexpected payload") == 2  # two causes: no dataset_data, a CSV without a header
    assert KEY not in caplog.text
