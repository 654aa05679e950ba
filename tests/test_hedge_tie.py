"""Two raced calls that finish together: only the served answer leaves a trace.

A call that loses a hedged race can complete in the same turn of the event loop
as the winner (both upstreams answered at once). Its answer must not reach the
request's shared state: the record's token counts and the response cache's
copy are those of the answer the client got (``Reply.on_win``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import openai

from omniroute import CanonicalProvider, hookimpl
from omniroute import canonical as c
from omniroute.plugins import load_plugins
from omniroute.providers.base import Provider
from omniroute.testing import make_test_config, start_harness


class Tied(CanonicalProvider):
    """Answers once its connection's event is set; each with its own text and counts."""

    type = "test-tied"
    requires_credentials = False
    release: ClassVar[dict[str, asyncio.Event]]
    calls: ClassVar[list[str]] = []

    async def complete(self, request: c.Request) -> c.Response:
        name = self.connection.name
        self.calls.append(name)
        await self.release[name].wait()
        tokens = {"first": 11, "second": 22}[name]
        return c.Response(f"id-{name}", request.model, [c.Text(f"answer from {name}")],
                          "end_turn", usage=c.Usage(input_tokens=tokens, output_tokens=tokens))


class TiedPlugin:
    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(Tied)


async def test_the_record_and_the_cache_keep_the_served_answer(aiohttp_client: Any,
                                                               tmp_path: Path) -> None:
    Tied.release = {"first": asyncio.Event(), "second": asyncio.Event()}
    Tied.calls = []
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"),
                             load_plugins(extra=[("test-tied", TiedPlugin())]))
    await gw.set_settings(hedge_floor=0.1, hedge_initial=0.1)
    for name in ("first", "second"):
        await gw.add_provider({"type": "test-tied", "name": name, "prefix": name})
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers, json={
        "name": "tied", "strategy": "priority", "steps": ["first/m", "second/m"]})
    assert resp.status == 201, await resp.text()
    sdk = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0,
                             timeout=10)
    ask = {"model": "tied", "temperature": 0,
           "messages": [{"role": "user", "content": "who answers?"}]}
    asking = asyncio.create_task(sdk.chat.completions.with_raw_response.create(**ask))
    async with asyncio.timeout(5):
        while Tied.calls != ["first", "second"]:  # the second call raced the first
            await asyncio.sleep(0.01)
    # both upstreams answer in the same turn of the loop, the raced one woken first: it
    # completes its call before the first call (in the request's task) completes its own
    Tied.release["second"].set()
    Tied.release["first"].set()
    raw = await asyncio.wait_for(asking, 5)
    served = raw.parse()
    text, tokens = served.choices[0].message.content, served.usage.completion_tokens
    assert (text, tokens) in (("answer from first", 11), ("answer from second", 22))
    assert raw.headers["X-OmniRoute-Cache"] == "MISS"
    resp = await gw.client.get("/api/requests", headers=gw.admin_headers)
    record = (await resp.json())["requests"][0]
    assert record["completion_tokens"] == tokens  # the served answer's counts
    assert record["provider"] == text.rsplit(" ", 1)[1]
    async with asyncio.timeout(5):  # the cache keeps the served answer, not the other
        while True:
            again = await sdk.chat.completions.with_raw_response.create(**ask)
            if again.headers["X-OmniRoute-Cache"] == "HIT":
                break
            await asyncio.sleep(0.05)
    assert again.parse().choices[0].message.content == text
    await sdk.close()
