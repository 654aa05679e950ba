"""Management API of the response cache (admin only, like every ``/api`` route).

* ``GET /api/cache/stats``: the seed's shape, ``{"semanticCache": {"memorySize",
  "memoryMaxSize", "dbSize", "hitRate"}, "idempotency": {"activeKeys", "windowMs"}}``,
  plus ``exact`` (hits, misses, bypasses, stores), ``backends`` and ``layers`` (each
  one's own numbers);
* ``DELETE /api/cache/stats``: clear every cache (backends and layers);
* ``GET /api/cache/entries?limit=``: entries, most recently used first: key hash,
  model, created, hits, bytes, seconds left, the backends holding it;
* ``DELETE /api/cache/entries/{key}``: delete one entry (404 when no backend had it).
"""

from __future__ import annotations

from aiohttp import web

from omniroute.appkeys import CACHE
from omniroute.errors import GatewayError, InvalidRequest, NotFound
from omniroute.web.tags import tag_route

#: entries listed when no ``limit`` is given, and at most
_LIST_DEFAULT, _LIST_MAX = 100, 1000


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CACHE].stats())


async def clear(request: web.Request) -> web.Response:
    failed = await request.app[CACHE].clear()
    if failed:  # what could be cleared was; say what could not
        raise GatewayError("Some caches could not be cleared (the others were): " + "; ".join(
            f"{name}: {why}" for name, why in failed.items()), code="cache_clear_failed")
    return web.json_response({"cleared": True})


async def get_entries(request: web.Request) -> web.Response:
    raw = request.query.get("limit", str(_LIST_DEFAULT))
    if not raw.isdigit() or not 1 <= int(raw) <= _LIST_MAX:
        raise InvalidRequest(f"limit must be a whole number from 1 to {_LIST_MAX}.",
                             param="limit")
    entries = await request.app[CACHE].entries(int(raw))
    return web.json_response({"entries": entries, "count": len(entries)})


async def delete_entry(request: web.Request) -> web.Response:
    key = request.match_info["key"]
    if not await request.app[CACHE].delete(key):
        raise NotFound(f"No cache entry {key!r}.")
    return web.json_response({"deleted": key})


def setup_cache_routes(app: web.Application) -> None:
    """The response cache's routes: every one needs an admin."""
    before = set(app.router.routes())
    r = app.router
    r.add_get("/api/cache/stats", get_stats)
    r.add_delete("/api/cache/stats", clear)
    r.add_get("/api/cache/entries", get_entries)
    r.add_delete("/api/cache/entries/{key}", delete_entry)
    for route in app.router.routes():
        if route not in before:
            tag_route(app, route, None, "admin")
