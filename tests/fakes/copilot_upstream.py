"""Fake GitHub and Copilot for the ``copilot`` provider, each rejecting what the real
one rejects.

``FakeGitHub`` is one app for github.com and api.github.com:

- the device flow (``fakes.oauth_server`` at ``/login/device/code`` and
  ``/login/oauth/access_token``, form bodies, no PKCE) answering its refusals
  (``authorization_pending``, ``slow_down``, ``expired_token``, ``access_denied``) with a
  **200**, as GitHub does; the GitHub tokens it issues (``ghu_...``) do not expire;
- ``GET /copilot_internal/v2/token``: exchanges a GitHub token (``Authorization: token
  ...``, with ``Editor-Version`` and ``Editor-Plugin-Version``) for a Copilot token
  living ``copilot_lifetime`` seconds, naming ``api_url`` as ``endpoints.api``;
  ``exchanges`` counts them; a revoked GitHub token gets 401 ``Bad credentials``, an
  account without Copilot (``no_seat``) 404;
- ``GET /copilot_internal/user``: the premium-request quota (``premium_remaining`` of
  ``premium_entitlement``, resetting at ``quota_reset``);
- ``GET /user``: ``{"login": "octocat"}``.

``FakeCopilot`` is the Copilot API (``fakes.openai_upstream`` at the root:
``POST /chat/completions``, ``GET /models``): it takes only a Copilot token
``FakeGitHub`` issued and has not expired, and only with the editor headers
(``Copilot-Integration-Id``, ``Editor-Version``, ``Editor-Plugin-Version``,
``User-Agent``; 400 otherwise). ``quota_exceeded()`` scripts the 402 of spent premium
requests.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from fakes.base import json_response
from fakes.oauth_server import FakeOAuthServer
from fakes.openai_upstream import Behaviour, FakeOpenAI, Recorded

COPILOT_CLIENT = "Iv1.b507a08c87ecfe98"
EDITOR_HEADERS = ("Copilot-Integration-Id", "Editor-Version", "Editor-Plugin-Version",
                  "User-Agent")
_DEVICE_ERRORS = frozenset({"authorization_pending", "slow_down", "expired_token",
                            "access_denied"})


def quota_exceeded() -> Behaviour:
    """The 402 of spent premium requests (github/copilot-cli#730)."""
    return Behaviour(status=402, error={"message": "You have no quota",
                                        "code": "quota_exceeded"})


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class FakeGitHub(FakeOAuthServer):
    """github.com's device flow and api.github.com's Copilot endpoints (see the module)."""

    def __init__(self, *, copilot_lifetime: float = 1800.0, api_url: str = "",
                 premium_entitlement: int = 300, premium_remaining: int = 135,
                 quota_reset: float | None = None, **knobs: Any) -> None:
        knobs.setdefault("client_id", COPILOT_CLIENT)
        knobs.setdefault("encoding", "form")
        knobs.setdefault("pkce", False)
        knobs.setdefault("rotate", False)
        knobs.setdefault("access_lifetime", 10 * 365 * 86400.0)
        knobs.setdefault("prefix", "ghu")
        super().__init__(device_path="/login/device/code",
                         token_path="/login/oauth/access_token", **knobs)
        self.copilot_lifetime = copilot_lifetime
        self.api_url = api_url
        self.premium_entitlement, self.premium_remaining = premium_entitlement, premium_remaining
        self.quota_reset = quota_reset
        self.copilot: dict[str, float] = {}  # Copilot token -> expiry (epoch seconds)
        self.exchanges = 0
        self.no_seat: set[str] = set()
        self.app.router.add_get("/copilot_internal/v2/token", self._exchange)
        self.app.router.add_get("/copilot_internal/user", self._user_quota)
        self.app.router.add_get("/user", self._user)

    # ------------------------------------------------------------------ controls

    def github_token(self) -> str:
        """A GitHub token as if the user had signed in (or the editor had stored one)."""
        return self.issue(refresh=False).access

    def copilot_token(self, lifetime: float | None = None) -> tuple[str, float]:
        """A Copilot token and its expiry, as if exchanged just now."""
        expires = time.time() + (self.copilot_lifetime if lifetime is None else lifetime)
        token = f"tid={secrets.token_hex(8)};exp={int(expires)};sku=monthly_subscriber;8kp=1:x"
        self.copilot[token] = expires
        return token, expires

    def copilot_valid(self, token: str) -> bool:
        expires = self.copilot.get(token)
        return expires is not None and expires > time.time()

    # ------------------------------------------------------------------ endpoints

    def _error(self, error: str, description: str, status: int = 400) -> web.Response:
        # GitHub answers the device flow's refusals with a 200
        return json_response(200 if error in _DEVICE_ERRORS else status,
                             {"error": error, "error_description": description})

    def _github_auth(self, request: web.Request) -> tuple[str | None, web.Response | None]:
        self.requests.append(Recorded(request.method, request.path,
                                      {k.lower(): v for k, v in request.headers.items()},
                                      None, b"", dict(request.query)))
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token:
            return None, json_response(401, {"message": "Requires authentication"})
        if not self.is_valid(token):
            return None, json_response(401, {"message": "Bad credentials",
                                             "documentation_url": "https://docs.github.com"})
        return token, None

    async def _exchange(self, request: web.Request) -> web.StreamResponse:
        token, refused = self._github_auth(request)
        if refused is not None:
            return refused
        missing = [h for h in ("Editor-Version", "Editor-Plugin-Version")
                   if not request.headers.get(h)]
        if missing:
            return json_response(400, {"message": f"missing {', '.join(missing)}"})
        if token in self.no_seat:
            return json_response(404, {"message": "Not Found", "error_details": {
                "url": "https://github.com/features/copilot",
                "message": "No access to GitHub Copilot found."}})
        self.exchanges += 1
        copilot, expires = self.copilot_token()
        return json_response(200, {
            "token": copilot, "expires_at": int(expires),
            "refresh_in": int(self.copilot_lifetime - 300),
            "endpoints": {"api": self.api_url or self.base_url,
                          "telemetry": "https://telemetry.invalid"},
            "sku": "monthly_subscriber", "chat_enabled": True, "individual": True})

    async def _user_quota(self, request: web.Request) -> web.StreamResponse:
        _, refused = self._github_auth(request)
        if refused is not None:
            return refused
        reset = self.quota_reset or time.time() + 20 * 86400
        remaining = self.premium_remaining
        return json_response(200, {
            "copilot_plan": "individual", "access_type_sku": "monthly_subscriber",
            "chat_enabled": True, "quota_reset_date": _iso(reset)[:10],
            "quota_reset_date_utc": _iso(reset),
            "quota_snapshots": {
                "chat": {"entitlement": 0, "remaining": 0, "percent_remaining": 100,
                         "unlimited": True, "quota_id": "chat"},
                "premium_interactions": {
                    "entitlement": self.premium_entitlement, "remaining": remaining,
                    "quota_remaining": remaining,
                    "percent_remaining": round(100 * remaining / self.premium_entitlement, 2),
                    "overage_permitted": False, "unlimited": False,
                    "quota_id": "premium_interactions"}}})

    async def _user(self, request: web.Request) -> web.StreamResponse:
        _, refused = self._github_auth(request)
        return refused or json_response(200, {"login": "octocat", "id": 1})

    def seen(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]


class FakeCopilot(FakeOpenAI):
    """The Copilot API (see the module docstring)."""

    def __init__(self, github: FakeGitHub, *,
                 models: Sequence[str] = ("gpt-4.1", "claude-sonnet-4", "gpt-5-mini"),
                 **knobs: Any) -> None:
        super().__init__(api_key="unused", models=models, **knobs)
        self.github = github
        self.app.router.add_post("/chat/completions", self._handle)
        self.app.router.add_get("/models", self._copilot_models)

    def _auth_error(self, request: web.Request) -> web.Response | None:
        missing = [h for h in EDITOR_HEADERS if not request.headers.get(h)]
        if missing:
            return json_response(400, {"error": {
                "message": f"missing required header(s): {', '.join(missing)}",
                "code": "missing_headers"}})
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not self.github.copilot_valid(header[7:]):
            return json_response(401, {"error": {"message": "unauthorized: token expired",
                                                 "code": "unauthorized"}})
        return None

    async def _before(self, request: web.Request, b: Behaviour) -> web.Response | None:
        refused = self._auth_error(request)  # headers first, even before scripted errors
        return refused if refused is not None else await super()._before(request, b)

    async def _copilot_models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (refused := self._auth_error(request)) is not None:
            return refused
        data = [{"id": m, "name": m, "object": "model", "vendor": "fake", "version": m,
                 "preview": False, "model_picker_enabled": True,
                 "capabilities": {"family": m, "type": "chat", "object": "model_capabilities",
                                  "limits": {"max_output_tokens": 4096},
                                  "supports": {"tool_calls": True}}} for m in self.models]
        data.append({"id": "text-embedding-3-small", "name": "Embedding", "object": "model",
                     "capabilities": {"family": "text-embedding-3-small", "type": "embeddings"}})
        return json_response(200, {"object": "list", "data": data})

    def seen(self, path: str = "/chat/completions") -> list[Recorded]:
        return [r for r in self.requests if r.path == path]
