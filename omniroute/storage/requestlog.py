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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from omniroute.storage import responses, rollup
from omniroute.storage.backend import DatabaseBackend
from omniroute.storage.buffered import Batch, BufferedLog
from omniroute.storage.flat import FlatRows, all_none
from omniroute.storage.tally import DIMS_UPSERT, ROLLUP_UPSERT, Tally

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
#: the other columns, in the order of a row: those that mostly differ from one record to
#: the next first (ids, times, the attempt log, then the counts and cost of real
#: traffic), those a batch's records mostly share last, the likeliest to differ nearest
#: the first ones. SQLite's writer binds a column that holds one value through a chunk
#: once, and takes a row's columns of each kind by a slice when they sit side by side
#: (:meth:`omniroute.storage.db.Database._rows`)
_COMMON = ["request_id", "ts", "latency_ms", "ttfb_ms", "ttfc_ms", "tokens_per_s",
           "attempt_log", "prompt_tokens", "completion_tokens", "cost_usd", "cached_tokens",
           "reasoning_tokens", "api_key_id", "model", "model_requested", "provider",
           "connection_id", "status", "stream", "client_format", "user_agent", "attempts",
           "endpoint", "usage_estimated", "cache_hit"]
assert sorted(_COMMON) == sorted(f for f in _FIELDS if f not in RARE)
#: a record's row, as the log keeps it from :meth:`RequestLog.add` on (:func:`record_row`):
#: these columns, the :data:`RARE` ones last (a statement leaves them out of rows that
#: have none)
ROW_FIELDS = [*_COMMON, *RARE]
_N_COMMON = len(_COMMON)
_NONE_RARE = (None,) * len(RARE)

#: a row of the values of a record's columns (:data:`ROW_FIELDS`)
Row = tuple[Any, ...]
#: values a record's row holds in the log's buffer (:class:`~omniroute.storage.flat.FlatRows`)
WIDTH = len(ROW_FIELDS)


def record_row(r: RequestRecord) -> Row:
    """The values of ``r``'s columns, in :data:`ROW_FIELDS` order.

    Made when the record is queued, once, and its values added to the log's flat buffer
    (:mod:`omniroute.storage.flat`): the record itself is freed with its request (as when
    records are off), and so is this tuple; what waits holds no object a record that the
    garbage collector counts or traverses. Written out attribute by attribute (a slot
    read is one specialised bytecode, some 30 instructions; ``operator.attrgetter``
    looks each name up on the type, some 150). Whether the :data:`RARE` ones are all
    None is the writer's question, asked of a batch's columns (:func:`record_inserts`).
    ``tests/test_request_log.py`` checks it against :data:`ROW_FIELDS`, and
    :meth:`RequestLog.add`'s copy of it against it."""
    return (r.request_id, r.ts, r.latency_ms, r.ttfb_ms, r.ttfc_ms, r.tokens_per_s,
            r.attempt_log, r.prompt_tokens, r.completion_tokens, r.cost_usd,
            r.cached_tokens, r.reasoning_tokens, r.api_key_id, r.model, r.model_requested,
            r.provider, r.connection_id, r.status, r.stream, r.client_format,
            r.user_agent, r.attempts, r.endpoint, r.usage_estimated, r.cache_hit,
            r.error, r.error_class, r.combo, r.cache_write_tokens, r.list_cost_usd,
            r.request_body, r.response_body, r.audio_seconds, r.characters, r.images)


def _insert(fields: list[str]) -> str:
    # a record is written once: a batch tried again (its commit may have landed before
    # the database went away) adds nothing twice
    return (f"INSERT INTO request_log({', '.join(fields)}) "
            f"VALUES ({', '.join('?' for _ in fields)}) ON CONFLICT(ts, request_id) DO NOTHING")


_INSERT, _INSERT_COMMON = _insert(ROW_FIELDS), _insert(_COMMON)
#: each statement's columns, in its rows' order (what :class:`~omniroute.storage.tally.Tally`
#: reads them by)
_COLUMNS = {_INSERT: ROW_FIELDS, _INSERT_COMMON: _COMMON}


def record_inserts(batch: FlatRows) -> list[tuple[str, FlatRows]]:
    """The statements that write ``batch`` (rows of :func:`record_row`), in its order:
    each run of rows whose :data:`RARE` columns are all None by the statement that leaves
    those out (their rows read as their first columns), each other run by the full one.
    A batch of served requests is one statement, told by a count of None in each rare
    column (in C)."""
    if not batch:
        return []
    rare = batch.columns()[_N_COMMON:]
    if all(map(all_none, rare)):
        return [(_INSERT_COMMON, batch.view(_N_COMMON))]
    plain = list(map(_NONE_RARE.__eq__, zip(*rare, strict=True)))
    out: list[tuple[str, FlatRows]] = []
    first = 0
    for at in range(1, len(plain) + 1):
        if at == len(plain) or plain[at] is not plain[first]:
            run = batch.rows(first, at)
            out.append((_INSERT_COMMON, run.view(_N_COMMON)) if plain[first]
                       else (_INSERT, run))
            first = at
    return out


#: a key's last use, written with each flush
KEY_USE = "UPDATE api_keys SET last_used_at = ? WHERE id = ?"


class RequestLog(BufferedLog[Row]):
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

    async def prepare(self) -> None:
        """At start-up, with records on: the database gets the writer's statements ready
        whose text does not depend on the records (:meth:`DatabaseBackend.prepare
        <omniroute.storage.backend.DatabaseBackend.prepare>`): the records' small chunks,
        the totals' upserts as a flush of one group writes them (in one minute; across
        a minute: one more per-minute total; across an hour: one more hour too), and the
        keys' last use. Nothing on the per-request path that can be done once."""
        if not self.enabled:
            return
        hours, dims = len(rollup.PERIODS), len(rollup.DIMS)
        await self.db.prepare(inserts=[_INSERT_COMMON], many=[
            (ROLLUP_UPSERT, hours + 1), (DIMS_UPSERT, 1 + hours * dims),
            (DIMS_UPSERT, 2 + hours * dims), (KEY_USE, 1)])

    def row(self, item: Row) -> Row:
        """A row written alone: the buffer's rows hold every column already."""
        return item

    def buffer(self) -> FlatRows:
        """The records' values, row after row, in one list (:mod:`omniroute.storage.flat`)."""
        self._flat = FlatRows(WIDTH)
        return self._flat

    def inserts(self, batch: Batch[Row]) -> list[tuple[str, Sequence[Sequence[Any]]]]:
        return record_inserts(batch)  # type: ignore[arg-type, return-value]

    def add(self, record: RequestRecord) -> None:  # type: ignore[override]
        """Queue ``record``'s row (synchronous, O(1), never blocks): what the record holds
        when its request ends is what is written."""
        if record.api_key_id:
            self._key_use[record.api_key_id] = record.ts
        if not self.enabled:
            return
        if self.max_bytes:  # bounded by size too: BufferedLog's rules
            super().add(record_row(record))
            return
        # BufferedLog.add by count only, inline (once per request), counted in values.
        # record_row's values, written out here: two tuples of at most 30 values are each
        # built on the stack (BUILD_TUPLE), where one of 35 is a list grown value by value
        # and then copied (CPython's compiler does so past 30), and no call is made
        # (callgrind, 512 records: 6.9k -> 4.5k instructions a record queued);
        # ``tests/test_request_log.py`` checks the buffer against record_row
        flat = self._flat
        values = flat.values
        r = record
        values += (r.request_id, r.ts, r.latency_ms, r.ttfb_ms, r.ttfc_ms, r.tokens_per_s,
                   r.attempt_log, r.prompt_tokens, r.completion_tokens, r.cost_usd,
                   r.cached_tokens, r.reasoning_tokens, r.api_key_id, r.model,
                   r.model_requested, r.provider, r.connection_id)
        values += (r.status, r.stream, r.client_format, r.user_agent, r.attempts, r.endpoint,
                   r.usage_estimated, r.cache_hit, r.error, r.error_class, r.combo,
                   r.cache_write_tokens, r.list_cost_usd, r.request_body, r.response_body,
                   r.audio_seconds, r.characters, r.images)
        waiting = len(values) - flat.start
        if waiting > self.max_pending * WIDTH:  # the database has been failing for long
            flat.popleft()
            self._lost(1)
        elif waiting == self.flush_at * WIDTH:
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
            work.append((KEY_USE,
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
