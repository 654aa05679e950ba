"""Usage records: one record, pages of them, and the cursors between pages.

Pages are keyset pages (newest first, by ``(ts, id)``), never ``OFFSET``. A filter
no index serves (model, provider, connection, status) first asks the hourly totals
where the page's records lie, so the scan is narrowed to those hours.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
from typing import Any

import orjson

from omniroute.storage import rollup
from omniroute.storage.backend import DatabaseBackend, Row
from omniroute.storage.requestlog import RequestRecord
from omniroute.storage.usage.filters import MAX_TIME, MIN_TIME, STATUS_CLASS, UsageFilter, iso

#: the largest page of records one call returns
MAX_PAGE = 500
#: hours of totals one query of :meth:`RecordReads._window` reads (newest first)
HOURS_AT_ONCE = 48
_BOOLEANS = ("stream", "cache_hit", "usage_estimated", "has_bodies")
_BODIES = ("request_body", "response_body")
#: every column of a record but the bodies, and whether it has any
_WITHOUT_BODIES = ", ".join(
    ["id", *(f.name for f in dataclasses.fields(RequestRecord) if f.name not in _BODIES),
     "(request_body IS NOT NULL OR response_body IS NOT NULL) AS has_bodies"])
_WITH_BODIES = f"{_WITHOUT_BODIES}, request_body, response_body"


class RecordReads:
    """The record reads of :class:`~omniroute.storage.usage.UsageQueries`."""

    db: DatabaseBackend

    async def record(self, record_id: int) -> dict[str, Any] | None:
        """One record, bodies included, or None."""
        row = await self.db.fetchone(f"SELECT {_WITH_BODIES} FROM request_log WHERE id = ?",
                                     (record_id,))
        return None if row is None else record_view(row)

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

        if (where.model is None and where.provider is None and where.status is None
                and (where.connection is None or where.key is not None)):
            rows = await page(None, None)  # the time and key indexes serve it
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
        be None: no narrowing), or None when no record matches. A filter no index
        serves (model, provider, connection, status) would otherwise walk the time index
        through every record of the range that does not match."""
        since = where.since if where.since is not None else MIN_TIME
        # the newest hour that may hold one: hours start on whole seconds, at or before a
        # cursor's bound (a page goes on from its time), before the range's end
        newest: float
        if bound is not None:
            newest = math.floor(bound)
        else:
            newest = MAX_TIME if where.until is None else math.ceil(where.until) - 1
        one = _one_dimension(where)
        if one is not None:  # one filter: that dimension's few rows an hour
            table = "usage_dims"
            clauses, params = ["dim = ?", one[1]], [one[0], *one[2]]
        else:
            table = "usage_rollup"
            clauses, params = where.where(rollup=True)
        clauses += ["period = ?", "start >= ?", "start <= ?"]
        params += [rollup.HOUR, math.floor(since / rollup.HOUR) * rollup.HOUR]
        # the hours newest first, HOURS_AT_ONCE at a time (the table's key is in hour
        # order: a busy filter's page reads the last hours' rows, not a month's)
        sql = (f"SELECT start, SUM(requests) FROM {table} WHERE {' AND '.join(clauses)} "
               f"GROUP BY start ORDER BY start DESC LIMIT {HOURS_AT_ONCE}")
        upper: float | None = None
        count = 0
        while True:
            hours = await self.db.fetchall(sql, [*params, newest])
            if not hours:
                break
            if upper is None:
                upper = float(hours[0][0] + rollup.HOUR)
            for start, requests in hours:
                count += requests
                if count >= wanted:
                    return max(float(start), since), upper
            if len(hours) < HOURS_AT_ONCE:
                break
            newest = hours[-1][0] - 1
        if upper is None:
            return None
        return (None if where.since is None else since), upper


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
    match = STATUS_CLASS.match(text)
    if match:  # statuses are three digits: their text sorts like their number
        low = int(match.group(1)) * 100
        return "status", "value >= ? AND value < ?", [str(low), str(low + 100)]
    return "status", "value = ?", [str(int(text))]


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
