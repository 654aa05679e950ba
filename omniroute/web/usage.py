"""Usage read API (admin): what requests cost, by time, provider, model, connection and key.

``GET /api/usage/summary`` (totals and breakdowns), ``GET /api/usage/series`` (one
metric over time, a line per model, provider, key or connection: the dashboard's
charts), ``GET /api/usage/logs`` (the records, a page at a time),
``GET /api/usage/logs/{id}`` (one record with its bodies) and
``GET /api/usage/{connectionId}`` (one connection's totals and breakdowns). Each
takes ``from`` and ``to`` (epoch seconds, ISO 8601, or a duration back from now such
as ``24h``); the SQL lives in :mod:`omniroute.storage.usage`, this module parses and
renders.

``/api/usage/budget`` belongs to the budgets API: the connection route's
pattern refuses the names of the fixed routes under ``/api/usage/``, so it never
shadows them, whatever the order they were registered in.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, cast

from aiohttp import web

from omniroute.appkeys import REQUEST_LOG, STORE, USAGE
from omniroute.errors import InvalidRequest, NotFound
from omniroute.storage.usage import (
    DIMENSIONS,
    SERIES_METRICS,
    Bucket,
    FilterError,
    UsageFilter,
    UsageQueries,
    iso,
)
from omniroute.web.query import query_limit, query_time
from omniroute.web.tags import tag_route

#: fixed routes under /api/usage/ (ours and the budgets API's): never a connection id
RESERVED = ("summary", "series", "logs", "budget")
CONNECTION_ROUTE = (
    "/api/usage/{connectionId:(?!(?:" + "|".join(RESERVED) + ")$)[^/]+}")


def _filter(request: web.Request, **fixed: str) -> UsageFilter:
    """The filter the query string asks for (``fixed`` fields come from the path)."""
    now = time.time()
    query = request.query
    fields: dict[str, Any] = {name: query.get(name) or None
                              for name in ("key", "model", "provider", "connection", "status")}
    fields.update(fixed)
    try:
        return UsageFilter(since=query_time(request, "from", now),
                           until=query_time(request, "to", now),
                           **fields)
    except FilterError as exc:
        code = "invalid_status" if exc.param == "status" else "invalid_time"
        raise InvalidRequest(f"{exc}.", param=exc.param, code=code) from None


def _bucket(request: web.Request) -> Bucket:
    bucket = request.query.get("bucket", "day")
    if bucket not in ("day", "hour"):
        raise InvalidRequest("'bucket' must be 'day' or 'hour'.", param="bucket")
    return cast(Bucket, bucket)


def _by(request: web.Request, allowed: tuple[str, ...]) -> list[str]:
    text = request.query.get("by")
    if not text:
        return list(allowed)
    wanted = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [w for w in wanted if w not in allowed]
    if unknown or not wanted:
        raise InvalidRequest(f"'by' takes a comma-separated list of {', '.join(allowed)}.",
                             param="by")
    return wanted


def _range(where: UsageFilter) -> dict[str, Any]:
    return {"from": iso(where.since), "to": iso(where.until)}


async def _queries(request: web.Request) -> UsageQueries:
    # records still in the buffer count too (the flush is shielded: a client that goes
    # away does not cancel the write)
    await request.app[REQUEST_LOG].flush()
    return request.app[USAGE]


async def usage_summary(request: web.Request) -> web.Response:
    """Totals and breakdowns by time (``bucket=day|hour``), provider, model, connection
    and key; ``by`` narrows the breakdowns (``by=model,key``)."""
    where, bucket = _filter(request), _bucket(request)
    by = _by(request, DIMENSIONS)
    summary = await (await _queries(request)).summary(where, bucket=bucket, by=by)
    return web.json_response({**_range(where), **summary})


async def usage_series(request: web.Request) -> web.Response:
    """``by`` (model, the default, provider, key, connection), ``metric`` (requests, cost_usd,
    tokens_in, ... see :data:`~omniroute.storage.usage.SERIES_METRICS`), ``bucket``
    (hour or day), ``top`` (lines kept, 1-20; the rest are one ``other`` line) and the
    summary's filters."""
    where, bucket = _filter(request), _bucket(request)
    by = _by(request, ("model", "provider", "key", "connection")) if request.query.get(
        "by") else ["model"]
    if len(by) != 1:
        raise InvalidRequest("'by' takes one of model, provider, key, connection.", param="by")
    metric = request.query.get("metric", "requests")
    if metric not in SERIES_METRICS:
        raise InvalidRequest(f"'metric' is one of {', '.join(SERIES_METRICS)}.", param="metric")
    top = query_limit(request, default=6, most=20, name="top")
    try:
        series = await (await _queries(request)).series(where, by=by[0], metric=metric,
                                                        bucket=bucket, top=top)
    except ValueError as exc:
        raise InvalidRequest(f"{exc}.", param="bucket", code="too_many_buckets") from None
    return web.json_response({**_range(where), **series})


async def usage_record(request: web.Request) -> web.Response:
    """One record, with its stored bodies (when ``log_bodies`` kept any)."""
    raw = request.match_info["id"]
    record = None
    if raw.isdigit():
        record = await (await _queries(request)).record(int(raw))
    if record is None:
        raise NotFound(f"No usage record {raw!r}.")
    return web.json_response(record)


async def usage_logs(request: web.Request) -> web.Response:
    """The records, newest first: ``limit`` (at most 500), ``cursor`` (the previous
    page's ``next_cursor``), the filters of the summary plus ``status``, and
    ``bodies=true`` for the stored bodies (without it, ``has_bodies`` says which have)."""
    where, limit = _filter(request), query_limit(request)
    queries = await _queries(request)
    try:
        records, cursor = await queries.logs(where, cursor=request.query.get("cursor"),
                                             limit=limit, bodies=_flag(request, "bodies"))
    except ValueError as exc:
        raise InvalidRequest(f"'cursor': {exc}", param="cursor", code="invalid_cursor") from None
    return web.json_response({"logs": records, "next_cursor": cursor})


async def connection_usage(request: web.Request) -> web.Response:
    """One connection's totals and breakdowns by time, model and key."""
    conn_id = request.match_info["connectionId"]
    where = _filter(request, connection=conn_id)
    conn = await request.app[STORE].get_connection(conn_id)
    by = _by(request, ("time", "model", "key"))
    summary = await (await _queries(request)).summary(where, bucket=_bucket(request), by=by)
    if conn is None and not summary["totals"]["requests"]:
        raise NotFound(f"No connection {conn_id!r} and no usage recorded for it.")
    view = None if conn is None else {"id": conn.id, "name": conn.name, "prefix": conn.prefix,
                                      "type": conn.type}
    return web.json_response({"connection_id": conn_id, "connection": view, **_range(where),
                              **summary})


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").strip().lower()
    if value not in ("true", "1", "yes", "false", "0", "no"):
        raise InvalidRequest(f"'{name}' is true or false.", param=name)
    return value in ("true", "1", "yes")


def setup_usage_routes(app: web.Application) -> None:
    """The usage read API, and the read-only connection it reads through (opened after
    the gateway's database, closed before it)."""

    async def usage_ctx(app: web.Application) -> AsyncIterator[None]:
        db = app[STORE].db
        reader = await db.open_reader()
        app[USAGE] = UsageQueries(reader or db)
        yield
        if reader is not None:
            await reader.close()

    app.cleanup_ctx.append(usage_ctx)
    r = app.router
    for route in (r.add_get("/api/usage/summary", usage_summary),
                  r.add_get("/api/usage/series", usage_series),
                  r.add_get("/api/usage/logs", usage_logs),
                  r.add_get("/api/usage/logs/{id}", usage_record),
                  r.add_get(CONNECTION_ROUTE, connection_usage)):
        tag_route(app, route, None, "admin")
