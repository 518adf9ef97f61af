"""The `tickflow` command line (also `python -m streams`), on click like Faust's own.

Our commands (init, topics, db, status, backfill, replay-dlq, selftest) import what they need when they run,
so `tickflow --help`, `tickflow --version` and every `--help` work without a broker and change nothing.
Faust's commands (worker, agents, tables, ...) are handed to Faust's CLI with `-A streams.app:app`: the tools
name the App, never import it (an import-linter contract). Every expected failure ends as one line on stderr
that says what to do, never a traceback (TICKFLOW_DEBUG=1 shows one for an unexpected error).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing, contextmanager
from datetime import date
from difflib import get_close_matches
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn

import click

from streams.errors import ConfigError, SinkUnavailable, TickflowError

PROG = "tickflow"
# The registry's sources whose class loads history (`history()`), in registry order. Written out rather than
# computed because the registry imports every provider (yfinance ...), ~5x the import time of this module, which
# `tickflow --help` pays; tests/unit/streams/tools/test_cli_backfill.py keeps it equal to the registry's.
BACKFILL_SOURCES = ("yahoo", "alpha_vantage", "fred")
# Faust's commands, listed here so `tickflow --help` shows them without importing Faust (a test keeps the list
# equal to Faust's own).
FAUST_COMMANDS: dict[str, str] = {
    "agents": "List agents.",
    "clean-versions": "Delete old version directories.",
    "completion": "Output shell completion to be evaluated by the shell.",
    "livecheck": "Manage LiveCheck instances.",
    "model": "Show model detail.",
    "models": "List all available models as a tabulated list.",
    "reset": "Delete local table state.",
    "send": "Send message to agent/topic.",
    "tables": "List available tables.",
    "worker": "Start worker instance for given app.",
}


class Failure(click.ClickException):
    """An expected failure: printed as `tickflow: <message>` on one line, exit code 2 (1 for a runtime one)."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(" ".join(message.split()))
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"{PROG}: {self.format_message()}", err=True)


def package_version() -> str:
    """The installed distribution's version (pyproject's, through the package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tickflow")
    except PackageNotFoundError:
        return "unknown (not installed: pip install .)"


# PostgreSQL answered, and refused what the settings say: the login (28P01 a wrong password, 28000 no pg_hba.conf
# entry for this user or host) or the database (3D000 it does not exist). Not an outage: "start it" misleads.
PG_SETTINGS_ERRORS = {
    "28P01": "PostgreSQL refused the login: {exc}. Check TICKFLOW_POSTGRES__USER and TICKFLOW_POSTGRES__PASSWORD "
             "(or POSTGRES_USER / POSTGRES_PASSWORD in .env)",
    "28000": "PostgreSQL refused the login: {exc}. Check TICKFLOW_POSTGRES__USER and TICKFLOW_POSTGRES__PASSWORD, "
             "and that the server's pg_hba.conf lets this user in from this host",
    "3D000": "{exc}. Create that database or set TICKFLOW_POSTGRES__DATABASE to an existing one",
}


def is_settings_failure(exc: BaseException) -> bool:
    """A failure the settings must fix (exit code 2), not a service that is down (1)."""
    return isinstance(exc, ConfigError) or (isinstance(exc, SinkUnavailable) and exc.sqlstate in PG_SETTINGS_ERRORS)


def explain(exc: BaseException) -> str | None:
    """The one-line message for an expected failure, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, SinkUnavailable) and exc.sqlstate in PG_SETTINGS_ERRORS:
        return PG_SETTINGS_ERRORS[exc.sqlstate].format(exc=exc)
    if isinstance(exc, SinkUnavailable):
        return (f"PostgreSQL is unavailable: {exc}. Start it (`make stack-up`) or point TICKFLOW_POSTGRES__HOST, "
                "TICKFLOW_POSTGRES__PORT and the credentials at a running server")
    if isinstance(exc, TickflowError):
        return str(exc)
    if type(exc).__name__ in {"KafkaConnectionError", "KafkaTimeoutError", "NoBrokersAvailable"}:
        return (f"cannot reach Kafka ({exc}); start it (`make stack-up`) or set TICKFLOW_KAFKA__BOOTSTRAP_SERVERS "
                "to a running broker")
    if isinstance(exc, ConnectionError | TimeoutError):
        return f"{exc}: is the service running (`make stack-up`)?"
    return None


def _stdout_gone() -> bool:
    """Whether standard output is a pipe whose reader has gone (closed by `head`): its write end then polls as
    an error."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def friendly(fn: Callable[..., int | None]) -> Callable[..., None]:
    """Run a command, turning every expected failure into a one-line `Failure`, and exit with its code."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            code = fn(*args, **kwargs)
        except click.ClickException:
            raise
        except BrokenPipeError:
            if not _stdout_gone():
                raise Failure("a connection closed while it was written to: is the service running "
                              "(`make stack-up`)?", 1) from None
            # `tickflow status | head -1`: the reader left; no message (it would go nowhere useful), as Python's
            # documentation has it: stdout onto /dev/null so the interpreter's last flush does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except Exception as exc:
            message = explain(exc)
            if message is None:
                raise
            raise Failure(message, 2 if is_settings_failure(exc) else 1) from None
        if code:
            sys.exit(code)

    return run


class Bar:
    """What a long command reports progress through; a no-op without a terminal."""

    def __init__(self, progress: Any, task: Any) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, description: str | None = None) -> None:
        self._progress.update(self._task, advance=n, **({"description": description} if description else {}))

    def set_total(self, total: int) -> None:
        self._progress.update(self._task, total=total)


@contextmanager
def progress(total: int | None, description: str, console: Any = None) -> Iterator[Bar]:
    """A rich progress bar on stderr when it is a terminal (disabled otherwise, so captured output stays plain)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=console, disable=not console.is_terminal)
    with bar:
        yield Bar(bar, bar.add_task(description, total=total))


class IsoDate(click.ParamType):
    """YYYY-MM-DD only: 01/02/2024 is January or February depending on who reads it."""

    name = "YYYY-MM-DD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> date:
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a date as YYYY-MM-DD (e.g. 2024-01-02 for 2 January 2024)", param, ctx)


class TickflowGroup(click.Group):
    """Our commands plus Faust's, and usage errors as one line (with the closest command for a typo)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *FAUST_COMMANDS])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in FAUST_COMMANDS:
            return faust_command(name)
        return super().get_command(ctx, name)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                               list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = get_close_matches(name, self.list_commands(ctx), n=1)
            hint = f"; did you mean `{PROG} {close[0]}`?" if close else f"; `{PROG} --help` lists them"
            raise Failure(f"no command {name!r}{hint}")
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        ours = [(n, c.get_short_help_str(200)) for n, c in sorted(self.commands.items()) if not c.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(ours)
        with formatter.section("Faust commands (the worker's App, -A streams.app:app)"):
            formatter.write_dl(sorted(FAUST_COMMANDS.items()))


def faust_command(name: str) -> click.Command:
    """A pass-through: everything after the name goes to Faust's CLI untouched (its own --help included)."""

    def run(args: tuple[str, ...]) -> NoReturn:
        handoff([name, *args])

    return click.Command(name, callback=run, help=f"{FAUST_COMMANDS[name]} (Faust: `{PROG} {name} --help`)",
                         params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
                         context_settings={"ignore_unknown_options": True, "help_option_names": []},
                         add_help_option=False)


QUIET_FLAGS = ("--quiet", "-q")


def _log_format() -> str:
    """worker.log_format from the settings; "text" when they do not load (the App then reports why)."""
    try:
        from streams.settings import get_settings

        return get_settings().worker.log_format
    except Exception:
        return "text"


def _log_level() -> str | None:
    """pipeline.log_level (the brief's PIPELINE_LOG_LEVEL) from the settings; None when unset or unloadable."""
    try:
        from streams.settings import get_settings

        return get_settings().pipeline.log_level
    except Exception:
        return None


def faust_argv(argv: list[str], log_format: Callable[[], str] = _log_format,
               log_level: Callable[[], str | None] = _log_level) -> list[str]:
    """Faust's arguments for one of its commands. `tickflow worker --quiet` (or -q) is Faust's own --quiet,
    which Faust reads only before the command name: it is moved there. A worker whose log format is json is
    always quiet: Faust's banner (and its other console prints) are not JSON lines, and a log collector reading
    the worker's output would choke on them; its log lines still go out (to standard error, or -f). A worker
    started without -l/--loglevel logs at pipeline.log_level when that is set (PIPELINE_LOG_LEVEL=DEBUG)."""
    name, rest = argv[0], argv[1:]
    quiet = False
    if name == "worker" and "--help" not in rest:  # (-h is the worker's --web-host)
        quiet = any(a in QUIET_FLAGS for a in rest) or log_format() == "json"
        rest = [a for a in rest if a not in QUIET_FLAGS]
        given = any(a.startswith("--loglevel") or (a.startswith("-l") and not a.startswith("--")) for a in rest)
        if not given and (level := log_level()) is not None:
            rest = [*rest, "--loglevel", {"WARNING": "warn", "CRITICAL": "crit"}.get(level, level.lower())]
    return ["-A", "streams.app:app", *(["--quiet"] if quiet else []), name, *rest]


def settings_failure() -> Failure | None:
    """The one-line failure for settings that do not load (a worker would otherwise die in Faust's import of
    the App, with a traceback that names neither the variable nor the fix); None when they load, or for a bug."""
    try:
        from streams.settings import get_settings

        get_settings()
    except Exception as exc:
        message = explain(exc)
        return None if message is None else Failure(message)  # a configuration problem: exit code 2
    return None


def handoff(argv: list[str]) -> NoReturn:
    """Faust's own command line, told where the App is by name: the tools never import the worker's App."""
    if argv[0] == "worker" and "--help" not in argv and (failure := settings_failure()) is not None:
        failure.show()
        sys.exit(failure.exit_code)
    # uvloop unless F_LOOP says otherwise (Faust reads it when it is first imported, just below): the event
    # loop's own overhead is a share of every record's cost in a worker.
    if importlib.util.find_spec("uvloop") is not None:
        os.environ.setdefault("F_LOOP", "uvloop")
    from faust.cli.faust import cli as faust_cli

    sys.argv = [sys.argv[0], *argv]
    faust_cli(faust_argv(argv), prog_name=PROG)
    raise SystemExit(0)  # not reached: click exits


@click.group(cls=TickflowGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_version(), "-V", "--version", prog_name=PROG, message="%(prog)s %(version)s",
                      help="Show the installed tickflow version and exit.")
def cli() -> None:
    """tickflow: market data from providers through Kafka, validated, into PostgreSQL.

    Settings come from pipeline_config.yaml (or $TICKFLOW_CONFIG), .env and TICKFLOW_<SECTION>__<KEY>
    environment variables; topics from the packaged topics.yaml (or $TICKFLOW_TOPICS_FILE).
    """
    # The Kafka client logs each failed connection attempt before raising; the raised error is reported once,
    # as one line with its fix, so its log lines would only repeat it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


@cli.command()
@click.option("--config", "config", default="pipeline_config.yaml", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the configuration; .env.pipeline (for secrets) goes next to it.")
@click.option("--force", is_flag=True, help="Overwrite an existing configuration file with the defaults.")
@friendly
def init(config: str, force: bool) -> int:
    """Write pipeline_config.yaml with every default, and a .env.pipeline template for secrets."""
    from streams.api import ConfigurationManager

    path = Path(config)
    if not path.parent.is_dir():
        raise Failure(f"cannot write {path}: directory {path.parent} does not exist; create it (mkdir -p "
                      f"{path.parent}) or pass another --config")
    if path.exists() and not force:
        raise Failure(f"{path} exists; pass --force to rewrite it with the defaults")  # configuration: exit 2
    cm = ConfigurationManager.__new__(ConfigurationManager)
    cm.path, cm.env_path = path, path.with_name(".env.pipeline")
    try:
        cm.generate()
    except OSError as exc:
        raise Failure(f"cannot write {exc.filename or path}: {exc.strerror or exc}; choose a writable --config",
                      1) from None
    click.echo(f"wrote {path} and {cm.env_path} (secrets go in the latter; keep it out of version control)")
    return 0


async def check_topics(cat: Any, kafka: Any) -> list[str]:
    """Every way the cluster differs from topics.yaml, creating nothing: the topics it lacks, and the partition
    counts and settings of those it has (ensure_topics stops at the first kind, so it is asked about the present
    ones only)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from streams.broker import ensure_topics
    from streams.catalog import Catalog
    from streams.errors import BrokerUnavailable, TopicMismatchError

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap_servers, request_timeout_ms=15000,
                                **kafka.client_kwargs())
    try:
        await admin.start()
        existing = set(await admin.list_topics())
    except KafkaError as exc:
        raise BrokerUnavailable(f"cannot reach Kafka at {kafka.bootstrap_servers}: {exc!r} (is `make stack-up` "
                                "running?)") from None
    finally:
        await admin.close()
    problems = []
    missing = [t.name for t in cat.topics if t.name not in existing]
    if missing:
        problems.append(f"topics missing from the cluster: {', '.join(missing)} (`{PROG} topics create` adds them)")
    present = tuple(t for t in cat.topics if t.name in existing)
    if present:
        try:
            await ensure_topics(Catalog(topics=present), kafka.bootstrap_servers, create=False, kafka=kafka,
                                configs="raise")
        except TopicMismatchError as exc:
            problems.append(str(exc))
    return problems


@cli.command()
@click.argument("action", type=click.Choice(["create", "check"]), default="create", metavar="[create|check]")
@friendly
def topics(action: str) -> int:
    """Make the cluster match topics.yaml (create: add missing topics, set retention and cleanup policy where they
    differ; check: only report)."""
    from streams.broker import ensure_topics
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    settings = get_settings()
    cat = catalog_of(settings.kafka)
    if action == "check":
        problems = asyncio.run(check_topics(cat, settings.kafka))
        if problems:
            raise ConfigError("; ".join(problems))
        created: list[str] = []
    else:
        created = asyncio.run(ensure_topics(cat, settings.kafka.bootstrap_servers, create=True, kafka=settings.kafka,
                                            configs="apply"))
    for t in cat.topics:
        click.echo(f"{t.name:32} partitions={t.partitions:<3} retention.ms={t.retention_ms:<12} "
                   f"cleanup={t.cleanup_policy}{'  (created)' if t.name in created else ''}")
    return 0


@cli.command()
@click.argument("action", type=click.Choice(["migrate"]), default="migrate", metavar="[migrate]")
@friendly
def db(action: str) -> int:
    """Create or migrate the PostgreSQL schema (idempotent; safe while workers run)."""
    from sinks.postgres import PostgresTickWriter
    from streams.settings import get_settings

    writer = PostgresTickWriter(get_settings().postgres)

    async def run() -> list[int]:
        before = await schema_versions(writer)
        await writer.migrate()
        return sorted(await schema_versions(writer) - before)

    applied = asyncio.run(run())
    click.echo(f"applied {describe_versions(applied)} to schema {writer.schema}" if applied
               else f"schema {writer.schema} up to date")
    return 0


async def schema_versions(writer: Any) -> set[int]:
    """The migrations recorded in the writer's schema_migrations (none before the first migrate)."""
    import asyncpg

    from sinks.postgres import classify

    try:
        conn = await asyncpg.connect(**writer._connect_kwargs())
    except Exception as exc:
        raise classify(exc, f"connect {writer.settings.dsn_for_display()}") from None
    try:
        table = f"{writer._q}.schema_migrations"
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            return set()
        return {r["version"] for r in await conn.fetch(f"SELECT version FROM {table}")}
    finally:
        await conn.close()


def describe_versions(versions: list[int]) -> str:
    """[1, 2, 3, 5] -> "migrations 1-3, 5"; [7] -> "migration 7"."""
    runs: list[list[int]] = []
    for v in sorted(versions):
        if runs and v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs)
    return f"migration{'s' if len(versions) > 1 else ''} {text}"


def worker_base(url: str) -> str:
    """A worker's base address from what a user passes: `localhost:6066`, a page's URL
    (`http://host:6066/pipeline/metrics`, as `make run` prints it), with or without a trailing slash."""
    url = url.strip()
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError as exc:
        raise Failure(f"--url {url!r} is not a URL ({exc}); e.g. --url http://127.0.0.1:6066", 2) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Failure(f"--url {url!r} is not an http(s) address; e.g. --url http://127.0.0.1:6066", 2)
    # a page's own path goes; a proxy's prefix before it (https://gateway/tickflow) stays
    path = re.sub(r"/(pipeline(/.*)?|health/?|metrics/?|dashboard/?)$", "", parts.path.rstrip("/"))
    return f"{parts.scheme}://{parts.netloc}{path}"


def _get(url: str, headers: dict[str, str] | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as resp:
        return json.loads(resp.read())


@cli.command()
@click.option("--url", metavar="URL",
              help="A worker's web address (default: worker.advertised_host or web_host, and web_port).")
@friendly
def status(url: str | None) -> int:
    """Sources, lag, throughput and rejects, read from a running worker."""
    from streams.settings import get_settings

    w = get_settings().worker
    base = worker_base(url) if url else f"http://{w.advertised_host or w.web_host}:{w.web_port}"
    try:
        m = _get(f"{base}/pipeline/metrics", w.web_headers())  # the web token, when one is set
        h = _get(f"{base}/health")
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            given = "the token given was refused" if w.web_token else "no token was given"
            raise Failure(f"the worker at {base} refused the request (HTTP {exc.code}: {given}); set "
                          "TICKFLOW_WORKER__WEB_TOKEN to the workers' token", 2) from None
        raise Failure(f"the worker at {base} answered HTTP {exc.code} {exc.reason}", 1) from None
    except OSError as exc:
        raise Failure(f"no worker answers at {base} ({exc}); start one with `make run` or `{PROG} worker`, "
                      "or pass --url", 1) from None
    except ValueError as exc:  # a body that is not JSON: something else answers on that port
        raise Failure(f"what answers at {base} is not a tickflow worker ({exc})", 1) from None
    click.echo(f"worker {h.get('worker')}  status {h.get('status')}  leader {h.get('leader')}  "
               f"lag {m.get('queue_size')}  throughput {m.get('throughput_per_sec') or 0:.1f}/s  "
               f"p50 {m.get('p50_latency_ms')} ms  p99 {m.get('p99_latency_ms')} ms")
    for p in h.get("paused_sources") or ():  # a tripped circuit breaker: the source's records wait in its topic
        rules = ", ".join(f"{k} {v}" for k, v in sorted(p.get("rules", {}).items(), key=lambda kv: -kv[1])[:3])
        click.echo(f"source {p.get('source')} paused by its circuit breaker: {p.get('rejected')} of its last "
                   f"{p.get('window')} records rejected (the batch that tripped it: {rules}); retried in "
                   f"{p.get('resumes_in_seconds')} s")
    click.echo(f"\n{'source':18} {'processed':>10} {'rejected':>9} {'written':>10} {'rows/s':>8} {'p99 ms':>8}  "
               "top rejects")
    for src, s in m.get("sources", {}).items():
        top = ", ".join(f"{k} {v}" for k, v in sorted(s["rejected_by_rule"].items(), key=lambda kv: -kv[1])[:3])
        click.echo(f"{src:18} {s['processed']:>10,} {s['rejected']:>9,} {s['written']:>10,} "
                   f"{s['throughput_per_sec']:>8.1f} {s['p99_latency_ms'] or '-':>8}  {top}")
    if h.get("sources"):
        click.echo(f"\n{'producer':28} {'state':8} {'sent':>10} {'failures':>8}  last error")
        for s in h["sources"]:
            click.echo(f"{s['source'] + '/' + s['kind']:28} {s['state']:8} {s['sent']:>10,} {s['failures']:>8}  "
                       f"{(s['last_error'] or '')[:80]}")
    return 0


async def backfill_history(source_name: str, symbols: list[str], start: date, end: date, interval: str,
                           bar: Bar | None = None) -> tuple[int, int, int]:
    """History through the raw topic: the same validation, anomaly detection and idempotent sink as live data.
    Returns (points sent, symbols done, symbols failed); one symbol failing does not stop the others."""
    import aiohttp

    from producers.base import encode
    from producers.quota import KafkaQuotaStore
    from producers.registry import BUILDERS, Collaborators
    from producers.runner import new_producer, send_batch
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    settings = get_settings()
    cfg = getattr(settings.sources, source_name)
    # Alpha Vantage's daily quota is counted where the worker counts it: a backfill spends the same day's calls.
    # The store connects on first use, so a source without a quota never reaches it.
    quota_store = KafkaQuotaStore.for_settings(settings.kafka)
    (source,) = BUILDERS[source_name](cfg, Collaborators(quota_store=quota_store))  # ConfigError: no key
    topic = catalog_of(settings.kafka).raw(source_name).name
    producer = new_producer(settings)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()  # a failed start (no broker) leaves its client open: "Unclosed AIOKafkaProducer"
        await quota_store.close()
        raise
    total = failed = 0
    try:
        async with aiohttp.ClientSession() as session:
            for symbol in symbols:
                try:
                    if source_name == "fred":
                        points = await source.history(session, symbol, start, end)  # type: ignore[attr-defined]
                    else:
                        points = await source.history(session, symbol, start, end,  # type: ignore[attr-defined]
                                                      interval)
                except Exception as exc:  # reported, then the next symbol
                    failed += 1
                    click.echo(f"{symbol}: {type(exc).__name__}: {exc}", err=True)
                    if bar:
                        bar.advance(description=f"{symbol}: failed")
                    continue
                sent = await send_batch(producer, topic, [encode(p) for p in points])
                total += sent
                if bar:
                    bar.advance(description=f"{symbol}: {sent:,} points")
    finally:
        await producer.stop()
        await quota_store.close()
    return total, len(symbols), failed


def backfill_intervals(source: str) -> tuple[str, ...] | None:
    """The --interval values `source`'s history() takes (None: it takes none, FRED). Checked before any call: a
    wrong one (Yahoo's "5m" given to Alpha Vantage, whose intraday is "5min") spent a call of the provider's daily
    quota per symbol and failed with the provider's "Invalid API call", which does not say the interval is wrong."""
    from typing import get_args

    from streams.config import Interval, IntradayInterval

    daily = ("1d", "1wk", "1mo", "daily", "weekly", "monthly")  # alpha_vantage.py _HISTORY_PERIODS
    return {"yahoo": get_args(Interval), "alpha_vantage": (*get_args(IntradayInterval), *daily)}.get(source)


@cli.command()
@click.argument("source", type=click.Choice(BACKFILL_SOURCES))
@click.option("--symbols", required=True, metavar="A,B,...", help="Comma-separated symbols (FRED: series ids).")
@click.option("--start", required=True, type=IsoDate(), help="First day to load, YYYY-MM-DD.")
@click.option("--end", required=True, type=IsoDate(), help="Last day to load, YYYY-MM-DD (inclusive).")
@click.option("--interval", default="1d", show_default=True,
              help="Bar interval (yahoo: 1m..1d, 1wk, 1mo; alpha_vantage: 1min..60min, 1d, 1wk or 1mo; "
                   "ignored for fred).")
@friendly
def backfill(source: str, symbols: str, start: date, end: date, interval: str) -> int:
    """Load history through raw.<source>: rate-limited like the live source, safe to re-run (natural keys)."""
    if end < start:
        raise Failure(f"--end {end} is before --start {start}; swap them")
    names = [s.strip() for s in symbols.split(",") if s.strip()]
    if not names:
        raise Failure("--symbols is empty; give at least one, e.g. --symbols AAPL,MSFT")
    valid = backfill_intervals(source)
    if valid is not None and interval not in valid:
        raise Failure(f"--interval {interval!r} is not one {source} takes: {', '.join(valid)}", 2)
    from streams.settings import get_settings

    v = get_settings().validation
    bad = [n for n in names if len(n) > v.max_symbol_length or not re.fullmatch(v.symbol_pattern, n.upper())]
    if bad:  # every point of it would be rejected after the provider's calls were spent
        raise Failure(f"--symbols: {', '.join(repr(n) for n in bad)} is not a symbol validation accepts "
                      f"(validation.symbol_pattern {v.symbol_pattern}); e.g. --symbols AAPL,BRK-B,^GSPC", 2)
    with progress(len(names), f"backfill {source}") as bar:
        total, done, failed = asyncio.run(backfill_history(source, names, start, end, interval, bar))
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    topic = catalog_of(get_settings().kafka).raw(source).name
    click.echo(f"backfilled {total:,} points from {source} into {topic} ({done - failed}/{len(names)} symbols"
               + (f"; {failed} failed)" if failed else ")"))
    return 1 if failed and not total else 0


def replaced_origins(headers: Iterable[dict[str, str]]) -> set[str]:
    """The dead letters ("<partition>:<offset>") a later one replaces: a record `replay-dlq` sent back and that was
    refused again names the dead letter it came from (tickflow.replayed_from). Only the newest of such a chain
    is replayed, judged by its own rule: replaying both sent the record twice, and the copies doubled at every
    run."""
    return {o for h in headers if (o := h.get("tickflow.replayed_from"))}


async def _dead_letters(consumer: Any, tps: list[Any], ends: dict[Any, int]) -> AsyncIterator[tuple[Any, Any]]:
    """Every record of the partitions from their beginning to `ends` (their end when the command started)."""
    await consumer.seek_to_beginning(*tps)
    remaining = {tp for tp in tps if ends[tp] > 0}
    while remaining:
        batch = await consumer.getmany(timeout_ms=1000)
        for tp, msgs in batch.items():
            for m in msgs:
                if m.offset >= ends[tp]:
                    remaining.discard(tp)
                    continue
                yield tp, m
        # Done with a partition once the consumer stands at its end: whether its last record was yielded or not,
        # and past transaction markers, which take offsets but are never returned.
        for tp in list(remaining):
            if await consumer.position(tp) >= ends[tp]:
                remaining.discard(tp)


async def replay_dead_letters(rule: str | None, source: str | None, rate: float, limit: int | None, dry_run: bool,
                              bar: Bar | None = None, seen: Counter[str] | None = None) -> tuple[int, int, int]:
    """Re-produce matching dead letters to their original topic, keeping key, value and non-tickflow headers.
    Into the clean topic a record goes as the validate stage publishes one (streams/contract.py): with the
    contract headers (tickflow.schema, content-type) and its event time as the Kafka timestamp.
    Returns (dead letters in the topic, scanned, matched); `seen` counts the rules of the replayable ones."""
    import orjson
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from producers.runner import new_producer
    from streams import contract
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    settings = get_settings()
    cat = catalog_of(settings.kafka)
    dlq = cat.one("rejected").name
    # Dead letters go back where they were refused: a raw topic (the validate stage's) or the clean topic
    # (the write stage's, after the database problem that refused them is fixed).
    clean = cat.one("clean").name
    raw_names = {t.name for t in cat.by_role("raw")} | {clean}
    contract_names = {k for k, _ in contract.headers(contract.CLEAN)}

    def clean_timestamp_ms(value: bytes | None, fallback: int | None) -> int | None:
        """The record's event time (its `timestamp`), as the validate stage stamps a clean record; else the
        dead letter's own timestamp (the write stage keeps the clean record's), else the producer's time."""
        try:
            stamp = orjson.loads(value or b"").get("timestamp")
            ms = contract.event_time_ms(stamp) if isinstance(stamp, str) else None
        except (orjson.JSONDecodeError, AttributeError, ValueError):
            ms = None
        return ms if ms is not None else (fallback if fallback and fallback > 0 else None)
    wanted_topic = cat.raw(source).name if source else None
    # read_committed: the validate stage writes dead letters in transactions; aborted ones are not dead letters.
    # auto_offset_reset "earliest": the reset an assignment starts by itself then agrees with seek_to_beginning (with
    # "latest" it could land after the seek, and a pass read nothing).
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka.bootstrap_servers, enable_auto_commit=False,
                                isolation_level="read_committed", auto_offset_reset="earliest",
                                **settings.kafka.client_kwargs())
    try:
        await consumer.start()
    except BaseException:
        await consumer.stop()  # a failed start leaves its client open
        raise
    producer = None if dry_run else new_producer(settings)
    matched = scanned = total = 0
    try:
        if producer is not None:
            await producer.start()
        parts = consumer.partitions_for_topic(dlq)
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(dlq)
        if not parts:
            raise ConfigError(f"topic {dlq} does not exist (run `{PROG} topics create`)")
        tps = [TopicPartition(dlq, p) for p in sorted(parts)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        total = sum(ends.values())
        replaced: set[str] = set()
        async with aclosing(_dead_letters(consumer, tps, ends)) as first:  # which dead letters later ones replace
            async for _, m in first:
                replaced |= replaced_origins([{k: v.decode(errors="replace") for k, v in (m.headers or [])}])
        if bar:
            bar.set_total(total)
        interval = 1.0 / rate if rate else 0.0
        next_at = time.monotonic()
        async with aclosing(_dead_letters(consumer, tps, ends)) as letters:
            async for tp, m in letters:
                scanned += 1
                if bar:
                    bar.advance()
                if f"{tp.partition}:{m.offset}" in replaced:
                    continue  # replayed and refused again: the newest of its copies stands for it
                h = {k: v.decode(errors="replace") for k, v in (m.headers or [])}
                target = h.get("tickflow.source.topic", "")
                if seen is not None and target in raw_names:
                    seen[h.get("tickflow.rule", "?")] += 1
                if (target not in raw_names or (rule and not h.get("tickflow.rule", "").startswith(rule))
                        or (wanted_topic and target != wanted_topic)):
                    continue
                if limit and matched >= limit:
                    break
                matched += 1
                if producer is not None:
                    wait = next_at - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    next_at = max(next_at, time.monotonic()) + interval
                    kept = [(k, v) for k, v in (m.headers or []) if not k.startswith("tickflow.")]
                    origin = f"{tp.partition}:{m.offset}".encode()
                    stamp = None
                    if target == clean:
                        kept = [*(kv for kv in kept if kv[0] not in contract_names),
                                *contract.headers(contract.CLEAN)]
                        stamp = clean_timestamp_ms(m.value, m.timestamp)
                    await producer.send(target, m.value, key=m.key, timestamp_ms=stamp,
                                        headers=[*kept, ("tickflow.replayed_from", origin)])
        if producer is not None:
            await producer.flush()
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
    return total, scanned, matched


@cli.command("replay-dlq")
@click.option("--rule", metavar="PREFIX", help="Only records whose rule starts with this (e.g. schema., "
              "quote.crossed, timestamp.future).")
@click.option("--source", metavar="SOURCE", help="Only records that came from raw.<SOURCE>.")
@click.option("--rate", type=click.FloatRange(min=0), default=1000.0, show_default=True,
              help="Records per second to re-inject (0: unthrottled).")
@click.option("--limit", type=click.IntRange(min=1), help="Stop after this many matching records.")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; send nothing.")
@friendly
def replay_dlq(rule: str | None, source: str | None, rate: float, limit: int | None, dry_run: bool) -> int:
    """Re-inject dead letters into the topic that refused them (a raw topic: validation runs again; the clean
    topic: the write stage tries again) after a fix."""
    seen: Counter[str] = Counter()
    with progress(None, "dead letters") as bar:
        total, scanned, matched = asyncio.run(replay_dead_letters(rule, source, rate, limit, dry_run, bar, seen))
    click.echo(f"scanned {scanned:,}/{total:,} dead letters; {'would replay' if dry_run else 'replayed'} {matched:,}")
    if not matched and seen and (rule or source):  # a typo'd rule finds nothing: say what there is
        click.echo("rules of the replayable dead letters: "
                   + ", ".join(f"{r} {n:,}" for r, n in seen.most_common(12)))
    return 0


@cli.command()
@click.option("--keep", is_flag=True, help="Keep the test's topics, schema and worker logs for inspection.")
@click.option("--throughput-points", type=click.IntRange(min=1), default=20_000, show_default=True,
              help="Points sent for the throughput check.")
@friendly
def selftest(keep: bool, throughput_points: int) -> int:
    """Run the test report on the local stack with a worker of its own (exit 0: all passed)."""
    from streams.tools.selftest import main as run_selftest

    return run_selftest(keep=keep, throughput_points=throughput_points)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `tickflow` and `python -m streams`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] and argv[0] in FAUST_COMMANDS:
        handoff(argv)  # Faust parses the rest itself, its --help included
    try:
        rc = cli.main(argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `tickflow`: its help as click prints it, not one line
            exc.show()
            sys.exit(exc.exit_code)
        cmd = exc.ctx.command_path if exc.ctx else PROG
        click.echo(f"{PROG}: {' '.join(exc.format_message().split())} (see `{cmd} --help`)", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("TICKFLOW_DEBUG"):
            raise
        click.echo(f"{PROG}: unexpected {type(exc).__name__}: {' '.join(str(exc).split())} (a bug: rerun with "
                   "TICKFLOW_DEBUG=1 for the traceback and report it)", err=True)
        sys.exit(1)
    sys.exit(rc if isinstance(rc, int) else 0)
