"""The `tickflow` command line without a broker: help, version, listing, and every expected failure as one
line that names the fix. Kafka and PostgreSQL are pointed at a closed port, so a command that tried to reach
them would fail these tests rather than pass by luck."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from streams.tools import cli

ROOT = Path(__file__).resolve().parents[4]
NOWHERE = {"TICKFLOW_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", "TICKFLOW_POSTGRES__PORT": "1",
           "TICKFLOW_CONFIG": ""}


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m streams ...` in a subprocess: what a user runs, exit code and streams included."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("TICKFLOW_")}
    return subprocess.run([sys.executable, "-m", "streams", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          env={**full, **NOWHERE, **(env or {})}, timeout=120)


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tickflow: "), out.stderr
    return lines[0]


def test_help_lists_ours_and_fausts_commands() -> None:
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for name in ("init", "topics", "db", "status", "backfill", "replay-dlq", "selftest", "worker", "agents"):
        assert f"\n  {name} " in out.stdout, name
    assert out.stderr == ""


def test_version_is_the_package_metadata() -> None:
    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"tickflow {version('tickflow')}"


def test_faust_commands_listed_are_fausts_own() -> None:
    from faust.cli.faust import cli as faust_cli

    assert set(cli.FAUST_COMMANDS) == set(faust_cli.list_commands(click.Context(faust_cli)))


def test_every_option_has_help_text() -> None:
    missing = []
    for name, cmd in cli.cli.commands.items():
        assert cmd.help, f"{name} has no help"
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.help:
                missing.append(f"{name} {p.opts}")
    assert not missing


@pytest.mark.parametrize("name", ["init", "topics", "db", "status", "backfill", "replay-dlq", "selftest"])
def test_each_commands_help_needs_nothing(name: str) -> None:
    result = CliRunner().invoke(cli.cli, [name, "--help"], env=NOWHERE)
    assert result.exit_code == 0 and f"Usage: cli {name}" in result.output


def test_worker_help_is_fausts_and_creates_nothing() -> None:
    out = run("worker", "--help")
    assert out.returncode == 0, out.stderr
    assert "--web-port" in out.stdout and "Kafka" not in out.stderr


@pytest.mark.parametrize(("env", "says"), [
    ({"TICKFLOW_WORKER__STAGES": "validate,write"},
     ["TICKFLOW_WORKER__STAGES=validate,write", '["validate", "write"]']),
    ({"TICKFLOW_WORKER__STAGES": '["validate", "publish"]'}, ["worker.stages", "'validate', 'write' or 'archive'"]),
    ({"TICKFLOW_WORKER__WEB_PROT": "1"}, ["TICKFLOW_WORKER__WEB_PROT names no setting", "TICKFLOW_WORKER__WEB_PORT"]),
])
def test_a_worker_with_bad_settings_says_why_in_one_line(env: dict[str, str], says: list[str]) -> None:
    """Before Faust imports the App (where it would die with a traceback naming neither the variable nor the
    fix), and before it reaches Kafka (NOWHERE: it would fail otherwise)."""
    out = run("worker", "-l", "info", env=env)
    line = one_line_error(out)
    assert out.returncode == 2 and all(s in line for s in says), line


def test_faust_help_with_the_app_does_not_reach_kafka() -> None:
    """Faust imports the App for --help; the topic check must wait for a worker (it would fail: no broker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKFLOW_")}
    out = subprocess.run([sys.executable, "-m", "faust", "-A", "streams.app", "--help"], cwd=ROOT, timeout=120,
                         capture_output=True, text=True, env={**env, **NOWHERE})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "worker" in out.stdout and "cannot reach Kafka" not in out.stderr + out.stdout


def test_typo_suggests_the_command() -> None:
    assert "did you mean `tickflow worker`?" in one_line_error(run("wroker"))
    assert "did you mean `tickflow topics`?" in one_line_error(run("topic", "check"))


def test_bad_yaml_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("postgres:\n  host: [\n")
    line = one_line_error(run("topics", "check", env={"TICKFLOW_CONFIG": str(bad)}))
    assert str(bad) in line and "not valid YAML" in line


def test_top_level_list_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("- postgres\n- kafka\n")
    line = one_line_error(run("db", "migrate", env={"TICKFLOW_CONFIG": str(bad)}))
    assert "must be a mapping" in line


def test_comma_list_in_the_environment_says_json() -> None:
    line = one_line_error(run("topics", "check", env={"TICKFLOW_SOURCES__YAHOO__SYMBOLS": "AAPL,MSFT"}))
    assert "TICKFLOW_SOURCES__YAHOO__SYMBOLS" in line and "JSON" in line and '["AAPL", "MSFT"]' in line


def test_env_list_hint_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_SOURCES__FRED__SERIES", "UNRATE, GDP")
    monkeypatch.setenv("TICKFLOW_SOURCES__YAHOO__ENABLED", "true")
    from streams.settings import env_json_hint  # where settings are built, for every entry point

    hint = env_json_hint(Exception('error parsing value for field "sources" from source "EnvSettingsSource"'))
    assert hint.startswith("TICKFLOW_SOURCES__FRED__SERIES=UNRATE, GDP") and '["UNRATE", "GDP"]' in hint


def test_db_migrate_with_postgres_down() -> None:
    line = one_line_error(run("db", "migrate"))
    assert "PostgreSQL is unavailable" in line and "TICKFLOW_POSTGRES__HOST" in line


@pytest.mark.parametrize("state, says, not_says", [
    ("28P01", "Check TICKFLOW_POSTGRES__USER and TICKFLOW_POSTGRES__PASSWORD", "make stack-up"),
    ("28000", "pg_hba.conf", "make stack-up"),
    ("3D000", "TICKFLOW_POSTGRES__DATABASE", "make stack-up"),
    (None, "make stack-up", "TICKFLOW_POSTGRES__DATABASE"),
])
def test_a_refused_login_or_a_missing_database_is_not_called_an_outage(
        capsys: pytest.CaptureFixture[str], state: str | None, says: str, not_says: str) -> None:
    """PostgreSQL answered and refused the password or the database name: the fix is a setting (exit 2), not
    `make stack-up` (a server that is down, exit 1)."""
    from streams.errors import SinkUnavailable

    err = SinkUnavailable("connect postgresql://u@h:1/db: the server's answer")
    err.sqlstate = state

    @cli.cli.command("pg-test", hidden=True)
    @cli.friendly
    def pg() -> int:
        raise err

    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["pg-test"])
    finally:
        cli.cli.commands.pop("pg-test")
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and says in line and not_says not in line
    assert exit_.value.code == (1 if state is None else 2)


def test_bare_tickflow_prints_its_help_not_one_long_line() -> None:
    out = run()
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("Usage: tickflow") and "\nCommands:\n" in out.stderr
    assert all(len(line) <= 110 for line in out.stderr.splitlines())


def test_topics_check_with_kafka_down() -> None:
    out = run("topics", "check")
    assert "cannot reach Kafka" in one_line_error(out)
    assert out.returncode == 1  # a service that is down, as `db migrate` with PostgreSQL down; 2 is configuration


def test_a_worker_with_kafka_down_says_so_once() -> None:
    """Not aiokafka's connection error, then a log line, then the exit line: the same fact three times."""
    out = run("worker", "-l", "info")
    assert "cannot reach Kafka at 127.0.0.1:1" in one_line_error(out) and out.returncode == 1


def test_replay_with_kafka_down() -> None:
    line = one_line_error(run("replay-dlq", "--dry-run"))
    assert "cannot reach Kafka" in line and "TICKFLOW_KAFKA__BOOTSTRAP_SERVERS" in line


def test_backfill_date_must_be_iso() -> None:
    line = one_line_error(run("backfill", "yahoo", "--symbols", "AAPL", "--start", "01/02/2024", "--end",
                              "2024-01-31"))
    assert "'01/02/2024' is not a date as YYYY-MM-DD" in line and "--start" in line


def test_backfill_refuses_a_symbol_validation_would_refuse_before_any_call() -> None:
    out = run("backfill", "yahoo", "--symbols", "AAPL,AA PL,$$$", "--start", "2024-01-02", "--end", "2024-01-05")
    line = one_line_error(out)
    assert "--symbols: 'AA PL', '$$$' is not a symbol validation accepts" in line and out.returncode == 2


@pytest.mark.parametrize(("source", "wrong", "hint"), [("alpha_vantage", "5m", "5min"), ("yahoo", "5min", "5m"),
                                                      ("yahoo", "7m", "1m")])
def test_backfill_refuses_an_interval_the_source_does_not_take_before_any_call(
        monkeypatch: pytest.MonkeyPatch, source: str, wrong: str, hint: str) -> None:
    """Alpha Vantage's "Invalid API call" for "5m" does not say the interval is wrong, and costs a call of its
    25 a day per symbol: refused here, with the intervals the source takes."""
    async def no_call(*args: Any) -> tuple[int, int, int]:
        raise AssertionError("a provider was called")

    monkeypatch.setattr(cli, "backfill_history", no_call)
    result = CliRunner().invoke(cli.cli, ["backfill", source, "--symbols", "IBM", "--start", "2024-01-02", "--end",
                                          "2024-01-31", "--interval", wrong], env=NOWHERE)
    assert result.exit_code == 2, result.output
    assert f"--interval '{wrong}' is not one {source} takes" in result.output and hint in result.output


def test_backfill_takes_each_interval_of_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    async def loaded(*args: Any) -> tuple[int, int, int]:
        return 1, 1, 0

    monkeypatch.setattr(cli, "backfill_history", loaded)
    for source in ("yahoo", "alpha_vantage", "fred"):
        for interval in cli.backfill_intervals(source) or ("1d", "anything"):  # fred ignores it
            result = CliRunner().invoke(cli.cli, ["backfill", source, "--symbols", "IBM", "--start", "2024-01-02",
                                                  "--end", "2024-01-31", "--interval", interval], env=NOWHERE)
            assert result.exit_code == 0, (source, interval, result.output)


def test_backfill_end_before_start() -> None:
    result = CliRunner().invoke(cli.cli, ["backfill", "fred", "--symbols", "GDP", "--start",
                                                        "2024-02-01", "--end", "2024-01-01"], env=NOWHERE)
    assert result.exit_code == 2 and "swap them" in result.output


def test_backfill_counts_the_symbols_done_apart_from_the_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """"(2/2 symbols; 1 failed)" for one symbol of two loaded."""
    async def loaded_one(*args: Any) -> tuple[int, int, int]:
        return 22, 2, 1

    monkeypatch.setattr(cli, "backfill_history", loaded_one)
    result = CliRunner().invoke(cli.cli, ["backfill", "alpha_vantage", "--symbols", "IBM,NOPE", "--start",
                                          "2024-01-02", "--end", "2024-01-31"], env=NOWHERE)
    assert result.exit_code == 0 and "backfilled 22 points" in result.output
    assert "(1/2 symbols; 1 failed)" in result.output, result.output


def test_init_into_a_missing_directory() -> None:
    line = one_line_error(run("init", "--config", "/no/dir/x.yaml"))
    assert "directory /no/dir does not exist" in line and "--config" in line


def test_init_writes_then_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    first = run("init", "--config", str(path))
    assert first.returncode == 0 and path.exists() and (tmp_path / ".env.pipeline").exists()
    assert "--force" in one_line_error(run("init", "--config", str(path)))
    assert run("init", "--config", str(path), "--force").returncode == 0


def test_status_without_a_worker() -> None:
    line = one_line_error(run("status", "--url", "http://127.0.0.1:1"))
    assert "no worker answers at http://127.0.0.1:1" in line


class _Worker(http.server.BaseHTTPRequestHandler):
    """A stand-in worker's two pages: 401 without the token, else a metrics and a health body."""

    TOKEN = "t" * 20

    def do_GET(self) -> None:
        if self.path == "/pipeline/metrics" and self.headers.get("Authorization") != f"Bearer {self.TOKEN}":
            self.send_response(401)
            self.end_headers()
            return
        body = {"/pipeline/metrics": {"queue_size": 7, "throughput_per_sec": 879.07421, "sources": {}},
                "/health": {"status": "ok", "worker": "w1", "leader": True, "sources": [], "paused_sources": [
                    {"source": "simulated", "rejected": 1006, "window": 2000, "rules": {"symbol.pattern": 1006},
                     "resumes_in_seconds": 12.5}]}}.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stand_in_worker() -> Any:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Worker)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_status_says_what_to_do_about_a_refused_token_and_reads_a_page_url(stand_in_worker: str) -> None:
    out = run("status", "--url", f"http://{stand_in_worker}")
    line = one_line_error(out)
    assert "refused the request (HTTP 401: no token was given)" in line and "TICKFLOW_WORKER__WEB_TOKEN" in line
    assert out.returncode == 2
    # the address as `make run` prints a page's, or without its scheme
    for url in (f"http://{stand_in_worker}/pipeline/metrics", f"{stand_in_worker}/"):
        out = run("status", "--url", url, env={"TICKFLOW_WORKER__WEB_TOKEN": _Worker.TOKEN})
        assert out.returncode == 0, out.stderr
        assert "throughput 879.1/s" in out.stdout
        assert ("source simulated paused by its circuit breaker: 1006 of its last 2000 records rejected "
                "(the batch that tripped it: symbol.pattern 1006); retried in 12.5 s") in out.stdout
    assert "is not a URL" in one_line_error(run("status", "--url", "http://[::1:36066"))


def test_a_reader_that_leaves_the_pipe_is_no_error(stand_in_worker: str) -> None:
    """`tickflow status | head -1`: the pipe's reader leaves; it said "Broken pipe: is the service running?"."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("TICKFLOW_")}
    proc = subprocess.Popen([sys.executable, "-m", "streams", "status", "--url", stand_in_worker],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**full, **NOWHERE, "TICKFLOW_WORKER__WEB_TOKEN": _Worker.TOKEN})
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the first line
    _, err = proc.communicate(timeout=120)
    assert err.decode() == "" and proc.returncode == 1


def test_unexpected_errors_are_one_line_unless_debugging(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    @cli.cli.command("boom-test", hidden=True)
    @cli.friendly
    def boom() -> int:
        raise KeyError("x")

    try:
        with pytest.raises(SystemExit) as exit_:
            cli.main(["boom-test"])
        assert exit_.value.code == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unexpected KeyError" in err and "TICKFLOW_DEBUG=1" in err
        monkeypatch.setenv("TICKFLOW_DEBUG", "1")
        with pytest.raises(KeyError):
            cli.main(["boom-test"])
    finally:
        cli.cli.commands.pop("boom-test")


def test_progress_bar_draws_on_a_terminal_only() -> None:
    term = io.StringIO()
    with cli.progress(None, "dead letters", console=Console(file=term, force_terminal=True, width=80)) as bar:
        bar.set_total(4)
        for _ in range(4):
            bar.advance()
    assert "4/4" in term.getvalue()
    plain = io.StringIO()
    with cli.progress(2, "backfill", console=Console(file=plain, force_terminal=False)) as bar:
        bar.advance(2)
    assert plain.getvalue() == ""


def test_producers_names_the_valid_sources() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKFLOW_")}
    out = subprocess.run([sys.executable, "-m", "producers", "nope"], cwd=ROOT, capture_output=True, text=True,
                         env={**env, **NOWHERE}, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    from producers.registry import BUILDERS

    assert "unknown source 'nope'" in out.stderr and all(name in out.stderr for name in BUILDERS)


def test_producers_accepts_every_registered_source() -> None:
    from producers.__main__ import parser
    from producers.registry import BUILDERS

    for name in BUILDERS:
        assert parser().parse_args([name]).source == name


def test_producers_missing_key_is_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKFLOW_") and not k.endswith("_API_KEY")}
    out = subprocess.run([sys.executable, "-m", "producers", "fred", "--count", "1"], cwd=ROOT, capture_output=True,
                         text=True, env={**env, **NOWHERE}, timeout=120)
    assert out.returncode == 2 and "FRED_API_KEY" in out.stderr and "Traceback" not in out.stderr


def test_producers_with_kafka_down_is_one_line_and_closes_its_client() -> None:
    """The failed start left the producer open: asyncio's "Unclosed AIOKafkaProducer" and its repr followed the
    one-line error."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKFLOW_")}
    out = subprocess.run([sys.executable, "-m", "producers", "simulated", "--count", "1"], cwd=ROOT,
                         capture_output=True, text=True, env={**env, **NOWHERE}, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [line for line in out.stderr.strip().splitlines()
                                               if line.startswith("python -m producers: cannot reach Kafka")]
    assert "Unclosed" not in out.stderr


def test_worker_quiet_moves_to_fausts_own_option() -> None:
    """`tickflow worker --quiet` (or -q) is Faust's --quiet, which Faust reads only before the command name."""
    from streams.tools.cli import faust_argv

    text = lambda: "text"  # noqa: E731
    assert faust_argv(["worker", "-l", "info"], text) == ["-A", "streams.app:app", "worker", "-l", "info"]
    assert faust_argv(["worker", "--quiet", "-l", "info"], text) == \
        ["-A", "streams.app:app", "--quiet", "worker", "-l", "info"]
    assert faust_argv(["worker", "-q"], text) == ["-A", "streams.app:app", "--quiet", "worker"]
    # -h is the worker's --web-host, not help; other commands are passed as they are.
    assert faust_argv(["worker", "-h", "0.0.0.0"], text) == ["-A", "streams.app:app", "worker", "-h", "0.0.0.0"]
    assert faust_argv(["send", "-q"], text) == ["-A", "streams.app:app", "send", "-q"]


def test_json_logs_make_the_worker_quiet() -> None:
    """worker.log_format json: no banner (not a JSON line) on the worker's output; --help is left alone."""
    from streams.tools.cli import faust_argv

    json_logs = lambda: "json"  # noqa: E731
    assert faust_argv(["worker", "-l", "info"], json_logs) == ["-A", "streams.app:app", "--quiet", "worker", "-l",
                                                               "info"]
    assert faust_argv(["worker", "--help"], json_logs) == ["-A", "streams.app:app", "worker", "--help"]


def test_the_brief_pipeline_log_level_is_the_workers_loglevel_unless_one_is_given(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """PIPELINE_LOG_LEVEL=DEBUG (the brief's troubleshooting advice) reaches a worker started without -l."""
    from streams.settings import get_settings
    from streams.tools.cli import faust_argv

    text = lambda: "text"  # noqa: E731
    monkeypatch.setenv("PIPELINE_LOG_LEVEL", "DEBUG")
    get_settings.cache_clear()
    try:
        assert faust_argv(["worker"], text) == ["-A", "streams.app:app", "worker", "--loglevel", "debug"]
        assert faust_argv(["worker", "-l", "info"], text)[-2:] == ["-l", "info"]
        assert faust_argv(["worker", "--loglevel=warn"], text)[-1] == "--loglevel=warn"
        assert faust_argv(["worker", "-linfo"], text)[-1] == "-linfo"
        assert faust_argv(["send", "x"], text) == ["-A", "streams.app:app", "send", "x"]
        assert faust_argv(["worker"], text, lambda: "WARNING")[-1] == "warn"  # Faust's own names
        assert faust_argv(["worker"], text, lambda: "CRITICAL")[-1] == "crit"
    finally:
        monkeypatch.delenv("PIPELINE_LOG_LEVEL")
        get_settings.cache_clear()
    assert faust_argv(["worker"], text) == ["-A", "streams.app:app", "worker"]


def test_log_format_is_read_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.settings import get_settings
    from streams.tools.cli import faust_argv

    monkeypatch.setenv("TICKFLOW_WORKER__LOG_FORMAT", "json")
    get_settings.cache_clear()
    try:
        assert "--quiet" in faust_argv(["worker"])
    finally:
        monkeypatch.delenv("TICKFLOW_WORKER__LOG_FORMAT")
        get_settings.cache_clear()
    assert "--quiet" not in faust_argv(["worker"])


def test_init_refuses_to_overwrite_with_the_configuration_exit_code(tmp_path: Path) -> None:
    """README: exit 2 for configuration errors, 1 for a service that is down."""
    path = tmp_path / "c.yaml"
    assert run("init", "--config", str(path)).returncode == 0
    out = run("init", "--config", str(path))
    assert out.returncode == 2 and "--force" in one_line_error(out)


@pytest.fixture
def fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from streams.settings import get_settings

    for name in list(os.environ):
        if name.startswith("TICKFLOW_"):
            monkeypatch.delenv(name)
    for name, value in NOWHERE.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(("before", "after", "says"), [
    (set(), set(range(1, 10)), "applied migrations 1-9 to schema public"),
    (set(range(1, 9)), set(range(1, 10)), "applied migration 9 to schema public"),
    (set(range(1, 10)), set(range(1, 10)), "schema public up to date"),
])
def test_db_migrate_says_what_it_applied(before: set[int], after: set[int], says: str, fresh_settings: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from sinks.postgres import PostgresTickWriter

    versions = iter([before, after])
    migrated = []

    async def schema_versions(writer: Any) -> set[int]:
        return next(versions)

    async def migrate(self: Any) -> None:
        migrated.append(self.schema)

    monkeypatch.setattr(cli, "schema_versions", schema_versions)
    monkeypatch.setattr(PostgresTickWriter, "migrate", migrate)
    result = CliRunner().invoke(cli.cli, ["db", "migrate"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == says and migrated == ["public"]


def test_describe_versions() -> None:
    assert cli.describe_versions([3, 1, 2, 5, 7, 8]) == "migrations 1-3, 5, 7-8"
    assert cli.describe_versions([4]) == "migration 4"


class FakeAdmin:
    """The cluster as AIOKafkaAdminClient shows it: `topics` maps each existing topic to its partition count."""

    topics: dict[str, int] = {}

    def __init__(self, **kwargs: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [{"topic": n, "error_code": 0, "partitions": [{"partition": p} for p in range(self.topics[n])]}
                for n in names]

    async def create_topics(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("`topics check` creates nothing")

    # name -> {config: (value, config_source)}; a topic not here has topics.yaml's own settings
    configs: dict[str, dict[str, tuple[str, int]]] = {}
    altered: list[Any] = []

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        from streams.catalog import catalog_of
        from streams.settings import get_settings

        specs = {t.name: t for t in catalog_of(get_settings().kafka).topics}
        entries = []
        for r in resources:
            own = self.configs.get(r.name) or {k: (v, 1) for k, v in specs[r.name].kafka_config().items()}
            entries.append((0, None, 2, r.name, [(k, v, False, src, False, []) for k, (v, src) in own.items()]))
        return [SimpleNamespace(resources=entries)]

    async def alter_configs(self, resources: list[Any]) -> list[Any]:
        FakeAdmin.altered += resources
        return [SimpleNamespace(resources=[(0, None, 2, r.name) for r in resources])]


def test_a_topics_retention_that_drifted_from_topics_yaml_is_reported_and_set(
        fresh_settings: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """`topics check` said nothing of a retention raised in topics.yaml after the topic was created (and printed
    topics.yaml's value as if it were the cluster's); `topics create` did not set it."""
    import aiokafka.admin

    from streams import broker
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    topics = catalog_of(get_settings().kafka).topics
    raw = topics[0]
    monkeypatch.setattr(FakeAdmin, "topics", {t.name: t.partitions for t in topics})
    monkeypatch.setattr(FakeAdmin, "configs", {raw.name: {"retention.ms": ("3600000", 1), "cleanup.policy": (
        raw.cleanup_policy, 1), "segment.ms": ("3600000", 1), "max.message.bytes": ("1048588", 5)}})
    monkeypatch.setattr(FakeAdmin, "altered", [])
    monkeypatch.setattr(aiokafka.admin, "AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(broker, "AIOKafkaAdminClient", FakeAdmin)
    result = CliRunner().invoke(cli.cli, ["topics", "check"])
    assert result.exit_code == 2, result.output
    assert f"{raw.name} retention.ms is 3600000, topics.yaml says {raw.retention_ms}" in result.output
    assert FakeAdmin.altered == []
    result = CliRunner().invoke(cli.cli, ["topics", "create"])
    assert result.exit_code == 0, result.output
    [changed] = FakeAdmin.altered
    # topics.yaml's settings, and the topic's own others kept (AlterConfigs replaces the whole set); not the
    # broker's defaults (config source 5)
    assert changed.name == raw.name and changed.configs == {
        "retention.ms": str(raw.retention_ms), "cleanup.policy": raw.cleanup_policy, "segment.ms": "3600000"}
    # a sensitive setting of its own is described without its value: sending the set would reset it, so no
    FakeAdmin.configs[raw.name]["some.password"] = (None, 1)  # type: ignore[assignment]
    result = CliRunner().invoke(cli.cli, ["topics", "create"])
    assert result.exit_code == 2 and "some.password cannot be read back" in result.output, result.output
    assert len(FakeAdmin.altered) == 1


def test_topics_check_reports_missing_and_mismatched_topics_together(fresh_settings: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import aiokafka.admin

    from streams import broker
    from streams.catalog import catalog_of
    from streams.settings import get_settings

    topics = catalog_of(get_settings().kafka).topics
    missing, wrong, *rest = topics
    monkeypatch.setattr(FakeAdmin, "topics", {wrong.name: wrong.partitions + 1, **{t.name: t.partitions for t in rest}})
    monkeypatch.setattr(aiokafka.admin, "AIOKafkaAdminClient", FakeAdmin)
    monkeypatch.setattr(broker, "AIOKafkaAdminClient", FakeAdmin)
    result = CliRunner().invoke(cli.cli, ["topics", "check"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.count("\n") == 0 and line.startswith("tickflow: "), line
    assert f"topics missing from the cluster: {missing.name} " in line
    assert f"{wrong.name} has {wrong.partitions + 1} partitions, topics.yaml says {wrong.partitions}" in line

    assert "cannot shrink; set" in line

    # Fewer partitions than topics.yaml: raising them is possible (no "recreate the topic", which loses data)
    monkeypatch.setattr(FakeAdmin, "topics", {wrong.name: wrong.partitions - 1,
                                              **{t.name: t.partitions for t in topics if t is not wrong}})
    line = CliRunner().invoke(cli.cli, ["topics", "check"]).output.strip()
    assert "raise them with `kafka-topics.sh --bootstrap-server" in line and "recreate" not in line, line
    assert f"--alter --topic {wrong.name} --partitions {wrong.partitions}`" in line

    monkeypatch.setattr(FakeAdmin, "topics", {t.name: t.partitions for t in topics})
    result = CliRunner().invoke(cli.cli, ["topics", "check"])
    assert result.exit_code == 0 and "(created)" not in result.output, result.output


@pytest.mark.parametrize(("given", "base"), [
    ("localhost:6066", "http://localhost:6066"), ("http://127.0.0.1:6066/pipeline/metrics", "http://127.0.0.1:6066"),
    ("http://h:6066/", "http://h:6066"), ("https://gw.example.com/tickflow", "https://gw.example.com/tickflow"),
    ("https://gw.example.com/tickflow/health", "https://gw.example.com/tickflow"),
])
def test_status_url_keeps_a_proxy_prefix_and_drops_a_pages_path(given: str, base: str) -> None:
    assert cli.worker_base(given) == base
