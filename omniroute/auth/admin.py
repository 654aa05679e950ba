"""Auth scheme ``admin-session``: password login for the management API.

``POST /api/auth/login`` with ``{"password": ...}`` sets an HttpOnly session
cookie; ``POST /api/auth/logout`` ends the session; ``GET /api/auth/session``
says whether the caller has one. The first password comes from
``INITIAL_PASSWORD`` or is generated and printed once at first start. Only an
scrypt hash of the password and SHA-256 hashes of session tokens are stored.

**CSRF.** The cookie is the one credential a browser sends on its own, so a
request it authorises that changes state (``POST``, ``PUT``, ``PATCH``,
``DELETE``, logout included) must also carry ``X-CSRF-Token``: a value derived
from the session token (:func:`csrf_token`), which the login answer and
``GET /api/auth/session`` give to the page and which another site's page cannot
read (the management API allows no other origin). Without it: 403
``csrf_token_invalid``. An admin API key needs no token (a browser never sends
one on its own).

**require_login.** Off, a client on this machine (a loopback peer) signs in
without the password (``POST /api/auth/login`` with ``{}``): the dashboard opens
at once. Other clients always need the password, and the management API always
needs a session or an admin key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
import sys
import time
from collections.abc import Callable

from aiohttp import web

from omniroute.appkeys import AUTH_SCHEMES, CATALOG, PRINCIPAL
from omniroute.auth.base import AuthScheme, Principal
from omniroute.bodies import read_json
from omniroute.config import Config, ConfigError
from omniroute.errors import AuthenticationFailed, GatewayError, InvalidRequest, PermissionDenied
from omniroute.hookspecs import hookimpl
from omniroute.storage.store import Store
from omniroute.web.tags import MUTATING_METHODS, tag_resource, tag_route

log = logging.getLogger(__name__)

COOKIE = "omniroute_session"
SESSION_TTL = 7 * 24 * 3600
PASSWORD_SETTING = "_admin_password"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_MAX_FAILURES, _FAILURE_WINDOW = 10, 300.0
ADMIN_SESSION = Principal("admin_session", None, frozenset({"admin"}))
#: the request header that carries a session's CSRF token
CSRF_HEADER = "X-CSRF-Token"


def csrf_token(session_token: str) -> str:
    """The CSRF token of a session: derived from its (secret, HttpOnly) token, so every
    worker computes the same one and nothing more is stored."""
    digest = hashlib.sha256(b"omniroute-csrf\0" + session_token.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def check_csrf(request: web.Request, session_token: str) -> None:
    """:raises PermissionDenied: 403, the request lacks the session's CSRF token."""
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), csrf_token(session_token).encode()):
        raise PermissionDenied(
            f"This request changes state with a session cookie, so it needs the session's "
            f"{CSRF_HEADER} header (from the login answer or GET /api/auth/session).",
            code="csrf_token_invalid")


def is_local(request: web.Request) -> bool:
    """Whether the peer is this machine (a loopback address)."""
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.b64encode
    params = f"{_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}"
    return f"scrypt${params}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt),
                                n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


async def set_password(store: Store, password: str) -> None:
    if len(password) < 8:
        raise ValueError("the admin password must have at least 8 characters")
    await store.put_settings({PASSWORD_SETTING: hash_password(password)})


async def ensure_password(store: Store, initial: str | None) -> None:
    """Set the first admin password if none exists.

    Without ``initial`` a password is generated and printed once, on the
    terminal that started the gateway; it is never logged.

    :raises ConfigError: ``initial`` is too short to be the admin password.
    """
    if PASSWORD_SETTING in await store.get_settings():
        return
    password = initial or secrets.token_urlsafe(12)
    try:
        await set_password(store, password)
    except ValueError as exc:  # only a given password can be refused
        raise ConfigError(f"INITIAL_PASSWORD: {exc}") from None
    if not initial:
        print(f"\n  omniroute admin password (shown once): {password}\n"
              "  change it with: omniroute admin password\n", file=sys.stderr, flush=True)


class AdminSessionScheme(AuthScheme):
    name = "admin-session"
    client_api = False  # a browser session never authorises /v1 calls

    def __init__(self, store: Store, config: Config) -> None:
        super().__init__(store, config)
        self._failures: dict[str, list[float]] = {}

    async def start(self) -> None:
        await ensure_password(self.store, self.config.initial_password)

    async def authenticate(self, request: web.Request) -> Principal | None:
        token = request.cookies.get(COOKIE)
        if not token:
            return None
        if not await self.store.session_valid(token):
            raise AuthenticationFailed("Your admin session has expired; log in again.",
                                       code="session_expired")
        if request.method in MUTATING_METHODS:
            check_csrf(request, token)
        return ADMIN_SESSION

    def _throttle(self, peer: str) -> None:
        now = time.monotonic()
        recent = [t for t in self._failures.get(peer, []) if now - t < _FAILURE_WINDOW]
        self._failures[peer] = recent
        if len(recent) >= _MAX_FAILURES:
            raise GatewayError("Too many failed logins; try again later.", status=429,
                               type="rate_limit_error", code="too_many_logins",
                               headers={"Retry-After": str(int(_FAILURE_WINDOW))})

    async def login(self, request: web.Request) -> web.Response:
        peer = request.remote or "?"
        self._throttle(peer)
        body = await read_json(request, 64 * 1024)
        password = body.get("password") if isinstance(body, dict) else None
        if password is None and isinstance(body, dict) and password_free(request):
            pass  # require_login is off and the caller is on this machine
        elif not isinstance(password, str) or not password:
            raise InvalidRequest("Send {\"password\": \"...\"}.", param="password")
        else:
            stored = (await self.store.get_settings()).get(PASSWORD_SETTING)
            if not stored or not verify_password(password, stored):
                self._failures.setdefault(peer, []).append(time.monotonic())
                raise AuthenticationFailed("Wrong password.", code="invalid_password")
            self._failures.pop(peer, None)
        request[PRINCIPAL] = ADMIN_SESSION  # the audit entry names who logged in
        token = await self.store.create_session(SESSION_TTL)
        resp = web.json_response({"ok": True, "expires_in": SESSION_TTL,
                                  "csrf_token": csrf_token(token)})
        resp.set_cookie(COOKIE, token, max_age=SESSION_TTL, httponly=True, samesite="Strict",
                        secure=request.secure, path="/")
        return resp

    async def session(self, request: web.Request) -> web.Response:
        """Whether the caller has a session (and its CSRF token), and how it may get one."""
        token = request.cookies.get(COOKIE)
        valid = bool(token) and await self.store.session_valid(token or "")
        settings = request.app[CATALOG].settings
        return web.json_response({
            "authenticated": valid,
            "csrf_token": csrf_token(token) if valid and token else None,
            "require_login": settings.require_login,
            "password_free": password_free(request),
        }, headers={"Cache-Control": "no-store"})

    async def logout(self, request: web.Request) -> web.Response:
        token = request.cookies.get(COOKIE)
        if token and await self.store.session_valid(token):
            check_csrf(request, token)  # another site's page must not end the session
            request[PRINCIPAL] = ADMIN_SESSION  # the audit entry names who logged out
        if token:
            await self.store.delete_session(token)
        resp = web.json_response({"ok": True})
        resp.del_cookie(COOKIE, path="/")
        return resp


def password_free(request: web.Request) -> bool:
    """Whether this caller may sign in without the password: ``require_login`` is off
    and the caller is on this machine."""
    return not request.app[CATALOG].settings.require_login and is_local(request)


@hookimpl
def register_auth_schemes(register: Callable[[type[AuthScheme]], None]) -> None:
    register(AdminSessionScheme)


@hookimpl
def configure_app(app: web.Application, config: Config) -> None:
    async def login(request: web.Request) -> web.Response:
        return await _scheme(request).login(request)

    async def logout(request: web.Request) -> web.Response:
        return await _scheme(request).logout(request)

    async def session(request: web.Request) -> web.Response:
        return await _scheme(request).session(request)

    def _scheme(request: web.Request) -> AdminSessionScheme:
        scheme = request.app[AUTH_SCHEMES].get(AdminSessionScheme.name)
        assert isinstance(scheme, AdminSessionScheme)
        return scheme

    # public, but every login (success or failure) and logout is in the audit log
    tag_route(app, app.router.add_post("/api/auth/login", login), None, "public", audit=True)
    tag_route(app, app.router.add_post("/api/auth/logout", logout), None, "public", audit=True)
    resource = app.router.add_get("/api/auth/session", session).resource
    assert resource is not None
    tag_resource(app, resource, None, "public")
