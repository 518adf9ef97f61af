"""Exchange calendars for the detectors: moved to streams/calendars.py, a leaf, so the providers read the same
calendars (trading sessions of intraday bars and ticks); re-exported here so these imports keep working."""

from __future__ import annotations

from streams.calendars import (
    EXTENDED_HOURS,
    SessionCalendar,
    calendar,
    exchange_for,
    trading_session,
)

__all__ = ["EXTENDED_HOURS", "SessionCalendar", "calendar", "exchange_for", "trading_session"]
