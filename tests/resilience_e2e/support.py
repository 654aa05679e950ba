"""What the resilience end-to-end tests share: the fakes' key and models, and the calls a
test makes through the official openai SDK and the management API (the ``gw`` fixture,
which adds fake upstreams as connections, is in conftest.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from fakes.openai_upstream import FakeOpenAI

from omniroute.resilience import ManualClock

KEY = "sk-upstream-test"
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1")
MODEL = "gpt-4o-mini"
CONTEXT_TOO_LONG = ("This model's maximum context length is 8192 tokens. However, your "
                    "messages resulted in 9000 tokens. Please reduce the length of the messages.")


def ask(i: int = 0) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}"}]


async def api(gw: Any, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    resp = await gw.client.request(method, path, json=body, headers=gw.admin_headers)
    data = await resp.json()
    assert resp.status == status, data
    return data


async def combo(gw: Any, name: str, steps: list[Any], strategy: str = "priority") -> dict:
    return await api(gw, "POST", "/api/combos",
                     {"name": name, "steps": steps, "strategy": strategy}, 201)


def chats(fake: FakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


async def call(gw: Any, model: str, i: int = 0, *, stream: bool = False, **kw: Any) -> Any:
    """One chat request through the SDK: ``(headers, text)``."""
    raw = await gw.sdk.chat.completions.with_raw_response.create(
        model=model, messages=kw.pop("messages", ask(i)), stream=stream, **kw)
    parsed = raw.parse()
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
    else:
        text = parsed.choices[0].message.content
    return raw.headers, text


async def served_by(gw: Any, model: str, n: int, start: int = 0) -> list[str]:
    """The provider prefix that served each of ``n`` requests with distinct conversations."""
    return [(await call(gw, model, i))[0]["X-OmniRoute-Provider"] for i in range(start, start + n)]


def manual_clock(gw: Any) -> ManualClock:
    """Let the test move the resilience layer's time (before any traffic)."""
    clock = ManualClock()
    resilience = gw.resilience
    resilience.clock = clock
    resilience.sessions.clock = clock
    resilience.planner.clock = clock
    return clock


async def rate_limits(gw: Any) -> dict[str, dict[str, Any]]:
    data = await api(gw, "GET", "/api/rate-limits")
    return {row["name"]: row for row in data["connections"]}


async def log_records(gw: Any) -> list[dict[str, Any]]:
    return (await api(gw, "GET", "/api/requests"))["requests"]


async def until(predicate: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def three(gw: Any, strategy: str, steps: list[Any] | None = None, **fakes: Any) -> list:
    """Fakes ``a``, ``b`` and ``c`` behind a combo ``pool`` of ``strategy``, under a seed."""
    upstreams = [await gw.add(name, fake=fakes.get(name)) for name in "abc"]
    await combo(gw, "pool", steps or [f"{n}/{MODEL}" for n in "abc"], strategy)
    gw.resilience.rng = random.Random(1234)
    return upstreams
