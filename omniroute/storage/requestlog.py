"""The request log: one record per client request, written in batches.

Handlers call :meth:`RequestLog.add` (synchronous, O(1), never blocks, safe
inside a ``finally`` during cancellation); a background task writes batches to
SQLite, so no database write sits on the per-request path. A failed write keeps
its records for the next attempt; :meth:`RequestLog.close` flushes what is left.
Another background task applies retention (age and row count) in small batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import operator
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omniroute.storage.db import Database

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    ts: float
    endpoint: str
    status: int = 0
    api_key_id: str | None = None
    model_requested: str | None = None
    provider: str | None = None
    connection_id: str | None = None
    model: str | None = None
    stream: bool = False
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    attempts: int = 0
    client_format: str | None = None
    user_agent: str | None = None
    combo: str | None = None
    #: the failure's class name (``UpstreamTimeout``, ``BudgetExceeded``...); None on success
    error_class: str | None = None
    #: JSON list of ``{"target", "failure", "status", "ms"}``, one per attempt
    attempt_log: str | None = None
    #: time to the first content token (text, reasoning or a tool call), streams and JSON alike
    ttfc_ms: float | None = None
    tokens_per_s: float | None = None
    cache_write_tokens: int | None = None
    #: the token counts are the local tokenizer's estimate (the upstream sent no usage)
    usage_estimated: bool = False
    cost_usd: float | None = None
    #: the list price of a subscription connection's tokens (its ``cost_usd`` is 0)
    list_cost_usd: float | None = None
    cache_hit: bool = False
    request_body: str | None = None
    response_body: str | None = None


_FIELDS = [f.name for f in dataclasses.fields(RequestRecord)]
_INSERT = (
    f"INSERT INTO request_log({', '.join(_FIELDS)}) "
    f"VALUES ({', '.join('?' for _ in _FIELDS)})"
)


_row = operator.attrgetter(*_FIELDS)  # one record -> the tuple of its column values

#: records per write transaction (a large backlog is written in several)
WRITE_BATCH = 5000
#: rows per retention ``DELETE``, and the pause between two of them (seconds)
PRUNE_BATCH = 2000
PRUNE_PAUSE = 0.01


class RequestLog:
    """Buffers request records and writes them in the background; prunes old ones.

    The buffer is bounded (``max_pending``): while the database cannot keep up
    (or fails), the oldest records are dropped past the bound and counted in
    :attr:`dropped`, never silently. Retention (:attr:`retention_days`,
    :attr:`max_rows`, set from the settings) is applied by a background task in
    batches of :data:`PRUNE_BATCH` rows, each its own short transaction, so the
    writer is never held behind one large ``DELETE``.
    """

    def __init__(
        self, db: Database, *, interval: float = 0.5, max_pending: int = 100_000,
        prune_every: float = 600.0, clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.interval = interval
        self.max_pending = max_pending
        self.prune_every = prune_every
        self.clock = clock
        self.enabled = True
        #: records lost because the buffer was full (shown in health and metrics)
        self.dropped = 0
        #: records written since start
        self.written = 0
        #: rows removed by retention since start
        self.pruned = 0
        #: retention: records older than this many days go (0: kept whatever their age)
        self.retention_days = 30.0
        #: retention: at most this many rows are kept, the newest (0: no bound)
        self.max_rows = 1_000_000
        self._pending: deque[RequestRecord] = deque()
        self._key_use: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    def add(self, record: RequestRecord) -> None:
        """Queue ``record`` (synchronous, O(1), never blocks)."""
        if record.api_key_id:
            self._key_use[record.api_key_id] = record.ts
        if not self.enabled:
            return
        pending = self._pending
        if len(pending) >= self.max_pending:  # the database has been failing for long
            pending.popleft()
            self._lost(1)
        pending.append(record)

    def touch(self, key_id: str, ts: float) -> None:
        """Note that a key was used, without a record (a key that keeps no usage records)."""
        self._key_use[key_id] = ts

    def _lost(self, n: int) -> None:
        before, self.dropped = self.dropped, self.dropped + n
        if before // 1000 != self.dropped // 1000 or before == 0:
            log.error("request log backlog full: %d records dropped", self.dropped)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="omniroute-request-log"),
                       asyncio.create_task(self._prune_loop(), name="omniroute-request-log-prune")]

    async def close(self) -> None:
        """Stop the background tasks and write every record still waiting."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def _prune_loop(self) -> None:
        await asyncio.sleep(min(self.prune_every, 60.0))  # not while the gateway starts
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("request log retention failed; retrying later")
            await asyncio.sleep(self.prune_every)

    async def flush(self) -> int:
        """Write pending records; return how many were written.

        Large backlogs go in transactions of :data:`WRITE_BATCH` records. A failed
        write puts its records back in front of those that arrived meanwhile.
        """
        written = 0
        used, self._key_use = self._key_use, {}
        while True:
            pending = self._pending
            if len(pending) <= WRITE_BATCH:
                batch, self._pending = list(pending), deque()
            else:
                batch = [pending.popleft() for _ in range(WRITE_BATCH)]
            try:
                async with self.db.transaction():
                    if batch:
                        await self.db.executemany(_INSERT, [_row(r) for r in batch])
                    if used:
                        await self.db.executemany(
                            "UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                            [(ts, key_id) for key_id, ts in used.items()])
            except Exception:
                log.exception("request log write failed; %d records kept for retry", len(batch))
                self._requeue(batch)
                for key_id, ts in used.items():
                    self._key_use.setdefault(key_id, ts)
                return written
            used = {}
            written += len(batch)
            self.written += len(batch)
            if not self._pending:
                return written

    def _requeue(self, batch: list[RequestRecord]) -> None:
        """Put a failed batch back before the newer records, keeping the newest ``max_pending``."""
        newer = self._pending
        excess = len(batch) + len(newer) - self.max_pending
        if excess > 0:
            self._lost(excess)
        merged: deque[RequestRecord] = deque(batch[max(0, excess):])
        merged.extend(newer if excess <= len(batch) else list(newer)[excess - len(batch):])
        self._pending = merged

    async def prune(self) -> int:
        """Apply retention now: by age, then by row count, in small batches; rows removed."""
        removed = 0
        if self.retention_days > 0:
            cutoff = self.clock() - self.retention_days * 86400
            removed += await self._delete_batches(
                "DELETE FROM request_log WHERE id IN "
                "(SELECT id FROM request_log WHERE ts < ? LIMIT ?)", cutoff)
        if self.max_rows > 0:
            row = await self.db.fetchone("SELECT max(id) FROM request_log")
            newest = row[0] if row is not None else None
            if newest is not None and newest > self.max_rows:
                # ids only grow, so the newest max_rows rows have ids above this
                removed += await self._delete_batches(
                    "DELETE FROM request_log WHERE id IN "
                    "(SELECT id FROM request_log WHERE id <= ? ORDER BY id LIMIT ?)",
                    newest - self.max_rows)
        if removed:
            self.pruned += removed
            log.info("request log retention removed %d records", removed)
        return removed

    async def _delete_batches(self, sql: str, bound: float) -> int:
        removed = 0
        while True:
            async with self.db.transaction():
                n = await self.db.execute(sql, (bound, PRUNE_BATCH))
            removed += n
            if n < PRUNE_BATCH:
                return removed
            await asyncio.sleep(PRUNE_PAUSE)  # the writer (and every other query) goes first

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT * FROM request_log ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]
