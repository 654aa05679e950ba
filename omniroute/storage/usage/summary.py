"""Usage summaries: totals and breakdowns, series over time, the last minutes.

A summary reads the range twice: once grouped by time bucket, once grouped by
(provider, model, connection, key), which Python folds into the four breakdowns
(measured faster than one query per breakdown, and the result stays small whatever
the range). Whole hours and days come from the rollup (:mod:`omniroute.storage.rollup`),
the minutes the range cuts into an hour from the records.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from omniroute.storage import rollup
from omniroute.storage.backend import DatabaseBackend, Row
from omniroute.storage.usage.filters import MIN_TIME, UsageFilter, iso, unfiltered
from omniroute.storage.usage.sums import (
    BUCKET_SECONDS,
    FAR,
    SUMS,
    Bucket,
    empty,
    merge,
    metric_of,
    segment_query,
    view,
)

#: the breakdowns a summary can hold besides its totals
DIMENSIONS = ("time", "provider", "model", "connection", "key")
_COLUMN = {"provider": "provider", "model": "model", "connection": "connection_id",
           "key": "api_key_id"}
#: the fields a series metric is computed from (a series reads only these)
_METRIC_FIELDS = {"avg_latency_ms": ("latency_ms", "timed"),
                  "saved_usd": ("list_cost_usd", "cost_usd")}
#: the most buckets one series may have (a month by hour is 744)
MAX_BUCKETS = 2000
#: what a series can show: the fields of a summary group
SERIES_METRICS = ("requests", "errors", "tokens_in", "tokens_out", "cost_usd",
                  "list_cost_usd", "saved_usd", "cache_hits", "avg_latency_ms")


class SummaryReads:
    """The summary reads of :class:`~omniroute.storage.usage.UsageQueries`."""

    db: DatabaseBackend

    async def summary(self, where: UsageFilter, *, bucket: Bucket = "day",
                      by: Iterable[str] = DIMENSIONS) -> dict[str, Any]:
        """Totals, and a breakdown per name in ``by`` (see :data:`DIMENSIONS`).

        Each breakdown is a list of groups, largest cost first (time: oldest first),
        each group the totals' fields plus its own name. Whole hours and days are read
        from the rollup (:mod:`omniroute.storage.rollup`), the rest from the records.
        """
        wanted = list(dict.fromkeys(by))
        unknown = set(wanted) - set(DIMENSIONS)
        if unknown:
            raise ValueError(f"unknown breakdown {sorted(unknown)}: use {', '.join(DIMENSIONS)}")
        if bucket not in BUCKET_SECONDS:
            raise ValueError("bucket must be 'day' or 'hour'")
        totals = empty()
        result: dict[str, Any] = {"bucket": bucket}
        if "time" in wanted:
            size = BUCKET_SECONDS[bucket]
            by_time = await self.grouped(where, [], bucket=bucket)
            result["by_time"] = [{"start": iso(key[0] * size), "ts": key[0] * size,
                                  **view(sums)} for key, sums in sorted(by_time.items())]
            for sums in by_time.values():
                merge(totals, sums)
        dims = [d for d in wanted if d != "time"]
        if dims or "time" not in wanted:
            groups: dict[str, dict[Any, dict[str, float]]] = {d: {} for d in dims}
            fold_totals = "time" not in wanted
            if unfiltered(where) and len(dims) > 1:
                # one small read per breakdown from the per-dimension totals
                for dim in dims:
                    rows = await self.grouped(where, [_COLUMN[dim]])
                    groups[dim] = {key[0]: sums for key, sums in rows.items()}
                if fold_totals:
                    for sums in groups[dims[0]].values():
                        merge(totals, sums)
            else:
                rows = await self.grouped(where, [_COLUMN[d] for d in dims])
                for key, row_sums in rows.items():
                    if fold_totals:
                        merge(totals, row_sums)
                    for dim, value in zip(dims, key, strict=True):
                        group_sums = groups[dim].get(value)
                        if group_sums is None:
                            group_sums = groups[dim][value] = empty()
                        merge(group_sums, row_sums)
            names = await self._names(groups)
            for dim in dims:
                ordered = sorted(groups[dim].items(),
                                 key=lambda item: (-item[1]["cost_usd"], -item[1]["requests"],
                                                   str(item[0])))
                result[f"by_{dim}"] = [{**_label(dim, value, names), **view(sums)}
                                       for value, sums in ordered]
        result["totals"] = view(totals)
        return result

    async def grouped(self, where: UsageFilter, columns: Sequence[str], *,
                      bucket: Bucket | None = None, fields: Sequence[str] = SUMS,
                      ) -> dict[tuple[Any, ...], dict[str, float]]:
        """The sums of the records ``where`` selects, by time bucket (when ``bucket`` is
        given: the key starts with the bucket's number, ``ts // size``) and by
        ``columns`` (``provider``, ``model``, ``connection_id``, ``api_key_id``).

        Whole days (unless grouped by hour) and hours come from the rollup, the minutes
        the range cuts into an hour from the records; a NULL column is None.

        :param fields: the sums wanted (default: all of them).
        """
        since = MIN_TIME if where.since is None else where.since
        until = FAR if where.until is None else where.until
        periods = rollup.PERIODS if bucket != "hour" else (rollup.HOUR,)
        size = None if bucket is None else BUCKET_SECONDS[bucket]
        merged: dict[tuple[Any, ...], dict[str, float]] = {}
        width = len(columns) + (size is not None)
        for segment in rollup.plan(since, until, periods):
            sql, params = segment_query(where, segment, columns, size, fields)
            for row in await self.db.fetchall(sql, params):
                values = tuple(row)
                key = tuple(v if v != "" else None for v in values[:width])
                sums = dict(zip(fields, [v or 0 for v in values[width:]], strict=True))
                found = merged.get(key)
                if found is None:
                    merged[key] = sums
                else:
                    for name in fields:
                        found[name] += sums[name]
        return merged

    async def series(self, where: UsageFilter, *, by: str, metric: str,
                     bucket: Bucket = "hour", top: int = 6) -> dict[str, Any]:
        """One metric over time, a line per group of ``by`` (a dimension but ``time``):
        the ``top`` largest groups by the metric, the rest summed as one ``other`` line.

        :param metric: a field of a summary's groups (``requests``, ``cost_usd``,
            ``avg_latency_ms``...; see :data:`SERIES_METRICS`).
        :returns: ``buckets`` (each bucket's start, epoch seconds, every bucket of the
            range, empty ones included) and ``series`` (``key``, ``label``, ``total``,
            ``values`` aligned with ``buckets``).
        :raises ValueError: an unknown ``by`` or ``metric``, or a range of more than
            :data:`MAX_BUCKETS` buckets.
        """
        if by not in _COLUMN:
            raise ValueError(f"by: one of {', '.join(_COLUMN)}")
        if metric not in SERIES_METRICS:
            raise ValueError(f"metric: one of {', '.join(SERIES_METRICS)}")
        size = BUCKET_SECONDS[bucket]
        fields = _METRIC_FIELDS.get(metric, (metric,))
        rows = await self.grouped(where, [_COLUMN[by]], bucket=bucket, fields=fields)
        starts = {key[0] for key in rows}
        first = (int(where.since // size) if where.since is not None
                 else min(starts, default=0))
        last = (math.ceil(where.until / size) - 1 if where.until is not None
                else max(starts, default=first))
        if last - first + 1 > MAX_BUCKETS:
            raise ValueError(f"{last - first + 1} buckets of a {bucket}: at most "
                             f"{MAX_BUCKETS} (use bucket=day, or a shorter range)")
        index = {n: i for i, n in enumerate(range(first, last + 1))}
        per_group: dict[Any, dict[int, dict[str, float]]] = {}
        group_sums: dict[Any, dict[str, float]] = {}
        for (start, value), sums in rows.items():
            if start not in index:
                continue
            per_group.setdefault(value, {})[start] = sums
            total = group_sums.get(value)
            if total is None:
                group_sums[value] = dict(sums)
            else:
                for name in fields:
                    total[name] += sums[name]

        def amount(sums: dict[str, float]) -> float:
            return metric_of(sums, metric) or 0

        ranked = sorted(group_sums, key=lambda v: (-amount(group_sums[v]), str(v)))
        keep, rest = ranked[:top], ranked[top:]
        names = await self._names({by: {v: group_sums[v] for v in keep}})
        lines: list[tuple[dict[str, Any], dict[int, dict[str, float]], dict[str, float]]] = [
            (_series_label(by, v, names), per_group[v], group_sums[v]) for v in keep]
        if rest:
            merged: dict[int, dict[str, float]] = {}
            rest_total = dict.fromkeys(fields, 0.0)
            for value in rest:
                for start, sums in per_group[value].items():
                    into = merged.setdefault(start, dict.fromkeys(fields, 0.0))
                    for name in fields:
                        into[name] += sums[name]
                for name in fields:
                    rest_total[name] += group_sums[value][name]
            lines.append(({"key": None, "label": f"other ({len(rest)})", "other": True},
                          merged, rest_total))
        series = []
        for label, points, total in lines:
            values: list[float | None] = [None if metric == "avg_latency_ms" else 0] * len(index)
            for start, sums in points.items():
                values[index[start]] = metric_of(sums, metric)
            series.append({**label, "total": metric_of(total, metric), "values": values})
        return {"bucket": bucket, "by": by, "metric": metric,
                "buckets": [n * size for n in index], "series": series}

    async def per_minute(self, since: float) -> list[dict[str, Any]]:
        """Requests, errors and cost of each minute from the one ``since`` falls in, from
        the per-minute totals (the last :data:`~omniroute.storage.rollup.MINUTE_KEEP`
        seconds; minutes without requests have no row)."""
        rows = await self.db.fetchall(
            "SELECT start, requests, errors, cost_usd, latency_ms, timed FROM usage_dims "
            "WHERE period = ? AND dim = 'total' AND start >= ? ORDER BY start",
            (rollup.MINUTE, math.floor(since / rollup.MINUTE) * rollup.MINUTE))
        return [{"ts": int(row["start"]), "requests": int(row["requests"]),
                 "errors": int(row["errors"]), "cost_usd": round(row["cost_usd"], 8),
                 "avg_latency_ms": round(row["latency_ms"] / row["timed"], 1)
                 if row["timed"] else None} for row in rows]

    async def _names(self, groups: dict[str, dict[Any, dict[str, float]]],
                     ) -> dict[str, dict[str, Row]]:
        """Names of the keys and connections in ``groups`` (deleted ones have none)."""
        names: dict[str, dict[str, Row]] = {}
        for dim, table, columns in (("key", "api_keys", "id, name, key_prefix"),
                                    ("connection", "connections", "id, name, prefix")):
            ids = [v for v in groups.get(dim, {}) if v is not None]
            names[dim] = {}
            for chunk in _chunks(ids, 500):
                rows = await self.db.fetchall(
                    f"SELECT {columns} FROM {table} WHERE id IN ({','.join('?' * len(chunk))})",
                    chunk)
                names[dim].update((row["id"], row) for row in rows)
        return names


def _label(dim: str, value: Any, names: dict[str, dict[str, Row]]) -> dict[str, Any]:
    if dim == "key":
        row = names["key"].get(value)
        return {"key_id": value, "key_name": row["name"] if row else None}
    if dim == "connection":
        row = names["connection"].get(value)
        return {"connection_id": value, "connection_name": row["name"] if row else None,
                "prefix": row["prefix"] if row else None}
    return {dim: value}


def _series_label(dim: str, value: Any, names: dict[str, dict[str, Row]]
                  ) -> dict[str, Any]:
    """A series' key and the name a chart shows for it."""
    label = _label(dim, value, names)
    if dim == "key":
        text = label["key_name"] or value or "no key"
    elif dim == "connection":
        text = label["connection_name"] or value or "none"
    else:
        text = value if value is not None else "none"
    return {"key": value, "label": text}


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
