"""JSON log lines (streams/logs.py, `worker.log_format: json`): one parseable object a line, with the fields a
log collector needs, still redacted, and applied through mode's own logging setup the way `faust worker` runs it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mode.utils import logging as mode_logging

from streams import logs, redact
from streams.errors import ConfigError
from streams.settings import load_settings

SECRET = "FAKE-SECRET-logs-q8Zr71"
FIXED = 1_767_225_600.25  # 2026-01-01T00:00:00.250Z


@pytest.fixture
def redaction() -> Iterator[None]:
    """The record factory installed and a fake secret registered, as `get_settings()` does in a worker."""
    was_installed = redact.installed()
    redact.install(environment=False)
    redact.register(SECRET)
    yield
    redact.forget_all()
    if not was_installed:
        redact.uninstall()


@pytest.fixture
def root_logging() -> Iterator[None]:
    """mode's setup_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)


def _emit(logger_name: str, *records: tuple[int, str, tuple[Any, ...], bool]) -> list[dict[str, Any]]:
    """Log through a handler with the JSON formatter; every line must parse on its own."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        for level, msg, args, with_exc in records:
            if with_exc:
                try:
                    raise RuntimeError(f"connect failed: postgresql://tick:{SECRET}@db:5432/x")
                except RuntimeError:
                    logger.log(level, msg, *args, exc_info=True)
            else:
                logger.log(level, msg, *args)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(records)
    return [json.loads(line) for line in lines]


def test_fields_time_level_logger_message() -> None:
    record = logging.LogRecord("streams.stages.write", logging.WARNING, __file__, 1, "wrote %d rows\nin %s",
                               (3, "ticks"), None)
    record.created = FIXED
    out = json.loads(logs.JsonFormatter().format(record))
    assert out == {"time": "2026-01-01T00:00:00.250Z", "level": "WARNING", "logger": "streams.stages.write",
                   "message": "wrote 3 rows\nin ticks"}


def test_one_line_per_record_and_exception_text(redaction: None) -> None:
    out = _emit("streams.test_logs.lines", (logging.INFO, "a\nb\nc", (), False),
                (logging.ERROR, "sink failed", (), True))
    assert out[0]["message"] == "a\nb\nc" and "exception" not in out[0]
    assert out[1]["level"] == "ERROR" and out[1]["logger"] == "streams.test_logs.lines"
    assert "Traceback (most recent call last)" in out[1]["exception"]
    assert "RuntimeError: connect failed" in out[1]["exception"]


def test_registered_secret_never_in_json_output(redaction: None) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("streams.test_logs.secret")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        logger.warning("provider answered %s", {"token": SECRET, "url": f"https://x/?q=1&k={SECRET}"})
        logger.info(f"inline {SECRET} in the message itself")
        try:
            raise ValueError(f"bad key {SECRET}")
        except ValueError:
            logger.exception("failed with %s", SECRET, stack_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 3
    assert all(redact.MASK in line["message"] for line in lines)
    assert lines[2]["exception"].endswith(f"ValueError: bad key {redact.MASK}")
    assert lines[2]["stack"].startswith("Stack (most recent call last)")


def test_record_from_another_factory_is_redacted_too(redaction: None) -> None:
    """A record that did not come from the installed factory (made by hand, another library's factory)."""
    try:
        raise KeyError(SECRET)
    except KeyError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("other", logging.ERROR, __file__, 1, "key %s", (SECRET,), exc_info)
    text = logs.JsonFormatter().format(record)
    assert SECRET not in text
    out = json.loads(text)
    assert out["message"] == f"key {redact.MASK}" and redact.MASK in out["exception"]


def test_text_is_fausts_own_and_unknown_format_refused() -> None:
    assert logs.logging_config("text") is None
    with pytest.raises(ValueError, match="log_format"):
        logs.logging_config("xml")


def test_json_applied_by_modes_setup_to_log_file(tmp_path: Path, redaction: None, root_logging: None) -> None:
    """`faust worker -f FILE -l info`: mode's file handler ("default" formatter) writes JSON lines."""
    path = tmp_path / "worker.log"
    level = mode_logging.setup_logging(loglevel="info", logfile=str(path),
                                       logging_config=dict(logs.logging_config("json") or {}))
    assert level == logging.INFO
    logging.getLogger("streams.test_logs.file").info("started with password %s", SECRET)
    logging.getLogger("streams.test_logs.file").debug("below the level")
    for h in logging.getLogger().handlers:
        h.flush()
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and SECRET not in lines[0]
    out = json.loads(lines[0])
    assert out["logger"] == "streams.test_logs.file" and out["level"] == "INFO"
    assert out["message"] == f"started with password {redact.MASK}"


def test_json_applied_by_modes_setup_to_console(capsys: pytest.CaptureFixture[str], redaction: None,
                                                root_logging: None) -> None:
    """`faust worker -l info` without -f: mode's console handler ("colored" formatter) writes JSON lines."""
    mode_logging.setup_logging(loglevel="info", logfile=None, logging_config=dict(logs.logging_config("json") or {}))
    logging.getLogger("streams.test_logs.console").warning("lag %d", 42)
    for h in logging.getLogger().handlers:
        h.flush()
    captured = capsys.readouterr()
    lines = [line for line in (captured.err + captured.out).splitlines() if line.strip()]
    assert lines, "nothing logged"
    parsed = [json.loads(line) for line in lines]
    assert {"level": "WARNING", "logger": "streams.test_logs.console", "message": "lag 42"}.items() \
        <= parsed[-1].items()


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TICKFLOW_"):
            monkeypatch.delenv(name)
    cfg = tmp_path / "pipeline_config.yaml"
    cfg.write_text("{}\n")
    monkeypatch.setenv("TICKFLOW_CONFIG", str(cfg))


def test_setting_from_environment(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().worker.log_format == "text"
    monkeypatch.setenv("TICKFLOW_WORKER__LOG_FORMAT", "json")
    assert load_settings().worker.log_format == "json"
    monkeypatch.setenv("TICKFLOW_WORKER__LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match=r"worker\.log_format"):
        load_settings()


async def test_the_task_dump_names_the_await_a_task_is_parked_in_deep_inside_its_calls() -> None:
    import asyncio
    import signal as sig

    from streams.logs import await_chain, install_task_dump, task_dump

    lock = asyncio.Lock()

    async def inner() -> None:
        async with lock:  # parked here while the test holds the lock
            pass

    async def outer() -> None:
        await inner()

    await lock.acquire()
    task = asyncio.create_task(outer(), name="parked")
    await asyncio.sleep(0)
    chain = await_chain(task)
    assert [line.rsplit(" in ", 1)[1] for line in chain[:4]] == ["outer", "inner", "__aenter__", "acquire"], chain
    assert "locks.py" in chain[3] and chain[4].startswith("awaiting "), chain
    dump = task_dump(asyncio.get_running_loop())
    assert "task parked (" in dump and "in inner" in dump
    lock.release()
    await task
    assert await_chain(task) == []  # a finished task waits on nothing

    loop = asyncio.get_running_loop()
    install_task_dump(loop, sig.SIGUSR2)
    try:
        assert loop.remove_signal_handler(sig.SIGUSR2)  # it was installed
    finally:
        loop.remove_signal_handler(sig.SIGUSR2)


def test_a_warning_repeated_within_the_window_is_counted_and_said_with_the_next_one() -> None:
    """During an outage yfinance warned at every attempt and the Yahoo source at every round (60 lines in 75 s for
    two symbols); the same text is let through once per window, the repeats said with the next one."""
    from streams.logs import Repeats

    f = Repeats(window=300.0)

    def record(msg: str, at: float, level: int = logging.WARNING, *args: object) -> logging.LogRecord:
        r = logging.LogRecord("yfinance", level, __file__, 1, msg, args or None, None)
        r.created = at
        return r

    assert f.filter(record("yahoo: %s failed: %s", 0.0, logging.WARNING, "AAPL", "DNS"))
    assert [f.filter(record("yahoo: %s failed: %s", t, logging.WARNING, "AAPL", "DNS")) for t in (10, 20, 299)] == [
        False, False, False]
    assert f.filter(record("yahoo: %s failed: %s", 5.0, logging.WARNING, "MSFT", "DNS"))  # another text passes
    assert f.filter(record("boom", 11.0, logging.ERROR)) and f.filter(record("boom", 12.0, logging.ERROR))
    later = record("yahoo: %s failed: %s", 301.0, logging.WARNING, "AAPL", "DNS")
    assert f.filter(later) and later.getMessage() == "yahoo: AAPL failed: DNS (and 3 more since 301 s ago)"
    again = record("yahoo: %s failed: %s", 700.0, logging.WARNING, "AAPL", "DNS")
    assert f.filter(again) and again.getMessage() == "yahoo: AAPL failed: DNS"  # nothing held back since
