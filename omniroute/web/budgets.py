"""Management API for per-key budgets and limits (admin only, like every ``/api`` route).

* ``GET /api/usage/budget``: every key's spend, limit, period, remaining and reset
  (``?keyId=`` / ``?apiKeyId=``: that key's entry alone);
* ``POST /api/usage/budget``: the seed's ``{"keyId", "limit", "period"}`` or the richer
  shape (:func:`omniroute.budgets.view.budget_changes`);
* ``GET /api/keys/{id}`` and ``PATCH /api/keys/{id}``: a key with all its limits, expiry
  and usage-record flag (``POST /api/keys`` takes the same fields).

A change reloads the API-key index at once, so the next request sees it; other
processes see it through the config version within a second.
"""

from __future__ import annotations

from aiohttp import web

from omniroute.appkeys import AUTH_SCHEMES, BUDGETS, STORE
from omniroute.bodies import read_object
from omniroute.budgets.view import budget_changes, budget_view, key_options, merged_limits
from omniroute.errors import InvalidRequest, NotFound
from omniroute.storage import ApiKey

_SMALL_BODY = 1024 * 1024


async def _key(request: web.Request, id_or_name: str) -> ApiKey:
    key = await request.app[STORE].get_key(id_or_name)
    if key is None:
        raise NotFound(f"No API key {id_or_name!r}.")
    return key


async def _reload_keys(request: web.Request) -> None:
    for scheme in request.app[AUTH_SCHEMES].values():
        await scheme.reload()


async def get_budgets(request: web.Request) -> web.Response:
    budgets = request.app[BUDGETS]
    wanted = request.query.get("keyId") or request.query.get("apiKeyId")
    if wanted:
        return web.json_response(budget_view(await _key(request, wanted), budgets))
    keys = [k for k in await request.app[STORE].list_keys() if k.revoked_at is None]
    return web.json_response({"budgets": [budget_view(k, budgets) for k in keys]})


async def set_budget(request: web.Request) -> web.Response:
    body = await read_object(request, _SMALL_BODY)
    try:
        wanted, changes = budget_changes(body)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_budget") from None
    key = await _key(request, wanted)
    try:
        limits = merged_limits(key.limits, changes)
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_budget") from None
    await request.app[STORE].update_key(key.id, limits=limits)
    await _reload_keys(request)
    return web.json_response(budget_view(await _key(request, key.id), request.app[BUDGETS]))


async def get_key(request: web.Request) -> web.Response:
    return web.json_response((await _key(request, request.match_info["id"])).public())


async def update_key(request: web.Request) -> web.Response:
    key = await _key(request, request.match_info["id"])
    body = await read_object(request, _SMALL_BODY)
    unknown = set(body) - {"limits", "expires_at", "log_usage"}
    if unknown:
        raise InvalidRequest(f"Unknown field {', '.join(sorted(unknown))}: a key's limits, "
                             "expires_at and log_usage can change.", code="invalid_key")
    try:
        options = key_options(body, key, request.app[BUDGETS].clock.time())
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_key") from None
    await request.app[STORE].update_key(key.id, **options)
    await _reload_keys(request)
    return web.json_response((await _key(request, key.id)).public())
