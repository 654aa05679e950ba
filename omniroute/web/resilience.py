"""Management API for resilience: settings, state, reset, rate limits, sessions.

``GET/PATCH /api/resilience`` (the queue, cooldown, breaker, attempt, session,
hedging and timeout settings, and a summary of the state), ``POST /api/resilience/reset``
(everything, or one ``connection_id``), ``GET /api/rate-limits`` (per connection:
cooling until, failures, in flight, limits, and a subscription's ``quota``), ``GET
/api/sessions``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from omniroute.appkeys import CATALOG, GATEWAY, RESILIENCE, STORE
from omniroute.bodies import read_object
from omniroute.errors import InvalidRequest, NotFound
from omniroute.web.management import _validated

#: the settings this API shows and changes (the rest stay under /api/settings)
RESILIENCE_SETTINGS = (
    "account_strategy", "round_robin_sticky", "max_attempts",
    "cooldown_base", "cooldown_factor", "cooldown_max",
    "breaker_threshold", "breaker_threshold_oauth", "breaker_reset", "breaker_reset_oauth",
    "breaker_half_open_max", "queue_size", "queue_timeout", "wait_for_cooldown_max",
    "session_ttl", "session_max", "hedge", "hedge_factor", "hedge_floor", "hedge_initial",
    "connect_timeout", "first_byte_timeout", "idle_timeout", "total_timeout",
)


def _view(request: web.Request) -> dict[str, Any]:
    catalog = request.app[CATALOG]
    current = catalog.settings.as_dict()
    state = request.app[RESILIENCE].snapshot(catalog.connections.values())
    return {
        "settings": {k: current[k] for k in RESILIENCE_SETTINGS},
        "pinned_by_environment": sorted(set(catalog.config.settings_env)
                                        & set(RESILIENCE_SETTINGS)),
        "health": state["health"],
        "breakers": state["breakers"],
    }


async def get_resilience(request: web.Request) -> web.Response:
    return web.json_response(_view(request))


async def patch_resilience(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    body = await read_object(request, catalog.settings.max_body_bytes)
    unknown = sorted(set(body) - set(RESILIENCE_SETTINGS))
    if unknown:
        raise InvalidRequest(f"not a resilience setting: {', '.join(unknown)} "
                             "(other settings live under /api/settings)", code="invalid_setting")
    await request.app[STORE].put_settings(_validated(body))
    await request.app[GATEWAY].reload()
    return web.json_response(_view(request))


async def reset_resilience(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    body: dict[str, Any] = {}
    if request.can_read_body:
        body = await read_object(request, catalog.settings.max_body_bytes)
    connection_id = body.get("connection_id")
    if connection_id is not None and connection_id not in catalog.connections:
        raise NotFound(f"No connection {connection_id!r}.")
    request.app[RESILIENCE].reset(connection_id)
    return web.json_response({"reset": connection_id or "all", **_view(request)})


async def rate_limits(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    state = request.app[RESILIENCE].snapshot(catalog.connections.values())
    for row in state["connections"]:  # subscriptions: the quota their service reported
        provider = catalog.providers.get(row["id"])
        quota = provider.quota_view() if provider is not None else None
        if quota is not None:
            row["quota"] = quota
    return web.json_response({"connections": state["connections"], "health": state["health"]})


async def sessions(request: web.Request) -> web.Response:
    return web.json_response(request.app[RESILIENCE].sessions.snapshot())
