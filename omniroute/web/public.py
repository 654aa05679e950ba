"""Public routes: health and the dashboard's first call."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from omniroute.appkeys import CATALOG, GATEWAY, HTTP, REGISTRY, REQUEST_LOG, RESILIENCE, STORE
from omniroute.auth.admin import PASSWORD_SETTING
from omniroute.resilience.stats import NEEDS_SIGN_IN
from omniroute.version import __version__
from omniroute.web.tags import tag_resource


async def health(request: web.Request) -> web.Response:
    """``GET /api/monitoring/health``: status, version, uptime, database, providers."""
    app = request.app
    catalog = app[CATALOG]
    db_ok = await app[STORE].db.check()
    connections = list(catalog.connections.values())
    active = [c for c in connections if c.active]
    summary = {
        "configured": len(connections),
        "active": len(active),
        "usable": len(catalog.providers),
        "unusable": [{"id": cid, "error": err} for cid, err in catalog.provider_errors.items()],
        "types": sorted(app[REGISTRY].provider_types),
    }
    state = app[RESILIENCE].snapshot(catalog.connections.values())
    counts = state["health"]
    summary["health"] = {k: counts[k] for k in ("healthy", "degraded", "down")}
    summary["breakers"] = [{"key": b["key"], "state": b["state"]} for b in state["breakers"]]
    # subscription accounts whose renewal was refused for good: out until signed in again
    summary["needs_sign_in"] = [
        {"id": row["id"], "name": row["name"], "type": row["type"]}
        for row in state["connections"] if row["terminal_reason"] == NEEDS_SIGN_IN]
    shared = app[GATEWAY].shared
    # where the shared state lives (its URL's host, user, database) is for the admin's
    # eyes, like the database's: this answer needs no credentials
    sharing = None if shared is None else {
        k: v for k, v in shared.health().items() if k != "url"}
    degraded = (catalog.provider_errors or counts["down"] or counts["degraded"]
                or (sharing is not None and not sharing["ok"]))
    db = app[STORE].db
    # a database server that is away (database_url) leaves the instance serving on the
    # configuration it loaded, its usage records waiting: degraded, not down (a load
    # balancer must not take every instance out because of it)
    serving = db_ok or db.remote
    status = ("degraded" if degraded or not db_ok else "ok") if serving else "down"
    return web.json_response(
        {
            "status": status,
            "version": __version__,
            "uptime_s": round(time.time() - catalog.started_at, 1),
            # the kind of database only: this answer needs no credentials, and where the
            # database is (host, user, name) is for the admin's eyes (``omniroute doctor``)
            "database": {"ok": db_ok, **({"backend": db.name} if db.remote else {})},
            # the state shared with other instances (state_url); absent without one
            **({"shared_state": sharing} if sharing is not None else {}),
            "request_log": request_log_state(app),
            "providers": summary,
            "runtime": runtime(app),
        },
        status=200 if serving else 503,
    )


def runtime(app: web.Application) -> dict[str, Any]:
    """Counts that show a leak: asyncio tasks, upstream connections, log backlog."""
    connector = app[HTTP].connector
    idle = sum(len(v) for v in getattr(connector, "_conns", {}).values())
    in_use = len(getattr(connector, "_acquired", ()))
    return {
        "tasks": len(asyncio.all_tasks()),
        "upstream_connections": {"in_use": in_use, "idle": idle},
        "request_log_pending": app[REQUEST_LOG].pending,
    }


def request_log_state(app: web.Application) -> dict[str, Any]:
    """The usage records' buffer: waiting to be written, and lost because it was full."""
    request_log = app[REQUEST_LOG]
    return {"enabled": request_log.enabled, "pending": request_log.pending,
            "dropped": request_log.dropped, "written": request_log.written,
            "pruned": request_log.pruned}


async def init(request: web.Request) -> web.Response:
    """``GET /api/init``: what a dashboard needs before the user logs in."""
    catalog = request.app[CATALOG]
    stored = await request.app[STORE].get_settings()
    return web.json_response({
        "name": "omniroute",
        "version": __version__,
        "password_set": PASSWORD_SETTING in stored,
        "require_login": catalog.settings.require_login,
        "require_api_key": catalog.settings.require_api_key,
        "login_url": "/api/auth/login",
        "has_providers": bool(catalog.connections),
    })


def setup_public_routes(app: web.Application) -> None:
    for path, handler in (("/api/monitoring/health", health), ("/api/init", init)):
        resource = app.router.add_get(path, handler).resource
        assert resource is not None
        tag_resource(app, resource, None, "public")
