"""The entries on disk: one SQLite file, the source of truth the faiss indexes are rebuilt from.

``semantic-cache.sqlite3`` under the gateway's data directory, apart from the
main database: its rows are large (a 1.5 KB vector and the answer each), it is
written only by the layer's worker thread, and deleting the file is a safe way to
drop the whole cache. One row per stored answer:

``id`` (the faiss id, never reused), ``scope``, ``exact`` (the exact cache's key: storing the
same request again replaces its row), ``prompt`` (for the guards), ``embedder``,
``vec`` (float32 little-endian), ``entry`` (the opaque answer bytes), ``bytes``,
``created``, ``expires``, ``used`` (the last hit, for LRU) and ``hits``.

Not thread-safe: every method runs in the worker thread that opened it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniroute_semantic_cache.embedders import Vectors
from omniroute_semantic_cache.index import Ids

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: an id names one vector
    scope TEXT NOT NULL,
    exact TEXT NOT NULL UNIQUE,
    prompt TEXT NOT NULL,
    embedder TEXT NOT NULL,
    vec BLOB NOT NULL,
    entry BLOB NOT NULL,
    bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    used REAL NOT NULL,
    hits INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_scope ON entries(scope);
CREATE INDEX IF NOT EXISTS entries_expires ON entries(expires);
CREATE INDEX IF NOT EXISTS entries_used ON entries(used);
"""


@dataclass(frozen=True, slots=True)
class Row:
    prompt: str
    entry: bytes
    expires: float


#: (row id, its scope): what the indexes must drop after rows were deleted
Removed = list[tuple[int, str]]


class EntryStore:
    """The SQLite file, with its row count and total answer bytes kept in memory."""

    def __init__(self, path: Path, embedder: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.embedder = embedder
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise RuntimeError(f"{path}: schema version {version} is newer than this plugin's "
                               f"({SCHEMA_VERSION})")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # another embedder's vectors can never be compared with this one's
        self._db.execute("DELETE FROM entries WHERE embedder != ?", (embedder,))
        self.count, self.bytes = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM entries").fetchone()

    def close(self) -> None:
        self._db.close()

    def vectors(self, dim: int) -> Iterator[tuple[str, Ids, Vectors]]:
        """Every row's vector, scope by scope (for the rebuild at start)."""
        rows = self._db.execute("SELECT scope, id, vec FROM entries ORDER BY scope, id")
        scope: str | None = None
        ids: list[int] = []
        blobs: list[bytes] = []
        for row_scope, row_id, vec in rows:
            if row_scope != scope and ids:
                yield self._batch(scope or "", ids, blobs, dim)
                ids, blobs = [], []
            scope = row_scope
            ids.append(row_id)
            blobs.append(vec)
        if ids:
            yield self._batch(scope or "", ids, blobs, dim)

    @staticmethod
    def _batch(scope: str, ids: list[int], blobs: list[bytes],
               dim: int) -> tuple[str, Ids, Vectors]:
        vecs = np.frombuffer(b"".join(blobs), "<f4").reshape(-1, dim).astype(np.float32)
        return scope, np.asarray(ids, np.int64), vecs

    def get(self, row_id: int) -> Row | None:
        found = self._db.execute("SELECT prompt, entry, expires FROM entries WHERE id = ?",
                                 (row_id,)).fetchone()
        return None if found is None else Row(found[0], bytes(found[1]), found[2])

    def touch(self, used: dict[int, tuple[float, int]]) -> None:
        """Record hits: ``{id: (last used, hits since the last call)}``, one transaction."""
        if not used:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE entries SET used = ?, hits = hits + ? WHERE id = ?",
                                 [(when, n, row_id) for row_id, (when, n) in used.items()])

    def put(self, *, scope: str, exact: str, prompt: str, vec: Vectors, entry: bytes,
            now: float, ttl: float) -> tuple[int, Removed]:
        """Insert (or replace the row of the same ``exact`` key); the new id and what went."""
        removed: Removed = []
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            old = self._db.execute("SELECT id, scope, bytes FROM entries WHERE exact = ?",
                                   (exact,)).fetchone()
            if old is not None:
                self._db.execute("DELETE FROM entries WHERE id = ?", (old[0],))
                removed.append((old[0], old[1]))
            cur = self._db.execute(
                "INSERT INTO entries (scope, exact, prompt, embedder, vec, entry, bytes, created,"
                " expires, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (scope, exact, prompt, self.embedder,
                 np.ascontiguousarray(vec, "<f4").tobytes(), entry, len(entry), now, now + ttl,
                 now))
        if old is not None:
            self.count -= 1
            self.bytes -= old[2]
        self.count += 1
        self.bytes += len(entry)
        assert cur.lastrowid is not None
        return cur.lastrowid, removed

    def expire(self, now: float) -> Removed:
        """Delete the rows past their expiry."""
        return self._delete("SELECT id, scope, bytes FROM entries WHERE expires <= ?", (now,))

    def evict(self, max_entries: int, max_bytes: int) -> Removed:
        """Past either bound, delete least recently used rows down to 95% of both."""
        if self.count <= max_entries and self.bytes <= max_bytes:
            return []
        keep_entries, keep_bytes = int(max_entries * 0.95), int(max_bytes * 0.95)
        doomed: list[tuple[int, str, int]] = []
        count, size = self.count, self.bytes
        rows = self._db.execute("SELECT id, scope, bytes FROM entries ORDER BY used, id")
        try:
            for row in rows:
                if count <= keep_entries and size <= keep_bytes:
                    break
                doomed.append(row)
                count -= 1
                size -= row[2]
        finally:
            rows.close()  # read only as far as needed, closed before the deletes
        return self._drop(doomed)

    def delete(self, exact: str) -> Removed:
        """Forget the entry of the exact key ``exact`` (what went: none or one row)."""
        return self._delete("SELECT id, scope, bytes FROM entries WHERE exact = ?", (exact,))

    def clear(self) -> None:
        self._db.execute("DELETE FROM entries")
        self.count = self.bytes = 0

    def _delete(self, query: str, args: tuple[object, ...]) -> Removed:
        return self._drop(self._db.execute(query, args).fetchall())

    def _drop(self, rows: list[tuple[int, str, int]]) -> Removed:
        if not rows:
            return []
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM entries WHERE id = ?", [(r[0],) for r in rows])
        self.count -= len(rows)
        self.bytes -= sum(r[2] for r in rows)
        return [(r[0], r[1]) for r in rows]
