"""The Anthropic Messages wire format (``anthropic``).

:class:`AnthropicFormat` implements the :class:`~omniroute.formats.base.Format`
contract; the translation lives in :mod:`.request` (its module doc lists every
convention), :mod:`.encode` (bodies for an Anthropic upstream), :mod:`.response`
(JSON answers, usage, errors) and :mod:`.stream` (streams). The pass-through
helpers here look at bytes before parsing anything, since they run on every frame.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.anthropic import encode as anthropic_encode
from omniroute.formats.anthropic import request as anthropic_request
from omniroute.formats.anthropic import response as anthropic_response
from omniroute.formats.anthropic import stream as anthropic_stream
from omniroute.formats.anthropic.encode import DEFAULT_MAX_TOKENS
from omniroute.formats.anthropic.response import NAME
from omniroute.formats.base import ClientRequest, ClientRoute, Format
from omniroute.hookspecs import hookimpl
from omniroute.sse import event_data

__all__ = ["DEFAULT_MAX_TOKENS", "AnthropicFormat", "register_formats"]

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_ERROR_MARKERS = (b'"type":"error"', b'"type": "error"')


class AnthropicFormat(Format):
    """Anthropic Messages (``POST /v1/messages``), JSON and SSE."""

    sse_comments = True  # the Stainless SSE decoder skips comment lines

    name = NAME
    client_routes = (
        ClientRoute("POST", "/v1/messages", "chat", "messages"),
        ClientRoute("POST", "/messages", "chat", "messages"),
        ClientRoute("POST", "/v1/messages/count_tokens", "count_tokens", "messages.count_tokens"),
        ClientRoute("POST", "/messages/count_tokens", "count_tokens", "messages.count_tokens"),
    )
    path_prefixes = ("/v1/messages", "/messages")

    # ------------------------------------------------------------------ client side

    def inspect(
        self, body: dict[str, Any], *, path_model: str | None = None,
        path_stream: bool | None = None,
    ) -> tuple[str, bool]:
        return anthropic_request.check_request(body)

    def decode_request(self, request: ClientRequest) -> c.Request:
        return anthropic_request.decode_request(request.body)

    #: (the module's function itself: no method call in between, on every cacheable request)
    text_request = staticmethod(anthropic_request.text_request)

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        return orjson.dumps(anthropic_response.encode_response(response))

    def encode_stream(
        self, events: AsyncIterator[c.Event], request: c.Request
    ) -> AsyncIterator[bytes]:
        return anthropic_stream.encode_stream(events, request)

    def stream_encoder(self, request: c.Request) -> anthropic_stream.Encoder:
        return anthropic_stream.Encoder(request)

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps(anthropic_response.error_object(err))

    def error_frame(self, err: GatewayError) -> bytes:
        return b"event: error\ndata: " + self.error_body(err) + b"\n\n"

    def keepalive_frame(self) -> bytes | None:
        return PING

    def count_request(self, body: dict[str, Any], path_model: str | None) -> tuple[
            str, dict[str, Any]]:
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("model: field required (a non-empty string).", param="model")
        return model, {k: v for k, v in body.items() if k != "stream"}

    def count_answer(self, tokens: int) -> dict[str, Any]:
        return {"input_tokens": tokens}

    # ------------------------------------------------------------------ provider side

    def encode_request(
        self, request: c.Request, client: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return anthropic_encode.encode_request(request, client)

    def decode_response(self, body: bytes) -> c.Response:
        return anthropic_response.decode_response(body)

    def decode_stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
        return anthropic_stream.decode_stream(frames)

    # ------------------------------------------------------------------ pass-through lane

    def with_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The body with the model, minus another provider's reasoning (see
        :func:`~omniroute.formats.anthropic.encode.without_foreign_reasoning`)."""
        return anthropic_encode.without_foreign_reasoning(super().with_model(body, model))

    def usage_from_body(self, body: bytes) -> c.Usage:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return c.Usage()
        return anthropic_response.decode_usage(data.get("usage") if isinstance(data, dict)
                                               else None)

    side_markers = (*_USAGE_MARKERS, b"event: error", *_ERROR_MARKERS)
    content_pattern = re.compile(rb"content_block_delta|\"type\": ?\"tool_use\"")

    def usage_from_frame(self, frame: bytes) -> c.Usage | None:
        """Input counts from ``message_start``, output (and totals) from ``message_delta``."""
        if all(frame.find(marker) < 0 for marker in _USAGE_MARKERS):  # (``in``: omniroute.sse.CR)
            return None
        data = event_data(frame)
        try:
            event = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict):
            return None
        if event.get("type") == "message_start":
            message = event.get("message")
            usage = anthropic_response.decode_usage(
                message.get("usage") if isinstance(message, dict) else None)
            usage.output_tokens = None  # a placeholder; message_delta has the count
            return usage
        if event.get("type") == "message_delta":
            return anthropic_response.decode_usage(event.get("usage"))
        return None

    def error_from_frame(self, frame: bytes) -> str | None:
        if not (frame.startswith(b"event: error")
                or any(frame.find(m) >= 0 for m in _ERROR_MARKERS)):
            return None
        data = event_data(frame)
        try:
            event = orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return None
        if not isinstance(event, dict) or event.get("type") != "error":
            return None
        error = event.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        return orjson.dumps(error).decode()


@hookimpl
def register_formats(register: Callable[[type[Format]], None]) -> None:
    register(AnthropicFormat)
