"""The worker's log format: Faust's text lines, or one JSON object a line for a log collector
(`worker.log_format: json`).

Why a formatter swapped in through the App's `logging_config` rather than handlers of our own: `faust worker`
(mode's `setup_logging`) clears the root handlers and builds its own from `-l`/`-f` when the worker starts,
after our modules are imported. A dictConfig with `merge: True` that only redefines the two formatters mode's
handlers use ("default" for a log file, "colored" for the console) keeps mode's handlers, levels and `-f`
as they are and changes only how a line is written.

Redaction (streams/redact.py) still applies: the formatter reads the message with `record.getMessage()` and
the exception through `record.exc_text`, which the installed record factory redacts, and redacts again
itself when a record did not come from that factory.

A leaf: stdlib and streams.redact only.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from streams.redact import RedactedLogRecord, redact

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO-8601 UTC, milliseconds), level, logger, message, and
    `exception` / `stack` when the record has them. Never more than one line (JSON escapes newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        # A record from the installed factory redacts in getMessage() and in its exc_text setter; any other
        # record (another factory, a record made by hand) is redacted here.
        own = isinstance(record, RedactedLogRecord)
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message if own else redact(message),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text if own else redact(record.exc_text)
        if record.stack_info:
            out["stack"] = record.stack_info if own else redact(self.formatStack(record.stack_info))
        return json.dumps(out, ensure_ascii=False, default=str)


def logging_config(log_format: str) -> dict[str, Any] | None:
    """The App's `logging_config` for a log format: None for "text" (Faust's own), else a merge into mode's
    configuration that makes both of its formatters JSON."""
    if log_format not in FORMATS:
        raise ValueError(f"log_format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    if log_format == "text":
        return None
    json_formatter = {"()": f"{__name__}.{JsonFormatter.__name__}"}
    return {
        "version": 1,
        "merge": True,  # mode keeps its handlers (console or -f file), root level and loggers
        "formatters": {"default": json_formatter, "colored": dict(json_formatter)},
    }
