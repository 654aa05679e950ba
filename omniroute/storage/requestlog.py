"""The request log: one record per client request, written in batches.

Handlers call :meth:`RequestLog.add` (synchronous, never blocks, safe inside a
``finally`` during cancellation); a background task writes batches to SQLite,
so no database write sits on the per-request path. A failed write keeps its
records for the next attempt; :meth:`RequestLog.close` flushes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import operator
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


class RequestLog:
    """Buffers request records and writes them in the background."""

    def __init__(self, db: Database, *, interval: float = 0.5, max_pending: int = 100_000) -> None:
        self.db = db
        self.interval = interval
        self.max_pending = max_pending
        self.enabled = True
        self.dropped = 0
        self._pending: list[RequestRecord] = []
        self._key_use: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """Records waiting to be written."""
        return len(self._pending)

    def add(self, record: RequestRecord) -> None:
        if record.api_key_id:
            self._key_use[record.api_key_id] = record.ts
        if not self.enabled:
            return
        self._pending.append(record)
        if len(self._pending) > self.max_pending:  # the database has been failing for long
            del self._pending[0]
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.error("request log backlog full: %d records dropped", self.dropped)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="omniroute-request-log")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def flush(self) -> int:
        """Write pending records; return how many were written."""
        batch, self._pending = self._pending, []
        used, self._key_use = self._key_use, {}
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
            self._pending[:0] = batch
            excess = len(self._pending) - self.max_pending
            if excess > 0:  # keep the newest; count what is lost
                del self._pending[:excess]
                self.dropped += excess
                log.error("request log backlog full: %d records dropped", self.dropped)
            for key_id, ts in used.items():
                self._key_use.setdefault(key_id, ts)
            return 0
        return len(batch)

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT * FROM request_log ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]
