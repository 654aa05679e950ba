"""The SQLite database: one file in the data directory, WAL mode, migrated at open.

The embedded default (no ``database_url``): :class:`Database` is the
:class:`~omniroute.storage.backend.DatabaseBackend` every storage module talks to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from itertools import chain, compress
from operator import eq, itemgetter
from pathlib import Path
from typing import Any, cast

import aiosqlite

from omniroute.storage.backend import DatabaseBackend, Row, StorageError
from omniroute.storage.flat import FlatRows
from omniroute.storage.migrations import MIGRATIONS

log = logging.getLogger(__name__)

__all__ = ["Database", "StorageError", "open_reader", "private_file"]


# Binding None or a bool, Python's sqlite3 looks for an adapter, and failing to find one
# costs two attribute lookups that raise (``__adapt__``, ``__conform__``): over half of a
# request record's insert (a record binds about 14 of them; 18.7 µs a row against 7.5 µs
# with these, measured with executemany). Registered once, on import; the values bound
# are the same (NULL, and 0/1 as SQLite stores a bool), so every other SQLite user of the
# process (the cache backends) binds them as before, only cheaper. None's adapter is an
# empty dict's ``get`` (``get(None)`` is None): a call in C, not a Python function's
# frame (callgrind: some 1,800 instructions a request record less)
sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))
sqlite3.register_adapter(bool, int)


class Database(DatabaseBackend):
    """A thin async wrapper over one aiosqlite connection."""

    name = "sqlite"
    #: locked, full, read-only, gone: the write is tried again later
    unavailable = (sqlite3.OperationalError,)
    integrity = (sqlite3.IntegrityError,)
    keeps_temp_tables = True

    def __init__(self, conn: aiosqlite.Connection, path: Path | str) -> None:
        self.conn = conn
        self.path = path
        self.where = str(path)
        # One connection is shared by every task: transactions must not interleave
        # (a second BEGIN fails, and one task's ROLLBACK would undo another's writes).
        self._tx_lock = asyncio.Lock()
        #: (one-row INSERT, rows, which columns are shared) -> that INSERT taking so many
        #: rows (:data:`VALUES_ROWS`), its parameters row by row (:meth:`_rows`)
        self._shared: dict[tuple[str, int, tuple[bool, ...]], _Shape] = {}
        #: the same, of statements whose parameters go column by column (:meth:`_by_column`)
        self._columns: dict[tuple[str, int, tuple[bool, ...]], _Shape] = {}
        #: (one-row INSERT, rows) -> the shape its last chunk had, tried first on the next
        self._last: dict[tuple[str, int], _Shape] = {}
        #: the statements of :attr:`_shared` that share a column (:data:`SHARED_SHAPES`)
        self._shapes = 0
        #: a transaction is open whose ``BEGIN IMMEDIATE`` has not run yet: it runs with
        #: the transaction's first statement (:meth:`_begun`, :meth:`executemany_each`)
        self._begin = False
        #: :meth:`executemany_at_commit`'s work, kept for the COMMIT's turn
        self._at_commit: list[tuple[str, Sequence[Sequence[Any]]]] = []
        #: the task whose transaction is open (None: none is)
        self._tx_task: asyncio.Task[Any] | None = None
        #: (one-row INSERT, rows) -> that INSERT taking so many rows (:meth:`_many_rows`;
        #: "": not an INSERT it can take so)
        self._many: dict[tuple[str, int], str] = {}

    @classmethod
    async def open(
        cls, path: Path | str, *, migrations: Sequence[Sequence[str]] = MIGRATIONS
    ) -> Database:
        """Open (creating if needed) and migrate the database at ``path``."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private_file(path)
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        conn.row_factory = sqlite3.Row
        db = cls(conn, path)
        try:
            await conn.execute("PRAGMA busy_timeout=10000")
            await _switch_to_wal(conn)
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.execute("PRAGMA foreign_keys=ON")
            # 256 KiB of page cache, not SQLite's 2 MiB: the request log's appends fill
            # it with pages that are never read again (measured: -2 MiB RSS after a
            # benchmark run); reads still come from the OS's file cache
            await conn.execute("PRAGMA cache_size=-256")
            await db.migrate(migrations)
        except BaseException:
            await conn.close()
            raise
        return db

    async def close(self) -> None:
        await self.conn.close()

    async def open_reader(self) -> Database | None:
        return None if str(self.path) == ":memory:" else await open_reader(self.path)

    async def schema_version(self) -> int:
        row = await self.fetchone("PRAGMA user_version")
        return int(row[0]) if row else 0

    async def migrate(self, migrations: Sequence[Sequence[str]]) -> None:
        """Apply the migrations this database has not seen, each in a transaction."""
        current = await self.schema_version()
        if current > len(migrations):
            raise StorageError(
                f"database {self.path} has schema v{current}, newer than this "
                f"omniroute knows (v{len(migrations)}): upgrade omniroute"
            )
        if current == len(migrations):
            return
        if current > 0 and str(self.path) != ":memory:":
            backup = Path(f"{self.path}.v{current}.bak")
            async with aiosqlite.connect(str(backup)) as target:
                await self.conn.backup(target)
            log.info("backed up schema v%d to %s before migrating", current, backup)
        for version in range(current, len(migrations)):
            async with self.transaction():
                # another process may have migrated while we waited for the lock
                if await self.schema_version() > version:
                    continue
                await self._begun()
                for statement in migrations[version]:
                    await self.conn.execute(statement)
                await self.conn.execute(f"PRAGMA user_version={version + 1}")
            log.info("database migrated to schema v%d", version + 1)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Run the block in one transaction; transactions of concurrent tasks queue up."""
        async with self._tx_lock:
            # The BEGIN IMMEDIATE runs with the block's first statement, in the same turn
            # of aiosqlite's thread when that is :meth:`executemany_each`, and the COMMIT
            # with :meth:`executemany_at_commit`'s work (the request log's writer: two
            # turns, some 170,000 instructions each, fewer a flush)
            self._begin, self._at_commit = True, []
            self._tx_task = asyncio.current_task()
            try:
                yield self.conn
            except BaseException:
                self._at_commit, self._tx_task = [], None
                if self._begin:  # no statement ran: nothing began
                    self._begin = False
                    raise
                try:
                    # a cancelled BEGIN still runs in aiosqlite's thread, and must not
                    # leave the shared connection inside a transaction
                    await self.conn.execute("ROLLBACK")
                except sqlite3.OperationalError as exc:  # BEGIN itself failed
                    log.debug("nothing to roll back: %s", exc)
                raise
            self._tx_task = None
            if self._at_commit:
                await self._commit_with(self._at_commit)
                return
            if self._begin:  # the block ran no statement
                self._begin = False
                return
            await self.conn.execute("COMMIT")

    async def _commit_with(self, work: list[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """The BEGIN if pending, ``work`` and the COMMIT in one turn of aiosqlite's thread;
        rolled back in that turn when one fails (a cancelled caller changes nothing)."""
        begin, self._begin, self._at_commit = self._begin, False, []

        def run(conn: sqlite3.Connection) -> None:
            nonlocal work
            if begin:
                conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in work:
                    conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:  # (as executemany_each's)
                work = []

        await self.conn._execute(run, self.conn._conn)

    async def _begun(self) -> None:
        """Run the open transaction's ``BEGIN IMMEDIATE`` if it has not run yet, and the
        work :meth:`executemany_at_commit` kept (statements run in the order given)."""
        if self._at_commit:
            await self.executemany_each([])
        if self._begin:
            self._begin = False
            await self.conn.execute("BEGIN IMMEDIATE")

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        await self._begun()
        async with self.conn.execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        await self._begun()
        async with self.conn.execute(sql, tuple(params)) as cur:
            return await cur.fetchone()

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        await self._begun()
        async with self.conn.execute(sql, tuple(params)) as cur:
            return cur.rowcount

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        await self._begun()
        await self.conn.executemany(sql, rows if isinstance(rows, list) else list(rows))

    async def executemany_each(self, work: Sequence[tuple[str, Sequence[Sequence[Any]]]],
                               ) -> list[int]:
        begin, self._begin = self._begin, False
        kept, self._at_commit = self._at_commit, []

        def run(conn: sqlite3.Connection) -> list[int]:
            nonlocal kept, work
            try:
                if begin:  # the transaction's BEGIN, in the same turn
                    conn.execute("BEGIN IMMEDIATE")
                for sql, rows in kept:  # executemany_at_commit's, given before these
                    conn.executemany(sql, rows)
                return [conn.executemany(sql, rows).rowcount for sql, rows in work]
            finally:  # aiosqlite's thread holds this function until its next turn: not
                kept, work = [], ()  # a flush's parameters (and the values they name)

        # One turn of aiosqlite's thread for them all: a turn (the queue, the thread's
        # wake-up, the loop's) costs some 170,000 instructions, measured with callgrind,
        # more than a statement of a few rows. aiosqlite runs any callable so (its
        # ``_execute``, on its ``_conn``: what its own execute methods call)
        counts: list[int] = await self.conn._execute(run, self.conn._conn)
        return counts

    async def executemany_at_commit(
            self, work: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """(Here an ``INSERT ... VALUES (?, ...)`` of several rows runs as statements of
        several rows each: :meth:`_many_rows`.)"""
        work = [chunk for sql, rows in work for chunk in self._many_rows(sql, rows)]
        if self._tx_task is not None and self._tx_task is asyncio.current_task():
            # inside this task's transaction: with its COMMIT, in one turn
            self._at_commit.extend(work)
        else:
            await self.executemany_each(work)

    async def insert_new(self, sql: str, rows: Sequence[Sequence[Any]], *, table: str,
                         into: str, columns: Sequence[str], tally: bool = False) -> bool:
        work: list[tuple[str, Sequence[Sequence[Any]]]] = []
        done, total = 0, len(rows)
        if isinstance(rows, FlatRows):
            work = self._flat_chunks(sql, rows)
        else:
            for size in VALUES_ROWS:  # the most rows per statement first, the rest in fewer
                for at in range(done, done + (total - done) // size * size, size):
                    work.append(self._rows(sql, rows[at:at + size], size))
                    done = at + size
        # the changes: a row the conflict skipped is none
        stored = sum(await self.executemany_each(work))
        if tally and stored == total:
            return True
        # inside BEGIN IMMEDIATE no other connection writes (whatever process), and a
        # rowid is the largest + 1: the ``stored`` rows of the largest ids are this
        # statement's
        names = ", ".join(columns)
        await self.execute(f"INSERT INTO {into}({names}) SELECT {names} FROM {table} "
                           f"WHERE id > (SELECT MAX(id) FROM {table}) - ?", (stored,))
        return False

    async def prepare(self, *, inserts: Sequence[str] = (),
                      many: Sequence[tuple[str, int]] = ()) -> None:
        """SQLite prepares a statement at its first use, in the writer's turn: some
        380,000 instructions for a 4-row ``INSERT`` of the records (callgrind, the first
        cell of ``bench_instructions.py``). Here, in one turn at start-up: each insert's
        chunks of fewer than :data:`SHARE_FROM` rows (their statements share no column,
        whatever the data; a larger chunk's depends on which columns its batch shares),
        and the statements :meth:`_many_rows` splits each ``(sql, n)`` into, kept by
        Python's statement cache (an ``executemany`` of no rows prepares, runs nothing)."""
        statements: list[str] = []
        for sql in inserts:
            none = (False,) * _width(sql)
            statements += [self._by_column(sql, n, none, none).sql
                           for n in VALUES_ROWS if n < SHARE_FROM]
        for sql, n in many:
            empty = [()] * n
            statements += [chunk for chunk, _ in self._many_rows(sql, empty)]

        def run(conn: sqlite3.Connection) -> None:
            for statement in statements:
                conn.executemany(statement, [])

        await self.conn._execute(run, self.conn._conn)

    def _many_rows(self, sql: str, rows: Sequence[Sequence[Any]],
                   ) -> list[tuple[str, Sequence[Sequence[Any]]]]:
        """``sql`` over ``rows`` as statements of :data:`MANY_ROWS` rows (the most first),
        each with its one row of parameters, when ``sql`` is an ``INSERT ... VALUES (?,
        ...)`` (an upsert too: SQLite applies a statement's rows one after the other, as
        it would the statements of one row each); another statement as it is. Python's
        sqlite3 lets the GIL go four times a statement it runs (binding, step, column
        count, reset), and at load the event loop then holds it: the request log's totals
        (two upserts of 2 and 15 rows a flush) were 17 runs, 68 handovers of the GIL each
        way; the sizes :data:`MANY_ROWS` make them 5 (``bench_syscalls.py``; docs/usage.md,
        session 15). The statements of each size are made once (:attr:`_many`)."""
        if len(rows) < 2:
            return [(sql, rows)]
        done, total = 0, len(rows)
        out: list[tuple[str, Sequence[Sequence[Any]]]] = []
        for size in MANY_ROWS:
            while total - done >= size:
                many = self._many.get((sql, size))
                if many is None:
                    try:
                        many = _shared_values(sql, (False,) * _width(sql), size)
                    except ValueError:  # not an INSERT ... VALUES (?, ...): as it is
                        many = ""
                    self._many[(sql, size)] = many
                if not many:
                    return [(sql, rows)]
                out.append((many, [list(chain.from_iterable(rows[done:done + size]))]))
                done += size
        return out

    def _rows(self, sql: str, rows: Sequence[Sequence[Any]], n: int,
              ) -> tuple[str, list[list[Any]]]:
        """One statement writing ``rows`` (``n`` of them) and its parameters, numbered
        row by row (``?N``). From :data:`SHARE_FROM` rows, a column of one value in every
        row is one parameter, bound once: binding costs Python's sqlite3 some 300 (a
        number) to 800 (a text) instructions a value, and a batch's records mostly share
        their endpoint, format, provider, connection, model, agent, flags and empty
        fields. The same values are stored as with a parameter a row (SQLite copies a
        parameter into each row it is named in). At most :data:`SHARED_SHAPES` sets of
        shared columns get a statement of their own (each is prepared once and kept in
        the statement cache); a chunk of another set binds every value.

        A chunk is first tried with the shared columns of the last chunk of its
        statement (:class:`_Shape`): one getter of those columns a row, its tuples
        compared with the first row's (in C, the same objects mostly), and the other
        columns' values taken row by row, with no chunk turned into columns. Only a
        chunk where that fails is counted column by column, and its shape tried next.
        A column found shared is one of one value (==: 1 and 1.0 are stored alike, by
        the column's affinity); one that became shared since is bound a value a row
        until a chunk fails the test (the same rows stored)."""
        if n >= SHARE_FROM:
            shape = self._last.get((sql, n))
            if shape is not None:
                first = shape.shared(rows[0])
                if list(map(shape.shared, rows)).count(first) == n:
                    params = list(first)
                    params.extend(chain.from_iterable(map(shape.varying, rows)))
                    return shape.sql, [params]
            shape = self._shape(sql, rows, n)
            if shape is not None:
                self._last[(sql, n)] = shape
                params = list(shape.shared(rows[0]))  # the shared values, then the others
                params.extend(chain.from_iterable(map(shape.varying, rows)))
                return shape.sql, [params]
        one = (False,) * len(rows[0])
        found = self._shared.get((sql, n, one))
        if found is None:  # one statement per size (a few): not counted in the bound
            found = self._shared[(sql, n, one)] = _Shape(_shared_values(sql, one, n), one)
        return found.sql, [list(chain.from_iterable(rows))]

    def _flat_chunks(self, sql: str, rows: FlatRows) -> list[tuple[str, Sequence[Any]]]:
        """:meth:`insert_new`'s statements and parameters for rows kept flat (the request
        log's, :mod:`omniroute.storage.flat`): each chunk's parameters are taken column
        by column from the batch's columns (a slice each, in C; no row made), by
        statements numbered so (:func:`_shared_values`, ``by_column``). The columns of
        one value through the whole batch are shared by its chunks of
        :data:`SHARE_FROM` rows or more (bound once each, as :meth:`_rows`' shared
        columns, within the same bound of :data:`SHARED_SHAPES`); a column of one value
        in a chunk only is bound a value a row (the same rows stored)."""
        columns, total = rows.columns(), len(rows)
        work: list[tuple[str, Sequence[Any]]] = []
        done = 0
        none = (False,) * rows.used
        one = none
        if total >= SHARE_FROM:  # in C, as _shape: only a column that ends as it starts
            firsts = list(map(itemgetter(0), columns))  # is counted through
            maybe = list(map(eq, map(itemgetter(-1), columns), firsts))
            if any(maybe):
                counted = map(total.__eq__, map(list.count, compress(columns, maybe),
                                                compress(firsts, maybe)))
                one = tuple([next(counted) if m else False for m in maybe])
        for size in VALUES_ROWS:  # the most rows per statement first, the rest in fewer
            end = done + (total - done) // size * size
            if end == done:
                continue
            shape = self._by_column(sql, size, one if size >= SHARE_FROM else none, none)
            shared = [columns[i][0] for i in shape.shared_at]
            varying = [columns[i] for i in shape.varying_at]
            for at in range(done, end, size):
                params = list(shared)
                stop = at + size
                for column in varying:
                    params += column[at:stop]
                work.append((shape.sql, [params]))
            done = end
        return work

    def _by_column(self, sql: str, n: int, one: tuple[bool, ...], none: tuple[bool, ...],
                   ) -> _Shape:
        """The statement of ``n`` rows whose parameters are given column by column, with
        ``one``'s columns shared (``none``: no column shared, as past the bound)."""
        if not any(one):
            one = none
        found = self._columns.get((sql, n, one))
        if found is None:
            if one != none and self._shapes >= SHARED_SHAPES:
                return self._by_column(sql, n, none, none)
            found = self._columns[(sql, n, one)] = _Shape(
                _shared_values(sql, one, n, by_column=True), one)
            if one != none:
                self._shapes += 1
        return found

    def _shape(self, sql: str, rows: Sequence[Sequence[Any]], n: int) -> _Shape | None:
        """The statement of ``rows``' columns of one value (None: past the bound)."""
        values = list(zip(*rows, strict=True))
        # in C, as every step here: a column of one value counts its first n times
        firsts = list(map(itemgetter(0), values))
        # only a column that ends as it starts is counted through
        maybe = list(map(eq, map(itemgetter(-1), values), firsts))
        counted = map(n.__eq__, map(tuple.count, compress(values, maybe),
                                    compress(firsts, maybe)))
        one = tuple([next(counted) if m else False for m in maybe])
        if not any(one):
            return None
        found = self._shared.get((sql, n, one))
        if found is None and self._shapes < SHARED_SHAPES:
            found = self._shared[(sql, n, one)] = _Shape(_shared_values(sql, one, n), one)
            self._shapes += 1
        return found

    async def bump_config_version(self) -> int:
        await self.execute(
            "INSERT INTO meta(key, value) VALUES('config_version', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )
        return await self.config_version()


class _Shape:
    """A statement of :meth:`Database._rows` and how a row gives its parameters: the
    values of the shared columns (the first row's are bound), then the others."""

    __slots__ = ("shared", "shared_at", "sql", "varying", "varying_at")

    def __init__(self, sql: str, one: Sequence[bool]) -> None:
        self.sql = sql
        self.shared_at = [i for i, is_one in enumerate(one) if is_one]
        self.varying_at = [i for i, is_one in enumerate(one) if not is_one]
        self.shared = _getter(self.shared_at)
        self.varying = _getter(self.varying_at)


def _getter(at: Sequence[int]) -> Callable[[Sequence[Any]], tuple[Any, ...]]:
    """A row's values at ``at``, always a tuple (an ``itemgetter`` of one index gives the
    value itself). Columns side by side are one slice, a copy in C: an ``itemgetter`` of
    several indexes converts and checks each (~80 instructions a value; the request
    log's rows put the columns that mostly differ from row to row first for this)."""
    if at and list(at) == list(range(at[0], at[-1] + 1)):
        return itemgetter(slice(at[0], at[-1] + 1))
    if len(at) > 1:
        return itemgetter(*at)
    return lambda row: ()


def _width(sql: str) -> int:
    """The parameters of one row of ``sql`` (``INSERT ... VALUES (?, ...)``), else its ``?``."""
    _, values, tail = sql.partition(" VALUES (")
    return tail.partition(")")[0].count("?") if values else sql.count("?")


def _shared_values(sql: str, one: Sequence[bool], n: int, *, by_column: bool = False) -> str:
    """``sql`` (``INSERT ... VALUES (?, ...) ...``, one row) taking ``n`` rows, where each
    column ``one`` marks is the same parameter in every row (numbered first, ``?1``...),
    and the others are numbered row by row (the parameters of :meth:`Database._rows`), or
    ``by_column``: a column's ``n`` values one after the other, then the next column's
    (:meth:`Database._flat_chunks`)."""
    head, _, tail = sql.partition(" VALUES (")
    row, close, rest = tail.partition(")")
    if not close or "(" in row or row.count("?") != len(one):
        raise ValueError(f"not an INSERT ... VALUES (?, ...) of {len(one)} columns: "
                         f"{sql[:80]!r}")
    shared = sum(one)
    varying = len(one) - shared
    at: list[int] = []  # each column's parameter in the first row (a shared one's only)
    shared_no = column = 0
    for is_one in one:
        if is_one:
            shared_no += 1
            at.append(shared_no)
        else:
            column += 1
            at.append(shared + column)
    def number(p: int, r: int) -> int:  # a varying column's parameter in row r
        return shared + (p - shared - 1) * n + r + 1 if by_column else p + r * varying

    rows = (", ".join(f"?{p}" if is_one else f"?{number(p, r)}"
                      for p, is_one in zip(at, one, strict=True))
            for r in range(n))
    return f"{head} VALUES {', '.join(f'({values})' for values in rows)}{rest}"


async def _switch_to_wal(conn: aiosqlite.Connection) -> None:
    """``PRAGMA journal_mode=WAL``, tried again while another process opening the same
    new file holds its lock: SQLite answers "database is locked" at once there, without
    the busy wait (its deadlock rule). Bounded: about 5 s, then the error stands."""
    for attempt in range(WAL_TRIES):
        try:
            await conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_TRIES - 1:
                raise
            await asyncio.sleep(0.05)


#: rows one INSERT of :meth:`Database.insert_new` takes (several ``VALUES`` rows), largest
#: first: a batch goes in statements of 64 rows, its rest in 16s, 4s and ones. Within one
#: statement SQLite keeps its cursors open from row to row, so each index's insert starts
#: from the page the previous row's went to (the keys mostly ascend: times, request ids)
#: instead of from its root, and the statement is set up once, not once a row. Measured
#: (callgrind, a 300-record flush): about 11,000 instructions a record less than one
#: statement a row. Each size is one statement of Python's statement cache. 64 rows
#: first (session 14): Python's sqlite3 lets the GIL go around each statement's prepare,
#: step and reset, and the busy event loop then holds it, so every statement of a flush
#: was a handover each way (`bench_syscalls.py`, JSON c=16, a request: 1.41 `futex` and
#: 1.24 inter-processor interrupts with 16-row statements, 0.45 and 0.66 with 64; records
#: off 0.012 and 0.45). A 64-row prepared statement holds 104-144 KiB of SQLite's memory
#: for the process's life (16 rows: 36-45 KiB; session 12 chose 16 for that); after a
#: benchmark run the gateway's resident memory was no higher (57.7 MiB against 58.6).
#: 128 rows first (session 15) made a 512-record flush 4 statements, 16 of its ~64 GIL
#: releases fewer, but SQLite prepares a 128-row statement in some four times a 64-row
#: one's time (25 ms against 6, in process), paid once a shape: the callgrind cell whose
#: 300 records first needed it read 66k instructions a request more. Not kept.
VALUES_ROWS = (64, 16, 4, 1)
#: rows one statement of :meth:`Database._many_rows` takes (the request log's totals, a
#: few to a few dozen rows a flush), largest first: a count is written in as many
#: statements as it has bits set under 128. A prepared upsert of 16 rows of the totals
#: holds some 40 KiB of SQLite's memory (every size a workload meets is kept)
MANY_ROWS = (64, 32, 16, 8, 4, 2, 1)
#: statements of at least so many rows bind a column of one value once
#: (:meth:`Database._rows`)
SHARE_FROM = 16
#: the statements with shared columns made (each set of shared columns and size is one;
#: a prepared statement of 16 request records takes some 40 KB of SQLite's memory, and
#: Python's statement cache keeps 128 a connection): a served workload's chunks take a
#: few shapes, a chunk of a shape past these binds every value
SHARED_SHAPES = 8

#: how many times the switch to WAL is tried (0.05 s apart)
WAL_TRIES = 100


async def open_reader(path: Path | str) -> Database:
    """A read-only connection to the gateway's database, for long reads.

    SQLite in WAL mode lets it read while the main connection writes, and it
    runs in its own thread, so a month-long summary holds up nothing else.
    """
    conn = await aiosqlite.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        await conn.execute("PRAGMA busy_timeout=10000")
        await conn.execute("PRAGMA query_only=1")
        # a summary walks much of the log: room for the index pages it revisits
        await conn.execute("PRAGMA cache_size=-8192")
    except BaseException:
        await conn.close()
        raise
    return Database(conn, path)


def private_file(path: Path | str) -> None:
    """Create ``path`` readable by its owner only when it does not exist yet (a database:
    SQLite gives its ``-wal`` and ``-shm`` files the same mode), whatever the umask."""
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
