"""Management API routes the dashboard reads that no other API gives in one call.

* ``GET /api/dashboard/overview?today=EPOCH``: the overview page's one poll: health,
  requests, errors and cost per minute over the last hour, today's spend and top models
  (``today``: the start of the viewer's day, default midnight UTC), streams and requests
  in flight, the last failed requests.
* ``GET /api/settings/schema``: every runtime setting with its section, description,
  default, value, where the value comes from, and its bounds
  (:mod:`omniroute.settings_doc`).

Both are admin routes (their guards enforce it) and read only. The usage numbers
come from the usage reader's totals (per minute for the last hour, hourly and daily
for today), so a poll costs a few milliseconds whatever the size of the request log,
however many records the last hour holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiohttp import web

from omniroute.appkeys import CATALOG, PIPELINE, REQUEST_LOG, RESILIENCE, STORE, USAGE
from omniroute.settings_doc import schema
from omniroute.storage.usage import UsageFilter
from omniroute.version import __version__
from omniroute.web.public import request_log_state, runtime
from omniroute.web.query import query_time

#: minutes of per-minute numbers the overview shows
MINUTES = 60
#: failed requests the overview lists
RECENT_ERRORS = 5
#: seconds the overview waits for this worker's waiting records to be written
FLUSH_WAIT = 0.25
#: the terminal reason of an account that must be signed in again (issue 10's)
NEEDS_SIGN_IN = "needs_sign_in"


def _streams_in_flight(app: web.Application) -> int | None:
    """Streams being served by this worker (the metrics plugin counts them), or None."""
    from omniroute.metrics.web import METRICS  # the built-in plugin's key; it may be blocked

    metrics = app.get(METRICS)
    return None if metrics is None else metrics.streams_in_flight()


def _health(app: web.Application) -> dict[str, Any]:
    catalog = app[CATALOG]
    connections = list(catalog.connections.values())
    state = app[RESILIENCE].snapshot(connections)
    counts = state["health"]
    degraded = bool(catalog.provider_errors or counts["down"] or counts["degraded"])
    return {
        "status": "degraded" if degraded else "ok",
        "version": __version__,
        "uptime_s": round(time.time() - catalog.started_at, 1),
        "providers": {"configured": len(connections),
                      "active": sum(1 for c in connections if c.active),
                      "usable": len(catalog.providers),
                      "unusable": [{"id": cid, "error": err}
                                   for cid, err in catalog.provider_errors.items()]},
        "accounts": {k: counts[k] for k in ("healthy", "degraded", "down")},
        "breakers": counts["breakers"],
        "needs_sign_in": [{"id": row["id"], "name": row["name"]}
                          for row in state["connections"]
                          if row["terminal_reason"] == NEEDS_SIGN_IN],
        "request_log": request_log_state(app),
    }


async def overview(request: web.Request) -> web.Response:
    app = request.app
    now = time.time()
    today = query_time(request, "today", now)
    if today is None or not now - 2 * 86400 < today <= now:
        today = float(int(now) // 86400 * 86400)
    # this worker's last records count too; but under steady load a flush chases new
    # records for seconds, so the poll waits a moment and reads what is written by then
    # (the write goes on: the flush is shielded)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(app[REQUEST_LOG].flush(), FLUSH_WAIT)
    queries = app[USAGE]
    # the last 60 minutes, this one included, from the per-minute totals
    minutes = await queries.per_minute(now // 60 * 60 - (MINUTES - 1) * 60)
    # until the end of this hour (nothing is later than now): whole hours, read from the
    # hourly totals, never an hour of records
    hour_end = (now // 3600 + 1) * 3600
    day = await queries.summary(UsageFilter(since=today, until=hour_end), by=["model"])
    errors, _ = await queries.logs(UsageFilter(since=now - 86400, status="error"),
                                   limit=RECENT_ERRORS)
    last_hour = {"requests": sum(m["requests"] for m in minutes),
                 "errors": sum(m["errors"] for m in minutes),
                 "cost_usd": round(sum(m["cost_usd"] for m in minutes), 8)}
    return web.json_response({
        "now": now,
        "health": _health(app),
        "minutes": minutes,
        "last_hour": last_hour,
        "today": {"since": today, **day["totals"]},
        "top_models": sorted(day["by_model"], key=lambda m: -m["requests"])[:8],
        "streams_in_flight": _streams_in_flight(app),
        "requests_in_flight": app[PIPELINE].in_flight,
        "runtime": runtime(app),
        "recent_errors": [
            {k: e.get(k) for k in ("id", "time", "ts", "model_requested", "provider", "model",
                                   "status", "error", "error_class", "endpoint")}
            for e in errors],
    })


async def settings_schema(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    stored = {k for k in await request.app[STORE].get_settings() if not k.startswith("_")}
    rows = schema(catalog.settings.as_dict(), dict.fromkeys(stored),
                  set(catalog.config.settings_env))
    return web.json_response({"settings": rows})
