"""Usage totals by hour and by day, kept beside the request log so reads stay fast.

``usage_rollup`` holds, per bucket (an hour or a day, UTC) and per group (provider,
model, connection, key, status, failed, cache hit), the sums a usage summary shows.
The request log's writer keeps it current in the same transaction as the records
(:meth:`RequestLog.also <omniroute.storage.requestlog.RequestLog.also>` runs
:data:`FOLD`: one ``INSERT ... SELECT ... GROUP BY`` over the rows the transaction
just wrote, inside SQLite, so the event loop pays nothing per record). Migration 5
fills it from the records already there.

A read over ``[since, until)`` (:func:`plan`) takes whole days from the daily rows,
whole hours at the ragged ends from the hourly rows, and only the minutes the
range cuts into an hour from the request log itself: a month of a million records
is a few thousand rollup rows and two partial hours of records, instead of the
million. A summary grouped by hour never reads the daily rows.

Retention: the rollup rows go with the records' age retention (``usage_retention_days``),
not with the row bound (``usage_max_rows``): totals outlive the records the bound pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HOUR, DAY = 3600, 86400
#: bucket sizes, coarsest first
PERIODS = (DAY, HOUR)

#: the group columns of a rollup row (NULL stored as '': a primary key must compare equal)
GROUP_COLUMNS = ("provider", "model", "connection_id", "api_key_id", "status", "failed",
                 "cache_hit")
#: what a record's row adds to its group
SUM_COLUMNS = ("requests", "tokens_in", "tokens_out", "cache_read_tokens",
               "cache_write_tokens", "reasoning_tokens", "cost_usd", "list_cost_usd",
               "latency_ms", "timed")

#: a request failed: an error status, or an error class (a stream broken after its 200)
FAILED = "(status >= 400 OR error_class IS NOT NULL)"

#: the sums, over request_log rows, in :data:`SUM_COLUMNS` order
_RECORD_SUMS = (
    "COUNT(*)", "SUM(COALESCE(prompt_tokens, 0))", "SUM(COALESCE(completion_tokens, 0))",
    "SUM(COALESCE(cached_tokens, 0))", "SUM(COALESCE(cache_write_tokens, 0))",
    "SUM(COALESCE(reasoning_tokens, 0))", "SUM(COALESCE(cost_usd, 0))",
    # a subscription's (or a cache hit's) list price, else what was paid
    "SUM(COALESCE(list_cost_usd, cost_usd, 0))", "SUM(COALESCE(latency_ms, 0))",
    "COUNT(latency_ms)",
)
_RECORD_GROUPS = ("COALESCE(provider, '')", "COALESCE(model, '')",
                  "COALESCE(connection_id, '')", "COALESCE(api_key_id, '')", "status",
                  FAILED, "cache_hit")

CREATE = f"""CREATE TABLE usage_rollup (
    period INTEGER NOT NULL,
    start INTEGER NOT NULL,
    {', '.join(f'{c} TEXT NOT NULL' for c in GROUP_COLUMNS[:4])},
    status INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    cache_hit INTEGER NOT NULL,
    {', '.join(f'{c} REAL NOT NULL DEFAULT 0' for c in SUM_COLUMNS)},
    PRIMARY KEY (period, start, {', '.join(GROUP_COLUMNS)})
) WITHOUT ROWID"""


def fold_sql(period: int, where: str) -> str:
    """The statement adding the request_log rows matching ``where`` (which must be a
    WHERE clause: the upsert needs one) into the ``period`` rollup rows."""
    groups = ", ".join(_RECORD_GROUPS)
    sums = ", ".join(_RECORD_SUMS)
    update = ", ".join(f"{c} = {c} + excluded.{c}" for c in SUM_COLUMNS)
    return (
        f"INSERT INTO usage_rollup(period, start, {', '.join(GROUP_COLUMNS)}, "
        f"{', '.join(SUM_COLUMNS)}) "
        f"SELECT {period}, CAST(ts / {period} AS INTEGER) * {period}, {groups}, {sums} "
        f"FROM request_log {where} GROUP BY 2, {', '.join(str(i) for i in range(3, 10))} "
        f"ON CONFLICT(period, start, {', '.join(GROUP_COLUMNS)}) DO UPDATE SET {update}")


#: the writer's statements: add the rows with ``id > ?`` (what this transaction wrote)
FOLD = [fold_sql(period, "WHERE id > ?") for period in PERIODS]
#: migration 5: the rows already in the request log
BACKFILL = [fold_sql(period, "WHERE true") for period in PERIODS]


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
