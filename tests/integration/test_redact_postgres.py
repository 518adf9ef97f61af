"""Secrets stay out of the errors and logs of a failed PostgreSQL connection, against the real local
PostgreSQL (moved from tests/unit/streams/test_redact.py: without the stack every case was only a refused
connection, which is not what the test says it checks)."""

from __future__ import annotations

import asyncpg
import pytest

from streams.errors import SinkError
from tests.unit.streams.test_redact import (  # noqa: F401  (fixtures used by name)
    MARK,
    PG_PASSWORD,
    Captured,
    closed_port,
    logger,
    registry,
    worker_logging,
)


async def test_postgres_connection_failures(iso, worker_logging: Captured) -> None:  # noqa: F811
    """The real local PostgreSQL (a role that does not exist, TLS it does not offer) and a closed port."""
    from sinks.postgres import PostgresTickWriter

    real = worker_logging.settings.postgres.model_copy(update={"host": iso.pg["host"], "port": iso.pg["port"]})
    cases = {
        "unknown role": real,
        "closed port": real.model_copy(update={"port": closed_port()}),
        "tls required": real.model_copy(update={"sslmode": "require"}),
    }
    errors = {}
    for name, settings in cases.items():
        with pytest.raises(SinkError) as err:
            await PostgresTickWriter(settings).start()
        assert MARK not in str(err.value) and MARK not in repr(err.value)
        errors[name] = str(err.value)
        logger.error("sink (%s) cannot start", name, exc_info=err.value)
    # The server answered: the role and the TLS cases are refused by PostgreSQL, not by a closed port.
    assert "InvalidAuthorizationSpecification" in errors["unknown role"], errors
    assert "rejected SSL upgrade" in errors["tls required"], errors
    # A DSN with the password in it, straight to the driver: the driver's error and our log line stay clean.
    dsn = f"postgresql://nobody_tickflow_test:{PG_PASSWORD}@127.0.0.1:{closed_port()}/tickflow"
    with pytest.raises(OSError) as oserr:
        await asyncpg.connect(dsn, timeout=5)
    logger.exception("connect %s failed", dsn, exc_info=oserr.value)
    worker_logging.assert_clean("sink (unknown role) cannot start", "sink (closed port) cannot start",
                                "sink (tls required) cannot start", "nobody_tickflow_test:***@127.0.0.1")
