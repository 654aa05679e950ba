"""The audit log: every management action and every login, kept apart from usage.

An entry says who (``admin_session``, ``key:<id>`` or ``anonymous``), what (the
method and route pattern, the target's id and the request body as the change
asked for, secrets redacted), when, from which address, and the status it got.
:meth:`AuditLog.add` is synchronous and never blocks; a background task writes
entries in batches, and :meth:`AuditLog.close` flushes what is left. Nothing
secret waits in the buffer: an entry is redacted before it is queued.

The table is not pruned with the request log: an audit trail is kept until an
operator removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import astuple, dataclass
from typing import Any

import orjson

from omniroute.storage.db import Database
from omniroute.storage.usage import decode_cursor, encode_cursor, iso
from omniroute.vault import mask

log = logging.getLogger(__name__)

#: parts of a field name that mark its value as a secret (compared without ``_`` and ``-``)
_SECRET_PARTS = ("password", "passwd", "secret", "apikey", "credential", "authorization",
                 "cookie", "privatekey", "signature")
#: a field named exactly so (or ending in ``token``: ``access_token``, ``id_token``) is secret;
#: ``max_tokens`` and ``tokens_per_day`` are counts, not secrets
_SECRET_NAMES = frozenset({"key", "token", "bearer", "session", "auth"})
#: a diff longer than this is replaced by its shape
MAX_DIFF_CHARS = 16 * 1024
_DEPTH = 20


def is_secret_field(name: str) -> bool:
    """Whether a field of this name holds a credential."""
    flat = name.lower().replace("_", "").replace("-", "")
    return (flat in _SECRET_NAMES or flat.endswith("token")
            or any(part in flat for part in _SECRET_PARTS))


def redact(value: Any, depth: int = 0) -> Any:
    """``value`` with every secret field's value masked (never kept in full): a key shows
    its first and last characters, so an operator recognises it; a password shows nothing
    (a failed login's may be the real one, mistyped)."""
    if depth > _DEPTH:
        return "…"
    if isinstance(value, dict):
        return {k: (_masked(str(k), v) if is_secret_field(str(k)) else redact(v, depth + 1))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value]
    return value


def _masked(name: str, value: Any) -> Any:
    if value is None or value == "":
        return value
    if "pass" in name.lower():
        return "[redacted]"
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict | list):
        return "[redacted]"
    return "***"


def diff_of(body: bytes | None) -> str | None:
    """The stored form of a request body: JSON, redacted, and bounded in size."""
    if not body or not body.strip():
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return orjson.dumps({"unparsed_bytes": len(body)}).decode()
    text = orjson.dumps(redact(parsed)).decode()
    if len(text) <= MAX_DIFF_CHARS:
        return text
    shape = sorted(str(k) for k in parsed)[:100] if isinstance(parsed, dict) else None
    return orjson.dumps({"truncated_bytes": len(body), "fields": shape}).decode()


@dataclass(slots=True)
class AuditEntry:
    ts: float
    actor: str
    action: str
    target: str | None = None
    diff: str | None = None
    address: str | None = None
    status: int | None = None


_INSERT = ("INSERT INTO audit_log(ts, actor, action, target, diff, address, status) "
           "VALUES (?, ?, ?, ?, ?, ?, ?)")


class AuditLog:
    """Buffers audit entries and writes them in the background."""

    def __init__(self, db: Database, *, interval: float = 0.5,
                 max_pending: int = 100_000) -> None:
        self.db = db
        self.interval = interval
        self.max_pending = max_pending
        #: entries lost because the database failed for too long
        self.dropped = 0
        self._pending: list[AuditEntry] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, entry: AuditEntry) -> None:
        """Queue ``entry``; never blocks."""
        self._pending.append(entry)
        if len(self._pending) > self.max_pending:
            del self._pending[0]
            self._lost(1)

    def _lost(self, count: int) -> None:
        self.dropped += count
        log.error("audit log backlog full: %d entries dropped", self.dropped)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="omniroute-audit-log")

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
        """Write pending entries; return how many were written."""
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            async with self.db.transaction():
                await self.db.executemany(_INSERT, [astuple(e) for e in batch])
        except Exception:
            log.exception("audit log write failed; %d entries kept for retry", len(batch))
            self._pending[:0] = batch
            excess = len(self._pending) - self.max_pending
            if excess > 0:
                del self._pending[:excess]
                self._lost(excess)
            return 0
        return len(batch)

    async def page(self, *, actor: str | None = None, action: str | None = None,
                   since: float | None = None, until: float | None = None,
                   cursor: str | None = None, limit: int = 50,
                   ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of entries, newest first, and the next page's cursor (or None).

        ``action`` matches exactly (``DELETE /api/keys/{id}``), or as a prefix when
        it ends with ``*`` (``POST /api/auth/*``).

        :raises ValueError: a cursor this method did not make.
        """
        limit = min(max(limit, 1), 500)
        clauses: list[str] = []
        params: list[Any] = []
        if actor is not None:
            clauses.append("actor = ?")
            params.append(actor)
        if action is not None:
            if action.endswith("*"):
                clauses.append("substr(action, 1, ?) = ?")
                params += [len(action) - 1, action[:-1]]
            else:
                clauses.append("action = ?")
                params.append(action)
        if since is not None:
            clauses.append("ts >= ?")
            params.append(since)
        if cursor is not None:
            after_ts, after_id = decode_cursor(cursor)
            if until is None or after_ts < until:
                clauses.append("ts <= ?")
                params.append(after_ts)
            else:
                clauses.append("ts < ?")
                params.append(until)
            clauses.append("(ts < ? OR (ts = ? AND id < ?))")
            params += [after_ts, after_ts, after_id]
        elif until is not None:
            clauses.append("ts < ?")
            params.append(until)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self.db.fetchall(
            f"SELECT * FROM audit_log{where} ORDER BY ts DESC, id DESC LIMIT ?",
            [*params, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        entries = []
        for row in rows:
            entry = dict(row)
            entry["time"] = iso(entry["ts"])
            entry["diff"] = orjson.loads(entry["diff"]) if entry["diff"] else None
            entries.append(entry)
        next_cursor = encode_cursor(rows[-1]["ts"], rows[-1]["id"]) if more and rows else None
        return entries, next_cursor
