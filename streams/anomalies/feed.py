"""Feed-level detectors: stale feeds and missing bars (judged in event time, against exchange calendars)."""

from __future__ import annotations

import bisect
import re
from collections import deque
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from streams.anomalies.calendars import SessionCalendar, calendar, exchange_for
from streams.anomalies.core import _BAR, _QUOTE, Anomaly, Detector, _Facts, _put_bounded, is_daily
from streams.anomalies.windows import _median
from streams.config import AnomalySettings
from streams.models import MarketDataPoint

# The last arrival time converted, (datetime, its timestamp()). The validate stage hands the detectors one datetime
# per producer millisecond (streams/stages/validate.py _ingested_at), so consecutive points mostly share the
# object, and datetime.timestamp() was a third of this detector's instructions (bench/validate_cost.py).
# Identity is safe: the tuple holds the object, so its id cannot be reused while it is remembered.
_arrival: tuple[datetime | None, float] = (None, 0.0)


class StaleFeed(Detector):
    """A feed that stopped moving: `stale_run` identical values at as many instants in a row (trade price and
    size, quote, bar close) per sub-stream, or (`check_stale`) no update for more than 3x the expected interval.
    Feed-level events, not bad ticks; reported once per run / per silence. Score: run length or silence (s);
    threshold: the limit.

    Event time: a silence is judged only for a LIVE feed, one whose last record arrived (`ingested_at`)
    within `stale_live_lag_seconds` (plus one bar interval for bars) of its own timestamp: a replay or a
    backfill of old data is never stale (a record without ingested_at counts as live). And only while the
    symbol's market is open (exchange calendar), counting the silence from the later of the last record and
    the session's open: a feed is not stale
    overnight, at a weekend or on a holiday.
    """

    name = "stale_feed"
    kind = "feed"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.runs: dict[str, list[Any]] = {}  # stream -> [value, run length, already reported]
        self.last_ts: float | None = None
        self.last_source = ""
        self.intervals: deque[float] = deque(maxlen=self.settings.stale_interval_window)
        self.silence_reported = False
        self.live = False
        self.exchange: str | None = None
        self.exchange_restored = False  # from saved state: found again on the next point (the rules may be newer)
        # read at every point: kept here, a settings model's attribute costs a __getattr__ hook (core._Facts)
        self._live_lag = self.settings.stale_live_lag_seconds

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        f = f or _Facts(point)
        self.symbol = f.symbol
        ts = f.ts
        if self.last_ts is not None and ts > self.last_ts:
            self.intervals.append(ts - self.last_ts)
        if self.last_ts is None or ts >= self.last_ts:
            self.last_ts = ts
            self.silence_reported = False
        self.last_source = point.source
        s = self.settings
        if (arrived := point.ingested_at) is not None:
            global _arrival
            last = _arrival
            if arrived is last[0]:  # the same datetime object as the last point's: its seconds are known
                arrived_ts = last[1]
            else:
                arrived_ts = arrived.timestamp()
                _arrival = (arrived, arrived_ts)
            allowance = self._live_lag
            if f.kind == _BAR:
                allowance += interval_seconds(point.interval) or (7 * 86400 if is_daily(point.interval) else 0)
            self.live = arrived_ts - ts <= allowance
        else:  # no arrival time (a direct caller, not the pipeline): taken as live
            self.live = True
        if self.exchange is None or self.exchange_restored:
            self.exchange = exchange_for(point.symbol, s.exchanges, point.metadata, s.default_exchange) or ""
            self.exchange_restored = False
        value: Any
        if (q := f.quote) is not None and f.kind == _QUOTE:
            value = [q[0], q[1], point.bid_size, point.ask_size]  # a live book changes sizes
        elif (p := f.trade) is not None:
            value = [p, point.volume]  # a market trading at one price for a while still changes sizes
        elif point.data_type == _BAR and point.close is not None:
            value = point.close
        else:
            return []
        key = f.stream
        runs = self.runs
        run = runs.get(key)  # [value, length, reported, time of its latest point]
        if run is None:
            _put_bounded(runs, key, [value, 1, False, ts], s.max_streams)
            return []
        if run[0] != value:  # the usual point: a new run of a stream already held (no eviction to consider)
            runs[key] = [value, 1, False, ts]
            return []
        if run[3] == ts:  # the same instant: one order's fills at one price, a bar re-sent; no repetition in time
            return []
        run[3] = ts
        run[1] += 1
        if run[1] >= self.settings.stale_run and not run[2]:
            run[2] = True
            return [self._flag(point, float(run[1]), float(self.settings.stale_run),
                               f"{run[1]} identical {key} values in a row ({value})", {"stream": key})]
        return []

    def expected_interval(self) -> float | None:
        if self.settings.stale_expected_interval_seconds is not None:
            return self.settings.stale_expected_interval_seconds
        return _median(self.intervals) if len(self.intervals) >= 5 else None

    def check_stale(self, now: datetime, *, expected_interval: float | None = None) -> list[Anomaly]:
        """Called by a timer while the market is open (this class knows no calendar): a silence > 3x the
        expected interval (given, configured, or the median of the observed ones) is reported once."""
        interval = expected_interval or self.expected_interval()
        if self.last_ts is None or interval is None or self.silence_reported or not self.live:
            return []
        t = now.timestamp()
        since = self.last_ts
        cal = calendar(self.exchange) if self.exchange else None
        if cal is not None and cal.covers(int(t // 86400)):
            opened = cal.open_since(t)
            if opened is None:
                return []  # the market is closed: silence is expected
            since = max(since, opened)
        silence = t - since
        multiple = self.settings.stale_interval_multiplier * interval
        floor = self.settings.stale_min_silence_seconds
        threshold = max(multiple, floor)
        if silence <= threshold:
            return []
        self.silence_reported = True
        last = datetime.fromtimestamp(self.last_ts, UTC).isoformat()
        record = {"symbol": self.symbol, "source": self.last_source, "timestamp": last}
        limit = (f"{self.settings.stale_interval_multiplier:g} x the expected interval {interval:.3g} s"
                 if multiple >= floor else
                 f"{floor:g} s (the least silence judged; the expected interval is {interval:.3g} s)")
        return [Anomaly(self.name, self.symbol, silence, threshold, "feed", f"no update for {silence:.1f} s > {limit}",
                        record, {"expected_interval": interval})]

    def _dump(self) -> dict[str, Any]:
        return {"runs": self.runs, "last_ts": self.last_ts, "last_source": self.last_source,
                "intervals": list(self.intervals), "silence_reported": self.silence_reported, "live": self.live,
                "exchange": self.exchange}

    def _load(self, state: dict[str, Any]) -> None:
        for k, run in state.get("runs", {}).items():
            _put_bounded(self.runs, k, [*run, None][:4], self.settings.max_streams)  # older state: no time
        self.last_ts = state.get("last_ts")
        self.last_source = state.get("last_source", "")
        self.intervals.extend(state.get("intervals", ()))
        self.silence_reported = bool(state.get("silence_reported", False))
        self.live = bool(state.get("live", False))
        self.exchange = state.get("exchange")  # for the silence check until the next point finds it again
        self.exchange_restored = True


_EPOCH = date(1970, 1, 1).toordinal()
_INTERVAL_RE = re.compile(r"^(\d+)(m|min|h|d)$")
_UNIT_SECONDS = {"m": 60, "min": 60, "h": 3600, "d": 86400}


def interval_seconds(interval: str | None) -> int | None:
    """Seconds in a bar interval such as 1m, 5m, 1h, 1d; None for ones without a fixed grid (1wk, 1mo)."""
    m = _INTERVAL_RE.match(interval or "")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else None


def weekdays_between(d0: date, d1: date, holidays: Iterable[date] = ()) -> int:
    """Monday-Friday dates strictly between d0 and d1, minus the holidays among them."""
    days = (d1 - d0).days - 1
    if days <= 0:
        return 0
    weeks, rest = divmod(days, 7)
    count = weeks * 5 + sum(1 for i in range(rest) if (d0 + timedelta(days=1 + weeks * 7 + i)).weekday() < 5)
    return count - sum(1 for h in set(holidays) if d0 < h < d1 and h.weekday() < 5)


EDGE_NONE, EDGE_OPEN, EDGE_CLOSE, EDGE_OUTSIDE = 0, 1, 2, 3


def _edge(cal: SessionCalendar, last: float | None, ts: float, step: int) -> int:
    """An intraday bar's place in its calendar span (BarGaps docstring): EDGE_OPEN when the bar before it (None:
    none seen) was before the span's open and the market was closed between the two spans, EDGE_CLOSE when the bar
    reaches the span's close and the market closes after it, EDGE_OUTSIDE for a bar outside every span on a day
    the calendar covers (pre- and post-market), else EDGE_NONE."""
    opens, closes = cal.opens, cal.closes
    i = cal.session_of(ts)
    if i is None:
        j = bisect.bisect_right(opens, ts)  # the next span to open
        if not (j < len(opens) and opens[j] < ts + step):  # a bar stamped before an open reaching into it (clock
            return EDGE_OUTSIDE if cal.covers(int(ts // 86400)) else EDGE_NONE  # hours: 09:00 holds 09:30's auction)
        i = j
    if last is not None and last + step <= opens[i] and (i == 0 or closes[i - 1] < opens[i]):
        return EDGE_OPEN
    if ts + step >= closes[i] and (i + 1 == len(opens) or opens[i + 1] > closes[i]):
        return EDGE_CLOSE
    return EDGE_NONE


class BarGaps(Detector):
    """A missing bar in the expected grid of a bar series (issue 4), one gap event per hole.

    Daily bars: the sessions of the symbol's exchange calendar strictly between two bars (holidays, ad-hoc
    closures such as 2001-09-11..14 and Hurricane Sandy are not sessions), less `gap_holidays`; without a
    calendar (or before its first session), the weekdays that are not gap_holidays. Intraday bars: (t - last)
    / interval - 1 bars missing when both bars are in the same session (an early close ends a session); across
    sessions, or without a calendar when the silence is at least session_break_seconds, none (a session
    break). Out-of-order bars are ignored.
    Score: bars missing; threshold: 1.

    `edge` tells the suite where an intraday bar sits in its exchange's sessions (the calendar's spans: a session
    with a lunch break is two): EDGE_OPEN for the first bar of a span the market reopened for after a closure (the
    night, a weekend, a lunch break), EDGE_CLOSE for the bar that reaches a span's close before a closure (its
    closing auction), EDGE_OUTSIDE for a bar outside the sessions (extended hours), else EDGE_NONE (also without a
    calendar, and for a 24/5 market's daily boundary, which closes nothing). VolumeSpike judges those bars against
    their own kind (intraday volume is U-shaped; pre- and post-market trade a fraction of it).
    """

    name = "bar_gap"
    kind = "gap"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        super().__init__(settings)
        self.last: dict[str, float] = {}  # interval -> timestamp of the latest bar
        self.exchange: str | None = None  # the calendar's name ("" = none), found on the first bar
        self.exchange_restored = False  # from saved state: found again on the next bar (the rules may be newer)
        self.edge = EDGE_NONE  # the last bar's place in its session (class docstring)
        # interval -> the latest bar's edge: a revision of that bar (a poller re-sends the forming bar, then its
        # final version with the closing auction's volume) keeps its place, else it was judged as a midday bar
        self.edges: dict[str, int] = {}

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        self.edge = EDGE_NONE
        if point.data_type != _BAR:
            return []
        step = interval_seconds(point.interval)
        if step is None:
            return []
        self.symbol = point.symbol
        key = point.interval or ""
        ts = (f or _Facts(point)).ts
        last = self.last.get(key)
        if last is not None and ts <= last:
            if ts == last:
                self.edge = self.edges.get(key, EDGE_NONE)
            return []
        _put_bounded(self.last, key, ts, self.settings.max_streams)
        s = self.settings
        if self.exchange is None or self.exchange_restored:
            self.exchange = exchange_for(point.symbol, s.exchanges, point.metadata, s.default_exchange) or ""
            self.exchange_restored = False
        cal = calendar(self.exchange) if self.exchange else None
        if cal is not None and step < 86400 and not cal.always_open:
            self.edge = _edge(cal, last, ts, step)
        _put_bounded(self.edges, key, self.edge, self.settings.max_streams)
        if last is None:
            return []
        d0, d1 = int(last // 86400), int(ts // 86400)
        if step == 86400:
            if cal is not None and cal.covers(d0) and cal.covers(d1):
                missing = cal.sessions_between(d0, d1) - sum(
                    1 for h in set(s.gap_holidays) if d0 < h.toordinal() - _EPOCH < d1 and cal.is_session(
                        h.toordinal() - _EPOCH))
            else:
                missing = weekdays_between(datetime.fromtimestamp(last, UTC).date(), point.timestamp.date(),
                                           s.gap_holidays)
        elif cal is not None and cal.covers(d0) and cal.covers(d1) and (i := cal.session_of(ts)) is not None:
            if cal.always_open or cal.session_of(last) == i:
                missing = round((ts - last) / step) - 1
            else:
                return []
        elif ts - last >= s.session_break_seconds:
            return []
        else:
            missing = round((ts - last) / step) - 1
        if missing < 1:
            return []
        since = datetime.fromtimestamp(last, UTC).isoformat()
        return [self._flag(point, float(missing), 1.0, f"{missing} missing {key} bar(s) after {since}",
                           {"after": since, "interval": key})]

    def _dump(self) -> dict[str, Any]:
        return {"last": self.last, "exchange": self.exchange, "edges": self.edges}

    def _load(self, state: dict[str, Any]) -> None:
        self.exchange = state.get("exchange")
        self.exchange_restored = True
        for k, ts in state.get("last", {}).items():
            _put_bounded(self.last, k, float(ts), self.settings.max_streams)
        for k, e in state.get("edges", {}).items():
            _put_bounded(self.edges, k, int(e), self.settings.max_streams)
