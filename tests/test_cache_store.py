"""How a miss's answer is stored, and how a miss is answered without asking SQLite:
entries go into the backends that take them at once (``CacheBackend.put``) on the
request's path; the sqlite backend keeps the hashes of its file's keys, follows what
other processes write to the file, and never serves what the file does not hold."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from omniroute.cache import entry as entries
from omniroute.cache.base import CacheBackend
from omniroute.cache.memory import MemoryCache
from omniroute.cache.service import ResponseCache
from omniroute.cache.sqlite import SqliteCache
from omniroute.formats import canonical as c


class AwaitedBackend(CacheBackend):
    """A backend that must be awaited (as one over the network): no ``put``."""

    name = "awaited"

    def __init__(self) -> None:
        super().__init__({})
        self.items: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.items.get(key)

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        await asyncio.sleep(0)
        self.items[key] = value


async def test_an_entry_goes_into_memory_at_once_and_the_rest_to_the_writer() -> None:
    memory, awaited = MemoryCache({}), AwaitedBackend()
    cache = ResponseCache([memory, awaited])
    cache.store("k" * 64, b"entry", 60)  # (not started yet: no writer runs)
    assert await memory.get("k" * 64) == b"entry"
    assert awaited.items == {}
    stats = (await cache.stats())["exact"]
    assert stats["queued"] == 1 and stats["stored"] == 0
    await cache.start()
    await cache.settled(5)
    assert awaited.items == {"k" * 64: b"entry"}
    assert (await cache.stats())["exact"]["stored"] == 1
    await cache.close()


async def test_with_only_backends_that_take_it_at_once_nothing_is_queued() -> None:
    memory = MemoryCache({"max_entries": 2})
    cache = ResponseCache([memory])
    for n in range(3):
        cache.store(f"{n}" * 64, b"entry", 60)
    stats = await cache.stats()
    assert stats["exact"]["queued"] == 0 and stats["exact"]["stored"] == 3
    assert stats["backends"]["memory"]["entries"] == 2  # bounded as ever: the oldest out
    assert await memory.get("0" * 64) is None and await memory.get("2" * 64) == b"entry"


async def test_a_producer_is_still_made_and_stored_by_the_writer() -> None:
    memory = MemoryCache({})
    cache = ResponseCache([memory])
    await cache.start()

    async def produce() -> bytes | None:
        return b"made"

    cache.store("p" * 64, produce, 60)
    assert await memory.get("p" * 64) is None  # not made on the request's path
    await cache.settled(5)
    assert await memory.get("p" * 64) == b"made"
    await cache.close()


def _count_queries(monkeypatch: pytest.MonkeyPatch, backend: SqliteCache) -> list[str]:
    conn = backend._conn
    assert conn is not None
    calls: list[str] = []
    execute = conn.execute

    def counted(sql: str, *args: Any) -> Any:
        calls.append(sql)
        return execute(sql, *args)

    monkeypatch.setattr(conn, "execute", counted)
    return calls


async def test_a_sqlite_miss_asks_no_query(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "cache.sqlite3")
    first = SqliteCache({"path": path})
    await first.start()
    first.put("kept", b"v", 60)
    await first.close()
    again = SqliteCache({"path": path})
    await again.start()  # the file's keys are read at start
    calls = _count_queries(monkeypatch, again)
    assert await again.get("absent") is None
    assert calls == []
    assert await again.get("kept") == b"v"  # one it holds is read from the file
    assert len(calls) == 1
    assert (await again.stats())["misses"] == 1
    await again.close()


async def test_two_workers_on_one_file_see_each_others_entries(tmp_path: Path) -> None:
    """``--workers N`` share the file: what one writes, the other finds, read in by its
    writer's rounds (``follow``), also once rowids are given again after a clear or a
    delete; what is gone from the file is never served."""
    path = str(tmp_path / "cache.sqlite3")
    a, b = SqliteCache({"path": path}), SqliteCache({"path": path})
    await a.start()
    await b.start()
    a.put("k1", b"one", 60)
    a.put("k2", b"two", 60)
    await a.flush()
    await b.follow()
    assert await b.get("k1") == b"one" and await b.get("k2") == b"two"

    await a.delete("k2")  # the highest rowid is free again: k3 takes it
    a.put("k3", b"three", 60)
    await a.flush()
    await b.follow()
    assert await b.get("k3") == b"three"
    assert await b.get("k2") is None

    await a.clear()  # every rowid is free again
    a.put("k4", b"four", 60)
    await a.flush()
    await b.follow()
    assert await b.get("k4") == b"four"
    assert await b.get("k1") is None and await b.get("k3") is None
    await a.close()
    await b.close()


async def test_a_workers_writer_follows_the_file_on_its_own(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.sqlite3")
    a = SqliteCache({"path": path, "flush_every": 0.01})
    b = SqliteCache({"path": path, "flush_every": 0.01})
    await a.start()
    await b.start()
    for n in range(3):  # each round of writes is found by the other's writer in time
        await a.set(f"k{n}", f"{n}".encode(), 60)
        async with asyncio.timeout(5):
            while await b.get(f"k{n}") is None:
                await asyncio.sleep(0.01)
    await a.close()
    await b.close()



async def test_a_miss_told_at_once_is_counted_once_and_a_lookup_starts_behind_it(
        tmp_path: Path) -> None:
    """``ResponseCache.absent``: the backends in front that know they hold no entry (a
    dict, a set of key hashes) count their miss and are not asked again; the first that
    may hold it is where ``lookup`` starts (a sqlite hit is still promoted to memory)."""
    data = entries.dump(c.Response("r1", "m", [c.Text("Hi.")], "end_turn"), "m", 1.0, None)
    path = str(tmp_path / "cache.sqlite3")
    first = SqliteCache({"path": path})
    await first.start()
    first.put("kept", data, 60)
    await first.close()
    memory, sqlite = MemoryCache({}), SqliteCache({"path": path})
    cache = ResponseCache([memory, sqlite])
    await cache.start()
    assert cache.absent("new") == 2  # neither holds it: a miss without awaiting anything
    assert cache.absent("kept") == 1  # in the file: sqlite must be asked
    assert (await memory.stats())["misses"] == 2 and (await sqlite.stats())["misses"] == 1
    asked: list[str] = []
    get = memory.get

    async def counted(key: str) -> bytes | None:
        asked.append(key)
        return await get(key)

    memory.get = counted  # type: ignore[method-assign]
    found = await cache.lookup("kept", start=1)
    assert found is not None and found.source == "sqlite" and asked == []
    assert cache.absent("kept") == 0  # promoted: memory holds it now
    assert (await cache.lookup("kept")) is not None and asked == ["kept"]
    sqlite.put("queued", b"x", 60)
    assert not sqlite.absent("queued")  # queued for the file: held
    assert (await memory.stats())["misses"] == 2 and (await sqlite.stats())["misses"] == 1
    await cache.close()


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["m", "a\x00\x01" * 40, "é" * 50 + '"\\'])
def test_an_entry_is_never_larger_than_its_head_bound(stream: bool, model: str) -> None:
    """A miss on the built-in path counts its entry by this bound before it is made
    (``CacheStage.told``): it must never be less than the entry's real size."""
    answer = b'{"id":"x"}'
    for created, cost in ((-1.2345678901234567e-300, -1.2345678901234567e-300),
                          (1.7976931348623157e308, None), (1765000000.123456, 0.000123)):
        expires = created if created < 0 else created + 3600.000001
        data = entries.dump_body(answer, "openai\x01", model, created, cost, expires,
                                 stream=stream)
        assert len(data) <= len(answer) + entries.HEAD_BYTES + 6 * (len("openai\x01")
                                                                     + len(model))


async def test_a_short_text_key_is_kept_as_it_is_by_memory_and_named_for_the_rest(
        tmp_path: Path) -> None:
    """A short text request's exact key is its JSON array (``text_exact``): the memory
    backend keys its entry by those bytes, never hashing them on a miss; every other
    backend is given its name (``key_name``, the hex ``CacheKey.exact``), which the
    listing shows for both and the management API deletes by. A longer one is named at
    once. A hit behind memory is promoted into it under the bytes again."""
    from omniroute.cache.key import RAW_MAX, key_name, text_exact, text_key

    text: c.TextRequest = ([], [("user", "what is 2 + 2?")], (None,) * 9)
    raw = text_exact(text, "tenant", "up/m")
    assert isinstance(raw, bytes) and key_name(raw) == text_key(text, "tenant", "up/m")
    assert text_exact(text, "other", "up/m") != raw  # tenants never share a key
    long: c.TextRequest = ([], [("user", "x" * RAW_MAX)], (None,) * 9)
    assert text_exact(long, "tenant", "up/m") == text_key(long, "tenant", "up/m")  # a name
    data = entries.dump(c.Response("r1", "m", [c.Text("Hi.")], "end_turn"), "m", 1.0, None)
    memory = MemoryCache({})
    sqlite = SqliteCache({"path": str(tmp_path / "cache.sqlite3")})
    cache = ResponseCache([memory, sqlite])
    await cache.start()
    cache.store(raw, data, 60)
    await cache.settled(5)
    assert list(memory._items) == [raw]  # the bytes themselves
    assert await sqlite.get(key_name(raw)) == data  # its name
    rows = await cache.entries(10)
    assert [(row["key"], row["backends"]) for row in rows] == [
        (key_name(raw), ["memory", "sqlite"])]
    await memory.clear()
    assert cache.absent(raw) == 1  # memory tells its miss at once; sqlite holds the name
    found = await cache.lookup(raw, start=1)
    assert found is not None and found.source == "sqlite"
    assert list(memory._items) == [raw]  # promoted under the bytes
    assert await cache.delete(key_name(raw))  # the management API's name: both go
    assert not memory._items and await sqlite.get(key_name(raw)) is None
    assert not await cache.delete(key_name(raw))
    await cache.close()
