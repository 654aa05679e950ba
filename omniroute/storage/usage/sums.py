"""The sums a usage read adds up: their SQL over each table, and their public shape.

A read adds the same sums (:data:`SUMS`) over three kinds of rows: the records
(``request_log``), the rollup rows (``usage_rollup``, :mod:`omniroute.storage.rollup`)
and one dimension's totals (``usage_dims``). :func:`segment_query` writes the query of
one stretch of a read over the right one; :func:`view` turns a group's sums into what
the API shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

from omniroute.storage import rollup
from omniroute.storage.usage.filters import FAILED, MAX_TIME, UsageFilter, unfiltered

Bucket = Literal["day", "hour"]
BUCKET_SECONDS = {"day": 86400, "hour": 3600}
#: the end of an open range: 10000-01-01, a whole day (a range up to it ends on a bucket)
FAR = MAX_TIME + 1
_CACHE_SAVED = ("CASE WHEN cache_hit = 1 THEN COALESCE(list_cost_usd, cost_usd, 0) "
                "- COALESCE(cost_usd, 0) ELSE 0 END")
#: the sums a usage read returns, in this order, after its group columns
SUMS = ("requests", "errors", "tokens_in", "tokens_out", "cache_read_tokens",
        "cache_write_tokens", "reasoning_tokens", "images", "audio_seconds", "characters",
        "cost_usd", "list_cost_usd", "latency_ms", "timed", "cache_hits", "cache_saved_usd")
#: each sum over a group of records (request_log rows) ...
_RECORD_SUMS = {
    "requests": "COUNT(*)", "errors": f"SUM({FAILED})", "tokens_in": "SUM(prompt_tokens)",
    "tokens_out": "SUM(completion_tokens)", "cache_read_tokens": "SUM(cached_tokens)",
    "cache_write_tokens": "SUM(cache_write_tokens)",
    "reasoning_tokens": "SUM(reasoning_tokens)", "images": "SUM(images)",
    "audio_seconds": "SUM(audio_seconds)", "characters": "SUM(characters)",
    "cost_usd": "SUM(cost_usd)",
    # what the same tokens cost at list price: a subscription's list price, else the cost
    "list_cost_usd": "SUM(COALESCE(list_cost_usd, cost_usd))",
    "latency_ms": "SUM(latency_ms)", "timed": "COUNT(latency_ms)",
    "cache_hits": "SUM(cache_hit)", "cache_saved_usd": f"SUM({_CACHE_SAVED})"}
#: ... over rollup rows (``usage_rollup``, :mod:`omniroute.storage.rollup`) ...
_ROLLUP_SUMS = {
    **{name: f"SUM({name})" for name in rollup.SUM_COLUMNS},
    "errors": "SUM(failed * requests)", "cache_hits": "SUM(cache_hit * requests)",
    "cache_saved_usd": "SUM(CASE WHEN cache_hit = 1 THEN list_cost_usd - cost_usd ELSE 0 END)"}
#: ... and over one dimension's rows (``usage_dims``: a column per sum)
_DIMS_SUMS = {name: f"SUM({name})" for name in SUMS}
#: a request_log column -> its ``usage_dims`` dimension
_DIM_OF = {column: dim for dim, column in rollup.DIMS.items() if column}


def empty() -> dict[str, float]:
    return dict.fromkeys(SUMS, 0)


def merge(into: dict[str, float], sums: dict[str, float]) -> None:
    for name in SUMS:
        into[name] += sums[name]


def view(sums: dict[str, float]) -> dict[str, Any]:
    """The public shape of one group's sums."""
    timed = sums["timed"]
    cost, listed = sums["cost_usd"], sums["list_cost_usd"]
    saved = max(listed - cost, 0.0)
    by_cache = min(max(sums["cache_saved_usd"], 0.0), saved)
    return {
        "requests": int(sums["requests"]),
        "errors": int(sums["errors"]),
        "tokens_in": int(sums["tokens_in"]),
        "tokens_out": int(sums["tokens_out"]),
        "cache_read_tokens": int(sums["cache_read_tokens"]),
        "cache_write_tokens": int(sums["cache_write_tokens"]),
        "reasoning_tokens": int(sums["reasoning_tokens"]),
        "images": int(sums["images"]),
        # seconds of audio transcribed or translated, characters turned into speech
        "audio_seconds": round(sums["audio_seconds"], 3),
        "characters": int(sums["characters"]),
        "cost_usd": round(cost, 8),
        "list_cost_usd": round(listed, 8),
        # what subscription connections saved: their tokens' list price, paid nothing
        "saved_usd": round(saved, 8),
        # of which: answers from the response cache, and subscription accounts
        "saved_by_cache_usd": round(by_cache, 8),
        "saved_by_subscription_usd": round(saved - by_cache, 8),
        "cache_hits": int(sums["cache_hits"]),
        "avg_latency_ms": round(sums["latency_ms"] / timed, 1) if timed else None,
    }


def metric_of(sums: dict[str, float], metric: str) -> float | None:
    """One field of :func:`view`, without building the others (a series has thousands)."""
    if metric == "avg_latency_ms":
        return round(sums["latency_ms"] / sums["timed"], 1) if sums["timed"] else None
    if metric == "saved_usd":
        return round(max(sums["list_cost_usd"] - sums["cost_usd"], 0.0), 8)
    if metric in ("cost_usd", "list_cost_usd"):
        return round(sums[metric], 8)
    return int(sums[metric])


def segment_query(where: UsageFilter, segment: rollup.Segment, columns: Sequence[str],
                  size: int | None, fields: Sequence[str] = SUMS) -> tuple[str, list[Any]]:
    """The grouped query of one stretch of a read: over the records, over one
    dimension's totals (no filter, at most one column), or over the rollup rows; it
    selects its group columns, then the sums in ``fields``."""
    time_of = "ts" if segment.period is None else "start"
    bucket = [f"CAST({time_of} / {size} AS INTEGER)"] if size is not None else []
    group = [*bucket, *columns]
    if segment.period is None:
        clauses, params = dataclasses.replace(
            where, since=segment.since, until=segment.until).where()
        table, sums, select = "request_log", _RECORD_SUMS, group
    elif unfiltered(where) and len(columns) <= 1:
        dim = _DIM_OF[columns[0]] if columns else "total"
        clauses = ["period = ?", "dim = ?", "start >= ?", "start < ?"]
        params = [segment.period, dim, segment.since, segment.until]
        table, sums = "usage_dims", _DIMS_SUMS
        select = [*bucket, *(f"value AS {c}" for c in columns)]
        group = [*bucket, *(["value"] if columns else [])]
        if size == segment.period:  # one row per bucket and value already: nothing to sum
            sums, group = {name: name for name in SUMS}, []
    else:
        clauses, params = where.where(rollup=True)
        clauses[:0] = ["period = ?", "start >= ?", "start < ?"]
        params[:0] = [segment.period, segment.since, segment.until]
        table, sums, select = "usage_rollup", _ROLLUP_SUMS, group
    aggregates = ", ".join(f"{sums[name]} AS {name}" for name in fields)
    sql = (f"SELECT {''.join(f'{g}, ' for g in select)}{aggregates} FROM {table} "
           f"WHERE {' AND '.join(clauses)}"
           + (f" GROUP BY {', '.join(group)}" if group else ""))
    return sql, params
