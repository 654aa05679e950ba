"""The management API's routes whose modules are imported on their first call.

Serving ``/v1`` never runs the management handlers, so the gateway registers
their routes at start (the route table, the tags the guards are made from) and
imports a handler's module only when one of its routes is first called
(:func:`lazy_handler`): the modules and what only they import (the agent CLIs'
editors, the settings' documentation, the budgets' views; 0.4 MiB of memory)
stay out of a gateway nobody manages. Each table is registered where its module's
``setup`` function used to be, so the routes keep their order.

An entry is ``(method, path, "module:handler", snapshot)``: the module under
``omniroute.web``, and the kind of managed state the route changes (its audit
entries show it before and after; :mod:`omniroute.storage.snapshots`).
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from aiohttp import web

from omniroute.web.tags import tag_route

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Entry = tuple[str, str, str, str | None]

#: providers, keys, aliases, combos, settings, the password, recent requests
MANAGEMENT: tuple[Entry, ...] = (
    ("GET", "/api/providers", "management:list_providers", "connection"),
    ("POST", "/api/providers", "management:create_provider", "connection"),
    ("POST", "/api/providers/validate", "management:validate_provider", None),
    ("GET", "/api/providers/{id}", "management:get_provider", "connection"),
    ("PUT", "/api/providers/{id}", "management:update_provider", "connection"),
    ("DELETE", "/api/providers/{id}", "management:delete_provider", "connection"),
    ("POST", "/api/providers/{id}/test", "management:test_provider", None),
    ("GET", "/api/providers/{id}/models", "management:provider_models", None),
    ("GET", "/api/keys", "management:list_keys", "key"),
    ("POST", "/api/keys", "management:create_key", "key"),
    ("DELETE", "/api/keys/{id}", "management:revoke_key", "key"),
    ("POST", "/api/keys/{id}/revoke", "management:revoke_key", "key"),
    ("GET", "/api/models/alias", "management:list_aliases", "aliases"),
    ("POST", "/api/models/alias", "management:set_alias", "aliases"),
    ("DELETE", "/api/models/alias/{alias}", "management:delete_alias", "aliases"),
    ("GET", "/api/combos", "management:list_combos", "combo"),
    ("POST", "/api/combos", "management:create_combo", "combo"),
    ("GET", "/api/combos/{id}", "management:get_combo", "combo"),
    ("PUT", "/api/combos/{id}", "management:update_combo", "combo"),
    ("DELETE", "/api/combos/{id}", "management:delete_combo", "combo"),
    ("GET", "/api/settings", "management:get_settings", "settings"),
    ("PUT", "/api/settings", "management:put_settings", "settings"),
    ("PATCH", "/api/settings", "management:put_settings", "settings"),
    ("GET", "/api/settings/require-login", "management:get_require_login", "settings"),
    ("PUT", "/api/settings/require-login", "management:put_require_login", "settings"),
    ("PUT", "/api/auth/password", "management:change_password", None),
    ("GET", "/api/requests", "management:recent_requests", None),
)
#: budgets and key limits: a POST changes the budgets, the others one key
BUDGETS: tuple[Entry, ...] = (
    ("GET", "/api/usage/budget", "budgets:get_budgets", "key"),
    ("POST", "/api/usage/budget", "budgets:set_budget", "budgets"),
    ("GET", "/api/keys/{id}", "budgets:get_key", "key"),
    ("PATCH", "/api/keys/{id}", "budgets:update_key", "key"),
)
#: the response cache
CACHE: tuple[Entry, ...] = (
    ("GET", "/api/cache/stats", "cache:get_stats", None),
    ("DELETE", "/api/cache/stats", "cache:clear", None),
    ("GET", "/api/cache/entries", "cache:get_entries", None),
    ("DELETE", "/api/cache/entries/{key}", "cache:delete_entry", None),
)
#: the doctor's repairs
SYSTEM: tuple[Entry, ...] = (
    ("POST", "/api/system/env/repair", "system:env_repair", None),
)
#: breakers, cooldowns, limits, sticky sessions (a PATCH stores settings)
RESILIENCE: tuple[Entry, ...] = (
    ("GET", "/api/resilience", "resilience:get_resilience", None),
    ("PATCH", "/api/resilience", "resilience:patch_resilience", "settings"),
    ("POST", "/api/resilience/reset", "resilience:reset_resilience", None),
    ("GET", "/api/rate-limits", "resilience:rate_limits", None),
    ("GET", "/api/sessions", "resilience:sessions", None),
)
#: the price table's overrides
PRICING: tuple[Entry, ...] = (
    ("GET", "/api/pricing", "pricing:get_pricing", "pricing"),
    ("PUT", "/api/pricing", "pricing:put_pricing", "pricing"),
    ("DELETE", "/api/pricing", "pricing:delete_pricing", "pricing"),
)
#: latency percentiles
TELEMETRY: tuple[Entry, ...] = (
    ("GET", "/api/telemetry/summary", "telemetry:telemetry_summary", None),
)
#: the agent CLIs on the gateway's machine (:mod:`omniroute.web.clitools`)
CLI_TOOLS: tuple[Entry, ...] = (
    ("GET", "/api/cli-tools", "clitools:list_tools", None),
    ("POST", "/api/cli-tools", "clitools:add", None),
    ("DELETE", "/api/cli-tools/{id}", "clitools:remove", None),
    ("POST", "/api/cli-tools/{id}/configure", "clitools:configure", None),
    ("POST", "/api/cli-tools/{id}/restore", "clitools:restore", None),
)
#: the dashboard's overview and the settings' schema
DASHBOARD_API: tuple[Entry, ...] = (
    ("GET", "/api/dashboard/overview", "dashboard_api:overview", None),
    ("GET", "/api/settings/schema", "dashboard_api:settings_schema", None),
)


def lazy_handler(target: str) -> Handler:
    """A handler that imports ``target``'s module (``"module:handler"``, under
    ``omniroute.web``) at its first call and calls its handler from then on."""
    module, _, name = target.partition(":")
    resolved: Handler | None = None

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal resolved
        if resolved is None:
            resolved = getattr(importlib.import_module(f"omniroute.web.{module}"), name)
        return await resolved(request)

    handler.__name__ = handler.__qualname__ = name
    handler.__module__ = f"omniroute.web.{module}"
    return handler


def setup_admin_routes(app: web.Application, entries: tuple[Entry, ...]) -> None:
    """Register ``entries``, every one for an admin, their handlers imported on first call."""
    handlers: dict[str, Handler] = {}
    for method, path, target, snapshot in entries:
        handler = handlers.get(target)
        if handler is None:
            handler = handlers[target] = lazy_handler(target)
        before = set(app.router.routes())
        if method == "GET":
            app.router.add_get(path, handler)  # with its HEAD
        else:
            app.router.add_route(method, path, handler)
        for route in app.router.routes():
            if route not in before:
                tag_route(app, route, None, "admin", snapshot=snapshot)
