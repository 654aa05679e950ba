"""Public routes: health and the dashboard's first call."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from omniroute.appkeys import GATEWAY
from omniroute.auth.admin import PASSWORD_SETTING
from omniroute.gateway import Gateway
from omniroute.version import __version__


async def health(request: web.Request) -> web.Response:
    """``GET /api/monitoring/health``: status, version, uptime, database, providers."""
    gateway = request.app[GATEWAY]
    db_ok = await gateway.db.check()
    connections = list(gateway.connections.values())
    active = [c for c in connections if c.active]
    summary = {
        "configured": len(connections),
        "active": len(active),
        "usable": len(gateway.providers),
        "unusable": [{"id": cid, "error": err} for cid, err in gateway.provider_errors.items()],
        "types": sorted(gateway.plugins.providers),
    }
    state = gateway.resilience.snapshot(gateway.connections.values())
    counts = state["health"]
    summary["health"] = {k: counts[k] for k in ("healthy", "degraded", "down")}
    summary["breakers"] = [{"key": b["key"], "state": b["state"]} for b in state["breakers"]]
    degraded = gateway.provider_errors or counts["down"] or counts["degraded"]
    status = ("degraded" if degraded else "ok") if db_ok else "down"
    return web.json_response(
        {
            "status": status,
            "version": __version__,
            "uptime_s": round(time.time() - gateway.started_at, 1),
            "database": {"ok": db_ok},
            "providers": summary,
            "runtime": runtime(gateway),
        },
        status=200 if db_ok else 503,
    )


def runtime(gateway: Gateway) -> dict[str, Any]:
    """Counts that show a leak: asyncio tasks, upstream connections, log backlog."""
    connector = gateway.http.connector
    idle = sum(len(v) for v in getattr(connector, "_conns", {}).values())
    in_use = len(getattr(connector, "_acquired", ()))
    return {
        "tasks": len(asyncio.all_tasks()),
        "upstream_connections": {"in_use": in_use, "idle": idle},
        "request_log_pending": gateway.log.pending,
    }


async def init(request: web.Request) -> web.Response:
    """``GET /api/init``: what a dashboard needs before the user logs in."""
    gateway = request.app[GATEWAY]
    settings = await gateway.store.get_settings()
    return web.json_response({
        "name": "omniroute",
        "version": __version__,
        "password_set": PASSWORD_SETTING in settings,
        "require_login": gateway.settings.require_login,
        "require_api_key": gateway.settings.require_api_key,
        "login_url": "/api/auth/login",
        "has_providers": bool(gateway.connections),
    })


def setup_public_routes(app: web.Application) -> None:
    app.router.add_get("/api/monitoring/health", health)
    app.router.add_get("/api/init", init)
