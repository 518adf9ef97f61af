"""Which sources exist, and how to build the enabled ones from Settings.

One entry per provider module. The worker (streams/stages/produce.py) and the standalone runner both build
sources from here; tests check that every entry has its raw.<name> topic in topics.yaml. What a source needs
beyond its settings (the store of Alpha Vantage's daily quota) comes in as `Collaborators`, built by the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producers.alpha_vantage import AlphaVantageSource
from producers.base import Source
from producers.finnhub import FinnhubSource, FinnhubTradeStream, NewsSentimentSource
from producers.fred import FredSource
from producers.nasdaq_data_link import NasdaqDataLinkSource
from producers.quota import QuotaStore
from producers.replay import ReplaySource
from producers.simulated import SimulatedSource
from producers.social import SocialSource
from producers.stocktwits import StocktwitsSource
from producers.yahoo import YahooSource
from streams.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Collaborators:
    """Shared services a source may be given. `quota_store`: where daily call quotas are counted (None: in
    the source's own memory, lost on restart; the worker passes producers.quota.KafkaQuotaStore)."""

    quota_store: QuotaStore | None = None


NONE = Collaborators()


def _finnhub(settings: Any, collab: Collaborators = NONE) -> list[Source]:
    sources: list[Source] = [FinnhubSource(settings)]
    if settings.websocket:
        sources.append(FinnhubTradeStream(settings))
    return sources


# builder(settings[, collaborators]) -> the provider's sources.
BUILDERS: dict[str, Callable[..., list[Source]]] = {
    "simulated": lambda s, c=NONE: [SimulatedSource(s)],
    "yahoo": lambda s, c=NONE: [YahooSource(s)],
    "alpha_vantage": lambda s, c=NONE: [AlphaVantageSource(s, quota_store=c.quota_store)],
    "finnhub": _finnhub,
    "fred": lambda s, c=NONE: [FredSource(s)],
    "nasdaq_data_link": lambda s, c=NONE: [NasdaqDataLinkSource(s)],
    "news": lambda s, c=NONE: [NewsSentimentSource(s)],
    "social": lambda s, c=NONE: [SocialSource(s)],
    "stocktwits": lambda s, c=NONE: [StocktwitsSource(s)],
    "replay": lambda s, c=NONE: [ReplaySource(s)],
}


def is_enabled(sources_settings: Any, name: str) -> bool:
    """A section's `enabled`; unset (the simulated feed's default) is on while no other source is enabled."""
    cfg = getattr(sources_settings, name, None)
    if cfg is None:
        return False
    if cfg.enabled is None:
        return not any(getattr(getattr(sources_settings, other, None), "enabled", None) is True
                       for other in BUILDERS if other != name)
    return bool(cfg.enabled)


def enabled_sources(sources_settings: Any, *, include: set[str] | None = None,
                    collaborators: Collaborators = NONE, not_started: dict[str, str] | None = None) -> list[Source]:
    """Build every enabled source. A source whose key is missing is skipped with a clear log line, so one
    unconfigured provider never stops the others (or the offline default); `not_started` gets its name and why,
    for /health and the connector manager's status to show it."""
    built: list[Source] = []
    for name, builder in BUILDERS.items():
        cfg = getattr(sources_settings, name, None)
        if cfg is None or not is_enabled(sources_settings, name) or (include is not None and name not in include):
            continue
        try:
            built.extend(builder(cfg, collaborators))
        except ConfigError as exc:
            logger.error("source %s is enabled but cannot start: %s", name, exc)
            if not_started is not None:
                not_started[name] = str(exc)
    return built
