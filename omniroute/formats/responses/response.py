"""Responses ``response`` objects <-> canonical answers, usage, errors and lifecycle frames."""

from __future__ import annotations

import time
from typing import Any

from omniroute.formats import canonical as c
from omniroute.formats.ids import new_id
from omniroute.formats.json_text import json_object
from omniroute.formats.responses.items import decode_call, decode_content, decode_reasoning
from omniroute.formats.responses.names import NAME, ToolIndex
from omniroute.formats.responses.request import (
    encode_reasoning,
    encode_text_format,
    encode_tool_choice,
    instructions_of,
)
from omniroute.formats.responses.tools import encode_tools
from omniroute.sse import event_data

INCOMPLETE = {"max_tokens": "max_output_tokens", "content_filter": "content_filter"}
FAILED = {"code": "server_error", "message": "The model stopped with an error."}


def now() -> int:
    """The ``created_at`` of an answer whose upstream gave none."""
    return int(time.time())


def response_status(stop_reason: str | None) -> str:
    if stop_reason == "error":
        return "failed"
    return "incomplete" if stop_reason in INCOMPLETE else "completed"


def response_shell(
    resp_id: str, model: str, created: int | None, request: c.Request, *, status: str,
    output: list[dict[str, Any]], usage: dict[str, Any] | None, incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A full ``response`` object, echoing the request's settings as the API does."""
    meta = request.meta.get(NAME) or {}
    tools = ToolIndex(request.tools)
    choice = encode_tool_choice(request.tool_choice, tools, meta)
    reasoning = encode_reasoning(request.reasoning, meta) or {}
    text: dict[str, Any] = {"format": encode_text_format(request.response_format)}
    if meta.get("verbosity"):
        text["verbosity"] = meta["verbosity"]
    created_at = created if created is not None else now()
    out = {
        "id": resp_id if resp_id.startswith("resp_") else "resp_" + resp_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": instructions_of(request),
        "max_output_tokens": request.max_tokens,
        "model": model,
        "output": output,
        "parallel_tool_calls": request.parallel_tool_calls
        if request.parallel_tool_calls is not None else True,
        "previous_response_id": meta.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": meta.get("store", True),
        "temperature": request.temperature if request.temperature is not None else 1.0,
        "text": text,
        "tool_choice": choice if choice is not None else "auto",
        "tools": encode_tools(request.tools),
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "truncation": meta.get("truncation", "disabled"),
        "usage": usage,
        "user": request.user,
        "metadata": request.metadata,
    }
    if status == "completed":
        out["completed_at"] = created_at
    return out


def decode_response_object(data: dict[str, Any]) -> c.Response:
    parts: list[c.Part] = []
    saw_call = saw_refusal = False
    for item in data.get("output") or []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            for part in decode_content(item.get("content") or [], item):
                parts.append(part)
                saw_refusal = saw_refusal or bool((part.meta.get(NAME) or {}).get("refusal"))
        elif kind in ("function_call", "custom_tool_call"):
            parts.append(decode_call(item))
            saw_call = True
        elif kind == "reasoning":
            reasoning = decode_reasoning(item)
            if reasoning.text or reasoning.encrypted or any(reasoning.summary):
                parts.append(reasoning)  # an empty item (no summary asked, store on) says nothing
    status = data.get("status")
    reason = (data.get("incomplete_details") or {}).get("reason")
    stop: c.StopReason
    if status == "incomplete":
        stop = "content_filter" if reason == "content_filter" else "max_tokens"
    elif saw_call:
        stop = "tool_use"
    elif saw_refusal:
        stop = "refusal"
    else:
        stop = "end_turn"
    created = data.get("created_at")
    return c.Response(
        id=str(data.get("id") or new_id("resp_")), model=str(data.get("model") or ""),
        parts=parts, stop_reason=stop, usage=usage_from_object(data.get("usage")),
        created=int(created) if isinstance(created, (int, float)) else None,
    )


def usage_from_object(usage: Any) -> c.Usage:
    if not isinstance(usage, dict):
        return c.Usage()
    in_details = usage.get("input_tokens_details") or {}
    out_details = usage.get("output_tokens_details") or {}
    return c.Usage(
        input_tokens=usage.get("input_tokens"),
        output_tokens=usage.get("output_tokens"),
        cache_read_tokens=in_details.get("cached_tokens") if isinstance(in_details, dict) else None,
        cache_write_tokens=in_details.get("cache_write_tokens")
        if isinstance(in_details, dict) else None,
        reasoning_tokens=out_details.get("reasoning_tokens")
        if isinstance(out_details, dict) else None,
    )


def usage_object(usage: c.Usage) -> dict[str, Any]:
    inp, out = usage.input_tokens or 0, usage.output_tokens or 0
    in_details: dict[str, Any] = {"cached_tokens": usage.cache_read_tokens or 0}
    if usage.cache_write_tokens is not None:
        in_details["cache_write_tokens"] = usage.cache_write_tokens
    return {
        "input_tokens": inp,
        "input_tokens_details": in_details,
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
        "total_tokens": inp + out,
    }


def frame_json(frame: bytes) -> dict[str, Any] | None:
    data = event_data(frame)
    return json_object(data) if data else None


def error_message(error: Any) -> str | None:
    if isinstance(error, dict):
        message = error.get("message")
        return str(message) if message else None
    return str(error) if error else None


def response_from_frame(frame: bytes) -> dict[str, Any] | None:
    """The ``response`` object a lifecycle event carries (``response.completed``…), or None."""
    data = frame_json(frame)
    if data is None or not isinstance(data.get("response"), dict):
        return None
    return data["response"]
