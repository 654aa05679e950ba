"""The cache stage's built-in path (``CacheStage.told``): with the ``memory`` backend
alone and no layer active, a text request is keyed at ``enter``, a miss is told there
(no ``before`` to await), and its answer is stored as it came, made into an entry only
when it is first read (``MemoryCache.put_later``). It must give every answer the usual
path gives: the same headers, hits, counts and entries."""

from __future__ import annotations

import time
from typing import Any

import anthropic
import openai
import orjson

from omniroute.appkeys import CACHE, PIPELINE
from omniroute.cache import entry as entries
from omniroute.cache.key import key_name
from omniroute.cache.memory import key_size
from omniroute.cache.stage import CacheStage

HI = [{"role": "user", "content": "what is 2 + 2?"}]
#: the stage's clock in both sessions (entries hold it; they expire an hour after)
NOW = float(int(time.time()))


def _stage(gw: Any) -> CacheStage:
    return next(s for s in gw.client.app[PIPELINE].stages if isinstance(s, CacheStage))


async def _session(gw: Any) -> dict[str, Any]:
    """A run of misses and hits in two client formats, JSON and streams; what it saw."""
    stage = _stage(gw)
    stage.clock = lambda: NOW  # (an entry's bytes hold its times)
    runs: list[str] = []
    enter = stage.enter

    def spied(ctx: Any, operation: Any) -> Any:
        run = enter(ctx, operation)
        runs.append(type(run).__name__)
        return run

    stage.enter = spied  # type: ignore[method-assign]
    seen: list[Any] = []
    base = {"model": "up/gpt-4o-mini", "temperature": 0, "max_tokens": 50}
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x",
                                  max_retries=0, timeout=10) as client:
        for messages in (HI, HI, [{"role": "system", "content": "be brief"}, *HI]):
            raw = await client.chat.completions.with_raw_response.create(
                **base, messages=messages)
            seen.append((raw.headers["X-OmniRoute-Cache"],
                         raw.parse().choices[0].message.content))
        other = [{"role": "user", "content": "and 3 + 3?"}]
        stream = await client.chat.completions.create(**base, messages=other, stream=True)
        seen.append("".join([chunk.choices[0].delta.content or "" async for chunk in stream
                             if chunk.choices]))
        raw = await client.chat.completions.with_raw_response.create(**base, messages=other)
        seen.append((raw.headers["X-OmniRoute-Cache"], raw.parse().choices[0].message.content))
        # not a text request (a message's name): keyed by the usual run
        named = [{"role": "user", "content": "hi", "name": "ann"}]
        for _ in range(2):
            raw = await client.chat.completions.with_raw_response.create(**base,
                                                                        messages=named)
            seen.append(raw.headers["X-OmniRoute-Cache"])
        raw = await client.chat.completions.with_raw_response.create(  # a bypass
            **base, messages=HI, extra_headers={"X-OmniRoute-No-Cache": "true"})
        seen.append(raw.headers["X-OmniRoute-Cache"])
    claude = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="sk-x", max_retries=0)
    for messages in (HI, other):
        msg = await claude.messages.with_raw_response.create(
            model="up/gpt-4o-mini", messages=messages, max_tokens=50,
            extra_body={"temperature": 0})
        seen.append((msg.headers["X-OmniRoute-Cache"], (await msg.parse()).content[0].text))
    cache = gw.client.app[CACHE]
    await cache.settled()
    listed = await cache.entries(10)  # (every entry made: its own size counted)
    stats = await cache.stats()
    memory = cache.backends[0]
    # (listed by name: kept by the JSON array a short text request's key is)
    kept = {key_name(key): key for key in memory._items}
    data = [await memory.get(kept[row["key"]]) for row in listed]
    made = [entries.load(one, cache.formats) for one in data]
    return {
        "runs": runs, "seen": seen, "upstream": len(gw.fake.requests),
        "exact": stats["exact"], "memory": stats["backends"]["memory"],
        "sizes": sum(map(len, data)) + sum(map(len, memory._items)),  # answers and keys
        "listed": sorted((row["key"], row["version"], row["model"]) for row in listed),
        "answers": sorted((e.response.parts[0].text, e.model, e.cost) for e in made if e),
    }


async def test_the_built_in_path_gives_the_usual_answers(gw: Any) -> None:
    told = await _session(gw)
    assert told["runs"].count("CacheMissRun") == 2  # the two new JSON questions
    assert told["runs"].count("CacheMissStreamRun") == 1
    gw.fake.requests.clear()
    await gw.client.app[CACHE].clear()
    cache = gw.client.app[CACHE]
    cache.hits = cache.misses = cache.bypasses = cache.stored = 0
    _stage(gw).memory = None  # as with any other backend: the usual runs only
    usual = await _session(gw)
    assert "CacheMissRun" not in usual["runs"] and "CacheMissStreamRun" not in usual["runs"]
    assert usual["seen"] == told["seen"]
    assert usual["seen"][:2] == [("MISS", told["seen"][0][1]), ("HIT", told["seen"][0][1])]
    assert usual["seen"][5:8] == ["MISS", "HIT", "BYPASS"]
    assert [s[0] for s in usual["seen"][8:]] == ["HIT", "HIT"]  # the Anthropic API's
    assert usual["upstream"] == told["upstream"]
    assert usual["listed"] == told["listed"]
    assert usual["answers"] == told["answers"]
    # (the memory backend's own counters go on from the first session: the deltas match)
    assert usual["exact"] == told["exact"]
    assert usual["memory"]["entries"] == told["memory"]["entries"]
    # (the bytes: each session's own, as the upstream's answer ids differ in length)
    assert told["memory"]["bytes"] == told["sizes"]
    assert usual["memory"]["bytes"] == usual["sizes"]


async def test_a_miss_told_at_enter_stores_its_entry_unmade_until_read(gw: Any) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x",
                                  max_retries=0, timeout=10) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="up/gpt-4o-mini", messages=HI, temperature=0, max_tokens=50)
    answer = raw.parse().choices[0].message.content
    memory = gw.client.app[CACHE].backends[0]
    [(key, item)] = memory._items.items()
    _, kept, size, body, name, model, created, cost, expires, stream = item
    assert kept is None  # not made yet: what it is made of follows, in the one tuple
    assert (name, model, stream, created + 3600.0) == ("openai", "up/gpt-4o-mini", False,
                                                       expires)
    assert isinstance(body, bytes) and cost is not None
    made = await memory.get(key)
    entry = orjson.loads(made)
    assert entry["v"] == entries.BODY_VERSION and entry["model"] == "up/gpt-4o-mini"
    assert entry["body"]["choices"][0]["message"]["content"] == answer
    assert len(made) + key_size(key) <= size  # the bound it counted as until then (with its key)
    assert memory._items[key][1] == made and memory._items[key][2] == len(made) + key_size(key)


async def test_the_built_in_path_is_taken_only_with_memory_alone_and_no_stage_before(
        gw: Any) -> None:
    from omniroute.cache.memory import MemoryCache
    from omniroute.cache.service import ResponseCache
    from omniroute.cache.sqlite import SqliteCache

    memory = MemoryCache({})
    assert CacheStage(ResponseCache([memory]), lambda: None).memory is memory  # type: ignore
    both = ResponseCache([memory, SqliteCache({"path": ":memory:"})])
    assert CacheStage(both, lambda: None).memory is None  # type: ignore

    class Mine(MemoryCache):
        name = "mine"

    assert CacheStage(ResponseCache([Mine({})]), lambda: None).memory is None  # type: ignore


def test_a_told_miss_keeps_the_pipeline_off_its_loops_over_the_runs() -> None:
    """A miss told at ``enter`` overrides no hook the pipeline loops over (``before``,
    ``routed``, ``answer``): its pass-through JSON answer reaches it through ``ctx.tap``
    (``passed``, from the chat operation's ``on_win``), a stream's blocks as they are
    handed to the relay (``chunk``), which the session above checks are stored all the
    same; a request whose other runs do not act skips those loops."""
    from omniroute.cache.runs import CacheMissRun, CacheMissStreamRun, CacheRun

    assert not CacheMissRun.acts and not CacheMissStreamRun.acts
    assert CacheRun.acts  # (its before looks the key up)
    # a pass-through stream's blocks reach it through the tap too: the relay awaits no
    # frame hook of the cache's, a coroutine a chunk
    assert not CacheMissStreamRun.sees_frames


def test_a_miss_run_made_by_its_function_is_what_its_class_makes() -> None:
    """``miss_run`` (the told misses' maker: no ``__init__`` called through C) gives the
    runs their classes' own ``__init__`` gives."""
    from omniroute.cache.runs import CacheMissRun, CacheMissStreamRun, miss_run

    stage: Any = object()
    key = (b'{"model":"m"}', "openai", "", "m", "q")
    for stream, cls in ((False, CacheMissRun), (True, CacheMissStreamRun)):
        made = miss_run(stream, stage, key, 60.0, 1000, "q")
        built = cls(stage, key, 60.0, 1000, "q")
        assert type(made) is cls
        assert {name: getattr(built, name) for name in vars(made)} == vars(made)
        assert vars(built).items() <= vars(made).items()
        made.chunk(b"data: x\n\n")
        assert made.frames == ([b"data: x\n\n"] if stream else ())
