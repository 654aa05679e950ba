"""Provider type ``openai-responses``: the OpenAI Responses API and services that serve it.

``POST {base_url}/responses`` (``base_url`` like ``https://api.openai.com/v1``)
with Bearer auth; streams are server-sent events with named events
(``response.created`` ... ``response.completed``, or ``error`` /
``response.failed``). Errors use the OpenAI shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

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

DEFAULT_BASE_URL = "https://api.openai.com/v1"

_PRESETS = [
    # platform docs: POST https://api.openai.com/v1/responses (verified)
    Preset("openai-responses", DEFAULT_BASE_URL, "openai-responses", "OpenAI (Responses API)"),
    # openrouter.ai/docs "Responses API Beta": POST https://openrouter.ai/api/v1/responses
    # (verified)
    Preset("openrouter-responses", "https://openrouter.ai/api/v1", "openrouter-responses",
           "OpenRouter (Responses API, beta)"),
    # docs.x.ai: the Responses API is xAI's recommended API (verified)
    Preset("xai-responses", "https://api.x.ai/v1", "xai-responses", "xAI Grok (Responses API)"),
]


class ResponsesProvider(HTTPProvider):
    """The OpenAI Responses API over HTTP (JSON and SSE with named events)."""

    type = "openai-responses"
    price_provider: ClassVar[str | None] = "openai"
    format = "responses"
    default_prefix = "responses"
    description = "OpenAI Responses API (and services that serve it)"
    presets: ClassVar[Mapping[str, Preset]] = {p.name: p for p in _PRESETS}
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    requires_credentials = True

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.base_url = connection.settings["base_url"].rstrip("/")
        self.responses_url = f"{self.base_url}/responses"
        headers = {"User-Agent": context.user_agent, "Content-Type": "application/json"}
        headers.update(connection.settings.get("headers", {}))
        if connection.credentials.get("api_key"):
            headers["Authorization"] = f"Bearer {connection.credentials['api_key']}"
        self._json_headers = {**headers, "Accept": "application/json"}
        self._stream_headers = {**headers, "Accept": "text/event-stream"}

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = http_settings(settings, preset, default_base_url=DEFAULT_BASE_URL,
                                 type_name="an openai-responses")
        return super().configure(settings, credentials, preset)

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        body = {**call.body, "model": call.model}
        if call.stream:
            body["stream"] = True
            return await self.post_stream(self.responses_url, self._stream_headers,
                                          orjson.dumps(body))
        body.pop("stream", None)
        return await self.post_json(self.responses_url, self._json_headers, orjson.dumps(body))

    async def list_models(self) -> list[str]:
        """``GET {base_url}/models``; the configured models when the service has no list."""
        try:
            data = await self.get_json(f"{self.base_url}/models", self._json_headers)
        except UpstreamStatusError as err:
            if err.status in (404, 405):
                return self.configured_models
            raise
        entries = data.get("data", []) if isinstance(data, dict) else []
        listed = [m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)]
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]

    def first_frame_error(self, frame: bytes) -> GatewayError | None:
        """An ``error`` or ``response.failed`` event as the first event."""
        name = event_name(frame)
        if name not in ("error", "response.failed"):
            return None
        data = _json(event_data(frame) or b"")
        err: Any = data if name == "error" else (data.get("response") or {}).get("error")
        if not isinstance(err, dict):
            return UpstreamError(f"upstream stream error: {name}")
        code = err.get("code")
        return UpstreamError(f"upstream stream error: {err.get('message') or code or name}",
                             code=code if isinstance(code, str) else None)


def _json(data: bytes) -> Any:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(ResponsesProvider)
