"""Management API for subscription sign-ins (admin only, like every ``/api`` route).

* ``GET /api/oauth/services`` — the services a sign-in can use (registered by plugins).
* ``POST /api/oauth/{service}/start`` — ``{"name"?, "settings"?}``: begins a sign-in;
  answers the URL to open and the ``state`` (code flows), or the ``user_code`` and
  ``verification_uri`` (device flow).
* ``POST /api/oauth/{service}/complete`` — ``{"code", "state"?}``: the code the page
  showed (``CODE#STATE`` names its sign-in itself), or the address a loopback redirect
  was sent to; stores the account (201 new, 200 signed in again).
* ``POST /api/oauth/{service}/poll`` — ``{"state"}``: one step of a device (or loopback)
  sign-in: ``{"status": "pending", ...}`` or, once done, the stored account.

Sign-ins under way live in this process's memory (:class:`~omniroute.oauth.SignIns`,
app key ``OAUTH_SIGN_INS``): each for its TTL, at most ``MAX_PENDING`` at once. The
``complete`` body (the code) is kept out of the audit log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from omniroute.accounts import build_connection
from omniroute.appkeys import CATALOG, GATEWAY, HTTP, OAUTH_SIGN_INS, REGISTRY, STORE
from omniroute.bodies import read_object
from omniroute.errors import InvalidRequest
from omniroute.oauth import (
    OAuthService,
    SignIn,
    SignIns,
    TokenClient,
    TokenSet,
    find_service,
    parse_pasted,
    save_account,
)
from omniroute.web.tags import tag_route

#: sign-ins under way at once, and the seconds each may take
MAX_PENDING, SIGN_IN_TTL = 16, 600.0
_BODY_MAX = 64 * 1024


def _service(request: web.Request) -> OAuthService:
    return find_service(request.app[REGISTRY].plugins.oauth_services,
                        request.match_info["service"])


def _text(body: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"'{name}' must be a non-empty string", param=name)
    return value.strip()


async def list_services(request: web.Request) -> web.Response:
    services = request.app[REGISTRY].plugins.oauth_services
    return web.json_response({"services": [
        {"name": s.name, "title": s.title or s.name, "flow": s.flow,
         "provider_type": s.provider_type, "import_source": s.import_source}
        for s in sorted(services.values(), key=lambda s: s.name)]})


async def start(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_object(request, _BODY_MAX) if request.can_read_body else {}
    unknown = set(body) - {"name", "settings"}
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    name = _text(body, "name")
    settings = body.get("settings") or {}
    if not isinstance(settings, dict):
        raise InvalidRequest("'settings' must be an object", param="settings")
    try:  # unusable settings are refused now, not after the user signed in
        service.check_settings(settings)
        build_connection(request.app[REGISTRY].plugins, {
            "type": service.provider_type, "name": name or service.name,
            "credentials": {"access_token": "check"}, "settings": settings})
    except ValueError as exc:
        raise InvalidRequest(str(exc), code="invalid_config") from None
    client = TokenClient(request.app[HTTP], headers=service.headers)
    signin = SignIn(service, client, settings, name=name, ttl=SIGN_IN_TTL)
    try:
        view = await signin.start()
        await request.app[OAUTH_SIGN_INS].add(signin)
    except BaseException:
        await signin.close()
        raise
    return web.json_response(view)


async def _stored(request: web.Request, signin: SignIn, tokens: TokenSet) -> web.Response:
    """Store the signed-in account, forget the sign-in, answer the connection."""
    from omniroute.web.management import _connection_view  # loaded on first use (routes)

    app = request.app
    account = await signin.account(tokens)
    conn, created = await save_account(app[REGISTRY].plugins, app[STORE], signin.service,
                                       account, name=signin.name, settings=signin.settings)
    await app[OAUTH_SIGN_INS].finish(signin)
    await app[GATEWAY].reload()
    return web.json_response({"status": "complete", "created": created,
                              "connection": _connection_view(app[CATALOG], conn)},
                             status=201 if created else 200)


async def complete(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_object(request, _BODY_MAX)
    code = _text(body, "code", required=True)
    assert code is not None
    state = _text(body, "state") or parse_pasted(code)[1]
    sign_ins = request.app[OAUTH_SIGN_INS]
    signin = sign_ins.get(service.name, state) if state else sign_ins.only(service.name)
    async with signin.lock:  # a second paste waits, then finds the sign-in finished
        sign_ins.get(service.name, signin.state)
        tokens = await signin.complete(code)
        return await _stored(request, signin, tokens)


async def poll(request: web.Request) -> web.Response:
    service = _service(request)
    body = await read_object(request, _BODY_MAX)
    state = _text(body, "state", required=True)
    assert state is not None
    sign_ins = request.app[OAUTH_SIGN_INS]
    signin = sign_ins.get(service.name, state)
    async with signin.lock:
        sign_ins.get(service.name, state)
        tokens = await signin.poll()
        if tokens is None:
            device = signin.device
            return web.json_response({
                "status": "pending", "state": state,
                "interval": device.interval if device is not None else 1.0,
                "retry_in": round(device.wait_time(), 3) if device is not None else 1.0,
                "expires_in": round(max(0.0, signin.expires - signin.clock()))})
        return await _stored(request, signin, tokens)


def setup_oauth_routes(app: web.Application) -> None:
    """The routes, and the sign-ins they share (closed when the app stops)."""
    app[OAUTH_SIGN_INS] = SignIns(max_pending=MAX_PENDING)

    async def sign_ins_ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        await app[OAUTH_SIGN_INS].close()

    app.cleanup_ctx.append(sign_ins_ctx)
    r = app.router
    for route in (r.add_get("/api/oauth/services", list_services),
                  r.add_post("/api/oauth/{service}/start", start),
                  r.add_post("/api/oauth/{service}/complete", complete),
                  r.add_post("/api/oauth/{service}/poll", poll)):
        tag_route(app, route, None, "admin")
