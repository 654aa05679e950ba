"""A fake OAuth 2.0 authorization server, for every subscription service's tests.

One in-process aiohttp app with the three endpoints a sign-in touches, each path
configurable so a fake can sit where a service's own would (through the
connection's ``oauth_*`` URL overrides):

- ``GET authorize_path`` checks ``client_id``, ``response_type=code``, the
  ``redirect_uri``, the PKCE challenge (``S256``) and the extra parameters the
  service requires, issues a code bound to them, and answers like the service's
  page: with ``mode="paste"`` a text page showing ``CODE#STATE`` (Claude's
  callback page), with ``mode="redirect"`` a 302 to ``redirect_uri?code=&state=``
  (a loopback flow).
- ``POST token_path`` serves the ``authorization_code`` grant (code, client id,
  redirect URI, PKCE verifier, and the ``state`` when ``state_in_token``), the
  ``refresh_token`` grant (a revoked, spent or unknown refresh token answers
  ``invalid_grant``; ``rotate`` issues a new refresh token each time and spends the
  old one) and the device grant (RFC 8628: ``authorization_pending`` until
  :meth:`FakeOAuthServer.approve`, ``slow_down`` when polled faster than the
  interval, ``access_denied`` after :meth:`deny`, ``expired_token``).
- ``POST device_path`` issues a device code and a user code (with the PKCE
  challenge when ``pkce``).

Bodies must come in ``encoding`` (``json`` or ``form``): a body in the other one is
refused, as a real service would (``any`` takes both, as ChatGPT's token endpoint
does). Errors are RFC 6749 ``{"error",
"error_description"}`` with status 400 (401 for a bad client). ``requests`` records
each call; ``refresh_calls`` counts refresh grants; ``refresh_gate`` (an Event)
holds refreshes until set; ``fail_next`` answers the next token calls with a 503.
Access tokens live ``access_lifetime`` seconds; :meth:`is_valid` is what a fake
upstream asks. :meth:`issue` mints a token pair without a sign-in (imports).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from fakes.base import Recorded, json_response


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class _Grant:
    """An issued authorization code, device code, and what it was bound to."""

    redirect_uri: str | None
    state: str | None
    challenge: str | None
    scope: str
    approved: bool = False
    denied: bool = False
    last_poll: float = 0.0
    expires: float = 0.0
    used: bool = False


@dataclass
class Pair:
    access: str
    refresh: str | None
    expires_at: float
    extra: dict[str, Any] = field(default_factory=dict)


class FakeOAuthServer:
    """See the module docstring."""

    def __init__(
        self,
        *,
        client_id: str,
        redirect_uri: str = "",
        encoding: Literal["json", "form", "any"] = "json",
        mode: Literal["paste", "redirect"] = "paste",
        authorize_path: str = "/oauth/authorize",
        token_path: str = "/oauth/token",
        device_path: str = "/oauth/device/code",
        required_params: Mapping[str, str] | None = None,
        state_in_token: bool = False,
        pkce: bool = True,
        rotate: bool = True,
        access_lifetime: float = 3600.0,
        refresh_lifetime: float | None = None,
        device_interval: float = 0.05,
        device_lifetime: float = 60.0,
        token_extra: Mapping[str, Any] | None = None,
        prefix: str = "fake",
    ) -> None:
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.encoding = encoding
        self.mode = mode
        self.required_params = dict(required_params or {})
        self.state_in_token = state_in_token
        self.pkce = pkce
        self.rotate = rotate
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        self.device_interval = device_interval
        self.device_lifetime = device_lifetime
        self.token_extra = dict(token_extra or {})
        self.prefix = prefix
        self.requests: list[Recorded] = []
        self.refresh_calls = 0
        self.refresh_gate: asyncio.Event | None = None
        self.fail_next = 0
        self.codes: dict[str, _Grant] = {}
        self.devices: dict[str, _Grant] = {}
        self.user_codes: dict[str, str] = {}
        self.access: dict[str, float] = {}  # access token -> expiry (epoch seconds)
        self.refresh: dict[str, Pair] = {}  # live refresh tokens
        self.spent: set[str] = set()  # refresh tokens rotated away
        self.revoked: set[str] = set()
        self.base_url = ""
        self.app = web.Application()
        self.app.router.add_get(authorize_path, self._authorize)
        self.app.router.add_post(token_path, self._token)
        self.app.router.add_post(device_path, self._device)

    # ------------------------------------------------------------------ test controls

    def _token_value(self, kind: str) -> str:
        return f"{self.prefix}-{kind}-{secrets.token_urlsafe(24)}"

    def issue(self, *, lifetime: float | None = None, refresh: bool = True,
              extra: Mapping[str, Any] | None = None) -> Pair:
        """A fresh token pair, as if a sign-in had just happened."""
        expires = time.time() + (self.access_lifetime if lifetime is None else lifetime)
        access = self._token_value("access")
        self.access[access] = expires
        pair = Pair(access, self._token_value("refresh") if refresh else None, expires,
                    dict(extra or {}))
        if pair.refresh is not None:
            self.refresh[pair.refresh] = pair
        return pair

    def is_valid(self, access_token: str) -> bool:
        """Whether an upstream should take ``access_token`` now."""
        expires = self.access.get(access_token)
        return expires is not None and expires > time.time()

    def expire(self, access_token: str) -> None:
        self.access[access_token] = 0.0

    def revoke(self, refresh_token: str | None = None) -> None:
        """Revoke one refresh token (default: every live one)."""
        for token in [refresh_token] if refresh_token else list(self.refresh):
            self.refresh.pop(token, None)
            self.revoked.add(token)

    def approve(self, user_code: str) -> None:
        self.devices[self.user_codes[user_code]].approved = True

    def deny(self, user_code: str) -> None:
        self.devices[self.user_codes[user_code]].denied = True

    def expire_device(self, user_code: str) -> None:
        self.devices[self.user_codes[user_code]].expires = 0.0

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _error(error: str, description: str, status: int = 400) -> web.Response:
        return json_response(status, {"error": error, "error_description": description})

    async def _record(self, request: web.Request) -> tuple[Recorded, dict[str, Any] | None]:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "")
        parsed: Any = None
        if ctype.startswith("application/json"):
            try:
                parsed = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                parsed = None
        elif ctype.startswith("application/x-www-form-urlencoded"):
            parsed = dict(parse_qsl(raw.decode()))
        rec = Recorded(request.method, request.path,
                       {k.lower(): v for k, v in request.headers.items()}, parsed, raw,
                       dict(request.query))
        self.requests.append(rec)
        wanted = {"json": ("application/json",),
                  "form": ("application/x-www-form-urlencoded",),
                  "any": ("application/json", "application/x-www-form-urlencoded")}[self.encoding]
        if not ctype.startswith(wanted) or not isinstance(parsed, dict):
            return rec, None
        return rec, {k: str(v) for k, v in parsed.items()}

    def _tokens(self, scope: str, *, refresh: bool = True) -> dict[str, Any]:
        pair = self.issue(refresh=refresh)
        answer: dict[str, Any] = {"access_token": pair.access, "token_type": "Bearer",
                                  "expires_in": int(self.access_lifetime), "scope": scope,
                                  **self.token_extra}
        if pair.refresh is not None:
            answer["refresh_token"] = pair.refresh
        if self.refresh_lifetime is not None:
            answer["refresh_token_expires_in"] = int(self.refresh_lifetime)
        return answer

    # ------------------------------------------------------------------ endpoints

    async def _authorize(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        q = request.query
        if q.get("client_id") != self.client_id:
            return web.Response(status=400, text="unknown client_id")
        if q.get("response_type") != "code":
            return web.Response(status=400, text="response_type must be code")
        if self.redirect_uri and q.get("redirect_uri") != self.redirect_uri:
            return web.Response(status=400, text="redirect_uri is not registered")
        for name, value in self.required_params.items():
            if q.get(name) != value:
                return web.Response(status=400, text=f"{name} must be {value}")
        challenge = q.get("code_challenge")
        if self.pkce and (not challenge or q.get("code_challenge_method") != "S256"):
            return web.Response(status=400, text="PKCE S256 is required")
        state = q.get("state")
        code = secrets.token_urlsafe(16)
        self.codes[code] = _Grant(q.get("redirect_uri"), state, challenge, q.get("scope", ""))
        if self.mode == "redirect":
            sep = "&" if "?" in str(q.get("redirect_uri")) else "?"
            raise web.HTTPFound(f"{q.get('redirect_uri')}{sep}code={code}&state={state}")
        return web.Response(text=f"{code}#{state}")

    async def _token(self, request: web.Request) -> web.StreamResponse:
        _, body = await self._record(request)
        if self.fail_next:
            self.fail_next -= 1
            return self._error("server_error", "try again later", 503)
        if body is None:
            return self._error("invalid_request", f"the body must be {self.encoding}")
        grant = body.get("grant_type")
        if body.get("client_id") != self.client_id:
            return self._error("invalid_client", "unknown client", 401)
        if grant == "authorization_code":
            return self._code_grant(body)
        if grant == "refresh_token":
            self.refresh_calls += 1
            if self.refresh_gate is not None:
                await self.refresh_gate.wait()
            return self._refresh_grant(body)
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_grant(body)
        return self._error("unsupported_grant_type", f"grant_type {grant!r}")

    def _code_grant(self, body: dict[str, str]) -> web.Response:
        found = self.codes.get(body.get("code", ""))
        if found is None or found.used:
            return self._error("invalid_grant", "Invalid 'code' in request.")
        if found.redirect_uri != body.get("redirect_uri"):
            return self._error("invalid_grant", "Invalid 'redirect_uri' in request.")
        if self.state_in_token and body.get("state") != found.state:
            return self._error("invalid_grant", "Invalid 'state' in request.")
        if self.pkce and _challenge(body.get("code_verifier", "")) != found.challenge:
            return self._error("invalid_grant", "Invalid 'code_verifier' in request.")
        found.used = True
        return json_response(200, self._tokens(found.scope))

    def _refresh_grant(self, body: dict[str, str]) -> web.Response:
        if "scope" in body:
            return self._error("invalid_scope", "The requested scope is invalid.")
        token = body.get("refresh_token", "")
        if token in self.revoked:
            return self._error("invalid_grant", "Refresh token revoked")
        pair = self.refresh.get(token)
        if pair is None:
            return self._error("invalid_grant", "Refresh token not found or invalid")
        answer = self._tokens("", refresh=self.rotate)
        if self.rotate:
            del self.refresh[token]
            self.spent.add(token)
        answer.pop("scope")
        return json_response(200, answer)

    def _device_grant(self, body: dict[str, str]) -> web.Response:
        found = self.devices.get(body.get("device_code", ""))
        if found is None:
            return self._error("invalid_grant", "unknown device_code")
        now = time.monotonic()
        if now > found.expires:
            return self._error("expired_token", "the device code expired")
        if found.denied:
            return self._error("access_denied", "the user refused")
        too_fast = now - found.last_poll < self.device_interval * 0.8
        found.last_poll = now
        if too_fast:
            return self._error("slow_down", "polling too fast")
        if not found.approved:
            return self._error("authorization_pending", "waiting for the user")
        if self.pkce and _challenge(body.get("code_verifier", "")) != found.challenge:
            return self._error("invalid_grant", "code_verifier does not match")
        if found.used:
            return self._error("invalid_grant", "device_code already used")
        found.used = True
        return json_response(200, self._tokens(found.scope))

    async def _device(self, request: web.Request) -> web.StreamResponse:
        _, body = await self._record(request)
        if body is None:
            return self._error("invalid_request", f"the body must be {self.encoding}")
        if body.get("client_id") != self.client_id:
            return self._error("invalid_client", "unknown client", 401)
        challenge = body.get("code_challenge")
        if self.pkce and (not challenge or body.get("code_challenge_method") != "S256"):
            return self._error("invalid_request", "PKCE S256 is required")
        device_code = secrets.token_urlsafe(24)
        user_code = f"{secrets.randbelow(10000):04d}-{secrets.randbelow(10000):04d}"
        self.devices[device_code] = _Grant(None, None, challenge, body.get("scope", ""),
                                           expires=time.monotonic() + self.device_lifetime)
        self.user_codes[user_code] = device_code
        return json_response(200, {
            "device_code": device_code, "user_code": user_code,
            "verification_uri": f"{self.base_url}/activate",
            "verification_uri_complete": f"{self.base_url}/activate?user_code={user_code}",
            "expires_in": int(self.device_lifetime), "interval": self.device_interval})
