"""A buffered table writer: rows queued without waiting, written in batches, pruned by age.

The request log and the audit log are both one: :meth:`BufferedLog.add` is
synchronous and O(1) (safe inside a ``finally`` during cancellation); a
background task writes what waits in transactions of :data:`WRITE_BATCH` rows;
another applies retention in small batches, so the writer is never held behind
one large ``DELETE``. What the rules are, and why:

* **Nothing waiting is lost to a failed write.** A batch the database refuses
  (one of the backend's ``unavailable`` errors: SQLite locked, full, read-only,
  gone; PostgreSQL unreachable or timed out) goes back
  in front of what arrived meanwhile, for the next attempt. A cancellation (a
  handler whose client went away, a shutdown) does the same, and is raised on.
* **One bad row does not block the log.** Any other failure of a batch write is
  the rows' own (a value SQLite cannot bind, a constraint): the batch is written
  again row by row, and each row that still fails is dropped, counted in
  :attr:`~BufferedLog.dropped` and logged once with the reason (never its content).
* **The buffer is bounded**, by count and (when :attr:`~BufferedLog.max_bytes` is
  set) by size: past the bound the oldest go, counted and logged, never silently.
* **An outage is logged once**: the first failed write with its error, then one
  line when the writes resume (a database away for an hour is not 7200 tracebacks).
* **Flushes take turns** (an asyncio lock: this process's flushes of this log; other
  processes' writers are the database's business), and each runs shielded: a caller that is
  cancelled (a read API whose client disconnected) stops waiting, the write
  finishes. :meth:`~BufferedLog.close` waits for a flush in progress, then writes
  the rest.
* **A flush writes what was waiting when it began**, not the rows that arrive while
  it writes: under steady load a flush that chased the newest rows would not end
  (a read API that flushes first answered in seconds). The background writer's next
  turn, half a second later, takes those; :meth:`~BufferedLog.close` writes them all.
* **What waits is bounded by count too** (:attr:`~BufferedLog.flush_at`): the writer
  takes its turn every ``interval`` seconds, or as soon as that many rows wait, and
  then writes a multiple of that many (the few more that came before its turn wait for
  the next: fewer statements a flush, :meth:`~BufferedLog._flush`). Rows
  waiting, and a flush's rows, columns and parameters, are Python objects whose peak
  the allocator keeps after it (its arenas are handed back only when wholly empty).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, Protocol, TypeVar

from omniroute.storage.backend import DatabaseBackend

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Batch(Protocol[T_co]):
    """Items taken to be written together: counted, and read in order."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[T_co]: ...


class Pending(Protocol[T]):
    """What waits to be written: the few operations :class:`BufferedLog` asks of it.

    :class:`Queue` by default (a deque of items); the request log keeps its rows' values
    in one flat list (:class:`omniroute.storage.flat.FlatRows`)."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[T]: ...

    def append(self, item: T, /) -> None: ...

    def popleft(self) -> T: ...

    def take(self, n: int, /) -> Batch[T]:
        """The oldest ``n`` items (all if fewer wait), removed, as a batch."""
        ...

    def requeue(self, batch: Any, /) -> None:
        """Put a batch :meth:`take` gave back in front of the items that wait."""
        ...


class Queue(deque[T]):
    """A deque of items as a :class:`Pending`."""

    def take(self, n: int) -> list[T]:
        if len(self) <= n:
            batch = list(self)
            self.clear()
            return batch
        return [self.popleft() for _ in range(n)]

    def requeue(self, batch: list[T]) -> None:
        self.extendleft(reversed(batch))

#: rows per write transaction (a large backlog is written in several)
WRITE_BATCH = 5000
#: rows per retention ``DELETE``, and the pause between two of them (seconds)
PRUNE_BATCH = 2000
PRUNE_PAUSE = 0.01


class BufferedLog(Generic[T]):
    """Buffers rows of one table and writes them in the background; prunes old ones.

    A subclass names its :attr:`table`, its ``INSERT`` (:attr:`insert`) and how an
    item becomes that statement's parameters (:meth:`row`).
    """

    #: the table written and pruned (it has an ``id INTEGER PRIMARY KEY`` and a ``ts``)
    table = ""
    #: the ``INSERT`` of one row
    insert = ""
    #: what the log calls its rows, in messages
    noun = "rows"

    def __init__(
        self, db: DatabaseBackend, *, interval: float = 0.5, max_pending: int = 100_000,
        max_bytes: int = 0, prune_every: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.interval = interval
        self.max_pending = max_pending
        #: the buffer's bound in bytes, by :meth:`size` (0: bounded by count only)
        self.max_bytes = max_bytes
        self.prune_every = prune_every
        self.clock = clock
        #: rows lost: the buffer was full, or the database refused the row itself
        self.dropped = 0
        #: rows written since start
        self.written = 0
        #: rows removed by retention since start
        self.pruned = 0
        #: retention: rows older than this many days go (0: kept whatever their age)
        self.retention_days = 0.0
        #: retention: at most this many rows are kept, the newest (0: no bound)
        self.max_rows = 0
        self._pending: Pending[T] = self.buffer()
        self._bytes = 0
        self._flushing = asyncio.Lock()
        #: the last write failed (the database is away): its retries are not logged
        self._failing = False
        self._tasks: list[asyncio.Task[None]] = []
        #: the writer takes its turn once so many rows wait, before its ``interval`` is up
        #: (0: every ``interval`` only)
        self.flush_at = 0
        #: the background writer's wait for its turn (None: it is not waiting)
        self._turn: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ what a subclass says

    def buffer(self) -> Pending[T]:
        """A new, empty buffer of items waiting (a :class:`Queue` by default)."""
        return Queue()

    def row(self, item: T) -> Sequence[Any]:
        """The parameters of :attr:`insert` for ``item``."""
        raise NotImplementedError

    def inserts(self, batch: Batch[T]) -> list[tuple[str, Sequence[Sequence[Any]]]]:
        """The statements that write ``batch``, each with its rows (one ``executemany``
        each); by default :attr:`insert` with every item's :meth:`row`."""
        return [(self.insert, [self.row(i) for i in batch])]

    async def write(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one of :meth:`inserts`' statements over its rows, in the batch's transaction
        (by default :meth:`~omniroute.storage.backend.DatabaseBackend.executemany`)."""
        await self.db.executemany(statement, rows)

    def size(self, item: T) -> int:
        """Bytes ``item`` holds, for :attr:`max_bytes` (only asked when that is set)."""
        return 0

    def has_more(self) -> bool:
        """Whether a flush has anything to write besides the buffer (see :meth:`also`)."""
        return False

    async def begin(self) -> None:
        """Called first in a batch's transaction, before its rows are written."""

    async def also(self) -> None:
        """Write what goes with a batch, in its transaction (after its rows)."""

    def also_failed(self) -> None:
        """The batch's transaction was rolled back: keep what :meth:`also` took."""

    def also_done(self) -> None:
        """The batch's transaction was committed."""

    # ------------------------------------------------------------------ the buffer

    @property
    def pending(self) -> int:
        """Rows waiting to be written."""
        return len(self._pending)

    def add(self, item: T) -> None:
        """Queue ``item`` (synchronous, O(1), never blocks)."""
        pending = self._pending
        pending.append(item)
        if self.max_bytes:
            self._bytes += self.size(item)
            # either bound: the oldest go, their bytes counted off (_trim)
            if self._bytes > self.max_bytes or len(pending) > self.max_pending:
                self._trim()
                return
        if len(pending) > self.max_pending:  # the database has been failing for long
            pending.popleft()
            self._lost(1)
        elif len(pending) == self.flush_at:
            self.wake()

    def wake(self) -> None:
        """Start the background writer's turn now, if it is waiting for it."""
        turn = self._turn
        if turn is not None and not turn.done():
            turn.set_result(None)

    def _trim(self) -> None:
        """Drop the oldest until the buffer is within both bounds."""
        pending, lost = self._pending, 0
        while pending and (len(pending) > self.max_pending
                           or (self.max_bytes and self._bytes > self.max_bytes)):
            item = pending.popleft()
            if self.max_bytes:
                self._bytes -= self.size(item)
            lost += 1
        if lost:
            self._lost(lost)

    def _lost(self, n: int) -> None:
        before, self.dropped = self.dropped, self.dropped + n
        if before // 1000 != self.dropped // 1000 or before == 0:
            log.error("%s backlog full: %d %s dropped", self.table, self.dropped, self.noun)

    def _take(self, n: int = WRITE_BATCH) -> Batch[T]:
        batch = self._pending.take(n)
        if self.max_bytes:
            self._bytes -= sum(map(self.size, batch))
        return batch

    def _requeue(self, batch: Batch[T]) -> None:
        """Put a batch back before the newer rows, keeping the newest within the bounds."""
        self._pending.requeue(batch)
        if self.max_bytes:
            self._bytes += sum(map(self.size, batch))
        self._trim()

    # ------------------------------------------------------------------ writing

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name=f"omniroute-{self.table}"),
            asyncio.create_task(self._prune_loop(), name=f"omniroute-{self.table}-prune")]

    async def close(self) -> None:
        """Stop the background tasks and write every row still waiting (after the
        flush in progress, which a cancellation does not interrupt)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await asyncio.shield(self._flush(everything=True))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self.flush_at and len(self._pending) >= self.flush_at and not self._failing:
                # as many came during the flush: at once, after the others' turns (a
                # database that failed is tried again after the interval)
                await asyncio.sleep(0)
            else:
                self._turn = loop.create_future()
                try:
                    async with asyncio.timeout(self.interval):
                        await self._turn
                except TimeoutError:
                    pass
                finally:
                    self._turn = None
            await asyncio.shield(self._flush(whole=self.flush_at))

    async def flush(self) -> int:
        """Write the rows waiting (those that arrive meanwhile wait for the next flush);
        return how many were written.

        Shielded: a caller cancelled meanwhile stops waiting, the write goes on.
        """
        return await asyncio.shield(self._flush())

    async def _flush(self, *, everything: bool = False, whole: int = 0) -> int:
        """``whole`` (the background writer's :attr:`flush_at`): with so many rows or more
        waiting, a multiple of ``whole`` is written and the rest waits for the next turn
        (a flush at load is ``whole`` rows, not ``whole`` and the few that came before
        its turn: the SQLite writer's statements of :data:`~omniroute.storage.db.VALUES_ROWS`
        rows then take it with none left over, each statement fewer a handover of the GIL
        each way between the loop and the writer thread; docs/usage.md, session 15)."""
        async with self._flushing:
            written, turns = 0, 0
            left = len(self._pending)  # waiting now; not the rows that come meanwhile
            most = WRITE_BATCH
            if whole and left >= whole:
                left -= left % whole
                most = max(whole, WRITE_BATCH // whole * whole)
            while self._pending or self.has_more():
                if turns and left <= 0 and not everything:
                    break
                turns += 1
                batch = self._take(min(most, left) if left > 0 and not everything else most)
                left -= len(batch)
                try:
                    written += await self._commit(batch)
                except Exception as exc:  # the database is unavailable: retry later
                    self._requeue(batch)
                    if not self._failing:  # once per outage, not at every retry
                        log.exception("%s write failed; %d %s kept for retry (logged again "
                                      "when the writes resume)", self.table, self.pending,
                                      self.noun)
                    else:
                        log.debug("%s write failed again: %s", self.table, exc)
                    self._failing = True
                    return written
                except BaseException:  # cancelled (or worse): nothing waiting is lost
                    self._requeue(batch)
                    raise
                if self._failing:
                    self._failing = False
                    log.warning("%s writes resumed; %d %s written", self.table, written,
                                self.noun)
            return written

    async def _commit(self, batch: Batch[T]) -> int:
        """Write ``batch`` in one transaction; a batch the rows themselves make fail is
        written row by row, the failing rows dropped. Rows written."""
        try:
            return await self._transaction(batch, singly=False)
        except self.db.unavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - a row's own fault: written one by one below
            log.warning("%s batch write failed (%s: %s); writing its %d %s one by one",
                        self.table, type(exc).__name__, exc, len(batch), self.noun)
        return await self._transaction(batch, singly=True)

    async def _transaction(self, batch: Batch[T], *, singly: bool) -> int:
        written = 0
        try:
            async with self.db.transaction():
                await self.begin()
                if not singly:
                    for statement, rows in self.inserts(batch) if batch else ():
                        await self.write(statement, rows)
                    written = len(batch)
                else:
                    written = await self._one_by_one(batch)
                await self.also()
        except BaseException:
            self.also_failed()
            raise
        self.also_done()
        self.written += written
        return written

    async def _one_by_one(self, batch: Batch[T]) -> int:
        written, refused = 0, 0
        reason = ""
        for item in batch:
            try:
                async with self.db.savepoint():
                    await self.write(self.insert, [self.row(item)])
            except self.db.unavailable:
                raise
            except Exception as exc:  # noqa: BLE001 - this row cannot be stored: dropped, counted
                refused += 1
                reason = reason or f"{type(exc).__name__}: {exc}"
            else:
                written += 1
        if refused:  # logged every time, with the reason, never with the row
            self.dropped += refused
            log.error("%s: %d %s dropped, the database refused them (%s); %d dropped so far",
                      self.table, refused, self.noun, reason, self.dropped)
        return written

    # ------------------------------------------------------------------ retention

    def retention(self) -> tuple[float, int]:
        """(days, rows) kept: :attr:`retention_days` and :attr:`max_rows` (0: no bound)."""
        return self.retention_days, self.max_rows

    async def _prune_loop(self) -> None:
        await asyncio.sleep(min(self.prune_every, 60.0))  # not while the gateway starts
        while True:
            try:
                await self.prune()
            except Exception:
                log.exception("%s retention failed; retrying later", self.table)
            await asyncio.sleep(self.prune_every)

    async def prune(self) -> int:
        """Apply retention now: by age, then by row count, in small batches; rows removed."""
        days, max_rows = self.retention()
        table, removed = self.table, 0
        if days > 0:
            cutoff = self.clock() - days * 86400
            removed += await self._delete_batches(
                f"DELETE FROM {table} WHERE id IN "
                f"(SELECT id FROM {table} WHERE ts < ? LIMIT ?)", cutoff)
        if max_rows > 0 and await self._may_exceed(max_rows):
            # the newest row past the max_rows newest (ids only grow, but may skip: a
            # PostgreSQL sequence leaves gaps, so "the largest id - max_rows" is no bound)
            row = await self.db.fetchone(
                f"SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?", (max_rows,))
            if row is not None:
                removed += await self._delete_batches(
                    f"DELETE FROM {table} WHERE id IN "
                    f"(SELECT id FROM {table} WHERE id <= ? ORDER BY id LIMIT ?)", row[0])
        if removed:
            self.pruned += removed
            log.info("%s retention removed %d %s", table, removed, self.noun)
        return removed

    async def _may_exceed(self, max_rows: int) -> bool:
        """Whether the table may hold more than ``max_rows`` rows: two index lookups,
        where counting them (the ``OFFSET`` that finds the bound) reads every row's
        index entry. Ids are distinct integers, so a table whose ids span at most
        ``max_rows`` values holds at most that many rows."""
        row = await self.db.fetchone(f"SELECT min(id), max(id) FROM {self.table}")
        return row is not None and row[0] is not None and row[1] - row[0] + 1 > max_rows

    async def _delete_batches(self, sql: str, bound: float) -> int:
        removed = 0
        while True:
            async with self.db.transaction():
                n = await self.db.execute(sql, (bound, PRUNE_BATCH))
            removed += n
            if n < PRUNE_BATCH:
                return removed
            await asyncio.sleep(PRUNE_PAUSE)  # the writer (and every other query) goes first
