"""The Ollama native chat format (``POST /api/chat``), as the ollama clients speak it.

Requests carry ``messages`` (``images`` as bare base64, assistant ``thinking``
and whole ``tool_calls`` with object arguments, ``tool`` messages naming the
tool in ``tool_name``), ``tools``, ``format`` (``"json"`` or a schema),
``options`` (``num_predict``, ``stop``…), ``think`` and ``keep_alive``.
``stream`` defaults to **true** when absent. Answers and stream chunks are the
same object, streamed as NDJSON lines; the last one has ``done: true`` and the
token counts. Errors are ``{"error": "message"}``.

Clients always send ``tools`` (often ``[]``): an empty list is no tools, and an
empty ``tools`` array is never sent upstream. Images go upstream by value only:
an image by URL is refused with a 400 (the gateway does not fetch URLs). Tool
calls have no ids in Ollama; stable ones are generated and tool results are
matched to calls by name.

Requests are translated in :mod:`.request`, answers in :mod:`.response` and
NDJSON streams in :mod:`.stream`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, ClientRoute, Format, ModelInfo
from omniroute.formats.json_text import json_object
from omniroute.formats.ollama import embeddings as ollama_embeddings
from omniroute.formats.ollama import request as ollama_request
from omniroute.formats.ollama import response as ollama_response
from omniroute.formats.ollama import stream as ollama_stream
from omniroute.formats.ollama.response import NAME, line, usage_from_chunk
from omniroute.hookspecs import hookimpl

__all__ = ["NAME", "OllamaFormat"]


class OllamaFormat(Format):
    """Ollama's native chat API: ``/api/chat`` requests, answers and NDJSON streams."""

    name = NAME
    client_routes = (
        ClientRoute("POST", "/api/chat", "chat", "ollama.chat"),
        ClientRoute("POST", "/v1/api/chat", "chat", "ollama.chat"),
        ClientRoute("POST", "/api/embed", "embeddings", "ollama.embed"),
        ClientRoute("POST", "/api/embeddings", "embeddings", ollama_embeddings.LEGACY),
        ClientRoute("GET", "/api/tags", "models"),
    )
    stream_content_type = "application/x-ndjson"

    # ------------------------------------------------------------------ client side

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        model = body.get("model") or path_model
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("model is required", param="model", code="missing_model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages is required and must be a non-empty array",
                                 param="messages")
        stream = body.get("stream", True)
        if stream is None:
            stream = True
        if not isinstance(stream, bool):
            raise InvalidRequest("stream must be a boolean", param="stream")
        return model, stream

    def temperature(self, body: dict[str, Any]) -> Any:
        config = body.get("options")
        return config.get("temperature") if isinstance(config, dict) else None

    def decode_request(self, request: ClientRequest) -> c.Request:
        _, stream = self.inspect(request.body)
        return ollama_request.decode_request(request.body, request.model, stream)

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        return ollama_response.encode_response(response, request)

    def encode_stream(self, events: AsyncIterator[c.Event],
                      request: c.Request) -> AsyncIterator[bytes]:
        return ollama_stream.encode_stream(events, request)

    def model_list(self, models: Sequence[ModelInfo]) -> dict[str, Any]:
        if not models:
            return {"models": []}
        modified = datetime.fromtimestamp(models[0].created, UTC).isoformat()
        return {"models": [
            {"name": m.id, "model": m.id, "modified_at": modified, "size": 0, "digest": "",
             "details": {"format": "", "family": m.owned_by, "families": [m.owned_by],
                         "parameter_size": "", "quantization_level": ""}}
            for m in models]}

    def embed_request(self, body: dict[str, Any], route: ClientRoute) -> c.EmbedRequest:
        return ollama_embeddings.decode_request(body, route.endpoint)

    def embed_answer(self, request: c.EmbedRequest, vectors: list[list[float]], tokens: int,
                     elapsed_ns: int, route: ClientRoute) -> dict[str, Any]:
        return ollama_embeddings.encode_answer(request, vectors, tokens, elapsed_ns,
                                               route.endpoint)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps({"error": err.message})

    def error_frame(self, err: GatewayError) -> bytes:
        return line({"error": err.message})

    # ------------------------------------------------------------------ provider side

    def encode_request(self, request: c.Request,
                       client: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return ollama_request.encode_request(request, client)

    def decode_response(self, body: bytes) -> c.Response:
        return ollama_response.decode_response(body)

    def decode_stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
        return ollama_stream.decode_stream(frames)

    # ------------------------------------------------------------------ pass-through lane

    def usage_from_body(self, body: bytes) -> c.Usage:
        data = json_object(body)
        return usage_from_chunk(data) if data else c.Usage()

    content_pattern = re.compile(rb'"(?:content|thinking)": ?"[^"]|"tool_calls": ?\[')

    def usage_from_frame(self, frame: bytes) -> c.Usage | None:
        if frame.find(b'"done":true') < 0 and frame.find(b'"done": true') < 0:
            return None
        data = json_object(frame.strip())
        return usage_from_chunk(data) if data else None

    def error_from_frame(self, frame: bytes) -> str | None:
        if frame.find(b'"error"') < 0:
            return None
        data = json_object(frame.strip())
        if data is None or not data.get("error"):
            return None
        return str(data["error"])


@hookimpl
def register_formats(register: Any) -> None:
    register(OllamaFormat)
