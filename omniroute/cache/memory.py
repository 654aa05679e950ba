"""Cache backend ``memory``: an in-process LRU bounded by entries and bytes, with TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from omniroute.cache.base import CacheBackend, Listed
from omniroute.hookspecs import hookimpl


class _Item:
    __slots__ = ("expires", "hits", "value")

    def __init__(self, expires: float, value: bytes) -> None:
        self.expires = expires
        self.value = value
        self.hits = 0


class MemoryCache(CacheBackend):
    """Least-recently-used eviction once ``max_entries`` or ``max_bytes`` is passed.

    Options: ``max_entries`` (default 1000), ``max_bytes`` (default 64 MiB),
    ``ttl`` seconds (default 3600). An expired entry is dropped when it is read,
    or evicted as the least recently used.
    """

    name = "memory"
    description = "In-process LRU cache (lost on restart, not shared between workers)"

    def __init__(self, options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(options)
        self.max_entries = int(self.options.get("max_entries", 1000))
        self.max_bytes = int(self.options.get("max_bytes", 64 * 1024 * 1024))
        self.ttl = float(self.options.get("ttl", 3600))
        if self.max_entries < 1 or self.max_bytes < 1 or self.ttl <= 0:
            raise ValueError("max_entries, max_bytes and ttl must be positive")
        self._clock = clock
        self._items: OrderedDict[str, _Item] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    async def get(self, key: str) -> bytes | None:
        item = self._items.get(key)
        if item is None or item.expires <= self._clock():
            if item is not None:
                self._drop(key)
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        item.hits += 1
        return item.value

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.put(key, value, ttl)

    def put(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        size = len(value)
        if size > self.max_bytes:
            return True  # larger than the whole cache: never stored
        items = self._items
        old = items.pop(key, None)
        total = self._bytes + size if old is None else self._bytes + size - len(old.value)
        items[key] = _Item(self._clock() + (ttl if ttl is not None else self.ttl), value)
        self._bytes = total
        if total > self.max_bytes or len(items) > self.max_entries:
            self._evict()
        return True

    def _evict(self) -> None:
        """Drop the least recently used entries until both bounds hold."""
        items = self._items
        while len(items) > self.max_entries or self._bytes > self.max_bytes:
            self._drop(next(iter(items)))
            self.evictions += 1

    async def delete(self, key: str) -> bool:
        if key not in self._items:
            return False
        self._drop(key)
        return True

    async def clear(self) -> None:
        self._items.clear()
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
            if item.expires > now:
                out.append(Listed(key, item.value, item.hits, item.expires - now))
                if len(out) >= limit:
                    break
        return out

    def _drop(self, key: str) -> None:
        item = self._items.pop(key)
        self._bytes -= len(item.value)


@hookimpl
def register_cache_backends(register: Callable[[type[CacheBackend]], None]) -> None:
    register(MemoryCache)
