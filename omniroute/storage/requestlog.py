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
import math
import operator
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from omniroute.storage import responses, rollup
from omniroute.storage.backend import DatabaseBackend
from omniroute.storage.buffered import BufferedLog
from omniroute.storage.tally import Tally

log = logging.getLogger(__name__)

#: records waiting that start the writer's turn before its half second is up
#: (:attr:`~omniroute.storage.buffered.BufferedLog.flush_at`): at a few thousand requests
#: a second, half a second's records and their flush were a peak of Python objects the
#: allocator kept after it (docs/architecture.md, "Resident memory")
FLUSH_AT = 512


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
    #: the three flags (``stream``, ``usage_estimated``, ``cache_hit``) are 0 or 1, ints
    #: rather than bools: Python's sqlite3 binds an int as it is, a bool through its
    #: adapter (some 1,400 instructions each, three a record)
    stream: int = 0
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
    #: JSON list of ``{"target", "failure", "status", "ms", "error"?}``, one per attempt
    attempt_log: str | None = None
    #: time to the first content token (text, reasoning or a tool call), streams and JSON alike
    ttfc_ms: float | None = None
    tokens_per_s: float | None = None
    cache_write_tokens: int | None = None
    #: the token counts are the local tokenizer's estimate (the upstream sent no usage)
    usage_estimated: int = 0
    cost_usd: float | None = None
    #: the list price of a subscription connection's tokens (its ``cost_usd`` is 0)
    list_cost_usd: float | None = None
    cache_hit: int = 0
    request_body: str | None = None
    response_body: str | None = None
    #: seconds of audio a transcription or translation was charged for
    audio_seconds: float | None = None
    #: characters of text a speech request turned into audio
    characters: int | None = None
    #: images an image generation made (None: not an image request)
    images: int | None = None


_FIELDS = [f.name for f in dataclasses.fields(RequestRecord)]
#: fields a served request's record almost never has: a failure's, the bodies (only with
#: ``log_bodies``), a combo's name, the other operations' amounts, a subscription's list
#: price. Binding a None costs Python's sqlite3 an adapter lookup and call (some 1,400
#: instructions each, against about 350 for a number or a text): a record without any
#: of them is written by a statement that leaves them out (NULL, their default)
RARE = ("error", "error_class", "combo", "cache_write_tokens", "list_cost_usd",
        "request_body", "response_body", "audio_seconds", "characters", "images")
_COMMON = [f for f in _FIELDS if f not in RARE]


def _insert(fields: list[str]) -> str:
    # a record is written once: a batch tried again (its commit may have landed before
    # the database went away) adds nothing twice
    return (f"INSERT INTO request_log({', '.join(fields)}) "
            f"VALUES ({', '.join('?' for _ in fields)}) ON CONFLICT(ts, request_id) DO NOTHING")


_INSERT, _INSERT_COMMON = _insert(_FIELDS), _insert(_COMMON)
#: each statement's columns, in its rows' order (what :class:`~omniroute.storage.tally.Tally`
#: reads them by)
_COLUMNS = {_INSERT: _FIELDS, _INSERT_COMMON: _COMMON}
_row = operator.attrgetter(*_FIELDS)  # one record -> the tuple of its column values
_common_row = operator.attrgetter(*_COMMON)
_rare = operator.attrgetter(*RARE)
_NONE_RARE = (None,) * len(RARE)


def record_inserts(batch: list[RequestRecord]) -> list[tuple[str, list[tuple[Any, ...]]]]:
    """The statements that write ``batch``, in its order: each run of records without
    any :data:`RARE` field by the statement that leaves those out, each other run by the
    full one (a batch of served requests is one ``executemany``)."""
    # in C, without a list of them: a batch of served requests is all plain
    if operator.countOf(map(_rare, batch), _NONE_RARE) == len(batch):
        return [(_INSERT_COMMON, list(map(_common_row, batch)))] if batch else []
    rare = list(map(_rare, batch))
    out: list[tuple[str, list[tuple[Any, ...]]]] = []
    rows: list[tuple[Any, ...]] = []
    common: bool | None = None
    for record, its_rare in zip(batch, rare, strict=True):
        plain = its_rare == _NONE_RARE
        if plain is not common:
            rows = []
            out.append((_INSERT_COMMON if plain else _INSERT, rows))
            common = plain
        rows.append(_common_row(record) if plain else _row(record))
    return out


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
        self, db: DatabaseBackend, *, interval: float = 0.5, max_pending: int = 100_000,
        prune_every: float = 600.0, clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(db, interval=interval, max_pending=max_pending,
                         prune_every=prune_every, clock=clock)
        self.enabled = True
        self.flush_at = FLUSH_AT
        self.retention_days = 30.0
        self.max_rows = 1_000_000
        self._key_use: dict[str, float] = {}
        self._used: dict[str, float] = {}
        #: the transaction's records added up here (:meth:`write`), and whether some
        #: were copied for the fold in SQL instead
        self._tally, self._copied = Tally(), False
        #: the scratch table of :data:`~omniroute.storage.rollup.NEW` was made (committed)
        self._scratch = False

    row = staticmethod(_row)  # type: ignore[assignment]

    def inserts(self, batch: list[RequestRecord]) -> list[tuple[str, list[Sequence[Any]]]]:
        return record_inserts(batch)  # type: ignore[return-value]

    def add(self, record: RequestRecord) -> None:
        """Queue ``record`` (synchronous, O(1), never blocks)."""
        if record.api_key_id:
            self._key_use[record.api_key_id] = record.ts
        if not self.enabled:
            return
        if self.max_bytes:  # bounded by size too: BufferedLog's rules
            super().add(record)
            return
        pending = self._pending  # BufferedLog.add by count only, inline: once per request
        pending.append(record)
        if len(pending) > self.max_pending:  # the database has been failing for long
            pending.popleft()
            self._lost(1)
        elif len(pending) == self.flush_at:
            self.wake()

    def touch(self, key_id: str, ts: float) -> None:
        """Note that a key was used, without a record (a key that keeps no usage records)."""
        self._key_use[key_id] = ts

    def has_more(self) -> bool:
        return bool(self._key_use)

    async def begin(self) -> None:
        self._tally, self._copied = Tally(), False
        if self._scratch and self.db.keeps_temp_tables:
            return  # made by a committed transaction: a statement (a thread's turn) fewer
        for statement in rollup.BEGIN:  # the scratch table of the records stored (empty)
            await self.db.execute(statement)

    async def write(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        # the records stored, not those an earlier try of this batch stored, nor another
        # writer's: no lock between writers (instances on one PostgreSQL write at once).
        # When the database says it stored them all, they are added up here from the rows
        # (SQLite); otherwise it copied those it stored for the fold in SQL
        if await self.db.insert_new(statement, rows, table=self.table, into=rollup.NEW,
                                    columns=rollup.NEW_COLUMNS, tally=True):
            self._tally.add(_COLUMNS[statement], rows)
        else:
            self._copied = True

    async def also(self) -> None:
        if self._copied:
            for statement in rollup.FOLD:  # the copied records into the totals
                await self.db.execute(statement)
        work = list(self._tally.rows()) if self._tally else []
        used, self._key_use = self._key_use, {}
        self._used.update(used)
        if used:
            work.append(("UPDATE api_keys SET last_used_at = ? WHERE id = ?",
                         # in one order on every instance (no deadlock)
                         [(ts, key_id) for key_id, ts in sorted(used.items())]))
        if work:  # the totals' upserts and the keys' last use in one go, with the COMMIT
            await self.db.executemany_at_commit(work)

    def also_done(self) -> None:
        self._used = {}
        self._scratch = True

    def also_failed(self) -> None:
        for key_id, ts in self._used.items():  # a newer use noted meanwhile wins
            self._key_use.setdefault(key_id, ts)
        self._used = {}

    async def prune(self) -> int:
        """Apply retention to the records, and their age to the rollup rows; drop the
        per-minute totals older than :data:`~omniroute.storage.rollup.MINUTE_KEEP`, and
        the stored Responses past their expiry (:mod:`omniroute.storage.responses`)."""
        await responses.delete_expired(self.db, self.clock())
        removed = await super().prune()
        await self.db.execute("DELETE FROM usage_dims WHERE period = ? AND start < ?",
                              (rollup.MINUTE, self.clock() - rollup.MINUTE_KEEP))
        if self.retention_days > 0:
            cutoff = self.clock() - self.retention_days * 86400
            async with self.db.transaction():
                for table in rollup.TABLES:
                    for period in rollup.PERIODS:  # buckets wholly before the cutoff
                        await self.db.execute(
                            f"DELETE FROM {table} WHERE period = ? AND start < ?",
                            (period, math.ceil(cutoff - period)))
        return removed

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT * FROM request_log ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]
