"""The idle bound on upstream reads (aiohttp's ``sock_read``), measured from the last bytes.

Bytes that keep coming hold the bound off (however long the trickle lasts), and a
stall is cut ``idle`` seconds after the last bytes, not later: the timer, armed at
the start, re-arms itself for the last bytes' deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import aclosing
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fakes.openai_upstream import direct_provider

from omniroute.errors import UpstreamTimeout
from omniroute.providers.base import Timeouts, UpstreamCall
from omniroute.providers.openai import OpenAIProvider

IDLE = 0.4
#: a trickle: one event every TICK seconds, TICKS of them (longer in all than IDLE)
TICK, TICKS = 0.1, 8


def event(i: int) -> bytes:
    data = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": str(i)}, "finish_reason": None}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


class Stalling:
    """An OpenAI upstream that trickles, then stalls; ``last`` is when it last wrote."""

    def __init__(self) -> None:
        self.last = 0.0
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):  # JSON: headers and half the body, then nothing
            resp = web.StreamResponse(headers={"Content-Type": "application/json"})
            resp.content_length = 100
            await resp.prepare(request)
            for _ in range(TICKS):
                await resp.write(b" ")
                self.last = time.monotonic()
                await asyncio.sleep(TICK)
            await asyncio.sleep(30)
            return resp
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(TICKS):
            await resp.write(event(i))
            self.last = time.monotonic()
            await asyncio.sleep(TICK)
        await asyncio.sleep(30)  # stalled (the test ends well before)
        return resp


@pytest.fixture
async def stalling(aiohttp_server: Any) -> Any:
    fake = Stalling()
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1")).rstrip("/")  # type: ignore[attr-defined]
    return fake


@pytest.fixture
async def provider(stalling: Stalling) -> Any:
    connector = aiohttp.TCPConnector()
    async with aiohttp.ClientSession(connector=connector) as http:
        yield direct_provider(http, stalling.base_url,
                              Timeouts(connect=2, first_byte=IDLE, idle=IDLE, total=20))


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_a_trickling_stream_goes_on_and_a_stall_is_cut_at_the_idle_bound(
    provider: OpenAIProvider, stalling: Stalling
) -> None:
    answer = await provider.chat(UpstreamCall({**BODY, "stream": True}, "m", True))
    assert answer.reads is not None
    got = b""
    async with asyncio.timeout(10), aclosing(answer.reads) as reads:
        with pytest.raises(UpstreamTimeout, match="stalled"):
            async for block in reads:
                got += block
    cut = time.monotonic() - stalling.last
    assert got == b"".join(event(i) for i in range(TICKS))  # longer than IDLE in all
    assert IDLE - 0.05 <= cut <= IDLE + 0.25  # idle after the last bytes, not later


async def test_a_json_answer_that_stalls_is_cut_at_the_idle_bound(
    provider: OpenAIProvider, stalling: Stalling
) -> None:
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout):
        async with asyncio.timeout(10):
            await provider.chat(UpstreamCall(BODY, "m", False))
    cut = time.monotonic() - stalling.last
    assert time.monotonic() - started >= TICK * (TICKS - 1)  # bytes held it off
    assert IDLE - 0.05 <= cut <= IDLE + 0.25
