"""classify: only errors about the data are SinkRefused (dead-lettered); every other failure is
SinkUnavailable (paused and retried, never dead-lettered). Issue 15 item 2."""

from __future__ import annotations

import asyncpg
import pytest

from sinks.postgres import classify
from streams.errors import SinkError, SinkRefused, SinkUnavailable

# (asyncpg exception class, what it means) -> SinkRefused: the rows are bad.
DATA_ERRORS = [
    asyncpg.NumericValueOutOfRangeError,       # 22003
    asyncpg.InvalidTextRepresentationError,    # 22P02
    asyncpg.StringDataRightTruncationError,    # 22001
    asyncpg.CharacterNotInRepertoireError,     # 22021 (a NUL byte in text)
    asyncpg.UntranslatableCharacterError,      # 22P05 (\u0000 in jsonb)
    asyncpg.DatetimeFieldOverflowError,        # 22008
    asyncpg.NotNullViolationError,             # 23502
    asyncpg.UniqueViolationError,              # 23505
    asyncpg.CheckViolationError,               # 23514
    asyncpg.ProgramLimitExceededError,         # 54000 (index row too large)
    asyncpg.StatementTooComplexError,          # 54001
]
# -> SinkUnavailable: the database, not the data.
OUTAGES = [
    asyncpg.ReadOnlySQLTransactionError,       # 25006 read-only after a failover
    asyncpg.InsufficientPrivilegeError,        # 42501 permission denied
    asyncpg.UndefinedTableError,               # 42P01 missing table
    asyncpg.UndefinedColumnError,              # 42703 schema behind the code
    asyncpg.InvalidPasswordError,              # 28P01 bad password
    asyncpg.InvalidAuthorizationSpecificationError,  # 28000
    asyncpg.LockNotAvailableError,             # 55P03 lock timeout
    asyncpg.ObjectInUseError,                  # 55006
    asyncpg.InvalidCatalogNameError,           # 3D000 missing database
    asyncpg.InvalidSchemaNameError,            # 3F000 missing schema
    asyncpg.InFailedSQLTransactionError,       # 25P02
    asyncpg.CardinalityViolationError,         # 21000
    asyncpg.FeatureNotSupportedError,          # 0A000
    asyncpg.InternalServerError,               # XX000
    asyncpg.ConnectionDoesNotExistError,       # 08003
    asyncpg.TooManyConnectionsError,           # 53300
    asyncpg.DiskFullError,                     # 53100
    asyncpg.AdminShutdownError,                # 57P01
    asyncpg.QueryCanceledError,                # 57014 statement timeout
    asyncpg.DeadlockDetectedError,             # 40P01
    asyncpg.SerializationError,                # 40001
]


def _pg(cls: type[asyncpg.PostgresError]) -> asyncpg.PostgresError:
    exc = cls("boom")
    assert exc.sqlstate == cls.sqlstate  # the class carries the SQLSTATE the server would send
    return exc


@pytest.mark.parametrize("cls", DATA_ERRORS, ids=lambda c: f"{c.sqlstate}-{c.__name__}")
def test_data_errors_are_refused(cls: type[asyncpg.PostgresError]) -> None:
    err = classify(_pg(cls), "write")
    assert isinstance(err, SinkRefused) and not err.retriable
    assert cls.sqlstate in str(err)


@pytest.mark.parametrize("cls", OUTAGES, ids=lambda c: f"{c.sqlstate}-{c.__name__}")
def test_everything_else_is_unavailable(cls: type[asyncpg.PostgresError]) -> None:
    err = classify(_pg(cls), "write")
    assert isinstance(err, SinkUnavailable) and err.retriable
    assert isinstance(err.__cause__, cls)


def test_the_data_classes_are_exactly_22_23_54() -> None:
    """Every SQLSTATE asyncpg knows: refused iff its class is 22, 23 or 54."""
    seen = 0
    for cls in asyncpg.PostgresError.__subclasses__() + [
            c for base in asyncpg.PostgresError.__subclasses__() for c in base.__subclasses__()]:
        state = getattr(cls, "sqlstate", None)
        if not state:
            continue
        seen += 1
        assert classify(cls("x"), "w").retriable == (state[:2] not in ("22", "23", "54")), state
    assert seen > 100


@pytest.mark.parametrize("exc", [
    TypeError("must be real number, not str"),                     # asyncpg encoding a float column
    UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    OverflowError("int too big to convert"),
    asyncpg.exceptions._base.DataError("invalid input for query argument $1"),  # client-side codec
], ids=lambda e: type(e).__name__)
def test_driver_encoding_errors_are_refused(exc: Exception) -> None:
    assert not classify(exc, "write").retriable


@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(), TimeoutError(), OSError("network unreachable"),
    asyncpg.InterfaceError("cannot perform operation: connection is closed"),
    RuntimeError("something unexpected"),
], ids=lambda e: type(e).__name__)
def test_transport_and_unknown_errors_are_unavailable(exc: Exception) -> None:
    assert classify(exc, "write").retriable


def test_a_sink_error_passes_through_and_callers_decide_by_retriable() -> None:
    refused = SinkRefused("x")
    assert classify(refused, "w") is refused
    # siblings: catching one never catches the other; the parent and `retriable` are the contract
    assert not issubclass(SinkRefused, SinkUnavailable) and not issubclass(SinkUnavailable, SinkRefused)
    assert issubclass(SinkRefused, SinkError) and issubclass(SinkUnavailable, SinkError)


def test_message_names_the_sqlstate_and_hides_passwords() -> None:
    exc = asyncpg.InvalidPasswordError('password authentication failed: postgresql://u:hunter2@db/x')
    err = classify(exc, "connect")
    assert "28P01" in str(err) and "hunter2" not in str(err)


def test_a_partition_constraint_violation_is_retried_not_dead_lettered() -> None:
    """A row written through market_data always has a partition (DEFAULT takes any ts): "violates partition
    constraint" only means a partition was attached while the statement ran (it routed the row to DEFAULT by
    the old partition list). A retry plans afresh and lands the row, so it is no reason to dead-letter it."""
    raced = asyncpg.CheckViolationError('new row for relation "market_data_default" violates partition constraint')
    assert classify(raced, "write market_data").retriable
    own_check = asyncpg.CheckViolationError('new row for relation "t" violates check constraint "t_price"')
    assert not classify(own_check, "write market_data").retriable


def test_a_pool_that_cannot_reconnect_logs_one_line_per_retry(caplog: pytest.LogCaptureFixture) -> None:
    """asyncpg logs a traceback at every retry (1-60 s apart) while the database is away."""
    import logging
    import sys

    from sinks.postgres import _quiet_pool_outages

    _quiet_pool_outages()
    _quiet_pool_outages()  # once is enough: no second filter
    log = logging.getLogger("asyncpg.pool")
    assert len(log.filters) == 1
    caplog.set_level(logging.WARNING, logger="asyncpg.pool")
    for exc in (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 15432)"), ValueError("a bug")):
        try:
            raise exc
        except Exception:
            log.warning("Failed to restore the pool connection floor; retrying", exc_info=sys.exc_info())
    refused, bug = caplog.records
    assert refused.getMessage().startswith("PostgreSQL unavailable: the pool could not reconnect (ConnectionRefused")
    assert refused.exc_info is None and "Traceback" not in caplog.text.split("\n")[0]
    assert bug.exc_info is not None  # anything else keeps its traceback


@pytest.mark.parametrize("cls, state", [(asyncpg.InvalidPasswordError, "28P01"),
                                        (asyncpg.InvalidCatalogNameError, "3D000")])
def test_a_classified_error_keeps_the_servers_sqlstate(cls: type[Exception], state: str) -> None:
    """`raise classify(...) from None` drops the driver's exception: the code a command needs to say which setting
    to fix (the password, the database's name) travels on the SinkError itself."""
    assert classify(cls("x"), "connect").sqlstate == state
    assert classify(OSError("refused"), "connect").sqlstate is None


def test_a_server_error_without_a_sqlstate_is_retried_not_dead_lettered() -> None:
    """Not provably the data's fault: the rows must wait for a retry, never go to the dead-letter topic."""
    exc = asyncpg.exceptions.UnknownPostgresError("the server answered without a SQLSTATE")
    assert getattr(exc, "sqlstate", None) is None
    err = classify(exc, "write market_data")
    assert isinstance(err, SinkUnavailable) and err.retriable
