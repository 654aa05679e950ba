"""Public routes: health and the dashboard's first call."""

from __future__ import annotations

import time

from aiohttp import web

from omniroute.auth.admin import PASSWORD_SETTING
from omniroute.web.keys import GATEWAY
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
    status = "ok" if db_ok and not gateway.provider_errors else ("degraded" if db_ok else "down")
    return web.json_response(
        {
            "status": status,
            "version": __version__,
            "uptime_s": round(time.time() - gateway.started_at, 1),
            "database": {"ok": db_ok},
            "providers": summary,
        },
        status=200 if db_ok else 503,
    )


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
