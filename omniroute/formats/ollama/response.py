"""Ollama answers <-> canonical: the final chunk, usage, stop reasons and tool calls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.ids import new_id, stable_id
from omniroute.formats.json_text import dumps, json_object
from omniroute.formats.tools import args_object

NAME = "ollama"
_DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")


def now() -> str:
    """An Ollama ``created_at`` timestamp (RFC 3339, UTC)."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def line(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data) + b"\n"


def usage_from_chunk(chunk: dict[str, Any]) -> c.Usage:
    return c.Usage(input_tokens=chunk.get("prompt_eval_count"),
                   output_tokens=chunk.get("eval_count"))


def done_reason(stop: str | None) -> str:
    return "length" if stop == "max_tokens" else "stop"


def stop_reason(reason: Any, saw_call: bool) -> c.StopReason:
    if reason == "length":
        return "max_tokens"
    return "tool_use" if saw_call else "end_turn"


def decode_tool_call(call: dict[str, Any], fallback_id: str) -> c.ToolCall:
    function = call.get("function") or {}
    args = function.get("arguments")
    arguments = args if isinstance(args, str) else dumps(args if args is not None else {})
    # meta["ollama"] marks a call Ollama made; without an "id" there it had none
    return c.ToolCall(id=str(call.get("id") or fallback_id), name=str(function.get("name") or ""),
                      arguments=arguments,
                      meta={NAME: {"id": call["id"]} if call.get("id") else {}})


def encode_tool_call(call: c.ToolCall, *, upstream: bool = False) -> dict[str, Any]:
    """An Ollama tool call; upstream, one Ollama made without an id stays without."""
    function = {"name": call.name, "arguments": args_object(call.arguments)}
    out: dict[str, Any] = {"id": call.id, "function": function}
    if upstream and NAME in call.meta and not call.meta[NAME].get("id"):
        del out["id"]
    return out


def texts(parts: list[c.Part]) -> str:
    return "\n\n".join(p.text for p in parts if isinstance(p, c.Text))


def final(model: str, stop: str | None, usage: c.Usage, meta: dict[str, Any],
           message: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": now(),
                           "message": message or {"role": "assistant", "content": ""},
                           "done": True, "done_reason": done_reason(stop)}
    durations = (meta.get(NAME) or {}).get("durations") or {}
    out.update(durations)
    if usage.input_tokens is not None:
        out["prompt_eval_count"] = usage.input_tokens
    if usage.output_tokens is not None:
        out["eval_count"] = usage.output_tokens
    return out


def encode_response(response: c.Response, request: c.Request) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": texts(response.parts)}
    thinking = "".join(p.text or "\n\n".join(p.summary) for p in response.parts
                       if isinstance(p, c.Reasoning))
    if thinking:
        message["thinking"] = thinking
    calls = [encode_tool_call(p) for p in response.parts if isinstance(p, c.ToolCall)]
    if calls:
        message["tool_calls"] = calls
    return orjson.dumps(final(response.model or request.model, response.stop_reason,
                              response.usage, response.meta, message))


def decode_response(body: bytes) -> c.Response:
    data = json_object(body)
    if data is None:
        raise UpstreamError("The upstream answered with a body that is not a JSON object.")
    if data.get("error"):
        raise UpstreamError(str(data["error"]))
    message = data.get("message") or {}
    parts: list[c.Part] = []
    if message.get("thinking"):
        parts.append(c.Reasoning(text=str(message["thinking"]), source=NAME))
    if message.get("content"):
        parts.append(c.Text(str(message["content"])))
    seed = data.get("created_at")
    for i, call in enumerate(message.get("tool_calls") or []):
        if isinstance(call, dict):
            parts.append(decode_tool_call(call, stable_id("call_", seed, i)))
    durations = {k: data[k] for k in _DURATIONS if k in data}
    return c.Response(
        id=new_id("chat_"), model=str(data.get("model") or ""), parts=parts,
        stop_reason=stop_reason(data.get("done_reason"),
                                any(isinstance(p, c.ToolCall) for p in parts)),
        usage=usage_from_chunk(data),
        meta={NAME: {"durations": durations}} if durations else {},
    )
