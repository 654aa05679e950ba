"""The request log: one record per client request, written in batches.

Handlers call :meth:`RequestLog.add` (synchronous, O(1), never blocks, safe
inside a ``finally`` during cancellation); a background task writes batches to
SQLite, so no database write sits on the per-request path; another applies
retention (age and row count) in small batches. What a failed or cancelled
write does, and how the buffer is bounded, is :mod:`omniroute.storage.buffered`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import compress
from typing import Any

from omniroute.storage import rollup
from omniroute.storage.buffered import BufferedLog
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
    #: seconds of audio a transcription or translation was charged for
    audio_seconds: float | None = None
    #: characters of text a speech request turned into audio
    characters: int | None = None
    #: images an image generation made (None: not an image request)
    images: int | None = None


_FIELDS = [f.name for f in dataclasses.fields(RequestRecord)]
_INSERT = (
    f"INSERT INTO request_log({', '.join(_FIELDS)}) "
    f"VALUES ({', '.join('?' for _ in _FIELDS)})"
)


_row = operator.attrgetter(*_FIELDS)  # one record -> the tuple of its column values
#: the record's bool fields, by position (bound as 0 / 1: SQLite's binding adapts a bool
#: the slow way, as it does None)
_BOOLS = tuple(i for i, f in enumerate(dataclasses.fields(RequestRecord)) if f.type == "bool")
#: ``_row`` compared item by item with this tells the values bound (not None); a field
#: whose column is NOT NULL or has a default is always bound (an omitted one would take
#: the default where the record says None)
_ALWAYS = object()


def _unbound_marks(always: set[str]) -> tuple[object, ...]:
    return tuple(_ALWAYS if name in always else None for name in _FIELDS)


def _insert_of(bound: tuple[bool, ...]) -> str:
    names = ["id", *compress(_FIELDS, bound)]
    return f"INSERT INTO request_log({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


class RequestLog(BufferedLog[RequestRecord]):
    """Buffers request records and writes them in the background; prunes old ones.

    The rules of the buffer, its writes and its retention are
    :class:`~omniroute.storage.buffered.BufferedLog`'s. Retention
    (:attr:`retention_days`, :attr:`max_rows`) is set from the settings. Each
    write also stores when each API key was last used, and adds its records to the
    hourly and daily totals (:mod:`omniroute.storage.rollup`) in the same transaction.
    """

    table = "request_log"
    insert = _INSERT
    noun = "records"

    def __init__(
        self, db: Database, *, interval: float = 0.5, max_pending: int = 100_000,
        prune_every: float = 600.0, clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(db, interval=interval, max_pending=max_pending,
                         prune_every=prune_every, clock=clock)
        self.enabled = True
        self.retention_days = 30.0
        self.max_rows = 1_000_000
        self._key_use: dict[str, float] = {}
        self._used: dict[str, float] = {}
        #: the largest record id before this transaction's rows (they come after it)
        self._before = 0
        #: see :meth:`inserts`: what marks a value left out, and the statement per shape
        self._marks: tuple[object, ...] | None = None
        self._inserts: dict[tuple[bool, ...], str] = {}

    row = staticmethod(_row)  # type: ignore[assignment]

    def add(self, record: RequestRecord) -> None:
        """Queue ``record`` (synchronous, O(1), never blocks)."""
        if record.api_key_id:
            self._key_use[record.api_key_id] = record.ts
        if self.enabled:
            super().add(record)

    def touch(self, key_id: str, ts: float) -> None:
        """Note that a key was used, without a record (a key that keeps no usage records)."""
        self._key_use[key_id] = ts

    def has_more(self) -> bool:
        return bool(self._key_use)

    def inserts(self, batch: list[RequestRecord]) -> list[tuple[str, list[Sequence[Any]]]]:
        """One ``INSERT`` per shape of record (which fields are None), naming only the
        columns with a value: the NULLs come from the columns' default (NULL), and the
        values bound are all ints, floats and strings. (SQLite's binding of None, and of
        a bool, looks for an adapter first, which cost more than the rest of the row.)
        Each row gets its id, the next after :meth:`begin`'s in batch order, as one
        ``INSERT`` would have given it."""
        assert self._marks is not None  # begin() ran
        marks = self._marks
        groups: dict[tuple[bool, ...], list[Sequence[Any]]] = {}
        is_not = operator.is_not
        for rowid, record in enumerate(batch, self._before + 1):
            row = _row(record)
            if _BOOLS:
                values = list(row)
                for i in _BOOLS:
                    values[i] = int(values[i])
                row = tuple(values)
            bound = tuple(map(is_not, row, marks))
            rows = groups.get(bound)
            if rows is None:
                rows = groups[bound] = []
            rows.append((rowid, *compress(row, bound)))
        inserts = self._inserts
        out = []
        for bound, rows in groups.items():
            statement = inserts.get(bound)
            if statement is None:
                statement = inserts[bound] = _insert_of(bound)
            out.append((statement, rows))
        return out

    async def begin(self) -> None:
        if self._marks is None:  # columns that a None must be bound to (NOT NULL, DEFAULT)
            columns = await self.db.fetchall("PRAGMA table_info(request_log)")
            self._marks = _unbound_marks({c[1] for c in columns
                                          if c[3] or c[4] is not None})
        row = await self.db.fetchone("SELECT max(id) FROM request_log")
        self._before = row[0] if row is not None and row[0] is not None else 0

    async def also(self) -> None:
        for statement in rollup.FOLD:  # this transaction's records into the totals
            await self.db.execute(statement, (self._before,) if "?" in statement else ())
        used, self._key_use = self._key_use, {}
        self._used.update(used)
        if used:
            await self.db.executemany("UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                                      [(ts, key_id) for key_id, ts in used.items()])

    def also_done(self) -> None:
        self._used = {}

    def also_failed(self) -> None:
        for key_id, ts in self._used.items():  # a newer use noted meanwhile wins
            self._key_use.setdefault(key_id, ts)
        self._used = {}

    async def prune(self) -> int:
        """Apply retention to the records, and their age to the rollup rows."""
        removed = await super().prune()
        if self.retention_days > 0:
            cutoff = self.clock() - self.retention_days * 86400
            async with self.db.transaction():
                for table in rollup.TABLES:
                    for period in rollup.PERIODS:  # buckets wholly before the cutoff
                        await self.db.execute(
                            f"DELETE FROM {table} WHERE period = ? AND start < ?",
                            (period, cutoff - period))
        return removed

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT * FROM request_log ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]
