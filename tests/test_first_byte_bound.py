"""The first-byte bound of a stream (``HTTPProvider.post_stream``): one timer per call.

It bounds the whole wait for the first event (connect, headers, keep-alives) and
nothing after it; when it fires the call ends in ``UpstreamTimeout`` and the task is
not left cancelled, and a caller's own cancellation stays a cancellation.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from typing import Any

import aiohttp
import pytest
from fakes.openai_upstream import FakeOpenAI, direct_provider, hang_before_headers, slow

from omniroute.errors import UpstreamTimeout
from omniroute.providers.base import Timeouts, UpstreamCall

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "stream": True}
FIRST_BYTE = 0.3


@pytest.fixture
async def fake_openai(aiohttp_server: Any) -> FakeOpenAI:
    fake = FakeOpenAI(api_key=None)  # the provider is called without credentials
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


@pytest.fixture
async def provider(fake_openai: FakeOpenAI) -> Any:
    async with aiohttp.ClientSession() as http:
        yield direct_provider(http, fake_openai.base_url.rstrip("/"),
                              Timeouts(connect=2, first_byte=FIRST_BYTE, idle=5, total=20))


def call() -> UpstreamCall:
    return UpstreamCall(BODY, "gpt-4o-mini", True)


async def test_a_hang_ends_in_a_timeout_and_leaves_the_task_uncancelled(
        provider: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script.append(hang_before_headers(10))
    started = time.monotonic()
    with pytest.raises(UpstreamTimeout, match=f"no event within {FIRST_BYTE:g}s"):
        await provider.chat(call())
    assert FIRST_BYTE - 0.05 <= time.monotonic() - started < FIRST_BYTE + 0.5
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # no cancellation is left pending on the task
    await asyncio.wait_for(fake_openai.stream_closed.wait(), 2)


async def test_a_caller_cancelling_the_wait_is_a_cancellation(
        provider: Any, fake_openai: FakeOpenAI) -> None:
    fake_openai.script.append(hang_before_headers(10))
    waiting = asyncio.ensure_future(provider.chat(call()))
    await asyncio.sleep(FIRST_BYTE / 3)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.wait_for(fake_openai.stream_closed.wait(), 2)


async def test_a_caller_cancelling_as_the_bound_fires_is_still_a_cancellation(
        provider: Any, fake_openai: FakeOpenAI) -> None:
    """Both cancel the task before it runs again: the caller's cancellation wins."""
    fake_openai.script.append(hang_before_headers(10))
    waiting = asyncio.ensure_future(provider.chat(call()))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(FIRST_BYTE / 3)
    fired = loop.time() + FIRST_BYTE  # past the bound, on the loop's clock
    while loop.time() < fired:
        time.sleep(0.01)  # the loop is held: the bound's timer is due, not yet run
    loop.call_soon(waiting.cancel)  # runs after the due timer, before the task resumes
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_the_bound_ends_with_the_first_event(
        provider: Any, fake_openai: FakeOpenAI) -> None:
    """A stream longer than the bound in all (each gap within idle) goes on to its end."""
    fake_openai.script.append(slow(FIRST_BYTE / 2))
    started = time.monotonic()
    answer = await provider.chat(call())
    assert answer.reads is not None
    got = b""
    async with aclosing(answer.reads) as reads:
        async for block in reads:
            got += block
    assert got.endswith(b"data: [DONE]\n\n")
    assert time.monotonic() - started > 2 * FIRST_BYTE  # well past the bound, in all
