"""Provider type ``anthropic``: the Anthropic Messages API and services that mirror it.

``POST {base_url}/v1/messages`` with ``x-api-key`` (or ``Authorization: Bearer``
for an ``auth_token``) and ``anthropic-version``; streams are server-sent events
(``message_start``, ``content_block_*``, ``ping``, ``message_delta``,
``message_stop``, ``error``). Several vendors serve the same API for their own
models; the presets name them. An Anthropic client's own ``anthropic-version``
and ``anthropic-beta`` headers are passed on when the call carries them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from omniroute.errors import GatewayError, UpstreamError, UpstreamStatusError
from omniroute.hookspecs import hookimpl
from omniroute.providers.base import (
    Preset,
    Provider,
    ProviderContext,
    UpstreamCall,
    UpstreamResponse,
)
from omniroute.providers.http import HTTPProvider, http_settings
from omniroute.sse import event_data, event_name
from omniroute.storage.store import Connection

DEFAULT_VERSION = "2023-06-01"
_PASSED_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")
_MAX_MODEL_PAGES = 10

# Base URLs are what each vendor documents as ANTHROPIC_BASE_URL (the client adds /v1/messages).
_PRESETS = [
    Preset("anthropic", "https://api.anthropic.com", "anthropic", "Anthropic (Claude)"),
    # platform.minimax.io docs, "Anthropic API compatible" page (verified)
    Preset("minimax", "https://api.minimax.io/anthropic", "minimax", "MiniMax (Anthropic API)"),
    Preset("minimax-cn", "https://api.minimaxi.com/anthropic", "minimax-cn",
           "MiniMax China (Anthropic API)"),
    # api-docs.deepseek.com, "Anthropic API" guide (verified)
    Preset("deepseek-anthropic", "https://api.deepseek.com/anthropic", "deepseek-anthropic",
           "DeepSeek (Anthropic API)"),
    # Not verified on the vendor's own docs: taken from widely used client configurations.
    Preset("kimi", "https://api.moonshot.ai/anthropic", "kimi", "Moonshot Kimi (Anthropic API)"),
    # Not verified on the vendor's own docs (docs.z.ai names an Anthropic endpoint for
    # Claude Code; the URL comes from widely used client configurations).
    Preset("glm", "https://api.z.ai/api/anthropic", "glm", "Z.ai GLM (Anthropic API)"),
    Preset("glm-cn", "https://open.bigmodel.cn/api/anthropic", "glm-cn",
           "Zhipu GLM China (Anthropic API)"),
]

#: Anthropic error types and the HTTP status each stands for (stream ``error`` events)
_STATUS_OF_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicProvider(HTTPProvider):
    """The Anthropic Messages API over HTTP (JSON and SSE)."""

    type = "anthropic"
    price_provider = "anthropic"
    format = "anthropic"
    capabilities = frozenset({"chat", "count_tokens"})
    default_prefix = "anthropic"
    description = "Anthropic Messages API (and Anthropic-compatible endpoints)"
    presets: ClassVar[Mapping[str, Preset]] = {p.name: p for p in _PRESETS}
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key", "auth_token")
    requires_credentials = True

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        settings = connection.settings
        base = settings["base_url"].rstrip("/")
        self.api_root = base if base.endswith("/v1") else f"{base}/v1"
        self.messages_url = f"{self.api_root}/messages"
        self.version = settings.get("anthropic_version", DEFAULT_VERSION)
        headers = {"User-Agent": context.user_agent, "Content-Type": "application/json",
                   "anthropic-version": self.version}
        headers.update(settings.get("headers", {}))
        creds = connection.credentials
        if creds.get("api_key"):
            headers["x-api-key"] = creds["api_key"]
        if creds.get("auth_token"):
            headers["Authorization"] = f"Bearer {creds['auth_token']}"
        self._headers = headers

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = http_settings(settings, preset, default_base_url="https://api.anthropic.com",
                                 type_name="an anthropic")
        version = settings.get("anthropic_version")
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise ValueError("anthropic_version must be a version string such as '2023-06-01'")
        return super().configure(settings, credentials, preset)

    def headers_for(
        self, call: UpstreamCall | None = None, *, stream: bool = False
    ) -> dict[str, str]:
        headers = dict(self._headers)
        if call is not None:
            for name, value in call.client_headers.items():
                if name.lower() in _PASSED_CLIENT_HEADERS and value:
                    headers[name.lower()] = value
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        return headers

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        body = {**call.body, "model": call.model}
        if call.stream:
            body["stream"] = True
            return await self.post_stream(
                self.messages_url, self.headers_for(call, stream=True), orjson.dumps(body))
        body.pop("stream", None)
        return await self.post_json(self.messages_url, self.headers_for(call), orjson.dumps(body))

    async def count_tokens(
        self, body: dict[str, Any], client_headers: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """``POST /v1/messages/count_tokens``: the upstream's answer, ``{"input_tokens": N}``.

        :param body: a count_tokens body, its ``model`` already the upstream's name.
        :param client_headers: the client's headers (``anthropic-beta`` is passed on).
        """
        call = UpstreamCall(body, str(body.get("model", "")), False,
                            client_headers=client_headers or {})
        answer = await self.post_json(f"{self.messages_url}/count_tokens",
                                      self.headers_for(call), orjson.dumps(body))
        data = _json(answer.body or b"")
        tokens = data.get("input_tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise UpstreamError("The upstream's count_tokens answer has no 'input_tokens'.")
        return data

    async def list_models(self) -> list[str]:
        """``GET /v1/models`` page by page; the configured models when the endpoint has none."""
        listed: list[str] = []
        after: str | None = None
        for _ in range(_MAX_MODEL_PAGES):
            url = f"{self.api_root}/models?limit=1000"
            if after:
                url += f"&after_id={quote(after)}"
            try:
                data = await self.get_json(url, self.headers_for())
            except UpstreamStatusError as err:
                if err.status in (404, 405) and not listed:
                    return self.configured_models  # a compatible endpoint without a model list
                raise
            entries = data.get("data", []) if isinstance(data, dict) else []
            listed += [m["id"] for m in entries
                       if isinstance(m, dict) and isinstance(m.get("id"), str)]
            after = data.get("last_id") if isinstance(data, dict) else None
            if not (isinstance(data, dict) and data.get("has_more") and after):
                break
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]

    # ---- errors ---------------------------------------------------------------------
    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """``{"type": "error", "error": {"type": ..., "message": ...}, "request_id": ...}``"""
        type_, message = _error_parts(_json(body))
        if message is None and not body.lstrip().startswith(b"{"):
            message = body.decode(errors="replace").strip()[:500] or None
        return self.status_error(status, body, headers, message, type=type_)

    def skips_frame(self, frame: bytes) -> bool:
        return event_name(frame) == "ping"

    def first_frame_error(self, frame: bytes) -> GatewayError | None:
        """An ``event: error`` frame: a status error with the status its type stands for."""
        if event_name(frame) != "error":
            return None
        data = event_data(frame) or b""
        type_, message = _error_parts(_json(data))
        status = _STATUS_OF_TYPE.get(type_ or "", 502)
        return UpstreamStatusError(
            f"upstream stream error: {message or type_ or 'unknown error'}",
            status=status, type=type_, body=data)


def _json(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


def _error_parts(data: Any) -> tuple[str | None, str | None]:
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None, None
    type_, message = err.get("type"), err.get("message")
    return (type_ if isinstance(type_, str) else None,
            message if isinstance(message, str) else None)


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(AnthropicProvider)
