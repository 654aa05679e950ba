"""Reading the request log: usage totals, breakdowns and paged records.

The request log (``request_log``, written by :mod:`omniroute.storage.requestlog`)
holds up to a million rows by default, so every read here is shaped for its
indexes: a time range uses ``request_log_ts``, a key ``request_log_key_ts``, a
connection ``request_log_conn_ts``; pages are keyset pages (newest first, by
``(ts, id)``), never ``OFFSET``. A summary reads the range twice: once grouped by
time bucket, once grouped by (provider, model, connection, key), which Python
folds into the four breakdowns (measured faster than one query per breakdown,
and the result stays small whatever the range).

The gateway reads through its own read-only connection
(:meth:`~omniroute.storage.backend.DatabaseBackend.open_reader`, SQLite's):
a summary over a month of a busy log takes seconds, and it must not hold up
the connection the request log, budgets and the management API write through.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from omniroute.storage import rollup
from omniroute.storage.backend import DatabaseBackend, Row
from omniroute.storage.requestlog import RequestRecord

Bucket = Literal["day", "hour"]
#: the breakdowns a summary can hold besides its totals
DIMENSIONS = ("time", "provider", "model", "connection", "key")
_BUCKET_SECONDS = {"day": 86400, "hour": 3600}
_COLUMN = {"provider": "provider", "model": "model", "connection": "connection_id",
           "key": "api_key_id"}
_FAILED = rollup.FAILED
_CACHE_SAVED = ("CASE WHEN cache_hit = 1 THEN COALESCE(list_cost_usd, cost_usd, 0) "
                "- COALESCE(cost_usd, 0) ELSE 0 END")
#: the sums a usage read returns, in this order, after its group columns
_SUMS = ("requests", "errors", "tokens_in", "tokens_out", "cache_read_tokens",
         "cache_write_tokens", "reasoning_tokens", "images", "audio_seconds", "characters",
         "cost_usd", "list_cost_usd", "latency_ms", "timed", "cache_hits", "cache_saved_usd")
#: each sum over a group of records (request_log rows) ...
_RECORD_SUMS = {
    "requests": "COUNT(*)", "errors": f"SUM({_FAILED})", "tokens_in": "SUM(prompt_tokens)",
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
_DIMS_SUMS = {name: f"SUM({name})" for name in _SUMS}
#: the fields a series metric is computed from (a series reads only these)
_METRIC_FIELDS = {"avg_latency_ms": ("latency_ms", "timed"),
                  "saved_usd": ("list_cost_usd", "cost_usd")}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STATUS_CLASS = re.compile(r"^([1-5])xx$")
#: the times a query may name: the years 1970 to 9999 (what ``iso`` can write)
MIN_TIME, MAX_TIME = 0.0, 253402300799.0
#: the largest page of records one call returns
MAX_PAGE = 500
#: the most buckets one series may have (a month by hour is 744)
MAX_BUCKETS = 2000
#: what a series can show: the fields of a summary group
SERIES_METRICS = ("requests", "errors", "tokens_in", "tokens_out", "cost_usd",
                  "list_cost_usd", "saved_usd", "cache_hits", "avg_latency_ms")
#: the end of an open range: 10000-01-01, a whole day (a range up to it ends on a bucket)
_FAR = MAX_TIME + 1


# ---------------------------------------------------------------------- input

class FilterError(ValueError):
    """A filter value that cannot be used; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_time(text: str, *, now: float) -> float:
    """A point in time as epoch seconds.

    Accepts epoch seconds (``1717000000``), an ISO 8601 date or date-time
    (``2024-05-29``, ``2024-05-29T10:00:00Z``; without a zone it is UTC), or a
    duration back from ``now`` (``90s``, ``15m``, ``24h``, ``7d``, ``2w``). The time
    must fall in the years 1970 to 9999.

    :raises ValueError: none of these, or out of that range.
    """
    ts = _parse_time(text, now)
    if not MIN_TIME <= ts <= MAX_TIME:  # also refuses nan
        raise ValueError(f"{text!r} is out of range: a time must fall in the years 1970 "
                         "to 9999")
    return ts


def _parse_time(text: str, now: float) -> float:
    value = text.strip()
    if not value:
        raise ValueError("an empty time")
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isnan(number):
            raise ValueError(f"{text!r} is not a time")
        return number
    match = _DURATION.match(value.lower())
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use epoch seconds, an ISO 8601 date "
                         "or date-time, or a duration such as 24h or 7d") from None
    if parsed.tzinfo is None:
        return float(calendar.timegm(parsed.timetuple())) + parsed.microsecond / 1e6
    return parsed.timestamp()


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (``2024-05-29T10:00:00Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which records a read covers; every field is optional."""

    since: float | None = None  #: inclusive
    until: float | None = None  #: exclusive
    key: str | None = None
    model: str | None = None
    provider: str | None = None
    connection: str | None = None
    #: an HTTP status (``429``), a class (``5xx``), ``ok`` or ``error``
    status: str | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise FilterError("'from' must be before 'to'", "from")
        if self.status is not None:
            try:
                _status_clause(self.status)  # refuse a bad value when the filter is made
            except ValueError as exc:
                raise FilterError(str(exc), "status") from None

    def where(self, *, until: float | None = None, upper_inclusive: bool = False,
              rollup: bool = False) -> tuple[list[str], list[Any]]:
        """The WHERE clauses and their parameters.

        :param until: an upper time bound that replaces :attr:`until` (a page cursor's),
            so the index range has one upper bound.
        :param upper_inclusive: that bound includes its own time.
        :param rollup: the clauses for ``usage_rollup`` rows, without the time range
            (the caller bounds their buckets).
        """
        clauses: list[str] = []
        params: list[Any] = []
        # an equality on the key or the connection first: (column, ts) is an index
        for column, value in (("api_key_id", self.key), ("connection_id", self.connection),
                              ("model", self.model), ("provider", self.provider)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since is not None and not rollup:
            clauses.append("ts >= ?")
            params.append(self.since)
        upper = self.until if until is None else until
        if upper is not None and not rollup:
            clauses.append("ts <= ?" if upper_inclusive else "ts < ?")
            params.append(upper)
        if self.status is not None:
            clause, values = _status_clause(self.status, "failed" if rollup else _FAILED)
            clauses.append(clause)
            params.extend(values)
        return clauses, params


def _status_clause(status: str, failed: str = _FAILED) -> tuple[str, list[Any]]:
    value = status.strip().lower()
    if value in ("ok", "success"):
        return f"{failed} = 0", []
    if value in ("error", "failed"):
        return f"{failed} = 1", []
    # a failing status also names the failure itself (implied, so the same rows): the
    # request log's index of failed records (migration 10) then serves the read
    match = _STATUS_CLASS.match(value)
    if match:
        low = int(match.group(1)) * 100
        return f"status >= ? AND status < ?{f' AND {failed} = 1' if low >= 400 else ''}", [
            low, low + 100]
    if value.isdigit() and 100 <= int(value) <= 599:
        return f"status = ?{f' AND {failed} = 1' if int(value) >= 400 else ''}", [int(value)]
    raise ValueError(f"status {status!r}: use an HTTP status (429), a class (5xx), "
                     "'ok' or 'error'")


# ---------------------------------------------------------------------- summary

def _empty() -> dict[str, float]:
    return dict.fromkeys(_SUMS, 0)


def _view(sums: dict[str, float]) -> dict[str, Any]:
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


class UsageQueries:
    """Usage reads over one database connection (the gateway's reader, or the CLI's)."""

    def __init__(self, db: DatabaseBackend) -> None:
        self.db = db

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
        if bucket not in _BUCKET_SECONDS:
            raise ValueError("bucket must be 'day' or 'hour'")
        totals = _empty()
        result: dict[str, Any] = {"bucket": bucket}
        if "time" in wanted:
            size = _BUCKET_SECONDS[bucket]
            by_time = await self.grouped(where, [], bucket=bucket)
            result["by_time"] = [{"start": iso(key[0] * size), "ts": key[0] * size,
                                  **_view(sums)} for key, sums in sorted(by_time.items())]
            for sums in by_time.values():
                _merge(totals, sums)
        dims = [d for d in wanted if d != "time"]
        if dims or "time" not in wanted:
            groups: dict[str, dict[Any, dict[str, float]]] = {d: {} for d in dims}
            fold_totals = "time" not in wanted
            if _unfiltered(where) and len(dims) > 1:
                # one small read per breakdown from the per-dimension totals
                for dim in dims:
                    rows = await self.grouped(where, [_COLUMN[dim]])
                    groups[dim] = {key[0]: sums for key, sums in rows.items()}
                if fold_totals:
                    for sums in groups[dims[0]].values():
                        _merge(totals, sums)
            else:
                rows = await self.grouped(where, [_COLUMN[d] for d in dims])
                for key, row_sums in rows.items():
                    if fold_totals:
                        _merge(totals, row_sums)
                    for dim, value in zip(dims, key, strict=True):
                        group_sums = groups[dim].get(value)
                        if group_sums is None:
                            group_sums = groups[dim][value] = _empty()
                        _merge(group_sums, row_sums)
            names = await self._names(groups)
            for dim in dims:
                ordered = sorted(groups[dim].items(),
                                 key=lambda item: (-item[1]["cost_usd"], -item[1]["requests"],
                                                   str(item[0])))
                result[f"by_{dim}"] = [{**_label(dim, value, names), **_view(sums)}
                                       for value, sums in ordered]
        result["totals"] = _view(totals)
        return result

    async def grouped(self, where: UsageFilter, columns: Sequence[str], *,
                      bucket: Bucket | None = None, fields: Sequence[str] = _SUMS,
                      ) -> dict[tuple[Any, ...], dict[str, float]]:
        """The sums of the records ``where`` selects, by time bucket (when ``bucket`` is
        given: the key starts with the bucket's number, ``ts // size``) and by
        ``columns`` (``provider``, ``model``, ``connection_id``, ``api_key_id``).

        Whole days (unless grouped by hour) and hours come from the rollup, the minutes
        the range cuts into an hour from the records; a NULL column is None.

        :param fields: the sums wanted (default: all of them).
        """
        since = MIN_TIME if where.since is None else where.since
        until = _FAR if where.until is None else where.until
        periods = rollup.PERIODS if bucket != "hour" else (rollup.HOUR,)
        size = None if bucket is None else _BUCKET_SECONDS[bucket]
        merged: dict[tuple[Any, ...], dict[str, float]] = {}
        width = len(columns) + (size is not None)
        for segment in rollup.plan(since, until, periods):
            sql, params = _segment_query(where, segment, columns, size, fields)
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
        size = _BUCKET_SECONDS[bucket]
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
            return _metric(sums, metric) or 0

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
                values[index[start]] = _metric(sums, metric)
            series.append({**label, "total": _metric(total, metric), "values": values})
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

    async def record(self, record_id: int) -> dict[str, Any] | None:
        """One record, bodies included, or None."""
        row = await self.db.fetchone(f"SELECT {_WITH_BODIES} FROM request_log WHERE id = ?",
                                     (record_id,))
        return None if row is None else record_view(row)

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

    async def logs(self, where: UsageFilter, *, cursor: str | None = None,
                   limit: int = 50, bodies: bool = False,
                   ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of records, newest first, and the cursor of the next page (or None).

        :param bodies: include the stored bodies (up to two capped bodies per record: a
            page of them is large, so only when asked); otherwise ``has_bodies`` says
            whether a record has any.

        :raises ValueError: ``cursor`` is not one this function returned.
        """
        limit = min(max(limit, 1), MAX_PAGE)
        extra: list[str] = []
        extra_params: list[Any] = []
        bound: float | None = None
        if cursor is not None:
            after_ts, after_id = decode_cursor(cursor)
            if where.until is None or after_ts < where.until:
                bound = after_ts
            else:  # the cursor is past the range's end: the range bounds it
                bound = None
            extra.append("(ts < ? OR (ts = ? AND id < ?))")
            extra_params.extend((after_ts, after_ts, after_id))
        columns = "*" if bodies else _WITHOUT_BODIES

        async def page(lower: float | None, upper: float | None) -> list[Row]:
            narrowed = dataclasses.replace(where, since=lower) if lower is not None else where
            top, inclusive = (bound, True) if bound is not None else (where.until, False)
            if upper is not None and (top is None or upper < top):
                top, inclusive = upper, False
            clauses, params = narrowed.where(until=top, upper_inclusive=inclusive)
            clauses += extra
            sql_where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
            return await self.db.fetchall(
                f"SELECT {columns} FROM request_log{sql_where} ORDER BY ts DESC, id DESC LIMIT ?",
                [*params, *extra_params, limit + 1])

        if where.model is None and where.provider is None and where.status is None:
            rows = await page(None, None)  # the time, key and connection indexes serve it
        else:
            window = await self._window(where, bound, limit + 1)
            if window is None:
                return [], None  # no record matches anywhere in the range
            lower, upper = window
            rows = await page(lower, upper)
            if lower is not None and len(rows) <= limit:
                # the hourly counts included records the row bound has pruned: look further
                rows = await page(None, upper)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1]["ts"], rows[-1]["id"]) if more and rows else None
        return [record_view(row) for row in rows], next_cursor


    async def _window(self, where: UsageFilter, bound: float | None, wanted: int,
                      ) -> tuple[float | None, float | None] | None:
        """Where the newest ``wanted`` records matching ``where`` (older than ``bound``)
        lie, from the hourly totals: ``(lower, upper)`` to narrow the scan to (either may
        be None: no narrowing), or None when no record matches. A filter no index serves
        (model, provider, status) would otherwise walk the time index through every
        record of the range that does not match."""
        since = where.since if where.since is not None else MIN_TIME
        top = bound if bound is not None else where.until
        one = _one_dimension(where)
        if one is not None:  # one filter: that dimension's few rows an hour
            table = "usage_dims"
            clauses, params = ["dim = ?", one[1]], [one[0], *one[2]]
        else:
            table = "usage_rollup"
            clauses, params = where.where(rollup=True)
        clauses += ["period = ?", "start >= ?"]
        params += [rollup.HOUR, math.floor(since / rollup.HOUR) * rollup.HOUR]
        if top is not None:  # hours start on whole seconds: the same bound, as one
            clauses.append("start <= ?")
            params.append(math.floor(top))
        hours = await self.db.fetchall(
            f"SELECT start, SUM(requests) FROM {table} WHERE {' AND '.join(clauses)} "
            "GROUP BY start ORDER BY start DESC", params)
        if not hours:
            return None
        upper = float(hours[0][0] + rollup.HOUR)
        count = 0
        for start, requests in hours:
            count += requests
            if count >= wanted:
                return max(float(start), since), upper
        return (None if where.since is None else since), upper


#: a request_log column -> its ``usage_dims`` dimension
_DIM_OF = {column: dim for dim, column in rollup.DIMS.items() if column}


def _one_dimension(where: UsageFilter) -> tuple[str, str, list[Any]] | None:
    """When ``where`` filters by one field only (besides time): its ``usage_dims``
    dimension and the clause (and parameters) on ``value`` that selects it."""
    given = {name: getattr(where, name) for name in ("key", "model", "provider",
                                                      "connection", "status")}
    named = [(name, value) for name, value in given.items() if value is not None]
    if len(named) != 1:
        return None
    name, value = named[0]
    if name != "status":
        return name, "value = ?", [value]
    text = value.strip().lower()
    if text in ("ok", "success", "error", "failed"):
        return "failed", "value = ?", ["1" if text in ("error", "failed") else "0"]
    match = _STATUS_CLASS.match(text)
    if match:  # statuses are three digits: their text sorts like their number
        low = int(match.group(1)) * 100
        return "status", "value >= ? AND value < ?", [str(low), str(low + 100)]
    return "status", "value = ?", [str(int(text))]


def _unfiltered(where: UsageFilter) -> bool:
    """Whether a read has no filter but its time range (``usage_dims`` can serve it)."""
    return (where.key is None and where.model is None and where.provider is None
            and where.connection is None and where.status is None)


def _metric(sums: dict[str, float], metric: str) -> float | None:
    """One field of :func:`_view`, without building the others (a series has thousands)."""
    if metric == "avg_latency_ms":
        return round(sums["latency_ms"] / sums["timed"], 1) if sums["timed"] else None
    if metric == "saved_usd":
        return round(max(sums["list_cost_usd"] - sums["cost_usd"], 0.0), 8)
    if metric in ("cost_usd", "list_cost_usd"):
        return round(sums[metric], 8)
    return int(sums[metric])


def _merge(into: dict[str, float], sums: dict[str, float]) -> None:
    for name in _SUMS:
        into[name] += sums[name]


def _segment_query(where: UsageFilter, segment: rollup.Segment, columns: Sequence[str],
                   size: int | None, fields: Sequence[str] = _SUMS) -> tuple[str, list[Any]]:
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
    elif _unfiltered(where) and len(columns) <= 1:
        dim = _DIM_OF[columns[0]] if columns else "total"
        clauses = ["period = ?", "dim = ?", "start >= ?", "start < ?"]
        params = [segment.period, dim, segment.since, segment.until]
        table, sums = "usage_dims", _DIMS_SUMS
        select = [*bucket, *(f"value AS {c}" for c in columns)]
        group = [*bucket, *(["value"] if columns else [])]
        if size == segment.period:  # one row per bucket and value already: nothing to sum
            sums, group = {name: name for name in _SUMS}, []
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


_BOOLEANS = ("stream", "cache_hit", "usage_estimated", "has_bodies")
_BODIES = ("request_body", "response_body")
#: every column of a record but the bodies, and whether it has any
_WITHOUT_BODIES = ", ".join(
    ["id", *(f.name for f in dataclasses.fields(RequestRecord) if f.name not in _BODIES),
     "(request_body IS NOT NULL OR response_body IS NOT NULL) AS has_bodies"])
_WITH_BODIES = f"{_WITHOUT_BODIES}, request_body, response_body"


def record_view(row: Row) -> dict[str, Any]:
    """One request record as the API shows it: flags as booleans, attempts parsed,
    bodies only when stored."""
    view = dict(row)
    view["time"] = iso(view["ts"])
    for name in _BOOLEANS:
        if name in view:
            view[name] = bool(view[name])
    for name in _BODIES:
        if view.get(name) is None:
            view.pop(name, None)
    raw = view.get("attempt_log")
    if raw:
        try:
            view["attempt_log"] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            view["attempt_log"] = None
    else:
        view["attempt_log"] = []
    return view


def encode_cursor(ts: float, row_id: int) -> str:
    """An opaque page cursor: the last record's time and id."""
    return base64.urlsafe_b64encode(f"{ts!r}:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    """:raises ValueError: not a cursor :func:`encode_cursor` made."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        ts, _, row_id = text.partition(":")
        value = float(ts), int(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise ValueError("not a cursor from a previous page") from None
    if not math.isfinite(value[0]):
        raise ValueError("not a cursor from a previous page")
    return value
