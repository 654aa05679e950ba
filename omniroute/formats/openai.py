"""The OpenAI Chat Completions wire format: checks, usage, error events."""

from __future__ import annotations

from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest
from omniroute.sse import encode, event_data

NAME = "openai"
_USAGE_MARKERS = (b'"usage":{', b'"usage": {')


def check_chat_request(body: dict[str, Any]) -> tuple[str, bool]:
    """The model and stream flag of a chat request; 400 when it cannot be served."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' is required and must be a non-empty string.",
                             param="model", code="missing_model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' is required and must be a non-empty array.",
                             param="messages")
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        raise InvalidRequest("Each message must be an object with a 'role'.", param="messages")
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
    if not any(marker in event for marker in _USAGE_MARKERS):
        return None
    data = event_data(event)
    try:
        chunk = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
        return None
    return usage_fields(chunk["usage"]), chunk.get("choices") == []


def error_from_event(event: bytes) -> str | None:
    """The message of an in-stream error event (``data: {"error": {...}}``), else None."""
    if b'"error"' not in event:
        return None
    data = event_data(event)
    try:
        chunk = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(chunk, dict) or not isinstance(chunk.get("error"), dict):
        return None
    message = chunk["error"].get("message")
    return str(message) if message else orjson.dumps(chunk["error"]).decode()


def error_event(err: GatewayError) -> bytes:
    """An error inside a stream, as OpenAI sends it (a data event with ``error``)."""
    return encode({"error": {"message": err.message, "type": err.type, "param": err.param,
                             "code": err.code}})
