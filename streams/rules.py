"""Validation rules: raw bytes -> a canonical MarketDataPoint, or RejectedRecord(rule, reason).

Plain Python, no Faust: the validate stage (streams/stages/validate.py) only wires this to topics. Rule codes are
stable strings (they are the dead-letter header `tickflow.rule` and a metrics label):

  size.too_large  schema.<pydantic error type>  symbol.pattern  price.missing  price.non_positive
  volume.negative  quote.missing  quote.crossed  bar.missing  bar.inconsistent  timestamp.future
  timestamp.too_old  ingested_at.future  news.missing_headline  social.missing_text  source.unreadable (what a
  producer read and could not make a record of: streams.models.unreadable_json)

The anomaly issue deepens this stage (streams/anomalies/detectors.py); a locked quote (bid == ask) is flagged,
not rejected (Barndorff-Nielsen, Hansen, Lunde & Shephard 2009, Q2).
"""

from __future__ import annotations

import math
import operator
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice, repeat

from pydantic import ValidationError

from streams.errors import RejectedRecord
from streams.models import DataType, MarketDataPoint, point_from_json, unreadable_reason
from streams.settings import ValidationSettings

# The kinds as plain strings: comparing with a str is ~8x faster than with an enum member (an attribute
# lookup on the enum class each time), and this runs for every record.
_TICK, _TRADE, _QUOTE, _BAR, _ECONOMIC, _NEWS, _SOCIAL = (
    DataType.TICK.value, DataType.TRADE.value, DataType.QUOTE.value, DataType.BAR.value, DataType.ECONOMIC.value,
    DataType.NEWS.value, DataType.SOCIAL.value)
_PRICE_FIELDS = ("price", "bid", "ask", "open", "high", "low", "close")
_SIZE_FIELDS = ("volume", "bid_size", "ask_size")
# A bar's open or close beyond its high or low by at most this share is rounding, not bad data: split-adjusted
# series (yfinance's history of AAPL before 1999) hold closes one float ulp under their low. The bar checks'
# ohlc_inconsistent detector allows the same (its ohlc_tolerance default).
OHLC_ROUNDING = 1e-6


def _within_rounding(o: float, h: float, lo: float, c: float) -> bool:
    """Only asked of a bar that broke the OHLC order, so the common path pays nothing."""
    slack = OHLC_ROUNDING * max(abs(h), abs(lo))
    return lo - slack <= min(o, c) and h + slack >= max(o, c) and lo <= h + slack
_prices, _sizes = operator.itemgetter(*_PRICE_FIELDS), operator.itemgetter(*_SIZE_FIELDS)


def _schema_rejection(exc: ValidationError) -> RejectedRecord:
    err = exc.errors(include_url=False)[0]
    kind = err["type"]
    if kind == "json_invalid":
        return RejectedRecord("schema.not_json", f"not valid JSON: {err['msg']}")
    loc = ".".join(str(p) for p in err["loc"]) or "record"
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return RejectedRecord(f"schema.{kind}", f"{loc}: {err['msg']}{more}")


class CircuitBreaker:
    """Trips when the rejected share of the last `window` records exceeds `ratio` (and the window is full).

    A bad deploy or a provider changing its format would otherwise send every record to the dead-letter
    topic while the pipeline looks healthy; holding the records back makes the outage visible and they wait
    in their raw topic (uncommitted) for the fix."""

    def __init__(self, ratio: float, window: int) -> None:
        self.ratio = ratio
        self.window = window
        self.outcomes: deque[bool] = deque(maxlen=window)
        self.rejected = 0

    def record(self, rejected: bool) -> None:
        if len(self.outcomes) == self.window and self.outcomes[0]:
            self.rejected -= 1
        self.outcomes.append(rejected)
        self.rejected += rejected

    def record_run(self, count: int, rejected: Sequence[int] = ()) -> None:
        """`record` for `count` outcomes in order, those at the positions `rejected` (ascending) rejected: a few C
        calls for a run of records instead of a Python call per record (the validate stage, session 34)."""
        if count <= 0:
            return
        fresh: Iterable[bool]
        if rejected:
            marks = [False] * count
            for i in rejected:
                marks[i] = True
            fresh = marks
        else:
            fresh = repeat(False, count)
        kept = len(self.outcomes)
        drop = kept + count - self.window  # outcomes the deque pushes out on the left, the old ones first
        if drop >= kept:  # every outcome held now goes, and the first new ones that do not fit
            self.outcomes.clear()
            self.rejected = 0
            skip = drop - kept
            rejected = [i for i in rejected if i >= skip]
            fresh = islice(fresh, skip, None)
        elif drop > 0:
            self.rejected -= sum(islice(self.outcomes, drop))
        self.outcomes.extend(fresh)
        self.rejected += len(rejected)

    def reset(self) -> None:
        self.outcomes.clear()
        self.rejected = 0

    @property
    def tripped(self) -> bool:
        return self.ratio < 1.0 and len(self.outcomes) == self.window and self.rejected > self.ratio * self.window


@dataclass(slots=True)
class OpenBreaker:
    """A source whose breaker tripped: paused since `opened_at` (the breakers' clock), and why."""

    source: str
    opened_at: float
    rejected: int
    window: int
    rules: dict[str, int]


class SourceBreakers:
    """One CircuitBreaker per source, so one source sending garbage pauses that source only.

    `trip(source)` opens it (the caller pauses the source's partitions); after `cooldown` seconds on `clock`
    `due()` names it for resumption, with a fresh window, so a source that is still bad trips again."""

    def __init__(self, ratio: float, window: int, cooldown: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ratio = ratio
        self.window = window
        self.cooldown = cooldown
        self.clock = clock
        self.breakers: dict[str, CircuitBreaker] = {}
        self.open: dict[str, OpenBreaker] = {}

    def breaker(self, source: str) -> CircuitBreaker:
        b = self.breakers.get(source)
        if b is None:
            b = self.breakers[source] = CircuitBreaker(self.ratio, self.window)
        return b

    def record(self, source: str, rejected: bool) -> None:
        self.breaker(source).record(rejected)

    def tripped(self) -> list[str]:
        """Sources over the limit that are not open yet."""
        return sorted(s for s, b in self.breakers.items() if b.tripped and s not in self.open)

    def trip(self, source: str, rules: dict[str, int] | None = None) -> OpenBreaker:
        b = self.breakers[source]
        opened = OpenBreaker(source, self.clock(), b.rejected, b.window, dict(rules or {}))
        self.open[source] = opened
        b.reset()
        return opened

    def due(self) -> list[str]:
        """Open sources whose cool-down is over; they are closed (with an empty window) as they are returned."""
        now = self.clock()
        done = sorted(s for s, o in self.open.items() if now - o.opened_at >= self.cooldown)
        for s in done:
            del self.open[s]
            self.breakers[s].reset()
        return done

    def is_open(self, source: str) -> bool:
        return source in self.open


class Validator:
    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings
        self.max_bytes = settings.max_message_bytes
        self.future = timedelta(seconds=settings.future_tolerance_seconds)
        self.future_seconds = self.future.total_seconds()
        self.floor = datetime.fromisoformat(settings.timestamp_floor)
        self.floor_ts = self.floor.timestamp()
        self.history_floor = datetime.fromisoformat(settings.history_timestamp_floor)
        self.history_floor_ts = self.history_floor.timestamp()
        self.symbol_re = re.compile(settings.symbol_pattern)
        # read for every record: kept here, a settings model's attribute costs a __getattr__ hook
        self.max_symbol_length, self.max_text_length = settings.max_symbol_length, settings.max_text_length

    def check(self, raw: bytes | None, *, source: str, ingested_at: datetime | None = None,
              now: datetime | None = None) -> MarketDataPoint:
        if raw is None:
            raise RejectedRecord("schema.empty", "message has no value (tombstone)")
        if len(raw) > self.max_bytes:
            raise RejectedRecord("size.too_large", f"{len(raw)} bytes > limit {self.max_bytes}")
        try:
            # strict: `"price": true` or `"price": "1.5"` is a schema error, not 1.0 and 1.5 (ints are numbers).
            point = point_from_json(raw)
        except ValidationError as exc:
            if (why := unreadable_reason(raw)) is not None:  # a producer's row it could not read (models.py)
                raise RejectedRecord("source.unreadable", why) from None
            raise _schema_rejection(exc) from None
        d = point.__dict__
        if d["source"] != source:
            raise RejectedRecord("schema.source_mismatch", f"record says source {point.source!r}, topic is {source!r}")
        self.check_point(point, now=now)
        if d["ingested_at"] is None and ingested_at is not None:
            # what pydantic's __setattr__ does for a field (no validate_assignment), without its two Python frames
            d["ingested_at"] = ingested_at
            point.__pydantic_fields_set__.add("ingested_at")
        return point

    def check_point(self, p: MarketDataPoint, *, now: datetime | None = None) -> None:
        # Runs for every record: fields read from the model's __dict__ once, times compared as floats.
        s = self.settings
        d = p.__dict__
        symbol = d["symbol"]
        # fullmatch: a pattern's `$` also matches before a trailing newline, so "AAPL\n" would pass match().
        if len(symbol) > self.max_symbol_length or not self.symbol_re.fullmatch(symbol):
            raise RejectedRecord("symbol.pattern", f"symbol {symbol[:40]!r} does not match {s.symbol_pattern}")
        # Each group of fields read in one C call; the names are looked up again only to word a rejection.
        for v in _prices(d):
            if v is not None and v <= 0:
                name = next(n for n in _PRICE_FIELDS if d[n] is v)
                raise RejectedRecord("price.non_positive", f"{name} {v} <= 0")
        for v in _sizes(d):
            if v is not None and v < 0:
                name = next(n for n in _SIZE_FIELDS if d[n] is v)
                raise RejectedRecord("volume.negative", f"{name} {v} < 0")
        for name in ("headline", "text"):
            v = d[name]
            if v is not None and len(v) > self.max_text_length:
                raise RejectedRecord("text.too_long", f"{name} has {len(v)} characters > {self.max_text_length}")
        kind = d["data_type"]
        bid, ask = d["bid"], d["ask"]
        if (kind == _TICK or kind == _TRADE) and d["price"] is None:
            raise RejectedRecord("price.missing", f"a {kind} needs a price")
        if kind == _QUOTE and (bid is None or ask is None):
            raise RejectedRecord("quote.missing", "a quote needs bid and ask")
        if bid is not None and ask is not None:
            if bid > ask:
                raise RejectedRecord("quote.crossed", f"bid {bid} > ask {ask}")
            if bid == ask and "quote.locked" not in p.flags:
                p.flags.append("quote.locked")
        if kind == _BAR:
            ohlc = (d["open"], d["high"], d["low"], d["close"])
            if None in ohlc:
                raise RejectedRecord("bar.missing", "a bar needs open, high, low and close")
            o, h, lo, c = ohlc
            if not (lo <= min(o, c) and h >= max(o, c) and lo <= h) and not _within_rounding(o, h, lo, c):
                raise RejectedRecord("bar.inconsistent", f"open {o} high {h} low {lo} close {c}")
        elif kind == _ECONOMIC and d["value"] is None and "value.missing" not in p.flags:
            p.flags.append("value.missing")
        elif kind == _NEWS and not d["headline"]:
            raise RejectedRecord("news.missing_headline", "a news item needs a headline")
        elif kind == _SOCIAL and not d["text"]:
            raise RejectedRecord("social.missing_text", "a social item needs text")
        ts = d["timestamp"].timestamp()
        now_ts = now.timestamp() if now is not None else time.time()
        if ts > now_ts + self.future_seconds:
            raise RejectedRecord("timestamp.future",
                                 f"{ts - now_ts:.3f} s in the future (tolerance {self.future_seconds} s)")
        if ts < self.floor_ts:
            history = kind == _BAR or kind == _ECONOMIC
            if not history or ts < self.history_floor_ts:
                floor = self.history_floor if history else self.floor
                raise RejectedRecord("timestamp.too_old", f"{p.timestamp.isoformat()} is before {floor.isoformat()}")
        ingested = d["ingested_at"]
        if ingested is not None and ingested.timestamp() > now_ts + self.future_seconds:
            # A producer clock far ahead would drive every latency figure negative for good.
            raise RejectedRecord("ingested_at.future",
                                 f"ingested_at {ingested.isoformat()} is {ingested.timestamp() - now_ts:.3f} s "
                                 f"in the future (tolerance {self.future_seconds} s)")
        v = d["sentiment"]
        if v is not None and not math.isfinite(v):  # pragma: no cover - pydantic already refuses
            raise RejectedRecord("schema.finite_number", "sentiment is not finite")
