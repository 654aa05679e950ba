"""OpenAI Chat Completions answers <-> canonical: JSON answers, usage, finish reasons.

Reasoning in a message: ``reasoning_details`` (OpenRouter) when present, else
``reasoning_content`` (DeepSeek…) or ``reasoning``, all as
``Reasoning(source="openai")``. Usage also reads DeepSeek's
``prompt_cache_hit_tokens`` and OpenRouter's ``prompt_tokens_details.cache_write_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.ids import new_id

NAME = "openai"


FINISH_TO_STOP: dict[str, c.StopReason] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "content_filter",
}
STOP_TO_FINISH: dict[str | None, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
    "tool_use": "tool_calls", "content_filter": "content_filter", "refusal": "content_filter",
    "pause_turn": "stop", "error": "stop", None: "stop",
}


def arguments_text(value: Any) -> str:
    """Tool-call arguments as JSON text, from what an upstream sent (text or an object)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def decode_reasoning_fields(m: Mapping[str, Any]) -> list[c.Part]:
    """Reasoning parts of an assistant message (or a response message)."""
    details = m.get("reasoning_details")
    if isinstance(details, list) and details:
        parts: list[c.Part] = []
        for d in details:
            if not isinstance(d, dict):
                continue
            kind = d.get("type")
            part = c.Reasoning(source=NAME, meta={NAME: {"detail": d}})
            if kind == "reasoning.text":
                part.text, part.signature = d.get("text") or "", d.get("signature") or None
            elif kind == "reasoning.summary":
                part.summary = [d["summary"]] if isinstance(d.get("summary"), str) else []
            elif kind == "reasoning.encrypted":
                part.encrypted = d.get("data") if isinstance(d.get("data"), str) else None
            parts.append(part)
        return parts
    for key in ("reasoning_content", "reasoning"):
        text = m.get(key)
        if isinstance(text, str) and text:
            return [c.Reasoning(text=text, source=NAME)]
    return []


# ============================================================================ answers


def decode_usage(raw: Any) -> c.Usage:
    """A canonical usage from an OpenAI ``usage`` object (also DeepSeek's and OpenRouter's)."""
    if not isinstance(raw, dict):
        return c.Usage()
    # (an int from JSON is exactly an int: ``type() is int`` also leaves bools out)
    value = raw.get("prompt_tokens")
    prompt_tokens = value if type(value) is int else None
    value = raw.get("completion_tokens")
    completion_tokens = value if type(value) is int else None
    cache_read = cache_write = reasoning = None
    details = raw.get("prompt_tokens_details")
    if type(details) is dict:
        value = details.get("cached_tokens")
        cache_read = value if type(value) is int else None
        value = details.get("cache_write_tokens")
        cache_write = value if type(value) is int else None
    if cache_read is None:
        cache_read = _int(raw.get("prompt_cache_hit_tokens"))  # DeepSeek
    details = raw.get("completion_tokens_details")
    if type(details) is dict:
        value = details.get("reasoning_tokens")
        reasoning = value if type(value) is int else None
    return c.Usage(prompt_tokens, completion_tokens, cache_read, cache_write, reasoning)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


def encode_usage(usage: c.Usage) -> dict[str, Any]:
    prompt, completion = usage.input_tokens or 0, usage.output_tokens or 0
    out: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    details: dict[str, int] = {}
    if usage.cache_read_tokens is not None:
        details["cached_tokens"] = usage.cache_read_tokens
    if usage.cache_write_tokens is not None:
        details["cache_write_tokens"] = usage.cache_write_tokens
    if details:
        out["prompt_tokens_details"] = details
    if usage.reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def finish_reason(stop: c.StopReason | None, has_calls: bool) -> str:
    """The client-side finish reason; a turn that made tool calls ends with ``tool_calls``."""
    if has_calls and stop in (None, "end_turn", "stop_sequence"):
        return "tool_calls"
    return STOP_TO_FINISH.get(stop, "stop")


def decode_response(body: bytes) -> c.Response:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream answered with a body that is not JSON.") from None
    if not isinstance(data, dict):
        raise UpstreamError("The upstream answered with JSON that is not an object.")
    error = data.get("error")
    if error and not data.get("choices"):
        message = error.get("message") if isinstance(error, dict) else error
        raise UpstreamError(f"Upstream error: {message}")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("The upstream answer has no choices.")
    choice = choices[0]
    message = choice.get("message") or {}
    parts: list[c.Part] = decode_reasoning_fields(message)
    content = message.get("content")
    if isinstance(content, str) and content:
        parts.append(c.Text(content))
    elif isinstance(content, list):
        parts.extend(c.Text(p["text"]) for p in content
                     if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"])
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(c.Text(refusal))
    for call in message.get("tool_calls") or []:
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise UpstreamError("The upstream answer has a tool call without a name.")
        parts.append(c.ToolCall(call.get("id") or new_id("call_"), fn["name"],
                                arguments_text(fn.get("arguments"))))
    return c.Response(
        id=data.get("id") or new_id("chatcmpl-"),
        model=data.get("model") or "",
        parts=parts,
        stop_reason=FINISH_TO_STOP.get(choice.get("finish_reason") or "stop", "end_turn"),
        usage=decode_usage(data.get("usage")),
        created=_int(data.get("created")),
    )


def tool_calls(calls: list[c.ToolCall]) -> list[dict[str, Any]]:
    """``calls`` as a message's ``tool_calls`` (an answer's, or an assistant turn sent back)."""
    return [{"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
            for t in calls]


def encode_response(response: c.Response) -> dict[str, Any]:
    texts = [p.text for p in response.parts if isinstance(p, c.Text)]
    calls = [p for p in response.parts if isinstance(p, c.ToolCall)]
    reasoning = "".join(p.text or "".join(p.summary) for p in response.parts
                        if isinstance(p, c.Reasoning))
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = tool_calls(calls)
    return {
        "id": response.id,
        "object": "chat.completion",
        "created": response.created if response.created is not None else int(time.time()),
        "model": response.model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason(response.stop_reason, bool(calls))}],
        "usage": encode_usage(response.usage),
    }
