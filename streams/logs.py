"""The worker's log format: Faust's text lines, or one JSON object a line for a log collector
(`worker.log_format: json`).

Why a formatter swapped in through the App's `logging_config` rather than handlers of our own: `faust worker`
(mode's `setup_logging`) clears the root handlers and builds its own from `-l`/`-f` when the worker starts,
after our modules are imported. A dictConfig with `merge: True` that only redefines the two formatters mode's
handlers use ("default" for a log file, "colored" for the console) keeps mode's handlers, levels and `-f`
as they are and changes only how a line is written.

`kill -USR2 <worker pid>` logs where every asyncio task of the worker waits (`install_task_dump`): a worker that
stalls without an error says which await holds it, without a debugger or a restart.

Redaction (streams/redact.py) still applies: the formatter reads the message with `record.getMessage()` and
the exception through `record.exc_text`, which the installed record factory redacts, and redacts again
itself when a record did not come from that factory.

A leaf: stdlib and streams.redact only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
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


class Repeats(logging.Filter):
    """Lets a warning through once per `window` seconds: the same text again within it is counted, and said with
    the next one let through ("... (and 11 more in the last 300 s)"). During a provider outage yfinance warned at
    every attempt and the Yahoo source at every round for each symbol (60 lines in 75 s for two symbols); the
    source's state in /health says it the whole time. Errors and other levels always pass."""

    def __init__(self, window: float = 300.0, capacity: int = 1000) -> None:
        super().__init__()
        self.window, self.capacity = window, capacity
        self.seen: dict[str, list[float]] = {}  # text -> [when it was last let through, repeats held back since]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        try:
            text = record.getMessage()
        except Exception:  # arguments that do not fit the message: the handler reports it, as without this filter
            return True
        now = record.created
        entry = self.seen.get(text)
        if entry is not None and now - entry[0] < self.window:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            record.msg, record.args = f"{text} (and {int(entry[1])} more since {now - entry[0]:.0f} s ago)", None
        if entry is None and len(self.seen) >= self.capacity:
            self.seen.pop(next(iter(self.seen)))
        self.seen[text] = [now, 0]
        return True


def quiet_repeats(*names: str, window: float = 300.0) -> None:
    """Installs one Repeats filter on each named logger (once: a second call changes nothing)."""
    for name in names:
        log = logging.getLogger(name)
        if not any(isinstance(f, Repeats) for f in log.filters):
            log.addFilter(Repeats(window))


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


def await_chain(task: asyncio.Task[Any]) -> list[str]:
    """Where `task` waits, outermost first: one `file:line in function` per coroutine it awaits through, then
    what the innermost one awaits (a future, a lock's waiter). asyncio's own `Task.get_stack` gives only the
    outermost frame of a suspended task, which says nothing about a stall deep in a client library."""
    out: list[str] = []
    if task.done():
        return out
    obj: Any = task.get_coro()
    for _ in range(64):
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is None:
            if obj is not None:
                out.append(f"awaiting {type(obj).__name__}")
            break
        out.append(f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
        obj = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
    return out


def task_dump(loop: asyncio.AbstractEventLoop) -> str:
    """Every pending task of `loop` with its await chain, tasks sorted by name."""
    parts = []
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name()):
        chain = "\n    ".join(await_chain(task))
        parts.append(f"task {task.get_name()} ({task.get_coro().__qualname__}):\n    {chain}")
    return "\n".join(parts)


def install_task_dump(loop: asyncio.AbstractEventLoop, signum: int = signal.SIGUSR2) -> None:
    """`kill -USR2 <pid>` logs `task_dump` at WARNING (mode's SIGUSR1 dump shows only each task's outer frame)."""
    log = logging.getLogger(__name__)
    loop.add_signal_handler(signum, lambda: log.warning("asyncio tasks (on %s):\n%s",
                                                        signal.Signals(signum).name, task_dump(loop)))
