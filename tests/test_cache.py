"""The exact response cache, end to end: keys, hits, bypasses, what is never stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from omniroute.appkeys import CACHE, REQUEST_LOG
from omniroute.testing import make_test_config, start_harness

HI = [{"role": "user", "content": "what is 2 + 2?"}]


def sdk(gw: Any, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x", max_retries=0,
                              timeout=10, default_headers=headers or None)


async def ask(gw: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("messages", HI)
    kwargs.setdefault("model", "up/gpt-4o-mini")
    async with sdk(gw) as client:
        raw = await client.chat.completions.with_raw_response.create(**kwargs)
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


async def test_a_route_pinned_to_a_provider_keys_by_that_provider(
        gw: Any, aiohttp_server: Any) -> None:
    from fakes.openai_upstream import FakeOpenAI

    other = FakeOpenAI(api_key="sk-upstream-test")
    server = await aiohttp_server(other.app)
    await gw.add_provider({"type": "openai", "name": "b", "prefix": "b",
                           "base_url": str(server.make_url("/v1")),
                           "api_key": "sk-upstream-test"})
    body = {"model": "gpt-4o-mini", "messages": HI, "temperature": 0}
    pinned_up = await gw.client.post("/v1/providers/up/chat/completions", json=body)
    assert pinned_up.headers["X-OmniRoute-Cache"] == "MISS"
    await gw.client.app[CACHE].settled()
    pinned_b = await gw.client.post("/v1/providers/b/chat/completions", json=body)
    assert pinned_b.headers["X-OmniRoute-Cache"] == "MISS"  # another provider: its own entry
    assert len(other.requests) == 1
    await gw.client.app[CACHE].settled()
    headers, _ = await ask(gw, model="up/gpt-4o-mini", temperature=0)
    assert headers["X-OmniRoute-Cache"] == "HIT"  # `up/gpt-4o-mini` names the same provider


async def test_other_temperatures_bypass(gw: Any) -> None:
    for _ in range(2):
        headers, _ = await ask(gw, temperature=0.7)
        assert headers["X-OmniRoute-Cache"] == "BYPASS"
    headers, _ = await ask(gw)
    assert headers["X-OmniRoute-Cache"] == "BYPASS"
    assert len(gw.fake.requests) == 3


async def test_bypass_headers_neither_read_nor_store(gw: Any) -> None:
    for headers in ({"X-OmniRoute-No-Cache": "true"}, {"Cache-Control": "no-cache"},
                    {"Cache-Control": "max-age=0, no-store"}):
        raw = await sdk(gw, **headers).chat.completions.with_raw_response.create(
            model="up/gpt-4o-mini", messages=HI, temperature=0)
        assert raw.headers["X-OmniRoute-Cache"] == "BYPASS"
    await gw.cache.settled()
    headers, _ = await ask(gw, temperature=0)
    assert headers["X-OmniRoute-Cache"] == "MISS"


async def test_errors_truncated_and_empty_answers_are_never_stored(gw: Any) -> None:
    from fakes.openai_upstream import error, reply

    gw.fake.script.append(error(400, "bad request"))
    with pytest.raises(openai.BadRequestError) as bad:
        await ask(gw, temperature=0)
    assert bad.value.response.headers["X-OmniRoute-Cache"] == "MISS"
    gw.fake.script += [reply(text="cut sho", finish_reason="length"), reply(text="")]
    for _ in range(2):
        headers, _ = await ask(gw, temperature=0)
        assert headers["X-OmniRoute-Cache"] == "MISS"
    headers, _ = await ask(gw, temperature=0)
    assert headers["X-OmniRoute-Cache"] == "MISS"  # only now a complete answer came
    headers, _ = await ask(gw, temperature=0)
    assert headers["X-OmniRoute-Cache"] == "HIT"
    assert len(gw.fake.requests) == 4


async def test_a_broken_stream_is_not_stored(gw: Any) -> None:
    from fakes.openai_upstream import drop_mid_stream

    gw.fake.script.append(drop_mid_stream(2))
    with pytest.raises(openai.APIError):
        async for _ in await sdk(gw).chat.completions.create(
                model="up/gpt-4o-mini", messages=HI, temperature=0, stream=True):
            pass
    await gw.cache.settled()
    headers, _ = await ask(gw, temperature=0)
    assert headers["X-OmniRoute-Cache"] == "MISS"


async def test_several_choices_and_logprobs_bypass(gw: Any) -> None:
    for extra in ({"n": 2}, {"logprobs": True}, {"top_logprobs": 2, "logprobs": True}):
        headers, _ = await ask(gw, temperature=0, **extra)
        assert headers["X-OmniRoute-Cache"] == "BYPASS", extra


async def test_the_cache_is_shared_across_client_formats(gw: Any) -> None:
    """OpenAI stores, and the same question through the Anthropic API hits it."""
    _, stored = await ask(gw, temperature=0, max_tokens=50)
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="sk-x", max_retries=0)
    raw = await client.messages.with_raw_response.create(  # this SDK takes no temperature
        model="up/gpt-4o-mini", messages=HI, max_tokens=50, extra_body={"temperature": 0})
    assert raw.headers["X-OmniRoute-Cache"] == "HIT"
    message = await raw.parse()
    assert message.content[0].text == stored.choices[0].message.content
    assert message.usage.output_tokens == stored.usage.completion_tokens
    assert len(gw.fake.requests) == 1
    # another model, or another sampling parameter, is another question
    for kwargs in ({"model": "up/gpt-4o"}, {"top_p": 0.5}, {"stop": ["x"]}):
        headers, _ = await ask(gw, **{"temperature": 0, "max_tokens": 50, **kwargs})
        assert headers["X-OmniRoute-Cache"] == "MISS", kwargs


async def test_tenants_never_share_and_keys_choose_their_mode(gw: Any) -> None:
    from omniroute.budgets.limits import Limits

    await gw.set_settings(require_api_key=True)
    secrets = {}
    for name, limits in (("a", None), ("b", None), ("on", {"cache": "on", "cache_ttl": 60}),
                         ("off", {"cache": "off"})):
        _, secrets[name] = await gw.store.create_key(
            name, limits=Limits.parse(limits) if limits else None)
    for scheme in gw.auth_schemes.values():
        await scheme.reload()

    async def as_key(name: str, **kwargs: Any) -> str:
        client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=secrets[name],
                                    max_retries=0)
        raw = await client.chat.completions.with_raw_response.create(
            model="up/gpt-4o-mini", messages=HI, **kwargs)
        await gw.cache.settled()
        return raw.headers["X-OmniRoute-Cache"]

    assert [await as_key("a", temperature=0), await as_key("a", temperature=0)] == ["MISS", "HIT"]
    assert await as_key("b", temperature=0) == "MISS"  # another tenant
    assert [await as_key("on", temperature=0.9), await as_key("on", temperature=0.9)] == [
        "MISS", "HIT"]  # the key caches every request
    assert await as_key("off", temperature=0) == "BYPASS"


async def test_responses_kept_on_the_server_bypass(gw: Any) -> None:
    client = sdk(gw)
    raw = await client.responses.with_raw_response.create(
        model="up/gpt-4o-mini", input="hi", temperature=0)
    assert raw.headers["X-OmniRoute-Cache"] == "BYPASS"  # store defaults to true
    raw = await client.responses.with_raw_response.create(
        model="up/gpt-4o-mini", input="hi", temperature=0, store=False)
    assert raw.headers["X-OmniRoute-Cache"] == "MISS"


async def test_cache_mode_setting(gw: Any) -> None:
    await gw.set_settings(cache_mode="on")
    assert (await ask(gw, temperature=1))[0]["X-OmniRoute-Cache"] == "MISS"
    assert (await ask(gw, temperature=1))[0]["X-OmniRoute-Cache"] == "HIT"
    await gw.set_settings(cache_mode="off")
    assert (await ask(gw, temperature=0))[0]["X-OmniRoute-Cache"] == "BYPASS"


async def test_sqlite_entries_survive_a_restart(aiohttp_client: Any, tmp_path: Path,
                                                fake_openai: Any) -> None:
    config = make_test_config(tmp_path, cache_backends="memory,sqlite")
    first = await start_harness(aiohttp_client, config)
    await first.add_provider({"type": "openai", "prefix": "up", "name": "fake",
                              "base_url": fake_openai.base_url, "api_key": "sk-upstream-test"})
    headers, stored = await ask(first, temperature=0)
    assert headers["X-OmniRoute-Cache"] == "MISS"
    await first.client.close()  # the writer flushes to cache.sqlite3 on the way out
    assert (tmp_path / "cache.sqlite3").exists()

    second = await start_harness(aiohttp_client, config)
    headers, again = await ask(second, temperature=0)
    assert headers["X-OmniRoute-Cache"] == "HIT"
    assert again.choices[0].message.content == stored.choices[0].message.content
    assert [r.path for r in fake_openai.requests if r.method == "POST"] == [
        "/v1/chat/completions"]
    stats = await second.cache.stats()
    assert stats["backends"]["sqlite"]["hits"] == 1
    assert stats["backends"]["memory"]["entries"] == 1  # the hit was promoted to memory


async def test_a_hit_promoted_to_a_faster_backend_keeps_what_is_left_of_its_ttl() -> None:
    from omniroute.cache import entry as entries
    from omniroute.cache.layer import CacheKey
    from omniroute.cache.memory import MemoryCache
    from omniroute.cache.service import ResponseCache
    from omniroute.formats import canonical as c

    now = [1000.0]
    front = MemoryCache({"ttl": 3600}, clock=lambda: now[0])
    back = MemoryCache({"ttl": 3600}, clock=lambda: now[0])  # stands for sqlite
    cache = ResponseCache([front, back], clock=lambda: now[0])
    answer = c.Response("id-1", "m", [c.Text("hi")], "end_turn", None, c.Usage(1, 1), 1, {})
    key = CacheKey(exact="k" * 64, scope="", prompt="", tenant="t", model="m",
                   multi_turn=False, has_tools=False, has_media=False, prompt_tokens=1)
    await back.set(key.exact, entries.dump(answer, "m", now[0], None, now[0] + 600), 600)
    now[0] += 500  # 100 s left
    found = await cache.lookup(key.exact)
    assert found is not None and found.entry.expires == 1600.0
    now[0] += 101  # past the entry's own TTL: the promoted copy is gone too, not kept an hour
    assert await front.get(key.exact) is None
    # an entry past its own TTL is a miss, even where a backend still holds it
    await back.set(key.exact, entries.dump(answer, "m", 0.0, None, now[0] - 1), 600)
    assert await cache.lookup(key.exact) is None
    assert await front.get(key.exact) is None


async def test_a_streamed_hit_leaves_in_one_write_unless_progress_wraps_it(gw: Any) -> None:
    """Every frame of a replay is known at once: the answer is one body with its length
    (headers and frames in one write), which the SDK's stream reads as usual. With
    progress frames asked for, the replay stays a stream, and the frames are there."""
    body = {"model": "up/gpt-4o-mini", "messages": HI, "temperature": 0, "stream": True}
    first = await gw.client.post("/v1/chat/completions", json=body)
    assert first.headers["X-OmniRoute-Cache"] == "MISS"
    assert "Content-Length" not in first.headers  # relayed chunk by chunk
    await first.read()
    await gw.client.app[CACHE].settled()
    hit = await gw.client.post("/v1/chat/completions", json=body)
    raw = await hit.read()
    assert hit.headers["X-OmniRoute-Cache"] == "HIT"
    assert hit.headers["Content-Type"].startswith("text/event-stream")
    assert hit.headers["Cache-Control"] == "no-cache"
    assert int(hit.headers["Content-Length"]) == len(raw) and raw.endswith(b"data: [DONE]\n\n")
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(**body)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream
                        if chunk.choices])
    assert text and len(gw.fake.requests) == 1
    wrapped = await gw.client.post("/v1/chat/completions", json=body,
                                   headers={"X-OmniRoute-Progress": "true"})
    raw = await wrapped.read()
    assert wrapped.headers["X-OmniRoute-Cache"] == "HIT"
    assert "Content-Length" not in wrapped.headers
    assert b": progress " in raw and b'"done":true' in raw


async def test_a_passed_through_stream_is_kept_as_it_came_and_hit_in_another_format(
        gw: Any) -> None:
    """An OpenAI stream relayed as it came is stored undecoded (entry version 2) and
    answers the same question asked for JSON, and through the Anthropic API."""
    from omniroute.cache import entry as entries

    body = {"model": "up/gpt-4o-mini", "messages": HI, "temperature": 0, "max_tokens": 50}
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(**body, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream
                        if chunk.choices])
    cache = gw.client.app[CACHE]
    await cache.settled()
    [row] = await cache.entries(10)
    assert row["version"] == entries.FRAMES_VERSION  # its frames as they came
    headers, answer = await ask(gw, **body)
    assert headers["X-OmniRoute-Cache"] == "HIT" and answer.choices[0].message.content == text
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="sk-x", max_retries=0)
    raw = await client.messages.with_raw_response.create(
        model="up/gpt-4o-mini", messages=HI, max_tokens=50, extra_body={"temperature": 0})
    assert raw.headers["X-OmniRoute-Cache"] == "HIT"
    assert (await raw.parse()).content[0].text == text
    assert len(gw.fake.requests) == 1


@pytest.mark.parametrize(("temperature", "zero"), [
    (0, True), (0.0, True), (-0.0, True), (False, False), (True, False), ("0", False),
    (None, False), (0.2, False), ([0], False), ({}, False), (1e-300, False)])
def test_only_a_numeric_zero_temperature_is_deterministic(temperature: Any, zero: bool) -> None:
    from omniroute.cache.request import is_zero

    assert is_zero(temperature) is zero
