"""The OpenAI Responses wire format (``POST /v1/responses``), as Codex CLI speaks it.

Requests are item lists (messages, ``function_call`` / ``function_call_output``
items, replayed ``reasoning`` items); answers are ``response`` objects whose
``output`` holds the same kinds of items; streams are typed SSE events with a
``sequence_number``. Requests are translated in :mod:`.request`, answers in
:mod:`.response`, items and their parts in :mod:`.items`, tool definitions in
:mod:`.tools` (wire names in :mod:`.names`) and streams in :mod:`.stream`.

Conventions this package keeps:

* ``instructions`` and leading ``system``/``developer`` items form
  ``Request.system``; a developer item keeps its role in ``Text.meta``.
* Function tools inside a ``namespace`` tool are flattened to one canonical
  tool each, named ``<namespace>__<name>`` (or ``<namespace><name>`` when the
  namespace already ends in ``__``, as Codex's MCP namespaces do); the call is
  mapped back to ``namespace`` + ``name`` for the client.
* Hosted tools (``web_search``, ``image_generation``…) become ``Tool``s with
  ``meta = {"responses": {"raw": <definition>}}``: other formats drop them
  (:func:`~omniroute.formats.tools.hosted_raw`), a Responses upstream gets them back.
* ``custom`` (freeform) tools become a function taking ``{"input": string}``.
* Reasoning another format produced (an Anthropic signature…) travels to the
  client packed in ``encrypted_content`` (:mod:`carry`) and is unpacked when
  the client replays the item.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest, UpstreamError, openai_error_body
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.base import ClientRequest, ClientRoute, Format
from omniroute.formats.json_text import json_object
from omniroute.formats.responses import request as responses_request
from omniroute.formats.responses import stream as responses_stream
from omniroute.formats.responses.items import output_items
from omniroute.formats.responses.names import NAME, ToolIndex
from omniroute.formats.responses.response import (
    FAILED,
    INCOMPLETE,
    decode_response_object,
    error_message,
    frame_json,
    response_from_frame,
    response_shell,
    response_status,
    usage_from_object,
    usage_object,
)
from omniroute.hookspecs import hookimpl
from omniroute.sse import encode

__all__ = ["NAME", "ResponsesFormat", "response_from_frame"]


class ResponsesFormat(Format):
    """OpenAI's Responses API: ``/v1/responses`` requests, answers and streams."""

    sse_comments = True  # the Stainless SSE decoder skips comment lines

    name = NAME
    client_routes = (
        ClientRoute("POST", "/v1/responses", "chat", "responses"),
        ClientRoute("POST", "/responses", "chat", "responses"),
    )
    path_prefixes = ("/v1/responses", "/responses")

    # ------------------------------------------------------------------ client side

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        model = body.get("model") or path_model
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("'model' is required and must be a non-empty string.",
                                 param="model", code="missing_model")
        if "input" in body and not isinstance(body["input"], (str, list)):
            raise InvalidRequest("'input' must be a string or an array.", param="input")
        if not body.get("input") and not body.get("previous_response_id") \
                and not body.get("instructions"):
            raise InvalidRequest("'input' is required.", param="input")
        stream = body.get("stream", False)
        if stream is None:
            stream = False
        if not isinstance(stream, bool):
            raise InvalidRequest("'stream' must be a boolean.", param="stream")
        return model, stream

    def decode_request(self, request: ClientRequest) -> c.Request:
        body = request.body
        _, stream = self.inspect(body)
        return responses_request.decode_request(body, request.model, stream)

    #: (the module's function itself: no method call in between, on every cacheable request)
    text_request = staticmethod(responses_request.text_request)

    def response_object(
        self, response: c.Response, request: c.Request, *, status: str | None = None,
        output: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The ``response`` object for ``response`` (the endpoint may store it)."""
        if output is None:
            output = output_items(response, ToolIndex(request.tools))
        if status is None:
            status = response_status(response.stop_reason)
        incomplete = INCOMPLETE.get(response.stop_reason or "")
        return response_shell(
            response.id, response.model, response.created, request, status=status,
            output=output, usage=usage_object(response.usage) if status != "in_progress" else None,
            incomplete=incomplete if status == "incomplete" else None,
            error=FAILED if status == "failed" else None,
        )

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        return orjson.dumps(self.response_object(response, request))

    def encode_stream(self, events: AsyncIterator[c.Event],
                      request: c.Request) -> AsyncIterator[bytes]:
        return responses_stream.encode_stream(events, request)

    def stream_encoder(self, request: c.Request) -> responses_stream.Encoder:
        return responses_stream.Encoder(request)

    def error_body(self, err: GatewayError) -> bytes:
        return openai_error_body(err)

    def error_frame(self, err: GatewayError) -> bytes:
        return encode({"type": "error", "code": err.code, "message": err.message,
                       "param": err.param, "sequence_number": 0}, event="error")

    def keepalive_frame(self) -> bytes | None:
        return b": keepalive\n\n"

    # ------------------------------------------------------------------ provider side

    def encode_request(self, request: c.Request,
                       client: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return responses_request.encode_request(request, client)

    def decode_response(self, body: bytes) -> c.Response:
        data = json_object(body)
        if data is None:
            raise UpstreamError("The upstream answered with a body that is not a JSON object.")
        if data.get("status") == "failed" or (isinstance(data.get("error"), dict)
                                              and data.get("object") != "response"):
            raise UpstreamError(error_message(data.get("error")) or "The upstream response failed.")
        return decode_response_object(data)

    def decode_stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
        return responses_stream.decode_stream(frames)

    # ------------------------------------------------------------------ pass-through lane

    def with_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The body with the model, minus reasoning items that carry another provider's
        reasoning (a history that went through it): their ``encrypted_content`` would be
        refused as invalid."""
        body = super().with_model(body, model)
        items = body.get("input")
        if not isinstance(items, list) or not any(_foreign(i) for i in items):
            return body
        return {**body, "input": [i for i in items if not _foreign(i)]}

    def usage_from_body(self, body: bytes) -> c.Usage:
        data = json_object(body)
        return usage_from_object(data.get("usage")) if data else c.Usage()

    #: every content event's type ends so (``response.output_text.delta``, reasoning,
    #: function call arguments, refusal)
    content_pattern = re.compile(rb'\.delta"')

    def usage_from_frame(self, frame: bytes) -> c.Usage | None:
        find = frame.find  # (not ``in``: see omniroute.sse.CR)
        if find(b'"usage"') < 0 or (find(b"response.completed") < 0
                                    and find(b"response.incomplete") < 0
                                    and find(b"response.failed") < 0):
            return None
        response = response_from_frame(frame)
        if response is None or not isinstance(response.get("usage"), dict):
            return None
        return usage_from_object(response["usage"])

    def error_from_frame(self, frame: bytes) -> str | None:
        if frame.find(b"error") < 0 and frame.find(b"response.failed") < 0:
            return None
        data = frame_json(frame)
        if data is None:
            return None
        if data.get("type") == "error":
            return error_message(data) or "upstream stream error"
        if data.get("type") == "response.failed":
            response = data.get("response") or {}
            return error_message(response.get("error")) or "The upstream response failed."
        return None


# ---------------------------------------------------------------------------- pass-through lane


def _foreign(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "reasoning" and carry.is_packed(
        item.get("encrypted_content"))


@hookimpl
def register_formats(register: Any) -> None:
    register(ResponsesFormat)
