"""Gemini streams: canonical events to ``GenerateContentResponse`` SSE chunks, and back.

Gemini streams whole chunks: each ``data:`` frame is a complete response whose
parts continue the answer (text pieces, thought pieces, whole function calls);
the last chunk carries ``finishReason`` and the usage. Tool calls never arrive
in pieces, so the encoder buffers argument deltas and sends one whole
``functionCall`` part when the call ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.gemini.parts import (
    NAME,
    encode_call,
    finish_reason,
    stop_reason,
    usage_from_metadata,
    usage_metadata,
)
from omniroute.formats.gemini.response import frame_json
from omniroute.formats.ids import new_id, stable_id
from omniroute.formats.json_text import dumps
from omniroute.formats.streams import closing
from omniroute.sse import encode


class _Encoder:
    def __init__(self) -> None:
        self.resp_id = new_id("gen_")
        self.model = ""
        self.parts: dict[int, Any] = {}
        self.args: dict[int, str] = {}
        self.pending: str | None = None  # another format's reasoning, packed
        self.signed: set[int] = set()  # text parts whose signature went out

    def _chunk(self, parts: list[dict[str, Any]], **candidate: Any) -> bytes:
        return encode({
            "candidates": [{"content": {"role": "model", "parts": parts}, **candidate,
                            "index": 0}],
            "modelVersion": self.model, "responseId": self.resp_id,
        })

    def feed(self, event: c.Event) -> list[bytes]:
        if isinstance(event, c.Start):
            self.resp_id, self.model = event.id or self.resp_id, event.model
            return []
        if isinstance(event, c.PartStart):
            started = event.part
            if isinstance(started, c.Reasoning):
                started = c.Reasoning(source=started.source, signature=started.signature,
                                      encrypted=started.encrypted, redacted=started.redacted)
            self.parts[event.index] = started
            self.args[event.index] = ""
            return []
        part = self.parts.get(getattr(event, "index", -1))
        if isinstance(event, c.TextDelta) and isinstance(part, c.Text) and event.text:
            out: dict[str, Any] = {"text": event.text}
            signature = (part.meta.get(NAME) or {}).get("thoughtSignature")
            if signature and event.index not in self.signed:
                self.signed.add(event.index)
                out["thoughtSignature"] = signature
            return [self._chunk([out])]
        if isinstance(event, c.ReasoningDelta) and isinstance(part, c.Reasoning):
            return self._reasoning(part, event)
        if isinstance(event, c.ToolArgsDelta) and isinstance(part, c.ToolCall):
            self.args[event.index] += event.arguments
            return []
        if isinstance(event, c.PartStop):
            return self._stop(event.index)
        if isinstance(event, c.Finish):
            parts: list[dict[str, Any]] = [{"text": ""}]
            if self.pending is not None:
                parts = [{"text": "", "thought": True, "thoughtSignature": self.pending}]
                self.pending = None
            return [encode({
                "candidates": [{"content": {"role": "model", "parts": parts},
                                "finishReason": finish_reason(event.stop_reason), "index": 0}],
                "usageMetadata": usage_metadata(event.usage),
                "modelVersion": self.model, "responseId": self.resp_id,
            })]
        return []

    def _reasoning(self, part: c.Reasoning, event: c.ReasoningDelta) -> list[bytes]:
        text = event.text + (event.summary or "")
        part.text += event.text
        if event.signature:
            part.signature = (part.signature or "") + event.signature
        if event.encrypted:
            part.encrypted = (part.encrypted or "") + event.encrypted
        return [self._chunk([{"text": text, "thought": True}])] if text else []

    def _stop(self, index: int) -> list[bytes]:
        part = self.parts.pop(index, None)
        args = self.args.pop(index, "")
        if isinstance(part, c.ToolCall):
            signature, self.pending = self.pending, None
            call = c.ToolCall(part.id, part.name, args, meta=part.meta)
            return [self._chunk([encode_call(call, signature)])]
        if isinstance(part, c.Reasoning):
            if part.source == NAME and part.signature and not part.text:
                self.pending = part.signature  # a call's signature: it rides on the next call
            elif part.source == NAME and part.signature:
                return [self._chunk([{"text": "", "thought": True,
                                      "thoughtSignature": part.signature}])]
            if part.source != NAME and carry.has_opaque(part):
                self.pending = carry.pack(part)
        return []


async def encode_stream(events: AsyncIterator[c.Event], request: c.Request) -> AsyncIterator[bytes]:
    encoder = _Encoder()
    async with closing(events):
        async for event in events:
            for frame in encoder.feed(event):
                yield frame


class _Decoder:
    def __init__(self) -> None:
        self.started = False
        self.next_index = 0
        self.open: tuple[str, int] | None = None  # ("text" | "thought", index)
        self.finish: str | None = None
        self.usage = c.Usage()
        self.saw_call = False
        self.resp_id = ""

    def _close(self) -> list[c.Event]:
        if self.open is None:
            return []
        index, self.open = self.open[1], None
        return [c.PartStop(index)]

    def _begin(self, kind: str, part: c.Text | c.Reasoning) -> list[c.Event]:
        if self.open is not None and self.open[0] == kind:
            return []
        events = self._close()
        self.open = (kind, self.next_index)
        self.next_index += 1
        return [*events, c.PartStart(self.open[1], part)]

    def feed(self, frame: bytes) -> list[c.Event]:
        data = frame_json(frame)
        if data is None:
            return []
        if isinstance(data.get("error"), dict):
            raise UpstreamError(str(data["error"].get("message") or "upstream stream error"))
        events: list[c.Event] = []
        if not self.started:
            self.started = True
            self.resp_id = str(data.get("responseId") or new_id("gen_"))
            first = usage_from_metadata(data.get("usageMetadata"))
            events.append(c.Start(self.resp_id, str(data.get("modelVersion") or ""),
                                  usage=c.Usage(input_tokens=first.input_tokens)))
        if isinstance(data.get("usageMetadata"), dict):
            self.usage = usage_from_metadata(data["usageMetadata"])
        candidates = data.get("candidates") or []
        if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
            self.finish = "SAFETY"
        candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
        for part in (candidate.get("content") or {}).get("parts") or []:
            if isinstance(part, dict):
                events += self._part(part)
        if candidate.get("finishReason"):
            self.finish = candidate["finishReason"]
        return events

    def _part(self, part: dict[str, Any]) -> list[c.Event]:
        signature = part.get("thoughtSignature")
        if isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            events = self._close()
            index = self.next_index
            self.next_index += 1
            self.saw_call = True
            info: dict[str, Any] = {}
            if call.get("id"):
                info["id"] = call["id"]
            if signature:  # the call's signature goes first, as a reasoning part
                events += [c.PartStart(index, c.Reasoning(source=NAME)),
                           c.ReasoningDelta(index, signature=signature), c.PartStop(index)]
                index = self.next_index
                self.next_index += 1
            call_id = str(call.get("id")
                          or stable_id("call_", self.resp_id, index, call.get("name")))
            args = call.get("args")
            return [
                *events,
                c.PartStart(index, c.ToolCall(call_id, str(call.get("name") or ""),
                                              meta={NAME: info})),
                c.ToolArgsDelta(index, dumps(args if args is not None else {})),
                c.PartStop(index),
            ]
        if part.get("thought"):
            events = self._begin("thought", c.Reasoning(source=NAME))
            index = self.open[1]  # type: ignore[index]
            if part.get("text"):
                events.append(c.ReasoningDelta(index, text=part["text"]))
            if signature:
                events.append(c.ReasoningDelta(index, signature=signature))
            return events
        if "text" in part:
            if not part["text"]:
                if signature and self.open is not None and self.open[0] == "thought":
                    return [c.ReasoningDelta(self.open[1], signature=signature)]
                return []
            meta = {NAME: {"thoughtSignature": signature}} if signature else {}
            events = self._begin("text", c.Text("", meta=meta))
            events.append(c.TextDelta(self.open[1], part["text"]))  # type: ignore[index]
            return events
        return []

    def end(self) -> list[c.Event]:
        if not self.started:
            raise UpstreamError("The upstream stream ended without an answer.")
        return [*self._close(), c.Finish(stop_reason(self.finish, self.saw_call), self.usage)]


async def decode_stream(frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
    decoder = _Decoder()
    async with closing(frames):
        async for frame in frames:
            for event in decoder.feed(frame):
                yield event
    for event in decoder.end():
        yield event
