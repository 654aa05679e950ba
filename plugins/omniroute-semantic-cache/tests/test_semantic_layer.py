"""The semantic layer with deterministic embedders: thresholds, guards, scopes, bounds,
persistence, and failing open."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from omniroute import LayerHit
from semantic_testkit import Clock, Layers, ScriptedEmbedder, SlowEmbedder, make_key

from omniroute_semantic_cache.embedders import HashingEmbedder

ANSWER = b'{"answer": "Paris"}'


async def test_threshold_boundary_is_exact(layers: Layers) -> None:
    embedder = ScriptedEmbedder({"stored question": 1.0, "similar question": 0.951,
                                 "far question": 0.949})
    layer = await layers.make(embedder)
    await layer.store(make_key("stored question"), ANSWER, 3600)

    hit = await layer.lookup(make_key("similar question"))
    assert hit is not None and hit.entry == ANSWER
    assert hit.similarity == pytest.approx(0.951, abs=1e-6)
    assert await layer.lookup(make_key("far question")) is None
    assert layer.outcomes["miss"] == 1

    layers.set(semantic_cache_threshold=0.949)  # read on every lookup
    assert await layer.lookup(make_key("far question")) is not None


async def test_the_same_question_reworded_hits_and_only_the_prompt_is_embedded(
        layers: Layers) -> None:
    layer = await layers.make(HashingEmbedder())
    await layer.store(make_key("What is the capital of France?"), ANSWER, 3600)
    hit = await layer.lookup(make_key("  what is the CAPITAL of france "))
    assert hit == LayerHit(ANSWER, pytest.approx(1.0, abs=1e-6))
    assert await layer.lookup(make_key("How do volcanoes form?")) is None


@pytest.mark.parametrize(("stored", "asked", "guard"), [
    ("convert 100 F to C", "convert 100 C to F", "units"),
    ("enable 2FA", "disable 2FA", "polarity"),
    ("use Docker for the build", "do not use Docker for the build", "negation"),
    ("what is 15% of 80", "what is 15% of 90", "numbers"),
    ("weather in Paris today", "weather in Paris tomorrow", "time"),
    ('rename "alpha" to beta', 'rename "gamma" to beta', "quoted"),
    ("translate english to french", "translate french to english", "direction"),
    ("sort the list ascending", "sort the list descending", "polarity"),
])
async def test_guards_refuse_near_misses_above_the_threshold(
        layers: Layers, stored: str, asked: str, guard: str) -> None:
    # the embedder says they are near-identical (as MiniLM does: 0.991 for the first pair)
    layer = await layers.make(ScriptedEmbedder({stored: 1.0, asked: 0.991}))
    await layer.store(make_key(stored), ANSWER, 3600)
    assert await layer.lookup(make_key(asked)) is None
    assert layer.outcomes[f"guard:{guard}"] == 1


async def test_a_refused_neighbour_does_not_hide_an_agreeing_one(layers: Layers) -> None:
    embedder = ScriptedEmbedder({"disable 2FA now": 1.0, "enable 2FA now": 0.99,
                                 "please enable 2FA now": 0.97})
    layer = await layers.make(embedder)
    await layer.store(make_key("disable 2FA now"), b"off", 3600)
    await layer.store(make_key("please enable 2FA now"), b"on", 3600)
    hit = await layer.lookup(make_key("enable 2FA now"))
    assert hit is not None and hit.entry == b"on"


@pytest.mark.parametrize("other", [{"tenant": "key-2"}, {"model": "gpt-4o"},
                                   {"scope": "scope-b"}])
async def test_scopes_never_share(layers: Layers, other: dict[str, str]) -> None:
    layer = await layers.make()
    await layer.store(make_key("What is the capital of France?"), ANSWER, 3600)
    assert await layer.lookup(make_key("What is the capital of France?", **other)) is None
    assert await layer.lookup(make_key("What is the capital of France?")) is not None
    # different tenants with the same core scope hash still get different indexes
    assert layer.scope(make_key("x", tenant="a")) != layer.scope(make_key("x", tenant="b"))


@pytest.mark.parametrize(("prompt", "flags", "why"), [
    ("What is the capital of France?", {"multi_turn": True}, "multi-turn"),
    ("What is the capital of France?", {"has_tools": True}, "tools"),
    ("What is the capital of France?", {"has_media": True}, "media"),
    ("explain ```print(1)```", {}, "code"),
    ("def f(x):\n    return {x;}", {}, "code"),
    ("summarise https://example.com/page", {}, "url"),
    ("   ", {}, "empty"),
    ("word " * 3000, {}, "long"),
])
async def test_requests_it_never_answers_nor_keeps(
        layers: Layers, prompt: str, flags: dict[str, bool], why: str) -> None:
    embedder = ScriptedEmbedder({})
    layer = await layers.make(embedder)
    await layer.store(make_key(prompt, **flags), ANSWER, 3600)
    assert (await layer.stats())["entries"] == 0
    assert await layer.lookup(make_key(prompt, **flags)) is None
    assert layer.outcomes[f"skip:{why}"] == 1
    assert embedder.encoded == []  # refused before the worker


async def test_a_prompt_over_the_token_window_is_refused_by_the_tokenizer(
        layers: Layers) -> None:
    layer = await layers.make(ScriptedEmbedder({}, max_tokens=8))
    long_prompt = "one two three four five six seven eight nine ten"  # 10 tokens > 8
    await layer.store(make_key(long_prompt), ANSWER, 3600)
    assert await layer.lookup(make_key(long_prompt)) is None
    assert layer.outcomes["store:long"] == 1 and layer.outcomes["skip:long"] == 1
    assert (await layer.stats())["entries"] == 0


async def test_ttl_with_an_injected_clock(layers: Layers, clock: Clock) -> None:
    layer = await layers.make()
    await layer.store(make_key("What is the capital of France?"), ANSWER, 10)
    clock.now += 9
    assert await layer.lookup(make_key("What is the capital of France?")) is not None
    clock.now += 2
    assert await layer.lookup(make_key("What is the capital of France?")) is None
    clock.now += 60  # the sweep deletes it, from the file and the index
    assert await layer.lookup(make_key("What is the capital of France?")) is None
    stats = await layer.stats()
    assert stats["entries"] == 0 and stats["scopes"] == 0


async def test_least_recently_used_go_first(layers: Layers, clock: Clock) -> None:
    layers.set(semantic_cache_max_entries=3)
    layer = await layers.make()
    prompts = ["How do volcanoes form?", "Why is the sky blue?", "What is photosynthesis?",
               "Who wrote Hamlet?"]
    for prompt in prompts[:3]:
        clock.now += 1
        await layer.store(make_key(prompt), prompt.encode(), 3600)
    clock.now += 1
    assert await layer.lookup(make_key(prompts[0])) is not None  # used: now the newest
    clock.now += 1
    await layer.store(make_key(prompts[3]), b"x", 3600)  # 4 > 3: down to 95% (2)
    kept = [p for p in prompts if await layer.lookup(make_key(p)) is not None]
    assert kept == [prompts[0], prompts[3]]
    stats = await layer.stats()
    assert stats["entries"] == 2 and len(layer._index or ()) == 2  # index == file


async def test_bounded_by_bytes(layers: Layers, clock: Clock) -> None:
    layers.set(semantic_cache_max_bytes=1000)
    layer = await layers.make()
    await layer.store(make_key("Why is the sky blue?"), b"x" * 1001, 3600)  # never fits
    assert (await layer.stats())["entries"] == 0
    for i, prompt in enumerate(["How do volcanoes form?", "Why is the sky blue?",
                                "Who wrote Hamlet?"]):
        clock.now += 1
        await layer.store(make_key(prompt), bytes([i]) * 400, 3600)
    stats = await layer.stats()
    assert stats["bytes"] <= 950 and stats["entries"] == 2
    assert await layer.lookup(make_key("How do volcanoes form?")) is None


async def test_storing_the_same_request_again_replaces_it(layers: Layers) -> None:
    layer = await layers.make()
    await layer.store(make_key("Why is the sky blue?"), b"old", 3600)
    await layer.store(make_key("Why is the sky blue?"), b"new", 3600)
    hit = await layer.lookup(make_key("Why is the sky blue?"))
    assert hit is not None and hit.entry == b"new"
    assert (await layer.stats())["entries"] == 1 and len(layer._index or ()) == 1


async def test_entries_survive_a_restart_and_the_index_is_rebuilt(
        layers: Layers, clock: Clock) -> None:
    first = await layers.make()
    await first.store(make_key("What is the capital of France?"), ANSWER, 3600)
    await first.store(make_key("Who wrote Hamlet?", tenant="key-2"), b"Shakespeare", 3600)
    await first.store(make_key("Why is the sky blue?"), b"short-lived", 5)
    await first.close()
    clock.now += 10

    second = await layers.make()
    stats = await second.stats()
    assert stats["entries"] == 2 and stats["scopes"] == 2  # the expired one went at start
    hit = await second.lookup(make_key("what is the capital of France"))
    assert hit is not None and hit.entry == ANSWER
    hit = await second.lookup(make_key("Who wrote Hamlet?", tenant="key-2"))
    assert hit is not None and hit.entry == b"Shakespeare"
    assert await second.lookup(make_key("Who wrote Hamlet?")) is None


async def test_another_embedders_rows_are_dropped_at_start(layers: Layers) -> None:
    first = await layers.make(HashingEmbedder())
    await first.store(make_key("Who wrote Hamlet?"), b"Shakespeare", 3600)
    await first.close()
    second = await layers.make(ScriptedEmbedder({}))
    assert (await second.stats())["entries"] == 0
    with sqlite3.connect(layers.path) as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone() == (0,)


async def test_clear(layers: Layers) -> None:
    layer = await layers.make()
    await layer.store(make_key("Who wrote Hamlet?"), b"Shakespeare", 3600)
    await layer.clear()
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None
    stats = await layer.stats()
    assert stats["entries"] == 0 and stats["scopes"] == 0


async def test_delete_by_exact_key(layers: Layers) -> None:
    layer = await layers.make()
    hamlet, ocean = make_key("Who wrote Hamlet?"), make_key("How deep is the ocean?")
    await layer.store(hamlet, b"Shakespeare", 3600)
    await layer.store(ocean, b"Very deep", 3600)
    assert await layer.delete(hamlet.exact) is True
    assert await layer.delete(hamlet.exact) is False  # already gone
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None  # out of the index too
    assert (await layer.lookup(make_key("How deep is the ocean?"))) is not None
    assert (await layer.stats())["entries"] == 1


async def test_delete_reaches_the_file_before_the_layer_serves(layers: Layers) -> None:
    """``DELETE /api/cache/entries/{key}`` while the layer is off (or its model still
    loads) deletes the row of an earlier run: it must not answer once the layer serves."""
    hamlet = make_key("Who wrote Hamlet?")
    first = await layers.make()
    await first.store(hamlet, b"Shakespeare", 3600)
    await first.close()

    layers.set(semantic_cache=False)
    layer = await layers.make(start=False)
    assert await layer.delete(hamlet.exact) is True
    assert await layer.delete(hamlet.exact) is False
    layers.set(semantic_cache=True)
    assert await layer.ready(10.0)
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None
    assert (await layer.stats())["entries"] == 0


async def test_delete_while_the_model_loads_waits_for_it_not_the_caller(
        layers: Layers) -> None:
    hamlet = make_key("Who wrote Hamlet?")
    first = await layers.make()
    await first.store(hamlet, b"Shakespeare", 3600)
    await first.close()

    class SlowLoad(HashingEmbedder):
        def __init__(self, delay: float) -> None:
            self.delay = delay

        def load(self) -> None:
            time.sleep(self.delay)

    layer = await layers.make(SlowLoad(0.5), start=False)
    layer.start()
    assert layer.state == "loading"
    assert await layer.delete(hamlet.exact) is True  # waited behind the load (0.5 s)
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None

    again = await layers.make(SlowLoad(3.0), start=False)
    await again.store(hamlet, b"Shakespeare", 3600)  # (not ready: not kept)
    await layer.store(hamlet, b"Shakespeare", 3600)
    await layer.close()
    again.start()
    started = time.perf_counter()
    assert await again.delete(hamlet.exact) is False  # not done within 2 s: not waited
    assert time.perf_counter() - started < 2.5
    assert await again.ready(10.0)
    assert await again.lookup(make_key("Who wrote Hamlet?")) is None  # deleted meanwhile
    assert (await again.stats())["entries"] == 0


async def test_delete_while_off_creates_no_file(layers: Layers) -> None:
    layers.set(semantic_cache=False)
    layer = await layers.make(start=False)
    assert await layer.delete("0" * 64) is False
    assert not layers.path.exists()


async def test_off_by_default_and_turned_on_at_run_time(layers: Layers) -> None:
    layers.set(semantic_cache=False)
    layer = await layers.make(start=False)
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None
    await layer.store(make_key("Who wrote Hamlet?"), b"Shakespeare", 3600)
    assert layer.state == "off" and layer.outcomes == {}  # nothing loaded, nothing counted

    layers.set(semantic_cache=True)
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None  # starts loading
    assert layer.outcomes["skip:not-ready"] == 1
    assert await layer.ready(10.0)
    await layer.store(make_key("Who wrote Hamlet?"), b"Shakespeare", 3600)
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is not None


async def test_a_model_that_fails_to_load_leaves_the_layer_off(layers: Layers) -> None:
    class Broken(HashingEmbedder):
        def load(self) -> None:
            raise OSError("weights missing")

    layer = SemanticLayerOf(layers, Broken())
    assert not await layer.ready(10.0)
    stats = await layer.stats()
    assert stats["state"] == "failed" and "weights missing" in stats["error"]
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None


def SemanticLayerOf(layers: Layers, embedder: HashingEmbedder):  # type: ignore[no-untyped-def]
    from omniroute_semantic_cache.layer import SemanticLayer

    layer = SemanticLayer(layers.path, lambda: layers.settings, embedder, clock=layers.clock)
    layers.made.append(layer)
    return layer


async def test_a_slow_encoder_fails_open_within_the_timeout(layers: Layers) -> None:
    layers.set(semantic_cache_timeout=0.05)
    layer = await layers.make(SlowEmbedder(0.4))
    started = time.perf_counter()
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None
    assert time.perf_counter() - started < 0.3
    assert layer.outcomes["timeout"] == 1


async def test_a_full_queue_fails_open_at_once(layers: Layers) -> None:
    layers.set(semantic_cache_queue=1, semantic_cache_timeout=2)
    layer = await layers.make(SlowEmbedder(0.3))
    first = asyncio.create_task(layer.lookup(make_key("Who wrote Hamlet?")))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    assert await layer.lookup(make_key("Why is the sky blue?")) is None
    assert time.perf_counter() - started < 0.05
    assert layer.outcomes["busy"] == 1
    assert await first is None
    assert layer.outcomes["miss"] == 1


async def test_the_loop_keeps_running_while_a_prompt_is_encoded(layers: Layers) -> None:
    layers.set(semantic_cache_timeout=2)
    layer = await layers.make(SlowEmbedder(0.3))
    lags: list[float] = []

    async def tick() -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before - 0.005)

    ticker = asyncio.create_task(tick())
    await layer.lookup(make_key("Who wrote Hamlet?"))
    ticker.cancel()
    assert len(lags) > 20  # ticked all along the 0.3 s encode
    assert max(lags) < 0.1  # an encode on the loop would have stalled it 0.3 s


async def test_stats(layers: Layers) -> None:
    layer = await layers.make()
    await layer.store(make_key("Who wrote Hamlet?"), b"Shakespeare", 3600)
    await layer.lookup(make_key("Who wrote Hamlet?"))
    await layer.lookup(make_key("Why is the sky blue?"))
    stats = await layer.stats()
    assert stats | {"outcomes": None} == {
        "enabled": True, "state": "ready", "error": None, "embedder": "hashing-test-v1",
        "threshold": 0.95, "entries": 1, "bytes": 11, "max_entries": 50_000,
        "max_bytes": 200 * 1024 * 1024, "scopes": 1, "hits": 1, "misses": 1, "queued": 0,
        "outcomes": None}
    assert stats["outcomes"] == {"store": 1, "hit": 1, "miss": 1}


async def test_closed_layer_misses(layers: Layers) -> None:
    layer = await layers.make()
    await layer.close()
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None
    await layer.clear()  # nothing to do, and no error
