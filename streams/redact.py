"""Secrets out of log lines and error messages: one `redact()`, a registry of this process's secret values,
and a log-record factory that applies both to every record before any handler sees it.

Why a record factory rather than a `logging.Filter`: a filter on the root logger does not run for records
logged on child loggers (filters are checked by the logger a record is logged on, handlers by the handler),
and `faust worker` rebuilds the root handlers after our modules are imported (mode's `setup_logging` clears
them and runs dictConfig), so a handler filter added at import time would be gone. The factory is process
wide: every record, from any logger, to whatever handlers exist now or later (the worker's file or
stream handler, pytest's caplog, the spinner), is redacted once, when it is created. `RedactingFilter`
does the same for a handler you configure yourself (e.g. in a `logging_config` dict).

What is redacted, everywhere, into "***":
- every registered secret value: the SecretStr fields of the process's Settings (postgres.password,
  kafka.sasl_password, kafka.ssl_key_password, any under sources.*) and the providers' API keys, which
  come from the environment only, from the variables each source section names in `key_env`
  (streams/config.py);
- secret-looking patterns: `api_key=`/`apikey=`/`token=`/`password=`... parameters, also with a prefix
  (`PGPASSWORD=`, `POSTGRES_PASSWORD=`), quoted or not (`password="x y"`, `'token': 'abc'`), in YAML or log
  notation (`password: x`); `Authorization:` and `X-...-Token`/`X-...-Key` headers; `Bearer <token>` (any
  length when spelled as the HTTP scheme, 16+ characters otherwise); and the password of
  `scheme://user:pw@host` URLs up to the address's last `@` (PostgreSQL DSNs included).

Of tickflow it imports only streams/config.py (a leaf: the section models, for the providers' `key_env`), so
streams/errors.py can use it without an import cycle (exception messages are redacted when the exception is
made); pyproject.toml's import contracts keep it that way.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, SecretBytes, SecretStr

from streams import config

MASK = "***"

# Names of secret-carrying keys, with any prefix (PGPASSWORD, POSTGRES_PASSWORD, client_secret, FINNHUB_API_KEY).
_NAMES = r"[a-z0-9_\-]*(?:api_?key|apikey|token|secret|password|passwd|pwd)"
# A quoted value, closed by its own quote character, backslash escapes skipped: "x y", 'it"s', "a\\"b".
_QUOTED = r"([\"'])(?:\\.|(?!\2).)*\2"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # URL user info: postgresql://user:pw@host, kafka://u:pw@b, https://u:pw@h -> user:***@. The password runs
    # to the LAST @ of the address, so an unencoded @ or / in it (postgresql://u:p@ss/w@host/db) is hidden too.
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^:/?#\s@'\"]*:)[^\s'\"]*@"), rf"\1{MASK}@"),
    # Quoted values after a secret's name, in any notation: password="x y", 'token': 'abc', secret: "x y".
    (re.compile(rf"(?i)([\"']?\b{_NAMES}[\"']?\s*[:=]\s*){_QUOTED}"), rf"\1\2{MASK}\2"),
    # Unquoted key=value: PGPASSWORD=x, api_key=x in a query; a bare `key=` only inside a query string.
    (re.compile(rf"(?i)(\b{_NAMES}=)[^&\s#'\"]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)([?&;]key=)[^&\s#'\"]+"), rf"\1{MASK}"),
    # Unquoted key: value (YAML, logs, a JSON number): password: x, "token": 12345
    (re.compile(rf"(?i)([\"']?\b{_NAMES}[\"']?\s*:[ \t]*)(?![\"'])[^\s'\",}}]+"), rf"\1{MASK}"),
    # Headers, as text or in a dict's repr: Authorization: Bearer x / Basic x, X-Finnhub-Token: x, X-Api-Key: x
    (re.compile(r"(?i)(\b(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)"
                r"[^\s'\",}]+"), rf"\1{MASK}"),
    (re.compile(r"(?i)(\bx-[a-z0-9-]*(?:token|key|secret)[\"']?\s*[:=]\s*[\"']?)[^\s'\",}]+"), rf"\1{MASK}"),
    # The HTTP scheme as spelled in headers (capital B), any length: Bearer abc. Words that describe the
    # scheme stay readable (Bearer token, Bearer realm="tickflow").
    (re.compile(r"(\bBearer\s+)(?!(?:token|tokens|auth|authentication|realm|scheme)\b)[A-Za-z0-9\-._~+/%]+=*"),
     rf"\1{MASK}"),
    # A bearer token anywhere else (16+ characters, so the words "bearer token" stay readable).
    (re.compile(r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/%]{16,}=*"), rf"\1{MASK}"),
)

# Every pattern above needs one of these (lower-cased); most log lines and rejection reasons have none, and
# a few substring checks cost ~1 us where the patterns cost ~25 or more (this runs for every log record and
# every error we make).
_TRIGGERS = ("key", "token", "secret", "passw", "pwd", "auth", "bearer", "://")

_lock = threading.Lock()
_known: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first, so a secret containing another is removed whole


def _value(secret: SecretStr | SecretBytes | str | None) -> str:
    if isinstance(secret, SecretStr):
        return secret.get_secret_value()
    if isinstance(secret, SecretBytes):
        return secret.get_secret_value().decode(errors="replace")
    return secret or ""


def register(*secrets: SecretStr | SecretBytes | str | None) -> None:
    """Add secret values that must never appear in a log line or an error message (empty ones are ignored)."""
    global _ordered
    values = {v for v in (_value(s) for s in secrets) if v}
    if not values - _known:
        return
    with _lock:
        _known.update(values)
        _ordered = tuple(sorted(_known, key=len, reverse=True))


def forget_all() -> None:
    """Empty the registry (tests)."""
    global _ordered
    with _lock:
        _known.clear()
        _ordered = ()


def known() -> tuple[str, ...]:
    return _ordered


def secrets_in(obj: Any) -> list[SecretStr | SecretBytes]:
    """Every SecretStr/SecretBytes value inside a pydantic model (nested models, lists, dicts), so a secret
    field added to Settings later is covered without touching this module."""
    found: list[SecretStr | SecretBytes] = []
    if isinstance(obj, (SecretStr, SecretBytes)):
        found.append(obj)
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            found += secrets_in(getattr(obj, name, None))
    elif isinstance(obj, Mapping):
        for v in obj.values():
            found += secrets_in(v)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            found += secrets_in(v)
    return found


def environment_secrets() -> list[SecretStr]:
    """The providers' API keys: never settings, read from the environment where each provider's section
    (streams/config.py, `key_env`) says."""
    return config.environment_secrets()


def redact(text: str, secrets: Iterable[SecretStr | SecretBytes | str | None] = ()) -> str:
    """`text` without the given secrets, the registered ones and secret-looking patterns."""
    if not text:
        return text
    out = text
    if secrets:
        extra = sorted((v for v in (_value(s) for s in secrets) if v), key=len, reverse=True)
        for value in extra:
            if value in out:
                out = out.replace(value, MASK)
    for value in _ordered:
        if value in out:
            out = out.replace(value, MASK)
    low = out.lower()
    if any(t in low for t in _TRIGGERS):
        for pattern, repl in _PATTERNS:
            out = pattern.sub(repl, out)
    return out


def _redact_arg(arg: Any) -> Any:
    if isinstance(arg, (int, float, bool)) or arg is None:
        return arg
    try:
        shown = str(arg)
    except Exception:
        return arg
    clean = redact(shown)
    return arg if clean == shown else clean


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place: its message (with its args), exception text and stack, once."""
    if getattr(record, "_tickflow_redacted", False):
        return
    record._tickflow_redacted = True  # type: ignore[attr-defined]
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: keep it broken, but clean
        record.msg = redact(str(record.msg))
        if isinstance(record.args, Mapping):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
    else:
        clean = redact(message)
        if clean != message:  # only then: handlers that use msg/args as given keep them otherwise
            record.msg, record.args = clean, ()
    if record.exc_info and not record.exc_text:
        # Formatters use a record's exc_text when it is set, instead of formatting exc_info again.
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """For a handler you configure yourself; the installed record factory already covers every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


_previous_factory: Callable[..., logging.LogRecord] | None = None


class RedactedLogRecord(logging.LogRecord):
    """A record that redacts when it is read, not when it is made: most records are never formatted (a
    DEBUG record under an INFO handler; aiokafka logs one per message sent), and redacting them all up
    front cost a third of a worker's CPU when a logger was at DEBUG (measured with py-spy). Formatters and
    handlers read `getMessage()`, `exc_text` and `stack_info`; all three come out redacted."""

    def getMessage(self) -> str:
        return redact(super().getMessage())

    @property
    def exc_text(self) -> str | None:
        return self.__dict__.get("_exc_text")

    @exc_text.setter
    def exc_text(self, value: str | None) -> None:
        self.__dict__["_exc_text"] = redact(value) if value else value

    @property
    def stack_info(self) -> str | None:
        return self.__dict__.get("_stack_info")

    @stack_info.setter
    def stack_info(self, value: str | None) -> None:
        self.__dict__["_stack_info"] = redact(value) if value else value


def _factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    assert _previous_factory is not None
    if _previous_factory is logging.LogRecord:
        return RedactedLogRecord(*args, **kwargs)
    record = _previous_factory(*args, **kwargs)  # someone else's factory: redact eagerly
    redact_record(record)
    return record


def installed() -> bool:
    return logging.getLogRecordFactory() is _factory


def install(settings: BaseModel | None = None, *, environment: bool = True) -> None:
    """Register the secrets of `settings` (and the providers' keys from the environment) and redact every
    log record of this process from now on. Safe to call more than once."""
    global _previous_factory
    if settings is not None:
        register(*secrets_in(settings))
    if environment:
        register(*environment_secrets())
    with _lock:
        if logging.getLogRecordFactory() is not _factory:
            _previous_factory = logging.getLogRecordFactory()
            logging.setLogRecordFactory(_factory)


def uninstall() -> None:
    """Put the previous record factory back (tests)."""
    global _previous_factory
    with _lock:
        if logging.getLogRecordFactory() is _factory and _previous_factory is not None:
            logging.setLogRecordFactory(_previous_factory)
            _previous_factory = None
