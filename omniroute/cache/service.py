"""The gateway's response cache: its backends front to back, the layers behind them, and
the background writer that keeps stores off the response path.

One :class:`ResponseCache` per gateway (app key ``CACHE``)::

    cache = ResponseCache([MemoryCache(...), SqliteCache(...)], layers)
    await cache.start()
    if cache.absent(exact) < len(cache.backends):  # else a miss, told at once
        found = await cache.lookup(exact)    # backends in order
    found = await cache.lookup(key.exact, key=key)  # then each layer too (a CacheKey)
    cache.store(exact, entry, ttl)           # the entry's bytes, or a Producer
    await cache.close()                      # writes what is queued, closes backends

An entry's bytes go at once into the backends that take them without waiting
(:meth:`CacheBackend.put`: ``memory``, and ``sqlite``, whose own writer then writes
its queue in batches); what is left (a :data:`Producer`, which decodes the answer, the
backends that must be awaited, the layers) is queued for the cache's background
writer. The writer takes every store queued when it wakes, so a burst of misses wakes
it once.

A hit in a backend behind the first is copied into the ones in front (a sqlite
hit is promoted to memory). A backend or layer that fails counts as a miss and
is logged: a cache never fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omniroute.cache import entry as entries
from omniroute.cache.base import CacheBackend
from omniroute.cache.key import Exact, key_name
from omniroute.cache.layer import CacheKey, CacheLayer
from omniroute.config import ConfigError

if TYPE_CHECKING:
    from omniroute.config import Settings
    from omniroute.formats.base import Format
    from omniroute.sharedstate import Pending, RequestBatch

log = logging.getLogger(__name__)

#: stores waiting for the writer; past this they are dropped (counted)
QUEUE_SIZE = 1024

#: ``GET /api/cache/stats``'s idempotency window while no idempotency stage reports its own
IDEMPOTENCY_WINDOW_MS = 5000

#: makes the entry bytes of an answer, or None when it turns out not storable
Producer = Callable[[], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class Found:
    """A cache hit: the entry, who had it, and the similarity a layer reported."""

    entry: entries.Entry
    source: str
    similarity: float | None = None


class ResponseCache:
    """Exact backends front to back, then the layers; one writer task for every store."""

    def __init__(self, backends: Sequence[CacheBackend], layers: Sequence[CacheLayer] = (),
                 idempotency: Callable[[], dict[str, int]] | None = None,
                 clock: Callable[[], float] = time.time,
                 formats: Mapping[str, Format] | None = None) -> None:
        """
        :param backends: the exact backends, front (fastest) to back.
        :param layers: the plugins' layers (``register_cache_layers``), asked after them.
        :param idempotency: reads the idempotency stage's ``activeKeys`` / ``windowMs``
            for ``GET /api/cache/stats`` (None: that stage is not there).
        :param clock: epoch seconds (an entry's ``expires``).
        :param formats: the loaded formats by name: they decode the entries that hold an
            upstream's answer as it came (:func:`~omniroute.cache.entry.dump_body`).
        """
        self.backends = list(backends)
        self.layers = list(layers)
        self.idempotency = idempotency
        self.clock = clock
        self.formats = formats
        #: the entries found lately, decoded (a repeated hit is not decoded again)
        self.loaded = entries.Loaded(formats=formats)
        self.hits = self.misses = self.bypasses = 0
        self.stored = self.dropped = self.store_failures = 0
        # the stores waiting for the writer, and what wakes it when it sleeps on an empty
        # queue: a deque and one future, not an asyncio.Queue (whose put and get cost a
        # miss about ten Python calls more); ``_writing`` while it works on one
        self._queue: deque[tuple[Exact, bytes | Producer, float, CacheKey | None,
                                 Sequence[CacheBackend]]] = deque()
        #: the last exact key named (:meth:`key_for`), and its name
        self._named: tuple[Exact, str] = ("", "")
        self._wake: asyncio.Future[None] | None = None
        self._writing = False
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        started: list[CacheBackend] = []
        try:
            for backend in self.backends:
                await backend.start()
                started.append(backend)
        except BaseException:
            for backend in started:
                with contextlib.suppress(Exception):
                    await backend.close()
            raise
        self._writer = asyncio.create_task(self._write_loop(), name="omniroute-cache-writer")

    async def close(self) -> None:
        """Write what is queued (bounded by the backends), then close everything."""
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await self.settled(5.0)
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        parts: list[CacheBackend | CacheLayer] = [*self.backends, *self.layers]
        for part in parts:
            try:
                await part.close()
            except Exception:
                log.exception("closing cache %s failed", part.name)

    # ---------------------------------------------------------------- the data path

    def key_for(self, backend: CacheBackend, exact: Exact) -> str:
        """The key ``backend`` is given for ``exact``: as it is, to a backend that takes
        it so (:attr:`CacheBackend.raw_keys`), else its name (:func:`~omniroute.cache.key.
        key_name`), the last one made kept (a request asks several backends, and again
        when it stores its answer)."""
        if backend.raw_keys or type(exact) is str:
            # (bytes: only to a raw_keys backend, whose methods take them)
            return exact  # type: ignore[return-value]
        named = self._named
        if named[0] == exact:
            return named[1]
        name = key_name(exact)
        self._named = (exact, name)
        return name

    def prefetch(self, exact: Exact, batch: RequestBatch) -> dict[int, Pending[bytes | None]]:
        """Queue the lookups of the backends that keep their entries in the shared state
        on a request's batch (:meth:`CacheBackend.prefetch_get`), by their place."""
        ahead = {}
        for depth, backend in enumerate(self.backends):
            pending = backend.prefetch_get(self.key_for(backend, exact), batch)
            if pending is not None:
                ahead[depth] = pending
        return ahead

    def absent(self, exact: Exact) -> int:
        """How many backends, front first, tell at once that they hold no entry for
        ``exact`` (:meth:`CacheBackend.absent`; each counts its miss): a lookup starts at
        the next one. All of them, and no layer to ask: a miss without awaiting anything
        (``memory``, ``sqlite``: a dict and a set)."""
        told = 0
        for backend in self.backends:
            if not backend.absent(self.key_for(backend, exact)):
                return told
            told += 1
        return told

    async def lookup(self, exact: Exact, ahead: dict[int, Pending[bytes | None]] | None = None,
                     key: CacheKey | None = None, start: int = 0) -> Found | None:
        """The stored answer for the exact key ``exact``: the backends in order, then (with
        ``key``, made while a layer was active) each layer.

        :param ahead: the backends' lookups already made with the request's batch
            (:meth:`prefetch`), read instead of asking them again.
        :param start: the backends in front of this place are not asked (:meth:`absent`
            told they have none).
        """
        for depth, backend in enumerate(self.backends):
            if depth < start:
                continue
            pending = ahead.get(depth) if ahead else None
            try:
                if pending is not None and pending.ran:
                    data = pending.result()
                else:
                    data = await backend.get(self.key_for(backend, exact))
            except Exception:
                log.exception("cache backend %s failed on a lookup", backend.name)
                data = None
            if data is not None:
                found = await self._found(exact, data, depth, backend)
                if found is not None:
                    return found
        if key is None or not key.scope:  # made while no layer was active: none is asked
            return None
        for layer in self.layers:
            try:
                hit = await layer.lookup(key)
            except Exception:
                log.exception("cache layer %s failed on a lookup", layer.name)
                continue
            if hit is None:
                continue
            entry = self.loaded(hit.entry)
            if entry is not None and (entry.expires is None or entry.expires > self.clock()):
                return Found(entry, layer.name, hit.similarity)
        return None

    async def _found(self, exact: Exact, data: bytes, depth: int,
                     backend: CacheBackend) -> Found | None:
        """A backend's entry, read; promoted to the backends in front of it."""
        found = self.loaded(data)
        if found is None:  # another version, or damaged: gone, and a miss
            await self._forget(exact)
            return None
        left = None if found.expires is None else found.expires - self.clock()
        if left is not None and left <= 0:  # past its own TTL (a backend's clock
            return None  # lagged, or it kept it longer): a miss, never a stale answer
        for front in self.backends[:depth]:  # promoted (a sqlite hit goes to memory)
            with contextlib.suppress(Exception):  # for what is left of its TTL
                await front.set(self.key_for(front, exact), data, left)
        return Found(found, backend.name)

    def layered(self) -> bool:
        """Whether a key needs what the layers read: one of them is active now."""
        for layer in self.layers:  # noqa: SIM110 (``any`` over a generator: a frame more)
            if layer.active():
                return True
        return False

    def store(self, exact: Exact, entry: bytes | Producer, ttl: float,
              key: CacheKey | None = None) -> None:
        """Store the entry's bytes, or what ``entry`` (a :data:`Producer`) makes later, in
        every backend and (with a ``key`` made while a layer was active) every layer.

        Bytes go at once into every backend that takes them without waiting
        (:meth:`CacheBackend.put`); the rest is queued for the writer."""
        if key is not None and not key.scope:
            key = None  # made while no layer was active: none is fed
        if isinstance(entry, bytes):
            # (the backends that take it at once, here: a call less on every miss)
            later: Sequence[CacheBackend] = ()
            for backend in self.backends:
                try:
                    if backend.put(self.key_for(backend, exact), entry, ttl):
                        continue
                except Exception:
                    self.store_failures += 1
                    log.exception("cache backend %s failed to store", backend.name)
                    continue
                later = (*later, backend)
            if not later and key is None:
                self.stored += 1
                return
        else:
            later = self.backends
        queue = self._queue
        if len(queue) >= QUEUE_SIZE:
            self.dropped += 1
            return
        queue.append((exact, entry, ttl, key, later))
        wake = self._wake
        if wake is not None:  # the writer sleeps on an empty queue
            self._wake = None
            if not wake.done():  # (cancelled: the writer was stopped)
                wake.set_result(None)

    async def settled(self, timeout: float = 30.0) -> None:
        """Wait until every queued store is done (tests, tools); bounded like every wait.

        :raises TimeoutError: stores still queued after ``timeout`` seconds (the writer
            is stuck on a backend, or was never started).
        """
        async with asyncio.timeout(timeout):
            while self._queue or self._writing:  # (tests and tools: a short poll will do)
                await asyncio.sleep(0.005)

    async def _write_loop(self) -> None:
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            if not queue:
                wake = self._wake = loop.create_future()
                await wake
            self._writing = True
            try:
                while queue:  # every store queued by now, then sleep again
                    exact, entry, ttl, key, backends = queue.popleft()
                    try:
                        data = entry if isinstance(entry, bytes) else await entry()
                        if data is not None:
                            await self._keep(exact, data, ttl, key, backends)
                    except Exception:
                        self.store_failures += 1
                        log.exception("storing a cache entry failed")
            finally:
                self._writing = False

    async def _keep(self, exact: Exact, data: bytes, ttl: float, key: CacheKey | None,
                    backends: Sequence[CacheBackend]) -> None:
        for backend in backends:
            try:
                await backend.set(self.key_for(backend, exact), data, ttl)
            except Exception:
                self.store_failures += 1
                log.exception("cache backend %s failed to store", backend.name)
        if key is not None:
            for layer in self.layers:
                try:
                    await layer.store(key, data, ttl)
                except Exception:
                    self.store_failures += 1
                    log.exception("cache layer %s failed to store", layer.name)
        self.stored += 1

    async def _forget(self, exact: Exact) -> None:
        for backend in self.backends:
            with contextlib.suppress(Exception):
                await backend.delete(self.key_for(backend, exact))

    # ---------------------------------------------------------------- management

    async def clear(self) -> dict[str, str]:
        """Forget every entry of every backend and layer; one that fails does not stop the
        others. Returns the failures, by part name (empty: all cleared)."""
        parts: list[CacheBackend | CacheLayer] = [*self.backends, *self.layers]
        failed: dict[str, str] = {}
        for part in parts:
            try:
                await part.clear()
            except Exception as exc:
                log.exception("clearing the %s cache failed", part.name)
                failed[part.name] = f"{type(exc).__name__}: {exc}"
        return failed

    async def delete(self, exact: str) -> bool:
        """Delete one entry (by its exact key) from every backend and layer."""
        deleted = False
        parts: list[CacheBackend | CacheLayer] = [*self.backends, *self.layers]
        for part in parts:
            deleted = await part.delete(exact) or deleted
        return deleted

    async def entries(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` entries across the backends: key, model, created, hits, bytes."""
        merged: dict[str, dict[str, Any]] = {}
        for backend in self.backends:
            for listed in await backend.entries(limit):
                row = merged.get(listed.key)
                if row is None:
                    row = merged[listed.key] = {
                        "key": listed.key, **entries.header(listed.value, self.formats),
                        "hits": 0, "bytes": len(listed.value),
                        "expires_in": round(listed.expires_in, 3), "backends": []}
                row["hits"] += listed.hits
                row["backends"].append(backend.name)
        return list(merged.values())[:limit]

    async def stats(self) -> dict[str, Any]:
        """The seed's shape (``semanticCache``, ``idempotency``) and the detail of each part."""
        backends = await _stats_of(self.backends)
        layers = await _stats_of(self.layers)
        memory = backends.get("memory", {})
        persistent = next((s for name, s in backends.items() if name != "memory"), {})
        looked = self.hits + self.misses
        idem = (self.idempotency() if self.idempotency is not None
                else {"activeKeys": 0, "windowMs": IDEMPOTENCY_WINDOW_MS})
        return {
            "semanticCache": {
                "memorySize": memory.get("entries", 0),
                "memoryMaxSize": memory.get("max_entries", 0),
                "dbSize": persistent.get("entries", 0),
                "hitRate": round(self.hits / looked, 4) if looked else 0.0,
            },
            "idempotency": {"activeKeys": idem.get("activeKeys", 0),
                            "windowMs": idem.get("windowMs", 0)},
            "exact": {"hits": self.hits, "misses": self.misses, "bypasses": self.bypasses,
                      "stored": self.stored, "queued": len(self._queue),
                      "dropped": self.dropped, "store_failures": self.store_failures},
            "backends": backends,
            "layers": layers,
        }


async def _stats_of(parts: Sequence[CacheBackend | CacheLayer]) -> dict[str, dict[str, Any]]:
    """Each part's stats by name; a part that fails shows its error (the others still help)."""
    found: dict[str, dict[str, Any]] = {}
    for part in parts:
        try:
            found[part.name] = await part.stats()
        except Exception as exc:  # noqa: BLE001 - shown in place of the part's numbers
            found[part.name] = {"error": f"{type(exc).__name__}: {exc}"}
    return found


def build_cache(types: Mapping[str, type[CacheBackend]], settings: Settings, data_dir: Path,
                layers: Sequence[CacheLayer] = (), state_url: str | None = None,
                formats: Mapping[str, Format] | None = None) -> ResponseCache:
    """The response cache the settings name (``cache_backends``, front to back).

    :param types: the registered backend types (``register_cache_backends``) by name.
    :param state_url: the configured ``state_url``, given to every backend as its
        ``url`` option (a shared backend such as ``redis`` keeps its entries there).
    :param formats: the loaded formats by name (:class:`ResponseCache`).
    :raises ConfigError: a name no loaded plugin registers.
    """
    backends: list[CacheBackend] = []
    for name in dict.fromkeys(n.strip() for n in settings.cache_backends.split(",")):
        if not name:
            continue
        cls = types.get(name)
        if cls is None:
            raise ConfigError(f"cache_backends: no cache backend {name!r} is registered "
                              f"(known: {', '.join(sorted(types))})")
        options: dict[str, Any] = (
            {"max_entries": settings.cache_db_max_entries,
             "path": str(data_dir / "cache.sqlite3"), "ttl": settings.cache_ttl}
            if name == "sqlite" else
            {"max_entries": settings.cache_max_entries,
             "max_bytes": settings.cache_max_bytes, "ttl": settings.cache_ttl})
        if state_url is not None:
            options["url"] = state_url
        backends.append(cls(options))
    return ResponseCache(backends, layers, formats=formats)
