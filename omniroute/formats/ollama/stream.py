"""Ollama NDJSON streams <-> canonical stream events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.ids import new_id, stable_id
from omniroute.formats.json_text import json_object
from omniroute.formats.ollama.response import (
    NAME,
    decode_tool_call,
    encode_tool_call,
    final,
    line,
    now,
    stop_reason,
    usage_from_chunk,
)
from omniroute.formats.streams import closing


async def encode_stream(events: AsyncIterator[c.Event],
                        request: c.Request) -> AsyncIterator[bytes]:
    model = request.model
    calls: dict[int, c.ToolCall] = {}

    def chunk(**message: Any) -> bytes:
        return line({"model": model, "created_at": now(),
                     "message": {"role": "assistant", "content": "", **message},
                     "done": False})

    async with closing(events):
        async for event in events:
            if isinstance(event, c.Start):
                model = event.model or model
            elif isinstance(event, c.TextDelta) and event.text:
                yield chunk(content=event.text)
            elif isinstance(event, c.ReasoningDelta) and (event.text or event.summary):
                yield chunk(thinking=event.text + (event.summary or ""))
            elif isinstance(event, c.PartStart) and isinstance(event.part, c.ToolCall):
                calls[event.index] = c.ToolCall(event.part.id, event.part.name)
            elif isinstance(event, c.ToolArgsDelta) and event.index in calls:
                calls[event.index].arguments += event.arguments
            elif isinstance(event, c.PartStop) and event.index in calls:
                yield chunk(tool_calls=[encode_tool_call(calls.pop(event.index))])
            elif isinstance(event, c.Finish):
                yield line(final(model, event.stop_reason, event.usage, {}))


async def decode_stream(frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
    started = finished = saw_call = False
    open_part: tuple[str, int] | None = None
    next_index = 0
    async with closing(frames):
        async for frame in frames:
            for raw in frame.splitlines():
                chunk = json_object(raw) if raw.strip() else None
                if chunk is None or finished:
                    continue
                if chunk.get("error"):
                    raise UpstreamError(str(chunk["error"]))
                if not started:
                    started = True
                    yield c.Start(new_id("chat_"), str(chunk.get("model") or ""))
                message = chunk.get("message") or {}
                for kind, text in (("thinking", message.get("thinking")),
                                   ("text", message.get("content"))):
                    if not text:
                        continue
                    if open_part is None or open_part[0] != kind:
                        if open_part is not None:
                            yield c.PartStop(open_part[1])
                        open_part, next_index = (kind, next_index), next_index + 1
                        yield c.PartStart(open_part[1], c.Reasoning(source=NAME)
                                          if kind == "thinking" else c.Text(""))
                    if kind == "thinking":
                        yield c.ReasoningDelta(open_part[1], text=str(text))
                    else:
                        yield c.TextDelta(open_part[1], str(text))
                for call in message.get("tool_calls") or []:
                    if not isinstance(call, dict):
                        continue
                    if open_part is not None:
                        yield c.PartStop(open_part[1])
                        open_part = None
                    decoded = decode_tool_call(call, stable_id(
                        "call_", chunk.get("created_at"), next_index))
                    saw_call = True
                    yield c.PartStart(next_index, c.ToolCall(decoded.id, decoded.name,
                                                             meta=decoded.meta))
                    yield c.ToolArgsDelta(next_index, decoded.arguments)
                    yield c.PartStop(next_index)
                    next_index += 1
                if chunk.get("done"):
                    finished = True
                    if open_part is not None:
                        yield c.PartStop(open_part[1])
                        open_part = None
                    yield c.Finish(stop_reason(chunk.get("done_reason"), saw_call),
                                   usage_from_chunk(chunk))
    if not finished:
        raise UpstreamError("The upstream stream ended before it was done.")
