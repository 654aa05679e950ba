"""Cache backend ``sqlite``: entries that survive a restart, in a file of their own.

The cache lives in ``<data dir>/cache.sqlite3``, apart from the gateway's database:
its writes never wait behind the request log's or the configuration's (SQLite has
one writer per file), the backup made before a schema upgrade does not copy it, and
deleting the file loses nothing but cached answers. Worker processes share it (WAL).

Writes never block a request: :meth:`SqliteCache.set` only queues the entry (a
``get`` sees it at once), and a background task writes what is queued in one
transaction every ``flush_every`` seconds, with the hit counts. The same task
prunes expired entries and, past ``max_entries``, the least recently used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiosqlite

from omniroute.cache.base import CacheBackend, Listed
from omniroute.hookspecs import hookimpl
from omniroute.storage.db import private_file

log = logging.getLogger(__name__)

#: the file's schema version (``PRAGMA user_version``)
SCHEMA = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    last_used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS cache_entries_expires ON cache_entries(expires_at);
CREATE INDEX IF NOT EXISTS cache_entries_used ON cache_entries(last_used);
"""
#: queued writes past which the writer is woken before its next tick
_WAKE_AT = 256
#: queued writes past which new ones are dropped (the disk cannot keep up)
_MAX_PENDING = 10_000
#: seconds :meth:`SqliteCache.close` lets the writer finish the flush it is in
_CLOSE_WAIT = 5.0


class SqliteCache(CacheBackend):
    """A persistent cache in its own SQLite file.

    Options: ``path`` (the file; required), ``max_entries`` (default 100 000),
    ``ttl`` seconds (default 3600), ``flush_every`` seconds (default 0.05),
    ``prune_every`` seconds (default 60).
    """

    name = "sqlite"
    description = "Persistent cache in <data dir>/cache.sqlite3 (survives restarts, shared)"

    def __init__(self, options: Mapping[str, Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(options)
        if not self.options.get("path"):
            raise ValueError("the sqlite cache needs a 'path'")
        self.path = Path(self.options["path"])
        self.max_entries = int(self.options.get("max_entries", 100_000))
        self.ttl = float(self.options.get("ttl", 3600))
        self.flush_every = float(self.options.get("flush_every", 0.05))
        self.prune_every = float(self.options.get("prune_every", 60))
        if self.max_entries < 1 or self.ttl <= 0 or self.flush_every <= 0:
            raise ValueError("max_entries, ttl and flush_every must be positive")
        self._clock = clock
        self._conn: aiosqlite.Connection | None = None
        #: queued writes: key -> (value, expires_at, created_at)
        self._pending: dict[str, tuple[bytes, float, float]] = {}
        #: hits not yet written: key -> count (and the time of the last)
        self._used: dict[str, tuple[int, float]] = {}
        #: the batch being written now (still read from here until it is committed)
        self._writing: dict[str, tuple[bytes, float, float]] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self.hits = self.misses = self.dropped = self.failures = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)
        conn = await aiosqlite.connect(str(self.path), isolation_level=None)
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA busy_timeout=5000")
            async with conn.execute("PRAGMA user_version") as cur:
                row = await cur.fetchone()
            version = row[0] if row else 0
            if version > SCHEMA:
                raise RuntimeError(f"{self.path} has cache schema {version}, newer than this "
                                   f"omniroute knows ({SCHEMA}); delete the file or upgrade")
            await conn.executescript(_SCHEMA)
            await conn.execute(f"PRAGMA user_version={SCHEMA}")
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._writer = asyncio.create_task(self._write_loop(), name="omniroute-cache-sqlite")

    async def get(self, key: str) -> bytes | None:
        now = self._clock()
        queued = self._pending.get(key) or self._writing.get(key)
        if queued is not None and queued[1] > now:
            self._hit(key, now)
            return queued[0]
        conn = self._connection()
        async with conn.execute("SELECT value, expires_at FROM cache_entries WHERE key = ?",
                                (key,)) as cur:
            row = await cur.fetchone()
        if row is None or row[1] <= now:  # an expired row is pruned by the writer
            self.misses += 1
            return None
        self._hit(key, now)
        return bytes(row[0])

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        if len(self._pending) >= _MAX_PENDING and key not in self._pending:
            self.dropped += 1
            return
        now = self._clock()
        self._pending[key] = (value, now + (ttl if ttl is not None else self.ttl), now)
        if len(self._pending) >= _WAKE_AT:
            self._wake.set()

    async def delete(self, key: str) -> bool:
        queued = self._pending.pop(key, None) is not None
        self._used.pop(key, None)
        conn = self._connection()
        async with conn.execute("DELETE FROM cache_entries WHERE key = ?", (key,)) as cur:
            return queued or cur.rowcount > 0

    async def clear(self) -> None:
        self._pending.clear()
        self._used.clear()
        await self._connection().execute("DELETE FROM cache_entries")

    async def stats(self) -> dict[str, Any]:
        conn = self._connection()
        async with conn.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(value)), 0) FROM "
                                "cache_entries WHERE expires_at > ?", (self._clock(),)) as cur:
            row = await cur.fetchone()
        entries, size = (row[0], row[1]) if row else (0, 0)
        return {"entries": entries + len(self._pending),
                "bytes": size + sum(len(v[0]) for v in self._pending.values()),
                "max_entries": self.max_entries, "hits": self.hits, "misses": self.misses,
                "queued": len(self._pending), "dropped": self.dropped,
                "write_failures": self.failures, "file_bytes": _file_size(self.path)}

    async def entries(self, limit: int) -> list[Listed]:
        await self.flush()
        now = self._clock()
        conn = self._connection()
        async with conn.execute(
                "SELECT key, value, hits, expires_at FROM cache_entries WHERE expires_at > ? "
                "ORDER BY last_used DESC LIMIT ?", (now, limit)) as cur:
            rows = await cur.fetchall()
        return [Listed(row[0], bytes(row[1]), row[2], row[3] - now) for row in rows]

    async def flush(self) -> None:
        """Write what is queued now (the writer does it on its own every ``flush_every``).

        A flush cancelled before its COMMIT puts its entries back (a newer value queued
        meanwhile wins), so that :meth:`close`'s last flush still writes them.
        """
        pending, self._pending = self._pending, {}
        used, self._used = self._used, {}
        if not pending and not used:
            return
        conn = self._connection()
        self._writing = pending
        try:
            try:
                # BEGIN inside: a cancellation that meets it still has the ROLLBACK queued
                # behind it on aiosqlite's thread, never a transaction left open
                await conn.execute("BEGIN")
                await conn.executemany(
                    "INSERT OR REPLACE INTO cache_entries(key, value, created_at, expires_at, "
                    "last_used, hits) VALUES (?, ?, ?, ?, ?, 0)",
                    [(k, v, created, expires, created)
                     for k, (v, expires, created) in pending.items()])
                await conn.executemany(
                    "UPDATE cache_entries SET hits = hits + ?, last_used = ? WHERE key = ?",
                    [(count, at, k) for k, (count, at) in used.items()])
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):  # (no transaction: BEGIN did not run)
                    await conn.execute("ROLLBACK")
                raise
        except asyncio.CancelledError:
            self._put_back(pending, used)
            raise
        except Exception:  # a full disk, a locked file: the answers were served all the same
            self.failures += 1
            log.exception("writing %d cache entries to %s failed", len(pending), self.path)
        finally:
            self._writing = {}

    def _put_back(self, pending: dict[str, tuple[bytes, float, float]],
                  used: dict[str, tuple[int, float]]) -> None:
        self._pending = {**pending, **self._pending}
        for key, (count, at) in used.items():
            later, last = self._used.get(key, (0, at))
            self._used[key] = (count + later, max(at, last))

    async def prune(self) -> int:
        """Delete expired entries, then the least recently used past ``max_entries``."""
        conn = self._connection()
        async with conn.execute("DELETE FROM cache_entries WHERE expires_at <= ?",
                                (self._clock(),)) as cur:
            removed = max(cur.rowcount, 0)
        async with conn.execute("SELECT COUNT(*) FROM cache_entries") as cur:
            row = await cur.fetchone()
        over = (row[0] if row else 0) - self.max_entries
        if over > 0:
            async with conn.execute(
                    "DELETE FROM cache_entries WHERE key IN (SELECT key FROM cache_entries "
                    "ORDER BY last_used LIMIT ?)", (over,)) as cur:
                removed += max(cur.rowcount, 0)
        return removed

    async def close(self) -> None:
        """Stop the writer after the flush it is in (bounded), then write the rest."""
        if self._writer is not None:
            self._closing = True
            self._wake.set()
            await asyncio.wait((self._writer,), timeout=_CLOSE_WAIT)
            self._writer.cancel()  # past the bound: its entries are put back (flush)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._conn is not None:
            await self.flush()
            await self._conn.close()
            self._conn = None

    async def _write_loop(self) -> None:
        pruned = self._clock()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_every):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            if self._closing:
                return
            if self._clock() - pruned >= self.prune_every:
                pruned = self._clock()
                try:
                    await self.prune()
                except Exception:  # tried again at the next round
                    log.exception("pruning the cache in %s failed", self.path)

    def _hit(self, key: str, now: float) -> None:
        self.hits += 1
        count, _ = self._used.get(key, (0, now))
        self._used[key] = (count + 1, now)

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("the sqlite cache is not started (or already closed)")
        return self._conn


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@hookimpl
def register_cache_backends(register: Callable[[type[CacheBackend]], None]) -> None:
    register(SqliteCache)
