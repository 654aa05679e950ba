"""Anthropic Messages streams <-> canonical events.

Decoding follows the documented sequence (``message_start``, per block
``content_block_start`` / ``_delta`` / ``_stop``, ``message_delta``,
``message_stop``), skips ``ping`` and unknown events, and raises on an
``error`` event. Usage comes in two halves (input counts in ``message_start``,
output and sometimes cumulative input counts in ``message_delta``); server
tool blocks are skipped and the remaining blocks renumbered.

Encoding (for an Anthropic client) produces exactly that sequence. Anthropic
blocks are strictly sequential while canonical parts may interleave (an
OpenAI upstream streams parallel tool calls side by side), so one part is
streamed live at a time; a part that starts meanwhile is buffered and
written, start to stop, as soon as the live one stops. No part is ever split
across two blocks and no two parts share one.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.anthropic.response import (
    NAME,
    STOP_REASONS,
    decode_thinking_block,
    decode_usage,
    encode_usage,
    stop_reason,
    upstream_error,
)
from omniroute.formats.ids import new_id
from omniroute.sse import encode, event_data, event_name

# ============================================================================ decoding


async def decode_stream(frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
    started = False
    blocks: dict[int, int | None] = {}  # upstream block index -> canonical index (None: skipped)
    tools_without_args: set[int] = set()
    open_parts: list[int] = []
    index: int | None  # the canonical index of the block an event is about
    counters: dict[str, Any] = {}
    stop: str | None = None
    stop_sequence: str | None = None
    async for frame in frames:
        data = event_data(frame)
        if data is None:
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream stream has an event that is not JSON.") from None
        if not isinstance(event, dict):
            continue
        kind = event.get("type") or event_name(frame)
        if kind == "error":
            raise upstream_error(event.get("error"))
        if kind == "message_start":
            message = event.get("message") or {}
            sent = message.get("usage")
            usage: dict[str, Any] = sent if isinstance(sent, dict) else {}
            counters.update(usage)
            start_usage = decode_usage(usage)
            start_usage.output_tokens = None  # a placeholder until message_delta
            started = True
            yield c.Start(message.get("id") or new_id("msg_"), message.get("model") or "",
                          start_usage)
            continue
        if not started:
            if kind in ("ping", None):
                continue
            raise UpstreamError(f"The upstream stream sent {kind!r} before message_start.")
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            part = _part_of(block)
            if part is None:
                blocks[event.get("index", -1)] = None
                continue
            index = len([v for v in blocks.values() if v is not None])
            blocks[event.get("index", -1)] = index
            open_parts.append(index)
            yield c.PartStart(index, part)
            if isinstance(part, c.ToolCall):
                initial = block.get("input")
                if initial:  # some servers send the whole input up front
                    yield c.ToolArgsDelta(index, orjson.dumps(initial).decode())
                else:
                    tools_without_args.add(index)
        elif kind == "content_block_delta":
            index = blocks.get(event.get("index", -1))
            delta = event.get("delta") or {}
            if index is None or not isinstance(delta, dict):
                continue
            dtype = delta.get("type")
            if dtype == "text_delta" and delta.get("text"):
                yield c.TextDelta(index, delta["text"])
            elif dtype == "input_json_delta" and delta.get("partial_json"):
                tools_without_args.discard(index)
                yield c.ToolArgsDelta(index, delta["partial_json"])
            elif dtype == "thinking_delta" and delta.get("thinking"):
                yield c.ReasoningDelta(index, text=delta["thinking"])
            elif dtype == "signature_delta" and delta.get("signature"):
                yield c.ReasoningDelta(index, signature=delta["signature"])
        elif kind == "content_block_stop":
            index = blocks.get(event.get("index", -1))
            if index is not None and index in open_parts:
                if index in tools_without_args:  # a call without arguments: input {}
                    tools_without_args.discard(index)
                    yield c.ToolArgsDelta(index, "{}")
                open_parts.remove(index)
                yield c.PartStop(index)
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            stop = delta.get("stop_reason") or stop
            stop_sequence = delta.get("stop_sequence") or stop_sequence
            if isinstance(event.get("usage"), dict):
                counters.update({k: v for k, v in event["usage"].items() if v is not None})
        elif kind == "message_stop":
            for index in open_parts:
                yield c.PartStop(index)
            yield c.Finish(STOP_REASONS.get(stop or "end_turn", "end_turn"),
                           decode_usage(counters), stop_sequence)
            return
    raise UpstreamError("The upstream stream ended before message_stop.")


def _part_of(block: dict[str, Any]) -> c.Text | c.Reasoning | c.ToolCall | None:
    kind = block.get("type")
    if kind == "text":
        return c.Text(block.get("text") or "")
    if kind in ("thinking", "redacted_thinking"):
        return decode_thinking_block(block)
    if kind == "tool_use":
        return c.ToolCall(block.get("id") or new_id("toolu_"), block.get("name") or "")
    return None


# ============================================================================ encoding


@dataclass(slots=True)
class _Block:
    part: c.Text | c.Reasoning | c.ToolCall
    wire: int | None = None  # the block index on the wire, once opened
    held: list[c.Event] = field(default_factory=list)
    stopped: bool = False
    # foreign reasoning: opaque values gathered from deltas, packed into the signature
    opaque: c.Reasoning | None = None


class Encoder:
    def __init__(self, request: c.Request) -> None:
        self.model = request.model
        self.started = False
        self.blocks: dict[int, _Block] = {}
        self.live: int | None = None
        self.waiting: deque[int] = deque()
        self.next_wire = 0
        self.has_calls = False
        #: the live block's text delta frame up to its text, when the live part is text
        #: (the usual event is its delta, written with its text alone serialised)
        self.text_head: bytes | None = None

    def feed(self, event: c.Event) -> list[bytes]:
        if isinstance(event, c.TextDelta) and event.index == self.live and \
                self.text_head is not None:
            return [self.text_head + orjson.dumps(event.text) + b"}}\n\n"] if event.text \
                else []
        frames: list[bytes] = []
        if not self.started:
            frames += self._message_start(event if isinstance(event, c.Start) else None)
            if isinstance(event, c.Start):
                return frames
        if isinstance(event, c.PartStart):
            self.blocks[event.index] = _Block(event.part)
            if isinstance(event.part, c.ToolCall):
                self.has_calls = True
            if self.live is None:
                frames += self._open(event.index)
            else:
                self.waiting.append(event.index)
        elif isinstance(event, (c.TextDelta, c.ReasoningDelta, c.ToolArgsDelta)):
            block = self.blocks[event.index]
            if event.index == self.live:
                frames += self._delta(block, event)
            else:
                block.held.append(event)
        elif isinstance(event, c.PartStop):
            self.blocks[event.index].stopped = True
            if event.index == self.live:
                frames += self._close(event.index)
                frames += self._drain()
        elif isinstance(event, c.Finish):
            frames += self._finish(event)
        return frames

    def _message_start(self, start: c.Start | None) -> list[bytes]:
        self.started = True
        usage = encode_usage(start.usage, output=False) if start else {}
        usage.setdefault("input_tokens", 0)
        usage["output_tokens"] = 0
        message: dict[str, Any] = {
            "id": start.id if start and start.id else new_id("msg_"), "type": "message",
            "role": "assistant", "model": start.model if start and start.model else self.model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage,
        }
        return [encode({"type": "message_start", "message": message}, event="message_start")]

    def _open(self, index: int) -> list[bytes]:
        block = self.blocks[index]
        block.wire, self.next_wire = self.next_wire, self.next_wire + 1
        self.live = index
        part = block.part
        content: dict[str, Any]
        first: list[c.Event] = []
        if isinstance(part, c.Text):
            self.text_head = b'event: content_block_delta\ndata: {"type":"content_block_delta",' \
                b'"index":%d,"delta":{"type":"text_delta","text":' % block.wire
            content = {"type": "text", "text": ""}
            if part.text:
                first.append(c.TextDelta(index, part.text))
        elif isinstance(part, c.ToolCall):
            content = {"type": "tool_use", "id": part.id, "name": part.name, "input": {}}
            if part.arguments:
                first.append(c.ToolArgsDelta(index, part.arguments))
        elif part.source == NAME and part.redacted:
            content = {"type": "redacted_thinking", "data": part.redacted}
        else:
            content = {"type": "thinking", "thinking": "", "signature": ""}
            if part.source != NAME and part.source is not None:
                block.opaque = dataclasses.replace(part, text="", summary=[])
            if part.text:
                first.append(c.ReasoningDelta(index, text=part.text))
            if part.signature and part.source == NAME:
                first.append(c.ReasoningDelta(index, signature=part.signature))
        frames = [encode({"type": "content_block_start", "index": block.wire,
                          "content_block": content}, event="content_block_start")]
        for event in first + block.held:
            frames += self._delta(block, event)
        block.held.clear()
        return frames

    def _delta(self, block: _Block, event: c.Event) -> list[bytes]:
        delta: dict[str, Any] | None = None
        if isinstance(event, c.TextDelta) and isinstance(block.part, c.Text):
            delta = {"type": "text_delta", "text": event.text} if event.text else None
        elif isinstance(event, c.ToolArgsDelta) and isinstance(block.part, c.ToolCall):
            delta = {"type": "input_json_delta", "partial_json": event.arguments} \
                if event.arguments else None
        elif isinstance(event, c.ReasoningDelta) and isinstance(block.part, c.Reasoning):
            if block.part.source == NAME and block.part.redacted:
                return []
            if block.opaque is not None:  # gather another format's opaque values
                if event.signature:
                    block.opaque.signature = (block.opaque.signature or "") + event.signature
                if event.encrypted:
                    block.opaque.encrypted = (block.opaque.encrypted or "") + event.encrypted
            text = event.text or event.summary
            frames = []
            if text:
                frames.append(self._frame(block, {"type": "thinking_delta", "thinking": text}))
            if event.signature and block.part.source == NAME:
                frames.append(self._frame(block, {"type": "signature_delta",
                                                  "signature": event.signature}))
            return frames
        return [self._frame(block, delta)] if delta is not None else []

    @staticmethod
    def _frame(block: _Block, delta: dict[str, Any]) -> bytes:
        return encode({"type": "content_block_delta", "index": block.wire, "delta": delta},
                      event="content_block_delta")

    def _close(self, index: int) -> list[bytes]:
        block = self.blocks[index]
        frames = []
        if block.opaque is not None:
            frames.append(self._frame(block, {"type": "signature_delta",
                                              "signature": carry.pack(block.opaque)}))
        frames.append(encode({"type": "content_block_stop", "index": block.wire},
                             event="content_block_stop"))
        self.live = self.text_head = None
        return frames

    def _drain(self, force: bool = False) -> list[bytes]:
        """Write waiting parts in order: whole when stopped, else the next one goes live."""
        frames: list[bytes] = []
        while self.live is None and self.waiting:
            index = self.waiting.popleft()
            frames += self._open(index)
            if self.blocks[index].stopped or force:
                frames += self._close(index)
        return frames

    def _finish(self, finish: c.Finish) -> list[bytes]:
        frames: list[bytes] = []
        if self.live is not None:
            frames += self._close(self.live)
        frames += self._drain(force=True)
        usage = encode_usage(finish.usage)
        frames.append(encode({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(finish.stop_reason, self.has_calls),
                      "stop_sequence": finish.stop_sequence},
            "usage": usage,
        }, event="message_delta"))
        frames.append(encode({"type": "message_stop"}, event="message_stop"))
        return frames


async def encode_stream(events: AsyncIterator[c.Event], request: c.Request) -> AsyncIterator[bytes]:
    encoder = Encoder(request)
    async for event in events:
        for frame in encoder.feed(event):
            yield frame
