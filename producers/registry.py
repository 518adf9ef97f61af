"""Which sources exist, and how to build the enabled ones from Settings.

One entry per provider module. The worker (streams/stages/produce.py) and the standalone runner both build
sources from here; tests check that every entry has its raw.<name> topic in topics.yaml.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from producers.alpha_vantage import AlphaVantageSource
from producers.base import Source
from producers.finnhub import FinnhubSource, FinnhubTradeStream, NewsSentimentSource
from producers.fred import FredSource
from producers.nasdaq_data_link import NasdaqDataLinkSource
from producers.replay import ReplaySource
from producers.simulated import SimulatedSource
from producers.social import SocialSource
from producers.stocktwits import StocktwitsSource
from producers.yahoo import YahooSource
from streams.errors import ConfigError

logger = logging.getLogger(__name__)


def _finnhub(settings: Any) -> list[Source]:
    sources: list[Source] = [FinnhubSource(settings)]
    if settings.websocket:
        sources.append(FinnhubTradeStream(settings))
    return sources


BUILDERS: dict[str, Callable[[Any], list[Source]]] = {
    "simulated": lambda s: [SimulatedSource(s)],
    "yahoo": lambda s: [YahooSource(s)],
    "alpha_vantage": lambda s: [AlphaVantageSource(s)],
    "finnhub": _finnhub,
    "fred": lambda s: [FredSource(s)],
    "nasdaq_data_link": lambda s: [NasdaqDataLinkSource(s)],
    "news": lambda s: [NewsSentimentSource(s)],
    "social": lambda s: [SocialSource(s)],
    "stocktwits": lambda s: [StocktwitsSource(s)],
    "replay": lambda s: [ReplaySource(s)],
}


def enabled_sources(sources_settings: Any, *, include: set[str] | None = None) -> list[Source]:
    """Build every enabled source. A source whose key is missing is skipped with a clear log line, so one
    unconfigured provider never stops the others (or the offline default)."""
    built: list[Source] = []
    for name, builder in BUILDERS.items():
        cfg = getattr(sources_settings, name, None)
        if cfg is None or not cfg.enabled or (include is not None and name not in include):
            continue
        try:
            built.extend(builder(cfg))
        except ConfigError as exc:
            logger.error("source %s is enabled but cannot start: %s", name, exc)
    return built
