"""Management API (``/api/...``): providers, keys, aliases, combos, settings.

Every route here needs an admin (its guard enforces it). Each write goes
to the database and is followed by a reload, so the change is live at once in
this process and within a second in the others.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from omniroute.accounts import build_combo, build_connection
from omniroute.appkeys import (
    AUTH_SCHEMES,
    CATALOG,
    GATEWAY,
    REGISTRY,
    REQUEST_LOG,
    STORE,
)
from omniroute.auth.admin import PASSWORD_SETTING, set_password, verify_password
from omniroute.bodies import read_object
from omniroute.budgets.view import key_options
from omniroute.catalog import Catalog
from omniroute.config import ConfigError, Settings
from omniroute.errors import AuthenticationFailed, GatewayError, InvalidRequest, NotFound
from omniroute.oauth.accounts import account_state
from omniroute.providers.base import Provider
from omniroute.storage import Combo, Connection, Store

_SMALL_BODY = 1024 * 1024


async def _body(request: web.Request) -> dict[str, Any]:
    return await read_object(request, _SMALL_BODY)


def _invalid(exc: ValueError) -> InvalidRequest:
    return InvalidRequest(str(exc), code="invalid_config")


# ---------------------------------------------------------------------- providers

def _connection_view(catalog: Catalog, conn: Connection) -> dict[str, Any]:
    view = conn.public()
    view["usable"] = conn.id in catalog.providers
    view["error"] = catalog.provider_errors.get(conn.id)
    cls = catalog.registry.provider_types.get(conn.type)
    if cls is not None and cls.auth_kind == "oauth":  # a subscription: its tokens' state
        view["oauth"] = account_state(conn.credentials)
    return view


async def _connection(request: web.Request) -> Connection:
    conn = await request.app[STORE].get_connection(request.match_info["id"])
    if conn is None:
        raise NotFound(f"No provider connection {request.match_info['id']!r}.")
    return conn


async def list_providers(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    conns = await request.app[STORE].list_connections()
    types = [
        {"type": cls.type, "format": cls.format, "description": cls.description,
         "default_prefix": cls.default_prefix,
         "presets": [{"name": p.name, "base_url": p.base_url, "prefix": p.prefix,
                      "description": p.description, "needs_api_key": p.needs_api_key}
                     for p in cls.presets.values()]}
        for cls in request.app[REGISTRY].plugins.providers.values()
    ]
    return web.json_response({"providers": [_connection_view(catalog, c) for c in conns],
                              "types": types})


async def create_provider(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    try:
        conn = build_connection(request.app[REGISTRY].plugins, await _body(request))
    except ValueError as exc:
        raise _invalid(exc) from None
    await request.app[STORE].save_connection(conn)
    await request.app[GATEWAY].reload()
    return web.json_response(_connection_view(catalog, conn), status=201)


async def get_provider(request: web.Request) -> web.Response:
    return web.json_response(_connection_view(request.app[CATALOG], await _connection(request)))


async def update_provider(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    existing = await _connection(request)
    try:
        conn = build_connection(request.app[REGISTRY].plugins, await _body(request), existing)
    except ValueError as exc:
        raise _invalid(exc) from None
    await request.app[STORE].save_connection(conn)
    catalog.models.pop(conn.id, None)
    await request.app[GATEWAY].reload()
    return web.json_response(_connection_view(catalog, conn))


async def delete_provider(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    conn = await _connection(request)
    await request.app[STORE].delete_connection(conn.id)
    catalog.models.pop(conn.id, None)
    await request.app[GATEWAY].reload()
    return web.json_response({"deleted": conn.id})


def _provider_for(catalog: Catalog, conn: Connection) -> Provider:
    """The live instance of ``conn``, or a fresh one when it is inactive."""
    provider = catalog.providers.get(conn.id)
    if provider is not None:
        return provider
    try:
        return catalog.build_provider(conn)
    except ConfigError as exc:
        raise InvalidRequest(str(exc), code="provider_unavailable") from None


async def _probe(catalog: Catalog, provider: Provider) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        models = await catalog.models_of(provider, max_age=0)
        await provider.test()
    except GatewayError as exc:
        return {"ok": False, "error": exc.message, "status": exc.status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
    return {"ok": True, "models": len(models),
            "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


async def test_provider(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    conn = await _connection(request)
    result = await _probe(catalog, _provider_for(catalog, conn))
    if result["ok"]:
        catalog.rebuild_router()
    return web.json_response(result)


async def provider_models(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    conn = await _connection(request)
    try:
        models = await _provider_for(catalog, conn).list_models()
    except GatewayError as exc:
        raise GatewayError(f"Listing models failed: {exc.message}", status=502,
                           type="upstream_error", code="models_unavailable") from None
    catalog.models[conn.id] = (time.monotonic(), models)
    catalog.rebuild_router()
    return web.json_response({"id": conn.id, "prefix": conn.prefix, "models": models})


async def validate_provider(request: web.Request) -> web.Response:
    """Check a connection spec (and that it answers) without saving it."""
    catalog = request.app[CATALOG]
    try:
        conn = build_connection(request.app[REGISTRY].plugins, await _body(request))
    except ValueError as exc:
        return web.json_response({"valid": False, "ok": False, "error": str(exc)})
    provider = catalog.build_provider(conn)
    try:
        result = await _probe(catalog, provider)
    finally:
        catalog.models.pop(conn.id, None)
        await provider.close()
    return web.json_response({"valid": True, **result})


# ---------------------------------------------------------------------- keys

async def list_keys(request: web.Request) -> web.Response:
    keys = await request.app[STORE].list_keys()
    return web.json_response({"keys": [k.public() for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    body = await _body(request)
    name = body.get("name", "")
    scopes = body.get("scopes", [])
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("A key needs a 'name'.", param="name")
    if not isinstance(scopes, list) or not set(scopes) <= {"admin"}:
        raise InvalidRequest("'scopes' may only contain \"admin\".", param="scopes")
    try:  # limits, expires_at, log_usage (omniroute.budgets)
        options = key_options(body, None, time.time())
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_key") from None
    key, secret = await request.app[STORE].create_key(name.strip(), set(scopes), **options)
    await _keys_changed(request)
    return web.json_response({**key.public(), "key": secret,
                              "note": "Store this key now: it is not shown again."}, status=201)


async def _keys_changed(request: web.Request) -> None:
    """A key was created or revoked: the auth schemes see it at once."""
    for scheme in request.app[AUTH_SCHEMES].values():
        await scheme.reload()


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]
    if not await request.app[STORE].revoke_key(key_id):
        raise NotFound(f"No active key {key_id!r}.")
    await _keys_changed(request)
    return web.json_response({"revoked": key_id})


# ---------------------------------------------------------------------- aliases

async def list_aliases(request: web.Request) -> web.Response:
    return web.json_response({"aliases": await request.app[STORE].list_aliases()})


async def set_alias(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    body = await _body(request)
    alias, target = body.get("alias"), body.get("target", body.get("model"))
    if not isinstance(alias, str) or not alias.strip():
        raise InvalidRequest("Send {\"alias\": ..., \"target\": \"prefix/model\"}.", param="alias")
    if target is not None and (not isinstance(target, str) or not target.strip()):
        raise InvalidRequest("'target' must be a model name (or null to delete).",
                             param="target")
    if target == alias:
        raise InvalidRequest("An alias cannot point at itself.", param="target")
    await request.app[STORE].set_alias(alias.strip(), target.strip() if target else None)
    await request.app[GATEWAY].reload()
    return web.json_response({"aliases": catalog.aliases}, status=200)


async def delete_alias(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    alias = request.match_info["alias"]
    if alias not in catalog.aliases:
        raise NotFound(f"No alias {alias!r}.")
    await request.app[STORE].set_alias(alias, None)
    await request.app[GATEWAY].reload()
    return web.json_response({"deleted": alias})


# ---------------------------------------------------------------------- combos

async def list_combos(request: web.Request) -> web.Response:
    combos = await request.app[STORE].list_combos()
    return web.json_response({"combos": [c.public() for c in combos]})


def _combo_checks(catalog: Catalog) -> dict[str, Any]:
    """What a combo is checked against: the stored connections and the live router."""
    return {"connections": list(catalog.connections.values()),
            "resolve": lambda model: catalog.router.resolve(model).targets}


async def create_combo(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    try:
        combo = build_combo(await _body(request), await request.app[STORE].list_combos(),
                            **_combo_checks(catalog))
    except ValueError as exc:
        raise _invalid(exc) from None
    await _save_combo(request.app[STORE], combo)
    await request.app[GATEWAY].reload()
    return web.json_response(combo.public(), status=201)


async def _save_combo(store: Store, combo: Combo) -> None:
    try:
        await store.save_combo(combo)
    except store.db.integrity:  # another request took the name since we checked
        raise InvalidRequest(f"A combo named {combo.name!r} already exists.",
                             param="name", code="duplicate_name") from None


async def _combo(request: web.Request):  # type: ignore[no-untyped-def]
    combo = await request.app[STORE].get_combo(request.match_info["id"])
    if combo is None:
        raise NotFound(f"No combo {request.match_info['id']!r}.")
    return combo


async def get_combo(request: web.Request) -> web.Response:
    return web.json_response((await _combo(request)).public())


async def update_combo(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    existing = await _combo(request)
    try:
        combo = build_combo(await _body(request), await request.app[STORE].list_combos(), existing,
                            **_combo_checks(catalog))
    except ValueError as exc:
        raise _invalid(exc) from None
    await _save_combo(request.app[STORE], combo)
    await request.app[GATEWAY].reload()
    return web.json_response(combo.public())


async def delete_combo(request: web.Request) -> web.Response:
    combo = await _combo(request)
    await request.app[STORE].delete_combo(combo.id)
    await request.app[GATEWAY].reload()
    return web.json_response({"deleted": combo.id})


# ---------------------------------------------------------------------- settings

async def _settings_view(request: web.Request) -> dict[str, Any]:
    catalog = request.app[CATALOG]
    stored = {k: v for k, v in (await request.app[STORE].get_settings()).items()
              if not k.startswith("_")}
    return {"settings": catalog.settings.as_dict(), "stored": stored,
            "pinned_by_environment": sorted(catalog.config.settings_env)}


def _validated(body: dict[str, Any]) -> dict[str, Any]:
    try:
        return {k: Settings.coerce(k, v) for k, v in body.items()}
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_setting") from None


async def get_settings(request: web.Request) -> web.Response:
    return web.json_response(await _settings_view(request))


async def put_settings(request: web.Request) -> web.Response:
    values = _validated(await _body(request))
    await request.app[STORE].put_settings(values, replace=request.method == "PUT")
    await request.app[GATEWAY].reload()
    return web.json_response(await _settings_view(request))


async def get_require_login(request: web.Request) -> web.Response:
    return web.json_response({"require_login": request.app[CATALOG].settings.require_login})


async def put_require_login(request: web.Request) -> web.Response:
    catalog = request.app[CATALOG]
    body = await _body(request)
    values = _validated({"require_login": body.get("require_login", body.get("requireLogin"))})
    await request.app[STORE].put_settings(values)
    await request.app[GATEWAY].reload()
    return web.json_response({"require_login": catalog.settings.require_login})


async def change_password(request: web.Request) -> web.Response:
    body = await _body(request)
    current, new = body.get("current_password"), body.get("new_password")
    if not isinstance(current, str) or not isinstance(new, str):
        raise InvalidRequest("Send current_password and new_password.")
    stored = (await request.app[STORE].get_settings()).get(PASSWORD_SETTING, "")
    if not verify_password(current, stored):
        raise AuthenticationFailed("The current password is wrong.", code="invalid_password")
    try:
        await set_password(request.app[STORE], new)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="new_password") from None
    return web.json_response({"ok": True})


async def recent_requests(request: web.Request) -> web.Response:
    try:
        limit = min(max(int(request.query.get("limit", "100")), 1), 1000)
    except ValueError:
        raise InvalidRequest("limit must be an integer", param="limit") from None
    await request.app[REQUEST_LOG].flush()
    return web.json_response({"requests": await request.app[REQUEST_LOG].recent(limit)})

