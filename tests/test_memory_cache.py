"""The in-memory cache: LRU by entries and by bytes, TTL, options."""

from __future__ import annotations

from typing import Any

import pytest

from omniroute.cache import entry as entries
from omniroute.cache.key import RAW_MAX
from omniroute.cache.memory import MemoryCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_memory_cache_lru_by_entries() -> None:
    cache = MemoryCache({"max_entries": 2})
    await cache.set("a", b"1")
    await cache.set("b", b"2")
    assert await cache.get("a") == b"1"  # a is now the most recent
    await cache.set("c", b"3")
    assert await cache.get("b") is None  # the least recently used went
    assert await cache.get("a") == b"1" and await cache.get("c") == b"3"
    stats = await cache.stats()
    assert stats["entries"] == 2 and stats["evictions"] == 1


async def test_memory_cache_lru_by_bytes() -> None:
    cache = MemoryCache({"max_bytes": 10})  # an entry is its value and its key: 4 + 1 here
    await cache.set("a", b"xxxx")
    await cache.set("b", b"yyyy")
    await cache.set("a", b"zzzz")  # replacing counts the new size only
    assert (await cache.stats())["bytes"] == 10
    await cache.set("c", b"wwww")
    assert await cache.get("b") is None  # b was least recently used
    assert await cache.get("a") == b"zzzz"
    assert (await cache.stats())["bytes"] == 10
    await cache.set("huge", b"h" * 7)  # 11 with its key: bigger than the whole cache, not
    assert await cache.get("huge") is None  # stored, no eviction
    assert (await cache.stats())["entries"] == 2
    assert await cache.delete("a") is True and await cache.delete("a") is False
    assert (await cache.stats())["bytes"] == 5
    await cache.clear()
    assert (await cache.stats())["entries"] == 0 and (await cache.stats())["bytes"] == 0


async def test_a_key_kept_as_a_requests_bytes_counts_against_the_byte_bound() -> None:
    """A short text request's key is its JSON array itself (up to ``key.RAW_MAX`` bytes):
    the cache holds it as much as the answer, so ``max_bytes`` bounds both."""
    cache = MemoryCache({"max_bytes": 2 * (RAW_MAX + 10)})
    first, second, third = (bytes([n]) * RAW_MAX for n in b"abc")
    cache.put(first, b"x" * 10)
    cache.put_later(second, (b"{}", "openai", "m", 1.0, None, 2.0, False), 10, 60)
    assert (await cache.stats())["bytes"] == 2 * (RAW_MAX + 10)
    cache.put(third, b"y" * 10)  # over the bound by its key alone: the oldest goes
    stats = await cache.stats()
    assert (stats["entries"], stats["evictions"], stats["bytes"]) == (2, 1, 2 * (RAW_MAX + 10))
    assert await cache.get(first) is None
    made = await cache.get(second)  # made now: its own size, and its key's
    assert made is not None
    assert (await cache.stats())["bytes"] == RAW_MAX + 10 + len(made) + RAW_MAX


async def test_memory_cache_ttl_and_stats() -> None:
    clock = Clock()
    cache = MemoryCache({"ttl": 10}, clock=clock)
    await cache.set("default", b"d")
    await cache.set("short", b"s", ttl=1)
    clock.now += 0.999
    assert await cache.get("short") == b"s"
    clock.now += 0.001
    assert await cache.get("short") is None
    clock.now += 8.99
    assert await cache.get("default") == b"d"
    clock.now += 0.01
    assert await cache.get("default") is None
    stats = await cache.stats()
    assert (stats["hits"], stats["misses"], stats["entries"], stats["bytes"]) == (2, 2, 0, 0)
    assert await cache.get("never") is None
    assert (await cache.stats())["misses"] == 3


@pytest.mark.parametrize("options", [{"max_entries": 0}, {"max_bytes": -1}, {"ttl": 0}])
def test_memory_cache_rejects_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MemoryCache(options)


async def test_an_entry_put_later_is_made_when_first_read_and_counted_by_its_bound() -> None:
    """``put_later`` (the response cache's miss on the built-in path): the entry's bytes
    (``entry.dump_body`` of what it was given) are made once, when the entry is first
    read (a hit, or a listing); until then it counts as the bound it was given, then as
    its own size."""
    cache = MemoryCache({"max_bytes": 1000})

    def answer(body: bytes, stream: bool = False) -> tuple[Any, ...]:
        return (body, "openai", "m", 1.0, None, 2.0, stream)

    cache.put_later("a", answer(b'{"a":1}'), 300, 60)
    cache.put_later("b", answer(b"data: x\n\n", stream=True), 300, 60)
    assert (await cache.stats())["bytes"] == 602  # (with their keys: one byte each)
    made_a = entries.dump_body(b'{"a":1}', "openai", "m", 1.0, None, 2.0)
    made_b = entries.dump_body(b"data: x\n\n", "openai", "m", 1.0, None, 2.0, stream=True)
    assert await cache.get("a") == made_a and await cache.get("a") == made_a
    assert cache._items["a"][1] is await cache.get("a")  # made once, kept
    assert (await cache.stats())["bytes"] == 301 + len(made_a) + 1  # a's own size now
    [listed_a, listed_b] = await cache.entries(10)
    assert (listed_a.key, listed_a.value, listed_a.hits) == ("a", made_a, 3)
    assert (listed_b.key, listed_b.value, listed_b.hits) == ("b", made_b, 0)
    assert (await cache.stats())["bytes"] == len(made_a) + len(made_b) + 2
    cache.put_later("a", answer(b"{}"), 200, 60)  # replaced: a new entry, no hits yet
    assert (await cache.stats())["bytes"] == 201 + len(made_b) + 1
    assert [e.hits for e in await cache.entries(10)] == [0, 0]
    assert await cache.delete("b") and (await cache.stats())["bytes"] == len(
        entries.dump_body(b"{}", "openai", "m", 1.0, None, 2.0)) + 1
    cache.put_later("big", answer(b"{}"), 998, 60)  # 1001 with its key: over the whole cache
    assert await cache.get("big") is None


async def test_entries_put_later_are_evicted_by_their_bound_and_expire() -> None:
    clock = Clock()
    cache = MemoryCache({"max_bytes": 250, "max_entries": 3}, clock=clock)
    answer = (b"{}", "openai", "m", 1.0, None, 2.0, False)
    for key in "abc":
        cache.put_later(key, answer, 100, 60)  # 300 bytes by their bounds: a goes
    assert await cache.get("a") is None and (await cache.stats())["evictions"] == 1
    cache.put_later("d", answer, 1, 60)
    cache.put_later("e", answer, 1, 60)  # four entries: the oldest (b) goes
    assert await cache.get("b") is None and await cache.get("c") is not None
    clock.now += 61
    assert await cache.get("c") is None and await cache.entries(10) == []
    assert (await cache.stats())["bytes"] == 4  # d and e (1 + a 1-byte key each), dropped
    # when read or evicted


async def test_an_evicted_entry_takes_its_hits_and_bytes_with_it() -> None:
    cache = MemoryCache({"max_entries": 2, "max_bytes": 100})
    await cache.set("a", b"1" * 10)
    assert await cache.get("a") is not None  # a hit: counted for a
    cache.put_later("b", (b"{}", "openai", "m", 1.0, None, 2.0, False), 20, 60)
    await cache.set("c", b"3" * 30)  # three entries: a, the least recently used, goes
    assert await cache.get("a") is None
    stats = await cache.stats()
    assert (stats["entries"], stats["bytes"], stats["evictions"]) == (2, 52, 1)  # (+ keys)
    await cache.set("a", b"4" * 60)  # 113 bytes: b goes (c was stored after it)
    assert [(e.key, e.hits) for e in await cache.entries(10)] == [("a", 0), ("c", 0)]
    stats = await cache.stats()
    assert (stats["entries"], stats["bytes"], stats["evictions"]) == (2, 92, 2)


async def test_an_entry_kept_by_its_key_bytes_is_listed_and_deleted_by_its_name() -> None:
    from omniroute.cache.key import key_name

    cache = MemoryCache({})
    raw = b'["t","m",[],[["user","hi"]],[null,null,0,null,null,[],null,null,null]]'
    await cache.set(raw, b"entry")
    await cache.set("f" * 32, b"other")  # a name: kept as it is
    assert cache.absent(b'["u"]') and not cache.absent(raw)
    assert [e.key for e in await cache.entries(10)] == ["f" * 32, key_name(raw)]
    assert not await cache.delete("0" * 32)  # a name no entry's bytes have
    assert await cache.delete(key_name(raw)) and await cache.get(raw) is None
    assert await cache.delete("f" * 32) and (await cache.stats())["entries"] == 0
