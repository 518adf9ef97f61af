"""A half-open Finnhub websocket: the server accepts, sends one trade, then goes silent — it neither answers
pings nor sends a close frame, as a peer behind a dead NAT entry or a hung proxy does. TCP stays up, so
nothing but the stream's own heartbeat can notice; without it the stream would wait forever (and the
worker's /health would still say "running"). The reconnect backoff goes through the injected `sleep`, so no
test time is spent waiting; the only wall-clock bound is a generous overall timeout."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from producers.finnhub import FinnhubTradeStream
from streams.config import FinnhubSettings
from tests.unit.producers.conftest import Serve

KEY = "fk_halfopen_test_key_0123456789"


def trade(symbol: str, price: float, t: int) -> str:
    return json.dumps({"type": "trade", "data": [{"s": symbol, "p": price, "t": t, "v": 1}]})


class HalfOpenServer:
    """Connection 1: one trade, then silence (pings read but never answered, no close frame) until the test
    ends. Connection 2 onwards: one trade and an ordinary, answering connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.pings_ignored = 0
        self.subscriptions: list[list[str]] = []
        self.done = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        n = self.connections
        self.connections += 1
        silent = n == 0
        ws = web.WebSocketResponse(autoping=not silent, heartbeat=None)
        await ws.prepare(request)
        subs: list[str] = []
        self.subscriptions.append(subs)
        subscribed = asyncio.Event()
        reader = asyncio.create_task(self._read(ws, subs, subscribed))
        await subscribed.wait()
        await ws.send_str(trade("AAPL", 190.0 + n, 1717171200000 + n))
        if silent:
            await self.done.wait()  # never a close frame: the connection just stops talking
            reader.cancel()
        else:
            await reader
        return ws

    async def _read(self, ws: web.WebSocketResponse, subs: list[str], subscribed: asyncio.Event) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.PING:
                self.pings_ignored += 1  # autoping is off on the silent connection: no pong goes back
            elif msg.type == aiohttp.WSMsgType.TEXT:
                doc = json.loads(msg.data)
                if doc.get("type") == "subscribe":
                    subs.append(doc["symbol"])
                    subscribed.set()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.handle)
        return app


async def _run(
    serve: Serve, **settings: Any
) -> tuple[HalfOpenServer, FinnhubTradeStream, list[list[Any]], list[float]]:
    server = HalfOpenServer()
    base = await serve(server.app())
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:  # the injected backoff sleep: recorded, not waited
        waits.append(seconds)

    stream = FinnhubTradeStream(
        FinnhubSettings(
            symbols=["AAPL"],
            ws_url=base.replace("http", "ws") + "/",
            ws_batch_size=1,
            reconnect_base_seconds=1.0,
            reconnect_max_seconds=2.0,
            **settings,
        ),
        api_key=SecretStr(KEY),
        sleep=no_wait,
    )
    batches: list[list[Any]] = []
    try:
        async with aiohttp.ClientSession() as session:
            gen = stream.fetch(session)
            try:
                async with asyncio.timeout(20):  # generous: the heartbeat below is a fraction of a second
                    while len(batches) < 2:
                        batches.append(await anext(gen))
            finally:
                await gen.aclose()
    finally:
        server.done.set()
    return server, stream, batches, waits


async def test_silent_connection_is_dropped_by_the_heartbeat_and_the_stream_reconnects(serve: Serve) -> None:
    server, stream, batches, waits = await _run(serve, ws_heartbeat_seconds=0.2)
    assert [[p.price for p in b] for b in batches] == [[190.0], [191.0]]  # the second from the new connection
    assert stream.connects == 2 and server.connections == 2
    assert server.subscriptions == [["AAPL"], ["AAPL"]]  # resubscribed after the reconnect
    assert server.pings_ignored >= 1  # the client did ping, and the silence is what dropped it
    assert len(waits) == 1 and 0.5 <= waits[0] < 1.0  # one reconnect, after the shortest backoff
