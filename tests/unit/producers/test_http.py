"""producers/http.py against local aiohttp servers: retries (fake sleep, no clock), Retry-After caps, redacted
aiohttp errors, response size caps (gzip bombs too), redirects that keep credentials at their origin."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import ssl
import subprocess
import traceback
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from producers.http import RateLimiter, get_json, http_options, redirect_target, retry_after_seconds
from producers.registry import BUILDERS
from streams.errors import SourceError
from tests.unit.producers.conftest import Serve

KEY = "fake_SECRET_key_0123456789abcdef"


class FakeSleep:
    """Records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def everything(exc: BaseException) -> str:
    """Every text an exception can end up in: str, repr, args and the formatted traceback (with context)."""
    return "\n".join([str(exc), repr(exc), repr(exc.args), "".join(traceback.format_exception(exc))])


class Scripted:
    """Answers each request with the next scripted response (the last one repeats); records requests."""

    def __init__(self, *responses: web.Response | tuple[int, dict[str, str]]) -> None:
        self.responses = list(responses)
        self.seen: list[web.Request] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        item = self.responses[min(len(self.seen), len(self.responses)) - 1]
        if isinstance(item, tuple):
            status, headers = item
            return web.Response(status=status, headers=headers, text="{}")
        return item

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app


def ok(doc: str = '{"ok": true}') -> web.Response:
    return web.Response(text=doc, content_type="application/json")


# ---------------------------------------------------------------------------------------------- retries


async def test_5xx_retried_with_capped_jittered_backoff_then_succeeds(serve: Serve) -> None:
    fake = Scripted((503, {}), (500, {}), (502, {}), ok())
    base = await serve(fake.app())
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        doc = await get_json(session, f"{base}/x", attempts=5, base_delay=1.0, max_delay=3.0, sleep=sleep)
    assert doc == {"ok": True} and len(fake.seen) == 4
    assert len(sleep.waits) == 3
    for wait, ceiling in zip(sleep.waits, [1.0, 2.0, 3.0], strict=True):  # base * 2**n, capped at max_delay
        assert 0.0 <= wait <= ceiling


async def test_gives_up_retriable_after_attempts(serve: Serve) -> None:
    fake = Scripted((500, {}))
    base = await serve(fake.app())
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="gave up after 3 attempts: HTTP 500") as err:
            await get_json(session, f"{base}/x", attempts=3, sleep=sleep)
    assert err.value.retriable is True and len(fake.seen) == 3 and len(sleep.waits) == 2


async def test_4xx_not_retried(serve: Serve) -> None:
    fake = Scripted(web.Response(status=404, text=f"no such thing, apikey={KEY}"))
    base = await serve(fake.app())
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="HTTP 404") as err:
            await get_json(session, f"{base}/x", params={"apikey": KEY}, secrets=[KEY], sleep=sleep)
    assert err.value.retriable is False and len(fake.seen) == 1 and sleep.waits == []
    assert KEY not in everything(err.value)


async def test_connection_refused_is_retried(serve: Serve) -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    await runner.cleanup()  # nothing listens there any more
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="gave up after 2 attempts") as err:
            await get_json(session, f"http://127.0.0.1:{port}/x", params={"token": KEY}, attempts=2, sleep=sleep)
    assert err.value.retriable is True and len(sleep.waits) == 1 and KEY not in everything(err.value)


@pytest.mark.parametrize(("header", "expected"), [("86400", 300.0), ("7", 7.0)])
async def test_retry_after_is_honoured_up_to_the_cap(serve: Serve, header: str, expected: float) -> None:
    fake = Scripted((429, {"Retry-After": header}), ok())
    base = await serve(fake.app())
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        assert await get_json(session, f"{base}/x", max_retry_after=300.0, sleep=sleep) == {"ok": True}
    assert sleep.waits == [expected]


@pytest.mark.parametrize("header", ["1e309", "-5", "nan", "inf", "soon"])
async def test_nonsense_retry_after_falls_back_to_backoff(serve: Serve, header: str) -> None:
    fake = Scripted((429, {"Retry-After": header}), ok())
    base = await serve(fake.app())
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        assert await get_json(session, f"{base}/x", base_delay=0.5, sleep=sleep) == {"ok": True}
    [wait] = sleep.waits
    assert 0.0 <= wait <= 0.5  # the first backoff, not 1e309 / an error


def test_retry_after_seconds() -> None:
    assert retry_after_seconds("120", 1.0, 300.0) == 120.0
    assert retry_after_seconds("86400", 1.0, 300.0) == 300.0
    assert retry_after_seconds("1e309", 1.0, 300.0) == 1.0
    assert retry_after_seconds("-1", 1.0) == 1.0
    assert retry_after_seconds(None, 2.0) == 2.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", 1.0, 300.0) == 0.0  # a date in the past


# ---------------------------------------------------------------------------------------------- redaction


async def test_too_many_redirects_never_shows_the_key(serve: Serve) -> None:
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/loop?apikey={KEY}&n={len(request.query)}")

    app = web.Application()
    app.router.add_get("/loop", loop)
    base = await serve(app)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="too many redirects") as err:
            await get_json(session, f"{base}/loop", params={"apikey": KEY}, secrets=[KEY], sleep=FakeSleep())
    assert err.value.retriable is False
    assert KEY not in everything(err.value)


async def test_aiohttp_response_error_is_a_redacted_source_error(serve: Serve) -> None:
    """A header over aiohttp's line limit: ClientResponseError, whose text carries the whole request URL."""
    async def big(request: web.Request) -> web.Response:
        return web.Response(text="{}", headers={"X-Big": "x" * 20_000})

    app = web.Application()
    app.router.add_get("/big", big)
    base = await serve(app)
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        for secrets in ([KEY], []):  # the request's secret, or only the apikey= pattern
            with pytest.raises(SourceError) as err:
                await get_json(session, f"{base}/big", params={"apikey": KEY}, secrets=secrets, sleep=sleep)
            assert err.value.retriable is False and "ClientResponseError" in str(err.value)
            assert KEY not in everything(err.value)
    assert sleep.waits == []


# ---------------------------------------------------------------------------------------------- size caps


@pytest.mark.parametrize("chunked", [False, True])
async def test_oversized_body_is_refused(serve: Serve, chunked: bool) -> None:
    body = b"[" + b"1," * 1_000_000 + b"1]"  # ~2 MB of valid JSON

    async def large(request: web.Request) -> web.StreamResponse:
        if not chunked:
            return web.Response(body=body, content_type="application/json")
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 65536):
            try:
                await resp.write(body[i:i + 65536])
            except ConnectionResetError:
                break  # the client stopped reading, as it should
        return resp

    app = web.Application()
    app.router.add_get("/large", large)
    base = await serve(app)
    sleep = FakeSleep()
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="cap") as err:
            await get_json(session, f"{base}/large", max_bytes=1024 * 1024, sleep=sleep)
        assert err.value.retriable is False and sleep.waits == []
        assert len(await get_json(session, f"{base}/large", max_bytes=4 * 1024 * 1024)) == 1_000_001


async def test_gzip_bomb_is_refused_by_its_decompressed_size(serve: Serve) -> None:
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]")
    assert len(bomb) < 200_000
    small = gzip.compress(b'{"fine": [1, 2, 3]}')

    async def handle(request: web.Request) -> web.Response:
        payload = bomb if request.path == "/bomb" else small
        return web.Response(body=payload, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    app = web.Application()
    app.router.add_get("/bomb", handle)
    app.router.add_get("/small", handle)
    base = await serve(app)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(SourceError, match="decompressed") as err:
            await get_json(session, f"{base}/bomb", max_bytes=1024 * 1024, sleep=FakeSleep())
        assert err.value.retriable is False
        assert await get_json(session, f"{base}/small", max_bytes=1024 * 1024) == {"fine": [1, 2, 3]}


# ---------------------------------------------------------------------------------------------- redirects


class Recorder:
    """The other origin: records what reached it."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((dict(request.headers), dict(request.query)))
        return ok()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        return app


async def test_cross_origin_redirect_drops_credentials(serve: Serve) -> None:
    other = Recorder()
    other_base = await serve(other.app())
    home = Recorder()

    async def start(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{other_base}/data?symbol=AAPL&token={KEY}&apikey=x1")

    async def same(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/here?symbol=MSFT")

    app = home.app()
    app.router.add_get("/start", start)
    app.router.add_get("/same", same)
    base = await serve(app)
    headers = {"X-Finnhub-Token": KEY, "Authorization": f"Bearer {KEY}", "X-Plain": "keep", "Accept": "a/b"}
    async with aiohttp.ClientSession() as session:
        assert await get_json(session, f"{base}/start", params={"token": KEY}, headers=headers,
                              secrets=[KEY]) == {"ok": True}
        assert await get_json(session, f"{base}/same", headers=headers, secrets=[KEY]) == {"ok": True}
    [(got_headers, got_query)] = other.seen
    assert got_query == {"symbol": "AAPL"}
    assert "X-Finnhub-Token" not in got_headers and "Authorization" not in got_headers
    assert got_headers["X-Plain"] == "keep" and KEY not in repr(got_headers)
    [(same_headers, same_query)] = home.seen  # a same-origin redirect keeps the credentials
    assert same_headers["X-Finnhub-Token"] == KEY and same_query == {"symbol": "MSFT"}


@pytest.fixture
async def https_serve(tmp_path: Path) -> AsyncIterator[tuple[Any, ssl.SSLContext]]:
    """`await start(app)` serves `app` over TLS (a throwaway self-signed certificate for 127.0.0.1)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx).start()
        runners.append(runner)
        return f"https://127.0.0.1:{runner.addresses[0][1]}"

    yield start, client_ctx
    for runner in runners:
        await runner.cleanup()


async def test_https_to_http_redirect_is_refused(serve: Serve, https_serve: tuple[Any, ssl.SSLContext]) -> None:
    start, client_ctx = https_serve
    plain = Recorder()
    plain_base = await serve(plain.app())

    async def down(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{plain_base}/data")

    async def fine(request: web.Request) -> web.Response:
        return ok()

    app = web.Application()
    app.router.add_get("/down", down)
    app.router.add_get("/fine", fine)
    base = await start(app)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx)) as session:
        assert await get_json(session, f"{base}/fine", headers={"X-Finnhub-Token": KEY}) == {"ok": True}
        with pytest.raises(SourceError, match="plain http") as err:
            await get_json(session, f"{base}/down", headers={"X-Finnhub-Token": KEY}, params={"token": KEY},
                           secrets=[KEY], sleep=FakeSleep())
    assert err.value.retriable is False and plain.seen == []
    assert KEY not in everything(err.value)


def test_redirect_target_rules() -> None:
    here = URL(f"https://api.example.com/v1/x?token={KEY}")
    target, headers = redirect_target(here, "/v2/x", {"X-Finnhub-Token": KEY}, [KEY])
    assert target == URL("https://api.example.com/v2/x") and headers == {"X-Finnhub-Token": KEY}
    target, headers = redirect_target(here, f"https://cdn.example.com/y?api_key={KEY}&q=1",
                                      {"X-Finnhub-Token": KEY, "X-Api-Key": "other", "User-Agent": "t"}, [KEY])
    assert target == URL("https://cdn.example.com/y?q=1") and headers == {"User-Agent": "t"}
    for location in ("http://api.example.com/v1/x", "ftp://api.example.com/f", "file:///etc/passwd"):
        with pytest.raises(SourceError):
            redirect_target(here, location, {}, [KEY])


# ---------------------------------------------------------------------------------------------- rate limit


async def test_rate_limiter_allows_a_burst_of_calls_then_none() -> None:
    limiter = RateLimiter(3, 60.0)
    for _ in range(3):
        await limiter.acquire()  # a burst of `calls` does not wait (a hang here fails by pytest-timeout)
    assert not limiter.has_capacity()
    slow = RateLimiter(0.5, 60.0)  # under one call per period: one call per 120 s
    await slow.acquire()
    assert not slow.has_capacity()
    assert (slow.limiter.max_rate, slow.limiter.time_period) == (1, 120.0)


async def test_a_rate_limit_delay_spaces_the_calls_of_a_burst() -> None:
    """The brief's rate_limit_delay on top of the rate limit: the second call of a burst the bucket would let
    through waits out the delay, and both limits stay in force."""

    from streams.config import AlphaVantageSettings

    limiter = RateLimiter.of(AlphaVantageSettings(rate_limit_delay=0.3))
    assert (limiter.calls, limiter.per_seconds, limiter.min_interval) == (5.0, 60.0, 0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await limiter.acquire()
    assert limiter.limiter.has_capacity() and not limiter.has_capacity()
    await limiter.acquire()
    assert loop.time() - start >= 0.25
    assert RateLimiter.of(AlphaVantageSettings()).spacing is None
    with pytest.raises(ValueError, match="min_interval"):
        RateLimiter(1, 1, -1)


# Registry entries that make no request through producers/http.py: simulated and replay make none, yahoo's
# requests are yfinance's own. Every other provider, a new one included, must pass its section through
# http_options.
NOT_OUR_HTTP = {"simulated", "replay", "yahoo"}
HTTP_PROVIDERS = [name for name in BUILDERS if name not in NOT_OUR_HTTP]


def test_http_provider_list_comes_from_the_registry() -> None:
    assert NOT_OUR_HTTP <= set(BUILDERS)  # a renamed or removed provider must not linger here
    assert {"finnhub", "news", "stocktwits"} <= set(HTTP_PROVIDERS)


@pytest.mark.parametrize("section", HTTP_PROVIDERS)
def test_http_options_carry_every_request_setting_of_a_section(section: str) -> None:
    """Every HTTP provider passes its section through http_options: each keyword get_json takes for a setting is
    there, with the section's value, not get_json's default."""
    from streams.config import SourcesSettings

    cls = type(getattr(SourcesSettings(), section))
    s = cls(retry_attempts=7, retry_base_delay=0.25, request_timeout_seconds=3.5, max_response_bytes=4096,
            max_retry_after_seconds=9.0)
    opts = http_options(s)
    assert opts == {"attempts": 7, "base_delay": 0.25, "timeout": 3.5, "max_bytes": 4096, "max_retry_after": 9.0}
    assert set(opts) <= set(inspect.signature(get_json).parameters)
