"""OpenAI Chat Completions streams <-> canonical events.

Decoding (an upstream's ``chat.completion.chunk`` frames):

* a text or reasoning part ends when the other kind, or a tool call, starts
  (so a client format with sequential blocks can stream them live); a later
  run of the same kind is a new part;
* tool calls are keyed by ``tool_calls[i].index`` and stay open until the
  answer ends, because deltas of parallel calls may interleave. A call starts
  once its name is known (arguments that came earlier are held back); its id
  and name are taken from the first delta that has them and never changed. A
  delta whose ``id`` differs from the id already seen at its index starts a new
  call (some compatible servers reuse index 0);
* the usage chunk may come after the ``finish_reason`` chunk, so ``Finish`` is
  sent at ``[DONE]`` (or at the end of the body, when a finish reason came).

Encoding (for an OpenAI client): a role chunk, content / ``reasoning_content`` /
``tool_calls`` deltas (index, id, type and name on the first delta of each call,
then argument pieces), a chunk with ``finish_reason``, the usage chunk (empty
``choices``) when the client asked for it, then ``data: [DONE]``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.ids import new_id
from omniroute.formats.openai.response import (
    FINISH_TO_STOP,
    NAME,
    arguments_text,
    decode_usage,
    encode_usage,
    finish_reason,
)
from omniroute.sse import CR, DONE, LF, encode, event_data


@dataclass(slots=True)
class _Call:
    id: str | None = None
    name: str | None = None
    index: int | None = None  # canonical part index, once started
    held: list[str] = field(default_factory=list)  # arguments before the name was known


class Decoder:
    def __init__(self) -> None:
        self.started = False
        self.next_index = 0
        self.text: int | None = None
        self.reasoning: int | None = None
        self.calls: dict[Any, _Call] = {}
        self.open: list[int] = []
        self.finish: str | None = None
        self.usage = c.Usage()
        #: ``[DONE]`` came: the frames after it are not read
        self.done = False

    def _start(self, part: c.Text | c.Reasoning | c.ToolCall) -> tuple[int, c.PartStart]:
        index, self.next_index = self.next_index, self.next_index + 1
        self.open.append(index)
        return index, c.PartStart(index, part)

    def _stop(self, index: int | None) -> list[c.Event]:
        if index is None or index not in self.open:
            return []
        self.open.remove(index)
        return [c.PartStop(index)]

    def feed(self, chunk: dict[str, Any]) -> list[c.Event]:
        events: list[c.Event] = []
        if not self.started:
            self.started = True
            created = chunk.get("created")
            events.append(c.Start(chunk.get("id") or new_id("chatcmpl-"), chunk.get("model") or "",
                                  created=created if isinstance(created, int) else None))
        if isinstance(chunk.get("usage"), dict):
            self.usage.merge(decode_usage(chunk["usage"]))
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if type(delta) is dict and len(delta) == 1 and "content" in delta:  # text alone
                text = delta["content"]
                if isinstance(text, str) and text:
                    if self.text is None:
                        events += self._text(text)
                    else:
                        events.append(c.TextDelta(self.text, text))
            elif isinstance(delta, dict):
                events += self._reasoning(delta)
                for key in ("content", "refusal"):
                    text = delta.get(key)
                    if isinstance(text, str) and text:
                        events += self._text(text)
                calls = delta.get("tool_calls")
                if isinstance(calls, list):
                    for call in calls:
                        if isinstance(call, dict):
                            events += self._tool_call(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
        return events

    def _reasoning(self, delta: dict[str, Any]) -> list[c.Event]:
        pieces: list[c.ReasoningDelta] = []
        details = delta.get("reasoning_details")
        if isinstance(details, list) and details:
            for d in details:
                if not isinstance(d, dict):
                    continue
                piece = c.ReasoningDelta(0, text=d.get("text") or "",
                                         signature=d.get("signature") or None)
                if d.get("type") == "reasoning.encrypted" and isinstance(d.get("data"), str):
                    piece.encrypted = d["data"]
                if d.get("type") == "reasoning.summary" and isinstance(d.get("summary"), str):
                    piece.summary = d["summary"]
                pieces.append(piece)
        else:
            for key in ("reasoning_content", "reasoning"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    pieces.append(c.ReasoningDelta(0, text=text))
                    break
        events: list[c.Event] = []
        for piece in pieces:
            if not (piece.text or piece.signature or piece.encrypted or piece.summary):
                continue
            if self.reasoning is None:
                events += self._stop(self.text)
                self.text = None
                self.reasoning, start = self._start(c.Reasoning(source=NAME))
                events.append(start)
            piece.index = self.reasoning
            events.append(piece)
        return events

    def _text(self, text: str) -> list[c.Event]:
        events: list[c.Event] = []
        if self.text is None:
            events += self._stop(self.reasoning)
            self.reasoning = None
            self.text, start = self._start(c.Text(""))
            events.append(start)
        events.append(c.TextDelta(self.text, text))
        return events

    def _tool_call(self, delta: dict[str, Any]) -> list[c.Event]:
        events = self._stop(self.text) + self._stop(self.reasoning)
        self.text = self.reasoning = None
        function = delta.get("function")
        fn: dict[str, Any] = function if isinstance(function, dict) else {}
        call_id = delta.get("id") if isinstance(delta.get("id"), str) and delta["id"] else None
        name = fn.get("name") if isinstance(fn.get("name"), str) and fn["name"] else None
        args = arguments_text(fn.get("arguments"))
        key = delta.get("index")
        if not isinstance(key, int):  # servers that omit the index: one call per id
            key = call_id or (list(self.calls)[-1] if self.calls else 0)
        call = self.calls.get(key)
        if call is not None and call_id and call.id and call_id != call.id:
            self.calls[(key, call.id)] = call  # keep it open under another key
            call = None
        if call is None:
            call = self.calls[key] = _Call()
        if call.id is None:
            call.id = call_id
        if call.name is None:
            call.name = name
        if call.index is None:
            if args:
                call.held.append(args)
            if call.name is None:
                return events
            call.index, start = self._start(c.ToolCall(call.id or new_id("call_"), call.name))
            events.append(start)
            if call.held:
                events.append(c.ToolArgsDelta(call.index, "".join(call.held)))
                call.held.clear()
        elif args:
            events.append(c.ToolArgsDelta(call.index, args))
        return events

    def frame(self, frame: bytes) -> list[c.Event]:
        """The events of one upstream frame (raises on an error frame); after ``[DONE]``
        :attr:`done` is set and no later frame is read."""
        # the usual frame, one data line of a JSON object and its blank line, is parsed
        # without cutting its data out (JSON skips the line ends after it); its first
        # line end found with memchr (``count`` walks every byte: some 1,500
        # instructions a frame)
        if frame.startswith(b"data: {") and frame.find(LF) == len(frame) - 2 and \
                frame.endswith(b"\n\n") and CR not in frame:
            try:
                chunk = orjson.loads(frame[6:])
            except orjson.JSONDecodeError:
                raise UpstreamError(
                    "The upstream stream has an event that is not JSON.") from None
            if "error" not in chunk:
                return self.feed(chunk)
            return self._chunk(chunk)
        data = event_data(frame)
        if data is None:
            return []  # a comment or keep-alive
        data = data.strip()
        if data == b"[DONE]":
            self.done = True
            return []
        if not data:
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise UpstreamError("The upstream stream has an event that is not JSON.") from None
        if type(chunk) is not dict:
            return []
        return self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> list[c.Event]:
        error = chunk.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else error
            raise UpstreamError(f"Upstream error: {message or orjson.dumps(error).decode()}")
        return self.feed(chunk)

    def close(self) -> list[c.Event]:
        """The last events, at ``[DONE]`` or the end of the upstream's body (raises when
        the stream ended before its answer was complete)."""
        if not self.started:
            raise UpstreamError("The upstream stream ended before its first chunk.")
        if not self.done and self.finish is None:
            raise UpstreamError("The upstream stream ended before the answer was complete.")
        return self.end()

    def end(self) -> list[c.Event]:
        if any(call.index is None for call in self.calls.values()):
            raise UpstreamError("The upstream stream has a tool call without a name.")
        events: list[c.Event] = [c.PartStop(i) for i in sorted(self.open)]
        self.open.clear()
        stop = FINISH_TO_STOP.get(self.finish or "stop", "end_turn")
        events.append(c.Finish(stop, self.usage))
        return events


async def decode_stream(frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
    decoder = Decoder()
    async for frame in frames:
        for event in decoder.frame(frame):
            yield event
        if decoder.done:
            break
    for event in decoder.close():
        yield event


async def encode_stream(events: AsyncIterator[c.Event], request: c.Request) -> AsyncIterator[bytes]:
    include_usage = bool(request.meta.get(NAME, {}).get("include_usage"))
    # (the id is made only when the stream's Start brings none: most do)
    head: dict[str, Any] = {"id": "", "object": "chat.completion.chunk",
                            "created": int(time.time()), "model": request.model}
    slots: dict[int, int] = {}  # canonical part index -> tool_calls[i].index

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        if not head["id"]:
            head["id"] = new_id("chatcmpl-")
        return encode({**head, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    async for event in events:
        if isinstance(event, c.Start):
            head["id"] = event.id or head["id"]
            head["model"] = event.model or head["model"]
            if event.created is not None:
                head["created"] = event.created
            yield chunk({"role": "assistant", "content": ""})
        elif isinstance(event, c.TextDelta):
            if event.text:
                yield chunk({"content": event.text})
        elif isinstance(event, c.ReasoningDelta):
            text = event.text or event.summary
            if text:
                yield chunk({"reasoning_content": text})
        elif isinstance(event, c.PartStart) and isinstance(event.part, c.ToolCall):
            slots[event.index] = slot = len(slots)
            yield chunk({"tool_calls": [{
                "index": slot, "id": event.part.id, "type": "function",
                "function": {"name": event.part.name, "arguments": event.part.arguments}}]})
        elif isinstance(event, c.ToolArgsDelta):
            if event.arguments:
                yield chunk({"tool_calls": [{"index": slots[event.index],
                                             "function": {"arguments": event.arguments}}]})
        elif isinstance(event, c.Finish):
            yield chunk({}, finish_reason(event.stop_reason, bool(slots)))
            if include_usage:
                yield encode({**head, "choices": [], "usage": encode_usage(event.usage)})
            yield DONE
