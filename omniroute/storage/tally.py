"""The request log writer's totals, added up in Python from the rows it has just stored.

What :data:`omniroute.storage.rollup.FOLD` does inside the database, done from the
writer's own row tuples when the database says every row of a batch was stored (none
skipped as already there: SQLite's count of changes, see
:meth:`~omniroute.storage.backend.DatabaseBackend.insert_new`): the records are summed
once by minute and group, and from those few sums come the per-minute totals and every
hourly and daily row of ``usage_rollup`` and ``usage_dims``, each written by one upsert
of plain values. Measured with callgrind (``scripts/bench_instructions.py``): the fold in
SQL cost some 25,000 instructions a record (a sorter fed every record, sixteen aggregate
steps each, then five grouping upserts), this about 3,000: the sums run in C
(``zip``, ``filter``, ``sum``) over each group's columns.

The sums are the fold's, column for column (:data:`~omniroute.storage.rollup.SUM_COLUMNS`,
:data:`~omniroute.storage.rollup.DIM_SUM_COLUMNS`): NULL counts as 0, ``list_cost_usd``
falls back to ``cost_usd``, a record failed when its status is 400 or more or it has an
error class, a group's NULL text is ``''`` and a dimension's value is its text.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import compress
from typing import Any

from omniroute.storage import rollup
from omniroute.storage.flat import FlatRows

#: a usage_rollup key after (period, start): provider, model, connection, key, status,
#: failed, cache hit
Group = tuple[str, str, str, str, int, int, int]
#: the group's sums, in :data:`~omniroute.storage.rollup.DIM_SUM_COLUMNS` order
Sums = list[float]

_SUMMED = ("prompt_tokens", "completion_tokens", "cached_tokens", "cache_write_tokens",
           "reasoning_tokens", "images", "audio_seconds", "characters", "cost_usd")
_N_SUMS = len(rollup.DIM_SUM_COLUMNS)
_N_ROLLUP = len(rollup.SUM_COLUMNS)
_LIST_COST, _COST = rollup.SUM_COLUMNS.index("list_cost_usd"), rollup.SUM_COLUMNS.index(
    "cost_usd")
#: each dimension's value, from a usage_rollup group (None: the total)
_DIM_VALUE = {"total": None, "model": 1, "provider": 0, "connection": 2, "key": 3,
              "status": 4, "failed": 5}
assert set(_DIM_VALUE) == set(rollup.DIMS)
_ROLLUP_KEY = ("period", "start", *rollup.GROUP_COLUMNS)
_DIMS_KEY = ("period", "dim", "start", "value")


def _values(table: str, key: tuple[str, ...], sums: tuple[str, ...]) -> str:
    return rollup.upsert(table, key, sums,
                         f"VALUES ({', '.join('?' for _ in (*key, *sums))})")


#: the upserts of :meth:`Tally.rows`, one row of values each
ROLLUP_UPSERT = _values("usage_rollup", _ROLLUP_KEY, rollup.SUM_COLUMNS)
DIMS_UPSERT = _values("usage_dims", _DIMS_KEY, rollup.DIM_SUM_COLUMNS)


#: a time's minute number (``ts // 60``), as a C callable for ``map``
_MINUTE_OF = float(rollup.MINUTE).__rfloordiv__


class _Layout:
    """Where a row of one INSERT's columns keeps what the totals read (column numbers)."""

    def __init__(self, fields: Sequence[str]) -> None:
        at = {name: i for i, name in enumerate(fields)}
        self.ts = at["ts"]
        # error_class last: a record with one failed, whatever its status
        group = ["provider", "model", "connection_id", "api_key_id", "status", "cache_hit"]
        self.has_error_class = "error_class" in at
        self.group = [at[c] for c in group] + (
            [at["error_class"]] if self.has_error_class else [])
        #: each summed column, None for a column these rows leave out (NULL)
        self.summed = [at.get(c) for c in _SUMMED]
        self.latency = at["latency_ms"]
        self.list_cost = (None if "list_cost_usd" not in at
                          else (at["list_cost_usd"], at["cost_usd"]))
        #: the columns :meth:`Tally._add_group` reads (the rest it never looks at)
        self.read = sorted({*(a for a in self.summed if a is not None), self.latency,
                            *(self.list_cost or ())})


class Tally:
    """One write transaction's records summed by minute and group, then its upserts.

    ::

        tally = Tally()
        tally.add(fields, rows)          # each INSERT's column names and its rows, all stored
        for sql, values in tally.rows():
            await db.executemany(sql, values)
    """

    def __init__(self) -> None:
        #: (minute start, group) -> sums
        self.minutes: dict[tuple[int, Group], Sums] = {}
        self._layouts: dict[tuple[str, ...], _Layout] = {}

    def __bool__(self) -> bool:
        return bool(self.minutes)

    def add(self, fields: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Add ``rows`` (each the values of ``fields``, in order) to the totals."""
        layout = self._layouts.get(tuple(fields))
        if layout is None:
            layout = self._layouts[tuple(fields)] = _Layout(fields)
        if not rows:
            return
        # the batch's columns, made once in C: each sum is then one pass in C over a
        # column, not a getter called on each row for each of a dozen columns (callgrind,
        # a batch of 300: ~4,300 -> ~3,200 instructions a record). A batch is most often
        # one group, in one minute or a few: told by a count of each group column's
        # first value (the same objects mostly). The request log's rows are given flat,
        # their columns sliced from one list (and read already by the insert's chunks)
        columns: Sequence[Sequence[Any]] = (
            rows.columns() if isinstance(rows, FlatRows) else list(zip(*rows, strict=True)))
        n = len(rows)
        times = columns[layout.ts]
        groups = [columns[i] for i in layout.group]
        if all(column.count(column[0]) == n for column in groups):
            group = tuple(column[0] for column in groups)
            first = _MINUTE_OF(min(times))
            if first == _MINUTE_OF(max(times)):
                self._add_group(layout, int(first) * rollup.MINUTE, group, columns, n)
                return
            # each minute's rows picked out in C from the columns the sums read, no row
            # made (it made every row's tuple of 35 values once a minute, then turned
            # the rows back into columns)
            minutes = list(map(_MINUTE_OF, times))
            for minute in dict.fromkeys(minutes):
                chosen = list(map(minute.__eq__, minutes))
                picked: list[Any] = [None] * len(columns)
                for at in layout.read:
                    picked[at] = list(compress(columns[at], chosen))
                self._add_group(layout, int(minute) * rollup.MINUTE, group, picked,
                                chosen.count(True))
            return
        buckets: dict[tuple[float, tuple[Any, ...]], list[Sequence[Any]]] = {}
        for key, row in zip(zip(map(_MINUTE_OF, times), zip(*groups, strict=True),
                                strict=True), rows, strict=True):
            found = buckets.get(key)
            if found is None:
                buckets[key] = [row]
            else:
                found.append(row)
        for (minute, raw), bucket in buckets.items():
            self._add_group(layout, int(minute) * rollup.MINUTE, raw,
                            list(zip(*bucket, strict=True)), len(bucket))

    def _add_group(self, layout: _Layout, start: int, raw: tuple[Any, ...],
                   columns: Sequence[Sequence[Any]], n: int) -> None:
        """Add one minute's rows of one group, given as their ``columns`` (``n`` rows)."""
        provider, model, connection, key, status, hit = raw[:6]
        failed = 1 if status >= 400 or (layout.has_error_class and raw[6] is not None) else 0
        hit = 1 if hit else 0
        group: Group = (provider if provider is not None else "",
                        model if model is not None else "",
                        connection if connection is not None else "",
                        key if key is not None else "", status, failed, hit)
        summed = [0 if at is None else sum(filter(None, columns[at]))
                  for at in layout.summed]
        cost = summed[-1]
        if layout.list_cost is None:  # none of these rows has a list price
            listed = cost
        else:
            lp_at, cost_at = layout.list_cost
            listed = sum(lp if lp is not None else (c or 0)
                         for lp, c in zip(columns[lp_at], columns[cost_at], strict=True))
        latency = columns[layout.latency]
        timed = n - latency.count(None)
        sums = [n, *summed, listed, sum(filter(None, latency)) if timed else 0, timed,
                n * failed, n * hit, listed - cost if hit else 0]
        into = self.minutes.get((start, group))
        if into is None:
            self.minutes[(start, group)] = sums
        else:
            for i in range(_N_SUMS):
                into[i] += sums[i]

    def rows(self) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
        """The upserts that add the totals, each with its rows of values, in key order
        (writers adding to the same rows at once lock them in one order)."""
        rolled: dict[tuple[Any, ...], Sums] = {}
        dims: dict[tuple[Any, ...], Sums] = {}
        for (start, group), sums in sorted(self.minutes.items()):
            _into(dims, (rollup.MINUTE, "total", start, ""), sums)
            for period in rollup.PERIODS:
                bucket = start // period * period
                _into(rolled, (period, bucket, *group), sums[:_N_ROLLUP])
                for dim, at in _DIM_VALUE.items():
                    value = "" if at is None else str(group[at])
                    _into(dims, (period, dim, bucket, value), sums)
        yield ROLLUP_UPSERT, [(*k, *s) for k, s in sorted(rolled.items())]
        yield DIMS_UPSERT, [(*k, *s) for k, s in sorted(dims.items())]


def _into(table: dict[tuple[Any, ...], Sums], key: tuple[Any, ...], sums: Sums) -> None:
    into = table.get(key)
    if into is None:
        table[key] = list(sums)
    else:
        for i, value in enumerate(sums):
            into[i] += value
