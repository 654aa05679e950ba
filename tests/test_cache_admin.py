"""The response cache's backends, its management API and CLI, and a plugin's layer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest
from test_cli import Cli, failed, ok
from test_hooks_storage import DictLayer, LayersPlugin

from omniroute.cache.layer import CacheLayer
from omniroute.cache.memory import MemoryCache
from omniroute.cache.sqlite import SqliteCache
from omniroute.plugins import load_plugins
from omniroute.testing import make_test_config, start_harness

HI = [{"role": "user", "content": "what is 2 + 2?"}]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ask(gw: Any, content: str = "what is 2 + 2?") -> str:
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x",
                                  max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="up/gpt-4o-mini", messages=[{"role": "user", "content": content}],
            temperature=0)
    await gw.cache.settled()
    return raw.headers["X-OmniRoute-Cache"]


async def test_memory_backend_lru_ttl_and_listing() -> None:
    clock = Clock()
    cache = MemoryCache({"max_entries": 2, "max_bytes": 10, "ttl": 60}, clock=clock)
    await cache.set("a", b"1234")
    await cache.set("b", b"5678")
    assert await cache.get("a") == b"1234"  # a is now the most recent
    await cache.set("c", b"90")  # over two entries: b (least recent) goes
    assert await cache.get("b") is None
    await cache.set("d", b"123456")  # over 10 bytes: a goes
    assert await cache.get("a") is None and await cache.get("d") == b"123456"
    await cache.set("big", b"x" * 11)  # larger than the whole cache: never stored
    assert await cache.get("big") is None
    listed = await cache.entries(10)
    assert [(e.key, e.hits) for e in listed] == [("d", 1), ("c", 0)]
    clock.now += 61  # past the TTL
    assert await cache.get("d") is None and await cache.entries(10) == []
    stats = await cache.stats()
    assert stats["evictions"] == 2 and stats["entries"] == 1  # c expired, not yet read


async def test_sqlite_backend_persists_expires_and_bounds(tmp_path: Path) -> None:
    clock = Clock()
    options = {"path": str(tmp_path / "c.sqlite3"), "ttl": 60, "max_entries": 2}
    cache = SqliteCache(options, clock=clock)
    await cache.start()
    await cache.set("a", b"one")
    assert await cache.get("a") == b"one"  # read from the queue before it is written
    await cache.set("b", b"two", ttl=10)
    await cache.flush()
    await cache.close()

    again = SqliteCache(options, clock=clock)
    await again.start()
    assert await again.get("a") == b"one" and await again.get("b") == b"two"
    clock.now += 11
    assert await again.get("b") is None  # expired
    await again.set("c", b"three")
    await again.set("d", b"four")
    await again.flush()
    assert await again.prune() == 2  # b expired, then a is the least recently used
    assert await again.get("a") is None and await again.get("d") == b"four"
    listed = await again.entries(10)
    assert {e.key for e in listed} == {"c", "d"}
    assert await again.delete("c") and not await again.delete("c")
    await again.clear()
    assert (await again.stats())["entries"] == 0
    await again.close()


async def test_a_flush_cancelled_mid_write_keeps_its_entries(tmp_path: Path) -> None:
    """The writer cancelled while its transaction is on aiosqlite's thread (a shutdown
    under load): the entries go back to the queue, and close() still writes them."""
    options = {"path": str(tmp_path / "c.sqlite3"), "flush_every": 3600}
    cache = SqliteCache(options)
    await cache.start()
    await cache.set("a", b"one")
    assert await cache.get("a") == b"one"  # a hit to count, written with the entry
    flushing = asyncio.create_task(cache.flush())
    await asyncio.sleep(0)  # in the flush: BEGIN sent to the thread, not answered yet
    await cache.set("b", b"two")
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert (await cache.stats())["queued"] == 2
    await cache.close()

    again = SqliteCache(options)
    await again.start()
    assert await again.get("a") == b"one" and await again.get("b") == b"two"
    listed = {e.key: e.hits for e in await again.entries(10)}
    assert listed == {"a": 2, "b": 1}  # a's earlier hit kept too
    await again.close()


async def test_waiting_for_queued_stores_is_bounded() -> None:
    from omniroute.cache.service import ResponseCache

    async def produce() -> bytes:  # (an entry's bytes go into memory at once: not queued)
        return b"{}"

    cache = ResponseCache([MemoryCache({})])  # never started: no writer takes the store
    cache.store("k" * 64, produce, 60)
    with pytest.raises(TimeoutError):
        await cache.settled(timeout=0.05)


async def test_close_lets_the_writer_finish_the_flush_it_is_in(tmp_path: Path) -> None:
    cache = SqliteCache({"path": str(tmp_path / "c.sqlite3"), "flush_every": 0.001})
    await cache.start()
    for i in range(300):  # past the wake-up mark: the writer is woken at once
        await cache.set(f"k{i}", b"v")
    await asyncio.sleep(0)
    await cache.close()
    again = SqliteCache({"path": str(tmp_path / "c.sqlite3")})
    await again.start()
    assert (await again.stats())["entries"] == 300
    await again.close()


async def test_stats_entries_delete_and_clear(gw: Any) -> None:
    assert await ask(gw) == "MISS"
    assert await ask(gw) == "HIT"
    assert await ask(gw, "and 3 + 3?") == "MISS"
    resp = await gw.client.get("/api/cache/stats", headers=gw.admin_headers)
    stats = await resp.json()
    assert stats["semanticCache"] == {"memorySize": 2, "memoryMaxSize": 10_000, "dbSize": 0,
                                      "hitRate": round(1 / 3, 4)}
    assert stats["idempotency"] == {"activeKeys": 0, "windowMs": 5000}
    assert stats["exact"]["hits"] == 1 and stats["backends"]["memory"]["entries"] == 2
    entries = (await (await gw.client.get("/api/cache/entries",
                                          headers=gw.admin_headers)).json())["entries"]
    assert len(entries) == 2
    assert {e["model"] for e in entries} == {"up/gpt-4o-mini"}
    assert sorted(e["hits"] for e in entries) == [0, 1]
    assert all(len(e["key"]) == 32 and e["bytes"] > 0 and e["created"] for e in entries)
    hit = next(e for e in entries if e["hits"] == 1)
    resp = await gw.client.delete(f"/api/cache/entries/{hit['key']}", headers=gw.admin_headers)
    assert resp.status == 200
    resp = await gw.client.delete(f"/api/cache/entries/{hit['key']}", headers=gw.admin_headers)
    assert resp.status == 404
    assert await ask(gw) == "MISS"
    assert (await gw.client.delete("/api/cache/stats", headers=gw.admin_headers)).status == 200
    assert await ask(gw, "and 3 + 3?") == "MISS"
    bad = await gw.client.get("/api/cache/entries?limit=0", headers=gw.admin_headers)
    assert bad.status == 400
    assert (await gw.client.get("/api/cache/stats")).status == 401  # admin only


async def test_a_part_that_cannot_be_cleared_does_not_stop_the_others(
        gw: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = gw.cache
    assert await ask(gw) == "MISS"
    cleared: list[str] = []

    class Stuck(CacheLayer):
        name = "stuck"

        async def clear(self) -> None:
            raise TimeoutError("the encoder is busy")

    class Counting(CacheLayer):
        name = "counting"

        async def clear(self) -> None:
            cleared.append(self.name)

    monkeypatch.setattr(cache, "layers", [Stuck(), Counting()])
    resp = await gw.client.delete("/api/cache/stats", headers=gw.admin_headers)
    assert resp.status == 500
    error = (await resp.json())["error"]
    assert error["code"] == "cache_clear_failed" and "stuck: TimeoutError" in error["message"]
    assert cleared == ["counting"]
    monkeypatch.setattr(cache, "layers", [])
    assert await ask(gw) == "MISS"  # the backends were cleared all the same


async def test_cli_cache_stats_and_clear(gw: Any) -> None:
    run = Cli(gw.gateway.config.data_dir)
    assert await ask(gw) == "MISS"
    assert await ask(gw) == "HIT"
    out = ok(await run.in_thread("cache", "stats", "--url", gw.base_url,
                                 "--admin-key", gw.admin_key)).output
    assert "hits 1, misses 1" in out and "memory" in out
    data = json.loads(ok(await run.in_thread("cache", "stats", "--url", gw.base_url,
                                             "--admin-key", gw.admin_key, "--json")).output)
    assert data["semanticCache"]["memorySize"] == 1
    assert "cache cleared" in ok(await run.in_thread(
        "cache", "clear", "--url", gw.base_url, "--admin-key", gw.admin_key)).output
    assert await ask(gw) == "MISS"
    failed(await run.in_thread("cache", "stats", "--url", gw.base_url, "--admin-key", "sk-no"),
           "answered 401")


@pytest.mark.parametrize("broken", [False, True], ids=["layer", "failing-layer"])
async def test_a_plugin_layer_answers_after_the_exact_backends_miss(
        aiohttp_client: Any, tmp_path: Path, fake_openai: Any, broken: bool) -> None:
    layer = DictLayer()
    if broken:
        async def fail(key: Any) -> None:
            raise RuntimeError("the layer is down")
        layer.lookup = fail  # type: ignore[method-assign]
    plugins = load_plugins(extra=[("t-layer", LayersPlugin(layer))])
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path), plugins=plugins)
    await gw.add_provider({"type": "openai", "prefix": "up", "name": "fake",
                           "base_url": fake_openai.base_url, "api_key": "sk-upstream-test"})
    assert await ask(gw) == "MISS"
    assert list(layer.entries) == ["what is 2 + 2?"]  # stored in the layer too
    await gw.cache.backends[0].clear()  # the exact backend forgets; the layer remembers
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x", max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="up/gpt-4o-mini", messages=HI, temperature=0)
    if broken:  # a failing layer is a miss, never an error
        assert raw.headers["X-OmniRoute-Cache"] == "MISS"
        return
    assert raw.headers["X-OmniRoute-Cache"] == "HIT"
    assert raw.headers["X-OmniRoute-Cache-Similarity"] == "0.9700"
    assert len(fake_openai.requests) == 1
    stats = await gw.cache.stats()
    assert "t-dict-layer" in stats["layers"]


async def test_an_inactive_layer_is_neither_asked_nor_given_entries(
        aiohttp_client: Any, tmp_path: Path, fake_openai: Any) -> None:
    """A layer whose setting is off (the semantic cache by default) costs a request
    nothing: the key leaves out what only layers read, and no layer is asked or fed;
    once it is active again it is both."""
    layer = DictLayer()
    on = False
    asked: list[Any] = []
    original = layer.lookup

    async def lookup(key: Any) -> Any:
        asked.append(key)
        return await original(key)

    layer.lookup = lookup  # type: ignore[method-assign]
    layer.active = lambda: on  # type: ignore[method-assign]
    plugins = load_plugins(extra=[("t-layer", LayersPlugin(layer))])
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path), plugins=plugins)
    await gw.add_provider({"type": "openai", "prefix": "up", "name": "fake",
                           "base_url": fake_openai.base_url, "api_key": "sk-upstream-test"})
    assert await ask(gw) == "MISS"
    await gw.cache.settled()
    assert asked == [] and layer.entries == {}
    assert await ask(gw) == "HIT"  # the exact backend still keeps and answers it
    on = True
    await gw.cache.backends[0].clear()
    assert await ask(gw) == "MISS"
    await gw.cache.settled()
    assert len(asked) == 1 and asked[0].scope and asked[0].prompt == "what is 2 + 2?"
    assert list(layer.entries) == ["what is 2 + 2?"]


def test_key_scope_prompt_and_flags() -> None:
    from omniroute.cache.entry import dump, load, storable
    from omniroute.cache.key import cache_key, uncacheable
    from omniroute.formats import canonical as c

    def request(*texts: str, **kwargs: Any) -> c.Request:
        messages = [c.Message("user" if i % 2 == 0 else "assistant", [c.Text(t)])
                    for i, t in enumerate(texts)]
        return c.Request("m", messages, temperature=0, **kwargs)

    one = cache_key(request("how warm is it?"), "t1", "up/m")
    other = cache_key(request("how cold is it?"), "t1", "up/m")
    assert one.exact != other.exact and one.scope == other.scope  # only the prompt differs
    assert (one.prompt, one.multi_turn, one.has_tools, one.has_media) == (
        "how warm is it?", False, False, False)
    assert one.prompt_tokens > 0
    assert cache_key(request("how warm is it?"), "t2", "up/m").scope != one.scope  # tenant
    assert cache_key(request("how warm is it?"), "t1", "up/x").scope != one.scope  # model
    assert cache_key(request("how warm is it?", top_p=0.5), "t1", "up/m").scope != one.scope
    streamed = request("how warm is it?", stream=True, user="u", meta={
        "openai": {"include_usage": True}})
    assert cache_key(streamed, "t1", "up/m").exact == one.exact  # transport is not the question
    turns = cache_key(request("hi", "hello", "how warm is it?"), "t1", "up/m")
    assert turns.multi_turn and turns.scope != one.scope
    image = request("what is this?")
    image.messages[0].parts.append(c.Image(url="https://example.com/a.png"))
    assert cache_key(image, "t1", "up/m").has_media
    tools = request("weather?", tools=[c.Tool("get_weather")])
    assert cache_key(tools, "t1", "up/m").has_tools
    assert uncacheable(request("x", meta={"openai": {"extra": {"logprobs": True}}})) == "logprobs"
    assert uncacheable(request("x", meta={"generationConfig": {"candidateCount": 2}}))
    assert uncacheable(request("x")) is None

    answer = c.Response("id1", "gpt", [c.Reasoning("think", signature="sig", source="anthropic"),
                                       c.Text("It is warm."),
                                       c.ToolCall("call_1", "get_weather", '{"city":"Paris"}')],
                        "tool_use", usage=c.Usage(10, 5))
    assert storable(answer)
    entry = load(dump(answer, "up/m", 123.0, 0.001))
    assert entry is not None and entry.response == answer and entry.cost == 0.001
    assert load(b'{"v": 99}') is None and load(b"not json") is None
    assert not storable(c.Response("id", "gpt", [c.Text("cut")], "max_tokens"))
    assert not storable(c.Response("id", "gpt", [c.Text("  ")]))
