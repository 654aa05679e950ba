"""Cache backend ``redis``: the exact response cache shared by every instance.

Configure it behind (or instead of) the in-process one:
``cache_backends = "memory,redis"`` answers from this instance's memory first and
shares every stored answer through Redis; ``"redis"`` alone keeps no copy per
instance, so a deleted entry is gone everywhere at once (with ``memory`` in
front, another instance may still answer from its own copy until its TTL).

Entries are Redis strings with the entry's TTL (``PX``), under
``<prefix>:cache:e:<key>``; an index (sorted by expiry) counts and lists them and
bounds them to ``max_entries`` (the entries closest to their end go first), and
a hash counts each entry's hits. With ``state_url``, a request's lookup goes out
with its other Redis work before dispatch, in one round trip (:mod:`.prefetch`),
and a store is queued with the writes that follow answers (:mod:`.batch`: the
request's slots given back, its spend settled, its idempotent answer), sent with
them in one round trip; nobody waits for it. Each call is one script, bounded by
:data:`TIMEOUT`. While Redis cannot be reached every lookup is a miss and every
store is dropped (logged once, by the link): the cache never fails a request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from omniroute.cache.base import Listed
from omniroute.sharedstate import RequestBatch

from omniroute_redis import RedisCache
from omniroute_redis.batch import Batch
from omniroute_redis.link import Link, Unreachable, split_prefix
from omniroute_redis.prefetch import BEFORE, UNREACHABLE, Prefetch, Step
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import bulk, bulks

#: seconds one cache call may take (a slower Redis is a miss, not a slow answer)
TIMEOUT = 0.25
#: the TTLs whose packing is kept (:meth:`RedisCache._packed_ttl`; a key's ``cache_ttl``
#: or the setting's: a handful)
TTLS_KEPT = 64
#: the lookups made with requests' batches and not yet told (:meth:`RedisCacheBackend.
#: absent`) kept at most (about one a request in flight: past it they are forgotten, and
#: their requests look up the usual way)
AHEAD_KEPT = 4096


class RedisCacheBackend(RedisCache):
    """The ``redis`` cache backend (:class:`~omniroute_redis.RedisCache`'s options)."""

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        url = self.options.get("url")
        if not isinstance(url, str) or not url:
            raise ValueError("the redis cache backend needs state_url (redis://host:6379/0)")
        self.ttl = float(self.options.get("ttl", 3600))
        self.max_entries = int(self.options.get("max_entries", 10_000))
        if self.ttl <= 0 or self.max_entries < 1:
            raise ValueError("ttl and max_entries must be positive")
        self.link = Link(url, timeout=lambda: TIMEOUT,
                         prefix=str(self.options.get("prefix", "omniroute")))
        #: the server (its URL without the key prefix): a request's batch to the same one
        #: may carry this cache's lookup
        self.server = split_prefix(url)[0]
        self.scripts = Scripts()
        self._entry = self.link.key("cache", "e", "")
        self._index = self.link.key("cache", "index")
        self._hits = self.link.key("cache", "hits")
        #: what of the lookup's and the store's commands is packed once (the rest is the
        #: request's key and answer)
        self._entry_bytes = self._entry.encode()
        self._entry_size = len(self._entry_bytes)
        #: the store's command up to its keys (``EVALSHA``, the script, 3 keys, 5 arguments)
        self._set_head = b"*11\r\n" + bulks(("EVALSHA", self.scripts.sha["cache_set"], 3))
        self._hits_packed = bulk(self._hits.encode())
        self._index_hits_packed = bulks((self._index, self._hits))
        #: the shared state's writes after answers, once a request's batch to the same
        #: server came by (:meth:`prefetch_get`): stores go with them
        self._writes: Batch | None = None
        self.hits = self.misses = self.unreachable = 0
        self._tail: tuple[int, bytes] | None = None
        #: a store's TTL packed (:meth:`_packed_ttl`), by the TTL asked for
        self._ttls: dict[float | None, bytes] = {}
        #: the lookups queued on requests' batches, by key, until :meth:`absent` tells
        #: their misses
        self._ahead: dict[str, _Lookup] = {}

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self.scripts.call(self.link, "cache_get",
                                            [self._entry + key, self._hits], [key])
        except Unreachable:
            value = UNREACHABLE
        return self._found(value)

    def prefetch_get(self, key: str, batch: RequestBatch) -> Step[bytes | None] | None:
        """The lookup as a step of a request's batch, when the batch goes to the Redis
        this cache keeps its entries in (:mod:`.prefetch`)."""
        if type(batch) is not Prefetch or batch.link.url != self.server:
            return None
        self._writes = batch.writes
        field = key.encode()
        size = len(field)
        step = _Lookup(self, b"$%d\r\n%b%b\r\n%b" % (self._entry_size + size, self._entry_bytes,
                                                    field, self._hits_packed),
                       b"$%d\r\n%b\r\n" % (size, field), key)
        batch.steps.append(step)
        ahead = self._ahead
        if len(ahead) >= AHEAD_KEPT:
            ahead.clear()
        ahead[key] = step
        return step

    def absent(self, key: str) -> bool:
        """A miss told by the lookup that went with the request's batch (answered: no
        entry), read without a coroutine: the cache's lookup is not awaited for it (a hit,
        a lookup that did not run or whose answer is lost, or one forgotten, say False:
        :meth:`get` reads or asks it as before). Keyed by the key: of two requests for
        one key in flight, the first to ask reads the latest lookup (each one's answer is
        the key's, and a lookup takes nothing); one never read is forgotten when its
        request ends (:meth:`_Lookup.undo`), so no later request reads it."""
        step = self._ahead.pop(key, None)
        if step is None or not step.ran or step.done or step.raw is not None:
            return False
        step.done = True
        self.misses += 1
        return True

    def _found(self, value: object) -> bytes | None:
        if value is UNREACHABLE:
            self.unreachable += 1
            value = None
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        assert isinstance(value, bytes)
        return value

    def put(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Queue the store with the shared state's writes after answers, once a request's
        batch to the same server came by (a store follows its request's answer: it goes
        with that request's other writes; no trip through the cache's writer task). False
        before: the writer awaits :meth:`set`."""
        writes = self._writes
        if writes is None:
            return False
        packed_ttl = self._ttls.get(ttl)  # (a handful of TTLs: packed once each)
        if packed_ttl is None:
            packed_ttl = self._packed_ttl(ttl)
        field = key.encode()
        tail = self._tail  # (_set_tail's look, in line: a call fewer a store)
        writes.later(b"%b$%d\r\n%b%b\r\n%b$%d\r\n%b\r\n%b$%d\r\n%b\r\n%b" % (
            self._set_head, self._entry_size + len(field), self._entry_bytes, field,
            self._index_hits_packed, len(value), value, packed_ttl, len(field), field,
            tail[1] if tail is not None and tail[0] == self.max_entries
            else self._set_tail()))
        return True

    def _packed_ttl(self, ttl: float | None) -> bytes:
        """A store's TTL in milliseconds (``ttl``, or the cache's own: set once, when the
        backend is made), as a bulk string, kept in :attr:`_ttls` by ``ttl``."""
        if len(self._ttls) >= TTLS_KEPT:
            self._ttls.clear()
        ttl_ms = max(1, int((ttl if ttl is not None else self.ttl) * 1000))
        packed = self._ttls[ttl] = bulk(b"%d" % ttl_ms)
        return packed

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store an entry: queued with the shared state's writes after answers when there
        are (:meth:`put`), else one call."""
        if self.put(key, value, ttl):
            return
        ttl_ms = max(1, int((ttl if ttl is not None else self.ttl) * 1000))
        keys = [self._entry + key, self._index, self._hits]
        args: list[Any] = [value, ttl_ms, key, self.max_entries, self._entry]
        try:
            await self.scripts.call(self.link, "cache_set", keys, args)
        except Unreachable:
            self.unreachable += 1

    def _set_tail(self) -> bytes:
        """The store's last arguments (most entries, the entries' prefix), packed once."""
        tail = self._tail
        if tail is None or tail[0] != self.max_entries:
            tail = self._tail = (self.max_entries, bulks((self.max_entries, self._entry)))
        return tail[1]

    async def delete(self, key: str) -> bool:
        async def run(r: Any) -> int:
            async with r.pipeline(transaction=True) as pipe:
                pipe.delete(self._entry + key)
                pipe.zrem(self._index, key)
                pipe.hdel(self._hits, key)
                found = await pipe.execute()
            return int(found[0])

        try:
            return bool(await self.link.call(run))
        except Unreachable:
            self.unreachable += 1
            return False

    async def clear(self) -> None:
        """Every entry goes (raises while Redis cannot be reached: the API says so)."""

        async def run(r: Any) -> None:
            batch: list[str] = []
            async for name in r.scan_iter(match=self._entry + "*", count=500):
                batch.append(name)
                if len(batch) >= 500:
                    await r.delete(*batch)
                    batch = []
            if batch:
                await r.delete(*batch)
            await r.delete(self._index, self._hits)

        await self.link.call(run, timeout=30.0)

    async def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"hits": self.hits, "misses": self.misses,
                               "max_entries": self.max_entries, "ttl": self.ttl,
                               "unreachable": self.unreachable, "reachable": self.link.up}
        try:
            out["entries"] = int(await self.link.call(
                lambda r: r.zcount(self._index, time.time(), "+inf")))
        except Unreachable:
            out["entries"] = None
        return out

    async def entries(self, limit: int) -> list[Listed]:
        async def run(r: Any) -> list[Listed]:
            now = time.time()
            rows = await r.zrevrangebyscore(self._index, "+inf", now, start=0, num=limit,
                                            withscores=True)
            if not rows:
                return []
            fields = [f.decode() if isinstance(f, bytes) else f for f, _ in rows]
            values = await r.mget([self._entry + f for f in fields])
            hits = await r.hmget(self._hits, fields)
            return [Listed(f, bytes(v), int(h or 0), max(0.0, float(end) - now))
                    for f, (_, end), v, h in zip(fields, rows, values, hits, strict=True)
                    if v is not None]

        try:
            return await self.link.call(run, timeout=2.0)
        except Unreachable:
            return []

    async def close(self) -> None:
        await self.link.close()


class _Lookup(Step[bytes | None]):
    """The lookup (``cache_get``) as a step of a request's batch: it takes nothing."""

    name, nkeys, nargs, head = "cache_get", 2, 1, "cache_get 2 1"
    __slots__ = ("cache", "key")

    def __init__(self, cache: RedisCacheBackend, keys: bytes, args: bytes, key: str) -> None:
        # (Step.__init__'s, in line: a call fewer per step)
        self.keys, self.args, self.phase = keys, args, BEFORE
        self.raw, self.ran, self.done = None, False, False
        self.cache, self.key = cache, key

    def undo(self, raw: object) -> None:
        # never read (its request ended first): not told to a later request of its key
        ahead = self.cache._ahead
        if ahead.get(self.key) is self:
            del ahead[self.key]

    def read(self, raw: object) -> bytes | None:
        return self.cache._found(raw)

    def result(self) -> bytes | None:
        # (Step.result's and read's, in line, and _found's for a miss: two calls fewer a
        # miss, the lookup's usual answer)
        self.done = True
        raw = self.raw
        if raw is None:
            self.cache.misses += 1
            return None
        return self.cache._found(raw)
