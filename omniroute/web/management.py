"""Management API (``/api/...``): providers, keys, aliases, combos, settings.

Every route here needs an admin (the middleware enforces it). Each write goes
to the database and is followed by a reload, so the change is live at once in
this process and within a second in the others.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from aiohttp import web

from omniroute.accounts import build_combo, build_connection
from omniroute.appkeys import GATEWAY
from omniroute.auth.admin import PASSWORD_SETTING, set_password, verify_password
from omniroute.bodies import read_object
from omniroute.config import ConfigError, Settings
from omniroute.errors import AuthenticationFailed, GatewayError, InvalidRequest, NotFound
from omniroute.gateway import Gateway
from omniroute.providers.base import Provider
from omniroute.storage import Connection

_SMALL_BODY = 1024 * 1024


def _gw(request: web.Request) -> Gateway:
    return request.app[GATEWAY]


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_object(request, _SMALL_BODY)


def _invalid(exc: ValueError) -> InvalidRequest:
    return InvalidRequest(str(exc), code="invalid_config")


# ---------------------------------------------------------------------- providers

def _connection_view(gateway: Gateway, conn: Connection) -> dict[str, Any]:
    view = conn.public()
    view["usable"] = conn.id in gateway.providers
    view["error"] = gateway.provider_errors.get(conn.id)
    return view


async def _connection(request: web.Request) -> Connection:
    conn = await _gw(request).store.get_connection(request.match_info["id"])
    if conn is None:
        raise NotFound(f"No provider connection {request.match_info['id']!r}.")
    return conn


async def list_providers(request: web.Request) -> web.Response:
    gateway = _gw(request)
    conns = await gateway.store.list_connections()
    types = [
        {"type": cls.type, "format": cls.format, "description": cls.description,
         "default_prefix": cls.default_prefix,
         "presets": [{"name": p.name, "base_url": p.base_url, "prefix": p.prefix,
                      "description": p.description, "needs_api_key": p.needs_api_key}
                     for p in cls.presets.values()]}
        for cls in gateway.plugins.providers.values()
    ]
    return web.json_response({"providers": [_connection_view(gateway, c) for c in conns],
                              "types": types})


async def create_provider(request: web.Request) -> web.Response:
    gateway = _gw(request)
    try:
        conn = build_connection(gateway.plugins, await _body(request))
    except ValueError as exc:
        raise _invalid(exc) from None
    await gateway.store.save_connection(conn)
    await gateway.reload()
    return web.json_response(_connection_view(gateway, conn), status=201)


async def get_provider(request: web.Request) -> web.Response:
    return web.json_response(_connection_view(_gw(request), await _connection(request)))


async def update_provider(request: web.Request) -> web.Response:
    gateway = _gw(request)
    existing = await _connection(request)
    try:
        conn = build_connection(gateway.plugins, await _body(request), existing)
    except ValueError as exc:
        raise _invalid(exc) from None
    await gateway.store.save_connection(conn)
    gateway.models.pop(conn.id, None)
    await gateway.reload()
    return web.json_response(_connection_view(gateway, conn))


async def delete_provider(request: web.Request) -> web.Response:
    gateway = _gw(request)
    conn = await _connection(request)
    await gateway.store.delete_connection(conn.id)
    gateway.models.pop(conn.id, None)
    await gateway.reload()
    return web.json_response({"deleted": conn.id})


def _provider_for(gateway: Gateway, conn: Connection) -> Provider:
    """The live instance of ``conn``, or a fresh one when it is inactive."""
    provider = gateway.providers.get(conn.id)
    if provider is not None:
        return provider
    try:
        return gateway.build_provider(conn)
    except ConfigError as exc:
        raise InvalidRequest(str(exc), code="provider_unavailable") from None


async def _probe(gateway: Gateway, provider: Provider) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        models = await gateway.models_of(provider, max_age=0)
        await provider.test()
    except GatewayError as exc:
        return {"ok": False, "error": exc.message, "status": exc.status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"ok": True, "models": len(models),
            "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


async def test_provider(request: web.Request) -> web.Response:
    gateway = _gw(request)
    conn = await _connection(request)
    result = await _probe(gateway, _provider_for(gateway, conn))
    if result["ok"]:
        gateway.rebuild_router()
    return web.json_response(result)


async def provider_models(request: web.Request) -> web.Response:
    gateway = _gw(request)
    conn = await _connection(request)
    try:
        models = await _provider_for(gateway, conn).list_models()
    except GatewayError as exc:
        raise GatewayError(f"Listing models failed: {exc.message}", status=502,
                           type="upstream_error", code="models_unavailable") from None
    gateway.models[conn.id] = (time.monotonic(), models)
    gateway.rebuild_router()
    return web.json_response({"id": conn.id, "prefix": conn.prefix, "models": models})


async def validate_provider(request: web.Request) -> web.Response:
    """Check a connection spec (and that it answers) without saving it."""
    gateway = _gw(request)
    try:
        conn = build_connection(gateway.plugins, await _body(request))
    except ValueError as exc:
        return web.json_response({"valid": False, "ok": False, "error": str(exc)})
    provider = gateway.build_provider(conn)
    try:
        result = await _probe(gateway, provider)
    finally:
        gateway.models.pop(conn.id, None)
        await provider.close()
    return web.json_response({"valid": True, **result})


# ---------------------------------------------------------------------- keys

async def list_keys(request: web.Request) -> web.Response:
    keys = await _gw(request).store.list_keys()
    return web.json_response({"keys": [k.public() for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    gateway = _gw(request)
    body = await _body(request)
    name = body.get("name", "")
    scopes = body.get("scopes", [])
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("A key needs a 'name'.", param="name")
    if not isinstance(scopes, list) or not set(scopes) <= {"admin"}:
        raise InvalidRequest("'scopes' may only contain \"admin\".", param="scopes")
    key, secret = await gateway.store.create_key(name.strip(), set(scopes))
    gateway.keys.add(key)
    return web.json_response({**key.public(), "key": secret,
                              "note": "Store this key now: it is not shown again."}, status=201)


async def revoke_key(request: web.Request) -> web.Response:
    gateway = _gw(request)
    key_id = request.match_info["id"]
    if not await gateway.store.revoke_key(key_id):
        raise NotFound(f"No active key {key_id!r}.")
    gateway.keys.revoke(key_id)
    return web.json_response({"revoked": key_id})


# ---------------------------------------------------------------------- aliases

async def list_aliases(request: web.Request) -> web.Response:
    return web.json_response({"aliases": await _gw(request).store.list_aliases()})


async def set_alias(request: web.Request) -> web.Response:
    gateway = _gw(request)
    body = await _body(request)
    alias, target = body.get("alias"), body.get("target", body.get("model"))
    if not isinstance(alias, str) or not alias.strip():
        raise InvalidRequest("Send {\"alias\": ..., \"target\": \"prefix/model\"}.", param="alias")
    if target is not None and (not isinstance(target, str) or not target.strip()):
        raise InvalidRequest("'target' must be a model name (or null to delete).",
                             param="target")
    if target == alias:
        raise InvalidRequest("An alias cannot point at itself.", param="target")
    await gateway.store.set_alias(alias.strip(), target.strip() if target else None)
    await gateway.reload()
    return web.json_response({"aliases": gateway.aliases}, status=200)


async def delete_alias(request: web.Request) -> web.Response:
    gateway = _gw(request)
    alias = request.match_info["alias"]
    if alias not in gateway.aliases:
        raise NotFound(f"No alias {alias!r}.")
    await gateway.store.set_alias(alias, None)
    await gateway.reload()
    return web.json_response({"deleted": alias})


# ---------------------------------------------------------------------- combos

async def list_combos(request: web.Request) -> web.Response:
    combos = await _gw(request).store.list_combos()
    return web.json_response({"combos": [c.public() for c in combos]})


def _combo_checks(gateway: Gateway) -> dict[str, Any]:
    """What a combo is checked against: the stored connections and the live router."""
    return {"connections": list(gateway.connections.values()),
            "resolve": lambda model: gateway.router.resolve(model).targets}


async def create_combo(request: web.Request) -> web.Response:
    gateway = _gw(request)
    try:
        combo = build_combo(await _body(request), await gateway.store.list_combos(),
                            **_combo_checks(gateway))
    except ValueError as exc:
        raise _invalid(exc) from None
    await _save_combo(gateway, combo)
    await gateway.reload()
    return web.json_response(combo.public(), status=201)


async def _save_combo(gateway: Any, combo: Any) -> None:
    try:
        await gateway.store.save_combo(combo)
    except sqlite3.IntegrityError:  # another request took the name since we checked
        raise InvalidRequest(f"A combo named {combo.name!r} already exists.",
                             param="name", code="duplicate_name") from None


async def _combo(request: web.Request):  # type: ignore[no-untyped-def]
    combo = await _gw(request).store.get_combo(request.match_info["id"])
    if combo is None:
        raise NotFound(f"No combo {request.match_info['id']!r}.")
    return combo


async def get_combo(request: web.Request) -> web.Response:
    return web.json_response((await _combo(request)).public())


async def update_combo(request: web.Request) -> web.Response:
    gateway = _gw(request)
    existing = await _combo(request)
    try:
        combo = build_combo(await _body(request), await gateway.store.list_combos(), existing,
                            **_combo_checks(gateway))
    except ValueError as exc:
        raise _invalid(exc) from None
    await _save_combo(gateway, combo)
    await gateway.reload()
    return web.json_response(combo.public())


async def delete_combo(request: web.Request) -> web.Response:
    gateway = _gw(request)
    combo = await _combo(request)
    await gateway.store.delete_combo(combo.id)
    await gateway.reload()
    return web.json_response({"deleted": combo.id})


# ---------------------------------------------------------------------- settings

async def _settings_view(gateway: Gateway) -> dict[str, Any]:
    stored = {k: v for k, v in (await gateway.store.get_settings()).items()
              if not k.startswith("_")}
    return {"settings": gateway.settings.as_dict(), "stored": stored,
            "pinned_by_environment": sorted(gateway.config.settings_env)}


def _validated(body: dict[str, Any]) -> dict[str, Any]:
    try:
        return {k: Settings.coerce(k, v) for k, v in body.items()}
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_setting") from None


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(await _settings_view(_gw(request)))


async def put_settings(request: web.Request) -> web.Response:
    gateway = _gw(request)
    values = _validated(await _body(request))
    await gateway.store.put_settings(values, replace=request.method == "PUT")
    await gateway.reload()
    return web.json_response(await _settings_view(gateway))


async def get_require_login(request: web.Request) -> web.Response:
    return web.json_response({"require_login": _gw(request).settings.require_login})


async def put_require_login(request: web.Request) -> web.Response:
    gateway = _gw(request)
    body = await _body(request)
    values = _validated({"require_login": body.get("require_login", body.get("requireLogin"))})
    await gateway.store.put_settings(values)
    await gateway.reload()
    return web.json_response({"require_login": gateway.settings.require_login})


async def change_password(request: web.Request) -> web.Response:
    gateway = _gw(request)
    body = await _body(request)
    current, new = body.get("current_password"), body.get("new_password")
    if not isinstance(current, str) or not isinstance(new, str):
        raise InvalidRequest("Send current_password and new_password.")
    stored = (await gateway.store.get_settings()).get(PASSWORD_SETTING, "")
    if not verify_password(current, stored):
        raise AuthenticationFailed("The current password is wrong.", code="invalid_password")
    try:
        await set_password(gateway.store, new)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="new_password") from None
    return web.json_response({"ok": True})


async def recent_requests(request: web.Request) -> web.Response:
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
    except ValueError:
        raise InvalidRequest("limit must be an integer", param="limit") from None
    gateway = _gw(request)
    await gateway.log.flush()
    return web.json_response({"requests": await gateway.log.recent(limit)})


def setup_management_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/providers", list_providers)
    r.add_post("/api/providers", create_provider)
    r.add_post("/api/providers/validate", validate_provider)
    r.add_get("/api/providers/{id}", get_provider)
    r.add_put("/api/providers/{id}", update_provider)
    r.add_delete("/api/providers/{id}", delete_provider)
    r.add_post("/api/providers/{id}/test", test_provider)
    r.add_get("/api/providers/{id}/models", provider_models)
    r.add_get("/api/keys", list_keys)
    r.add_post("/api/keys", create_key)
    r.add_delete("/api/keys/{id}", revoke_key)
    r.add_post("/api/keys/{id}/revoke", revoke_key)
    r.add_get("/api/models/alias", list_aliases)
    r.add_post("/api/models/alias", set_alias)
    r.add_delete("/api/models/alias/{alias}", delete_alias)
    r.add_get("/api/combos", list_combos)
    r.add_post("/api/combos", create_combo)
    r.add_get("/api/combos/{id}", get_combo)
    r.add_put("/api/combos/{id}", update_combo)
    r.add_delete("/api/combos/{id}", delete_combo)
    r.add_get("/api/settings", get_settings)
    r.add_put("/api/settings", put_settings)
    r.add_patch("/api/settings", put_settings)
    r.add_get("/api/settings/require-login", get_require_login)
    r.add_put("/api/settings/require-login", put_require_login)
    r.add_put("/api/auth/password", change_password)
    r.add_get("/api/requests", recent_requests)
