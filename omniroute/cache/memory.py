"""Cache backend ``memory``: an in-process LRU bounded by entries and bytes, with TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from omniroute.cache.base import CacheBackend, Listed
from omniroute.cache.entry import dump_body
from omniroute.cache.key import Exact, key_name
from omniroute.hookspecs import hookimpl


class MemoryCache(CacheBackend):
    """Least-recently-used eviction once ``max_entries`` or ``max_bytes`` is passed.

    Options: ``max_entries`` (default 1000), ``max_bytes`` (default 64 MiB),
    ``ttl`` seconds (default 3600). An expired entry is dropped when it is read,
    or evicted as the least recently used.

    An entry is an ``(expires, value, size)`` tuple, its hits counted apart (only hits
    touch them): storing a miss's answer builds no object of its own. A value is bytes, or
    (:meth:`put_later`, the response cache's miss on the built-in path) what they are made
    of: made when the entry is first read, so that an answer never asked for again (most
    misses) is never serialized; ``size`` is then the bound it was stored with. An entry's
    size counts its key too: a key kept as a request's bytes (up to
    :data:`~omniroute.cache.key.RAW_MAX`) is held by the cache as much as the answer is.
    """

    name = "memory"
    description = "In-process LRU cache (lost on restart, not shared between workers)"
    #: keyed by a short text request's JSON array itself (:data:`~omniroute.cache.key.
    #: Exact`): a miss never hashes it; its name is made when it is listed or deleted
    raw_keys = True

    def __init__(self, options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(options)
        self.max_entries = int(self.options.get("max_entries", 1000))
        self.max_bytes = int(self.options.get("max_bytes", 64 * 1024 * 1024))
        self.ttl = float(self.options.get("ttl", 3600))
        if self.max_entries < 1 or self.max_bytes < 1 or self.ttl <= 0:
            raise ValueError("max_entries, max_bytes and ttl must be positive")
        self._clock = clock
        self._items: OrderedDict[Exact, tuple[float, bytes | tuple[Any, ...], int]] = \
            OrderedDict()
        #: the hits of each entry hit at least once
        self._hits: dict[Exact, int] = {}
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    def absent(self, key: Exact) -> bool:
        if key in self._items:
            return False
        self.misses += 1
        return True

    async def get(self, key: Exact) -> bytes | None:
        item = self._items.get(key)
        if item is None or item[0] <= self._clock():
            if item is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        hits = self._hits
        hits[key] = hits.get(key, 0) + 1
        value = item[1]
        return value if type(value) is bytes else self._made(key, item)

    async def set(self, key: Exact, value: bytes, ttl: float | None = None) -> None:
        self.put(key, value, ttl)

    def put(self, key: Exact, value: bytes, ttl: float | None = None) -> bool:
        size = len(value) + len(key)
        if size <= self.max_bytes:  # (larger than the whole cache: never stored)
            self._keep(key, value, size, ttl if ttl is not None else self.ttl)
        return True

    def put_later(self, key: Exact, answer: tuple[Any, ...], size: int, ttl: float) -> None:
        """:meth:`put` an entry whose bytes are made when it is first read (a hit, a
        listing): ``answer`` is what :func:`~omniroute.cache.entry.dump_body` makes them
        of (its arguments, ``stream`` last), at most ``size`` of them: it counts as ``size``
        bytes until then. The response cache's miss uses it when this is its only backend:
        most answers are never asked for again, and theirs are then never made. (A tuple
        of strings, bytes and numbers, not a callable: the garbage collector stops
        tracking it, where a ``partial`` kept per entry made its collections walk them
        all.)"""
        size += len(key)
        if size > self.max_bytes:
            return
        # (_keep written in: a miss's one call here)
        items = self._items
        old = items.pop(key, None)
        if old is not None:
            self._bytes -= old[2]
            self._hits.pop(key, None)
        items[key] = (self._clock() + ttl, answer, size)
        total = self._bytes = self._bytes + size
        if total > self.max_bytes or len(items) > self.max_entries:
            self._evict()

    def _keep(self, key: Exact, value: bytes | tuple[Any, ...], size: int, ttl: float) -> None:
        """Store ``value`` as ``size`` bytes for ``ttl`` seconds (replacing ``key``'s
        entry: a new one, no hits yet), then evict down to both bounds."""
        items = self._items
        old = items.pop(key, None)
        if old is not None:
            self._bytes -= old[2]
            self._hits.pop(key, None)
        items[key] = (self._clock() + ttl, value, size)
        total = self._bytes = self._bytes + size
        if total > self.max_bytes or len(items) > self.max_entries:
            self._evict()

    def _made(self, key: Exact, item: tuple[float, bytes | tuple[Any, ...], int]) -> bytes:
        """The bytes of an entry kept by :meth:`put_later`, made now and kept in its place
        (its size corrected to theirs)."""
        answer = item[1]
        assert isinstance(answer, tuple)
        value = dump_body(*answer[:-1], stream=answer[-1])
        size = len(value) + len(key)
        self._items[key] = (item[0], value, size)
        self._bytes += size - item[2]
        return value

    def _evict(self) -> None:
        """Drop the least recently used entries until both bounds hold."""
        items, hits = self._items, self._hits
        max_entries, max_bytes = self.max_entries, self.max_bytes
        total, evicted = self._bytes, 0
        while len(items) > max_entries or total > max_bytes:
            key, item = items.popitem(last=False)
            total -= item[2]
            evicted += 1
            if hits:  # (most entries are never hit: no lookup for them)
                hits.pop(key, None)
        self._bytes = total
        self.evictions += evicted

    async def delete(self, key: Exact) -> bool:
        if key not in self._items:
            if type(key) is not str:
                return False
            # a name (the management API's): the entry kept under the key it names, if
            # any (a scan, on a request of the management API only)
            key = next((k for k in self._items if type(k) is bytes and key_name(k) == key), b"")
            if not key:
                return False
        self._drop(key)
        return True

    async def clear(self) -> None:
        self._items.clear()
        self._hits.clear()
        self._bytes = 0

    async def stats(self) -> dict[str, Any]:
        return {"entries": len(self._items), "bytes": self._bytes, "max_entries": self.max_entries,
                "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                "evictions": self.evictions}

    async def entries(self, limit: int) -> list[Listed]:
        now = self._clock()
        out: list[Listed] = []
        for key in reversed(self._items):
            item = self._items[key]
            expires, value = item[0], item[1]
            if expires > now:
                if type(value) is not bytes:
                    value = self._made(key, item)
                out.append(Listed(key_name(key), value, self._hits.get(key, 0),
                                  expires - now))
                if len(out) >= limit:
                    break
        return out

    def _drop(self, key: Exact) -> None:
        size = self._items.pop(key)[2]
        self._hits.pop(key, None)
        self._bytes -= size


@hookimpl
def register_cache_backends(register: Callable[[type[CacheBackend]], None]) -> None:
    register(MemoryCache)
