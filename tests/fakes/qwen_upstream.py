"""Fake Qwen sign-in and API, for the ``qwen`` provider type's tests.

:class:`QwenOAuthServer` is the fake authorization server as ``chat.qwen.ai`` behaves
for qwen-code's client (QwenLM/qwen-code ``packages/core/src/qwen/qwenOAuth2.ts``):
``POST /api/v1/oauth2/device/code`` and ``POST /api/v1/oauth2/token``, form bodies, PKCE
required, the device code request refused without an ``x-request-id``; a too-fast poll
answers 429 ``slow_down`` (as Qwen does, where RFC 8628 says 400); the token answer
carries ``resource_url`` (by default this fake API's host and port, without a scheme
when ``bare_resource`` — as Qwen sends ``portal.qwen.ai``).

:class:`FakeQwen` is the OpenAI-compatible API at ``{resource}/v1/chat/completions``
(the OpenAI fake's replies): it takes only a bearer token the fake authorization server
issued and has not expired (401 "invalid access token or token expired"), and refuses
(400) a request without qwen-code's DashScope headers: ``X-DashScope-AuthType:
qwen-oauth``, ``X-DashScope-CacheControl: enable`` and an ``X-DashScope-UserAgent`` (any
value: qwen-code's older builds sent ``GeminiCLI/...`` in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web

from fakes.oauth_server import FakeOAuthServer
from fakes.openai_upstream import FakeOpenAI, openai_json

CLIENT_ID = "f0304373b74a44d2b584a3fb70ca9e56"
MODELS = ("coder-model", "qwen3-coder-plus", "qwen3-coder-flash", "vision-model")


class QwenOAuthServer(FakeOAuthServer):
    """``chat.qwen.ai``'s device flow with PKCE (see the module docstring)."""

    def __init__(self, **knobs: Any) -> None:
        options: dict[str, Any] = dict(
            client_id=CLIENT_ID, encoding="form", pkce=True, rotate=True,
            device_path="/api/v1/oauth2/device/code", token_path="/api/v1/oauth2/token",
            access_lifetime=21600.0, prefix="qwen")
        options.update(knobs)
        super().__init__(**options)

    def serve_resource(self, resource_url: str) -> None:
        """Name the API host every token answer gives (``resource_url``)."""
        self.token_extra["resource_url"] = resource_url

    @staticmethod
    def _error(error: str, description: str, status: int = 400) -> web.Response:
        return FakeOAuthServer._error(error, description, 429 if error == "slow_down" else status)

    async def _device(self, request: web.Request) -> web.StreamResponse:
        if not request.headers.get("x-request-id"):
            await self._record(request)
            return self._error("invalid_request", "x-request-id is required")
        return await super()._device(request)


class FakeQwen(FakeOpenAI):
    """The OpenAI-compatible API behind a Qwen sign-in (see the module docstring)."""

    def __init__(self, oauth: FakeOAuthServer, *, models: Sequence[str] = MODELS,
                 **knobs: Any) -> None:
        super().__init__(api_key=None, models=models, **knobs)
        self.oauth = oauth

    def _auth_error(self, request: web.Request) -> web.Response | None:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token or not self.oauth.is_valid(token):
            return openai_json(401, {"error": {
                "message": "invalid access token or token expired",
                "type": "invalid_request_error", "code": "invalid_token"}})
        headers = request.headers
        wanted = {"X-DashScope-CacheControl": "enable", "X-DashScope-AuthType": "qwen-oauth"}
        missing = [name for name, value in wanted.items() if headers.get(name) != value]
        missing += [] if headers.get("X-DashScope-UserAgent") else ["X-DashScope-UserAgent"]
        if missing:
            return openai_json(400, {"error": {
                "message": f"fake Qwen: missing or wrong header(s): {', '.join(missing)}",
                "type": "invalid_request_error", "code": "invalid_headers"}})
        return None

    def tokens_seen(self) -> list[str]:
        return [r.headers.get("authorization", "").removeprefix("Bearer ")
                for r in self.requests if r.path.endswith("/chat/completions")]
