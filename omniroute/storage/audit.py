"""The audit log: every management action and every login, kept apart from usage.

An entry says who (``admin_session``, ``key:<id>``, ``cli:<user>`` or ``anonymous``),
what (the method and route pattern, or ``cli <command>``; the target's id; the change),
when, from which address (``local`` for the CLI), and the status it got.
:meth:`AuditLog.add` is synchronous and never blocks; a background task writes
entries in batches (:mod:`omniroute.storage.buffered`), and :meth:`AuditLog.close`
flushes what is left; a process without that writer (the CLI) writes its entry
at once with :meth:`AuditLog.record`. Nothing secret waits in the buffer: an
entry is redacted before it is queued.

The change (the ``diff`` column) is one of two shapes:

* ``{"before": ..., "after": ...}`` (:func:`change_of`) when the action names the
  state it changes (:mod:`omniroute.storage.snapshots`) and succeeded: only the
  fields that changed, each side's value (``null``: absent), and the whole object
  on the side where it exists when one was created or deleted;
* ``{"request": ...}`` (:func:`diff_of`) otherwise: the request body as the change
  asked for it (a refused call, an action with no snapshot).

Secrets are masked in both (a key shows its first and last characters, a password
nothing). A login's body is never stored (a password is in it, mistyped or not),
and a stored diff is at most :data:`MAX_DIFF_CHARS` long. The table is pruned by
age (the ``audit_retention_days`` setting, default a year) in small batches, apart
from the request log's retention.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
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


def _masked_state(name: str, value: Any) -> Any:
    """A secret field's value in a snapshot: as in a request body, but a structure (a
    connection's ``credentials``) shows each of its values masked, so an operator sees
    which credential changed."""
    if isinstance(value, dict) and "pass" not in name.lower():
        return {k: _masked_state(k, v) for k, v in value.items()}
    return _masked(name, value)


def redact_state(value: Any) -> Any:
    """``value`` (a snapshot, or part of one) as the audit log stores it."""
    return redact(value, _masked_state)


def _stored(doc: dict[str, Any], fields: Iterable[Any], outer: str,
            size: int | None = None) -> str:
    """``doc`` as JSON, or when longer than :data:`MAX_DIFF_CHARS` its shape (``size``
    bytes, by default the JSON's; the names of ``fields``), marked truncated, under
    ``outer``."""
    text = orjson.dumps(doc).decode()
    if len(text) <= MAX_DIFF_CHARS:
        return text
    if size is None:
        size = len(text)
    names = sorted(str(k) for k in fields)[:_SHAPE_FIELDS]
    shape = {"truncated": True, "bytes": size,
             "fields": [n if len(n) <= _SHAPE_NAME else n[:_SHAPE_NAME] + "…" for n in names]}
    return orjson.dumps({outer: shape}).decode()


def diff_of(body: bytes | None) -> str | None:
    """The stored form of a request body: ``{"request": ...}``, redacted, and at most
    :data:`MAX_DIFF_CHARS` long (a longer one becomes its shape, marked truncated)."""
    if not body or not body.strip():
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return orjson.dumps({"request": {"unparsed_bytes": len(body)}}).decode()
    return request_diff(parsed, len(body))


def request_diff(request: Any, size: int | None = None) -> str | None:
    """The stored form of a request already parsed (a CLI command's options)."""
    if request is None:
        return None
    fields = request if isinstance(request, dict) else ()
    return _stored({"request": redact_diff(request)}, fields, "request", size)


def changed(before: Any, after: Any) -> tuple[Any, Any]:
    """What differs between two snapshots: of two objects, the fields that changed
    (nested objects compared field by field; a field absent on one side is ``None``
    there); else both, whole (a creation has no before, a deletion no after)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return before, after
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for name in [*before, *(k for k in after if k not in before)]:
        b, a = before.get(name), after.get(name)
        if b == a:
            continue
        if isinstance(b, dict) and isinstance(a, dict):
            old[name], new[name] = changed(b, a)
        else:
            old[name], new[name] = b, a
    return old, new


def change_of(before: Any, after: Any, *, by_id: bool = False) -> str:
    """The stored form of a change: ``{"before": ..., "after": ...}`` with what
    :func:`changed` keeps, redacted (:func:`redact_state`; with ``by_id``, the state is
    a table whose members are named by id, and each member is redacted on its own:
    ``key_…`` is an id there, not a secret's field name), at most
    :data:`MAX_DIFF_CHARS` long (a longer one becomes ``{"changed": {"truncated": true,
    "bytes": ..., "fields": [...]}}``, the names of the fields that changed)."""
    old, new = changed(before, after)
    if by_id and isinstance(old, dict) and isinstance(new, dict):
        doc = {"before": {k: redact_state(v) for k, v in old.items()},
               "after": {k: redact_state(v) for k, v in new.items()}}
    else:
        doc = {"before": redact_state(old), "after": redact_state(new)}
    fields = {*(old if isinstance(old, dict) else ()), *(new if isinstance(new, dict) else ())}
    return _stored(doc, fields, "changed")


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

    async def record(self, entry: AuditEntry) -> None:
        """Write ``entry`` now, in a transaction of its own, past the buffer: for a
        process without the background writer (a CLI command, which must not exit
        before its entry is stored). Raises what the database raised."""
        await self._transaction([entry], singly=False)

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
