"""The exact response cache, end to end: keys, hits, bypasses, what is never stored."""

from __future__ import annotations

from typing import Any

import openai

from omniroute.appkeys import CACHE, REQUEST_LOG

HI = [{"role": "user", "content": "what is 2 + 2?"}]


def sdk(gw: Any, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x", max_retries=0,
                              timeout=10, default_headers=headers or None)


async def ask(gw: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", HI)
    kwargs.setdefault("model", "up/gpt-4o-mini")
    raw = await sdk(gw).chat.completions.with_raw_response.create(**kwargs)
    await gw.client.app[CACHE].settled()
    return raw.headers, raw.parse()


async def test_a_deterministic_json_answer_is_served_from_the_cache(gw: Any) -> None:
    headers, first = await ask(gw, temperature=0)
    assert headers["X-OmniRoute-Cache"] == "MISS"
    headers, second = await ask(gw, temperature=0)
    assert headers["X-OmniRoute-Cache"] == "HIT"
    assert len(gw.fake.requests) == 1
    assert second.choices[0].message.content == first.choices[0].message.content
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    assert float(headers["X-OmniRoute-Response-Cost"]) == 0
    log = gw.client.app[REQUEST_LOG]
    await log.flush()
    records = await log.recent(2)
    hit = next(r for r in records if r["cache_hit"])
    miss = next(r for r in records if not r["cache_hit"])
    assert hit["cost_usd"] == 0 and hit["list_cost_usd"] == miss["cost_usd"] > 0
    assert hit["prompt_tokens"] == miss["prompt_tokens"]


async def test_other_temperatures_bypass(gw: Any) -> None:
    for _ in range(2):
        headers, _ = await ask(gw, temperature=0.7)
        assert headers["X-OmniRoute-Cache"] == "BYPASS"
    headers, _ = await ask(gw)
    assert headers["X-OmniRoute-Cache"] == "BYPASS"
    assert len(gw.fake.requests) == 3
