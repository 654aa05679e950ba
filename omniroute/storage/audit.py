"""The audit log: every management action and every login, kept apart from usage.

An entry says who (``admin_session``, ``key:<id>`` or ``anonymous``), what (the
method and route pattern, the target's id and the request body as the change
asked for, secrets redacted), when, from which address, and the status it got.
:meth:`AuditLog.add` is synchronous and never blocks; a background task writes
entries in batches (:mod:`omniroute.storage.buffered`), and :meth:`AuditLog.close`
flushes what is left. Nothing secret waits in the buffer: an entry is redacted
before it is queued.

A login's body is never stored (a password is in it, mistyped or not), and a
stored diff is at most :data:`MAX_DIFF_CHARS` long. The table is pruned by age
(the ``audit_retention_days`` setting, default a year) in small batches, apart
from the request log's retention.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from typing import Any

import orjson

from omniroute.redact import REDACTED, redact
from omniroute.storage.backend import DatabaseBackend
from omniroute.storage.buffered import BufferedLog
from omniroute.storage.usage import decode_cursor, encode_cursor, iso
from omniroute.vault import mask

#: a stored diff longer than this is replaced by its shape, marked ``truncated``
MAX_DIFF_CHARS = 4 * 1024
#: the buffer's bound in bytes (beside its bound in entries)
MAX_PENDING_BYTES = 16 * 1024 * 1024
#: field names a truncated diff lists, and the characters of each
_SHAPE_FIELDS, _SHAPE_NAME = 50, 40


def _masked(name: str, value: Any) -> Any:
    """A secret field's value in a diff: a key shows its first and last characters, so an
    operator recognises it; a password shows nothing (a failed one may be the real one,
    mistyped), nor does a structure or a number."""
    if value is None or value == "":
        return value
    if isinstance(value, str) and "pass" not in name.lower():
        return mask(value)
    return REDACTED


def redact_diff(value: Any) -> Any:
    """``value`` (a parsed request body) as the audit log stores it (:mod:`omniroute.redact`)."""
    return redact(value, _masked)


def diff_of(body: bytes | None) -> str | None:
    """The stored form of a request body: JSON, redacted, and at most
    :data:`MAX_DIFF_CHARS` long (a longer one becomes its shape, marked truncated)."""
    if not body or not body.strip():
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return orjson.dumps({"unparsed_bytes": len(body)}).decode()
    text = orjson.dumps(redact_diff(parsed)).decode()
    if len(text) <= MAX_DIFF_CHARS:
        return text
    names = sorted(str(k) for k in parsed)[:_SHAPE_FIELDS] if isinstance(parsed, dict) else []
    fields = [n if len(n) <= _SHAPE_NAME else n[:_SHAPE_NAME] + "…" for n in names]
    return orjson.dumps({"truncated": True, "bytes": len(body), "fields": fields}).decode()


@dataclass(slots=True)
class AuditEntry:
    ts: float
    actor: str
    action: str
    target: str | None = None
    diff: str | None = None
    address: str | None = None
    status: int | None = None
    #: made with the entry: a batch tried again (its commit may have landed, the answer
    #: lost) stores it once
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)


_INSERT = ("INSERT INTO audit_log(ts, actor, action, target, diff, address, status, uid) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(uid) DO NOTHING")


def _size(entry: AuditEntry) -> int:
    return (100 + len(entry.actor) + len(entry.action) + len(entry.target or "")
            + len(entry.diff or "") + len(entry.address or ""))


class AuditLog(BufferedLog[AuditEntry]):
    """Buffers audit entries and writes them in the background; prunes them by age.

    The buffer is bounded by entries and by bytes (:data:`MAX_PENDING_BYTES`): the
    login route is public, so what waits must not grow with what anyone sends.
    Retention is the ``audit_retention_days`` setting, read through ``retention_days``
    at each pruning (0: kept until an operator removes them).
    """

    table = "audit_log"
    insert = _INSERT
    noun = "entries"
    row = staticmethod(astuple)  # type: ignore[assignment]
    size = staticmethod(_size)  # type: ignore[assignment]

    def __init__(self, db: DatabaseBackend, *, interval: float = 0.5, max_pending: int = 100_000,
                 max_bytes: int = MAX_PENDING_BYTES, prune_every: float = 600.0,
                 retention_days: Callable[[], float] = lambda: 365.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(db, interval=interval, max_pending=max_pending, max_bytes=max_bytes,
                         prune_every=prune_every, clock=clock)
        self._retention_days = retention_days

    def retention(self) -> tuple[float, int]:
        return self._retention_days(), 0

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
            del entry["uid"]  # the writer's, not the reader's
            entry["time"] = iso(entry["ts"])
            entry["diff"] = orjson.loads(entry["diff"]) if entry["diff"] else None
            entries.append(entry)
        next_cursor = encode_cursor(rows[-1]["ts"], rows[-1]["id"]) if more and rows else None
        return entries, next_cursor
