"""Responses API streams: canonical events to typed SSE events, and back.

A Responses stream is ``response.created``, ``response.in_progress``, then per
output item ``response.output_item.added`` … ``response.output_item.done``
(with content parts, text / argument / reasoning deltas in between), and
finally ``response.completed`` (or ``response.incomplete`` / ``response.failed``)
carrying the whole response object. Every event has a ``sequence_number``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.ids import new_id
from omniroute.formats.json_text import dumps
from omniroute.formats.responses.items import (
    call_item,
    content_part,
    decode_call,
    reasoning_item,
    text_item_key,
    text_meta,
)
from omniroute.formats.responses.names import NAME, ToolIndex
from omniroute.formats.responses.response import (
    FAILED,
    error_message,
    frame_json,
    response_shell,
    response_status,
    usage_from_object,
    usage_object,
)
from omniroute.formats.responses.tools import custom_input
from omniroute.formats.streams import closing
from omniroute.sse import encode

_INCOMPLETE = {"max_tokens": "max_output_tokens", "content_filter": "content_filter"}
#: between two summary parts the decoder emits this summary delta; the encoder splits on it
SUMMARY_BREAK = "\n\n"


# ---------------------------------------------------------------------------- encoding


@dataclass
class _Message:
    item_id: str
    output_index: int
    key: Any
    phase: str | None
    contents: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Open:
    """One canonical part being streamed."""

    kind: str  # text / reasoning / call
    output_index: int
    item_id: str
    part: Any = None
    content_index: int = 0
    buffer: str = ""
    summaries: list[str] = field(default_factory=list)
    summary_open: bool = False
    raw: str = ""
    raw_open: bool = False
    custom: bool = False
    signature: str | None = None
    encrypted: str | None = None
    #: a text part's ``output_text.delta`` frame up to its delta (made at its first)
    delta_head: bytes | None = None


class Encoder:
    def __init__(self, request: c.Request) -> None:
        self.request = request
        self.tools = ToolIndex(request.tools)
        self.seq = 0
        self.resp_id = ""
        self.model = request.model
        self.created: int | None = None
        self.output: list[dict[str, Any] | None] = []
        self.message: _Message | None = None
        self.open: dict[int, _Open] = {}

    def _event(self, kind: str, **data: Any) -> bytes:
        frame = encode({"type": kind, **data, "sequence_number": self.seq}, event=kind)
        self.seq += 1
        return frame

    def _shell(self, status: str, usage: c.Usage | None, stop: str | None = None) -> dict[str, Any]:
        output = [item for item in self.output if item is not None]
        return response_shell(
            self.resp_id, self.model, self.created, self.request, status=status, output=output,
            usage=usage_object(usage) if usage is not None else None,
            incomplete=_INCOMPLETE.get(stop or "") if status == "incomplete" else None,
            error=FAILED if status == "failed" else None,
        )

    def feed(self, event: c.Event) -> list[bytes]:
        if isinstance(event, c.Start):
            self.resp_id = event.id if event.id.startswith("resp_") else "resp_" + event.id
            self.model = event.model or self.model
            self.created = event.created
            shell = self._shell("in_progress", None)
            return [self._event("response.created", response=shell),
                    self._event("response.in_progress", response=shell)]
        if isinstance(event, c.PartStart):
            return self._start(event)
        if isinstance(event, c.TextDelta):
            return self._text(event)
        if isinstance(event, c.ReasoningDelta):
            return self._reasoning(event)
        if isinstance(event, c.ToolArgsDelta):
            return self._args(event)
        if isinstance(event, c.PartStop):
            return self._stop(event.index)
        if isinstance(event, c.Finish):
            return self._finish(event)
        return []

    def _new_item(self, item: dict[str, Any]) -> tuple[int, bytes]:
        index = len(self.output)
        self.output.append(None)
        return index, self._event("response.output_item.added", output_index=index, item=item)

    def _close_message(self) -> list[bytes]:
        message = self.message
        if message is None:
            return []
        self.message = None
        item: dict[str, Any] = {"id": message.item_id, "type": "message", "status": "completed",
                                "role": "assistant", "content": message.contents}
        if message.phase:
            item["phase"] = message.phase
        self.output[message.output_index] = item
        return [self._event("response.output_item.done", output_index=message.output_index,
                            item=item)]

    def _start(self, event: c.PartStart) -> list[bytes]:
        part = event.part
        frames: list[bytes] = []
        if isinstance(part, c.Text):
            key = text_item_key(part)
            if self.message is not None and (key is None or key != self.message.key):
                frames += self._close_message()
            if self.message is None:
                phase = (part.meta.get(NAME) or {}).get("phase")
                item_id = key or new_id("msg_")
                added: dict[str, Any] = {"id": item_id, "type": "message",
                                         "status": "in_progress", "role": "assistant",
                                         "content": []}
                if phase:
                    added["phase"] = phase
                index, frame = self._new_item(added)
                frames.append(frame)
                self.message = _Message(item_id, index, key, phase)
            message = self.message
            empty = content_part(c.Text("", meta=part.meta))
            state = _Open("text", message.output_index, message.item_id, part,
                          content_index=len(message.contents))
            message.contents.append(empty)
            self.open[event.index] = state
            frames.append(self._event("response.content_part.added", item_id=state.item_id,
                                      output_index=state.output_index,
                                      content_index=state.content_index, part=empty))
            return frames
        frames += self._close_message()
        if isinstance(part, c.Reasoning):
            item_id = (part.meta.get(NAME) or {}).get("id") or new_id("rs_")
            index, frame = self._new_item({"id": item_id, "type": "reasoning", "summary": []})
            self.open[event.index] = _Open("reasoning", index, item_id, part)
            return [*frames, frame]
        # a tool call
        item = call_item(c.ToolCall(part.id, part.name, "", meta=part.meta), self.tools,
                         status="in_progress")
        if item["type"] == "custom_tool_call":
            item["input"] = ""
        index, frame = self._new_item(item)
        self.open[event.index] = _Open("call", index, item["id"], part,
                                       custom=item["type"] == "custom_tool_call")
        return [*frames, frame]

    def _text(self, event: c.TextDelta) -> list[bytes]:
        state = self.open.get(event.index)
        if state is None or state.kind != "text" or not event.text:
            return []
        state.buffer += event.text
        head = state.delta_head
        if head is not None:  # the frame _event makes, with the text alone serialised
            seq, self.seq = self.seq, self.seq + 1
            return [head + orjson.dumps(event.text) + b',"logprobs":[],"sequence_number":%d}'
                    b"\n\n" % seq]
        kind = "response.refusal.delta" if (state.part.meta.get(NAME) or {}).get("refusal") \
            else "response.output_text.delta"
        extra: dict[str, Any] = {} if kind == "response.refusal.delta" else {"logprobs": []}
        if extra:
            state.delta_head = (
                b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                b'"item_id":%s,"output_index":%d,"content_index":%d,"delta":' % (
                    orjson.dumps(state.item_id), state.output_index, state.content_index))
        return [self._event(kind, item_id=state.item_id, output_index=state.output_index,
                            content_index=state.content_index, delta=event.text, **extra)]

    def _summary_delta(self, state: _Open, text: str) -> list[bytes]:
        frames: list[bytes] = []
        if not state.summary_open:
            state.summaries.append("")
            state.summary_open = True
            frames.append(self._event(
                "response.reasoning_summary_part.added", item_id=state.item_id,
                output_index=state.output_index, summary_index=len(state.summaries) - 1,
                part={"type": "summary_text", "text": ""}))
        state.summaries[-1] += text
        frames.append(self._event(
            "response.reasoning_summary_text.delta", item_id=state.item_id,
            output_index=state.output_index, summary_index=len(state.summaries) - 1, delta=text))
        return frames

    def _close_summary(self, state: _Open) -> list[bytes]:
        if not state.summary_open:
            return []
        state.summary_open = False
        at = {"item_id": state.item_id, "output_index": state.output_index,
              "summary_index": len(state.summaries) - 1}
        text = state.summaries[-1]
        return [
            self._event("response.reasoning_summary_text.done", **at, text=text),
            self._event("response.reasoning_summary_part.done", **at,
                        part={"type": "summary_text", "text": text}),
        ]

    def _reasoning(self, event: c.ReasoningDelta) -> list[bytes]:
        state = self.open.get(event.index)
        if state is None or state.kind != "reasoning":
            return []
        part: c.Reasoning = state.part
        own = part.source == NAME
        frames: list[bytes] = []
        if event.text:
            if own:
                if not state.raw_open:
                    state.raw_open = True
                    frames.append(self._event(
                        "response.content_part.added", item_id=state.item_id,
                        output_index=state.output_index, content_index=0,
                        part={"type": "reasoning_text", "text": ""}))
                state.raw += event.text
                frames.append(self._event(
                    "response.reasoning_text.delta", item_id=state.item_id,
                    output_index=state.output_index, content_index=0, delta=event.text))
            else:
                state.raw += event.text
                frames += self._summary_delta(state, event.text)
        if event.summary == SUMMARY_BREAK:
            frames += self._close_summary(state)  # the decoder's mark between summary parts
        elif event.summary:
            frames += self._summary_delta(state, event.summary)
        if event.signature:
            state.signature = (state.signature or "") + event.signature
        if event.encrypted:
            state.encrypted = (state.encrypted or "") + event.encrypted
        return frames

    def _args(self, event: c.ToolArgsDelta) -> list[bytes]:
        state = self.open.get(event.index)
        if state is None or state.kind != "call" or not event.arguments:
            return []
        state.buffer += event.arguments
        if state.custom:
            return []
        return [self._event("response.function_call_arguments.delta", item_id=state.item_id,
                            output_index=state.output_index, delta=event.arguments)]

    def _stop(self, index: int) -> list[bytes]:
        state = self.open.pop(index, None)
        if state is None:
            return []
        where = {"item_id": state.item_id, "output_index": state.output_index}
        if state.kind == "text":
            done = content_part(c.Text(state.buffer, meta=state.part.meta))
            assert self.message is not None
            self.message.contents[state.content_index] = done
            at = {**where, "content_index": state.content_index}
            if done["type"] == "refusal":
                first = self._event("response.refusal.done", **at, refusal=state.buffer)
            else:
                first = self._event("response.output_text.done", **at, text=state.buffer,
                                    logprobs=[])
            return [first, self._event("response.content_part.done", **at, part=done)]
        frames: list[bytes] = []
        if state.kind == "reasoning":
            frames += self._close_summary(state)
            if state.raw_open:
                at = {**where, "content_index": 0}
                frames += [
                    self._event("response.reasoning_text.done", **at, text=state.raw),
                    self._event("response.content_part.done", **at,
                                part={"type": "reasoning_text", "text": state.raw}),
                ]
            part: c.Reasoning = state.part
            reasoning = c.Reasoning(text=state.raw, signature=state.signature or part.signature,
                                    redacted=part.redacted,
                                    encrypted=state.encrypted or part.encrypted,
                                    summary=state.summaries,
                                    source=part.source, meta=part.meta)
            item = reasoning_item(reasoning, state.item_id)
        else:
            call: c.ToolCall = state.part
            item = call_item(c.ToolCall(call.id, call.name, state.buffer, meta=call.meta),
                             self.tools)
            if state.custom:
                value = custom_input(state.buffer)
                frames += [
                    self._event("response.custom_tool_call_input.delta", **where, delta=value),
                    self._event("response.custom_tool_call_input.done", **where, input=value),
                ]
            else:
                frames.append(self._event("response.function_call_arguments.done", **where,
                                          arguments=state.buffer))
        self.output[state.output_index] = item
        frames.append(self._event("response.output_item.done", output_index=state.output_index,
                                  item=item))
        return frames

    def _finish(self, event: c.Finish) -> list[bytes]:
        frames: list[bytes] = []
        for index in sorted(self.open, key=lambda i: self.open[i].output_index):
            frames += self._stop(index)
        frames += self._close_message()
        status = response_status(event.stop_reason)
        kind = {"completed": "response.completed", "incomplete": "response.incomplete",
                "failed": "response.failed"}[status]
        frames.append(self._event(kind, response=self._shell(status, event.usage,
                                                             event.stop_reason)))
        return frames


async def encode_stream(events: AsyncIterator[c.Event], request: c.Request) -> AsyncIterator[bytes]:
    encoder = Encoder(request)
    async with closing(events):
        async for event in events:
            for frame in encoder.feed(event):
                yield frame


# ---------------------------------------------------------------------------- decoding


@dataclass
class _Item:
    kind: str
    index: int = -1
    item: dict[str, Any] = field(default_factory=dict)
    got_args: bool = False
    custom_input: str = ""
    got_summary: bool = False


class _Decoder:
    def __init__(self) -> None:
        self.started = False
        self.finished = False
        self.next_index = 0
        self.items: dict[int, _Item] = {}
        self.texts: dict[tuple[int, int], int] = {}
        self.stopped: set[int] = set()
        self.saw_call = False
        self.saw_refusal = False

    def _index(self) -> int:
        self.next_index += 1
        return self.next_index - 1

    def _ensure_start(self, response: dict[str, Any] | None = None) -> list[c.Event]:
        if self.started:
            return []
        self.started = True
        response = response or {}
        created = response.get("created_at")
        return [c.Start(id=str(response.get("id") or new_id("resp_")),
                        model=str(response.get("model") or ""),
                        created=int(created) if isinstance(created, (int, float)) else None)]

    def _stop(self, index: int) -> list[c.Event]:
        if index < 0 or index in self.stopped:
            return []
        self.stopped.add(index)
        return [c.PartStop(index)]

    def feed(self, frame: bytes) -> list[c.Event]:
        data = frame_json(frame)
        if data is None or self.finished:
            return []
        kind = data.get("type")
        if kind == "error":
            raise UpstreamError(
                error_message(data.get("error") or data) or "The upstream stream failed.")
        if kind == "response.failed":
            error = (data.get("response") or {}).get("error")
            raise UpstreamError(error_message(error) or "The upstream response failed.")
        if kind in ("response.created", "response.in_progress", "response.queued"):
            return self._ensure_start(data.get("response"))
        out = self._ensure_start()
        oi = data.get("output_index", -1)
        index: int | None  # the canonical index of the part an event is about
        if kind == "response.output_item.added":
            out += self._item_added(oi, data.get("item") or {})
        elif kind == "response.content_part.added":
            entry = self.items.get(oi)
            part = data.get("part") or {}
            if entry is not None and entry.kind == "message" and part.get("type") in (
                    "output_text", "refusal"):
                index = self._index()
                self.texts[(oi, data.get("content_index", 0))] = index
                self.saw_refusal = self.saw_refusal or part.get("type") == "refusal"
                out.append(c.PartStart(index, c.Text("", meta=text_meta(entry.item, part))))
        elif kind in ("response.output_text.delta", "response.refusal.delta"):
            index = self.texts.get((oi, data.get("content_index", 0)))
            if index is not None and data.get("delta"):
                out.append(c.TextDelta(index, data["delta"]))
        elif kind == "response.content_part.done":
            index = self.texts.get((oi, data.get("content_index", 0)))
            if index is not None:
                out += self._stop(index)
        elif kind == "response.function_call_arguments.delta":
            entry = self.items.get(oi)
            if entry is not None and data.get("delta"):
                entry.got_args = True
                out.append(c.ToolArgsDelta(entry.index, data["delta"]))
        elif kind == "response.custom_tool_call_input.delta":
            entry = self.items.get(oi)
            if entry is not None:
                entry.custom_input += data.get("delta") or ""
        elif kind in ("response.reasoning_summary_part.added",
                      "response.reasoning_summary_text.delta", "response.reasoning_text.delta"):
            out += self._reasoning(kind, oi, data)
        elif kind == "response.output_item.done":
            out += self._item_done(oi, data.get("item") or {})
        elif kind in ("response.completed", "response.incomplete"):
            out += self._finish(data.get("response") or {})
        return out

    def _item_added(self, oi: int, item: dict[str, Any]) -> list[c.Event]:
        kind = item.get("type")
        if kind == "message":
            self.items[oi] = _Item("message", item=item)
            return []
        if kind in ("function_call", "custom_tool_call"):
            index = self._index()
            self.saw_call = True
            call = decode_call({**item, "call_id": item.get("call_id") or new_id("call_")})
            entry = _Item("call", index, item)
            self.items[oi] = entry
            events: list[c.Event] = [c.PartStart(index, c.ToolCall(call.id, call.name, "",
                                                                   meta=call.meta))]
            if kind == "function_call" and item.get("arguments"):
                entry.got_args = True
                events.append(c.ToolArgsDelta(index, item["arguments"]))
            return events
        if kind == "reasoning":  # started with its first content (an empty one carries nothing)
            self.items[oi] = _Item("reasoning", item=item)
            return []
        return []  # hosted tool calls (web_search_call…) have no canonical part

    def _reasoning_start(self, entry: _Item) -> list[c.Event]:
        if entry.index >= 0:
            return []
        entry.index = self._index()
        meta = {NAME: {"id": entry.item["id"]}} if entry.item.get("id") else {}
        return [c.PartStart(entry.index, c.Reasoning(source=NAME, meta=meta))]

    def _reasoning(self, kind: str, oi: int, data: dict[str, Any]) -> list[c.Event]:
        entry = self.items.get(oi)
        if entry is None or entry.kind != "reasoning":
            return []
        if kind == "response.reasoning_summary_part.added":
            if data.get("summary_index", 0) > 0 and entry.index >= 0:
                return [c.ReasoningDelta(entry.index, summary=SUMMARY_BREAK)]
            return []
        delta = data.get("delta") or ""
        if not delta:
            return []
        events = self._reasoning_start(entry)
        if kind == "response.reasoning_text.delta":
            return [*events, c.ReasoningDelta(entry.index, text=delta)]
        entry.got_summary = True
        return [*events, c.ReasoningDelta(entry.index, summary=delta)]

    def _item_done(self, oi: int, item: dict[str, Any]) -> list[c.Event]:
        entry = self.items.get(oi)
        if entry is None:
            return []
        events: list[c.Event] = []
        if entry.kind == "message":
            for (item_oi, _), index in self.texts.items():
                if item_oi == oi:
                    events += self._stop(index)
            return events
        if entry.kind == "reasoning":
            if not entry.got_summary:
                texts = [s.get("text", "") for s in item.get("summary") or []
                         if isinstance(s, dict)]
                for i, text in enumerate(texts):
                    if not text:
                        continue
                    events += self._reasoning_start(entry)
                    if i:
                        events.append(c.ReasoningDelta(entry.index, summary=SUMMARY_BREAK))
                    events.append(c.ReasoningDelta(entry.index, summary=text))
            if item.get("encrypted_content"):
                events += self._reasoning_start(entry)
                events.append(c.ReasoningDelta(entry.index, encrypted=item["encrypted_content"]))
            if entry.index < 0:
                return events  # an empty reasoning item: no part at all
        elif item.get("type") == "custom_tool_call":
            value = entry.custom_input or item.get("input") or ""
            events.append(c.ToolArgsDelta(entry.index, dumps({"input": value})))
        elif not entry.got_args and item.get("arguments"):
            events.append(c.ToolArgsDelta(entry.index, item["arguments"]))
        return events + self._stop(entry.index)

    def _finish(self, response: dict[str, Any]) -> list[c.Event]:
        events: list[c.Event] = []
        for index in range(self.next_index):
            events += self._stop(index)
        self.finished = True
        stop: c.StopReason
        if response.get("status") == "incomplete":
            reason = (response.get("incomplete_details") or {}).get("reason")
            stop = "content_filter" if reason == "content_filter" else "max_tokens"
        elif self.saw_call:
            stop = "tool_use"
        elif self.saw_refusal:
            stop = "refusal"
        else:
            stop = "end_turn"
        events.append(c.Finish(stop, usage_from_object(response.get("usage"))))
        return events


async def decode_stream(frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
    decoder = _Decoder()
    async with closing(frames):
        async for frame in frames:
            for event in decoder.feed(frame):
                yield event
    if not decoder.finished:
        raise UpstreamError("The upstream stream ended before the response was complete.")
