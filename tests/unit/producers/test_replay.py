"""File replay: yfinance and Alpha Vantage CSV formats, and pacing at 1x, 10x and as fast as possible."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from producers.replay import (
    NoSymbol,
    ReplayFile,
    ReplaySettings,
    ReplaySource,
    infer_interval,
    parse_csv,
    parse_rows,
    replay_groups,
)
from streams.errors import RejectedRecord, SourceError
from streams.models import MarketDataPoint
from streams.rules import Validator
from streams.settings import ValidationSettings

FIX = Path(__file__).parent / "fixtures" / "replay"


def read(name: str) -> str:
    return (FIX / name).read_text()


# ---------------------------------------------------------------------------------------------- parsing


def test_yfinance_flat_daily_with_adj_close_in_metadata() -> None:
    bars = parse_csv(read("yf_flat_aapl_1d.csv"), "aapl", origin="yf_flat_aapl_1d.csv")
    assert len(bars) == 5
    b = bars[0]
    assert (b.symbol, b.source, b.data_type, b.interval, b.item_id) == ("AAPL", "replay", "bar", "1d", "1d")
    assert b.timestamp == datetime(2024, 1, 2, tzinfo=UTC)
    assert (b.open, b.high, b.low, b.close, b.volume) == (187.15, 188.44, 183.89, 185.64, 82488700.0)
    assert b.metadata == {"adj_close": 184.73, "file": "yf_flat_aapl_1d.csv"}
    assert bars[3].metadata == {"file": "yf_flat_aapl_1d.csv"}  # empty Adj Close: no key, the bar stays
    assert bars[-1].timestamp == datetime(2024, 1, 8, tzinfo=UTC)  # weekend gap: still "1d"


def test_yfinance_multi_header_several_tickers(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bars = parse_csv(read("yf_multi_aapl_msft_1d.csv"), origin="multi.csv")
    assert "multi.csv: skipped 1 rows" in caplog.text  # the "Date,,," header row is not a data row
    assert [(b.timestamp.day, b.symbol) for b in bars] == [(2, "AAPL"), (2, "MSFT"), (3, "AAPL"), (3, "MSFT"),
                                                          (4, "AAPL")]  # MSFT's empty row skipped
    m = bars[1]
    assert (m.open, m.high, m.low, m.close, m.volume) == (371.22, 373.70, 365.96, 368.86, 25258600.0)


def test_yfinance_multi_header_intraday_and_symbol_override() -> None:
    bars = parse_csv(read("yf_multi_aapl_1h.csv"))
    assert [b.timestamp for b in bars] == [datetime(2024, 1, 2, h, 30, tzinfo=UTC) for h in (14, 15, 16)]
    assert {b.symbol for b in bars} == {"AAPL"} and bars[0].interval == "1h"
    assert {b.symbol for b in parse_csv(read("yf_multi_aapl_1h.csv"), "aapl.x")} == {"AAPL.X"}


def test_yfinance_history_local_midnights_are_dates_and_events_kept() -> None:
    bars = parse_csv(read("yf_history_msft_1d_tz.csv"), "MSFT")
    assert [b.timestamp for b in bars] == [datetime(2024, 11, d, tzinfo=UTC) for d in (20, 21, 22)]
    assert [b.metadata for b in bars] == [{}, {"dividend": 0.83}, {"split": 2.0}]
    assert bars[0].interval == "1d"


def test_alpha_vantage_csv_naive_eastern_newest_first() -> None:
    bars = parse_csv(read("av_intraday_ibm_5min.csv"), "IBM")
    assert [b.timestamp for b in bars] == [
        datetime(2024, 3, 8, 20, 55, tzinfo=UTC), datetime(2024, 3, 8, 21, 0, tzinfo=UTC),
        datetime(2024, 3, 11, 13, 30, tzinfo=UTC), datetime(2024, 3, 11, 13, 35, tzinfo=UTC),
    ]
    assert bars[0].interval == "5m" and bars[-1].close == 196.05
    utc = parse_csv(read("av_intraday_ibm_5min.csv"), "IBM", time_zone="UTC")
    assert utc[0].timestamp == datetime(2024, 3, 8, 15, 55, tzinfo=UTC)


def test_alpha_vantage_daily_adjusted_csv() -> None:
    bars = parse_csv(read("av_daily_adjusted_ibm.csv"), "IBM", interval="1d")
    assert [(b.timestamp.day, b.close, b.metadata) for b in bars] == [
        (11, 210.0, {"adj_close": 208.33, "dividend": 1.67}), (12, 211.45, {"adj_close": 211.45})]


def test_missing_symbol_and_bad_header() -> None:
    with pytest.raises(ValueError, match="no symbol"):
        parse_csv(read("yf_flat_aapl_1d.csv"))
    with pytest.raises(ValueError, match="no date column"):
        parse_csv("a,b\n1,2\n", "X")
    assert parse_csv("", "X") == []
    bad = "Date,Open,High,Low,Close,Volume\nnot-a-date,1,2,0.5,1.5,10\n2024-01-02,1,2,0.5,1.5,10\n"
    assert [b.timestamp.day for b in parse_csv(bad, "X")] == [2]


def test_a_symbol_column_keeps_each_rows_symbol() -> None:
    """The Kaggle S&P 500 file's layout (date,open,high,low,close,volume,Name): every stock in one file. Read as
    one series, its rows were all the file's symbol and collided on the natural key."""
    text = ("date,open,high,low,close,volume,Name\n"
            "2013-02-07,15.07,15.12,14.63,14.75,8407500,AAL\n2013-02-07,67.71,68.4,66.89,67.87,158168416,AAPL\n"
            "2013-02-08,14.89,15.01,14.26,14.46,8882000,AAL\n2013-02-08,68.07,69.28,67.61,68.56,129029425,AAPL\n")
    bars = parse_csv(text, None)
    assert [(b.symbol, b.timestamp.day, b.close) for b in bars] == [
        ("AAL", 7, 14.75), ("AAPL", 7, 67.87), ("AAL", 8, 14.46), ("AAPL", 8, 68.56)]
    assert {b.interval for b in bars} == {"1d"}
    # one ticker in the column: a given symbol names it (a mapping's rename)
    assert {b.symbol for b in parse_csv(text.replace("AAPL", "AAL"), "AAL.X")} == {"AAL.X"}
    # company names are no symbols: the file's symbol
    named = "Date,Open,High,Low,Close,Volume,Name\n2024-01-02,1,2,0.5,1.5,10,Apple Inc.\n"
    assert [b.symbol for b in parse_csv(named, "AAPL")] == ["AAPL"]


def test_nasdaq_download_close_last_dollars_and_month_first_dates() -> None:
    text = ("Date,Close/Last,Volume,Open,High,Low\n"
            "12/01/2025,$283.10,46587700,$278.01,$283.42,$276.14\n11/28/2025,$278.85,20135600,$277.26,$279,$275.99\n")
    bars = parse_csv(text, "AAPL")
    assert [(b.timestamp.date().isoformat(), b.open, b.close, b.volume) for b in bars] == [
        ("2025-11-28", 277.26, 278.85, 20135600.0), ("2025-12-01", 278.01, 283.10, 46587700.0)]


def test_semicolons_decimal_commas_and_day_first_dates() -> None:
    text = "Date;Open;High;Low;Close;Volume\n28/11/2025;1,5;2,0;1,0;1,8;1.000\n01/12/2025;1,8;2,1;1,7;2,05;2.500\n"
    bars = parse_csv(text, "SAP.DE")
    assert [(b.timestamp.date().isoformat(), b.close, b.volume) for b in bars] == [
        ("2025-11-28", 1.8, 1000.0), ("2025-12-01", 2.05, 2500.0)]


def test_a_semicolon_file_with_decimal_points_keeps_its_prices() -> None:
    """Finam's export (<TICKER>;<PER>;<DATE>;<TIME>;...) with ";" between columns and "." as the decimal mark: every
    "." was taken for a thousands separator, 272.5000000 read as 2,725,000,000. The prices tell the mark."""
    text = ("<TICKER>;<PER>;<DATE>;<TIME>;<OPEN>;<HIGH>;<LOW>;<CLOSE>;<VOL>\n"
            "SBER;D;20240102;000000;272.5000000;274.7000000;271.0000000;273.9000000;12345\n"
            "SBER;D;20240103;000000;273.0;275.0;272.0;274.0;1000\n")
    bars = parse_csv(text)
    assert [(b.symbol, b.open, b.close, b.volume) for b in bars] == [
        ("SBER", 272.5, 273.9, 12345.0), ("SBER", 273.0, 274.0, 1000.0)]
    tabbed = "Date\tOpen\tHigh\tLow\tClose\tVolume\n02.01.2024\t185,50\t186,00\t184,00\t185,75\t1000\n"
    [bar] = parse_csv(tabbed, "SAP.DE")  # a tab between columns, a decimal comma, a dotted day-first date
    assert (bar.timestamp.date().isoformat(), bar.open, bar.close) == ("2024-01-02", 185.5, 185.75)


def test_prices_whose_mark_is_ambiguous_are_told_by_the_files_other_numbers() -> None:
    """Three decimals everywhere (1.234: 1234 grouped, or 1.234) never tell the mark by themselves. A ";" file of
    yen prices was read with decimal commas, 151.234 as 151234; a volume 1.234.567 says points group thousands,
    a 12345 written without a group says commas are decimal."""
    yen = "Date;Open;High;Low;Close;Volume\n2024-01-02;141.012;141.875;140.803;141.605;12345\n"
    [bar] = parse_csv(yen, "USDJPY=X")
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (141.012, 141.875, 140.803, 141.605, 12345.0)
    [bar] = parse_csv(yen.replace("12345", ""), "USDJPY=X")  # no volume: the points alone
    assert bar.close == 141.605
    grouped = "Date;Open;High;Low;Close;Volume\n2024-01-02;15.234;15.301;15.102;15.288;1.234.567\n"
    [bar] = parse_csv(grouped, "^GDAXI")
    assert (bar.open, bar.close, bar.volume) == (15234.0, 15288.0, 1234567.0)
    # a European file (";" and 02.01.2024): a decimal would be written with a comma, so 16.754 is 16754 points
    european = "Datum;Eröffnung;Hoch;Tief;Schluss\n02.01.2024;16.754;16.800;16.700;16.769\n"
    [bar] = parse_csv(european, "^GDAXI")
    assert (bar.open, bar.close) == (16754.0, 16769.0)
    commas = "Date\tOpen\tHigh\tLow\tClose\tVolume\n02.01.2024\t1,234\t1,250\t1,201\t1,245\t12345\n"
    [bar] = parse_csv(commas, "X")  # a tab file: 1,234 beside an ungrouped 12345 is 1.234
    assert (bar.open, bar.close, bar.volume) == (1.234, 1.245, 12345.0)
    us = "Date,Open,High,Low,Close,Volume\n2024-01-02,\"1,234.5\",\"1,250\",\"1,201\",\"1,245\",\"1,234,567\"\n"
    [bar] = parse_csv(us, "X")  # a comma-separated file is never read with decimal commas
    assert (bar.open, bar.high, bar.volume) == (1234.5, 1250.0, 1234567.0)


def test_investing_downloads_in_other_languages_and_german_brokers_files() -> None:
    """Investing.com's German, French and Spanish sites write their headers in their language, quote decimal
    commas in a comma-separated file ("184,25") and date day first (the French 03/01/2024 is the 3rd of January);
    none of it was read (no date column). onvista's and comdirect's files: Datum;Eröffnung;Hoch;Tief;Schluss."""
    row = '"{d}","184,25","187,15","187,40","183,95","58,41M","-0,75%"\n'
    german = '"Datum","Zuletzt","Eröffn.","Hoch","Tief","Vol.","+/- %"\n' + row.format(d="03.01.2024") + \
        row.format(d="02.01.2024")
    french = '"Date","Dernier","Ouv.","Plus Haut","Plus Bas","Vol.","Variation %"\n' + row.format(d="03/01/2024")
    spanish = '"Fecha","Último","Apertura","Máximo","Mínimo","Vol.","% var."\n' + row.format(d="03.01.2024")
    for text in (german, french, spanish):
        bar = parse_csv(text, "AAPL")[-1]
        assert (bar.timestamp.date().isoformat(), bar.open, bar.high, bar.low, bar.close, bar.volume) == (
            "2024-01-03", 187.15, 187.4, 183.95, 184.25, 58410000.0)
    onvista = "Datum;Eröffnung;Hoch;Tief;Schluss;Volumen\n03.01.2024;184,25;187,40;183,95;185,00;1.234.567\n"
    [bar] = parse_csv(onvista, "SAP.DE")
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (184.25, 187.4, 183.95, 185.0, 1234567.0)
    ticks = "Datum;Zeit;Kurs;Volumen\n03.01.2024;09:00:01;184,25;100\n"
    [trade] = parse_csv(ticks, "SAP.DE", time_zone="Europe/Berlin")
    assert (trade.timestamp.isoformat(), trade.price, trade.volume) == ("2024-01-03T08:00:01+00:00", 184.25, 100.0)


def test_pandas_unnamed_time_index_and_bloombergs_px_columns() -> None:
    """`df.to_csv()` of a frame whose time index has no name writes ",Open,High,..." (refused: no date column);
    Bloomberg's history export names its columns PX_OPEN ... PX_LAST (the close), PX_VOLUME."""
    bars = parse_csv(",Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,10\n2024-01-03,1,2,0.5,1.6,10\n", "AAPL")
    assert [(b.timestamp.date().isoformat(), b.close) for b in bars] == [("2024-01-02", 1.5), ("2024-01-03", 1.6)]
    with pytest.raises(ValueError, match="none of its 2 rows"):  # a row number, not a time: still refused
        parse_csv(",Open,High,Low,Close,Volume\n0,1,2,0.5,1.5,10\n1,1,2,0.5,1.6,10\n", "AAPL")
    [bar] = parse_csv("Date,PX_OPEN,PX_HIGH,PX_LOW,PX_LAST,PX_VOLUME\n2024-01-02,1,2,0.5,1.5,10\n", "IBM")
    assert (bar.open, bar.high, bar.low, bar.close, bar.volume) == (1.0, 2.0, 0.5, 1.5, 10.0)


def test_day_or_month_first_is_told_by_every_row_not_the_first_hundreds() -> None:
    """A D/M/Y minute file: its first 500 rows are 2 January, which reads either way; read month first, the other
    days of 1-12 January became February to December and 13-15 January were skipped."""
    lines = ["Date,Time,Open,High,Low,Close,Volume"]
    for day in (2, 3, 4, 5, 8, 9, 10, 11, 12, 15):
        t = datetime(2024, 1, day, 9, 30)
        lines += [f"{t + timedelta(minutes=m):%d/%m/%Y,%H:%M},1,2,0.5,1.5,100" for m in range(390)]
    bars = parse_csv("\n".join(lines) + "\n", "X", time_zone="UTC")
    assert len(bars) == 3900
    assert {b.timestamp.date().isoformat() for b in bars} == {f"2024-01-{d:02d}" for d in (2, 3, 4, 5, 8, 9, 10,
                                                                                           11, 12, 15)}


def test_metatrader_dotted_dates_and_rows_longer_than_the_header() -> None:
    mt5 = ("<DATE>\t<TIME>\t<OPEN>\t<HIGH>\t<LOW>\t<CLOSE>\t<TICKVOL>\t<VOL>\t<SPREAD>\n"
           "2024.01.02\t09:30:00\t1.1034\t1.1040\t1.1030\t1.1035\t100\t0\t2\n")
    [bar] = parse_csv(mt5, "EURUSD", time_zone="UTC")
    assert (bar.timestamp, bar.close) == (datetime(2024, 1, 2, 9, 30, tzinfo=UTC), 1.1035)
    # An FX pair's <VOL> is 0: its tick volume, the activity MetaTrader has, and the spread were dropped
    assert (bar.volume, bar.metadata) == (0.0, {"tick_volume": 100.0, "spread": 2.0})
    # An unquoted thousands separator splits a price in two: the row's cells no longer match the header (it was
    # read as open 1, high 234.5, low 1, close 240), so the row is skipped, not misread.
    text = "Date,Open,High,Low,Close,Volume\n2024-01-02,1,234.5,1,240.0,1,230.0,1,238.0,100\n" \
           "2024-01-03,1234.5,1240,1230,1238,100\n"
    assert [(b.timestamp.day, b.open) for b in parse_csv(text, "X")] == [(3, 1234.5)]
    old = "time,open,high,low,close,volume\n999999000,1,2,0.5,1.5,10\n1000000000,1,2,0.5,1.5,10\n"
    assert [b.timestamp.year for b in parse_csv(old, "X")] == [2001, 2001]  # epoch seconds before 2001-09-09


def test_trade_counts_and_vwap_go_to_metadata_and_a_bad_one_leaves_the_bar_whole() -> None:
    """Alpaca's trade_count and vwap, polygon's transactions, Binance's trades were read and dropped. They are
    extras: a cell that is no number leaves that key out of the bar's metadata, not the bar out of the replay."""
    alpaca = ("symbol,timestamp,open,high,low,close,volume,trade_count,vwap\n"
              "AAPL,2024-01-02 14:30:00+00:00,187.15,188.44,183.89,185.64,82488,1009,185.9\n"
              "AAPL,2024-01-02 14:31:00+00:00,184.22,185.88,183.43,184.25,58414,n/a,\n")
    assert [b.metadata for b in parse_csv(alpaca)] == [{"trades": 1009.0, "vwap": 185.9}, {}]
    aggs = "ticker,volume,open,close,high,low,window_start,transactions\n" \
           "AAPL,4930,187.15,185.64,188.44,183.89,1704205800000000000,45\n"
    assert [b.metadata for b in parse_csv(aggs)] == [{"trades": 45.0}]
    bad_close = alpaca.replace("184.25,58414", "oops,58414")  # a price that is no number still makes it unreadable
    unreadable: list[tuple[int, str, str]] = []
    assert len(parse_rows(bad_close, unreadable=unreadable)) == 1 and unreadable[0][0] == 2


def test_epoch_times_and_a_separate_time_column(caplog: pytest.LogCaptureFixture) -> None:
    kline = "open_time,open,high,low,close,volume\n1700000000000,36500,36600,36400,36550,12.5\n" \
            "1700000060000,36550,36700,36500,36690,9.1\n"
    bars = parse_csv(kline, "BTC-USD")
    assert [b.timestamp for b in bars] == [datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC),
                                           datetime(2023, 11, 14, 22, 14, 20, tzinfo=UTC)]
    assert bars[0].interval == "1m"
    caplog.set_level(logging.WARNING)
    minutes = "Date,Time,Open,High,Low,Close,Volume\n01/02/2020,09:30,74.06,74.2,73.9,74.1,1000\n" \
              "01/02/2020,09:31,74.1,74.3,74.0,74.25,800\n"
    bars = parse_csv(minutes, "AAPL")  # naive times in the configured zone (New York)
    assert [b.timestamp for b in bars] == [datetime(2020, 1, 2, 14, 30, tzinfo=UTC),
                                           datetime(2020, 1, 2, 14, 31, tzinfo=UTC)]
    assert "could be day or month first" in caplog.text


def test_a_file_none_of_whose_rows_can_be_read_is_an_error() -> None:
    """It was an empty replay with an INFO line: a whole file of real data left out unnoticed."""
    with pytest.raises(ValueError, match=r"none of its 2 rows has a time and open, high, low, close"):
        parse_csv("Date,Open,High,Low,Close\nyesterday,1,2,0.5,1.5\ntoday,1,2,0.5,1.5\n", "X")


def test_a_tick_file_is_trades_and_equal_prints_stay_two() -> None:
    """DateTime,Price,Volume (E-mini ticks): two equal prints of one millisecond are two trades, keyed by their
    place among the instant's rows, so a replay of the file lands on the same keys."""
    text = ("DateTime,Price,Volume\n2013-09-01 17:00:00.083,1640.25,8\n2013-09-01 17:00:00.083,1640.25,8\n"
            "2013-09-01 17:00:00.097,1640.5,1\n")
    trades = parse_csv(text, "ES=F", time_zone="America/Chicago")
    assert [(t.data_type, t.timestamp.isoformat(), t.price, t.volume, t.item_id) for t in trades] == [
        ("trade", "2013-09-01T22:00:00.083000+00:00", 1640.25, 8.0, "0"),
        ("trade", "2013-09-01T22:00:00.083000+00:00", 1640.25, 8.0, "1"),
        ("trade", "2013-09-01T22:00:00.097000+00:00", 1640.5, 1.0, "0")]


def test_a_newest_first_tick_file_gives_each_print_the_same_key() -> None:
    """Two prints of one instant at different prices: a newest-first copy of the file (as Nasdaq's downloads are
    written) keyed them the other way round, so replaying both stored each key's other price as a revision."""
    rows = ["2024-01-02 09:30:00.120,100.5,3", "2024-01-02 09:30:00.120,100.25,7", "2024-01-02 09:30:01.000,100.75,1"]
    oldest_first = parse_csv("Time,Price,Size\n" + "\n".join(rows) + "\n", "XYZ")
    newest_first = parse_csv("Time,Price,Size\n" + "\n".join(reversed(rows)) + "\n", "XYZ")

    def keys(trades: list[MarketDataPoint]) -> set[tuple[str, str, float | None]]:
        return {(t.timestamp.isoformat(), t.item_id, t.price) for t in trades}

    assert keys(oldest_first) == keys(newest_first) == {
        ("2024-01-02T14:30:00.120000+00:00", "0", 100.5), ("2024-01-02T14:30:00.120000+00:00", "1", 100.25),
        ("2024-01-02T14:30:01+00:00", "0", 100.75)}
    # the direction is each symbol's own: a file of blocks (XYZ's day, then an earlier day of ABC) is not newest first
    blocks = parse_csv("Time,Symbol,Price,Size\n" + "\n".join(f"{r.split(',')[0]},XYZ,{r.split(',', 1)[1]}"
                                                              for r in rows)
                       + "\n2024-01-01 10:00:00,ABC,5,1\n", None)
    assert keys([t for t in blocks if t.symbol == "XYZ"]) == keys(oldest_first)


def test_two_digit_years_are_read_as_strptime_reads_them() -> None:
    """The Wall Street Journal's downloads write 01/02/24: that was the year 24 (0024-01-02), every bar 2,000 years
    off; 69-99 are the 1900s, as %y."""
    text = "Date,Open,High,Low,Close,Volume\n01/03/24,2,3,1,2.5,10\n01/02/24,2,3,1,2.5,10\n12/31/99,2,3,1,2.5,10\n"
    assert [b.timestamp.date().isoformat() for b in parse_csv(text, "DJIA")] == ["1999-12-31", "2024-01-02",
                                                                                  "2024-01-03"]
    assert parse_csv("Date;Open;High;Low;Close\n13.01.24;2;3;1;2,5\n", "X")[0].timestamp.date().isoformat() \
        == "2024-01-13"


def test_infer_interval() -> None:
    t = [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 8, tzinfo=UTC), datetime(2024, 1, 15, tzinfo=UTC)]
    assert infer_interval(t, daily=True) == "1wk"
    assert infer_interval(t[:1], daily=True) == "1d"
    assert infer_interval([datetime(2024, 1, 1, 0, 0, s, tzinfo=UTC) for s in (0, 30)], daily=False) == "30s"


# ---------------------------------------------------------------------------------------------- source


def write_seconds(tmp_path: Path, gaps: list[int]) -> str:
    """A yfinance intraday file with rows `gaps` seconds apart."""
    lines = ["Datetime,Open,High,Low,Close,Volume"]
    t = 0
    for g in [0, *gaps]:
        t += g
        lines.append(f"2024-01-02 14:{30 + t // 60:02d}:{t % 60:02d}+00:00,10,11,9,10.5,100")
    path = tmp_path / "ticks.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class FakeClock:
    """Stands in for producers.replay's `time.monotonic` and `asyncio.sleep`: a sleep advances the clock
    at once, so pacing is checked exactly and without waiting (no wall-clock asserts)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    import producers.replay as module

    fake = FakeClock()
    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(module, "asyncio", SimpleNamespace(sleep=fake.sleep, to_thread=asyncio.to_thread))
    return fake


async def replay(clock: FakeClock, **kw: Any) -> tuple[float, list[list[Any]]]:
    """Run a replay to its end; returns the seconds it took on the fake clock and the batches."""
    symbol = kw.pop("symbol_arg", None)
    src = ReplaySource(ReplaySettings(**kw), symbol=symbol)
    started = clock.now
    batches = [batch async for batch in src.fetch(None)]
    return clock.now - started, batches


async def test_speed_zero_is_as_fast_as_possible_in_batches(clock: FakeClock) -> None:
    files = [str(FIX / "yf_flat_aapl_1d.csv"), str(FIX / "yf_multi_aapl_msft_1d.csv")]
    elapsed, batches = await replay(clock, files=files, symbol="AAPL", batch_size=4)
    assert elapsed == 0.0 and all(s == 0 for s in clock.sleeps)  # only yields to the loop, never waits
    assert [len(b) for b in batches] == [4, 4, 2]
    stamps = [p.timestamp for b in batches for p in b]
    assert stamps == sorted(stamps)  # the two files merged into one timeline
    assert all(p.source == "replay" for b in batches for p in b)


@pytest.mark.parametrize("speed,expected", [(1.0, 1.0), (10.0, 0.1)])
async def test_speed_follows_the_gaps(tmp_path: Path, clock: FakeClock, speed: float, expected: float) -> None:
    elapsed, batches = await replay(clock, files=[write_seconds(tmp_path, [1])], symbol="X", speed=speed)
    assert elapsed == pytest.approx(expected)  # a one-second gap, divided by the speed
    assert [len(b) for b in batches] == [1, 1]


async def test_rows_due_together_go_together_and_waits_are_capped(tmp_path: Path, clock: FakeClock) -> None:
    elapsed, batches = await replay(clock, files=[str(FIX / "yf_multi_aapl_msft_1d.csv")], speed=1.0,
                                    max_wait_seconds=0.05)
    assert clock.sleeps == pytest.approx([0.05, 0.05])  # two one-day gaps, each wait capped at 50 ms
    assert elapsed == pytest.approx(0.1)
    assert [[p.symbol for p in b] for b in batches] == [["AAPL", "MSFT"], ["AAPL", "MSFT"], ["AAPL"]]


async def test_unreadable_file_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    caplog.set_level(logging.INFO)
    files = [str(tmp_path / "missing.csv"), str(FIX / "av_intraday_ibm_5min.csv")]
    _, batches = await replay(clock, files=files, symbol_arg="IBM")
    assert [p.symbol for b in batches for p in b] == ["IBM"] * 4
    assert "missing.csv skipped" in caplog.text


def test_a_file_with_a_stray_quote_is_skipped_not_the_replay(tmp_path: Path) -> None:
    """A quote opened and never closed (a company name) makes one field of the rest of the file, which the csv
    module refuses (csv.Error, no ValueError): it ended the whole replay, the other files' rows with it."""
    rows = "\n".join(f"2024-01-{2 + i % 20:02d},1,2,0.5,1.5,10,Foo" for i in range(20000))
    (tmp_path / "A.csv").write_text(f'Date,Open,High,Low,Close,Volume,Name\n2024-01-02,1,2,0.5,1.5,10,"Foo\n{rows}\n')
    (tmp_path / "B.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,10\n")
    skipped: list[str] = []
    rows_read = ReplaySource(ReplaySettings(files=[str(tmp_path)], speed=0)).load_rows(skipped=skipped)
    assert [r["symbol"] for r in rows_read] == ["B"]
    assert len(skipped) == 1 and "A.csv" in skipped[0] and "Error" in skipped[0]


async def test_files_are_read_off_the_event_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A million ticks take ~12 s to read: on the worker's event loop its heartbeats, commits and web server waited
    for them. Read in a thread, the loop goes on; the points are built as each batch goes out."""
    import time as real_time

    import producers.replay as module

    (tmp_path / "t.csv").write_text("Datetime,Price,Volume\n2024-01-02 10:00:00,1.5,10\n2024-01-02 10:00:01,1.6,5\n")
    parse = module.parse_rows

    during: list[int] = []

    def slow(*args: Any, **kw: Any) -> list[dict[str, Any]]:
        before = ticks
        real_time.sleep(0.3)
        during.append(ticks - before)  # the loop's ticks while the file was read: none if it was read on it
        return parse(*args, **kw)

    monkeypatch.setattr(module, "parse_rows", slow)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    src = ReplaySource(ReplaySettings(files=[str(tmp_path / "t.csv")], speed=0), symbol="X")
    batches = [b async for b in src.fetch(None)]
    task.cancel()
    assert during and during[0] >= 1  # the loop ran while the file was read
    assert [(p.price, p.volume, p.item_id, p.metadata) for b in batches for p in b] == [
        (1.5, 10.0, "0", {"file": "t.csv"}), (1.6, 5.0, "0", {"file": "t.csv"})]
    assert all(isinstance(p, MarketDataPoint) for b in batches for p in b)


def replay_file(name: str, symbols: str, first: int, last: int) -> ReplayFile:
    """A surveyed file of `symbols` (space-separated) from day `first` to day `last` of January 2024."""
    day = datetime(2024, 1, 1, tzinfo=UTC)
    return ReplayFile(Path(name), frozenset(symbols.split()), day + timedelta(days=first),
                      day + timedelta(days=last), last - first + 1, None)


@pytest.mark.parametrize("by_symbol,expected", [
    (True, [["A_1"], ["B"], ["C", "BC"], ["D_x", "D_y"], ["A_2"], ["E"]]),
    (False, [["A_1", "B", "C", "D_x", "BC", "D_y"], ["A_2"], ["E"]])])
def test_replay_groups_hold_only_the_files_that_overlap_in_time_and_at_full_speed_in_symbol(
        by_symbol: bool, expected: list[list[str]]) -> None:
    """One group's rows are in memory at a time. Files that do not overlap in time are never held together; at
    speed 0, files that share no symbol are not either (per-symbol order is all Kafka keeps): C and BC are linked
    by their C, and B and BC by their B, but B is over before C begins. A file starting the day another ends
    overlaps it (an equal instant may be a revision: the two files' rows are sorted together). Groups go out in
    time order, A's second half after the others' first."""
    files = [replay_file("A_2", "A", 11, 20), replay_file("A_1", "A", 1, 10), replay_file("B", "B", 1, 1),
             replay_file("C", "C", 2, 6), replay_file("BC", "B C", 6, 9), replay_file("D_x", "D", 3, 8),
             replay_file("D_y", "D", 8, 9), replay_file("E", "E", 21, 25)]
    groups = replay_groups(files, by_symbol=by_symbol)
    assert [[f.path.name for f in g] for g in groups] == expected


def test_replay_groups_are_joined_while_they_fit_in_held_rows() -> None:
    """A replay that fits in held_rows is one timeline of every file, as before groups; a larger one is joined
    into groups of up to held_rows, in order, so many symbols' partitions are busy at once, not one at a time."""
    files = [replay_file(f"S{i}", f"S{i}", 1 + i, 10 + i) for i in range(6)]  # 10 rows each
    names = [[f.path.name for f in g] for g in replay_groups(files, by_symbol=True, held_rows=60)]
    assert names == [["S0", "S1", "S2", "S3", "S4", "S5"]]
    names = [[f.path.name for f in g] for g in replay_groups(files, by_symbol=True, held_rows=25)]
    assert names == [["S0", "S1"], ["S2", "S3"], ["S4", "S5"]]
    big = [replay_file("A", "A", 1, 40), *files[:2]]  # a group larger than held_rows stays whole, alone
    names = [[f.path.name for f in g] for g in replay_groups(big, by_symbol=True, held_rows=25)]
    assert names == [["A"], ["S0", "S1"]]


def write_days(path: Path, start: date, days: int, base: float = 10.0) -> None:
    rows = [f"{start + timedelta(days=i)},{base + i},{base + i + 1},{base + i - 1},{base + i + 0.5},100"
            for i in range(days)]
    path.write_text("Date,Open,High,Low,Close,Volume\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("speed", [0.0, 1e9])
@pytest.mark.parametrize("held_rows", [0, 25, 10_000])
async def test_a_replay_holds_one_group_of_files_at_a_time_and_sends_every_row_once_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, speed: float, held_rows: int) -> None:
    """A folder of per-symbol files was held whole (~830 bytes a row: a few million rows of history took gigabytes).
    At speed 0 each symbol's files are replayed alone; paced, files that do not overlap in time are; files not
    held from the first reading (held_rows) are read again. Every row goes out once, each symbol's in time
    order, and paced in the one timeline load_rows sorts."""
    write_days(tmp_path / "AAA.csv", date(2024, 1, 1), 30)
    write_days(tmp_path / "BBB.csv", date(2024, 1, 1), 20, base=50.0)
    write_days(tmp_path / "CCC_2.csv", date(2024, 3, 1), 10)  # named after its later piece: read first
    write_days(tmp_path / "CCC_1.csv", date(2024, 2, 1), 10)
    src = ReplaySource(ReplaySettings(files=[str(tmp_path)], speed=speed, held_rows=held_rows, batch_size=7),
                       symbols={"CCC_1": "CCC", "CCC_2": "CCC"})
    held: list[int] = []
    group_rows = ReplaySource.group_rows

    def counted(self: ReplaySource, group: list[ReplayFile]) -> list[dict[str, Any]]:
        rows = group_rows(self, group)
        held.append(len(rows))
        return rows

    monkeypatch.setattr(ReplaySource, "group_rows", counted)
    batches = [b async for b in src.fetch(None)]
    sent = [(p.symbol, p.timestamp) for b in batches for p in b]
    expected = [(r["symbol"], r["timestamp"]) for r in src.load_rows()]
    assert sorted(sent) == sorted(expected) and len(sent) == 70
    for sym in ("AAA", "BBB", "CCC"):
        stamps = [t for s, t in sent if s == sym]
        assert stamps == sorted(stamps)
    if not speed:
        assert all(len(b) == 7 for b in batches[:-1])  # batches span files
    if speed or held_rows == 10_000:
        assert sent == expected  # one timeline: paced, or at speed 0 when every row fits in held_rows
    # Paced: AAA and BBB overlap in time, CCC's two months do not; at speed 0 no two symbols need to be together.
    # Groups are joined while they fit in held_rows.
    assert held == {(1e9, 0): [50, 10, 10], (1e9, 25): [50, 20], (1e9, 10_000): [70],
                    (0.0, 0): [30, 20, 10, 10], (0.0, 25): [30, 20, 20], (0.0, 10_000): [70]}[speed, held_rows]


@pytest.mark.parametrize("speed", [0.0, 1e9])
@pytest.mark.parametrize("held_rows", [0, 10_000])
async def test_a_bar_in_two_files_goes_out_in_the_files_order_as_before_groups(tmp_path: Path, speed: float,
                                                                            held_rows: int) -> None:
    """A correction file (AAPL_fix.csv) beside the full history (AAPL_full.csv, which starts earlier): the two
    bars of 2024-01-10 went out in the files' order (the fix first, the full file's after it, which then wins).
    Grouped, files were joined in the order of their first bar: the full file first, so the other bar won."""
    write_days(tmp_path / "AAPL_full.csv", date(2024, 1, 1), 20)
    (tmp_path / "AAPL_fix.csv").write_text("Date,Open,High,Low,Close,Volume\n2024-01-10,19,99,18,99,100\n")
    src = ReplaySource(ReplaySettings(files=[str(tmp_path)], speed=speed, held_rows=held_rows), symbol="AAPL")
    sent = [p.close for b in [b async for b in src.fetch(None)] for p in b if p.timestamp.day == 10]
    assert sent == [r["close"] for r in src.load_rows() if r["timestamp"].day == 10] == [99, 19.5]


@pytest.mark.parametrize("change", ["rewritten", "deleted"])
async def test_a_file_changed_or_gone_before_its_second_reading_fails_the_replay_saying_so(
        tmp_path: Path, change: str) -> None:
    """A file not held is read again in its turn: rewritten or deleted since its first reading, its rows were sent
    as they were then planned for (or not at all, with a log line), and the replay ended as a success."""
    write_days(tmp_path / "AAA.csv", date(2024, 1, 1), 5)
    write_days(tmp_path / "BBB.csv", date(2024, 1, 1), 5)
    src = ReplaySource(ReplaySettings(files=[str(tmp_path)], held_rows=5, batch_size=5))
    sent: list[str] = []
    with pytest.raises(SourceError, match=r"BBB\.csv changed while it was replayed.*held_rows") as failed:
        async for batch in src.fetch(None):
            sent += [p.symbol for p in batch]
            if change == "deleted":
                (tmp_path / "BBB.csv").unlink(missing_ok=True)
            else:
                write_days(tmp_path / "BBB.csv", date(2024, 1, 1), 6)
    assert failed.value.retriable is False and sent == ["AAA"] * 5  # the file held went out; BBB never did


async def test_a_paced_replay_starts_its_clock_at_its_first_row_and_sends_what_is_due_before_reading_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    """Files not held are read again when their turn comes, which takes time (two seconds here). The clock had
    started before the first group was read (its first rows went out in a burst), and the rows due before the
    next group's reading waited for it."""
    import producers.replay as module

    async def slow_to_thread(fn: Any, *args: Any) -> Any:
        clock.now += 2.0
        return fn(*args)

    monkeypatch.setattr(module, "asyncio", SimpleNamespace(sleep=clock.sleep, to_thread=slow_to_thread))
    head = "Datetime,Open,High,Low,Close,Volume\n"
    (tmp_path / "X1.csv").write_text(head + "".join(f"2024-01-02 14:30:0{s}+00:00,10,11,9,10.5,100\n"
                                                   for s in (0, 1, 2)))
    (tmp_path / "X2.csv").write_text(head + "".join(f"2024-01-02 14:30:0{s}+00:00,10,11,9,10.5,100\n"
                                                   for s in (3, 4)))
    src = ReplaySource(ReplaySettings(files=[str(tmp_path)], speed=1, held_rows=0, batch_size=10), symbol="X")
    sent = [(clock.now, [p.timestamp.second for p in b]) async for b in src.fetch(None)]
    first = sent[0][0]
    assert [(t - first, secs) for t, secs in sent] == [(0, [0]), (1, [1]), (2, [2]), (4, [3, 4])]


async def test_rows_that_cannot_be_read_go_to_the_dead_letter_topic_with_why(tmp_path: Path) -> None:
    """A row dated 2024-13-45, a price "n/a" or "inf", a row with more cells than the header were counted in an
    info log and lost. They go to the dead-letter topic now (rule source.unreadable, the row and why); Yahoo's
    `null` rows (a holiday: no data, not bad data) are still only counted."""
    (tmp_path / "AAPL.csv").write_text(
        "Date,Open,High,Low,Close,Volume\n2024-01-02,1,2,0.5,1.5,10\n2024-13-45,1,2,0.5,1.5,10\n"
        "2024-01-03,n/a,2,0.5,1.5,10\n2024-01-04,1,2,0.5,inf,10\n2024-01-05,null,null,null,null,null\n"
        "2024-01-08,1,2,0.5,1,234.5,10\n2024-01-09,1,2,0.5,1.5,10\n")
    src = ReplaySource(ReplaySettings(files=[str(tmp_path)], speed=0))
    out = [r for b in [b async for b in src.fetch(None)] for r in b]
    bars = [r for r in out if isinstance(r, MarketDataPoint)]
    assert [b.timestamp.date().isoformat() for b in bars] == ["2024-01-02", "2024-01-09"]
    dead = [r for r in out if not isinstance(r, MarketDataPoint)]
    validator = Validator(ValidationSettings())
    reasons = []
    for r in dead:
        with pytest.raises(RejectedRecord) as exc:
            validator.check(r.value, source="replay")
        assert exc.value.rule == "source.unreadable" and r.key == b"AAPL"
        reasons.append(exc.value.reason)
    assert [x.split(":")[0] for x in reasons] == ["AAPL.csv row 2", "AAPL.csv row 3", "AAPL.csv row 4",
                                                  "AAPL.csv row 6"]
    assert "month must be in 1..12" in reasons[0] and "'2024-13-45,1,2,0.5,1.5,10'" in reasons[0]
    assert "n/a" in reasons[1] and "'inf' is no price or size" in reasons[2] and "7 cells" in reasons[3]


async def test_a_symbol_the_record_model_refuses_refuses_its_file(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Records are built as their batch goes out: a symbol of 65 characters is still refused with its file, when
    it is read (logged, the other files replayed), not halfway through the replay."""
    (tmp_path / "a.csv").write_text("Datetime,Price\n2024-01-02 10:00:00,1.5\n")
    (tmp_path / ("X" * 65 + ".csv")).write_text("Datetime,Price\n2024-01-02 10:00:00,1.5\n")
    src = ReplaySource(ReplaySettings(files=[str(tmp_path)], speed=0))
    assert [p.symbol for b in [b async for b in src.fetch(None)] for p in b] == ["A"]
    assert "at most 64 characters" in caplog.text
    with pytest.raises(ValueError, match="at most 64 characters"):
        parse_csv("Datetime,Price\n2024-01-02 10:00:00,1.5\n", "X" * 65)


async def test_a_replay_of_no_file_that_can_be_read_fails_saying_why(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Every file missing or unreadable ended as a replay that finished, `python -m producers replay` printing
    "sent 0" and exiting 0: a cron job saw success. It is a ConfigError now (exit 2; /health: failed). A glob that
    matches nothing is said once (the files were listed twice)."""
    from streams.errors import ConfigError

    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    for files, said in (([str(tmp_path / "missing*.csv")], "match no file"),
                        ([str(tmp_path / "bad.csv"), str(tmp_path / "gone.csv")], "no file could be read: ")):
        with pytest.raises(ConfigError, match=said) as exc:
            [b async for b in ReplaySource(ReplaySettings(files=files), symbol="X").fetch(None)]
        assert "(and 1 more)" in str(exc.value) or "match no file" in said
    assert caplog.text.count("matches no file") == 1
    (tmp_path / "header.csv").write_text("Date,Open,High,Low,Close,Volume\n")  # read: nothing in it, no failure
    assert [b async for b in ReplaySource(ReplaySettings(files=[str(tmp_path / "header.csv")]),
                                          symbol="X").fetch(None)] == []


def test_a_folder_replays_every_file_with_its_symbol_from_mapping_ticker_row_or_file_name(tmp_path: Path) -> None:
    from producers.replay import ReplaySource
    from streams.config import ReplaySettings

    flat = "Date,Open,High,Low,Close,Volume\n2024-05-06,1,2,0.5,1.5,10\n"
    (tmp_path / "sap.de.csv").write_text(flat)
    (tmp_path / "x.csv").write_text(flat)
    (tmp_path / "multi.csv").write_text("Price,Close,High,Low,Open,Volume\nTicker,IBM,IBM,IBM,IBM,IBM\n"
                                        "Date,,,,,\n2024-05-06,1.5,2,0.5,1,10\n")
    (tmp_path / "notes.txt").write_text("not a csv")
    src = ReplaySource(ReplaySettings(files=[str(tmp_path)]), symbols={"x": "MSFT"})
    assert sorted(p.symbol for p in src.load()) == ["IBM", "MSFT", "SAP.DE"]
    globbed = ReplaySource(ReplaySettings(files=[str(tmp_path / "s*.csv")]))
    assert [p.symbol for p in globbed.load()] == ["SAP.DE"]
    # The same mapping from the settings (sources.replay.symbols), as a user configures it.
    configured = ReplaySource(ReplaySettings(files=[str(tmp_path)], symbols={"x.csv": "msft"}))
    assert sorted(p.symbol for p in configured.load()) == ["IBM", "MSFT", "SAP.DE"]


def test_a_downloads_name_gives_its_symbol_and_utf16_files_are_read(tmp_path: Path) -> None:
    """Investing.com names its downloads "TSLA Historical Data.csv", MetaTrader 5 its exports
    EURUSD_H1_202401020000_202403291600.csv: those names were the symbols, and every row was refused
    (symbol.pattern). A UTF-16 file (Windows tools, MetaTrader's Unicode files) was a UnicodeDecodeError."""
    flat = "Date,Open,High,Low,Close,Volume\n2024-05-06,1,2,0.5,1.5,10\n"
    for name in ("TSLA Historical Data.csv", "BMW Historische Daten (1).csv", "EURUSD_H1_202401020000_202403291600.csv",
                 "XAUUSD_202401020000_202401031000.csv", "SAP.DE.csv"):
        (tmp_path / name).write_text(flat)
    (tmp_path / "GBPUSD.csv").write_bytes(flat.encode("utf-16"))
    assert sorted(p.symbol for p in ReplaySource(ReplaySettings(files=[str(tmp_path)])).load()) == [
        "BMW", "EURUSD", "GBPUSD", "SAP.DE", "TSLA", "XAUUSD"]


def test_a_row_cut_short_is_a_dead_letter_not_skipped_silently() -> None:
    """`2024-02-18,100.0` (an open, then nothing) was counted among the skipped rows and lost; Yahoo's null rows
    (no price at all) are still only counted."""
    text = ("Date,Open,High,Low,Close,Volume\n2024-02-15,1,2,0.5,1.5,10\n2024-02-16,null,null,null,null,null\n"
            "2024-02-18,100.0\n")
    unreadable: list[tuple[int, str, str]] = []
    assert len(parse_rows(text, "X", unreadable=unreadable)) == 1
    assert unreadable == [(3, "2024-02-18,100.0", "no high, low, close")]


async def test_no_files_to_replay_is_a_configuration_error_not_an_empty_replay() -> None:
    """`python -m producers replay` without files said "sent 0" and exited 0."""
    from streams.errors import ConfigError

    with pytest.raises(ConfigError, match=r"set sources\.replay\.files"):
        await anext(ReplaySource(ReplaySettings()).fetch())


def test_compact_date_times_are_not_read_as_epoch_milliseconds() -> None:
    """YYYYMMDDHHMM has 12 digits, as epoch milliseconds before 2001 do: a valid date and time is read as one."""
    text = "time,open,high,low,close,volume\n202401021530,1,2,0.5,1.5,10\n202401021531,1,2,0.5,1.6,10\n"
    assert [b.timestamp for b in parse_csv(text, "X", time_zone="UTC")] == [
        datetime(2024, 1, 2, 15, 30, tzinfo=UTC), datetime(2024, 1, 2, 15, 31, tzinfo=UTC)]
    old = "time,open,high,low,close\n946684800000,1,2,0.5,1.5\n"  # epoch ms, 2000-01-01
    assert [b.timestamp for b in parse_csv(old, "X")] == [datetime(2000, 1, 1, tzinfo=UTC)]


# ------------------------------------------------------------------------------------ more export formats


def test_investing_com_price_is_the_close_volumes_have_suffixes_and_months_have_names() -> None:
    """Investing.com's downloads: "Price" is the close, every cell quoted, thousands commas, volumes as 62.38M, "-" or
    empty for none, newest first, dates M/D/Y or "Jun 03, 2024". The header was refused: no close."""
    text = ('\ufeff"Date","Price","Open","High","Low","Vol.","Change %"\r\n'
            '"12/06/2024","6,090.27","6,081.38","6,099.97","6,079.98","3.05B","0.25%"\r\n'
            '"12/05/2024","6,075.11","6,089.84","6,092.57","6,070.41","-","-0.19%"\r\n'
            '"12/04/2024","6,086.49","6,069.39","6,089.84","6,061.06","","0.61%"\r\n')
    bars = parse_csv(text, "SPX")
    assert [(b.timestamp.day, b.open, b.close, b.volume) for b in bars] == [
        (4, 6069.39, 6086.49, None), (5, 6089.84, 6075.11, None), (6, 6081.38, 6090.27, 3_050_000_000.0)]
    assert {b.interval for b in bars} == {"1d"}
    named = ('"Date","Price","Open","High","Low","Vol.","Change %"\n'
             '"Jun 04, 2024","194.35","194.64","195.32","193.03","62.38M","0.17%"\n'
             '"Jun 03, 2024","194.03","192.90","194.99","192.52","1.2K","0.46%"\n')
    assert [(b.timestamp, b.close, b.volume) for b in parse_csv(named, "AAPL")] == [
        (datetime(2024, 6, 3, tzinfo=UTC), 194.03, 1200.0), (datetime(2024, 6, 4, tzinfo=UTC), 194.35, 62_380_000.0)]
    nse = '"Date ","OPEN ","HIGH ","LOW ","PREV. CLOSE ","close ","VOLUME "\n"02-Jan-2024","1,500.00","1,520.00",' \
          '"1,495.00","1,498.00","1,512.00","1,234,567"\n'  # NSE India: 02-Jan-2024
    [bar] = parse_csv(nse, "INFY.NS")
    assert (bar.timestamp, bar.close, bar.volume) == (datetime(2024, 1, 2, tzinfo=UTC), 1512.0, 1234567.0)


def test_a_time_column_that_holds_the_date_too_is_the_instant() -> None:
    """Date,Time with Time "2024-01-02 09:30:00": joined it read "2024-01-02 2024-01-02 09:30:00", and every row
    was skipped. A Date written with a midnight ("2024-01-02 00:00:00", pandas) beside a Time gives its date."""
    text = ("Date,Time,Open,High,Low,Close,Volume\n2024-01-02,2024-01-02 09:30:00,1,2,0.5,1.5,10\n"
            "2024-01-02,2024-01-02 09:31:00,1,2,0.5,1.6,10\n")
    bars = parse_csv(text, "X")
    assert [b.timestamp for b in bars] == [datetime(2024, 1, 2, 14, 30, tzinfo=UTC),
                                           datetime(2024, 1, 2, 14, 31, tzinfo=UTC)]
    assert bars[0].interval == "1m"
    stamped = "Date,Time,Open,High,Low,Close\n2024-01-02 00:00:00,09:30,1,2,0.5,1.5\n"
    assert [b.timestamp for b in parse_csv(stamped, "X")] == [datetime(2024, 1, 2, 14, 30, tzinfo=UTC)]


def test_a_close_or_last_alone_is_a_tick_file_of_trades_without_sizes() -> None:
    """Time,Close (or Last) with no open and no volume was refused. Its rows are trades; with no size column a
    trade's volume is None, as the record model allows, and the volume checks skip it rather than judge a zero.
    Date,Close (daily closes) was refused, and Date,Price read as trades at midnight: close-only daily bars."""
    trades = parse_csv("Time,Close\n2024-01-02 09:30:00.123,100.5\n2024-01-02 09:30:00.456,100.6\n", "X")
    assert [(t.data_type, t.timestamp.isoformat(), t.price, t.volume, t.item_id) for t in trades] == [
        ("trade", "2024-01-02T14:30:00.123000+00:00", 100.5, None, "0"),
        ("trade", "2024-01-02T14:30:00.456000+00:00", 100.6, None, "0")]
    last = parse_csv("Date,Time,Last,Volume\n2024-01-02,09:30:00,100.5,3\n", "X", time_zone="UTC")
    assert [(t.data_type, t.price, t.volume) for t in last] == [("trade", 100.5, 3.0)]
    # One price a day is no trade (a date is no instant): a close-only daily bar, as Yahoo sends a fund's NAV
    for text in ("Date,Close\n2024-01-02,100.5\n2024-01-03,101\n", "Date,Price,Volume\n2024-01-03,101,7\n"
                                                                     "2024-01-02,100.5,3\n"):
        bars = parse_csv(text, "X")
        assert [(b.data_type, b.timestamp, b.interval, b.open, b.high, b.low, b.close, b.metadata.get("close_only"))
                for b in bars] == [("bar", datetime(2024, 1, d, tzinfo=UTC), "1d", c, c, c, c, True)
                                   for d, c in ((2, 100.5), (3, 101.0))]
    assert [b.volume for b in bars] == [3.0, 7.0]
    assert parse_csv("DateTime,Price\n", "X") == []  # a header alone is an empty file, as before


def test_dukascopy_gmt_time_is_utc_and_local_time_keeps_its_offset() -> None:
    """Dukascopy's "Gmt time" (02.01.2024 09:30:00.000) was no date column; its naive times are UTC, whatever
    zone is configured. Its "Local time" says its offset: "GMT+0100"."""
    gmt = ("Gmt time,Open,High,Low,Close,Volume\n02.01.2024 09:30:00.000,1.1034,1.104,1.103,1.1035,1234.5\n"
           "02.01.2024 09:31:00.000,1.1035,1.104,1.103,1.1036,99.25\n")
    bars = parse_csv(gmt, "EURUSD", time_zone="America/New_York")
    assert [(b.timestamp, b.close) for b in bars] == [(datetime(2024, 1, 2, 9, 30, tzinfo=UTC), 1.1035),
                                                      (datetime(2024, 1, 2, 9, 31, tzinfo=UTC), 1.1036)]
    local = gmt.replace("Gmt time", "Local time").replace(" 09:3", " 10:3").replace(".000,", ".000 GMT+0100,")
    assert [b.timestamp for b in parse_csv(local, "EURUSD")] == [b.timestamp for b in bars]


def test_polygon_flat_files_nanosecond_epochs() -> None:
    """polygon's minute aggregates (ticker,volume,open,close,high,low,window_start,transactions; ns epoch) and
    trades (sip_timestamp, size): no date column was found, and 19 digits were no epoch."""
    aggs = ("ticker,volume,open,close,high,low,window_start,transactions\n"
            "AAPL,4930,187.15,185.64,188.44,183.89,1704205800000000000,45\n"
            "MSFT,100,371.2,372,372.5,371,1704205800000000000,5\n"
            "AAPL,310,185.64,185.7,185.9,185.5,1704205860000000000,12\n")
    bars = parse_csv(aggs)
    assert [(b.symbol, b.timestamp, b.close, b.volume) for b in bars] == [
        ("AAPL", datetime(2024, 1, 2, 14, 30, tzinfo=UTC), 185.64, 4930.0),
        ("MSFT", datetime(2024, 1, 2, 14, 30, tzinfo=UTC), 372.0, 100.0),
        ("AAPL", datetime(2024, 1, 2, 14, 31, tzinfo=UTC), 185.7, 310.0)]
    assert {b.interval for b in bars} == {"1m"}
    trades = ("ticker,conditions,correction,exchange,id,participant_timestamp,price,sequence_number,sip_timestamp,"
              "size,tape,trf_id,trf_timestamp\nAAPL,\"12,37\",0,11,1,1704205800123456789,187.15,100,"
              "1704205800123456999,10,3,,\n")
    [t] = parse_csv(trades)
    assert (t.data_type, t.timestamp, t.price, t.volume) == (
        "trade", datetime(2024, 1, 2, 14, 30, 0, 123456, tzinfo=UTC), 187.15, 10.0)


def test_daily_bars_stamped_at_the_zones_midnight_in_utc_are_daily() -> None:
    """Alpaca's and polygon's daily bars are stamped 05:00 UTC (New York's midnight): they were intraday bars
    86400s apart at 05:00. They are days, stored at UTC midnight of their date as every daily bar."""
    alpaca = ("symbol,timestamp,open,high,low,close,volume,trade_count,vwap\n"
              "AAPL,2024-01-02 05:00:00+00:00,187.15,188.44,183.89,185.64,82488700,1009074,185.9\n"
              "AAPL,2024-01-03 05:00:00+00:00,184.22,185.88,183.43,184.25,58414460,656852,184.3\n")
    assert [(b.timestamp, b.interval) for b in parse_csv(alpaca)] == [(datetime(2024, 1, 2, tzinfo=UTC), "1d"),
                                                                      (datetime(2024, 1, 3, tzinfo=UTC), "1d")]
    summer = alpaca.replace("01-02 05:", "07-01 04:").replace("01-03 05:", "07-02 04:")  # EDT: 04:00 UTC
    assert [b.timestamp.date().isoformat() for b in parse_csv(summer)] == ["2024-07-01", "2024-07-02"]
    days = "ticker,volume,open,close,high,low,window_start,transactions\n" \
           "AAPL,82488700,187.15,185.64,188.44,183.89,1704171600000000000,1009074\n" \
           "AAPL,58414460,184.22,184.25,185.88,183.43,1704258000000000000,656852\n"
    assert [(b.timestamp, b.interval) for b in parse_csv(days)] == [(datetime(2024, 1, 2, tzinfo=UTC), "1d"),
                                                                    (datetime(2024, 1, 3, tzinfo=UTC), "1d")]
    tokyo = "time,open,high,low,close\n1704121200,1,2,0.5,1.5\n"  # 2024-01-01 15:00 UTC: Tokyo's 2 January
    assert [b.timestamp for b in parse_csv(tokyo, "7203.T", time_zone="Asia/Tokyo")] == [
        datetime(2024, 1, 2, tzinfo=UTC)]


def test_binance_klines_are_told_by_their_signature_other_headerless_files_by_their_highs_and_lows() -> None:
    """data.binance.vision's kline CSVs have no header; open time + interval - 1 = close time tells them. Other
    header-less exports (Kraken's OHLCVT, MetaTrader 4's, Kibot's, FirstRate's, histdata.com's) write a time, then
    Open,High,Low,Close[,Volume]: they were refused; the second price being every row's highest and the third its
    lowest tells them now. Rows whose prices are in another order are still refused, saying so."""
    klines = ("1704067200000,42283.58,42554.57,42283.58,42475.23,1271.68108,1704070799999,53957248.99,47134,"
              "682.57,28957416.82,0\n1704070800000,42475.23,42775.00,42431.65,42613.56,1196.37856,1704074399999,"
              "50984826.76,44634,594.50,25339218.32,0\n")
    bars = parse_csv(klines, "BTCUSDT")
    assert [(b.timestamp, b.open, b.close, b.volume) for b in bars] == [
        (datetime(2024, 1, 1, 0, tzinfo=UTC), 42283.58, 42475.23, 1271.68108),
        (datetime(2024, 1, 1, 1, tzinfo=UTC), 42475.23, 42613.56, 1196.37856)]
    assert bars[0].interval == "1h"
    micro = klines.replace("000,4", "000000,4").replace("999,5", "999999,5")  # spot files since 2025: microseconds
    assert [b.timestamp for b in parse_csv(micro, "BTCUSDT")] == [b.timestamp for b in bars]
    files = {  # the second row of each is a minute later: a 1m file
        "1704067200,42283.5,42554.5,42283.5,42475.2,12.5,100\n1704067260,42475.2,42480.0,42400.0,42410.0,3.5,40\n":
            (datetime(2024, 1, 1, 0, 1, tzinfo=UTC), 42475.2, 42480.0, 42400.0, 42410.0, 3.5),  # Kraken OHLCVT
        "2024.01.02,09:30,1.1034,1.1040,1.1030,1.1035,100\n2024.01.02,09:31,1.1035,1.1041,1.1033,1.1038,90\n":
            (datetime(2024, 1, 2, 14, 31, tzinfo=UTC), 1.1035, 1.1041, 1.1033, 1.1038, 90.0),  # MetaTrader 4
        "01/02/2024,09:30,187.15,188.44,183.89,185.64,1000\n01/02/2024,09:31,185.64,186.0,185.5,185.9,800\n":
            (datetime(2024, 1, 2, 14, 31, tzinfo=UTC), 185.64, 186.0, 185.5, 185.9, 800.0),  # Kibot
        "2024-01-02 09:30:00,187.15,188.44,183.89,185.64,1000\n2024-01-02 09:31:00,185.64,186.0,185.5,185.9,800\n":
            (datetime(2024, 1, 2, 14, 31, tzinfo=UTC), 185.64, 186.0, 185.5, 185.9, 800.0),  # FirstRate Data
        "20240102 093000;1.103400;1.104000;1.103000;1.103500;0\n20240102 093100;1.1035;1.1041;1.1033;1.1038;0\n":
            (datetime(2024, 1, 2, 14, 31, tzinfo=UTC), 1.1035, 1.1041, 1.1033, 1.1038, 0.0),  # histdata.com M1
    }
    for text, last in files.items():
        b = parse_csv(text, "X")[-1]
        assert (b.timestamp, b.open, b.high, b.low, b.close, b.volume, b.interval) == (*last, "1m"), text
    for text in ("2024-01-02,185.5,185.2,186.0,185.8,1\n2024-01-03,185.5,185.1,186.2,185.8,1\n",  # O,L,H,C
                 "2024-01-02 09:30:00,185.5,100\n"):  # a price and a size: which is which is not told
        with pytest.raises(ValueError, match=r"no header: the first row .* is data"):
            parse_csv(text, "X")


def test_crypto_and_kaggle_exports_title_line_unix_time_base_volume_and_float_epochs() -> None:
    """CryptoDataDownload: its address on the first line, then unix (ms, UTC) beside a naive "date", and volumes
    per currency ("Volume BTC" is the base's). Kaggle's bitcoin minutes: epoch seconds written as floats."""
    cdd = ("https://www.CryptoDataDownload.com\nunix,date,symbol,open,high,low,close,Volume BTC,Volume USDT,"
           "tradecount\n1704070800000,2024-01-01 01:00:00,BTC/USDT,42475.23,42775.0,42431.65,42613.56,1196.37,"
           "50984826.76,44634\n1704067200000,2024-01-01 00:00:00,BTC/USDT,42283.58,42554.57,42283.58,42475.23,"
           "1271.68,53957248.99,47134\n")
    bars = parse_csv(cdd, "BTCUSDT")
    assert [(b.timestamp, b.close, b.volume) for b in bars] == [
        (datetime(2024, 1, 1, 0, tzinfo=UTC), 42475.23, 1271.68), (datetime(2024, 1, 1, 1, tzinfo=UTC), 42613.56,
                                                                  1196.37)]
    kaggle = "Timestamp,Open,High,Low,Close,Volume\n1325412060.0,4.58,4.58,4.58,4.58,0.0\n" \
             "1325412120.0,4.58,4.59,4.58,4.59,1.5\n"
    assert [b.timestamp for b in parse_csv(kaggle, "BTCUSD")] == [datetime(2012, 1, 1, 10, 1, tzinfo=UTC),
                                                                  datetime(2012, 1, 1, 10, 2, tzinfo=UTC)]
    old = "Timestamp,Open,High,Low,Close,Volume_(BTC),Volume_(Currency),Weighted_Price\n" \
          "1325317920,4.39,4.39,4.39,4.39,0.455,2.0,4.39\n"
    assert [b.volume for b in parse_csv(old, "BTCUSD")] == [0.455]


def test_coinmarketcap_open_time_and_interactive_brokers_dates() -> None:
    """CoinMarketCap's export: timeOpen is the bar's time, not the snapshot "timestamp" (23:59:59.999). Interactive
    Brokers writes "20240102  09:30:00" (two spaces), or a zone's name after the time."""
    cmc = ('"timeOpen";"timeClose";"timeHigh";"timeLow";"name";"open";"high";"low";"close";"volume";"marketCap";'
           '"timestamp"\n"2024-01-02T00:00:00.000Z";"2024-01-02T23:59:59.999Z";"2024-01-02T12:00:00.000Z";'
           '"2024-01-02T01:00:00.000Z";"2781";44187.14;45899.71;44176.95;44957.97;39800000000.5;880000000000.1;'
           '"2024-01-02T23:59:59.999Z"\n')
    [bar] = parse_csv(cmc, "BTC-USD")
    assert (bar.timestamp, bar.interval, bar.close) == (datetime(2024, 1, 2, tzinfo=UTC), "1d", 44957.97)
    # its "name" is CoinMarketCap's id of the quote currency (2781: USD), the same in every file: no ticker, so a
    # folder of BTC.csv and ETH.csv is named by its files, not all "2781" (one coin's bars overwriting the other's)
    with pytest.raises(NoSymbol):
        parse_csv(cmc, None)
    ib = "date,open,high,low,close,volume,average,barCount\n20240102  09:30:00,187.15,188.44,183.89,185.64,1000," \
         "186,50\n20240102 09:31:00 US/Eastern,187.15,188.44,183.89,185.64,1000,186,50\n"
    assert [b.timestamp for b in parse_csv(ib, "AAPL", time_zone="UTC")] == [
        datetime(2024, 1, 2, 9, 30, tzinfo=UTC), datetime(2024, 1, 2, 14, 31, tzinfo=UTC)]


# ---------------------------------------------------------------------------------------------- quotes

LATER = datetime(2025, 1, 1, tzinfo=UTC)  # "now" for validation: every replayed quote below is history


def verdicts(points: list[MarketDataPoint]) -> list[str]:
    """Each point through the validate stage's rules as the raw record it is published as: "ok", a flag, or the
    rule that refused it."""
    validator = Validator(ValidationSettings())
    out = []
    for p in points:
        try:
            clean = validator.check(p.to_json(), source="replay", now=LATER)
        except RejectedRecord as exc:
            out.append(exc.rule)
        else:
            out.append(",".join(clean.flags) or "ok")
    return out


def test_dukascopy_tick_exports_are_quotes_with_their_volumes_as_sizes() -> None:
    """Dukascopy's tick export (Gmt time,Ask,Bid,AskVolume,BidVolume) was refused ("bid/ask quotes are not
    replayed"). Each row is a quote: bid and ask by name (Ask comes first), the volumes (millions of units) as the
    sizes as written, no price; two quotes of one millisecond are two keys, not one revising the other."""
    gmt = ("Gmt time,Ask,Bid,AskVolume,BidVolume\n"
           "02.01.2024 00:00:00.123,1.10419,1.10412,1.5,2.25\n"
           "02.01.2024 00:00:00.123,1.10420,1.10412,0.75,2.25\n"
           "02.01.2024 00:00:01.004,1.10421,1.10413,0.75,1.2\n")
    quotes = parse_csv(gmt, "EURUSD", time_zone="America/New_York", origin="EURUSD_Ticks.csv")
    t0 = datetime(2024, 1, 2, 0, 0, 0, 123000, tzinfo=UTC)
    assert [(q.data_type, q.symbol, q.timestamp, q.bid, q.ask, q.bid_size, q.ask_size, q.price, q.volume, q.item_id)
            for q in quotes] == [
        ("quote", "EURUSD", t0, 1.10412, 1.10419, 2.25, 1.5, None, None, "0"),
        ("quote", "EURUSD", t0, 1.10412, 1.1042, 2.25, 0.75, None, None, "1"),
        ("quote", "EURUSD", datetime(2024, 1, 2, 0, 0, 1, 4000, tzinfo=UTC), 1.10413, 1.10421, 1.2, 0.75, None,
         None, "0")]
    assert quotes[0].metadata == {"file": "EURUSD_Ticks.csv"}
    local = ("Local time,Ask,Bid,AskVolume,BidVolume\n"
             "02.01.2024 01:00:00.123 GMT+0100,1.10419,1.10412,1.5,2.25\n")
    assert [(q.timestamp, q.bid, q.ask) for q in parse_csv(local, "EURUSD")] == [(t0, 1.10412, 1.10419)]
    assert verdicts(quotes) == ["ok", "ok", "ok"]


def test_a_crossed_or_locked_quote_is_validations_to_judge_not_the_parsers() -> None:
    """The parser keeps every quote the file holds; the validate stage refuses the crossed one (quote.crossed) and
    flags the locked one (quote.locked), as it does a live quote. A zero bid is refused there too."""
    text = ("timestamp,bid,ask\n2024-01-02T14:30:00Z,100.1,100.2\n2024-01-02T14:30:01Z,100.3,100.2\n"
            "2024-01-02T14:30:02Z,100.2,100.2\n2024-01-02T14:30:03Z,0,100.2\n")
    quotes = parse_csv(text, "XYZ")
    assert [(q.bid, q.ask) for q in quotes] == [(100.1, 100.2), (100.3, 100.2), (100.2, 100.2), (0.0, 100.2)]
    assert verdicts(quotes) == ["ok", "quote.crossed", "quote.locked", "price.non_positive"]


def test_metatrader5_tick_export_empty_cells_are_the_previous_values(caplog: pytest.LogCaptureFixture) -> None:
    """MetaTrader 5's tick export writes only what changed (FLAGS 2: bid, 4: ask, 8/16: last/volume): an empty ASK
    is the ask before. The first rows may hold one side only: no quote until both are known (skipped and counted
    with a warning, not sent as half quotes validation refuses). A LAST/VOLUME row is a trade (an exchange
    instrument's), its empty cells carried alike; a row changing both the quote and the last is both."""
    mt5 = ("<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>\n"
           "2024.01.02\t00:00:00.100\t1.10412\t\t\t\t2\n"  # bid only: the ask is not known yet
           "2024.01.02\t00:00:00.250\t\t1.10419\t\t\t4\n"  # now both: a quote
           "2024.01.02\t00:00:00.250\t1.10413\t\t\t\t2\n"  # the same millisecond, the bid moves: a second quote
           "2024.01.02\t00:00:01.000\t\t1.10421\t\t\t4\n"
           "2024.01.02\t00:00:01.500\t\t\t1.10415\t2\t88\n"  # a trade, no quote change
           "2024.01.02\t00:00:02.000\t\t\t\t3\t80\n"  # a trade at the same price: LAST empty, only VOLUME
           "2024.01.02\t00:00:02.500\t1.10414\t\t1.10416\t\t30\n")  # bid and last: a quote and a trade
    caplog.set_level(logging.WARNING)
    points = parse_csv(mt5, "EURUSD", time_zone="UTC", origin="EURUSD.tsv")
    assert "EURUSD.tsv: skipped 1 ticks before both bid and ask" in caplog.text
    ms = [(p.data_type, p.timestamp.strftime("%S.%f")[:6], p.bid, p.ask, p.price, p.volume, p.item_id)
          for p in points]
    assert ms == [("quote", "00.250", 1.10412, 1.10419, None, None, "0"),
                  ("quote", "00.250", 1.10413, 1.10419, None, None, "1"),
                  ("quote", "01.000", 1.10413, 1.10421, None, None, "0"),
                  ("trade", "01.500", None, None, 1.10415, 2.0, "0"),
                  ("trade", "02.000", None, None, 1.10415, 3.0, "0"),
                  ("quote", "02.500", 1.10414, 1.10421, None, None, "0"),
                  ("trade", "02.500", None, None, 1.10416, 3.0, "0")]
    assert set(verdicts(points)) == {"ok"}
    # a forex symbol's export: LAST and VOLUME always empty, quotes only
    fx = "<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>\n2024.01.02\t09:30:00.000\t1.1\t1.2\t\t\t6\n"
    assert [(p.data_type, p.timestamp, p.bid, p.ask) for p in parse_csv(fx, "EURUSD", time_zone="UTC")] == [
        ("quote", datetime(2024, 1, 2, 9, 30, tzinfo=UTC), 1.1, 1.2)]
    # the values carried are each symbol's own
    two = ("<SYMBOL>\t<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>\n"
           "AAA\t2024.01.02\t09:30:00\t10\t11\t\t\t6\nBBB\t2024.01.02\t09:30:01\t20\t21\t\t\t6\n"
           "AAA\t2024.01.02\t09:30:02\t\t12\t\t\t4\nBBB\t2024.01.02\t09:30:03\t19\t\t\t\t2\n")
    assert [(p.symbol, p.bid, p.ask) for p in parse_csv(two, None, time_zone="UTC")] == [
        ("AAA", 10.0, 11.0), ("BBB", 20.0, 21.0), ("AAA", 10.0, 12.0), ("BBB", 19.0, 21.0)]
    with pytest.raises(ValueError, match=r"none of its 1 rows has a time and bid, ask"):
        parse_csv("<DATE>\t<TIME>\t<BID>\t<ASK>\t<LAST>\t<VOLUME>\t<FLAGS>\nnever\t09:30\t1.1\t1.2\t\t\t6\n", "X")


def test_polygon_quotes_flat_files_and_quotes_of_one_instant_keyed_as_trades_are() -> None:
    """polygon's quotes flat files (ticker, bid_price, ask_price, bid_size, ask_size, sip_timestamp in ns) were
    refused. Quotes of one instant (ns truncated to the record's microseconds) are apart by their place counted from
    the oldest row per symbol, so a newest-first copy of the file lands on the same keys, as a tick file's trades."""
    header = ("ticker,ask_exchange,ask_price,ask_size,bid_exchange,bid_price,bid_size,conditions,indicators,"
              "participant_timestamp,sequence_number,sip_timestamp,tape,trf_timestamp\n")
    rows = ['AAPL,12,185.65,200,11,185.64,100,"1,2",,1704205800123456000,1,1704205800123456789,3,',
            "AAPL,12,185.66,300,11,185.64,100,1,,1704205800123456100,2,1704205800123456900,3,",
            "MSFT,12,372.1,100,11,372.0,300,1,,1704205800123456000,3,1704205800123456789,3,",
            "AAPL,12,185.67,100,11,185.65,400,1,,1704205801000000000,4,1704205801000000001,3,"]
    quotes = parse_csv(header + "\n".join(rows) + "\n")
    t0 = datetime(2024, 1, 2, 14, 30, 0, 123456, tzinfo=UTC)
    assert [(q.symbol, q.timestamp, q.bid, q.ask, q.bid_size, q.ask_size, q.item_id) for q in quotes] == [
        ("AAPL", t0, 185.64, 185.65, 100.0, 200.0, "0"), ("AAPL", t0, 185.64, 185.66, 100.0, 300.0, "1"),
        ("MSFT", t0, 372.0, 372.1, 300.0, 100.0, "0"),
        ("AAPL", datetime(2024, 1, 2, 14, 30, 1, tzinfo=UTC), 185.65, 185.67, 400.0, 100.0, "0")]
    newest_first = parse_csv(header + "\n".join(reversed(rows)) + "\n")

    def keys(points: list[MarketDataPoint]) -> set[tuple[str, datetime, str, float | None]]:
        return {(p.symbol, p.timestamp, p.item_id, p.ask) for p in points}

    assert keys(newest_first) == keys(quotes)
    assert set(verdicts(quotes)) == {"ok"}


def test_named_bid_ask_columns_are_quotes_beside_a_price_they_stay_trades() -> None:
    """Any Time,Bid,Ask[,BidSize,AskSize] file (TrueFX-like columns, a symbol column with pairs) is quotes; a file
    with a price (or last) beside its bid and ask is the trades it was read as before."""
    truefx = ("Symbol,Timestamp,Bid,Ask\nEUR/USD,20240102 00:00:00.123,1.10412,1.10419\n"
              "EUR/USD,20240102 00:00:00.123,1.10411,1.10419\nUSD/JPY,20240102 00:00:00.200,141.012,141.018\n")
    quotes = parse_csv(truefx, None, time_zone="UTC")
    assert [(q.data_type, q.symbol, q.bid, q.ask, q.item_id) for q in quotes] == [
        ("quote", "EUR/USD", 1.10412, 1.10419, "0"), ("quote", "EUR/USD", 1.10411, 1.10419, "1"),
        ("quote", "USD/JPY", 141.012, 141.018, "0")]
    assert set(verdicts(quotes)) == {"ok"}
    sized = "time,bid,ask,bid_size,ask_size\n1704205800123,10.1,10.2,300,500\n"
    assert [(q.timestamp, q.bid_size, q.ask_size) for q in parse_csv(sized, "X")] == [
        (datetime(2024, 1, 2, 14, 30, 0, 123000, tzinfo=UTC), 300.0, 500.0)]
    taq = "time,price,size,bid,ask\n2024-01-02 09:30:00,10.15,100,10.1,10.2\n"
    assert [(t.data_type, t.price, t.volume, t.bid, t.ask) for t in parse_csv(taq, "X")] == [
        ("trade", 10.15, 100.0, None, None)]
    with pytest.raises(ValueError, match=r"quotes are read from a bid and an ask column"):
        parse_csv("Time,Bid\n2024-01-02 09:30:00,10.1\n", "X")


def test_histdata_ticks_without_a_header_stay_refused_and_with_one_are_quotes() -> None:
    """HistData.com's ticks (DateTime Stamp,Bid Quote,Ask Quote,Volume; EST all year round) have no header: nothing
    in them tells the bid from the ask, so they are refused as before, saying which header to add. With it they are
    quotes; their volume (always 0) is no size."""
    rows = "20240102 000000123,1.10412,1.10419,0\n20240102 000000456,1.10413,1.10419,0\n"
    with pytest.raises(ValueError, match=r"no header: .*DateTime,Bid,Ask,Volume for bid/ask ticks"):
        parse_csv(rows, "EURUSD")
    quotes = parse_csv("DateTime,Bid,Ask,Volume\n" + rows, "EURUSD", time_zone="Etc/GMT+5")
    assert [(q.data_type, q.timestamp, q.bid, q.ask, q.bid_size, q.ask_size) for q in quotes] == [
        ("quote", datetime(2024, 1, 2, 5, 0, 0, 123000, tzinfo=UTC), 1.10412, 1.10419, None, None),
        ("quote", datetime(2024, 1, 2, 5, 0, 0, 456000, tzinfo=UTC), 1.10413, 1.10419, None, None)]


# ---------------------------------------------------------------- boundaries of the export formats (mutation audit)


def test_volume_suffixes_are_read_exactly_in_either_case_and_a_bad_one_skips_its_row() -> None:
    """62.38M-style volumes: 2.01M is 2,010,000 (2.01 * 1e6 is 2009999.9999999998), T is trillions (a meme coin's
    daily volume), a lower-case suffix reads alike; a cell that is no number before its suffix skips the row, as
    any unreadable cell does, rather than stopping the replay."""
    text = ('"Date","Price","Open","High","Low","Vol."\n"Jan 05, 2024","1.5","1.4","1.6","1.3","?M"\n'
            '"Jan 04, 2024","1.5","1.4","1.6","1.3","3.2k"\n"Jan 03, 2024","1.5","1.4","1.6","1.3","1.5T"\n'
            '"Jan 02, 2024","1.5","1.4","1.6","1.3","2.01M"\n')
    assert [(b.timestamp.day, b.volume) for b in parse_csv(text, "SHIB-USD")] == [
        (2, 2_010_000.0), (3, 1_500_000_000_000.0), (4, 3200.0)]


def test_two_digit_years_pivot_where_strptime_does() -> None:
    """"As strptime's %y reads them": every two-digit year, 00 to 99, on both sides of the 68/69 pivot."""
    from producers.replay import _year

    assert [_year(f"{y:02d}") for y in range(100)] == [datetime.strptime(f"{y:02d}", "%y").year for y in range(100)]
    assert _year("1968") == 1968


def test_named_month_dates_with_two_digit_years_early_years_and_a_time() -> None:
    """NSE's 02-Jan-24 (a two-digit year, as strptime reads it), a 1950 date in the same form (its four digits kept,
    not cut to 50), and a time after the date (an intraday file)."""
    daily = "Date,Open,High,Low,Close\n02-Jan-24,2,3,1,2.5\n03-Jan-1950,2,3,1,2.5\n"
    assert [b.timestamp.date().isoformat() for b in parse_csv(daily, "X")] == ["1950-01-03", "2024-01-02"]
    minutes = "Date,Open,High,Low,Close\n02-Jan-2024 09:30:00,2,3,1,2.5\n02-Jan-2024 09:31:00,2,3,1,2.6\n"
    bars = parse_csv(minutes, "X", time_zone="UTC")
    assert [b.timestamp for b in bars] == [datetime(2024, 1, 2, 9, 30, tzinfo=UTC),
                                           datetime(2024, 1, 2, 9, 31, tzinfo=UTC)]
    assert bars[0].interval == "1m"


def test_a_gmt_offset_keeps_its_sign_and_its_minutes() -> None:
    """Dukascopy's "Local time" of a zone west of UTC (GMT-0500) or half an hour off it (GMT+0530): the same
    instants as 09:30 and 09:31 UTC."""
    text = ("Local time,Open,High,Low,Close,Volume\n02.01.2024 15:00:00.000 GMT+0530,1.1,1.2,1.0,1.15,5\n"
            "02.01.2024 04:31:00.000 GMT-0500,1.1,1.2,1.0,1.15,5\n")
    assert [b.timestamp for b in parse_csv(text, "EURUSD")] == [datetime(2024, 1, 2, 9, 30, tzinfo=UTC),
                                                                datetime(2024, 1, 2, 9, 31, tzinfo=UTC)]


def test_a_time_that_only_looks_like_a_zone_name_skips_its_row() -> None:
    """A Time of "N/A" reads as a zone's name after the date ("2024-01-02 N/A"); there is no such zone, so the row
    has no time and is skipped, as any unreadable time, instead of ending the replay with a KeyError."""
    text = "Date,Time,Open,High,Low,Close\n2024-01-02,N/A,1,2,0.5,1.5\n2024-01-02,09:30,1,2,0.5,1.5\n"
    assert [b.timestamp for b in parse_csv(text, "X", time_zone="UTC")] == [datetime(2024, 1, 2, 9, 30,
                                                                                     tzinfo=UTC)]


def test_float_epochs_keep_their_fraction_and_nine_digit_ones_are_read() -> None:
    """Epoch seconds written as floats: the fraction is the instant's (a tick's microseconds), and nine digits
    before the point are seconds before 2001-09-09, as for integer epochs."""
    text = "Timestamp,Open,High,Low,Close\n1704205800.123456,1,2,0.5,1.5\n999999999.5,1,2,0.5,1.5\n"
    assert [b.timestamp for b in parse_csv(text, "X")] == [datetime(2001, 9, 9, 1, 46, 39, 500000, tzinfo=UTC),
                                                           datetime(2024, 1, 2, 14, 30, 0, 123456, tzinfo=UTC)]


def test_a_time_half_a_minute_after_the_zones_midnight_is_no_date() -> None:
    """Only a midnight to the microsecond starts a day: bars at 05:00:30 UTC (00:00:30 in New York) stay at their
    instant, not moved to the UTC midnight of their date as daily bars are."""
    text = ("timestamp,open,high,low,close\n2024-01-02 05:00:30+00:00,1,2,0.5,1.5\n"
            "2024-01-03 05:00:30+00:00,1,2,0.5,1.5\n")
    assert [b.timestamp for b in parse_csv(text, "X")] == [datetime(2024, 1, 2, 5, 0, 30, tzinfo=UTC),
                                                           datetime(2024, 1, 3, 5, 0, 30, tzinfo=UTC)]


_KLINE = ["1704067200000", "42283.58", "42554.57", "42283.58", "42475.23", "1271.68108", "1704070799999",
          "53957248.99", "47134", "682.57", "28957416.82", "0"]


@pytest.mark.parametrize("row", [
    [*_KLINE, "0"],  # 13 columns
    [*_KLINE[:6], str(int(_KLINE[0]) - 1001), *_KLINE[7:]],  # closed before it opened (a whole second before)
    ["1704067200000000", *_KLINE[1:6], str(1704067200000000 + 1_499_999), *_KLINE[7:]],  # us, 1.5 s: no interval
    [*_KLINE[:6], "1704067200000999", *_KLINE[7:]],  # ms open, us close
])
def test_headerless_rows_that_break_the_kline_signature_are_read_by_their_prices_alone(row: list[str]) -> None:
    """Binance's klines are told by their signature, all of it: 12 columns, open and close times in one unit, the
    close a whole number of seconds after the open, less one unit. A file that only looks like them is no kline:
    it is read as any header-less Time,Open,High,Low,Close,Volume file, the columns after the volume left out."""
    [kline] = parse_csv(",".join(_KLINE) + "\n", "BTCUSDT")  # the premise: the unmodified row is a kline
    [bar] = parse_csv(",".join(row) + "\n", "BTCUSDT")
    assert (bar.timestamp, bar.open, bar.high, bar.low, bar.close, bar.volume) == (
        kline.timestamp, kline.open, kline.high, kline.low, kline.close, kline.volume)


def test_headerless_iso_times_with_t_and_z_are_data_not_a_header() -> None:
    """A first row of ISO-8601 times (2024-01-02T09:30:00Z) has letters, single ones: data, not read as a header
    naming no date column; its highs and lows tell its columns."""
    bars = parse_csv("2024-01-02T09:30:00Z,187.15,188.44,183.89,185.64,1000\n"
                     "2024-01-02T09:31:00Z,185.64,186.0,185.5,185.9,800\n", "AAPL")
    assert [(b.timestamp, b.close, b.volume) for b in bars] == [
        (datetime(2024, 1, 2, 9, 30, tzinfo=UTC), 185.64, 1000.0), (datetime(2024, 1, 2, 9, 31, tzinfo=UTC), 185.9,
                                                                    800.0)]


def test_the_files_own_volume_column_is_kept_beside_a_per_currency_one() -> None:
    """The base currency's "Volume BTC" stands in for a volume only when the file has none: a Vol column is it."""
    text = "Date,Open,High,Low,Close,Vol,Volume USD\n2024-01-02,1,2,0.5,1.5,10,15\n"
    assert [b.volume for b in parse_csv(text, "X")] == [10.0]


def test_a_close_with_a_high_and_low_but_no_open_is_refused_not_read_as_trades() -> None:
    """A Close alone is a tick file; beside a High and a Low it is a bar file without its open: refused, naming it."""
    with pytest.raises(ValueError, match=r"no open column"):
        parse_csv("Date,High,Low,Close\n2024-01-02,2,0.5,1.5\n", "X")


def test_a_tick_file_with_a_print_at_midnight_stays_trades() -> None:
    """Only a file of dates alone is close-only daily bars: a 24/7 market's prints, one of them at 00:00:00.000
    UTC, are trades."""
    text = "Time,Price,Size\n2024-01-02 00:00:00,42283.5,0.1\n2024-01-02 00:00:01.250,42284.0,0.2\n"
    trades = parse_csv(text, "BTCUSDT", time_zone="UTC")
    assert [(t.data_type, t.price) for t in trades] == [("trade", 42283.5), ("trade", 42284.0)]


def test_prints_of_one_instant_are_keyed_in_file_order_and_each_symbol_by_its_own_direction() -> None:
    """A file whose rows are all one instant tells no direction: its prints are keyed in the file's order. In a
    file where one symbol is newest first and another oldest first, the second keeps its file order too."""
    one = parse_csv("Time,Price,Size\n2024-01-02 09:30:00.120,100.5,3\n2024-01-02 09:30:00.120,100.25,7\n", "XYZ")
    assert [(t.item_id, t.price) for t in one] == [("0", 100.5), ("1", 100.25)]
    text = ("Time,Symbol,Price,Size\n2024-01-02 09:30:01,XYZ,10.5,1\n2024-01-02 09:30:00,XYZ,10.25,1\n"
            "2024-01-02 09:30:00,ABC,5.5,1\n2024-01-02 09:30:00,ABC,5.25,1\n2024-01-02 09:30:02,ABC,5.75,1\n")
    abc = [(t.timestamp.second, t.item_id, t.price) for t in parse_csv(text, None) if t.symbol == "ABC"]
    assert abc == [(0, "0", 5.5), (0, "1", 5.25), (2, "0", 5.75)]


def test_a_ticker_column_of_numeric_exchange_codes_keeps_each_rows_symbol() -> None:
    """Shanghai's, Tokyo's, Seoul's and Hong Kong's listings are numbers (600519, 7203, 005930, 0700): a Ticker
    column of them names each row's stock. Rejected as CoinMarketCap's numeric "name" is, a file of two stocks
    read without a symbol had none, and with one became one stock, both rows on the same key (one lost)."""
    text = ("date,open,high,low,close,volume,ticker\n2024-01-02,1700,1720,1690,1710,100,600519\n"
            "2024-01-02,10.1,10.3,10.0,10.2,5000,000001\n")
    for given in (None, "X"):
        assert [(b.symbol, b.close) for b in parse_csv(text, given)] == [("000001", 10.2), ("600519", 1710.0)]


def test_a_header_less_files_adjusted_close_is_not_read_as_its_volume() -> None:
    """yfinance's frame written without its header (Date,Open,High,Low,Close,Adj Close,Volume): the number after the
    close is a price beside the row's own, not a volume; it was stored as the bar's volume (184.94 shares). It is
    the adjusted close (metadata), and the number after it the volume."""
    text = ("2024-01-02,187.15,188.44,183.89,185.64,184.94,82488700\n"
            "2024-01-03,184.22,185.88,183.43,184.25,183.55,58414500\n")
    bars = parse_csv(text, "AAPL")
    assert [(b.close, b.metadata.get("adj_close"), b.volume) for b in bars] == [
        (185.64, 184.94, 82488700.0), (184.25, 183.55, 58414500.0)]
    no_volume = "\n".join(",".join(line.split(",")[:6]) for line in text.splitlines()) + "\n"
    assert [(b.close, b.volume) for b in parse_csv(no_volume, "AAPL")] == [(185.64, None), (184.25, None)]
    kraken = "1381095255,122.0,122.0,122.0,122.0,0.1,1\n1381179030,123.61,123.61,123.61,123.61,150.5,1\n"
    assert [b.volume for b in parse_csv(kraken, "XBTUSD")] == [0.1, 150.5]  # a volume, though one is price-sized
