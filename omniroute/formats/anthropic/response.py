"""Anthropic Messages answers <-> canonical: JSON answers, usage, thinking blocks, errors.

Usage: canonical ``input_tokens`` counts every prompt token, so decoding adds
Anthropic's ``input_tokens``, ``cache_read_input_tokens`` and
``cache_creation_input_tokens``, and encoding subtracts the cache counts again.
Error types follow the documented status table (400 ``invalid_request_error``,
401 ``authentication_error``, 402 ``billing_error``, 403 ``permission_error``,
404 ``not_found_error``, 413 ``request_too_large``, 429 ``rate_limit_error``,
500 ``api_error``, 504 ``timeout_error``, 529 ``overloaded_error``; 503 is sent
as ``overloaded_error`` too, which clients retry).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from omniroute.errors import GatewayError, UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.ids import new_id
from omniroute.formats.tools import args_object

NAME = "anthropic"

STOP_REASONS: dict[str, c.StopReason] = {
    "end_turn": "end_turn", "max_tokens": "max_tokens", "stop_sequence": "stop_sequence",
    "tool_use": "tool_use", "pause_turn": "pause_turn", "refusal": "refusal",
    "model_context_window_exceeded": "max_tokens",
}
_ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
    504: "timeout_error", 529: "overloaded_error",
}
_KNOWN_ERROR_TYPES = frozenset(_ERROR_TYPES.values())


# ============================================================================ blocks

def text_block(part: c.Text) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part.text}
    citations = part.meta.get(NAME, {}).get("citations")
    if citations:
        block["citations"] = citations
    if part.cache_control:
        block["cache_control"] = part.cache_control
    return block


def decode_thinking_block(block: Mapping[str, Any]) -> c.Reasoning:
    """A thinking / redacted_thinking block (client- or upstream-side) as canonical reasoning."""
    if block.get("type") == "redacted_thinking":
        return c.Reasoning(redacted=block.get("data"), source=NAME)
    text = block.get("thinking") or ""
    signature = block.get("signature") or None
    carried = carry.unpack(signature)
    if carried is not None:  # another format's reasoning, handed back by our client
        return dataclasses.replace(carried, text=text)
    return c.Reasoning(text=text, signature=signature, source=NAME)


# ============================================================================ answers


def decode_usage(raw: Any) -> c.Usage:
    """Canonical usage from an Anthropic ``usage`` (input counts every prompt token)."""
    if not isinstance(raw, dict):
        return c.Usage()
    read, write = _int(raw.get("cache_read_input_tokens")), _int(
        raw.get("cache_creation_input_tokens"))
    fresh = _int(raw.get("input_tokens"))
    details = raw.get("output_tokens_details")
    return c.Usage(
        input_tokens=None if fresh is None else fresh + (read or 0) + (write or 0),
        output_tokens=_int(raw.get("output_tokens")),
        cache_read_tokens=read,
        cache_write_tokens=write,
        reasoning_tokens=_int(details.get("thinking_tokens")) if isinstance(details, dict)
        else None,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def encode_usage(usage: c.Usage, *, output: bool = True) -> dict[str, Any]:
    """An Anthropic ``usage``: ``input_tokens`` excludes cache reads and writes."""
    read, write = usage.cache_read_tokens, usage.cache_write_tokens
    out: dict[str, Any] = {}
    if usage.input_tokens is not None:
        out["input_tokens"] = max(0, usage.input_tokens - (read or 0) - (write or 0))
    if write is not None:
        out["cache_creation_input_tokens"] = write
    if read is not None:
        out["cache_read_input_tokens"] = read
    if output:
        out["output_tokens"] = usage.output_tokens or 0
        if usage.reasoning_tokens is not None:
            out["output_tokens_details"] = {"thinking_tokens": usage.reasoning_tokens}
    return out


def stop_reason(stop: c.StopReason | None, has_calls: bool) -> str:
    """The client-side stop reason; a turn that made tool calls ends with ``tool_use``."""
    if has_calls and stop in (None, "end_turn", "stop_sequence"):
        return "tool_use"
    if stop == "content_filter":
        return "refusal"
    return stop if stop in STOP_REASONS and stop != "error" else "end_turn"


def decode_response(body: bytes) -> c.Response:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream answered with a body that is not JSON.") from None
    if not isinstance(data, dict):
        raise UpstreamError("The upstream answered with JSON that is not an object.")
    if data.get("type") == "error":
        raise upstream_error(data.get("error"))
    content = data.get("content")
    if not isinstance(content, list):
        raise UpstreamError("The upstream answer has no content.")
    parts: list[c.Part] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            text = c.Text(block["text"])
            if block.get("citations"):
                text.meta[NAME] = {"citations": block["citations"]}
            parts.append(text)
        elif kind in ("thinking", "redacted_thinking"):
            parts.append(decode_thinking_block(block))
        elif kind == "tool_use":
            parts.append(c.ToolCall(block.get("id") or new_id("toolu_"), block.get("name") or "",
                                    orjson.dumps(block.get("input") or {}).decode()))
    return c.Response(
        id=data.get("id") or new_id("msg_"),
        model=data.get("model") or "",
        parts=parts,
        stop_reason=STOP_REASONS.get(data.get("stop_reason") or "end_turn", "end_turn"),
        stop_sequence=data.get("stop_sequence"),
        usage=decode_usage(data.get("usage")),
    )


def upstream_error(error: Any) -> UpstreamError:
    """An in-band Anthropic error object as a gateway error (message kept)."""
    if not isinstance(error, dict):
        return UpstreamError(f"Upstream error: {error}")
    kind = error.get("type")
    return UpstreamError(f"Upstream error: {error.get('message') or kind}",
                         code=kind if isinstance(kind, str) else None)


def client_thinking(part: c.Reasoning) -> dict[str, Any]:
    """A reasoning part as a block for an Anthropic client (see the module doc)."""
    if part.source == NAME:
        if part.redacted:
            return {"type": "redacted_thinking", "data": part.redacted}
        return {"type": "thinking", "thinking": part.text, "signature": part.signature or ""}
    text = part.text or "\n\n".join(part.summary)
    signature = carry.pack(dataclasses.replace(part, text="")) if part.source else ""
    return {"type": "thinking", "thinking": text, "signature": signature}


def encode_response(response: c.Response) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    has_calls = False
    for part in response.parts:
        if isinstance(part, c.Text):
            content.append(text_block(dataclasses.replace(part, cache_control=None)))
        elif isinstance(part, c.Reasoning):
            content.append(client_thinking(part))
        elif isinstance(part, c.ToolCall):
            has_calls = True
            content.append({"type": "tool_use", "id": part.id, "name": part.name,
                            "input": args_object(part.arguments)})
    return {
        "id": response.id,
        "type": "message",
        "role": "assistant",
        "model": response.model,
        "content": content,
        "stop_reason": stop_reason(response.stop_reason, has_calls),
        "stop_sequence": response.stop_sequence,
        "usage": encode_usage(response.usage),
    }


# ============================================================================ errors


def error_type(err: GatewayError) -> str:
    """Anthropic's error type for ``err`` (by status; the error's own type otherwise)."""
    if err.status in _ERROR_TYPES:
        return _ERROR_TYPES[err.status]
    if err.type in _KNOWN_ERROR_TYPES:
        return err.type
    return "api_error" if err.status >= 500 else "invalid_request_error"


def error_object(err: GatewayError) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "error",
                            "error": {"type": error_type(err), "message": err.message}}
    if err.details is not None:
        body["error"]["details"] = dict(err.details)
    request_id = err.headers.get("X-OmniRoute-Request-Id")
    if request_id:
        body["request_id"] = request_id
    return body
