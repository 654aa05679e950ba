"""Self-test of the shared fake plumbing (``fakes.base``), the same for every provider's fake:
the auth check in each provider's own place, the faults, latency and seeded failures."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from fakes import (
    anthropic_upstream,
    gemini_upstream,
    ollama_upstream,
    openai_upstream,
    responses_upstream,
)
from fakes.base import split

HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Wire:
    """One fake and a minimal stream request it answers."""

    module: ModuleType
    cls: str
    path: str
    body: dict[str, Any]
    key: str
    headers: dict[str, str]  # the key, where this provider takes it, and other required ones
    no_key: int  # the status of a request without a key
    frame_end: bytes  # how a stream frame ends

    def make(self, **knobs: Any) -> Any:
        return getattr(self.module, self.cls)(**{"api_key": self.key, **knobs})


WIRES = {w.cls: w for w in (
    Wire(openai_upstream, "FakeOpenAI", "/v1/chat/completions",
         {"model": "gpt-4o-mini", "messages": HI, "stream": True}, "sk-upstream-test",
         {"Authorization": "Bearer sk-upstream-test"}, 401, b"\n\n"),
    Wire(anthropic_upstream, "FakeAnthropic", "/v1/messages",
         {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": HI, "stream": True},
         "sk-ant-test", {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}, 401,
         b"\n\n"),
    Wire(gemini_upstream, "FakeGemini", "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
         {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}, "AIza-test",
         {"x-goog-api-key": "AIza-test"}, 403, b"\r\n\r\n"),
    Wire(responses_upstream, "FakeResponses", "/v1/responses",
         {"model": "gpt-5-mini", "input": "hi", "stream": True}, "sk-upstream-test",
         {"Authorization": "Bearer sk-upstream-test"}, 401, b"\n\n"),
    Wire(ollama_upstream, "FakeOllama", "/api/chat", {"model": "llama3.2", "messages": HI},
         "ollama-test", {"Authorization": "Bearer ollama-test"}, 401, b"\n"),
)}
every_fake = pytest.mark.parametrize("wire", list(WIRES.values()), ids=list(WIRES))


async def serve(aiohttp_server: Any, wire: Wire, **knobs: Any) -> tuple[Any, str]:
    fake = wire.make(**knobs)
    server = await aiohttp_server(fake.app)
    query = "?alt=sse" if wire.module is gemini_upstream else ""
    return fake, str(server.make_url(wire.path)) + query


async def post(url: str, wire: Wire, headers: dict[str, str] | None = None,
               timeout: float = 5.0) -> tuple[int, str, bytes]:
    bounded = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=bounded) as s, s.post(
            url, json=wire.body, headers=wire.headers if headers is None else headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.read()


def frames(raw: bytes, wire: Wire) -> list[bytes]:
    return [f for f in raw.split(wire.frame_end) if f]


@every_fake
async def test_auth_in_the_providers_own_place(aiohttp_server: Any, wire: Wire) -> None:
    fake, url = await serve(aiohttp_server, wire)
    status, _, _ = await post(url, wire)
    assert status == 200
    other = {k: v for k, v in wire.headers.items() if k == "anthropic-version"}
    status, kind, body = await post(url, wire, other)
    assert status == wire.no_key and kind.startswith("application/json") and b"error" in body
    wrong = {k: v.replace(wire.key, "not-the-key") for k, v in wire.headers.items()}
    status, _, body = await post(url, wire, wrong)
    assert status in (400, 401) and b"error" in body
    assert len(fake.requests) == 3 and fake.requests[0].json == wire.body
    _, url = await serve(aiohttp_server, wire, api_key=None)
    status, _, _ = await post(url, wire, other)
    assert status == 200, "api_key=None: no auth check"


async def test_gemini_takes_the_key_in_the_query(aiohttp_server: Any) -> None:
    wire = WIRES["FakeGemini"]
    _, url = await serve(aiohttp_server, wire)
    assert (await post(f"{url}&key={wire.key}", wire, {}))[0] == 200
    assert (await post(f"{url}&key=wrong", wire, {}))[0] == 400


@every_fake
async def test_hang_before_headers_counts_the_client_that_leaves(aiohttp_server: Any,
                                                                 wire: Wire) -> None:
    fake, url = await serve(aiohttp_server, wire)
    fake.script.append(wire.module.hang_before_headers(30))
    with pytest.raises(asyncio.TimeoutError):
        await post(url, wire, timeout=0.3)
    await asyncio.wait_for(fake.stream_closed.wait(), 5)
    assert fake.closed_streams == 1


@every_fake
async def test_hang_mid_stream_then_the_rest(aiohttp_server: Any, wire: Wire) -> None:
    fake, url = await serve(aiohttp_server, wire)
    _, _, whole = await post(url, wire)
    fake.script.append(wire.module.hang_mid_stream(2, 0.3))
    started = time.monotonic()
    status, _, raw = await post(url, wire)
    assert status == 200 and time.monotonic() - started >= 0.3
    assert len(frames(raw, wire)) == len(frames(whole, wire))
    assert fake.closed_streams == 0


@every_fake
async def test_drop_mid_stream_aborts_after_that_many_frames(aiohttp_server: Any,
                                                             wire: Wire) -> None:
    fake, url = await serve(aiohttp_server, wire)
    fake.script.append(wire.module.drop_mid_stream(2))
    got: list[bytes] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with aiohttp.ClientSession() as s, s.post(url, json=wire.body,
                                                        headers=wire.headers) as r:
            async for chunk in r.content.iter_any():
                got.append(chunk)
    assert len(frames(b"".join(got), wire)) == 2
    assert fake.closed_streams == 0, "the fake's own drop is not a client that left"


@every_fake
async def test_garbage_is_not_the_stream_format(aiohttp_server: Any, wire: Wire) -> None:
    fake, url = await serve(aiohttp_server, wire)
    fake.script.append(wire.module.garbage())
    status, kind, raw = await post(url, wire)
    assert status == 200 and kind.startswith(fake.stream_type)
    assert raw.startswith(b"<html>")


@every_fake
async def test_slow_waits_before_each_frame(aiohttp_server: Any, wire: Wire) -> None:
    fake, url = await serve(aiohttp_server, wire)
    fake.script.append(wire.module.slow(0.05))
    started = time.monotonic()
    _, _, raw = await post(url, wire)
    assert time.monotonic() - started >= 0.05 * (len(frames(raw, wire)) - 1)


@every_fake
async def test_seeded_failures_and_latency(aiohttp_server: Any, wire: Wire) -> None:
    async def statuses(seed: int) -> list[int]:
        fake, url = await serve(aiohttp_server, wire, fail_rate=0.5, seed=seed, latency=0.02)
        out = [(await post(url, wire))[0] for _ in range(12)]
        assert fake.injected_failures == sum(s != 200 for s in out)
        return out

    started = time.monotonic()
    first = await statuses(5)
    assert time.monotonic() - started >= 12 * 0.02
    assert first == await statuses(5) and set(first) == {200, 500, 503}
    with pytest.raises(ValueError):
        wire.make(fail_rate=2)


def test_split_keeps_every_character() -> None:
    assert split("abcdefg", 3) == ["ab", "cd", "efg"] and split("", 4) == [""]
    assert split("ab", 5) == ["a", "b"]
