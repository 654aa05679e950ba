"""Fake ChatGPT for the ``codex`` provider: the sign-in's authorization server and the
Codex Responses backend, each rejecting what the real one rejects.

``FakeOpenAIAuth`` is the fake authorization server (``fakes.oauth_server``) as
``auth.openai.com`` answers: bodies as forms or JSON (the code exchange is a form, the
Codex CLI's refresh JSON), every token answer with an ``id_token`` JWT (unsigned, like
the ones codex parses) naming the ChatGPT account, its plan and email, and a refused
refresh token answered in OpenAI's shape: ``401 {"error": {"message", "type",
"code": "refresh_token_reused"}}`` (spent), ``refresh_token_invalidated`` (revoked) or
``refresh_token_expired`` (unknown).

``FakeCodex`` is the backend under ``/backend-api/codex``: ``POST .../responses`` (the
Responses wire format of ``fakes.responses_upstream``) and ``GET .../models``
(``{"models": [{"slug", ...}]}``). Before anything else it checks the headers the
backend requires: a bearer token the authorization server issued and has not expired
(401 otherwise), ``chatgpt-account-id`` naming the account (403), ``originator`` (400).
Then the body: ``store`` must be false, ``stream`` true, ``instructions`` non-empty
(400 ``{"detail": ...}`` as the backend answers), and only the fields the backend takes
(``max_output_tokens``, ``temperature``... are refused). Every answer carries the
``x-codex-primary-*`` / ``x-codex-secondary-*`` usage headers (``primary_used``,
``secondary_used``, ``reset_after``). ``usage_limit(resets_in)`` scripts the 429
``usage_limit_reached``; ``empty_output`` makes ``response.completed`` carry no output
items (the client must gather them from ``response.output_item.done``).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any

import orjson
from aiohttp import web

from fakes.base import json_response
from fakes.oauth_server import FakeOAuthServer
from fakes.responses_upstream import Behaviour, FakeResponses, Recorded

ACCOUNT_ID = "11111111-2222-3333-4444-555555555555"
CODEX_CLIENT = "app_EMoamEEZ73f0CkXaXp7hrann"
BODY_FIELDS = frozenset({
    "model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls",
    "reasoning", "store", "stream", "include", "prompt_cache_key", "text", "service_tier",
    "client_metadata"})


def fake_jwt(claims: dict[str, Any]) -> str:
    """An unsigned JWT (``alg: none``) with ``claims``: three base64url parts."""
    def part(obj: Any) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.c2ln"


def id_token(account: str = ACCOUNT_ID, *, email: str = "user@example.com",
             plan: str = "plus", exp: float | None = None) -> str:
    """An ID token as auth.openai.com issues it (the claims codex reads)."""
    return fake_jwt({
        "email": email, "exp": int(exp or time.time() + 3600),
        "https://api.openai.com/profile": {"email": email},
        "https://api.openai.com/auth": {"chatgpt_account_id": account,
                                        "chatgpt_plan_type": plan,
                                        "chatgpt_user_id": "user-FAKE"}})


def usage_limit(resets_in: float, plan: str = "plus") -> Behaviour:
    """The 429 of a spent allowance (james-6-23/codex2api#9), with its usage headers."""
    return Behaviour(status=429, error={
        "type": "usage_limit_reached", "message": "The usage limit has been reached",
        "plan_type": plan, "resets_at": int(time.time() + resets_in),
        "resets_in_seconds": int(resets_in)},
        headers={"x-codex-primary-used-percent": "100",
                 "x-codex-primary-window-minutes": "300",
                 "x-codex-primary-reset-after-seconds": str(int(resets_in)),
                 "x-codex-active-limit": "codex"})


class FakeOpenAIAuth(FakeOAuthServer):
    """auth.openai.com for the Codex CLI's client (see the module docstring)."""

    def __init__(self, *, account: str = ACCOUNT_ID, email: str = "user@example.com",
                 **knobs: Any) -> None:
        knobs.setdefault("client_id", CODEX_CLIENT)
        knobs.setdefault("encoding", "any")
        knobs.setdefault("token_extra", {"id_token": id_token(account, email=email)})
        super().__init__(**knobs)

    def _refresh_grant(self, body: dict[str, str]) -> web.Response:
        answer = super()._refresh_grant(body)
        if answer.status != 400:
            return answer
        token = body.get("refresh_token", "")
        code = ("refresh_token_reused" if token in self.spent
                else "refresh_token_invalidated" if token in self.revoked
                else "refresh_token_expired")
        return json_response(401, {"error": {
            "message": "Your refresh token could not be used. Please sign in again.",
            "type": "invalid_request_error", "param": None, "code": code}})


class FakeCodex(FakeResponses):
    """The Codex Responses backend (see the module docstring)."""

    def __init__(
        self, auth: FakeOAuthServer, *, account: str = ACCOUNT_ID,
        models: Sequence[str] = ("gpt-5-codex", "gpt-5.1-codex", "gpt-5"),
        primary_used: float = 12.0, secondary_used: float = 40.0, reset_after: int = 3600,
        empty_output: bool = False, **knobs: Any,
    ) -> None:
        super().__init__(api_key="unused", models=models, reasoning_models=models, **knobs)
        self.auth = auth
        self.account = account
        self.primary_used, self.secondary_used = primary_used, secondary_used
        self.reset_after = reset_after
        self.empty_output = empty_output
        self.app.router.add_post("/backend-api/codex/responses", self._handle)
        self.app.router.add_get("/backend-api/codex/models", self._codex_models)

    # ---- what the backend requires --------------------------------------------------
    def usage_headers(self) -> dict[str, str]:
        return {"x-codex-primary-used-percent": str(self.primary_used),
                "x-codex-primary-window-minutes": "300",
                "x-codex-primary-reset-after-seconds": str(self.reset_after),
                "x-codex-secondary-used-percent": str(self.secondary_used),
                "x-codex-secondary-window-minutes": "10080",
                "x-codex-secondary-reset-after-seconds": str(self.reset_after * 24),
                "x-codex-plan-type": "plus"}

    def _auth_error(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:]:
            return json_response(401, {"detail": "Unauthorized"})
        if not self.auth.is_valid(header[7:]):
            return json_response(401, {"error": {
                "message": "Provided authentication token is expired. Please try signing in "
                "again.", "type": None, "code": "token_expired", "param": None}})
        if request.headers.get("chatgpt-account-id") != self.account:
            return json_response(403, {"detail": "Missing or wrong ChatGPT-Account-ID"})
        if not request.headers.get("originator"):
            return json_response(400, {"detail": "Missing originator header"})
        return None

    async def _before(self, request: web.Request, b: Behaviour) -> web.Response | None:
        refused = self._auth_error(request)  # headers first, even before scripted errors
        return refused if refused is not None else await super()._before(request, b)

    def _check(self, body: dict[str, Any]) -> web.Response | None:
        for name in body:
            if name not in BODY_FIELDS:
                return json_response(400, {"detail": f"Unsupported parameter: {name}"})
        if body.get("store") is not False:
            return json_response(400, {"detail": "Store must be set to false"})
        if body.get("stream") is not True:
            return json_response(400, {"detail": "Stream must be set to true"})
        instructions = body.get("instructions")
        if not isinstance(instructions, str) or not instructions.strip():
            return json_response(400, {"detail": "Instructions are required"})
        if not isinstance(body.get("input"), list):
            return json_response(400, {"detail": "Input must be a list"})
        return super()._check(body)

    # ---- answers --------------------------------------------------------------------
    def _response(self, body: dict[str, Any], plan: dict[str, Any], status: str,
                  output: list[dict[str, Any]], usage: dict[str, Any] | None,
                  error: dict[str, Any] | None = None) -> dict[str, Any]:
        doc = super()._response(body, plan, status, output, usage, error)
        if self.empty_output and status == "completed":
            doc["output"] = []
        return doc

    async def _send_stream(self, request: web.Request, b: Any, frames: list[bytes],
                           headers: dict[str, str], error_frame: Any) -> web.StreamResponse:
        return await super()._send_stream(request, b, frames,
                                          {**headers, **self.usage_headers()}, error_frame)

    async def _codex_models(self, request: web.Request) -> web.StreamResponse:
        rec: Recorded = await self._record(request)
        if (refused := self._auth_error(request)) is not None:
            return refused
        if not rec.query.get("client_version"):
            return json_response(400, {"detail": "client_version is required"})
        return json_response(200, {"models": [
            {"slug": m, "display_name": m, "visibility": "list", "supported_in_api": True,
             "priority": i} for i, m in enumerate(self.models)]})

    def seen(self, path: str = "/backend-api/codex/responses") -> list[Recorded]:
        """The requests that reached ``path``."""
        return [r for r in self.requests if r.path == path]
