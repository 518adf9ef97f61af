"""The shared pieces of every detector: the Anomaly event, the facts derived once per point, the base class."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any, ClassVar, Literal, Self

from streams.config import AnomalySettings, BarCheckSettings
from streams.models import DataType, MarketDataPoint

AnomalyKind = Literal["tick", "feed", "gap", "corporate_action"]
STATE_VERSION = 1
_BPS = 1e-4
# The kinds as plain strings: comparing with a str is ~8x faster than with an enum member (an attribute lookup
# on the enum class each time), and the detectors compare several times per record.
_TICK, _TRADE, _QUOTE, _BAR = DataType.TICK.value, DataType.TRADE.value, DataType.QUOTE.value, DataType.BAR.value


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One flag. `record` is the flagged record as a JSON-able dict; `details` carries extra numbers."""

    detector: str
    symbol: str
    score: float
    threshold: float
    kind: AnomalyKind
    message: str
    record: dict[str, Any]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- helpers


def _record(point: MarketDataPoint) -> dict[str, Any]:
    return point.model_dump(mode="json", exclude_none=True)


class _Facts:
    """What the detectors derive from a point, derived once: the suite hands one to all nine detectors (each
    deriving its own was a fifth of their time in a profile). A detector called alone derives it itself."""

    __slots__ = ("day", "kind", "quote", "stream", "symbol", "trade", "ts", "volume")

    def __init__(self, p: MarketDataPoint) -> None:
        # The fields every detector reads, from the model's __dict__ at once: a pydantic model's attribute goes
        # through its __getattr__ hook (a few hundred instructions a read, ~11% of the validate path's, callgrind,
        # bench/README.md session 24), a dict item does not.
        d = p.__dict__
        kind: str = d["data_type"]
        self.kind = kind
        self.symbol: str = d["symbol"]
        self.volume: float | None = d["volume"]
        self.ts: float = d["timestamp"].timestamp()
        self.day = int(self.ts // 86400.0)  # the UTC day's number (Unix time has no leap seconds)
        is_trade = kind == _TICK or kind == _TRADE
        # a trade's price; a quote's (bid, ask); the sub-stream whose values are comparable
        self.trade: float | None = d["price"] if is_trade else None
        bid, ask = d["bid"], d["ask"]
        self.quote: tuple[float, float] | None = (
            (bid, ask) if bid is not None and ask is not None and (kind == _TICK or kind == _QUOTE)
            else None)
        self.stream = f"bar:{d['interval'] or '?'}" if kind == _BAR else "trade" if is_trade else str(kind)


def _iso_day(day: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def _put_bounded(d: dict[str, Any], key: str, value: Any, cap: int) -> None:
    """Insert into a dict holding at most `cap` keys, evicting the least recently inserted."""
    if key not in d:
        while len(d) >= cap:
            d.pop(next(iter(d)))
    d[key] = value


class Detector:
    """Base class: one symbol's state for one rule."""

    name: ClassVar[str] = "detector"
    kind: ClassVar[AnomalyKind] = "tick"

    def __init__(self, settings: AnomalySettings | None = None) -> None:
        self.settings = settings or AnomalySettings()
        self.symbol = ""

    def update(self, point: MarketDataPoint, f: _Facts | None = None) -> list[Anomaly]:
        """Judge one point (and learn from it); `f` is the point's _Facts when the caller has them."""
        raise NotImplementedError

    def rescale(self, price_factor: float) -> None:
        """Multiply every remembered price by `price_factor` (after a split); default: nothing to do."""

    def to_state(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "symbol": self.symbol, **self._dump()}

    @classmethod
    def from_state(cls, state: dict[str, Any], settings: AnomalySettings | None = None) -> Self:
        """Rebuild from `to_state()`; windows are cut to the (possibly smaller) configured sizes."""
        obj = cls(settings)
        obj.symbol = state.get("symbol", "")
        obj._load(state)
        return obj

    def _dump(self) -> dict[str, Any]:
        return {}

    def _load(self, state: dict[str, Any]) -> None:
        pass

    def _flag(self, point: MarketDataPoint, score: float, threshold: float, message: str,
              details: dict[str, Any] | None = None) -> Anomaly:
        return Anomaly(self.name, point.symbol, score, threshold, self.kind, message, _record(point), details or {})


_DAILY_INTERVALS = ("d", "wk", "w", "mo", "y")


def is_daily(interval: str | None) -> bool:
    """Daily or longer (1d, 5d, 1wk, 1mo, 3mo): judged with the daily family of bar thresholds."""
    iv = (interval or "").lower()
    return iv.endswith(_DAILY_INTERVALS) and not iv.endswith("min")


def bar_checks(settings: AnomalySettings, interval: str | None) -> BarCheckSettings:
    """The bar thresholds of an interval's family (intraday vs daily and longer)."""
    return settings.bar_daily if is_daily(interval) else settings.bar_intraday


def finite_price(x: float | None, limit: float) -> bool:
    """A price the windows may hold: finite, positive and at most `limit` (squares of it cannot overflow)."""
    return x is not None and 0.0 < x <= limit and not math.isinf(x)
