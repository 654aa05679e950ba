"""Cache backend ``memory``: an in-process LRU bounded by entries and bytes, with TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from omniroute.cache.base import CacheBackend, Listed
from omniroute.cache.entry import dump_body
from omniroute.cache.key import RAW_MAX, Asked, Exact, asked_exact, key_name
from omniroute.hookspecs import hookimpl

if TYPE_CHECKING:
    from omniroute.formats.base import Format

#: a key as the dict keeps it: exact, or a request's bytes (:data:`~omniroute.cache.key.Asked`)
Kept: TypeAlias = "Exact | Asked"


class MemoryCache(CacheBackend):
    """Least-recently-used eviction once ``max_entries`` or ``max_bytes`` is passed.

    Options: ``max_entries`` (default 1000), ``max_bytes`` (default 64 MiB),
    ``ttl`` seconds (default 3600). An expired entry is dropped when it is read,
    or evicted as the least recently used.

    An entry is an ``(expires, value, size)`` tuple, its hits counted apart (only hits
    touch them): storing a miss's answer builds no object of its own. A value is bytes, or
    None (:meth:`put_later`, the response cache's miss on the built-in path): what they are
    made of follows in the same tuple, ``(expires, None, size, *answer)``, and they are made
    when the entry is first read, so that an answer never asked for again (most misses) is
    never serialized; ``size`` is then the bound it was stored with. (One tuple a miss, not
    one inside another: every tuple kept counts towards the garbage collector's next young
    collection until one has run.) An entry's
    size counts its key too: a key kept as a request's bytes (up to
    :data:`~omniroute.cache.key.RAW_MAX`) is held by the cache as much as the answer is.

    The cache stage keeps a new text request's answer under the request's bytes (an
    :data:`~omniroute.cache.key.Asked` key, counted as twice their size: with its last user
    text), and every entry of a request whose last turn is a user's text is indexed by that
    text (``asked``): a request whose text is not there is a miss without an exact key
    made. A request with that text first gives those entries their exact keys
    (:meth:`resolve`, moving them to the most recently used end); the listing and the
    management API's delete name them as they are. An entry that goes leaves the index; an
    exact key indexed for an answer not kept after all is swept out (once the exact keys
    indexed are twice as many as at the last sweep).
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
        #: key -> ``(expires, value, size)``, or ``(expires, None, size, *answer)``
        self._items: OrderedDict[Kept, tuple[Any, ...]] = OrderedDict()
        #: the hits of each entry hit at least once
        self._hits: dict[Kept, int] = {}
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0
        #: the last user text of entries' requests -> their keys (one, or a list), texts
        #: of at most RAW_MAX characters (a longer one is never an ``Asked`` key's)
        self.asked: dict[str, Kept | list[Kept]] = {}
        #: the exact keys indexed, and their texts (an entry gone: taken out of the index)
        self._texts: dict[Exact, str] = {}
        self._sweep_at = 64
        #: the loaded formats (the cache stage's), which give an ``Asked`` key its exact key
        self.formats: Mapping[str, Format] | None = None

    def absent(self, key: Kept) -> bool:
        if key in self._items:
            return False
        self.misses += 1
        return True

    async def get(self, key: Kept) -> bytes | None:
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

    async def set(self, key: Kept, value: bytes, ttl: float | None = None) -> None:
        self.put(key, value, ttl)

    def put(self, key: Kept, value: bytes, ttl: float | None = None) -> bool:
        size = len(value) + key_size(key)
        if type(key) is tuple:
            self.index(key[4], key)
        if size <= self.max_bytes:  # (larger than the whole cache: never stored)
            self._keep(key, value, size, ttl if ttl is not None else self.ttl)
        return True

    def put_later(self, key: Kept, answer: tuple[Any, ...], size: int, ttl: float,
                  text: str | None = None) -> None:
        """:meth:`put` an entry whose bytes are made when it is first read (a hit, a
        listing): ``answer`` is what :func:`~omniroute.cache.entry.dump_body` makes them
        of (its arguments, ``stream`` last), at most ``size`` of them: it counts as ``size``
        bytes until then. The response cache's miss uses it when this is its only backend:
        most answers are never asked for again, and theirs are then never made. (A tuple
        of strings, bytes and numbers, not a callable: the garbage collector stops
        tracking it, where a ``partial`` kept per entry made its collections walk them
        all.) ``text``: the request's last user text, indexed (:attr:`asked`)."""
        items = self._items
        if type(key) is tuple:
            size += 2 * len(key[0])
            if size > self.max_bytes:
                return
            if self.asked.setdefault(key[4], key) is key:
                # a text new to the index: no entry has this key (an Asked one is indexed)
                items[key] = (self._clock() + ttl, None, size, *answer)
                total = self._bytes = self._bytes + size
                if total > self.max_bytes or len(items) > self.max_entries:
                    self._evict()
                return
        else:
            size += len(key)
            if size > self.max_bytes:
                return
        if text is not None:
            self.index(text, key)
        self._keep(key, None, size, ttl, answer)

    def _keep(self, key: Kept, value: bytes | None, size: int, ttl: float,
              answer: tuple[Any, ...] = ()) -> None:
        """Store ``value`` (None: made of ``answer`` when first read) as ``size`` bytes for
        ``ttl`` seconds (replacing ``key``'s entry: a new one, no hits yet), then evict
        down to both bounds."""
        items = self._items
        old = items.pop(key, None)
        if old is not None:
            self._bytes -= old[2]
            self._hits.pop(key, None)
        expires = self._clock() + ttl
        items[key] = (expires, value, size, *answer) if answer else (expires, value, size)
        total = self._bytes = self._bytes + size
        if total > self.max_bytes or len(items) > self.max_entries:
            self._evict()

    def _made(self, key: Kept, item: tuple[Any, ...]) -> bytes:
        """The bytes of an entry kept by :meth:`put_later`, made now and kept in its place
        (its size corrected to theirs)."""
        value = dump_body(*item[3:-1], stream=item[-1])
        size = len(value) + key_size(key)
        self._items[key] = (item[0], value, size)
        self._bytes += size - item[2]
        return value

    def _evict(self) -> None:
        """Drop the least recently used entries until both bounds hold."""
        items, hits, asked, texts = self._items, self._hits, self.asked, self._texts
        max_entries, max_bytes = self.max_entries, self.max_bytes
        total, evicted = self._bytes, 0
        while len(items) > max_entries or total > max_bytes:
            key, item = items.popitem(last=False)
            total -= item[2]
            evicted += 1
            if hits:  # (most entries are never hit: no lookup for them)
                hits.pop(key, None)
            if type(key) is tuple:  # (out of the index: an Asked key alone, mostly)
                text = key[4]
                if asked.get(text) is key:
                    del asked[text]
                else:
                    self._unindex(text, key)
            elif texts:
                self._forget(key)
        self._bytes = total
        self.evictions += evicted

    async def delete(self, key: Kept) -> bool:
        if key not in self._items:
            if type(key) is not str:
                return False
            # a name (the management API's): the entry kept under the key it names, if
            # any (a scan, on a request of the management API only)
            key = next((k for k in self._items if type(k) is not str and self._name(k) == key),
                       b"")
            if not key:
                return False
        self._drop(key)
        return True

    async def clear(self) -> None:
        self._items.clear()
        self._hits.clear()
        self.asked.clear()
        self._texts.clear()
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
                out.append(Listed(self._name(key), value, self._hits.get(key, 0),
                                  expires - now))
                if len(out) >= limit:
                    break
        return out

    def index(self, text: str, key: Kept) -> None:
        """Index ``key``'s entry by its request's last user ``text`` (:attr:`asked`)."""
        if len(text) > RAW_MAX:  # (no Asked key has one: never looked for)
            return
        if type(key) is not tuple:  # (an Asked key holds its text: an exact one is kept)
            texts = self._texts
            texts[key] = text  # type: ignore[index]
            if len(texts) > self._sweep_at:
                self._sweep()
        asked = self.asked
        keys = asked.setdefault(text, key)
        if keys is key:
            return
        if type(keys) is list:
            if key not in keys:
                keys.append(key)
        elif keys != key:
            asked[text] = [keys, key]  # type: ignore[list-item]

    def _unindex(self, text: str, key: Kept) -> None:
        asked = self.asked
        keys = asked.get(text)
        if type(keys) is list:
            if key in keys:
                keys.remove(key)
            if len(keys) < 2:
                if keys:
                    asked[text] = keys[0]
                else:
                    del asked[text]
        elif keys is not None and keys == key:
            del asked[text]

    def _forget(self, key: Kept) -> None:
        """Take a key whose entry is gone out of the index."""
        if type(key) is tuple:
            self._unindex(key[4], key)
        elif self._texts:
            text = self._texts.pop(key, None)  # type: ignore[arg-type]
            if text is not None:
                self._unindex(text, key)

    def resolve(self, text: str) -> None:
        """Give the entries kept by a request's bytes whose last user text is ``text`` their
        exact keys (:func:`~omniroute.cache.key.asked_exact`), before a request with that
        text is looked up by its exact key."""
        keys = self.asked.get(text)
        if keys is None or isinstance(keys, (bytes, str)):
            return  # (an exact key's entry alone: nothing to do)
        items, live = self._items, list[Kept]()
        for key in (keys if isinstance(keys, list) else [keys]):
            if isinstance(key, tuple):
                if key not in items:
                    continue
                kept = self._settle(key)
                if kept is None:
                    continue
                key = kept
            if key not in live:
                live.append(key)
        if not live:
            del self.asked[text]
        else:
            self.asked[text] = live if len(live) > 1 else live[0]
        if self._bytes > self.max_bytes:
            self._evict()

    def _settle(self, key: Asked) -> Exact | None:
        """Keep ``key``'s entry under its exact key (None: it has none: dropped), in place
        of an entry kept by that key already (this one is newer)."""
        items = self._items
        item = items.pop(key)
        self._bytes -= item[2]
        hits = self._hits.pop(key, 0)
        exact = asked_exact(key, self.formats)
        if exact is None:
            return None
        self._texts[exact] = key[4]
        old = items.pop(exact, None)
        if old is not None:
            self._bytes -= old[2]
            self._hits.pop(exact, None)  # (a new entry: no hits yet)
        size = item[2] - 2 * len(key[0]) + len(exact)
        items[exact] = (item[0], item[1], size, *item[3:])
        self._bytes += size
        if hits:
            self._hits[exact] = hits
        return exact

    def _sweep(self) -> None:
        """Take the exact keys whose entries are gone (or never came: an answer not kept
        after all) out of the index."""
        items, texts = self._items, self._texts
        for key, text in list(texts.items()):
            if key not in items:
                del texts[key]
                self._unindex(text, key)
        self._sweep_at = 2 * len(texts) + 64

    def _name(self, key: Kept) -> str:
        """The name of a key as the dict keeps it (an ``Asked`` key's, of its exact key)."""
        if type(key) is tuple:
            exact = asked_exact(key, self.formats)
            return "" if exact is None else key_name(exact)
        return key_name(key)  # type: ignore[arg-type]

    def _drop(self, key: Kept) -> None:
        size = self._items.pop(key)[2]
        self._hits.pop(key, None)
        self._bytes -= size
        self._forget(key)


def key_size(key: Kept) -> int:
    """What a key counts for in an entry's size (an ``Asked`` key: its body, twice)."""
    return 2 * len(key[0]) if type(key) is tuple else len(key)


@hookimpl
def register_cache_backends(register: Callable[[type[CacheBackend]], None]) -> None:
    register(MemoryCache)
