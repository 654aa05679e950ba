"""The OpenAI Chat Completions wire format (``openai``).

:class:`OpenAIFormat` implements the :class:`~omniroute.formats.base.Format`
contract; the translation itself lives in :mod:`.request` (its module doc lists
the conventions and connection settings), :mod:`.response` (JSON answers,
usage) and :mod:`.stream` (streams). The module-level helpers below
(checks, usage, error events) serve the pass-through lane.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest, openai_error_body
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, ClientRoute, Format, ModelInfo
from omniroute.formats.openai import embeddings as openai_embeddings
from omniroute.formats.openai import encode as openai_encode
from omniroute.formats.openai import images as openai_images
from omniroute.formats.openai import request as openai_request
from omniroute.formats.openai import response as openai_response
from omniroute.formats.openai import stream as openai_stream
from omniroute.formats.openai.audio import OpenAIAudio
from omniroute.hookspecs import hookimpl
from omniroute.sse import encode, event_data

NAME = openai_response.NAME
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')


_NOT_LAST = object()


#: below this many bytes an answer whose ``usage`` is not its last member is parsed whole
#: (orjson reads a few kilobytes faster than :func:`_last_usage` finds the usage's end)
_FIND_USAGE_FROM = 4096


def _last_usage(body: bytes) -> Any:
    """The answer's ``usage`` value read without parsing the rest of the answer, when its
    last ``"usage":`` is a key of the outer object; else ``_NOT_LAST``.

    Compatible servers often end the answer with ``usage``: the text after the key up
    to the answer's closing brace is then one JSON value. OpenAI puts ``service_tier``
    and ``system_fingerprint`` after it: in a long answer (:data:`_FIND_USAGE_FROM`) the
    value is then the text up to the ``}`` that closes as many braces as it opened (one
    JSON object, checked by parsing it), and what follows it must be the outer object's
    end after more members (checked by parsing them as an object of their own). Nested in
    a member, the key would leave a closing brace of its own after its value, and these
    checks fail; in a string its quotes would be escaped.
    """
    at = body.rfind(b'"usage":')
    if at < 0:
        return _NOT_LAST
    tail = body[at + 8:].rstrip()
    if not tail.endswith(b"}"):
        return _NOT_LAST
    try:
        return orjson.loads(tail[:-1])
    except orjson.JSONDecodeError:
        if len(body) < _FIND_USAGE_FROM:
            return _NOT_LAST
    end = tail.find(b"}") + 1
    while tail.count(b"{", 0, end) != tail.count(b"}", 0, end):
        end = tail.find(b"}", end) + 1
        if not end:
            return _NOT_LAST
    rest = tail[end:].lstrip()
    try:
        if rest[:1] == b"," and orjson.loads(b"{" + rest[1:]) is not None:
            return orjson.loads(tail[:end])
    except orjson.JSONDecodeError:
        pass
    return _NOT_LAST


def check_chat_request(body: dict[str, Any]) -> tuple[str, bool]:
    """The model and stream flag of a chat request; 400 when it cannot be served."""
    model, stream = check_head(body)
    for m in body["messages"]:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest("Each message must be an object with a 'role'.",
                                 param="messages")
    return model, stream


def check_head(body: dict[str, Any]) -> tuple[str, bool]:
    """What :func:`check_chat_request` checks except each message's shape: the model, the
    messages list and the stream flag (the request's decode checks each message as it
    reads it; the pipeline's check has looked at them once already)."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.",
                             param="model", code="missing_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty array.",
                             param="messages")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean.", param="stream")
    return model, stream


def wants_stream_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def usage_fields(usage: Any) -> dict[str, int | None]:
    """Token counts from an OpenAI ``usage`` object."""
    if not isinstance(usage, dict):
        return {}
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "cached_tokens": prompt_details.get("cached_tokens") if isinstance(prompt_details, dict)
        else None,
        "reasoning_tokens": completion_details.get("reasoning_tokens")
        if isinstance(completion_details, dict) else None,
    }


def usage_from_response(body: bytes) -> dict[str, int | None]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return usage_fields(data.get("usage")) if isinstance(data, dict) else {}


def usage_from_event(event: bytes) -> tuple[dict[str, int | None], bool] | None:
    """``(usage, usage_only)`` when a stream event carries usage, else None.

    ``usage_only`` marks the final chunk OpenAI sends for
    ``stream_options.include_usage`` (its ``choices`` list is empty).
    """
    chunk = _usage_chunk(event)
    if chunk is None:
        return None
    return usage_fields(chunk["usage"]), chunk.get("choices") == []


def _usage_chunk(event: bytes) -> dict[str, Any] | None:
    """The chunk of a stream event that carries a ``usage`` object, else None (cheap first:
    a byte search for the marker)."""
    # (find(), not ``in``: see omniroute.sse.CR; no generator: two markers)
    if event.find(_USAGE_MARKERS[0]) < 0 and event.find(_USAGE_MARKERS[1]) < 0:
        return None
    return _chunk_with(event, "usage")


def _chunk_with(event: bytes, key: str) -> dict[str, Any] | None:
    """The JSON data of a stream event when it holds a ``key`` object, else None."""
    data = event_data(event)
    try:
        chunk = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(chunk, dict) or not isinstance(chunk.get(key), dict):
        return None
    return chunk


def error_from_event(event: bytes) -> str | None:
    """The message of an in-stream error event (``data: {"error": {...}}``), else None."""
    if event.find(b'"error"') < 0:  # (``in``: see omniroute.sse.CR)
        return None
    chunk = _chunk_with(event, "error")
    if chunk is None:
        return None
    message = chunk["error"].get("message")
    return str(message) if message else orjson.dumps(chunk["error"]).decode()


def error_event(err: GatewayError) -> bytes:
    """An error inside a stream, as OpenAI sends it (a data event with ``error``)."""
    return encode({"error": {"message": err.message, "type": err.type, "param": err.param,
                             "code": err.code}})


class OpenAIFormat(Format):
    """OpenAI Chat Completions (``POST /v1/chat/completions``), JSON and SSE."""

    sse_comments = True  # the Stainless SSE decoder skips comment lines
    audio = OpenAIAudio()

    name = NAME
    client_routes = (
        ClientRoute("POST", "/v1/chat/completions", "chat", "chat.completions"),
        ClientRoute("POST", "/chat/completions", "chat", "chat.completions"),
        ClientRoute("POST", "/v1/providers/{provider}/chat/completions", "chat",
                    "chat.completions"),
        ClientRoute("POST", "/v1/embeddings", "embeddings", "embeddings"),
        ClientRoute("POST", "/embeddings", "embeddings", "embeddings"),
        ClientRoute("POST", "/v1/providers/{provider}/embeddings", "embeddings", "embeddings"),
        ClientRoute("POST", "/v1/audio/transcriptions", "transcription", "audio.transcriptions"),
        ClientRoute("POST", "/audio/transcriptions", "transcription", "audio.transcriptions"),
        ClientRoute("POST", "/v1/audio/translations", "translation", "audio.translations"),
        ClientRoute("POST", "/audio/translations", "translation", "audio.translations"),
        ClientRoute("POST", "/v1/audio/speech", "speech", "audio.speech"),
        ClientRoute("POST", "/audio/speech", "speech", "audio.speech"),
        ClientRoute("POST", "/v1/providers/{provider}/audio/transcriptions", "transcription",
                    "audio.transcriptions"),
        ClientRoute("POST", "/v1/providers/{provider}/audio/translations", "translation",
                    "audio.translations"),
        ClientRoute("POST", "/v1/providers/{provider}/audio/speech", "speech", "audio.speech"),
        ClientRoute("POST", "/v1/images/generations", "images", "images.generations"),
        ClientRoute("POST", "/images/generations", "images", "images.generations"),
        ClientRoute("POST", "/v1/providers/{provider}/images/generations", "images",
                    "images.generations"),
        ClientRoute("GET", "/v1/images/generations", "models", model_type="image"),
        ClientRoute("GET", "/images/generations", "models", model_type="image"),
        ClientRoute("GET", "/v1/embeddings", "models", model_type="embedding"),
        ClientRoute("GET", "/embeddings", "models", model_type="embedding"),
        ClientRoute("GET", "/v1/models", "models"),
        ClientRoute("GET", "/models", "models"),
        ClientRoute("GET", "/v1/models/{model:.+}", "model"),
        ClientRoute("GET", "/models/{model:.+}", "model"),
    )

    # ------------------------------------------------------------------ client side

    def inspect(
        self, body: dict[str, Any], *, path_model: str | None = None,
        path_stream: bool | None = None,
    ) -> tuple[str, bool]:
        return check_chat_request(body)

    def decode_request(self, request: ClientRequest) -> c.Request:
        check_head(request.body)
        return openai_request.decode_request(request.body)

    #: (the module's function itself: no method call in between, on every cacheable request)
    text_request = staticmethod(openai_request.text_request)
    asked_text = staticmethod(openai_request.asked_text)

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        return orjson.dumps(openai_response.encode_response(response))

    def encode_stream(
        self, events: AsyncIterator[c.Event], request: c.Request
    ) -> AsyncIterator[bytes]:
        return openai_stream.encode_stream(events, request)

    def error_body(self, err: GatewayError) -> bytes:
        return openai_error_body(err)

    def model_list(self, models: Sequence[ModelInfo]) -> dict[str, Any]:
        return {"object": "list", "data": [self.model_card(m) for m in models]}

    def model_card(self, model: ModelInfo) -> dict[str, Any]:
        return {"id": model.id, "object": "model", "created": model.created,
                "owned_by": model.owned_by, "type": model.type}

    def embed_request(self, body: dict[str, Any], route: ClientRoute) -> c.EmbedRequest:
        return openai_embeddings.decode_request(body)

    def embed_answer(self, request: c.EmbedRequest, vectors: list[list[float]], tokens: int,
                     elapsed_ns: int, route: ClientRoute) -> dict[str, Any]:
        return openai_embeddings.encode_answer(request, vectors, tokens)

    def image_request(self, body: dict[str, Any], route: ClientRoute) -> c.ImageRequest:
        return openai_images.decode_request(body)

    def image_answer(self, request: c.ImageRequest, result: c.ImageResult,
                     route: ClientRoute) -> dict[str, Any]:
        return openai_images.encode_answer(request, result)

    def error_frame(self, err: GatewayError) -> bytes:
        return error_event(err)

    def keepalive_frame(self) -> bytes | None:
        """None: OpenAI sends none, and a stream started early would turn a late 429 or
        5xx into a 200 with an error event, which the SDKs' retry logic cannot see."""
        return None

    # ------------------------------------------------------------------ provider side

    def encode_request(
        self, request: c.Request, client: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        return openai_encode.encode_request(request, client)

    def decode_response(self, body: bytes) -> c.Response:
        return openai_response.decode_response(body)

    def decode_stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
        return openai_stream.decode_stream(frames)

    def stream_decoder(self) -> openai_stream.Decoder:
        return openai_stream.Decoder()

    # ------------------------------------------------------------------ pass-through lane

    def usage_from_body(self, body: bytes) -> c.Usage:
        raw = _last_usage(body)
        if raw is not _NOT_LAST:
            return openai_response.decode_usage(raw)
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return c.Usage()
        return openai_response.decode_usage(data.get("usage") if isinstance(data, dict) else None)

    side_markers = (*_USAGE_MARKERS, b'"error"')
    content_pattern = re.compile(
        rb'"(?:content|reasoning_content|reasoning|refusal)": ?"[^"]|"tool_calls": ?\[')

    def usage_from_frame(self, frame: bytes) -> c.Usage | None:
        chunk = _usage_chunk(frame)
        return None if chunk is None else openai_response.decode_usage(chunk["usage"])

    def hidden_frames(self, client: ClientRequest) -> Callable[[bytes], bool] | None:
        """The usage-only chunk, when the gateway (not the client) asked for it."""
        if not client.stream or wants_stream_usage(client.body):
            return None
        return _is_usage_only

    def error_from_frame(self, frame: bytes) -> str | None:
        return error_from_event(frame)


def _is_usage_only(frame: bytes) -> bool:
    found = usage_from_event(frame)
    return found is not None and found[1]


@hookimpl
def register_formats(register: Callable[[type[Format]], None]) -> None:
    register(OpenAIFormat)
