"""``POST /api/system/env/repair`` (admin, as every ``/api`` route): put a subscription
service's OAuth client settings back to its defaults (see :mod:`omniroute.doctor`).

Body ``{"provider": "claude-code"}`` (a service name or its provider type). Answer
``{"success": true, "repaired": [names...], "backupPath": "..."}``: the names are
the connection settings removed (``oauth_client_id`` ...), and the backup holds their
old values, per connection. Nothing overridden: ``repaired`` is empty and
``backupPath`` null (no backup was needed). An unknown provider is a 404.
"""

from __future__ import annotations

from aiohttp import web

from omniroute.appkeys import CATALOG, GATEWAY, REGISTRY, STORE
from omniroute.bodies import read_object
from omniroute.errors import InvalidRequest, NotFound

_MAX_BODY = 4096


async def env_repair(request: web.Request) -> web.Response:
    # here, not at start: the doctor's code serves only this rare call (and the CLI)
    from omniroute.doctor import repair_oauth_settings

    body = await read_object(request, _MAX_BODY)
    provider = body.get("provider")
    if not isinstance(provider, str) or not provider:
        raise InvalidRequest("Send {\"provider\": NAME}: a subscription service "
                             "(claude, codex, ...) or its provider type.", param="provider")
    services = request.app[REGISTRY].plugins.oauth_services
    gateway = request.app[GATEWAY]
    try:
        removed, path, changed = await repair_oauth_settings(
            request.app[STORE], services, provider, gateway.config.data_dir)
    except LookupError:
        known = sorted({*services, *(s.provider_type for s in services.values())})
        raise NotFound(f"No subscription service or provider type {provider!r}; known: "
                       f"{', '.join(known) or 'none'}.", param="provider") from None
    if changed:
        catalog = request.app[CATALOG]
        for cid in changed:
            catalog.models.pop(cid, None)
        await gateway.reload()
    return web.json_response({"success": True, "repaired": removed,
                              "backupPath": None if path is None else str(path)})
