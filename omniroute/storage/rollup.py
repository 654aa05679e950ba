"""Usage totals by hour and by day, kept beside the request log so reads stay fast.

Two tables, both written by the request log's writer in the same transaction as the
records. On SQLite, a batch the database stored whole is added up in Python from the rows
just written (:mod:`omniroute.storage.tally`: a fifth of the instructions). Otherwise (a
retried batch partly stored already; PostgreSQL, where the fold runs in the server) the
insert copies the records it stored (not those a retried batch had stored already) into
the scratch table :data:`NEW` (:meth:`DatabaseBackend.insert_new
<omniroute.storage.backend.DatabaseBackend.insert_new>`), and :data:`FOLD` adds exactly
those to the totals: summed once, by minute and group, into a second scratch table, from
which the per-minute totals and every table's hourly and daily rows are added, inside
the database. Both give the same rows. Several writers (instances on one
PostgreSQL) fold at once, no lock between them: each adds its own rows, and every upsert
takes its rows in key order (``ORDER BY``), so two writers adding to the same hours wait
for each other in one order and never deadlock:

* ``usage_rollup``: per bucket (an hour or a day, UTC) and per group (provider, model,
  connection, key, status, failed, cache hit), the sums a summary shows. Any filter
  and any breakdown can be read from it.
* ``usage_dims``: the same sums per bucket for one dimension at a time (``total``,
  ``model``, ``provider``, ``connection``, ``key``, ``status``, ``failed``): a few
  rows an hour instead of one per combination, for reads with no filter (the
  dashboard's charts, a summary by model) — a week by hour is a couple of thousand
  rows — and for finding the hours a page of records filtered by one field lies in.
  It also holds the ``total`` of each **minute** (``period`` 60) of the last
  :data:`MINUTE_KEEP` seconds, for the overview's requests per minute: an hour of a
  busy gateway's records (a million at 280 requests a second) takes seconds to sum,
  its 60 minute rows nothing. Readers name their ``period``, so these rows are seen
  by no other read.

A read over ``[since, until)`` (:func:`plan`) takes whole days from the daily rows,
whole hours at the ragged ends from the hourly rows, and only the minutes the range
cuts into an hour from the request log itself. A read grouped by hour never reads
the daily rows. Migration 7 fills both tables from the records already there
(:data:`BACKFILL`: the hours from the records, the days from the hours).

Retention: the rows go with the records' age retention (``usage_retention_days``),
not with the row bound (``usage_max_rows``): totals outlive the records the bound pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MINUTE, HOUR, DAY = 60, 3600, 86400
#: seconds of per-minute totals kept (the overview shows the last hour)
MINUTE_KEEP = 3 * HOUR
#: bucket sizes, coarsest first
PERIODS = (DAY, HOUR)
#: the rollup tables
TABLES = ("usage_rollup", "usage_dims")

#: the group columns of a ``usage_rollup`` row (NULL stored as '': a key must compare equal)
GROUP_COLUMNS = ("provider", "model", "connection_id", "api_key_id", "status", "failed",
                 "cache_hit")
#: what a record adds to its ``usage_rollup`` group
SUM_COLUMNS = ("requests", "tokens_in", "tokens_out", "cache_read_tokens",
               "cache_write_tokens", "reasoning_tokens", "images", "audio_seconds",
               "characters", "cost_usd", "list_cost_usd", "latency_ms", "timed")
#: ``usage_dims`` also sums what ``usage_rollup`` keeps as group columns
DIM_SUM_COLUMNS = (*SUM_COLUMNS, "errors", "cache_hits", "cache_saved_usd")
#: a request failed (1, else 0): an error status, or an error class (a stream broken after
#: its 200); a number, not a truth value, so it is summed and compared alike everywhere
FAILED = "(CASE WHEN status >= 400 OR error_class IS NOT NULL THEN 1 ELSE 0 END)"
#: ``usage_dims``' dimensions and what each groups request_log rows by (total: nothing);
#: ``status`` and ``failed`` only find the hours a filtered page of records lies in
DIMS = {"total": None, "model": "model", "provider": "provider",
        "connection": "connection_id", "key": "api_key_id", "status": "status",
        "failed": FAILED}
#: the same, over usage_rollup's columns
_ROLLUP_DIMS = {**DIMS, "failed": "failed"}
_LISTED = "COALESCE(list_cost_usd, cost_usd, 0)"

#: the sums over request_log rows, in :data:`SUM_COLUMNS` order
_RECORD_SUMS = (
    "COUNT(*)", "SUM(COALESCE(prompt_tokens, 0))", "SUM(COALESCE(completion_tokens, 0))",
    "SUM(COALESCE(cached_tokens, 0))", "SUM(COALESCE(cache_write_tokens, 0))",
    "SUM(COALESCE(reasoning_tokens, 0))", "SUM(COALESCE(images, 0))",
    "SUM(COALESCE(audio_seconds, 0))", "SUM(COALESCE(characters, 0))",
    "SUM(COALESCE(cost_usd, 0))",
    # a subscription's (or a cache hit's) list price, else what was paid
    f"SUM({_LISTED})", "SUM(COALESCE(latency_ms, 0))", "COUNT(latency_ms)",
)
#: ... and the three more of :data:`DIM_SUM_COLUMNS`
_RECORD_DIM_SUMS = (*_RECORD_SUMS, f"SUM({FAILED})", "SUM(cache_hit)",
                    f"SUM(CASE WHEN cache_hit = 1 THEN {_LISTED} - COALESCE(cost_usd, 0) "
                    "ELSE 0 END)")
#: the same sums over usage_rollup rows
_ROLLUP_DIM_SUMS = (*(f"SUM({c})" for c in SUM_COLUMNS), "SUM(failed * requests)",
                    "SUM(cache_hit * requests)",
                    "SUM(CASE WHEN cache_hit = 1 THEN list_cost_usd - cost_usd ELSE 0 END)")
_RECORD_GROUPS = ("COALESCE(provider, '')", "COALESCE(model, '')",
                  "COALESCE(connection_id, '')", "COALESCE(api_key_id, '')", "status",
                  FAILED, "cache_hit")

CREATE = [
    f"""CREATE TABLE usage_rollup (
    period INTEGER NOT NULL,
    start INTEGER NOT NULL,
    {', '.join(f'{c} TEXT NOT NULL' for c in GROUP_COLUMNS[:4])},
    status INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    cache_hit INTEGER NOT NULL,
    {', '.join(f'{c} REAL NOT NULL DEFAULT 0' for c in SUM_COLUMNS)},
    PRIMARY KEY (period, start, {', '.join(GROUP_COLUMNS)})
) WITHOUT ROWID""",
    f"""CREATE TABLE usage_dims (
    period INTEGER NOT NULL,
    dim TEXT NOT NULL,
    start INTEGER NOT NULL,
    value TEXT NOT NULL,
    {', '.join(f'{c} REAL NOT NULL DEFAULT 0' for c in DIM_SUM_COLUMNS)},
    PRIMARY KEY (period, dim, start, value)
) WITHOUT ROWID""",
]


def upsert(table: str, key: tuple[str, ...], sums: tuple[str, ...], select: str, *,
            ordered: bool = False) -> str:
    """Add ``select``'s rows (its key columns first) to ``table``'s. ``ordered``: in key
    order, so that writers adding to the same rows at once lock them in one order (two
    writers each holding a row the other wants next deadlock)."""
    update = ", ".join(f"{c} = {table}.{c} + excluded.{c}" for c in sums)
    order = f" ORDER BY {', '.join(str(i) for i in range(1, len(key) + 1))}" if ordered else ""
    return (f"INSERT INTO {table}({', '.join(key)}, {', '.join(sums)}) {select}{order} "
            f"ON CONFLICT({', '.join(key)}) DO UPDATE SET {update}")


_PERIODS_TABLE = f"(SELECT {HOUR} AS period UNION ALL SELECT {DAY})"
#: the writer's scratch table of the records its transaction stored (a temporary table,
#: of each connection: unqualified, it is found before any other of its name): the
#: columns the fold reads, filled by the insert itself
NEW = "request_log_new"
_NEW_TYPES = {"ts": "REAL", "provider": "TEXT", "model": "TEXT", "connection_id": "TEXT",
              "api_key_id": "TEXT", "status": "INTEGER", "error_class": "TEXT",
              "cache_hit": "INTEGER", "prompt_tokens": "INTEGER",
              "completion_tokens": "INTEGER", "cached_tokens": "INTEGER",
              "cache_write_tokens": "INTEGER", "reasoning_tokens": "INTEGER",
              "images": "INTEGER", "audio_seconds": "REAL", "characters": "INTEGER",
              "cost_usd": "REAL", "list_cost_usd": "REAL", "latency_ms": "REAL"}
#: the request_log columns copied into :data:`NEW`
NEW_COLUMNS = tuple(_NEW_TYPES)
#: the writer's statement before its insert: :data:`NEW` there (empty: the fold that
#: reads it empties it, and a transaction that fails leaves it as it was)
BEGIN = [f"CREATE TEMP TABLE IF NOT EXISTS {NEW} "
         f"({', '.join(f'{c} {t}' for c, t in _NEW_TYPES.items())})"]
#: the writer's scratch table: one transaction's records summed by minute and group (a
#: temporary table: unqualified, it is found before any other of its name)
_BATCH = "usage_batch"


def _rollup_from_records(where: str) -> str:
    """Add the request_log rows matching ``where`` (a WHERE clause: the upsert needs
    one) into usage_rollup's hourly rows."""
    groups = ", ".join(str(i) for i in range(2, 3 + len(_RECORD_GROUPS)))
    return upsert("usage_rollup", ("period", "start", *GROUP_COLUMNS), SUM_COLUMNS,
                   f"SELECT {HOUR}, CAST(ts / {HOUR} AS INTEGER) * {HOUR}, "
                   f"{', '.join(_RECORD_GROUPS)}, {', '.join(_RECORD_SUMS)} "
                   f"FROM request_log {where} GROUP BY {groups}")


def _batch_statements() -> list[str]:
    """The writer's fold: the records its transaction stored (:data:`NEW`) are summed
    once into the scratch table, by minute and group; the per-minute totals, the hourly and
    daily rollup rows and every dimension's rows are added from its few rows, each in key
    order."""
    columns = ("start INTEGER", *(f"{c} TEXT" for c in GROUP_COLUMNS[:4]), "status INTEGER",
               "failed INTEGER", "cache_hit INTEGER", *(f"{c} REAL" for c in DIM_SUM_COLUMNS))
    sums = ", ".join(f"SUM({c})" for c in DIM_SUM_COLUMNS)
    groups = ", ".join(str(i) for i in range(1, 2 + len(_RECORD_GROUPS)))
    value = "CASE d.dim " + " ".join(
        f"WHEN '{dim}' THEN CAST({column} AS TEXT)"
        for dim, column in _ROLLUP_DIMS.items() if column) + " ELSE '' END"
    dims = " UNION ALL ".join(f"SELECT '{dim}' AS dim" for dim in DIMS)
    return [
        f"CREATE TEMP TABLE IF NOT EXISTS usage_batch ({', '.join(columns)})",
        f"DELETE FROM {_BATCH}",
        f"INSERT INTO {_BATCH} SELECT CAST(ts / {MINUTE} AS INTEGER) * {MINUTE}, "
        f"{', '.join(_RECORD_GROUPS)}, {', '.join(_RECORD_DIM_SUMS)} "
        f"FROM {NEW} GROUP BY {groups}",
        *(upsert("usage_rollup", ("period", "start", *GROUP_COLUMNS), SUM_COLUMNS,
                  f"SELECT {period}, CAST(start / {period} AS INTEGER) * {period}, "
                  f"{', '.join(GROUP_COLUMNS)}, {', '.join(f'SUM({c})' for c in SUM_COLUMNS)} "
                  f"FROM {_BATCH} WHERE true GROUP BY 2, {', '.join(GROUP_COLUMNS)}",
                  ordered=True)
          for period in PERIODS),
        upsert("usage_dims", ("period", "dim", "start", "value"), DIM_SUM_COLUMNS,
                f"SELECT p.period, d.dim, CAST(start / p.period AS INTEGER) * p.period, "
                f"{value}, {sums} FROM {_BATCH}, {_PERIODS_TABLE} AS p, ({dims}) AS d "
                "WHERE true GROUP BY 1, 2, 3, 4", ordered=True),
        upsert("usage_dims", ("period", "dim", "start", "value"), DIM_SUM_COLUMNS,
                f"SELECT {MINUTE}, 'total', start, '', {sums} FROM {_BATCH} "
                "WHERE true GROUP BY 3", ordered=True),
        f"DELETE FROM {NEW}",
    ]


def _days_from_hours() -> str:
    return upsert("usage_rollup", ("period", "start", *GROUP_COLUMNS), SUM_COLUMNS,
                   f"SELECT {DAY}, CAST(start / {DAY} AS INTEGER) * {DAY}, "
                   f"{', '.join(GROUP_COLUMNS)}, {', '.join(f'SUM({c})' for c in SUM_COLUMNS)} "
                   f"FROM usage_rollup WHERE period = {HOUR} "
                   f"GROUP BY 2, {', '.join(GROUP_COLUMNS)}")


def _dims_from_rollup(dim: str) -> str:
    column = _ROLLUP_DIMS[dim]
    value = f"CAST({column} AS TEXT)" if column else "''"
    return upsert("usage_dims", ("period", "dim", "start", "value"), DIM_SUM_COLUMNS,
                   f"SELECT period, '{dim}', start, {value}, "
                   f"{', '.join(_ROLLUP_DIM_SUMS)} FROM usage_rollup WHERE true "
                   "GROUP BY 1, 3, 4")


def _minutes_from_records(source: str, where: str, *, ordered: bool = False) -> str:
    """Add the records of ``source`` matching ``where`` into usage_dims' per-minute totals."""
    return upsert("usage_dims", ("period", "dim", "start", "value"), DIM_SUM_COLUMNS,
                   f"SELECT {MINUTE}, 'total', CAST(ts / {MINUTE} AS INTEGER) * {MINUTE}, '', "
                   f"{', '.join(_RECORD_DIM_SUMS)} FROM {source} {where} GROUP BY 3",
                   ordered=ordered)


#: the writer's statements, in order, after its insert filled :data:`NEW` (none takes a
#: parameter): the new records read once into the scratch table, by minute; the minutes,
#: hours and days are all added from its few rows; :data:`NEW` emptied
FOLD = _batch_statements()
#: the per-minute totals of the last :data:`MINUTE_KEEP` seconds from the records, for
#: records written without the writer (usage_dims' minute rows must be empty)
MINUTE_BACKFILL = _minutes_from_records(
    "request_log", f"WHERE ts >= (SELECT MAX(ts) FROM request_log) - {MINUTE_KEEP}")
#: migration 7, and anyone who wrote records without the writer: (re)build both tables
#: from the records (the tables must be empty): the hours from the records, the days
#: from the hours, each dimension from the rollup
BACKFILL = [_rollup_from_records("WHERE true"), _days_from_hours(),
            *(_dims_from_rollup(dim) for dim in DIMS)]


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of a read: ``[since, until)`` from the ``period`` rollup rows, or from
    the request log itself when ``period`` is None."""

    since: float
    until: float
    period: int | None


def plan(since: float, until: float, periods: tuple[int, ...] = PERIODS) -> list[Segment]:
    """Cover ``[since, until)`` with the coarsest whole buckets ``periods`` allow, and
    the request log where the range cuts into the finest one; in time order."""
    if since >= until:
        return []
    if not periods:
        return [Segment(since, until, None)]
    size, finer = periods[0], periods[1:]
    first = math.ceil(since / size) * size
    last = math.floor(until / size) * size
    if first >= last:
        return plan(since, until, finer)
    return [*plan(since, first, finer), Segment(first, last, size), *plan(last, until, finer)]
