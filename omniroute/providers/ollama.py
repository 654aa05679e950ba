"""Provider type ``ollama``: Ollama's native chat API.

``POST {base_url}/api/chat`` (default ``http://127.0.0.1:11434``); streams are
newline-delimited JSON, one object per line, the last with ``"done": true`` and
the eval counts. Errors are ``{"error": "..."}``. A local server needs no key;
ollama.com's hosted API takes one as a Bearer token.

(Ollama's OpenAI-compatible ``/v1`` endpoint is the ``openai`` type's ``ollama`` preset.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import orjson

from omniroute.errors import GatewayError, UpstreamError, UpstreamStatusError
from omniroute.formats.canonical import token_count
from omniroute.hookspecs import hookimpl
from omniroute.providers.base import (
    Embeddings,
    Preset,
    Provider,
    ProviderContext,
    UpstreamCall,
    UpstreamResponse,
    checked_vectors,
)
from omniroute.providers.framing import NDJSON
from omniroute.providers.http import HTTPProvider, http_settings
from omniroute.storage.store import Connection

DEFAULT_BASE_URL = "http://127.0.0.1:11434"

_PRESETS = [
    Preset("ollama-local", DEFAULT_BASE_URL, "ollama", "Ollama native API (local)",
           needs_api_key=False),
    # docs.ollama.com/api: the same API is served at https://ollama.com/api with a key (verified)
    Preset("ollama-cloud", "https://ollama.com", "ollama-cloud", "Ollama Cloud (native API)"),
]


class OllamaProvider(HTTPProvider):
    """Ollama's ``/api/chat`` over HTTP (JSON and NDJSON streams)."""

    type = "ollama"
    priced = False  # a local server: its tokens cost nothing
    format = "ollama"
    capabilities = frozenset({"chat", "embeddings"})
    default_prefix = "ollama"
    description = "Ollama native API (/api/chat)"
    presets: ClassVar[Mapping[str, Preset]] = {p.name: p for p in _PRESETS}
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    requires_credentials = False
    framing = NDJSON

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.base_url = connection.settings["base_url"].rstrip("/")
        self.chat_url = f"{self.base_url}/api/chat"
        headers = {"User-Agent": context.user_agent, "Content-Type": "application/json"}
        headers.update(connection.settings.get("headers", {}))
        if connection.credentials.get("api_key"):
            headers["Authorization"] = f"Bearer {connection.credentials['api_key']}"
        self._json_headers = {**headers, "Accept": "application/json"}
        self._stream_headers = {**headers, "Accept": "application/x-ndjson"}

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = http_settings(settings, preset, default_base_url=DEFAULT_BASE_URL,
                                 type_name="an ollama")
        base = settings["base_url"]
        if base.endswith("/v1"):
            raise ValueError("base_url ends in /v1, Ollama's OpenAI-compatible API: give the "
                             "server root (http://host:11434), or use the openai type's "
                             "'ollama' preset")
        settings["base_url"] = base.removesuffix("/api")
        return super().configure(settings, credentials, preset)

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        # Ollama streams unless told otherwise: always say which.
        data = orjson.dumps({**call.body, "model": call.model, "stream": call.stream})
        if call.stream:
            return await self.post_stream(self.chat_url, self._stream_headers, data)
        return await self.post_json(self.chat_url, self._json_headers, data)

    async def embed(self, model: str, inputs: list[str], options: dict[str, Any]) -> Embeddings:
        """``POST {base_url}/api/embed``: ``{"embeddings": [[...]], "prompt_eval_count"}``."""
        body: dict[str, Any] = {"model": model, "input": inputs}
        if options.get("dimensions") is not None:
            body["dimensions"] = options["dimensions"]
        answer = await self.post_json(f"{self.base_url}/api/embed", self._json_headers,
                                      orjson.dumps(body))
        assert answer.body is not None
        try:
            data = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream sent a malformed embeddings answer") from None
        if not isinstance(data, dict):
            raise UpstreamError("upstream sent a malformed embeddings answer")
        tokens, answered = data.get("prompt_eval_count"), data.get("model")
        return Embeddings(checked_vectors(data.get("embeddings"), len(inputs)),
                          token_count(tokens),
                          answered if isinstance(answered, str) else model)

    async def list_models(self) -> list[str]:
        """``GET /api/tags``: the models the server has (``name:tag``)."""
        data = await self.get_json(f"{self.base_url}/api/tags", self._json_headers)
        entries = data.get("models", []) if isinstance(data, dict) else []
        listed = [name for m in entries if isinstance(m, dict)
                  and isinstance(name := m.get("name") or m.get("model"), str)]
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """``{"error": "model \\"x\\" not found, try pulling it first"}``"""
        message = _error_text(body)
        if message is None:
            message = body.decode(errors="replace").strip()[:500] or None
        return self.status_error(status, body, headers, message)

    def stream_error(self, data: Any) -> GatewayError | None:
        """A line that is ``{"error": "..."}``."""
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, str):
            return UpstreamError(f"upstream stream error: {err}")
        return super().stream_error(data)


def _error_text(body: bytes) -> str | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, str) else None


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(OllamaProvider)
