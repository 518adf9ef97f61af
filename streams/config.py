"""The settings sections: plain pydantic models, one per part of the pipeline and one per provider.

A leaf: it imports nothing of ours, so settings are validated (unknown keys refused) before any client,
stage or provider module is loaded. streams/settings.py composes these into the one Settings object.
A provider's section declares `key_env`, the environment variables its key comes from (never a setting).
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

if TYPE_CHECKING:
    import ssl

    from faust.types.auth import CredentialsT

# Identifiers that reach SQL text (the schema comes from settings) are checked against this, refused when
# PostgreSQL reserves them, and always double-quoted: a value never becomes SQL, only a checked name does.
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_RESERVED = re.compile(r"^(pg_.*|information_schema)$")


def check_identifier(name: str) -> str:
    """`name` if it is a plain lower-case identifier PostgreSQL lets us create; ValueError otherwise."""
    if not IDENTIFIER.match(name):
        raise ValueError(f"{name!r} is not a plain identifier (lower-case letters, digits, _; at most 63)")
    if _RESERVED.match(name):
        raise ValueError(f"{name!r} is reserved by PostgreSQL")
    return name


class _Section(BaseModel):
    # hide_input_in_errors: a validation error must not echo what it was given (a password, say).
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True, allow_inf_nan=False)


def _existing_file(path: Path | None) -> Path | None:
    """Certificate and key files are checked at start-up, not at the first connection an hour later."""
    if path is not None and not path.is_file():
        raise ValueError(f"file {path} does not exist or is not a file")
    return path


def _ignored(what: str, fields: dict[str, bool], hint: str = "") -> None:
    """A security setting that the chosen protocol or mode would silently not use is an error, like a typo."""
    names = [name for name, is_set in fields.items() if is_set]
    if names:
        raise ValueError(f"{', '.join(names)} set, but {what} does not use {'it' if len(names) == 1 else 'them'}"
                         + hint)


class KafkaSettings(_Section):
    # false: the Python API runs validation, detection and the PostgreSQL sink in its own process (no broker;
    # streams/api.py); the worker always needs Kafka.
    enabled: bool = True
    # The brokers every client connects to first (worker, producers, Python API, CLI), as
    # "host:port[,host:port...]"; also KAFKA_BOOTSTRAP_SERVERS. The default is the local stack (`make stack-up`).
    bootstrap_servers: str = "127.0.0.1:19092"
    # Test runs and side-by-side deployments add a suffix to every catalog topic name.
    topic_suffix: str = ""
    # Durability of every topic, tickflow's and Faust's internal ones (changelogs, leader election): None keeps
    # topics.yaml's replication factor (1, for one local broker) and the broker's min.insync.replicas.
    # Production: 3 and 2 with acks=all (our producers' setting), so one broker can fail without loss.
    replication_factor: int | None = Field(default=None, ge=1)
    # min.insync.replicas of every topic tickflow creates: the catalog topics, the quota topic and Faust's own
    # (table changelogs, the metrics topic); existing topics are not altered. More than the replication factor is
    # refused at start-up (every acks=all write would fail).
    min_insync_replicas: int | None = Field(default=None, ge=1)
    # 0: send as soon as the previous request is done; batches still form under load (measured: p50 16 ms
    # -> 5 ms at 1,000 points/s, same throughput). Raise it to trade latency for fewer requests.
    producer_linger_ms: int = Field(default=0, ge=0)
    # Per-partition batch buffer of every producer, in bytes (aiokafka max_batch_size, Faust's
    # producer_max_batch_size): a send waits while its partition's batch is full. Larger: fewer, bigger requests
    # under load, more memory.
    producer_max_batch_bytes: int = Field(default=1_048_576, ge=1)
    # true: the validate stage writes ticks.clean/rejected/anomalies and commits its offsets in one Kafka
    # transaction per batch and input partition (exactly-once for read_committed consumers); false: at-least-once
    # (outputs acknowledged, then offsets committed; a crash in between re-sends a batch). PostgreSQL gets every
    # row once either way (natural-key upsert). Off by default: measured here, transactions cost ~20% of
    # throughput and took p50 latency at 1,000 points/s from ~40 ms to 160+ ms (bench/README.md).
    exactly_once: bool = False
    # An open transaction of a producer that died is aborted by the broker after this long, unless the next
    # owner of its partition fences it first (it does, as it starts); read_committed consumers wait meanwhile.
    transaction_timeout_ms: int = Field(default=60_000, ge=1_000)
    # Security (README "Security"). PLAINTEXT is the local stack; managed clusters usually want SASL_SSL.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    # Used with SASL_PLAINTEXT and SASL_SSL only (another value than PLAIN under another protocol is an error).
    # PLAIN sends the password itself, so use it under SASL_SSL; SCRAM-SHA-* never sends it.
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    # SASL user; required with SASL_PLAINTEXT and SASL_SSL, an error to set with any other protocol.
    sasl_username: str = ""
    # SASL password, a secret (from TICKFLOW_KAFKA__SASL_PASSWORD; redacted, never logged); required with
    # SASL_PLAINTEXT and SASL_SSL.
    sasl_password: SecretStr = SecretStr("")
    # PEM files. ssl_cafile: the CA of the brokers' certificates (default: the system's CAs);
    # ssl_certfile/ssl_keyfile (+ ssl_key_password if the key is encrypted): a client certificate (mutual TLS).
    ssl_cafile: Path | None = None
    # Client certificate (PEM; it may hold the key too) for mutual TLS; checked to exist at start-up.
    ssl_certfile: Path | None = None
    # That certificate's private key (PEM) when it is not in ssl_certfile; needs ssl_certfile.
    ssl_keyfile: Path | None = None
    # Password of an encrypted private key, a secret; needs ssl_certfile.
    ssl_key_password: SecretStr = SecretStr("")
    # Off only for brokers reached by an address their certificate does not name; the chain is still verified.
    ssl_check_hostname: bool = True

    _files_exist = field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")(_existing_file)

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        p = self.security_protocol
        if self.uses_sasl and not (self.sasl_username and self.sasl_password.get_secret_value()):
            raise ValueError(f"security_protocol {p} needs sasl_username and sasl_password "
                             "(TICKFLOW_KAFKA__SASL_USERNAME, TICKFLOW_KAFKA__SASL_PASSWORD)")
        if not self.uses_sasl:
            _ignored(f"security_protocol {p}", {
                "sasl_mechanism": self.sasl_mechanism != "PLAIN", "sasl_username": bool(self.sasl_username),
                "sasl_password": bool(self.sasl_password.get_secret_value())})
        if not self.uses_tls:
            _ignored(f"security_protocol {p}", {
                "ssl_cafile": self.ssl_cafile is not None, "ssl_certfile": self.ssl_certfile is not None,
                "ssl_keyfile": self.ssl_keyfile is not None,
                "ssl_key_password": bool(self.ssl_key_password.get_secret_value()),
                "ssl_check_hostname": not self.ssl_check_hostname})
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate it belongs to)")
        if self.ssl_key_password.get_secret_value() and self.ssl_certfile is None:
            raise ValueError("ssl_key_password needs ssl_certfile (and ssl_keyfile when the key is separate)")
        return self

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for SSL and SASL_SSL (None otherwise), made by aiokafka's helper: server
        certificates verified against ssl_cafile or the system's CAs, TLS 1.2+."""
        if not self.uses_tls:
            return None
        from aiokafka.helpers import create_ssl_context

        context = create_ssl_context(
            cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile,
            password=self.ssl_key_password.get_secret_value() or None,
        )
        context.check_hostname = self.ssl_check_hostname
        return context

    def client_kwargs(self) -> dict[str, Any]:
        """Security keyword arguments for every aiokafka client we build (producer, consumer, admin).
        PLAINTEXT gives aiokafka's own default, so the local stack behaves as before."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        context = self.ssl_context()
        if context is not None:
            kwargs["ssl_context"] = context
        if self.uses_sasl:
            kwargs.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                          sasl_plain_password=self.sasl_password.get_secret_value())
        return kwargs

    def faust_credentials(self) -> CredentialsT | None:
        """The Faust app's `broker_credentials`: Faust turns them into the same aiokafka arguments for its
        own consumer and producers (faust.transport.drivers.aiokafka.credentials_to_aiokafka_auth)."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import faust

        context = self.ssl_context()
        if not self.uses_sasl:
            return faust.SSLCredentials(context)
        # SASLCredentials means SASL_SSL when it has a context, SASL_PLAINTEXT when not.
        return faust.SASLCredentials(username=self.sasl_username, password=self.sasl_password.get_secret_value(),
                                     ssl_context=context, mechanism=self.sasl_mechanism)


def _is_local(host: str) -> bool:
    if host.startswith("/") or host == "localhost":  # a unix socket directory, or this machine
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PostgresSettings(_Section):
    # false: the Python API's in-process pipeline (kafka.enabled false) validates and counts but writes nothing.
    enabled: bool = True
    # Server host name or address, or a unix-socket directory (a path starting with /); also POSTGRES_HOST. A host
    # that is not this machine with an sslmode below "require" is logged as a warning.
    host: str = "127.0.0.1"
    # Server port; 15432 is the local stack's (`make stack-up`), PostgreSQL's usual one is 5432.
    port: int = Field(default=15432, ge=1, le=65535)
    # Role every tickflow connection logs in as (the sink and its migrations, the web pages' reads, the selftest,
    # the benchmark).
    user: str = "tickflow"
    # Password of `user`, a secret (TICKFLOW_POSTGRES__PASSWORD or POSTGRES_PASSWORD; never logged). Empty: none is
    # sent and asyncpg falls back to PGPASSWORD or ~/.pgpass.
    password: SecretStr = SecretStr("")
    # Database to connect to; its `db_schema` holds the tables.
    database: str = "tickflow"
    # Tables live in this schema; tests use one schema each. Checked (sinks/schema.py) and always quoted.
    db_schema: str = Field(default="public", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # Connections the writer's pool opens at start and keeps (the worker's one pool shared by the write and archive
    # stages, metrics snapshots and retention; or the Python API's in-process sink).
    pool_min: int = Field(default=1, ge=0)
    # Most connections that pool opens. The web pages' reads use their own pool (at most 2), so they never take
    # these.
    pool_max: int = Field(default=4, ge=1)
    # The writer prepares its INSERTs once per connection (its revision UPDATEs are planned at every run). false:
    # behind a pooler in transaction mode that does not keep prepared statements across transactions (PgBouncer
    # before 1.21, or its max_prepared_statements at 0), every statement is prepared unnamed at each run.
    prepared_statements: bool = True
    # The writer's transactions commit without waiting for their WAL to reach the disk (PostgreSQL's
    # synchronous_commit = off, for its own connections only): a write's wait for the flush was most of its time
    # under load. Nothing is lost to it: a stage commits its Kafka offsets only once the server has flushed every
    # write it made, and when a connection that wrote is gone before that (a crash may drop what it committed),
    # it reads those records again. Off by itself when the server replicates synchronously
    # (synchronous_standby_names) and behind a connection pooler; false: every commit waits for its flush.
    async_commit: bool = True
    # TLS, with libpq's meanings. The default "prefer" is libpq's and asyncpg's own: it keeps the local stack
    # (no TLS) working and encrypts whenever the server offers TLS, but it verifies nothing and silently
    # falls back to plaintext. Production: "verify-full" (or at least "require"); a non-local host with
    # less than "require" is logged as a warning when the sink connects.
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"
    # PEM files: the CA of the server's certificate (require, verify-ca, verify-full), and a client
    # certificate and its key for certificate authentication.
    sslrootcert: Path | None = None
    # Client certificate (PEM) for certificate authentication; checked to exist at start-up; refused with sslmode
    # disable.
    sslcert: Path | None = None
    # That certificate's private key (PEM); needs sslcert.
    sslkey: Path | None = None

    _files_exist = field_validator("sslrootcert", "sslcert", "sslkey")(_existing_file)

    @field_validator("db_schema")
    @classmethod
    def _schema_name(cls, value: str) -> str:
        check_identifier(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PostgresSettings:
        if self.sslmode == "disable":
            _ignored("sslmode disable", {"sslrootcert": self.sslrootcert is not None,
                                         "sslcert": self.sslcert is not None, "sslkey": self.sslkey is not None})
        elif self.sslmode in ("allow", "prefer"):
            _ignored(f"sslmode {self.sslmode}", {"sslrootcert": self.sslrootcert is not None},
                     " (it verifies no certificate: use verify-full)")
        if self.sslkey is not None and self.sslcert is None:
            raise ValueError("sslkey needs sslcert (the client certificate it belongs to)")
        if self.pool_min > self.pool_max:
            if "pool_max" in self.model_fields_set:
                raise ValueError(f"pool_min ({self.pool_min}) is above pool_max ({self.pool_max})")
            self.pool_max = self.pool_min  # a larger minimum alone (the brief's min_connections: 5) raises the default
        return self

    def connect_kwargs(self) -> dict[str, Any]:
        """asyncpg.connect()/create_pool() arguments: address, credentials and TLS. Every connection we open
        (the sink, `tickflow db`, `make run`, the benchmark) is described here, so they all connect alike."""
        kwargs: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password.get_secret_value() or None,
            "database": self.database,
            "ssl": self.sslmode,
        }
        files = {k: str(v) for k, v in (("sslrootcert", self.sslrootcert), ("sslcert", self.sslcert),
                                        ("sslkey", self.sslkey)) if v is not None}
        if files:
            # asyncpg takes certificate files only from a DSN's query (or PG* variables), and then applies them
            # with libpq's rules for the sslmode; the address and credentials stay keyword arguments.
            kwargs["dsn"] = "postgresql://?" + urllib.parse.urlencode(files)
        return kwargs

    def transport_warning(self) -> str | None:
        """Why this connection may travel in clear over a network, or None."""
        if self.sslmode in ("require", "verify-ca", "verify-full") or _is_local(self.host):
            return None
        why = ("is not encrypted" if self.sslmode == "disable"
               else "is not verified and falls back to plaintext without a word")
        return f"postgres.sslmode={self.sslmode} to {self.host}: the connection {why}; use verify-full or require"

    def dsn_for_display(self) -> str:
        """The connection address without the password, for logs and errors."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.database}"


def is_loopback(host: str) -> bool:
    """A bind address only this machine reaches (not 0.0.0.0, ::, a name or an interface address)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class WorkerSettings(_Section):
    # The Faust app id. It names the consumer groups (<app_id>-validate, -write, ...), the internal topics and table
    # changelogs (<app_id>-metrics, ...) and the local data folder: workers with the same id share the work; give
    # side-by-side deployments (and tests) different ones.
    app_id: str = "tickflow"
    # The web server's bind address. 127.0.0.1 by default: only this host reaches it.
    web_host: str = "127.0.0.1"
    # Port of the worker's web server (/health, /metrics, /dashboard, /pipeline/...); the CLI and the Python API
    # reach a worker at advertised_host (or web_host) and this port. One per worker on a host.
    web_port: int = Field(default=6066, ge=1, le=65535)
    # Bearer token for every page but /health, /metrics and the /dashboard page itself (streams/web/auth.py),
    # from TICKFLOW_WORKER__WEB_TOKEN (never pipeline_config.yaml). Empty: those pages answer 403, except to
    # loopback clients of a worker bound to loopback only (the local default, `make run`).
    web_token: SecretStr = SecretStr("")
    # The host other workers use to reach this one (table-routed requests); defaults to web_host.
    advertised_host: str | None = None
    # Where Faust keeps table state; memory:// rebuilds tables from their changelogs at start.
    store: str = "memory://"
    # Seconds between snapshots of the pipeline counters into data_quality_metrics (by the worker owning the metrics
    # table; the Python API's in-process pipeline too, with pipeline.metrics_enabled). Lower: finer history, more
    # rows.
    metrics_flush_seconds: float = Field(default=10.0, gt=0)
    # /health answers 503 ("stuck") when a stage owns partitions with lag but finished no batch (nor found
    # nothing to read) for this long, so an orchestrator restarts the worker.
    stuck_after_seconds: float = Field(default=300.0, gt=0)
    # A stage whose consumer group has had no coordinator for this long gets a new consumer (its records not yet
    # committed are read again); 0: never. After a broker restart the client's coordinator lookup can stay parked
    # for good; a healthy consumer finds the coordinator within seconds of the broker answering.
    consumer_replace_after_seconds: float = Field(default=120.0, ge=0)
    # The batches a stage finishes within this many milliseconds commit their Kafka offsets in one request (with
    # the first batch after it, when the stage idles, or before its partitions move), not one request each: at
    # 1,000 points/s a batch holds a few records and those requests were ~8% of the worker's CPU. A crash reads
    # these batches again (every output is idempotent). 0: each batch commits its own. Exactly-once validation
    # commits inside its transactions, unaffected.
    commit_interval_ms: float = Field(default=100.0, ge=0, le=60_000)
    # Net allocations between two collections of the young generation of Python's cyclic garbage collector
    # (Python's default: 700). A batch's objects live across awaits, so at 700 they were scanned, promoted and
    # scanned again: 7% of the worker's CPU at full drain. Only objects in reference cycles wait longer for it
    # (everything else is freed as its last reference goes). 0: Python's default.
    gc_young_threshold: int = Field(default=50_000, ge=0, le=10_000_000)
    # The worker's log lines: "text" (Faust's format) or "json", one JSON object a line (time in ISO-8601
    # UTC, level, logger, message, exception), for a log collector; redacted either way (streams/logs.py).
    log_format: Literal["text", "json"] = "text"
    # The batch stages this worker runs. Every stage must run in at least one worker of the app. Split them over
    # processes to give each its own event loop and core: e.g. workers with ["validate"] and workers with
    # ["write", "archive"] (as JSON in the environment: TICKFLOW_WORKER__STAGES='["validate"]'); each kind then
    # scales by its own topics' partitions.
    stages: list[Literal["validate", "write", "archive"]] = Field(
        default_factory=lambda: ["validate", "write", "archive"], min_length=1)

    @field_validator("stages")
    @classmethod
    def _distinct_stages(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"stages lists a stage twice: {value}")
        return value

    @field_validator("web_token")
    @classmethod
    def _strong_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token and (len(token) < 16 or token != token.strip()):
            raise ValueError("needs at least 16 characters without surrounding spaces "
                             "(e.g. `openssl rand -hex 32`)")
        return value

    def web_loopback_only(self) -> bool:
        """Whether the web server listens on loopback only (then an empty web_token leaves pages open to
        loopback clients)."""
        return is_loopback(self.web_host)

    def web_headers(self) -> dict[str, str]:
        """Headers a client of a worker's web pages sends (the token, when one is set)."""
        token = self.web_token.get_secret_value()
        return {"Authorization": f"Bearer {token}"} if token else {}


class ValidationSettings(_Section):
    # A raw record larger than this many bytes is rejected (size.too_large) before it is parsed.
    max_message_bytes: int = Field(default=64 * 1024, ge=1)
    # A record whose timestamp (or ingested_at) is more than this many seconds ahead of the validator's clock is
    # rejected (timestamp.future, ingested_at.future). Raise it only for producers whose clocks run ahead.
    future_tolerance_seconds: float = Field(default=5.0, ge=0)
    # ISO-8601 instant: ticks, trades, quotes, news and social records timestamped before it are rejected
    # (timestamp.too_old). The default refuses epoch-0 (unset) timestamps; raise it to refuse older history.
    timestamp_floor: str = "1970-01-02T00:00:00Z"
    # The same for bars and economic observations, whose real history starts long before 1970 (FRED's GDP in
    # 1947, the S&P 500's daily bars in 1927), 1970-01-01 included. The default refuses only year-1 sentinels
    # (an unset date in .NET or Go).
    history_timestamp_floor: str = "1000-01-01T00:00:00Z"
    # Longest symbol accepted, in characters (else symbol.pattern). symbol_pattern alone allows at most 32: a higher
    # value needs a wider pattern too.
    max_symbol_length: int = Field(default=32, ge=1)
    # Tickers, FX and crypto pairs, indices (^GSPC), futures (ES=F), vendor prefixes (CRYPTO:BTC).
    symbol_pattern: str = r"^[A-Za-z0-9^][A-Za-z0-9.\-_=^/:]{0,31}$"

    @field_validator("symbol_pattern")
    @classmethod
    def _a_regular_expression(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"is not a regular expression: {exc}") from None
        return v
    # Longest headline or text accepted, in characters; a longer one is rejected (text.too_long).
    max_text_length: int = Field(default=20_000, ge=1)
    # Run the anomaly detectors (streams/anomalies/detectors.py) after the rules.
    detect_anomalies: bool = True
    # Sources whose anomalous ticks are quarantined to ticks.rejected (rule anomaly.<detector>)
    # instead of being flagged and passed on to ticks.clean.
    quarantine_sources: list[str] = Field(default_factory=list)
    # Circuit breaker, per source: pause that source's raw partitions (clearly logged, shown in /health) when
    # more than this share of its last `circuit_breaker_window` records was rejected, instead of dead-lettering
    # everything after a bad deploy or a provider format change. 1.0 turns it off.
    circuit_breaker_ratio: float = Field(default=0.5, gt=0.0, le=1.0)
    # How many of a source's latest records the breaker judges; it trips only once the window is full.
    circuit_breaker_window: int = Field(default=2000, ge=10)
    # A tripped breaker pauses only its source's raw partitions, for this long, then tries them again.
    circuit_breaker_cooldown_seconds: float = Field(default=60.0, gt=0.0)
    # How often per symbol the detectors' state is saved to its changelog-backed table.
    anomaly_state_flush_seconds: float = Field(default=1.0, ge=0)
    # Raw records per validate batch (per fetch, per producer flush, per offset commit): larger amortises
    # those, and under load each record waits for its batch (README, Performance: tuning knobs).
    batch_size: int = Field(default=2000, ge=1, le=100_000)
    # A validate batch also closes at the number of records its measured cost per record fits in this many
    # milliseconds (never below 100 records), so under load a record waits behind fewer others; 0 (the default):
    # size only. Under load a record mostly waits for the write stage, not its validate batch: 25 ms showed no
    # gain on a 2-core machine (bench/README.md, session 18).
    batch_latency_budget_ms: float = Field(default=0.0, ge=0.0)


class PipelineSettings(_Section):
    """The Python API's own settings (streams/api.py): its in-process pipeline when kafka.enabled is false."""

    # Longest wait for a partial batch before it is written (the batch size is validation.batch_size).
    batch_timeout_seconds: float = Field(default=1.0, gt=0)
    # Points waiting for the sink; ingest_data_point waits while it is full (back-pressure, bounded memory).
    max_queue_size: int = Field(default=10_000, ge=1)
    # Level of the tickflow loggers (streams, producers, sinks) set by the API, printed to stderr while the process
    # has no logging configured of its own; a worker's --loglevel unless it is given -l. None leaves logging alone.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = None
    # Write the in-process pipeline's counters to data_quality_metrics (every worker.metrics_flush_seconds).
    metrics_enabled: bool = True


class SinkSettings(_Section):
    # Most records the write and archive stages take from Kafka per batch: one fetch, one write to PostgreSQL, one
    # offset commit. (The in-process Python API batches by validation.batch_size.) Twice validate's: a write's
    # fixed cost (its statement's bind and round trip, the event loop's turn) is what bounds a drain, and 4,000
    # drained +5% to +15% more rows/s than 2,000 (8,000 no more; bench/README.md, session 26). Below the drain
    # rate a fetch returns what has arrived, so batches, and latency, stay as they were.
    batch_size: int = Field(default=4000, ge=1)
    # First wait after a retriable PostgreSQL error (database down, failover); the wait doubles up to
    # retry_max_seconds (the worker adds 0 to this much jitter) and writes are retried until the database answers,
    # the records waiting in Kafka (or the in-process queue) meanwhile.
    retry_initial_seconds: float = Field(default=0.2, gt=0)
    # Longest wait between those retries, in seconds.
    retry_max_seconds: float = Field(default=10.0, gt=0)
    # Rows of market_data (by timestamp), data_quality_metrics, anomaly_events and dead_letters older than this
    # are deleted, in bounded batches, by the leader every `retention_check_seconds`. 0 keeps everything.
    data_retention_days: float = Field(default=0, ge=0)
    # How often the leader applies data_retention_days (read at start-up).
    retention_check_seconds: float = Field(default=3600, gt=0)
    # Rows per retention DELETE: each batch is its own short statement, so retention holds no long locks; lower it
    # if deletes slow the writes.
    retention_batch_rows: int = Field(default=10_000, ge=100)
    # market_data is range-partitioned by ts (migration 6). The leader creates partitions of this period
    # `partitions_ahead` periods ahead of now, every `partition_check_seconds`; retention drops whole
    # partitions older than data_retention_days (the straddling one is trimmed by the batched DELETE).
    # Migrations run with the defaults: the period applies to the partitions created afterwards.
    partition_period: Literal["day", "week", "month"] = "month"
    # How many periods after the current one have their market_data partition created in advance.
    partitions_ahead: int = Field(default=3, ge=1, le=366)
    # How often the leader creates the missing partitions (read at start-up).
    partition_check_seconds: float = Field(default=3600, gt=0)


class SourceSection(_Section):
    """A provider's section. `key_env`: where its API key comes from, first non-empty wins."""

    key_env: ClassVar[tuple[str, ...]] = ()

    # Provider HTTP (producers/http.py): a bigger body (decompressed bytes count) is refused, not buffered;
    # a Retry-After beyond the cap waits the cap (a broken or hostile value must not park a source for a day).
    max_response_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # Longest wait, in seconds, a provider's Retry-After (429, 503) can impose before the next attempt. Neither cap
    # applies to simulated or replay (no HTTP) nor to yahoo (yfinance makes its own requests).
    max_retry_after_seconds: float = Field(default=300.0, ge=0)

    def api_key(self, env: Mapping[str, str] | None = None) -> SecretStr | None:
        env = os.environ if env is None else env
        for name in self.key_env:
            value = env.get(name, "").strip()
            if value:
                return SecretStr(value)
        return None


class SimulatedSourceSettings(SourceSection):
    # Run the built-in simulated feed (no key, no network); the worker runs it on its leader, the Python API's
    # start_data_collection too. Unset (the default): on while no other source is enabled, so a fresh setup has
    # data and made-up prices never land beside a real provider's; true or false decides.
    enabled: bool | None = None
    # Symbols it makes prices for: each a random walk from a random start between 50 and 500.
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "MSFT", "GOOG", "AMZN", "NVDA", "TSLA", "SPY", "QQQ"])
    # Records generated per second across all symbols (quotes and trades alternately, bursts up to one second's
    # worth).
    rate_per_second: float = Field(default=1000.0, gt=0)
    # Share of deliberately bad records (schema or rule violations) so the dead-letter path shows up.
    invalid_ratio: float = Field(default=0.001, ge=0.0, le=1.0)
    # Random seed: the same seed gives the same prices (item ids still differ between runs).
    seed: int = 7


Function = Literal["intraday", "daily", "daily_adjusted", "weekly", "weekly_adjusted", "monthly", "monthly_adjusted",
                   "global_quote", "news_sentiment"]


IntradayInterval = Literal["1min", "5min", "15min", "30min", "60min"]


# producers/alpha_vantage.py
class AlphaVantageSettings(SourceSection):
    key_env = ('ALPHA_VANTAGE_API_KEY',)

    # Run this source (the worker runs enabled sources on its leader; the Python API's start_data_collection too);
    # enabled without its key, it is skipped with an error logged. `python -m producers NAME` runs it even when
    # false.
    enabled: bool = False
    # Equity symbols; each poll makes one call per symbol and function (mind daily_limit_calls).
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "MSFT"])
    # What to call per symbol: intraday, daily, daily_adjusted, weekly, weekly_adjusted, monthly, monthly_adjusted
    # (bars; weekly and monthly ones at their period's start), global_quote (a tick), news_sentiment (articles).
    # One the key's plan lacks (premium) is dropped with a warning.
    functions: list[Function] = Field(default_factory=lambda: ["global_quote"])
    # FX and crypto, as "EUR/USD" / "BTC/USD" (or "EURUSD"); stored under the joined symbol ("EURUSD").
    fx_pairs: list[str] = Field(default_factory=list)
    # What to call per fx pair: currency_exchange_rate (a tick), fx_intraday, fx_daily, fx_weekly, fx_monthly (bars).
    fx_functions: list[Literal["currency_exchange_rate", "fx_intraday", "fx_daily", "fx_weekly", "fx_monthly"]] = Field(
        default_factory=lambda: ["currency_exchange_rate"])
    # Crypto pairs as "BTC/USD" (coin / market currency), stored as "BTCUSD".
    crypto: list[str] = Field(default_factory=list)
    # What to call per crypto pair: currency_exchange_rate (a tick), digital_currency_daily, digital_currency_weekly,
    # digital_currency_monthly (bars).
    crypto_functions: list[Literal["currency_exchange_rate", "digital_currency_daily", "digital_currency_weekly",
                                   "digital_currency_monthly"]] = Field(
        default_factory=lambda: ["currency_exchange_rate"])
    # 2 symbols x 1 function every 2 h = 24 calls/day: inside the free tier's 25.
    interval_seconds: float = Field(default=7200.0, gt=0)
    # Bar interval of intraday and fx_intraday.
    intraday_interval: IntradayInterval = "5min"
    # compact: the latest 100 points per call; full: the whole series (far larger answers; backfills ask for full
    # anyway).
    outputsize: Literal["compact", "full"] = "compact"
    # Most articles per news_sentiment call (Alpha Vantage's `limit`).
    news_limit: int = Field(default=50, ge=1, le=1000)
    # Time zone of news' naive time_published (UTC fits Alpha Vantage's answers).
    news_time_zone: str = "UTC"
    # Free tier: 5 calls per minute; at most this many calls per rate_limit_per_seconds.
    rate_limit_calls: float = Field(default=5.0, gt=0)
    # The rate limit's period: at most rate_limit_calls requests (retries included) per this many seconds.
    rate_limit_per_seconds: float = Field(default=60.0, gt=0)
    # At least this many seconds between two requests, on top of the rate limit (the brief's rate_limit_delay);
    # 0: the rate limit alone.
    rate_limit_delay: float = Field(default=0.0, ge=0)
    # Most calls per UTC day (free tier: 25). Every attempt is counted before it goes out; the worker and `python -m
    # producers` keep the count on a Kafka topic, so a restart or a new leader continues it. Once spent, polls make
    # no call until 00:00 UTC.
    daily_limit_calls: float = Field(default=25.0, ge=1)
    # The API's root URL; tests and recordings point it at a local server.
    base_url: str = "https://www.alphavantage.co"
    # Longest one HTTP request may take, in seconds, before it fails (a retriable failure).
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    # Attempts per request, the first included (1: no retry); timeouts, connection errors, 429 and 5xx are retried.
    retry_attempts: int = Field(default=3, ge=1)
    # Backoff base, in seconds: the wait before retry n is random in [0, min(30, base x 2^(n-1))], or the server's
    # Retry-After.
    retry_base_delay: float = Field(default=1.0, ge=0)


Endpoint = Literal["quote", "candle", "company_news", "news_sentiment"]


# producers/finnhub.py
class FinnhubSettings(SourceSection):
    key_env = ('FINNHUB_API_KEY',)

    # Run this source (the worker runs enabled sources on its leader; the Python API's start_data_collection too);
    # enabled without its key, it is skipped with an error logged. `python -m producers NAME` runs it even when
    # false.
    enabled: bool = False
    # Stock symbols for the REST endpoints, and the trades subscribed to with `websocket`.
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "MSFT"])
    # Seconds between the starts of two polls (a slow round does not stretch the period); each poll asks for every
    # configured item.
    interval_seconds: float = Field(default=60.0, gt=0)
    # Finnhub free tier: 60 calls/minute.
    rate_limit_calls: float = Field(default=60.0, gt=0)
    # The rate limit's period: at most rate_limit_calls requests (retries included) per this many seconds.
    rate_limit_per_seconds: float = Field(default=60.0, gt=0)
    # At least this many seconds between two requests, on top of the rate limit (the brief's rate_limit_delay);
    # 0: the rate limit alone.
    rate_limit_delay: float = Field(default=0.0, ge=0)
    # The API's root URL; tests and recordings point it at a local server.
    base_url: str = "https://finnhub.io"
    # Where the key goes: "header" (X-Finnhub-Token: in no URL at all) or "query" (?token=); redacted from logs
    # either way.
    token_in: Literal["header", "query"] = "header"
    # REST endpoints polled per symbol: quote (a tick), candle (bars), company_news, news_sentiment. candle and
    # news_sentiment are premium: a 403 for every symbol drops the endpoint, for one symbol that symbol.
    endpoints: list[Endpoint] = Field(default_factory=lambda: ["quote"])
    # A symbol or endpoint refused with 403 (not in the key's plan) is asked again after this many seconds, so a
    # plan upgraded while the worker runs is seen without a restart (one refused call per symbol per period).
    denied_retry_seconds: float = Field(default=21600.0, gt=0)
    # Candles of these are polled every round (/forex/candle, /crypto/candle): "OANDA:EUR_USD", "BINANCE:BTCUSDT".
    forex_symbols: list[str] = Field(default_factory=list)
    # Crypto candles, as "EXCHANGE:PAIR" ("BINANCE:BTCUSDT").
    crypto_symbols: list[str] = Field(default_factory=list)
    # Candle resolution of every candle endpoint: minutes (1 to 60), or D, W, M.
    candle_resolution: Literal["1", "5", "15", "30", "60", "D", "W", "M"] = "D"
    # Each poll asks for the candles of this many past days; bars sent before are left out (the latest is re-sent
    # while it may still be forming).
    candle_lookback_days: int = Field(default=5, ge=1)
    # company_news asks for the articles of this many past days; those of the previous poll are not sent again.
    news_lookback_days: int = Field(default=2, ge=1, le=30)
    # Longest one HTTP request may take, in seconds, before it fails (a retriable failure).
    request_timeout_seconds: float = Field(default=20.0, gt=0)
    # Attempts per request, the first included (1: no retry); timeouts, connection errors, 429 and 5xx are retried.
    retry_attempts: int = Field(default=5, ge=1)
    # Backoff base, in seconds: the wait before retry n is random in [0, min(30, base x 2^(n-1))], or the server's
    # Retry-After.
    retry_base_delay: float = Field(default=0.5, ge=0)
    # Websocket trades (FinnhubTradeStream).
    websocket: bool = False
    # Websocket address (the key is added as ?token=).
    ws_url: str = "wss://ws.finnhub.io"
    # Most trades per batch; a batch goes out at this many or ws_flush_seconds after its first trade.
    ws_batch_size: int = Field(default=500, ge=1)
    # Longest a received trade waits for its batch, in seconds.
    ws_flush_seconds: float = Field(default=0.5, gt=0)
    # Websocket ping interval, in seconds (aiohttp's heartbeat): a missing pong closes the connection, the only
    # guard against a half-open socket.
    ws_heartbeat_seconds: float = Field(default=30.0, gt=0)
    # First wait before reconnecting the websocket; it doubles per failure in a row up to reconnect_max_seconds,
    # times a jitter in [0.5, 1), and starts again once a connection delivers a message.
    reconnect_base_seconds: float = Field(default=1.0, gt=0)
    # Longest wait between reconnects, in seconds.
    reconnect_max_seconds: float = Field(default=60.0, gt=0)


# producers/fred.py
class FredSettings(SourceSection):
    key_env = ('FRED_API_KEY',)

    # Run this source (the worker runs enabled sources on its leader; the Python API's start_data_collection too);
    # enabled without its key, it is skipped with an error logged. `python -m producers NAME` runs it even when
    # false.
    enabled: bool = False
    # FRED series ids (GDP, UNRATE, ...): one observations request each per poll.
    series: list[str] = Field(default_factory=lambda: ["GDP", "UNRATE", "FEDFUNDS", "CPIAUCSL"])
    # Seconds between the starts of two polls. With series_metadata, a series whose last_updated has not moved since
    # its last fetch is not asked for its observations again.
    interval_seconds: float = Field(default=3600.0, gt=0)
    # Each poll asks for the observations dated within this many past days; only new or changed rows are sent.
    lookback_days: int = Field(default=730, ge=1)
    # Ask for every real-time period, so each revision is a row of its own (item_id its realtime_start); false:
    # today's vintage only.
    vintages: bool = True
    # Real-time period (vintages): narrows the one `vintages` asks for, or sets one without it.
    realtime_start: date | None = None
    # End of that period (None: FRED's default, or 9999-12-31 with vintages); not before realtime_start.
    realtime_end: date | None = None
    # FRED's output_type: 1 by real-time period (default), 2 all vintages, 3 new and revised only,
    # 4 initial release only.
    output_type: Literal[1, 2, 3, 4] = 1
    # /fred/series once per series per poll: units, frequency, seasonal adjustment, last_updated, title.
    series_metadata: bool = True

    @model_validator(mode="after")
    def _realtime_order(self) -> FredSettings:
        if self.realtime_start and self.realtime_end and self.realtime_start > self.realtime_end:
            raise ValueError("fred realtime_start is after realtime_end")
        return self
    # FRED: 120 requests per minute per key.
    rate_limit_calls: float = Field(default=120.0, gt=0)
    # The rate limit's period: at most rate_limit_calls requests (retries included) per this many seconds.
    rate_limit_per_seconds: float = Field(default=60.0, gt=0)
    # At least this many seconds between two requests, on top of the rate limit (the brief's rate_limit_delay);
    # 0: the rate limit alone.
    rate_limit_delay: float = Field(default=0.0, ge=0)
    # The API's root URL; tests and recordings point it at a local server.
    base_url: str = "https://api.stlouisfed.org"
    # Longest one HTTP request may take, in seconds, before it fails (a retriable failure).
    request_timeout_seconds: float = Field(default=20.0, gt=0)
    # Attempts per request, the first included (1: no retry); timeouts, connection errors, 429 and 5xx are retried.
    retry_attempts: int = Field(default=5, ge=1)
    # Backoff base, in seconds: the wait before retry n is random in [0, min(30, base x 2^(n-1))], or the server's
    # Retry-After.
    retry_base_delay: float = Field(default=0.5, ge=0)


class DatatableQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    code: str  # e.g. "WIKI/PRICES" or "ZACKS/FC"
    params: dict[str, str] = Field(default_factory=dict)  # row filters, e.g. {"ticker": "AAPL"}
    # Columns that, beside the ticker and the date, tell the table's rows apart (their values join the item id,
    # so no row replaces another). None: dimension and per_type where the table has them (Sharadar, Zacks).
    key_columns: list[str] | None = None


class DatasetQuery(BaseModel):
    """One Nasdaq Data Link time series and how to ask for it. A transformed or collapsed series is stored as
    economic values saying so (metadata, item_id, interval), never as plain prices."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    code: str  # "DB/CODE", e.g. "WIKI/AAPL"
    transform: Literal["none", "diff", "rdiff", "rdiff_from", "cumul", "normalize"] = "none"
    collapse: Literal["none", "daily", "weekly", "monthly", "quarterly", "annual"] = "none"
    format: Literal["json", "csv"] = "json"


# producers/nasdaq_data_link.py
class NasdaqDataLinkSettings(SourceSection):
    key_env = ('NASDAQ_DATA_LINK_API_KEY', 'QUANDL_API_KEY')

    # Run this source (the worker runs enabled sources on its leader; the Python API's start_data_collection too);
    # enabled without its key, it is skipped with an error logged. `python -m producers NAME` runs it even when
    # false.
    enabled: bool = False
    # Datasets as "DB/CODE" ("FRED/GDP", "CHRIS/CME_CL1"), asked for as JSON, untransformed, over lookback_days each
    # poll.
    datasets: list[str] = Field(default_factory=list)
    # Datatables, each {code, params} (params: row filters, e.g. {"ticker": "AAPL"}), read page by page each poll.
    datatables: list[DatatableQuery] = Field(default_factory=list)
    # Datasets with a transform, collapse or CSV format (plain `datasets` are JSON, untransformed).
    dataset_queries: list[DatasetQuery] = Field(default_factory=list)
    # Seconds between the starts of two polls (a slow round does not stretch the period); each poll asks for every
    # configured item.
    interval_seconds: float = Field(default=3600.0, gt=0)
    # Authenticated users: 300 calls per 10 s and 2,000 per 10 min; stay well below.
    rate_limit_calls: float = Field(default=60.0, gt=0)
    # The rate limit's period: at most rate_limit_calls requests (retries included) per this many seconds.
    rate_limit_per_seconds: float = Field(default=60.0, gt=0)
    # At least this many seconds between two requests, on top of the rate limit (the brief's rate_limit_delay);
    # 0: the rate limit alone.
    rate_limit_delay: float = Field(default=0.0, ge=0)
    # The API's root URL; tests and recordings point it at a local server.
    base_url: str = "https://data.nasdaq.com"
    # Each poll asks for the dataset rows dated within this many past days (datatables are not limited by date).
    lookback_days: int = Field(default=30, ge=1)
    # Most pages read per datatable and poll; when more remain a warning is logged and the next poll continues from
    # the page where this one stopped (after the last page, the next poll starts again from the first).
    max_pages: int = Field(default=20, ge=1)
    # Longest one HTTP request may take, in seconds, before it fails (a retriable failure).
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    # Attempts per request, the first included (1: no retry); timeouts, connection errors, 429 and 5xx are retried.
    retry_attempts: int = Field(default=5, ge=1)
    # Backoff base, in seconds: the wait before retry n is random in [0, min(30, base x 2^(n-1))], or the server's
    # Retry-After.
    retry_base_delay: float = Field(default=0.5, ge=0)


# producers/finnhub.py (NewsSentimentSource)
class NewsSettings(SourceSection):
    key_env = ('FINNHUB_API_KEY',)

    # Run this source (the worker runs enabled sources on its leader; the Python API's start_data_collection too);
    # enabled without its key, it is skipped with an error logged. `python -m producers NAME` runs it even when
    # false.
    enabled: bool = False
    # Symbols whose Finnhub company news (and news sentiment) each poll reads.
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "MSFT"])
    # Seconds between the starts of two polls (a slow round does not stretch the period); each poll asks for every
    # configured item.
    interval_seconds: float = Field(default=900.0, gt=0)
    # Shares Finnhub's free tier (60 calls/minute) with the finnhub source: keep the two under it together.
    rate_limit_calls: float = Field(default=30.0, gt=0)
    # The rate limit's period: at most rate_limit_calls requests (retries included) per this many seconds.
    rate_limit_per_seconds: float = Field(default=60.0, gt=0)
    # At least this many seconds between two requests, on top of the rate limit (the brief's rate_limit_delay);
    # 0: the rate limit alone.
    rate_limit_delay: float = Field(default=0.0, ge=0)
    # The API's root URL; tests and recordings point it at a local server.
    base_url: str = "https://finnhub.io"
    # company_news asks for the articles of this many past days; articles already sent are skipped.
    lookback_days: int = Field(default=2, ge=1, le=30)
    # news-sentiment is a premium Finnhub endpoint (403 on the free tier); then only articles are written, and the
    # endpoint is asked again after denied_retry_seconds (a plan upgraded while the worker runs).
    sentiment: bool = True
    # Seconds before news-sentiment, refused with 403, is asked again.
    denied_retry_seconds: float = Field(default=21600.0, gt=0)
    # Longest one HTTP request may take, in seconds, before it fails (a retriable failure).
    request_timeout_seconds: float = Field(default=20.0, gt=0)
    # Attempts per request, the first included (1: no retry); timeouts, connection errors, 429 and 5xx are retried.
    retry_attempts: int = Field(default=5, ge=1)
    # Backoff base, in seconds: the wait before retry n is random in [0, min(30, base x 2^(n-1))], or the server's
    # Retry-After.
    retry_base_delay: float = Field(default=0.5, ge=0)


# producers/social.py
class SocialSettings(SourceSection):
    key_env = ('TWITTER_BEARER_TOKEN',)

    # Run this source (the worker runs enabled sources on its leader; the Python API's start_data_collection too);
    # enabled without its key, it is skipped with an error logged. `python -m producers NAME` runs it even when
    # false.
    enabled: bool = False
    # Symbols searched as cashtags ($AAPL plus query_suffix); a post is kept for a symbol only when its text carries
    # the cashtag.
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "TSLA"])
    # Seconds between the starts of two polls (a slow round does not stretch the period); each poll asks for every
    # configured item.
    interval_seconds: float = Field(default=300.0, gt=0)
    # X API v2 Basic tier: 60 recent-search requests per 15 minutes.
    rate_limit_calls: float = Field(default=60.0, gt=0)
    # The rate limit's period: at most rate_limit_calls requests (retries included) per this many seconds.
    rate_limit_per_seconds: float = Field(default=900.0, gt=0)
    # At least this many seconds between two requests, on top of the rate limit (the brief's rate_limit_delay);
    # 0: the rate limit alone.
    rate_limit_delay: float = Field(default=0.0, ge=0)
    # The API's root URL; tests and recordings point it at a local server.
    base_url: str = "https://api.twitter.com"
    # Appended to every search query (X search operators); the default leaves out retweets.
    query_suffix: str = "-is:retweet"
    # Posts per page (X's max_results, 10 to 100).
    max_results: int = Field(default=100, ge=10, le=100)
    # Most pages per symbol and poll; the rest of a result set is read on the next poll.
    max_pages: int = Field(default=5, ge=1)
    # The first poll reads back this far (every page); later polls read what is newer than the newest seen.
    lookback_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)
    # Longest one HTTP request may take, in seconds, before it fails (a retriable failure).
    request_timeout_seconds: float = Field(default=20.0, gt=0)
    # Attempts per request, the first included (1: no retry); timeouts, connection errors, 429 and 5xx are retried.
    retry_attempts: int = Field(default=5, ge=1)
    # Backoff base, in seconds: the wait before retry n is random in [0, min(30, base x 2^(n-1))], or the server's
    # Retry-After.
    retry_base_delay: float = Field(default=0.5, ge=0)


# producers/stocktwits.py
class StocktwitsSettings(SourceSection):
    # Public streams need no key; an OAuth access token (optional) raises the rate limit.
    key_env = ('STOCKTWITS_ACCESS_TOKEN',)

    # Run this source (no key needed): the worker runs enabled sources on its leader, the Python API's
    # start_data_collection too. `python -m producers NAME` runs it even when false.
    enabled: bool = False
    # Symbol streams read each poll (/api/2/streams/symbol/{SYMBOL}.json).
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "TSLA"])
    # User streams, by user id or username (/api/2/streams/user/{user}.json): one item per symbol a message lists.
    users: list[str] = Field(default_factory=list)
    # Seconds between the starts of two polls (a slow round does not stretch the period); each poll asks for every
    # configured item.
    interval_seconds: float = Field(default=120.0, gt=0)
    # StockTwits allows 200 unauthenticated requests per hour (per IP).
    rate_limit_calls: float = Field(default=200.0, gt=0)
    # The rate limit's period: at most rate_limit_calls requests (retries included) per this many seconds.
    rate_limit_per_seconds: float = Field(default=3600.0, gt=0)
    # At least this many seconds between two requests, on top of the rate limit (the brief's rate_limit_delay);
    # 0: the rate limit alone.
    rate_limit_delay: float = Field(default=0.0, ge=0)
    # The API's root URL; tests and recordings point it at a local server.
    base_url: str = "https://api.stocktwits.com"
    # Most pages (30 messages each) per stream and poll; the rest is read on the next poll.
    max_pages: int = Field(default=5, ge=1)
    # Longest one HTTP request may take, in seconds, before it fails (a retriable failure).
    request_timeout_seconds: float = Field(default=20.0, gt=0)
    # Attempts per request, the first included (1: no retry); timeouts, connection errors, 429 and 5xx are retried.
    retry_attempts: int = Field(default=5, ge=1)
    # Backoff base, in seconds: the wait before retry n is random in [0, min(30, base x 2^(n-1))], or the server's
    # Retry-After.
    retry_base_delay: float = Field(default=0.5, ge=0)


Interval = Literal["1m", "2m", "5m", "15m", "30m", "60m", "90m", "1h", "1d", "5d", "1wk", "1mo", "3mo"]


# producers/yahoo.py
class YahooSettings(SourceSection):

    # Run this source (no key needed): the worker runs enabled sources on its leader, the Python API's
    # start_data_collection too. `python -m producers NAME` runs it even when false.
    enabled: bool = False
    # Yahoo symbols (AAPL, ^GSPC, EURUSD=X, BTC-USD, SAP.DE), polled, or streamed with `stream`.
    symbols: list[str] = Field(default_factory=lambda: ["AAPL", "MSFT"])
    # Seconds between the starts of two polls (not used with `stream`).
    interval_seconds: float = Field(default=60.0, gt=0)
    # Bar interval of each poll's chart request (its bars, and the tick with tick_from chart).
    live_interval: Interval = "1m"
    # Period of that chart request (yfinance's period: 1d, 5d, ...): how far back each poll's bars reach.
    live_range: str = "1d"
    # Also send the chart's new bars, not only the tick (the latest bar is re-sent while it may still be forming).
    bars: bool = True
    # Ask charts (live and backfill) for pre- and post-market bars too; intraday bars carry their session (pre,
    # regular, post) in metadata["session"]. False: regular-session bars only.
    prepost: bool = False
    # Where the live tick comes from: "chart" (the chart's meta, no extra call) or "quote" (yfinance's
    # Ticker.info: v7 quote + quoteSummary; bid/ask, market state, pre/post-market prices).
    tick_from: Literal["chart", "quote"] = "chart"
    # Live prices through yfinance's streaming feed (yfinance.AsyncWebSocket) instead of polling.
    stream: bool = False
    # Address of Yahoo's streaming feed (with `stream`).
    ws_url: str = "wss://streamer.finance.yahoo.com/?version=2"
    # Most ticks per batch from the stream; a batch goes out when full or after ws_flush_seconds.
    ws_batch_size: int = Field(default=500, ge=1)
    # Longest wait, in seconds, to fill a stream batch.
    ws_flush_seconds: float = Field(default=0.5, gt=0)
    # First wait before reopening a dropped stream; it doubles per failure in a row up to reconnect_max_seconds,
    # times a jitter in [0.5, 1).
    reconnect_base_seconds: float = Field(default=1.0, gt=0)
    # Longest wait between reopening attempts, in seconds.
    reconnect_max_seconds: float = Field(default=60.0, gt=0)
    # yfinance is blocking: its calls run in a thread pool of this many threads, never on the event loop.
    max_workers: int = Field(default=4, ge=1, le=32)
    # yfinance's timezone/cookie cache folder; None: yfinance's default.
    cache_dir: str | None = None
    # Yahoo publishes no limit; bursts get 429s. One call per second is well clear of them.
    rate_limit_calls: float = Field(default=60.0, gt=0)
    # The rate limit's period: at most rate_limit_calls requests (retries included) per this many seconds.
    rate_limit_per_seconds: float = Field(default=60.0, gt=0)
    # At least this many seconds between two requests, on top of the rate limit (the brief's rate_limit_delay);
    # 0: the rate limit alone.
    rate_limit_delay: float = Field(default=0.0, ge=0)
    # A Yahoo host: yfinance's own URLs. Any other URL (a mirror, a local recording server): every request
    # yfinance makes (chart, quote, cookie, crumb) goes there instead, same path and query.
    base_url: str = "https://query1.finance.yahoo.com"
    # Timeout of each yfinance chart (history) request, in seconds; with tick_from quote, also the longest one
    # Ticker.info attempt may take (its requests together: yfinance gives it no timeout of its own).
    request_timeout_seconds: float = Field(default=20.0, gt=0)
    # Attempts per yfinance call, the first included (1: no retry); 429s, timeouts, connection errors and 5xx are
    # retried, Yahoo's explained refusals (unknown symbol) are not.
    retry_attempts: int = Field(default=5, ge=1)
    # Backoff base, in seconds: the wait before retry n is random in [0, min(30, base x 2^(n-1))].
    retry_base_delay: float = Field(default=0.5, ge=0)


# producers/replay.py
class ReplaySettings(SourceSection):

    # Replay the files once per leadership (the worker on its leader, or the Python API); a restart replays them
    # again (rows dedupe by key).
    enabled: bool = False
    # CSV files, folders (their *.csv) or glob patterns, replayed merged into one timeline.
    files: list[str] = Field(default_factory=list)
    # One symbol for every file (leave unset for a folder of per-symbol files); `symbols` maps a file's name or
    # stem to its symbol; otherwise the file's Ticker row, else its stem.
    symbol: str | None = None
    # File name or stem -> symbol; wins over `symbol`.
    symbols: dict[str, str] = Field(default_factory=dict)
    # Replay speed: 1 real time (the gaps between rows), 10 ten times faster, 0 as fast as possible.
    speed: float = Field(default=0.0, ge=0.0)
    # Bar interval label of the rows (1m, 1d, ...; their item_id too); None: inferred from the smallest gap between
    # rows.
    interval: str | None = None
    # Time zone of the files' naive date-times (Alpha Vantage intraday CSV: US/Eastern).
    time_zone: str = "America/New_York"
    # Most rows per batch sent to raw.replay.
    batch_size: int = Field(default=500, ge=1)
    # Caps one wait between rows, in seconds (nights and weekends at speed 1); None: no cap.
    max_wait_seconds: float | None = Field(default=None, gt=0)
    # Rows held at once (about 850 bytes a bar): files are replayed in groups of up to this many rows (at speed 0
    # files that share no symbol may go in different groups; paced, files that do not overlap in time), and rows
    # beyond it are not kept from the first reading of the files (their files are read again in their turn); 0:
    # only the files that must be together are held together, and every file is read twice.
    held_rows: int = Field(default=200_000, ge=0)


class SourcesSettings(_Section):
    """One section per provider (producers/<name>.py is its code). API keys are never settings: each
    section's `key_env` names the environment variables its key is read from, and redaction and the
    API's key table are derived from those declarations."""

    simulated: SimulatedSourceSettings = Field(default_factory=SimulatedSourceSettings)
    yahoo: YahooSettings = Field(default_factory=YahooSettings)
    alpha_vantage: AlphaVantageSettings = Field(default_factory=AlphaVantageSettings)
    finnhub: FinnhubSettings = Field(default_factory=FinnhubSettings)
    fred: FredSettings = Field(default_factory=FredSettings)
    nasdaq_data_link: NasdaqDataLinkSettings = Field(default_factory=NasdaqDataLinkSettings)
    news: NewsSettings = Field(default_factory=NewsSettings)
    social: SocialSettings = Field(default_factory=SocialSettings)
    stocktwits: StocktwitsSettings = Field(default_factory=StocktwitsSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)


class PriceBand(BaseModel):
    """One FINRA 11892 band: moves of `max_move` (a fraction) or more from the reference are erroneous."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_price: float | None = Field(default=None, gt=0)  # inclusive upper bound of the reference; None = no bound
    max_move: float = Field(gt=0)


def _finra_bands() -> list[PriceBand]:
    # FINRA Rule 11892 (clearly erroneous executions), numerical guidelines for regular trading hours.
    return [PriceBand(max_price=25.0, max_move=0.10), PriceBand(max_price=50.0, max_move=0.05),
            PriceBand(max_price=None, max_move=0.03)]


class BarCheckSettings(BaseModel):
    """The bar price checks' thresholds for one family of intervals (intraday, or daily and longer)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Return outliers: |log return - median| / max(1.4826 MAD, floor) of the last `return_window` clean returns.
    return_window: int = Field(default=60, ge=8)
    # Clean returns the window needs before a bar's return is judged; also the ranges the wick check needs.
    min_returns: int = Field(default=20, ge=5)
    # A bar is suspect when |r - median| >= this x the scale; the next bar then confirms or clears it.
    outlier_sigma: float = Field(default=6.0, gt=0)
    # The log-return scale is never below this (flat or quantised series would flag any move).
    scale_floor: float = Field(default=0.002, gt=0)
    # A suspect bar is an error when the next bar comes back: |log(next / level before)| <= revert_fraction x
    # the suspect's own return (and not an outlier from that level); otherwise the level persisted: a real move.
    revert_fraction: float = Field(default=0.5, gt=0, lt=1)
    # ... and only when the suspect bar is detached from its neighbours: at least detach_share of its move was
    # made in the gap before its open, or undone in the gap before the next bar's open (a bad bar is printed
    # apart from the trading around it; a real crash trades its way down and back, 2011-08-08, 2018-02-05).
    # Bars without opens are judged on the close alone.
    detach_share: float = Field(default=0.5, ge=0, le=1)
    # Decimal shifts: the close within decimal_tolerance (in log10) of 10^k x the level, k != 0.
    decimal_tolerance: float = Field(default=0.15, gt=0, lt=0.5)
    # OHLC: a wick beyond max/min(open, close) of more than range_multiplier x the median log range.
    range_window: int = Field(default=60, ge=8)
    # A wick longer than this x the median log range (high/low) of the recent clean bars that traded (a flat bar's
    # range of 0 does not count; with fewer than min_returns of them no wick is judged) is flagged.
    range_multiplier: float = Field(default=15.0, gt=1)
    # That median log range is never taken below this (flat series).
    range_floor: float = Field(default=0.002, gt=0)
    # Relative slack for rounded prices when checking that open and close lie within [low, high].
    ohlc_tolerance: float = Field(default=1e-6, ge=0)
    # Bar volumes: above median + volume_mad_multiplier MAD AND at least this many times the median.
    volume_min_ratio: float = Field(default=20.0, ge=1)
    # ... and at least this many times the window's 90th percentile: a stream whose own volumes spread widely
    # (minute bars, whose opening and closing minutes trade 10-50x the midday median; an illiquid stock) needs
    # a larger multiple of its median. 0: off.
    volume_tail_multiple: float = Field(default=5.0, ge=0)
    # ... and at least this many times the bar before it: a news day's volume stays high for days after it (AAPL
    # 1997-08-06 at 31x its median, 08-07 at 28x), the minutes after an opening auction stay high for minutes; a
    # wrong volume is one bar. 0: off.
    volume_jump_ratio: float = Field(default=2.0, ge=0)
    # ... and above the median x exp(this x the normal-consistent MAD of the window's log volumes): volumes that
    # spread over orders of magnitude (a penny stock's no-trade and busy days) need a far larger multiple; a
    # liquid stock's (log MAD ~0.3) stays under volume_min_ratio. 0: off.
    volume_log_mad_multiplier: float = Field(default=4.0, ge=0)


def _intraday_bar_checks() -> BarCheckSettings:
    return BarCheckSettings(scale_floor=0.0002, range_floor=0.0002, outlier_sigma=8.0, range_multiplier=25.0,
                            volume_min_ratio=30.0)


def _real_split_ratios() -> list[float]:
    # 4:3 (x0.75) and 5:2 (x0.4) are real too but rare, and a real -25% or -60% open is likelier: add them here
    # or in settings for a market that has them.
    forward = [(n, 1) for n in (2, 3, 4, 5, 6, 7, 8, 10, 15, 20, 25, 30, 50)] + [(3, 2), (5, 4)]
    reverse = [(1, n) for n in (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 100)]
    return [old / new for new, old in forward + reverse]  # new:old shares -> the price's factor


class AnomalySettings(BaseModel):
    """Every detector's parameters; the defaults are the literature's (sources in each detector)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Brownlees & Gallo (2006); TAQMNGR defaults k=80, delta=0.10. gamma=0.04 $ there, on ~$40 stocks ~ 10 bps.
    bg_window: int = Field(default=80, ge=4)
    # Share of the window trimmed from each end before its mean and sd (TAQMNGR's delta).
    bg_trim: float = Field(default=0.10, ge=0.0, lt=0.5)
    # A trade is an outlier when |price - trimmed mean| >= this x the trimmed sd + gamma.
    bg_sd_multiplier: float = Field(default=3.0, gt=0)
    # gamma, in basis points of the trimmed mean: keeps a quiet, flat window (sd ~ 0) from flagging a one-tick move.
    bg_gamma_bps: float = Field(default=10.0, ge=0)
    # Clean trades the window needs before any trade is judged (warm-up).
    bg_min_window: int = Field(default=20, ge=2)
    # A causal stand-in for the paper's centred window: an outlier must also be at least the threshold away from the
    # previous trade, so a run of moves (a trend, a burst) is not flagged.
    bg_require_jump: bool = True
    # BNHLS (2009) Q4: 10 mean absolute deviations from the median of 50 mids.
    midquote_window: int = Field(default=50, ge=4)
    # A quote is an outlier when its mid is more than this many deviation units from the window's median.
    midquote_mad_multiplier: float = Field(default=10.0, gt=0)
    # Mids the window needs before any quote is judged (warm-up).
    midquote_min_window: int = Field(default=10, ge=2)
    # The deviation unit is never below this many basis points of the median: sticky quotes (deviation 0) would
    # otherwise flag any change.
    midquote_mad_floor_bps: float = Field(default=0.5, ge=0)
    # The day's deviation unit is estimated from one clean mid per this many seconds of the UTC day (300: one per 5
    # minutes).
    midquote_day_sample_seconds: float = Field(default=300.0, gt=0)
    # BNHLS (2009) Q3: spread > 50 x the day's median spread.
    spread_multiplier: float = Field(default=50.0, gt=1)
    # Quotes of the UTC day counted before any spread is judged.
    spread_min_observations: int = Field(default=20, ge=1)
    # The day's median spread comes from a log histogram with this bucket ratio (1.02: exact to about 1%); closer to
    # 1 is more precise and keeps more state.
    spread_bucket_ratio: float = Field(default=1.02, gt=1)
    # BNHLS (2009) T4: trade above ask + spread or below bid - spread.
    t4_max_quote_age_seconds: float = Field(default=300.0, gt=0)
    # FINRA Rule 11892 bands by reference price.
    erroneous_bands: list[PriceBand] = Field(default_factory=_finra_bands, min_length=1)
    # Volume spikes: rolling median + 10 median absolute deviations.
    volume_window: int = Field(default=100, ge=4)
    # A volume is a spike above the window's median + this many MADs (a bar also needs
    # bar_daily/bar_intraday.volume_min_ratio x the median).
    volume_mad_multiplier: float = Field(default=10.0, gt=0)
    # Scale of the MAD: 1.4826 makes it normal-consistent (R's mad()), 1 uses the raw median absolute deviation.
    volume_mad_scale: float = Field(default=1.4826, gt=0)
    # Volumes a sub-stream's window needs before any is judged (warm-up).
    volume_min_window: int = Field(default=20, ge=2)
    # A trade's size is a spike only above this x the window's 90th percentile too (0: off). Real trade sizes are
    # discrete and heavy-tailed: E-mini S&P futures' median trade is 1 lot, so the median and its MAD are 1 and 0,
    # and "median + 10 MAD" flagged every trade of 2 lots and more, a quarter of 500,000 real ticks (0.84% with
    # this; bar volumes have bar_daily/bar_intraday.volume_tail_multiple).
    volume_trade_tail_multiple: float = Field(default=5.0, ge=0)
    # Stale feeds.
    stale_run: int = Field(default=20, ge=2)
    # A live feed is stale after a silence longer than this x its expected interval (judged only while its market is
    # open).
    stale_interval_multiplier: float = Field(default=3.0, gt=1)
    # The expected interval between a symbol's records, in seconds; None: the median of the last
    # stale_interval_window observed intervals (none judged before 5 are seen).
    stale_expected_interval_seconds: float | None = Field(default=None, gt=0)
    # Observed intervals kept for that median.
    stale_interval_window: int = Field(default=50, ge=5)
    # And never a silence shorter than this, in seconds (0: no floor). A tick feed's median interval is the gap
    # inside its bursts (microseconds), so 3x it called every pause between two bursts stale: the simulated feed of
    # `make run` raised ~17 stale_feed events a minute. The silence check runs every 5 s anyway.
    stale_min_silence_seconds: float = Field(default=5.0, ge=0)
    # Bar gaps: extra closures on top of the exchange calendar (or the only ones when there is none).
    gap_holidays: list[date] = Field(default_factory=list)
    # Split-like jumps at the open: new price / old price of real splits (1/2 for 2:1, 2/3 for 3:2, 4/5 for 5:4,
    # 1/20 for 20:1) and reverse splits (10 for 1:10).
    split_ratios: list[float] = Field(default_factory=_real_split_ratios)
    # Open / previous close within this relative tolerance of a split ratio (|ratio / nominal - 1|) is a split
    # suspect.
    split_tolerance: float = Field(default=0.02, gt=0, lt=0.2)
    # On bars the band widens with the stream's own overnight gaps (open / previous close): to
    # split_gap_multiplier x their median of the last 20, at most split_tolerance_max (a 3:1 split on a day
    # that gapped 2% must still match; a real -52% day, AAPL 2000-09-29, must not).
    split_gap_multiplier: float = Field(default=5.0, ge=0)
    # Upper bound of that widened tolerance.
    split_tolerance_max: float = Field(default=0.04, gt=0, lt=0.2)
    # After a silence this long (a trading suspension: longer than the longest holiday closures, Shanghai's, Taipei's
    # and Jakarta's 10-12 days between sessions), a bar's jump up near a 10^k ratio (1:10, 1:100 reverse) is
    # matched within decimal_tolerance: the price moved while the stock was suspended (a penny stock back from two
    # months' suspension x119: a 1:100 reverse split). The next bar still decides, as for any 10^k jump: back at
    # the old level, a decimal shift; at the new one, a split.
    split_halt_seconds: float = Field(default=20 * 86400.0, gt=0)
    # A daily bar's split-like jump of 2:1 to 1:2 on a volume over this multiple of the stream's median volume (of its
    # last 20 bars) times the split's own share factor is news, not a split: a split multiplies the day's share
    # count by the factor (x1.25 for 5:4), an earnings gap by 4-15 (META 2018-07-26 x0.80 and NFLX 2022-01-21
    # x0.79 were taken for 5:4 splits). 0: off.
    split_news_volume: float = Field(default=2.5, ge=0)
    # Shared: a silence this long is a session break (overnight, weekend), not a gap in intraday bars.
    session_break_seconds: float = Field(default=4 * 3600.0, gt=0)
    # This many consecutive flagged values that agree are a level shift, not errors: the Brownlees-Gallo, mid-quote,
    # FINRA band and decimal-shift detectors re-anchor on them instead of flagging every later value.
    level_shift_run: int = Field(default=5, ge=2)
    # Sub-streams (trade, quote, bar:1m, ...) whose state a detector keeps per symbol and source; beyond it the
    # earliest added is dropped. Bounds memory and state size.
    max_streams: int = Field(default=8, ge=1)
    # Bars: thresholds per interval family (intraday vs daily/weekly/monthly).
    bar_daily: BarCheckSettings = Field(default_factory=BarCheckSettings)
    bar_intraday: BarCheckSettings = Field(default_factory=_intraday_bar_checks)
    # A price outside (0, max_price] or not finite never enters any detector's state (issue 15); .inf: no bound.
    max_price: float = Field(default=1e12, gt=0, allow_inf_nan=True)
    # Exchange calendars (exchange_calendars MIC codes, or "24/5", "24/7"): symbol -> calendar; other symbols
    # by their form (.DE XETR, .L XLON, =X and EURUSD 24/5, BTC-USD / BTCUSDT / BINANCE:... 24/7, ^N225 XTKS, ...),
    # else default_exchange. None: weekdays only.
    exchanges: dict[str, str] = Field(default_factory=dict)
    # Calendar of the symbols none of the rules above place (XNYS: NYSE sessions and holidays); None: no calendar
    # (daily gaps count weekdays, staleness is judged at any hour).
    default_exchange: str | None = "XNYS"
    # A feed is live (stale_feed may judge its silence) when its records arrive within this of their event time.
    stale_live_lag_seconds: float = Field(default=900.0, gt=0)


def environment_secrets(env: Mapping[str, str] | None = None) -> list[SecretStr]:
    """Every provider key present in the environment, from the sections' `key_env` declarations."""
    found = []
    for field in SourcesSettings.model_fields.values():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, SourceSection) and section.key_env:
            key = section.model_construct().api_key(env)
            if key is not None:
                found.append(key)
    return found


def key_env_by_source() -> dict[str, tuple[str, ...]]:
    """Provider name -> the environment variables its key is read from (the API's key table, the docs)."""
    out = {}
    for name, field in SourcesSettings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, SourceSection) and section.key_env:
            out[name] = section.key_env
    return out
