"""Rows of one width kept as their values, row after row, in one flat list.

The request log's waiting records (:class:`~omniroute.storage.requestlog.RequestLog`): a
buffer of tuples holds one container object a record, and CPython's youngest generation
counts each (made, not yet freed) toward its collection threshold of 700; the rows that
wait for the writer (512 at full speed) pushed the count past it, and the collection then
walked every waiting row (callgrind: ~495,000 instructions, some 1,650 a request, in the
records' cell only; docs/usage.md, "session 14"). Here a record adds its values to one
list: no container of its own outlives its request, and what waits is one object
whatever the count.

The writer takes a batch's columns straight from the list, each one slice in C
(``values[start + i::width]`` is column ``i``): :meth:`FlatRows.columns`, read by the
SQLite writer's chunks (:meth:`omniroute.storage.db.Database.insert_new`) and the
totals (:class:`~omniroute.storage.tally.Tally`). It is also an iterable of row tuples,
for what takes rows (the PostgreSQL writer's ``COPY``, a row written alone).

A buffer takes a row at its end (:meth:`FlatRows.append`), gives its oldest up
(:meth:`FlatRows.popleft`: an offset moves, the list is compacted once half of it is
dropped rows, so dropping the oldest does not shift the list each time), hands out its
first rows as a batch (:meth:`FlatRows.take`) and puts a failed batch back in front
(:meth:`FlatRows.requeue`): the operations :class:`~omniroute.storage.buffered.BufferedLog`
asks of its buffer, whose rules (bounds, requeue order) stay its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

#: a row of values (a tuple of :attr:`FlatRows.used` values)
Row = tuple[Any, ...]


class FlatRows(Sequence[Row]):
    """Rows of :attr:`width` values in one list (:attr:`values`, from :attr:`start` on).

    ``used`` (at most ``width``): the first so many values of each row are the row a
    reader sees (its :meth:`columns`, its iteration): a statement that leaves a row's
    last columns out reads the same list (:meth:`view`). A buffer's ``used`` is its
    ``width``."""

    __slots__ = ("_columns", "start", "used", "values", "width")

    def __init__(self, width: int, values: list[Any] | None = None, *, start: int = 0,
                 used: int | None = None) -> None:
        if width < 1:
            raise ValueError("a row has at least one value")
        self.width = width
        self.values: list[Any] = [] if values is None else values
        #: where the first row starts in :attr:`values` (the rows before it were dropped)
        self.start = start
        self.used = width if used is None else used
        #: :meth:`columns`, with the length of :attr:`values` they were read at (values
        #: are only added at the end; every other change forgets them)
        self._columns: tuple[int, list[list[Any]]] | None = None

    def __len__(self) -> int:
        return (len(self.values) - self.start) // self.width

    def __bool__(self) -> bool:
        return len(self.values) > self.start

    def __iter__(self) -> Iterator[Row]:
        """The rows, as tuples of their :attr:`used` values (one ``zip`` in C)."""
        return zip(*self.columns(), strict=True) if self else iter(())

    @overload
    def __getitem__(self, i: int) -> Row: ...

    @overload
    def __getitem__(self, i: slice) -> FlatRows: ...

    def __getitem__(self, i: int | slice) -> Row | FlatRows:
        n = len(self)
        if isinstance(i, slice):
            first, stop, step = i.indices(n)
            if step != 1:
                raise ValueError("rows are taken in order")
            return self.rows(first, max(first, stop))
        if not -n <= i < n:
            raise IndexError("row index out of range")
        at = self.start + (i % n) * self.width
        return tuple(self.values[at:at + self.used])

    def columns(self) -> list[list[Any]]:
        """Each of the rows' :attr:`used` columns, a list of their values (a slice in C
        each). Kept for the next call while the rows stay as they are (the writer's
        chunks and its totals read a batch's once)."""
        values = self.values
        kept = self._columns
        if kept is not None and kept[0] == len(values):
            return kept[1]
        start, width = self.start, self.width
        found = [values[start + i::width] for i in range(self.used)]
        self._columns = (len(values), found)
        return found

    def view(self, used: int) -> FlatRows:
        """These rows read as their first ``used`` values (the same list, and the
        columns read already)."""
        view = FlatRows(self.width, self.values, start=self.start, used=used)
        kept = self._columns
        if kept is not None and kept[0] == len(self.values) and used <= self.used:
            view._columns = (kept[0], kept[1][:used])
        return view

    def rows(self, first: int, stop: int) -> FlatRows:
        """Rows ``first`` to ``stop`` (excluded), as read here, in a list of their own."""
        width = self.width
        at = self.start + first * width
        return FlatRows(width, self.values[at:self.start + stop * width], used=self.used)

    # ------------------------------------------------------------------ as a buffer

    def append(self, row: Iterable[Any]) -> None:
        """Add ``row`` (:attr:`width` values) after the others."""
        values = self.values
        before = len(values)
        values.extend(row)
        if len(values) - before != self.width:
            del values[before:]
            raise ValueError(f"a row of {self.width} values expected")
        self._columns = None

    def popleft(self) -> Row:
        """Drop the oldest row and return it."""
        if not self:
            raise IndexError("pop from no rows")
        at, width = self.start, self.width
        row = tuple(self.values[at:at + width])
        self.start = at + width
        self._compact()
        return row

    def _compact(self) -> None:
        """Forget the dropped rows' places once they are half the list (each value is
        moved once per halving: amortised O(1) a row dropped)."""
        if self.start * 2 >= len(self.values):
            del self.values[:self.start]
            self.start = 0
        self._columns = None

    def take(self, n: int) -> FlatRows:
        """The first ``n`` rows (all if fewer wait), removed from here, as a batch."""
        values, start, width = self.values, self.start, self.width
        if len(values) - start <= n * width:  # all of them: the list itself
            self.values, self.start, self._columns = [], 0, None
            return FlatRows(width, values, start=start)
        stop = start + n * width
        if len(values) - stop > stop - start:  # a backlog: the batch copied, as it is small
            batch = values[start:stop]
            self.start = stop
            self._compact()
            return FlatRows(width, batch)
        # the list itself goes with the batch, and the rows after it (fewer) to a new one:
        # at load the writer takes a multiple of its 512 rows while a dozen more wait, and
        # the batch is not copied (a 140 KB list the allocator handed out afresh each
        # flush, and that the collector's youngest generation walked while the flush
        # waited for the writer thread: docs/usage.md, session 16; the ``del`` below
        # moves nothing, and CPython keeps a list's allocation above half of it)
        rest = values[stop:]
        del values[stop:]
        self.values, self.start, self._columns = rest, 0, None
        return FlatRows(width, values, start=start)

    def requeue(self, batch: FlatRows) -> None:
        """Put ``batch`` (rows of this width, all their values) back before these rows."""
        if batch.width != self.width or batch.used != self.width:
            raise ValueError("a batch of other rows")
        self.values = batch.values[batch.start:] + self.values[self.start:]
        self.start, self._columns = 0, None

    def clear(self) -> None:
        self.values, self.start, self._columns = [], 0, None


def all_none(column: list[Any]) -> bool:
    """Whether ``column``'s values are all None (a count in C)."""
    return column.count(None) == len(column)
