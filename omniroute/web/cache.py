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
