"""The websocket reconnect loop (tenacity) with a fake sleep: capped exponential waits with jitter, reset once
a connection delivers a message; no clock involved."""

from __future__ import annotations

import json
import random

import aiohttp
from aiohttp import web
from pydantic import SecretStr

from producers.finnhub import FinnhubSettings, FinnhubTradeStream
from tests.unit.producers.conftest import Serve

KEY = "fk_SECRET_finnhub_reconnect_42"


async def test_reconnect_waits_grow_then_reset_after_a_message(serve: Serve) -> None:
    # Connections 0-2 refused, 3 delivers a trade and closes, 4-5 refused, 6 delivers a trade.
    connections = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        n = connections
        connections += 1
        if n not in (3, 6):
            return web.Response(status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the subscription
        await ws.send_str(json.dumps({"type": "trade", "data": [{"s": "AAPL", "p": 1.0 + n, "t": 1717171200000,
                                                                 "v": 1}]}))
        if n == 3:
            await ws.close()
        else:
            await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/", handle)
    base = await serve(app)
    waits: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waits.append(seconds)

    s = FinnhubSettings(symbols=["AAPL"], ws_url=base.replace("http", "ws") + "/", ws_batch_size=1,
                        reconnect_base_seconds=1.0, reconnect_max_seconds=3.0)
    stream = FinnhubTradeStream(s, api_key=SecretStr(KEY), rng=random.Random(3), sleep=fake_sleep)
    async with aiohttp.ClientSession() as session:
        gen = stream.fetch(session)
        first = await anext(gen)
        second = await anext(gen)
        await gen.aclose()
    assert [p.price for p in first + second] == [4.0, 7.0] and connections == 7
    ceilings = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]  # 1, 2, 4 capped at 3; reset by the message: 1, 2, 3
    assert len(waits) == len(ceilings)
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling * 0.5 <= wait < ceiling
