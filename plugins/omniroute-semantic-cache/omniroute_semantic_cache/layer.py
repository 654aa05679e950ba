"""The semantic layer: a reworded single-turn question answered from a stored answer.

The exact cache (:mod:`omniroute.cache.stage`) asks this layer after its own
backends missed, with the request's :class:`~omniroute.CacheKey`, and stores
every cacheable answer in it. A lookup

1. returns None at once when the ``semantic_cache`` setting is off, the layer is
   not ready yet (the model loads in the background; until then: misses), or the
   request is one it never answers: turns before the last user message, tools,
   images or files, code or a URL in the prompt, an empty prompt, a prompt over
   256 of the model's tokens (or its window);
2. otherwise, in the worker thread (:mod:`.worker`), embeds only the last user
   message, searches only the index of the key's scope (tenant, model, the
   core's scope hash of everything but the prompt, and the embedder), and takes
   the nearest entries with cosine >= ``semantic_cache_threshold`` (0.95) in
   turn: the first whose prompt the lexical guards (:mod:`.guards`) agree with,
   and not expired, is the hit.

Anything that goes wrong (the worker busy or slow, a failure) is a miss: the
cache fails open. Entries live in SQLite (:mod:`.store`), bounded by
``semantic_cache_max_entries`` and ``semantic_cache_max_bytes`` (least recently
used go first) and by their TTL; the faiss indexes (:mod:`.index`) are rebuilt
from it when the layer starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omniroute import CacheKey, CacheLayer, LayerHit
from omniroute.config import Settings

from omniroute_semantic_cache.encoder import EncoderError, ProcessEmbedder
from omniroute_semantic_cache.guards import disagreement, unsuitable
from omniroute_semantic_cache.worker import Busy, Worker

if TYPE_CHECKING:
    from omniroute_semantic_cache.embedders import Embedder, Vectors
    from omniroute_semantic_cache.index import ScopedIndex
    from omniroute_semantic_cache.store import EntryStore, Removed

log = logging.getLogger(__name__)

#: the longest prompt embedded, in the model's tokens (MiniLM was trained on 128 and
#: truncates past 256: a longer prompt would be compared by its beginning only)
MAX_PROMPT_TOKENS = 256
#: a prompt longer than this many characters per allowed token is never short enough
_CHARS_PER_TOKEN_BOUND = 8
#: part of every scope: a change of what a scope means empties the cache, never mixes it
SCOPE_VERSION = "1"


def normalize(prompt: str) -> str:
    """The text that is embedded and compared: stripped, runs of whitespace made one space."""
    return " ".join(prompt.split())


class SemanticLayer(CacheLayer):
    """The ``semantic`` cache layer.

    :param path: the SQLite file of its entries.
    :param settings: the gateway's current settings (read on every call: changes apply
        at once).
    :param embedder: what turns a prompt into a vector (loaded in the worker).
    :param clock: wall-clock seconds (TTL and LRU survive a restart).
    :param candidates: nearest entries tried against the guards per lookup.
    :param sweep_every: seconds between deletions of expired entries.
    :param isolate: run the embedder in a process of its own (:mod:`.encoder`), so
        that encoding never holds the gateway's GIL; the plugin does for the real
        model. False: in the worker thread (deterministic test embedders).
    :param large_scope: entries from which a scope's index is approximate (IVF, see
        :mod:`.index`) instead of an exact scan.
    """

    name = "semantic"

    def __init__(self, path: Path, settings: Callable[[], Settings], embedder: Embedder, *,
                 clock: Callable[[], float] = time.time, candidates: int = 4,
                 sweep_every: float = 60.0, isolate: bool = False,
                 large_scope: int | None = None) -> None:
        self.path = path
        self._settings = settings
        self.embedder: Embedder = ProcessEmbedder(embedder) if isolate else embedder
        self._large_scope = large_scope
        self._clock = clock
        self._candidates = candidates
        self._sweep_every = sweep_every
        self._worker = Worker()
        #: off (not started), loading, ready, failed, closed
        self.state = "off"
        self.error: str | None = None
        self._starting: concurrent.futures.Future[None] | None = None
        #: seconds the start took: rebuilding the indexes (``index``), loading the model
        self.started_in: dict[str, float] = {}
        # touched only in the worker thread:
        self._store: EntryStore | None = None
        self._index: ScopedIndex | None = None
        self._vectors: OrderedDict[str, Vectors | None] = OrderedDict()
        self._swept = 0.0
        #: hits not yet written: id -> (last used, count); written before an eviction, a
        #: sweep or closing, and every 256 (a hit's lookup does not wait for a write)
        self._used: dict[int, tuple[float, int]] = {}
        #: what lookups and stores came to (hit, miss, guard:<name>, skip:<why>, busy, ...)
        self.outcomes: Counter[str] = Counter()

    # ------------------------------------------------------------------ life cycle

    def start(self) -> concurrent.futures.Future[None]:
        """Open the file, rebuild the indexes and load the model, in the background."""
        if self._starting is None:
            self.state = "loading"
            self._starting = self._worker.submit(self._open)
        return self._starting

    async def ready(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the layer started; True when it serves."""
        await asyncio.wait_for(asyncio.wrap_future(self.start()), timeout)
        return self.state == "ready"

    def _open(self) -> None:
        started = time.perf_counter()
        try:
            if isinstance(self.embedder, ProcessEmbedder):
                self.embedder.begin_load()  # the model loads in its process meanwhile
            store = self._open_store()
            from omniroute_semantic_cache.index import ScopedIndex

            index = (ScopedIndex(self.embedder.dim) if self._large_scope is None
                     else ScopedIndex(self.embedder.dim, large=self._large_scope))
            self._unindex(store.expire(self._clock()))
            for scope, ids, vecs in store.vectors(self.embedder.dim):
                index.add(scope, ids, vecs)
            self._index = index
            self.started_in["index"] = time.perf_counter() - started
            self.embedder.load()
            self.started_in["model"] = time.perf_counter() - started - self.started_in["index"]
        except Exception as exc:
            if self.state != "closed":
                self.state = "failed"
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("semantic cache failed to start; it answers nothing")
            return
        if self.state != "loading":  # closed meanwhile
            return
        self.state = "ready"
        log.info("semantic cache ready in %.1f s: %d entries in %d scopes (embedder %s)",
                 time.perf_counter() - started, len(index), index.scopes, self.embedder.name)

    def _open_store(self) -> EntryStore:
        if self._store is None:
            from omniroute_semantic_cache.store import EntryStore

            self._store = EntryStore(self.path, self.embedder.name)
        return self._store

    async def close(self) -> None:
        was, self.state = self.state, "closed"
        if was == "loading":  # a model still loading is abandoned, not waited for
            await self._stop_encoder()
        try:
            await self._worker.close(self._close, timeout=10.0)
        finally:
            await self._stop_encoder()  # even when the worker did not get to it in time

    async def _stop_encoder(self) -> None:
        if isinstance(self.embedder, ProcessEmbedder):
            await asyncio.to_thread(self.embedder.stop)

    def _close(self) -> None:
        if self._store is not None:
            self._flush_used()
            self._store.close()
            self._store = None

    # ------------------------------------------------------------------ the contract

    #: (all that :meth:`active` reads: the cache stage reads it once per settings object)
    setting = "semantic_cache"

    def active(self) -> bool:
        return self._settings().semantic_cache

    async def lookup(self, key: CacheKey) -> LayerHit | None:
        settings = self._settings()
        if not settings.semantic_cache:
            return None
        if self.state != "ready":
            if self.state == "off":
                self.start()
            self.outcomes["skip:not-ready"] += 1
            return None
        skip = self._skip(key)
        if skip is not None:
            self.outcomes[f"skip:{skip}"] += 1
            return None
        try:
            hit, outcome = await self._worker.run(
                self._find, key, settings.semantic_cache_threshold,
                timeout=settings.semantic_cache_timeout, limit=settings.semantic_cache_queue)
        except Busy:
            outcome, hit = "busy", None
        except TimeoutError:
            outcome, hit = "timeout", None
        except EncoderError as exc:
            log.warning("semantic cache lookup missed: %s", exc)
            outcome, hit = "encoder", None
        except Exception:
            log.exception("semantic cache lookup failed")
            outcome, hit = "error", None
        self.outcomes[outcome] += 1
        return hit

    async def store(self, key: CacheKey, entry: bytes, ttl: float) -> None:
        settings = self._settings()
        if not settings.semantic_cache or self.state != "ready" or ttl <= 0:
            return
        if self._skip(key) is not None or len(entry) > settings.semantic_cache_max_bytes:
            return
        try:
            outcome = await self._worker.run(
                self._put, key, entry, ttl, settings.semantic_cache_max_entries,
                settings.semantic_cache_max_bytes,
                timeout=max(10.0, settings.semantic_cache_timeout),
                limit=settings.semantic_cache_queue)
        except Busy:
            outcome = "store:busy"
        except TimeoutError:
            outcome = "store:timeout"
        except EncoderError as exc:
            log.warning("semantic cache store skipped: %s", exc)
            outcome = "store:encoder"
        self.outcomes[outcome] += 1

    async def delete(self, exact: str) -> bool:
        if self.state == "closed" or (self.state == "off" and not self.path.exists()):
            return False
        # also while the layer is off, loading or failed: its file may hold the entry
        # from an earlier run, which would answer again once the layer serves. While the
        # model loads the job waits behind it (in order: before any lookup that follows
        # the load), and the caller does not wait that long: it is told False, and the
        # entry is deleted all the same when the load is done
        job = asyncio.wrap_future(self._worker.submit(self._delete, exact))
        done, _ = await asyncio.wait({job}, timeout=30.0 if self.state == "ready" else 2.0)
        if not done:
            log.info("semantic cache: an entry will be deleted once the layer has started")
            return False
        return bool(job.result())

    def _delete(self, exact: str) -> Removed:
        removed = self._open_store().delete(exact)
        self._unindex(removed)
        return removed

    async def clear(self) -> None:
        if self.state == "closed":
            return
        await asyncio.wait_for(asyncio.wrap_future(self._worker.submit(self._clear)), 30.0)

    async def stats(self) -> dict[str, Any]:
        settings = self._settings()
        store, index = self._store, self._index
        found = {
            "enabled": settings.semantic_cache,
            "state": self.state,
            "error": self.error,
            "embedder": self.embedder.name,
            "threshold": settings.semantic_cache_threshold,
            "entries": store.count if store is not None else 0,
            "bytes": store.bytes if store is not None else 0,
            "max_entries": settings.semantic_cache_max_entries,
            "max_bytes": settings.semantic_cache_max_bytes,
            "scopes": index.scopes if index is not None else 0,
            "hits": self.outcomes["hit"],
            "misses": sum(n for k, n in self.outcomes.items() if k != "hit"
                          and not k.startswith("store")),
            "queued": self._worker.pending,
            "outcomes": dict(self.outcomes),
        }
        if isinstance(self.embedder, ProcessEmbedder):
            found["encoder_process"] = {"pid": self.embedder.pid,
                                        "starts": self.embedder.starts,
                                        "failures": self.embedder.failures}
        return found

    # ------------------------------------------------------------------ deciding

    @staticmethod
    def _skip(key: CacheKey) -> str | None:
        """Why the layer must not answer (or keep) this request; None when it may."""
        if key.multi_turn:
            return "multi-turn"
        if key.has_tools:
            return "tools"
        if key.has_media:
            return "media"
        if not key.prompt.strip():
            return "empty"
        if len(key.prompt) > MAX_PROMPT_TOKENS * _CHARS_PER_TOKEN_BOUND:
            return "long"
        return unsuitable(key.prompt)

    def scope(self, key: CacheKey) -> str:
        """The index a request is searched in: the core's scope, the tenant and the model
        again (never shared, whatever the core's hash holds), and the embedder."""
        text = "\x00".join((SCOPE_VERSION, self.embedder.name, key.tenant, key.model, key.scope))
        return hashlib.sha256(text.encode()).hexdigest()

    # ------------------------------------------------------------------ in the worker

    def _vector(self, prompt: str) -> Vectors | None:
        """The prompt's vector (None: too long to embed), remembered for the store that
        usually follows a miss."""
        if prompt in self._vectors:
            self._vectors.move_to_end(prompt)
            return self._vectors[prompt]
        embedder = self.embedder
        limit = min(MAX_PROMPT_TOKENS, embedder.max_tokens)
        if isinstance(embedder, ProcessEmbedder):  # one round trip to its process
            vec = embedder.encode_within(prompt, limit)
        else:
            vec = (None if embedder.count_tokens(prompt) > limit
                   else embedder.encode([prompt])[0])
        self._vectors[prompt] = vec
        while len(self._vectors) > 256:
            self._vectors.popitem(last=False)
        return vec

    def _find(self, key: CacheKey, threshold: float) -> tuple[LayerHit | None, str]:
        assert self._store is not None and self._index is not None
        prompt = normalize(key.prompt)
        vec = self._vector(prompt)
        if vec is None:
            return None, "skip:long"
        now = self._clock()
        self._sweep(now)
        refused: str | None = None
        for row_id, similarity in self._index.search(self.scope(key), vec, self._candidates):
            if similarity < threshold:
                break
            row = self._store.get(row_id)
            if row is None or row.expires <= now:
                continue
            reason = disagreement(prompt, row.prompt)
            if reason is not None:
                refused = refused or reason
                continue
            self._used[row_id] = (now, self._used.get(row_id, (now, 0))[1] + 1)
            if len(self._used) >= 256:
                self._flush_used()
            log.info("semantic cache hit: similarity %.4f", similarity)
            log.debug("semantic cache hit: %r answered by the entry of %r", prompt, row.prompt)
            return LayerHit(row.entry, min(similarity, 1.0)), "hit"
        return None, f"guard:{refused}" if refused else "miss"

    def _put(self, key: CacheKey, entry: bytes, ttl: float, max_entries: int,
             max_bytes: int) -> str:
        assert self._store is not None and self._index is not None
        prompt = normalize(key.prompt)
        vec = self._vector(prompt)
        if vec is None:
            return "store:long"
        now = self._clock()
        scope = self.scope(key)
        row_id, replaced = self._store.put(scope=scope, exact=key.exact, prompt=prompt,
                                           vec=vec, entry=entry, now=now, ttl=ttl)
        self._unindex(replaced)
        self._index.add(scope, _ids([row_id]), vec.reshape(1, -1))
        self._flush_used()  # the LRU order must know every hit
        self._unindex(self._store.evict(max_entries, max_bytes))  # may take the new row too
        self._sweep(now)
        return "store"

    def _sweep(self, now: float) -> None:
        if now - self._swept >= self._sweep_every and self._store is not None:
            self._swept = now
            self._flush_used()
            self._unindex(self._store.expire(now))

    def _flush_used(self) -> None:
        if self._used and self._store is not None:
            self._store.touch(self._used)
            self._used = {}

    def _unindex(self, removed: Removed) -> None:
        if not removed or self._index is None:
            return
        by_scope: dict[str, list[int]] = {}
        for row_id, scope in removed:
            by_scope.setdefault(scope, []).append(row_id)
        for scope, ids in by_scope.items():  # one O(n) pass per scope
            self._index.remove(scope, _ids(ids))

    def _clear(self) -> None:
        self._used = {}
        self._open_store().clear()
        if self._index is not None:
            self._index.reset()
        self._vectors.clear()


def _ids(ids: list[int]) -> Any:
    import numpy as np

    return np.asarray(ids, np.int64)
