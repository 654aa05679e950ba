"""Cache backend ``sqlite``: entries that survive a restart, in a file of their own.

The cache lives in ``<data dir>/cache.sqlite3``, apart from the gateway's database:
its writes never wait behind the request log's or the configuration's (SQLite has
one writer per file), the backup made before a schema upgrade does not copy it, and
deleting the file loses nothing but cached answers. Worker processes share it (WAL).

Writes never block a request: :meth:`SqliteCache.set` only queues the entry (a
``get`` sees it at once), and a background task writes what is queued in one
transaction every ``flush_every`` seconds, with the hit counts. The same task
prunes expired entries and, past ``max_entries``, the least recently used.

A miss does not ask SQLite either (a trip to aiosqlite's thread): the backend keeps
the hashes of the keys in the file (``hash(key)``), read in full at start, and a
lookup of a key not among them is a miss at once. The writer follows the file: on
each round where the file or its WAL changed (``os.stat``), it reads the rows added
since the highest rowid it read (INSERT OR REPLACE gives a replaced key a new rowid),
so what other workers write (``--workers`` share the file) is seen within a round or
two. When that row is gone or holds another key (a clear, a prune or a delete took it,
and its rowid may be given again), and after every prune round, it reads them all
again. A key deleted elsewhere stays among the hashes until then: asking SQLite for
it is a miss, so the set can only cost a query, never serve what is not in the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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
        #: ``hash(key)`` of every key in the file and queued for it (a superset: deletes by
        #: other processes show only at the next full read); a key not in it is a miss
        self._keys: set[int] = set()
        #: the highest rowid read and its key (None: nothing read yet, or after a clear)
        self._last: tuple[int, str] | None = None
        #: the file's and its WAL's (mtime, size, inode) when the keys were last read
        self._stamp: tuple[int, ...] = ()
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
        await self.reload()
        self._writer = asyncio.create_task(self._write_loop(), name="omniroute-cache-sqlite")

    async def get(self, key: str) -> bytes | None:
        now = self._clock()
        queued = self._pending.get(key) or self._writing.get(key)
        if queued is not None and queued[1] > now:
            self._hit(key, now)
            return queued[0]
        if hash(key) not in self._keys:  # not in the file (as far as last read): no query
            self.misses += 1
            return None
        conn = self._connection()
        async with conn.execute("SELECT value, expires_at FROM cache_entries WHERE key = ?",
                                (key,)) as cur:
            row = await cur.fetchone()
        if row is None or row[1] <= now:  # an expired row is pruned by the writer
            self.misses += 1
            return None
        self._hit(key, now)
        return bytes(row[0])

    def absent(self, key: str) -> bool:
        """Neither queued nor among the file's key hashes: a miss without a query."""
        if key in self._pending or key in self._writing or hash(key) in self._keys:
            return False
        self.misses += 1
        return True

    async def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        self.put(key, value, ttl)

    def put(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Queue the write (its own writer makes it, batched): never waits."""
        if len(self._pending) >= _MAX_PENDING and key not in self._pending:
            self.dropped += 1
            return True
        now = self._clock()
        self._pending[key] = (value, now + (ttl if ttl is not None else self.ttl), now)
        self._keys.add(hash(key))
        if len(self._pending) >= _WAKE_AT:
            self._wake.set()
        return True

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
        # (what was queued meanwhile is put back: the next round reads the file in full)
        self._keys = {hash(k) for k in (*self._pending, *self._writing)}
        self._last, self._stamp = None, ()

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

    async def follow(self) -> None:
        """Add the keys written to the file since it was last read (by this process or
        another), when the file or its WAL changed; read them all again when the highest
        row read is gone or holds another key (its rowid may have been given again)."""
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return
        last = self._last
        async with self._connection().execute(
                "SELECT rowid, key FROM cache_entries WHERE rowid >= ? ORDER BY rowid",
                (last[0] if last is not None else 0,)) as cur:
            rows = list(await cur.fetchall())
        if last is not None and (not rows or tuple(rows[0]) != last):
            await self.reload()
            return
        self._stamp = stamp  # (read before the query: a write after it is read next round)
        if rows:
            self._keys.update(hash(row[1]) for row in rows)
            self._last = (rows[-1][0], rows[-1][1])

    async def reload(self) -> None:
        """Read every key in the file again (at start, after a clear or a prune, or when
        the rows read last are gone): the keys deleted meanwhile are forgotten."""
        stamp = _stamp(self.path)
        async with self._connection().execute(
                "SELECT rowid, key FROM cache_entries ORDER BY rowid") as cur:
            rows = list(await cur.fetchall())
        keys = {hash(row[1]) for row in rows}
        keys.update(hash(k) for k in (*self._pending, *self._writing))  # queued meanwhile
        self._keys, self._stamp = keys, stamp
        self._last = (rows[-1][0], rows[-1][1]) if rows else None

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
            try:
                if self._clock() - pruned >= self.prune_every:
                    pruned = self._clock()
                    await self.prune()
                    await self.reload()  # (forgets what this and other processes deleted)
                else:
                    await self.follow()
            except Exception:  # tried again at the next round
                log.exception("pruning or reading the cache in %s failed", self.path)

    def _hit(self, key: str, now: float) -> None:
        self.hits += 1
        count, _ = self._used.get(key, (0, now))
        self._used[key] = (count + 1, now)

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise RuntimeError("the sqlite cache is not started (or already closed)")
        return self._conn


def _stamp(path: Path) -> tuple[int, ...]:
    """What changes when any process writes the file: its and its WAL's mtime, size and
    inode (0s for one that is not there)."""
    out: list[int] = []
    for name in (path, path.with_name(path.name + "-wal")):
        try:
            st = os.stat(name)
        except OSError:
            out += (0, 0, 0)
        else:
            out += (st.st_mtime_ns, st.st_size, st.st_ino)
    return tuple(out)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@hookimpl
def register_cache_backends(register: Callable[[type[CacheBackend]], None]) -> None:
    register(SqliteCache)
