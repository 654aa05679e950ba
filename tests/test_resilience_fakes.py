"""Fault injection in the fake OpenAI upstream: seeded random failures, fixed latency."""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import pytest
from fakes.openai_upstream import FakeOpenAI, reply

KEY = "sk-upstream-test"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def statuses(aiohttp_server: Any, fake: FakeOpenAI, n: int) -> list[tuple[int, Any]]:
    server = await aiohttp_server(fake.app)
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.post(server.make_url("/v1/chat/completions"), json=BODY,
                              headers={"Authorization": f"Bearer {KEY}"}) as r:
                out.append((r.status, await r.json()))
    return out


async def test_fail_rate_is_seeded_and_speaks_openai_errors(aiohttp_server: Any) -> None:
    first = await statuses(aiohttp_server, FakeOpenAI(fail_rate=0.4, seed=3), 40)
    again = await statuses(aiohttp_server, FakeOpenAI(fail_rate=0.4, seed=3), 40)
    other = await statuses(aiohttp_server, FakeOpenAI(fail_rate=0.4, seed=4), 40)
    codes = [s for s, _ in first]
    assert codes == [s for s, _ in again]
    assert codes != [s for s, _ in other]
    assert {200, 500, 503} == set(codes)
    assert 8 <= sum(c != 200 for c in codes) <= 24
    for status, body in first:
        if status != 200:
            err = body["error"]
            assert set(err) == {"message", "type", "param", "code"}
            assert err["type"] == "server_error" and err["message"]
        else:
            assert body["object"] == "chat.completion"


async def test_fail_rate_counts_and_spares_scripted_requests(aiohttp_server: Any) -> None:
    fake = FakeOpenAI(fail_rate=1.0, seed=1)
    fake.script += [reply(text="scripted")]
    got = await statuses(aiohttp_server, fake, 3)
    assert got[0][0] == 200 and got[0][1]["choices"][0]["message"]["content"] == "scripted"
    assert all(s in (500, 503) for s, _ in got[1:])
    assert fake.injected_failures == 2
    clean = FakeOpenAI()
    assert [s for s, _ in await statuses(aiohttp_server, clean, 5)] == [200] * 5
    assert clean.injected_failures == 0


def test_fail_rate_must_be_a_probability() -> None:
    with pytest.raises(ValueError):
        FakeOpenAI(fail_rate=1.5)


async def test_latency_delays_every_chat_answer(aiohttp_server: Any) -> None:
    fake = FakeOpenAI(latency=0.08)
    fake.script += [reply(text="x")]
    started = time.perf_counter()
    got = await statuses(aiohttp_server, fake, 2)
    elapsed = time.perf_counter() - started
    assert [s for s, _ in got] == [200, 200]
    assert elapsed >= 0.16  # both the scripted and the default answer waited
