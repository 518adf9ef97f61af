"""A real worker's web surface with a token: data pages refuse without it, the probes' and Prometheus' pages
stay open, Faust's /table and /router pages are gone, and /pipeline/data reads on its own small read-only
pool (counted in PostgreSQL's pg_stat_activity), never showing the token in the worker's log."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from streams import MarketDataPoint
from streams.config import PostgresSettings
from tests.integration.conftest import ensure_topics_for, wait_until

TOKEN = "FAKE-SECRET-it-web-token-5f2c9a71d04e"


def get(port: int, path: str, token: str | None = None) -> tuple[int, str, Any]:
    """(status, content type, body: JSON when it is JSON, else text)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, ctype, raw = resp.status, resp.headers.get("Content-Type", ""), resp.read()
    except urllib.error.HTTPError as exc:
        status, ctype, raw = exc.code, exc.headers.get("Content-Type", ""), exc.read()
    except OSError:
        return 0, "", None
    return status, ctype, json.loads(raw) if "json" in ctype else raw.decode(errors="replace")


async def test_token_guards_everything_but_health_metrics_and_the_dashboard_page(iso, workers, producer, pg) -> None:
    await ensure_topics_for(iso)
    now = datetime.now(UTC)
    for i in range(12):
        p = MarketDataPoint(symbol="AUTH", timestamp=now - timedelta(seconds=30 - i), price=100 + i,
                            source="simulated", item_id=f"auth-{i}")
        await producer.send(iso.raw_topic(), p.to_json(), key=b"AUTH")
    await producer.flush()
    w = workers(TICKFLOW_WORKER__WEB_TOKEN=TOKEN)

    await wait_until(lambda: get(w.port, "/health")[0] == 200 or not w.alive(), 120, "the worker's /health 200")
    assert w.alive(), w.log_text()[-3000:]

    async def landed() -> bool:
        try:
            return await pg.fetchval(f"SELECT count(*) FROM {iso.schema}.market_data") == 12
        except Exception:
            return False

    await wait_until(landed, 90, "12 rows in PostgreSQL")

    # Open: the probes' page, Prometheus' page, the dashboard's HTML.
    status, _, health = get(w.port, "/health")
    assert status == 200 and health["status"] == "ok"
    status, ctype, text = get(w.port, "/metrics")
    assert status == 200 and "text/plain" in ctype and "tickflow_" in text
    status, ctype, html = get(w.port, "/dashboard")
    assert status == 200 and "text/html" in ctype and "token-input" in html

    # Guarded: no token or a wrong one -> 401; the right one -> the data.
    for path in ("/pipeline/metrics", "/pipeline/data/AUTH?limit=5", "/table/", "/router/", "/"):
        for token in (None, "FAKE-SECRET-wrong-token-000000000"):
            status, _, body = get(w.port, path, token)
            assert status == 401 and "error" in body, (path, token, status, body)
            assert "AUTH" not in json.dumps(body)
    # The cluster table takes this worker's counts every 0.5 s: the rows can be in PostgreSQL before they are.
    def counted() -> bool:
        body = get(w.port, "/pipeline/metrics", TOKEN)[2]
        return isinstance(body, dict) and body.get("written_points") == 12

    await wait_until(counted, 30, "12 written points in /pipeline/metrics")
    status, _, m = get(w.port, "/pipeline/metrics", TOKEN)
    assert status == 200 and m["written_points"] == 12
    status, _, data = get(w.port, "/pipeline/data/AUTH?limit=5", TOKEN)
    assert status == 200 and len(data) == 5
    assert [r["item_id"] for r in data] == ["auth-11", "auth-10", "auth-9", "auth-8", "auth-7"]
    status, _, data = get(w.port, "/pipeline/data/AUTH?limit=100000", TOKEN)
    assert status == 200 and len(data) == 12  # clamped to 500, and there are 12

    # Faust's own pages are not there at all (with the token: 404, not a table listing).
    for path in ("/table/", "/router/"):
        assert get(w.port, path, TOKEN)[0] == 404, path

    # /pipeline/data used its own read-only pool of at most 2 connections, named after this worker.
    for _ in range(6):
        assert get(w.port, "/pipeline/data/AUTH?limit=3", TOKEN)[0] == 200
    rows = await pg.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1",
                          f"tickflow-web it-{iso.tag}")
    assert 1 <= len(rows) <= 2

    assert w.alive()
    assert TOKEN not in w.log_text()


async def test_without_a_token_a_worker_on_all_interfaces_refuses_data_pages(iso, workers) -> None:
    await ensure_topics_for(iso)
    w = workers("open", TICKFLOW_WORKER__WEB_HOST="0.0.0.0", TICKFLOW_WORKER__ADVERTISED_HOST="127.0.0.1")
    await wait_until(lambda: get(w.port, "/health")[0] == 200 or not w.alive(), 120, "the worker's /health 200")
    assert w.alive(), w.log_text()[-3000:]
    assert get(w.port, "/metrics")[0] == 200
    status, _, body = get(w.port, "/pipeline/metrics")
    assert status == 403 and "TICKFLOW_WORKER__WEB_TOKEN" in body["error"]
    assert get(w.port, "/pipeline/data/AUTH")[0] == 403
    assert "TICKFLOW_WORKER__WEB_TOKEN" in w.log_text()  # the warning at start


async def test_the_read_pool_is_read_only_small_and_cut_off(iso, pg) -> None:
    from streams.stages.db import ReadPool

    await pg.execute(f"CREATE SCHEMA IF NOT EXISTS {iso.schema}")
    settings = PostgresSettings(host=iso.pg["host"], port=iso.pg["port"], user=iso.pg["user"],
                                database=iso.pg["database"], password=iso.pg["password"] or "", db_schema=iso.schema)
    reader = ReadPool(settings, statement_timeout_ms=300, application_name=f"tickflow-web-test {iso.tag}")
    try:
        pool = await reader._pool()
        assert pool.get_max_size() == 2
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await pool.execute(f"CREATE TABLE {iso.schema}.should_not_exist (x int)")
        with pytest.raises(asyncpg.QueryCanceledError):
            await pool.fetchval("SELECT pg_sleep(3)")  # the statement timeout, not the 3 s
        assert await pg.fetchval("SELECT to_regclass($1)", f"{iso.schema}.should_not_exist") is None
    finally:
        await reader.stop()
