"""Splits in the suite (issue 12 leftovers): the ratios of real corporate actions on bars and ticks, and a
split-like jump that comes back (a price spike) told from one whose level persists (a split).

The flags are read as the detectors leave them: a follow-up verdict replaces the flags of the record it names
(for a bar or a quote the validate stage publishes it as a newer revision of that row, the sink keeps the
newest; for an immutable trade the verdict is its event on ticks.anomalies and in anomaly_events)."""

import math
import random
from datetime import UTC, datetime, timedelta

import pytest

from streams.anomalies import AnomalySettings, DetectorSuite
from streams.models import MarketDataPoint

D0 = datetime(2012, 1, 3, 21, tzinfo=UTC)
T0 = datetime(2024, 5, 6, 14, 0, tzinfo=UTC)  # a Monday
# new:old shares -> what prices are divided by (a 3:2 split: 3 shares for 2, prices / 1.5, volumes x 1.5)
NEW_RATIOS = {"3:2": 1.5, "4:1": 4.0, "5:1": 5.0, "10:1": 10.0, "20:1": 20.0, "1:10": 0.1, "1:20": 0.05, "5:4": 1.25}


def weekdays(n: int, start: datetime = D0) -> list[datetime]:
    out, d = [], start
    while len(out) < n:
        if d.weekday() < 5:
            out.append(d)
        d += timedelta(days=1)
    return out


def bar(day: datetime, close: float, open_: float | None = None, volume: float = 1e6) -> MarketDataPoint:
    o = close if open_ is None else open_
    return MarketDataPoint(symbol="SPY", timestamp=day, source="replay", data_type="bar", interval="1d", open=o,
                           high=max(o, close) * 1.003, low=min(o, close) * 0.997, close=close, volume=volume)


def trade(price: float, ts: datetime, volume: float = 100.0) -> MarketDataPoint:
    return MarketDataPoint(symbol="AAPL", timestamp=ts, source="sim", data_type="trade", price=price, volume=volume)


def flag_of(a: object) -> str:
    return "corporate_action.suspect" if a.kind == "corporate_action" else f"anomaly:{a.detector}"  # type: ignore[attr-defined]


def final_flags(suite: DetectorSuite, points: list[MarketDataPoint]) -> dict[str, list[str]]:
    """timestamp -> the flags its row ends with (as streams/stages/validate.py Router.detect and the sink)."""
    rows: dict[str, list[str]] = {}
    for p in points:
        ts = p.timestamp.isoformat()
        rows.setdefault(ts, [])
        for a in suite.update(p):
            if a.details.get("follow_up"):
                rows[datetime.fromisoformat(a.record["timestamp"]).isoformat()] = [*a.record.get("flags", ()),
                                                                                    flag_of(a)]
            elif a.kind in ("tick", "corporate_action"):
                rows[ts].append(flag_of(a))
    return {k: v for k, v in rows.items() if v}


def daily(n: int = 80, seed: int = 1, vol: float = 0.01) -> tuple[list[float], list[float]]:
    """Opens and closes of a random walk whose bars open near the previous close (overnight gaps ~0.3%)."""
    rng = random.Random(seed)
    c, opens, closes = 100.0, [], []
    for _ in range(n):
        o = c * math.exp(rng.gauss(0, 0.003))
        c = o * math.exp(rng.gauss(0, vol))
        opens.append(o)
        closes.append(c)
    return opens, closes


# ------------------------------------------------------------------------------------------ real split ratios


@pytest.mark.parametrize("split", sorted(NEW_RATIOS))
def test_a_real_split_ratio_on_daily_bars_is_one_corporate_action_and_rescales_prices_and_volumes(split: str) -> None:
    r = NEW_RATIOS[split]
    opens, closes = daily()
    days = weekdays(80)
    points = [bar(d, c / (r if i >= 50 else 1.0), o / (r if i >= 50 else 1.0), 1e6 * (r if i >= 50 else 1.0))
              for i, (d, o, c) in enumerate(zip(days, opens, closes, strict=True))]
    got = final_flags(DetectorSuite(), points)
    # the split day carries the corporate action, nothing else: no price error, no volume spike after it
    assert got == {days[50].isoformat(): ["corporate_action.suspect"]}


@pytest.mark.parametrize("split", sorted(NEW_RATIOS))
def test_a_real_split_ratio_on_trades_after_the_close_is_one_corporate_action(split: str) -> None:
    r = NEW_RATIOS[split]
    rng = random.Random(5)
    p, points = 100.0, []
    for i in range(200):  # day 1: a trade every 2 s
        p *= math.exp(rng.gauss(0, 3e-4))
        points.append(trade(round(p, 4), T0 + timedelta(seconds=2 * i)))
    day2 = T0 + timedelta(hours=20)
    for i in range(200):  # day 2, after the split: prices / r, sizes x r
        p *= math.exp(rng.gauss(0, 3e-4))
        points.append(trade(round(p / r, 6), day2 + timedelta(seconds=2 * i), volume=100.0 * r))
    got = final_flags(DetectorSuite(), points)
    assert got == {day2.isoformat(): ["corporate_action.suspect"]}


# ------------------------------------------------------------------------------ a spike that comes back, or not


@pytest.mark.parametrize("factor", [0.5, 3.0, 1.5, 0.1, 10.0])
def test_a_split_like_bar_that_comes_back_is_a_price_error_and_the_way_back_no_split(factor: float) -> None:
    opens, closes = daily()
    days = weekdays(80)
    points = [bar(d, c * (factor if i == 60 else 1.0), o * (factor if i == 60 else 1.0))
              for i, (d, o, c) in enumerate(zip(days, opens, closes, strict=True))]
    got = final_flags(DetectorSuite(), points)
    assert list(got) == [days[60].isoformat()]
    assert "corporate_action.suspect" not in got[days[60].isoformat()]
    # x10 / x0.1: a decimal shift on arrival (and BarOutlier's verdict with the next bar); else a spike
    want = ["anomaly:decimal_shift", "anomaly:bar_outlier"] if factor in (0.1, 10.0) else ["anomaly:bar_outlier"]
    assert got[days[60].isoformat()] == want


def test_a_split_whose_level_persists_stays_a_split() -> None:
    opens, closes = daily()
    days = weekdays(80)
    points = [bar(d, c / (2.0 if i >= 60 else 1.0), o / (2.0 if i >= 60 else 1.0), 2e6 if i >= 60 else 1e6)
              for i, (d, o, c) in enumerate(zip(days, opens, closes, strict=True))]
    suite = DetectorSuite()
    got = final_flags(suite, points)
    assert got == {days[60].isoformat(): ["corporate_action.suspect"]}
    assert suite.split.pending == {}  # decided by the next bar


@pytest.mark.parametrize(("silence_days", "comes_back"), [(60, False), (60, True), (1, False)])
def test_a_10k_jump_after_a_suspension_is_a_reverse_split_once_the_next_bar_holds(silence_days: int,
                                                                                   comes_back: bool) -> None:
    """A penny stock back from two months' suspension at x118 (DITO.PS 2010-09-20: 0.04 -> 4.75, a 1:100 reverse
    split plus the move while suspended) is one corporate action, not four days of decimal shifts; the same
    jump that comes back the next bar is still a decimal shift, and without a suspension x118 is no 1:100."""
    opens, closes = daily(vol=0.02)
    days = weekdays(80)
    days = days[:50] + [d + timedelta(days=silence_days - 1) for d in days[50:]]
    moved = 1.18 * 100.0

    def level(i: int) -> float:
        return moved if i >= 50 and not (comes_back and i > 50) else 1.0

    points = [bar(d, c * level(i), o * level(i), 1e6 / level(i))
              for i, (d, o, c) in enumerate(zip(days, opens, closes, strict=True))]
    got = final_flags(DetectorSuite(), points)
    jump = days[50].isoformat()
    if comes_back:
        assert list(got) == [jump] and "anomaly:decimal_shift" in got[jump]
    elif silence_days > 10:
        assert got == {jump: ["corporate_action.suspect"]}
    else:
        assert [k for k, v in got.items() if "anomaly:decimal_shift" in v] == [d.isoformat() for d in days[50:54]]


def test_a_crash_to_a_tenth_after_a_long_closure_is_no_10_for_1_split() -> None:
    """Back after 30 days at x0.138 and staying there: a crash (a forward split is no suspension's business), never
    a "10:1 split" that would re-anchor the detectors' state by 0.1; Shanghai's 10-12 day holidays are no suspension
    either (split_halt_seconds is 20 days)."""
    opens, closes = daily(vol=0.02)
    days = weekdays(80)
    days = days[:50] + [d + timedelta(days=29) for d in days[50:]]
    points = [bar(d, c * (0.138 if i >= 50 else 1.0), o * (0.138 if i >= 50 else 1.0))
              for i, (d, o, c) in enumerate(zip(days, opens, closes, strict=True))]
    got = final_flags(DetectorSuite(), points)
    assert not any("corporate_action.suspect" in v for v in got.values())
    assert AnomalySettings().split_halt_seconds > 12 * 86400


def test_a_retraction_keeps_the_other_flags_of_the_record() -> None:
    """A x0.5 bar on 60x volume that comes back: relabelled a price error, and still a volume spike."""
    opens, closes = daily()
    days = weekdays(80)
    points = [bar(d, c * (0.5 if i == 60 else 1.0), o * (0.5 if i == 60 else 1.0), 6e7 if i == 60 else 1e6)
              for i, (d, o, c) in enumerate(zip(days, opens, closes, strict=True))]
    # split_news_volume off: on 60x volume the x0.5 open is news, not a split, and this is about a retraction
    got = final_flags(DetectorSuite(AnomalySettings(split_news_volume=0)), points)
    assert got == {days[60].isoformat(): ["anomaly:volume_spike", "anomaly:bar_outlier"]}


def test_a_way_back_that_overshoots_into_a_split_ratio_is_not_a_split() -> None:
    """The real-data bench's GOOG 2008-02-25: a bar 16% up printed apart from its neighbours, then an open 9%
    below the level before it, 0.784 x the bad close: 5:4-like (0.79 here). The bad bar is the error, not a split."""
    opens, closes = daily()
    days = weekdays(80)
    level = closes[59]
    opens[60], closes[60] = level * 1.205, level * 1.16
    opens[61], closes[61] = closes[60] * 0.79, level * 0.915
    for i in range(62, 80):
        opens[i], closes[i] = opens[i] * 0.915, closes[i] * 0.915
    points = [bar(d, c, o) for d, o, c in zip(days, opens, closes, strict=True)]
    got = final_flags(DetectorSuite(), points)
    assert got == {days[60].isoformat(): ["anomaly:bar_outlier"]}


def test_the_way_back_from_a_decimal_shift_outside_the_tolerance_is_not_a_split() -> None:
    """MSFT 1988-09-12 in the bench: x9.7 (no ratio within its tolerance, a decimal shift), then back at 0.1000
    of it, exactly 10:1-like. The way back is no split."""
    opens, closes = daily()
    days = weekdays(80)
    opens[60], closes[60] = closes[59] * 9.7, closes[59] * 9.7
    opens[61] = closes[60] * 0.1
    points = [bar(d, c, o) for d, o, c in zip(days, opens, closes, strict=True)]
    got = final_flags(DetectorSuite(), points)
    assert got == {days[60].isoformat(): ["anomaly:decimal_shift", "anomaly:bar_outlier"]}


def test_a_trade_at_half_after_the_close_that_comes_back_is_a_price_error() -> None:
    rng = random.Random(5)
    p, points = 100.0, []
    for i in range(200):
        p *= math.exp(rng.gauss(0, 3e-4))
        points.append(trade(round(p, 4), T0 + timedelta(seconds=2 * i)))
    day2 = T0 + timedelta(hours=20)
    points.append(trade(round(p / 2, 4), day2))  # a bad print at the open
    for i in range(1, 200):
        p *= math.exp(rng.gauss(0, 3e-4))
        points.append(trade(round(p, 4), day2 + timedelta(seconds=2 * i)))
    got = final_flags(DetectorSuite(), points)
    assert got == {day2.isoformat(): ["anomaly:clearly_erroneous"]}


def test_a_pending_split_survives_a_restart() -> None:
    opens, closes = daily()
    days = weekdays(80)
    points = [bar(d, c * (0.5 if i == 60 else 1.0), o * (0.5 if i == 60 else 1.0))
              for i, (d, o, c) in enumerate(zip(days, opens, closes, strict=True))]
    suite = DetectorSuite()
    first = final_flags(suite, points[:61])
    assert first == {days[60].isoformat(): ["corporate_action.suspect"]}
    restored = DetectorSuite.from_state(suite.to_state(), AnomalySettings())
    assert final_flags(restored, points[61:]) == {days[60].isoformat(): ["anomaly:bar_outlier"]}


# ------------------------------------------------------------------ intraday volume at the session's edges


def session_minutes(symbol: str, first_day: str, days: int, step: int = 60) -> list[list[datetime]]:
    """The bar times of `days` sessions' spans (a lunch break makes two) from the symbol's exchange calendar."""
    from streams.anomalies.calendars import calendar, exchange_for

    cal = calendar(exchange_for(symbol))
    assert cal is not None
    t0 = datetime.fromisoformat(first_day).replace(tzinfo=UTC).timestamp()
    spans = [(o, c) for o, c in zip(cal.opens, cal.closes, strict=True) if o >= t0]
    out: list[list[datetime]] = []
    day_count = 0
    for o, c in spans:
        if out and datetime.fromtimestamp(o, UTC).date() != out[-1][0].date():
            day_count += 1
        if day_count >= days:
            break
        out.append([datetime.fromtimestamp(t, UTC) for t in range(int(o), int(c), step)])
    return out


def minute(symbol: str, ts: datetime, volume: float, interval: str = "1m") -> MarketDataPoint:
    return MarketDataPoint(symbol=symbol, timestamp=ts, source="replay", data_type="bar", interval=interval,
                           open=10.0, high=10.01, low=9.99, close=10.0, volume=volume)


def volume_flags(symbol: str, spans: list[list[datetime]], volume_of, interval: str = "1m") -> list[datetime]:
    suite = DetectorSuite()
    flagged = []
    for k, span in enumerate(spans):
        for j, ts in enumerate(span):
            out = suite.update(minute(symbol, ts, volume_of(k, j, len(span)), interval))
            if any(a.detector == "volume_spike" for a in out):
                flagged.append(ts)
    return flagged


def test_the_first_minute_after_a_lunch_break_is_judged_against_other_openings() -> None:
    """Hong Kong minutes (09:30-12:00, 13:00-16:00): both spans open at 40x a midday minute (the auction, the
    rush after lunch). The hour of lunch is no session break of 4 hours: the afternoon's first minute was judged
    against the minutes before lunch and flagged every day; the calendar makes it an opening like the morning's.
    A midday block 60x a minute is still a spike."""
    rng = random.Random(3)

    def vol(k: int, j: int, n: int) -> float:
        v = 1e5 * math.exp(rng.gauss(0, 0.3))
        if j == 0:
            return 40 * v
        return 60e5 if (k, j) == (40, 70) else v

    spans = session_minutes("0700.HK", "2024-03-04", 24)
    assert len(spans) == 48
    assert volume_flags("0700.HK", spans, vol) == [spans[40][70]]


def test_the_closing_minute_is_judged_against_other_closing_minutes() -> None:
    """London minutes: the last one before the close carries the closing auction, 45x a midday minute. Judged
    against the stream's own minutes (as before) while fewer than volume_min_window closings are known, then
    against the closings: no flag; one 40x above the closings is a spike."""
    rng = random.Random(4)

    def vol(k: int, j: int, n: int) -> float:
        v = 1e5 * math.exp(rng.gauss(0, 0.3))
        if j == n - 1:
            return 45 * v * (40 if k == 28 else 1)
        return 30 * v if j == 0 else v

    spans = session_minutes("AZN.L", "2024-04-02", 30)
    flagged = volume_flags("AZN.L", spans, vol)
    assert all(ts == span[-1] for span in spans for ts in flagged if ts in span)  # closing minutes only
    assert [k for k, span in enumerate(spans) if span[-1] in flagged if k >= 20] == [28]


def test_a_revised_closing_minute_is_judged_against_other_closing_minutes() -> None:
    """A live poller (Yahoo's, Finnhub's: bars from the last one sent) sends the forming closing minute, then the
    same minute final, its closing auction included: that revision was judged against midday minutes (BarGaps gave
    a revision no edge) and flagged every day."""
    rng = random.Random(4)
    spans = session_minutes("AZN.L", "2024-04-02", 30)
    suite = DetectorSuite()
    flagged = []
    for k, span in enumerate(spans):
        for j, ts in enumerate(span):
            v = 1e5 * math.exp(rng.gauss(0, 0.3))
            if j == len(span) - 1:
                suite.update(minute("AZN.L", ts, v))  # the forming minute
                out = suite.update(minute("AZN.L", ts, 45 * v))  # final
            else:
                out = suite.update(minute("AZN.L", ts, 30 * v if j == 0 else v))
            if k >= 20 and any(a.detector == "volume_spike" for a in out):
                flagged.append(k)
    assert flagged == []


def test_extended_hours_bars_are_judged_against_their_own_kind() -> None:
    """A `prepost` stream: pre- and post-market 5-minute bars trade a twentieth of a regular one. The regular
    session's bars were judged against a window of mostly extended-hours bars (and its first pre-market bar
    against the 09:30 auctions): a busy regular morning read as a spike. A midday block 60x is still one."""
    rng = random.Random(6)
    suite = DetectorSuite()
    flagged: list[tuple[int, str]] = []
    for k, span in enumerate(session_minutes("MSFT", "2024-04-01", 30, step=300)):
        pre = [span[0] - timedelta(minutes=5 * i) for i in range(66, 0, -1)]  # 04:00-09:25 New York
        post = [span[-1] + timedelta(minutes=5 * i) for i in range(1, 49)]  # 16:00-19:55
        for part, times in (("pre", pre), ("regular", span), ("post", post)):
            for j, ts in enumerate(times):
                v = 1e5 * math.exp(rng.gauss(0, 0.3)) * (1 / 20 if part != "regular" else 30 if j == 0 else 1)
                if k == 25 and part == "regular" and j == 40:
                    v *= 60
                if any(a.detector == "volume_spike" for a in suite.update(minute("MSFT", ts, v, "5m"))):
                    flagged.append((k, part))
    assert [f for f in flagged if f[0] >= 10] == [(25, "regular")]


# ------------------------------------------------------------------------------------------ bars out of order


def test_older_history_after_newer_bars_is_no_decimal_shift() -> None:
    """History replayed after newer bars of the same stream (a file of 2016 after one of 2024, or a worker's
    restart replaying its files again): 2016's bars at 1/100 of 2024's level were judged against that level, and
    their first four stored as decimal shifts; their volumes, 100x 2024's, against 2024's volumes."""
    opens, closes = daily(120, seed=3)
    suite = DetectorSuite()
    newer = [bar(d, c * 100, o * 100, volume=1e4)
             for d, o, c in zip(weekdays(120, datetime(2024, 1, 2, 21, tzinfo=UTC)), opens, closes, strict=True)]
    assert final_flags(suite, newer) == {}
    older = [bar(d, c, o) for d, o, c in zip(weekdays(120, datetime(2016, 1, 4, 21, tzinfo=UTC)), opens, closes,
                                             strict=True)]
    assert final_flags(suite, older) == {}
    # the same bar on its own, newer than the stream's last: judged, 10^-2 of the level
    late = suite.update(bar(datetime(2024, 9, 2, 21, tzinfo=UTC), closes[-1], opens[-1]))
    assert "decimal_shift" in {a.detector for a in late}
