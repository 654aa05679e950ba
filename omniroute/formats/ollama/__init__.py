"""The Ollama native chat format (``POST /api/chat``), as the ollama clients speak it.

Requests carry ``messages`` (``images`` as bare base64, assistant ``thinking``
and whole ``tool_calls`` with object arguments, ``tool`` messages naming the
tool in ``tool_name``), ``tools``, ``format`` (``"json"`` or a schema),
``options`` (``num_predict``, ``stop``…), ``think`` and ``keep_alive``.
``stream`` defaults to **true** when absent. Answers and stream chunks are the
same object, streamed as NDJSON lines; the last one has ``done: true`` and the
token counts. Errors are ``{"error": "message"}``.

Clients always send ``tools`` (often ``[]``): an empty list is no tools, and an
empty ``tools`` array is never sent upstream. Images go upstream by value only:
an image by URL is refused with a 400 (the gateway does not fetch URLs). Tool calls have no ids in Ollama;
stable ones are generated and tool results are matched to calls by name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest, UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, Format
from omniroute.formats.ids import new_id, stable_id
from omniroute.formats.json_text import dumps, json_object
from omniroute.formats.media import sniff_media_type
from omniroute.formats.streams import closing
from omniroute.formats.tools import args_object, hosted_raw
from omniroute.hookspecs import hookimpl

NAME = "ollama"
_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
_DURATIONS = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
_LEVELS = ("low", "medium", "high")


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


def _stop_reason(reason: Any, saw_call: bool) -> c.StopReason:
    if reason == "length":
        return "max_tokens"
    return "tool_use" if saw_call else "end_turn"


def decode_tool_call(call: dict[str, Any], fallback_id: str) -> c.ToolCall:
    function = call.get("function") or {}
    args = function.get("arguments")
    arguments = args if isinstance(args, str) else dumps(args if args is not None else {})
    # meta["ollama"] marks a call Ollama made; without an "id" there it had none
    return c.ToolCall(id=str(call.get("id") or fallback_id), name=str(function.get("name") or ""),
                      arguments=arguments, meta={NAME: {"id": call["id"]} if call.get("id") else {}})


def encode_tool_call(call: c.ToolCall, *, upstream: bool = False) -> dict[str, Any]:
    """An Ollama tool call; upstream, one Ollama made without an id stays without."""
    out: dict[str, Any] = {"id": call.id,
                           "function": {"name": call.name, "arguments": args_object(call.arguments)}}
    if upstream and NAME in call.meta and not call.meta[NAME].get("id"):
        del out["id"]
    return out


# ---------------------------------------------------------------------------- request pieces


def _decode_messages(raw: list[Any]) -> tuple[list[c.Text], list[c.Message]]:
    system: list[c.Text] = []
    messages: list[c.Message] = []
    pending: list[c.ToolCall] = []
    leading = True
    for mi, message in enumerate(raw):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest("Each message must be an object with a 'role'.", param="messages")
        role = message["role"]
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise InvalidRequest("Message 'content' must be a string.", param="messages")
        if role != "system":
            leading = False
        if role == "system":
            if leading:
                system.append(c.Text(content))
            else:
                messages.append(c.Message("system", [c.Text(content)]))
        elif role == "user":
            parts: list[c.Part] = [c.Text(content)] if content or not message.get("images") else []
            parts += [c.Image(media_type=sniff_media_type(img), data=img)
                      for img in message.get("images") or [] if isinstance(img, str)]
            messages.append(c.Message("user", parts))
        elif role == "assistant":
            parts = []
            if message.get("thinking"):
                parts.append(c.Reasoning(text=str(message["thinking"]), source=NAME))
            if content:
                parts.append(c.Text(content))
            for ti, call in enumerate(message.get("tool_calls") or []):
                if isinstance(call, dict):
                    function = call.get("function") or {}
                    decoded = decode_tool_call(call, stable_id(
                        "call_", mi, ti, function.get("name"), function.get("arguments")))
                    pending.append(decoded)
                    parts.append(decoded)
            messages.append(c.Message("assistant", parts))
        elif role == "tool":
            name = message.get("tool_name") or message.get("name")
            call = _match(pending, message.get("tool_call_id"), name)
            call_id = call.id if call is not None else str(
                message.get("tool_call_id") or stable_id("call_", mi, name))
            result_parts: list[c.Text | c.Image | c.File] = [c.Text(content)]
            result_parts += [c.Image(media_type=sniff_media_type(img), data=img)
                             for img in message.get("images") or [] if isinstance(img, str)]
            given = message.get("tool_call_id")
            result = c.ToolResult(call_id, result_parts,
                                  name=name or (call.name if call is not None else None),
                                  meta={NAME: {"tool_call_id": given} if given else {}})
            if messages and messages[-1].role == "tool":
                messages[-1].parts.append(result)
            else:
                messages.append(c.Message("tool", [result]))
        else:
            raise InvalidRequest(f"Unknown message role {role!r}.", param="messages")
    return system, messages


def _match(pending: list[c.ToolCall], call_id: Any, name: Any) -> c.ToolCall | None:
    for call in pending:
        if call_id and call.id == call_id or not call_id and call.name == name:
            pending.remove(call)
            return call
    return None


def _decode_tools(raw: Any) -> list[c.Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    tools = []
    for tool in raw:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidRequest("Each tool needs a 'function' with a 'name'.", param="tools")
        tools.append(c.Tool(function["name"], function.get("description"),
                            function.get("parameters")))
    return tools


def _decode_options(options: Any, meta: dict[str, Any]) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise InvalidRequest("'options' must be an object.", param="options")
    out: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in options.items():
        if key in _OPTIONS:
            out[_OPTIONS[key]] = value
        elif key == "num_predict":
            out["max_tokens"] = value if isinstance(value, int) and value > 0 else None
        elif key == "stop":
            out["stop"] = [value] if isinstance(value, str) else list(value or [])
        else:
            rest[key] = value
    if rest:
        meta["options"] = rest
    return out


def _decode_think(think: Any, meta: dict[str, Any]) -> c.ReasoningConfig | None:
    if think is None:
        return None
    if isinstance(think, str):
        meta["think"] = think
        return c.ReasoningConfig(effort=think)
    return c.ReasoningConfig(enabled=bool(think))


def _encode_think(cfg: c.ReasoningConfig | None, model: str, meta: dict[str, Any]) -> Any:
    if "think" in meta:
        return meta["think"]
    if cfg is None:
        return None
    if not cfg.enabled:
        return False
    if cfg.effort and "gpt-oss" in model:  # only gpt-oss takes levels
        return {"minimal": "low", "xhigh": "high"}.get(cfg.effort, cfg.effort) \
            if cfg.effort in (*_LEVELS, "minimal", "xhigh") else True
    return True


def _texts(parts: list[c.Part]) -> str:
    return "\n\n".join(p.text for p in parts if isinstance(p, c.Text))


def _images(parts: list[Any]) -> list[str]:
    """Base64 images of ``parts``; Ollama takes none by URL, so a URL image is refused."""
    for p in parts:
        if isinstance(p, c.Image) and not p.data:
            raise InvalidRequest("Ollama takes images by value only (base64); this request has "
                                 f"an image by URL ({p.url or 'no data'}). Send the image data "
                                 "instead.", param="messages")
    return [p.data for p in parts if isinstance(p, c.Image) and p.data]


# ---------------------------------------------------------------------------- the format


class OllamaFormat(Format):
    """Ollama's native chat API: ``/api/chat`` requests, answers and NDJSON streams."""

    name = NAME
    stream_content_type = "application/x-ndjson"

    # ------------------------------------------------------------------ client side

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        model = body.get("model") or path_model
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("model is required", param="model", code="missing_model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages is required and must be a non-empty array",
                                 param="messages")
        stream = body.get("stream", True)
        if stream is None:
            stream = True
        if not isinstance(stream, bool):
            raise InvalidRequest("stream must be a boolean", param="stream")
        return model, stream

    def decode_request(self, request: ClientRequest) -> c.Request:
        body = request.body
        _, stream = self.inspect(body)
        meta: dict[str, Any] = {k: body[k] for k in ("keep_alive", "logprobs", "top_logprobs")
                                if k in body}
        system, messages = _decode_messages(body["messages"])
        fmt = body.get("format")
        response_format = None
        if fmt == "json":
            response_format = c.ResponseFormat("json_object")
        elif isinstance(fmt, dict):
            response_format = c.ResponseFormat("json_schema", fmt)
        fields = _decode_options(body.get("options"), meta)
        return c.Request(
            model=request.model, messages=messages, system=system,
            tools=_decode_tools(body.get("tools")), response_format=response_format,
            reasoning=_decode_think(body.get("think"), meta), stream=stream,
            meta={NAME: meta} if meta else {}, **fields,
        )

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": _texts(response.parts)}
        thinking = "".join(p.text or "\n\n".join(p.summary) for p in response.parts
                           if isinstance(p, c.Reasoning))
        if thinking:
            message["thinking"] = thinking
        calls = [encode_tool_call(p) for p in response.parts if isinstance(p, c.ToolCall)]
        if calls:
            message["tool_calls"] = calls
        return orjson.dumps(self._final(response.model or request.model, response.stop_reason,
                                        response.usage, response.meta, message))

    @staticmethod
    def _final(model: str, stop: str | None, usage: c.Usage, meta: dict[str, Any],
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

    async def encode_stream(self, events: AsyncIterator[c.Event],
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
                    yield line(self._final(model, event.stop_reason, event.usage, {}))

    def error_body(self, err: GatewayError) -> bytes:
        return orjson.dumps({"error": err.message})

    def error_frame(self, err: GatewayError) -> bytes:
        return line({"error": err.message})

    # ------------------------------------------------------------------ provider side

    def encode_request(self, request: c.Request,
                       client: Mapping[str, Any] | None = None) -> dict[str, Any]:
        meta = request.meta.get(NAME) or {}
        names = {p.id: p.name for m in request.messages if m.role == "assistant"
                 for p in m.parts if isinstance(p, c.ToolCall)}
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": _texts(list(request.system))})
        for message in request.messages:
            if message.role == "tool":
                for result in message.parts:
                    if isinstance(result, c.ToolResult):
                        out = {"role": "tool", "content": _texts(list(result.content)),
                               "tool_name": result.name or names.get(result.call_id, "")}
                        if NAME not in result.meta or result.meta[NAME].get("tool_call_id"):
                            out["tool_call_id"] = result.call_id
                        if _images(result.content):
                            out["images"] = _images(result.content)
                        messages.append(out)
                continue
            out = {"role": message.role, "content": _texts(message.parts)}
            if message.role == "assistant":
                thinking = "".join(p.text for p in message.parts if isinstance(p, c.Reasoning))
                if thinking:
                    out["thinking"] = thinking
                calls = [encode_tool_call(p, upstream=True) for p in message.parts
                         if isinstance(p, c.ToolCall)]
                if calls:
                    out["tool_calls"] = calls
            elif _images(message.parts):
                out["images"] = _images(message.parts)
            messages.append(out)
        body: dict[str, Any] = {"model": request.model, "messages": messages,
                                "stream": request.stream}
        tools = [{"type": "function", "function": {
            "name": t.name, "description": t.description or "",
            "parameters": t.parameters if t.parameters is not None
            else {"type": "object", "properties": {}}}}
            for t in request.tools if hosted_raw(t) is None]
        if tools:
            body["tools"] = tools
        fmt = request.response_format
        if fmt is not None and fmt.type == "json_object":
            body["format"] = "json"
        elif fmt is not None and fmt.type == "json_schema" and fmt.schema is not None:
            body["format"] = fmt.schema
        options: dict[str, Any] = {}
        for option, field in _OPTIONS.items():
            if getattr(request, field) is not None:
                options[option] = getattr(request, field)
        max_tokens = request.max_tokens or (client or {}).get("max_tokens")
        if max_tokens:
            options["num_predict"] = max_tokens
        if request.stop:
            options["stop"] = list(request.stop)
        options.update(meta.get("options") or {})
        if options:
            body["options"] = options
        think = _encode_think(request.reasoning, request.model, meta)
        if think is not None:
            body["think"] = think
        for key in ("keep_alive", "logprobs", "top_logprobs"):
            if key in meta:
                body[key] = meta[key]
        return body

    def decode_response(self, body: bytes) -> c.Response:
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
            stop_reason=_stop_reason(data.get("done_reason"),
                                     any(isinstance(p, c.ToolCall) for p in parts)),
            usage=usage_from_chunk(data),
            meta={NAME: {"durations": durations}} if durations else {},
        )

    async def decode_stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
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
                        yield c.Finish(_stop_reason(chunk.get("done_reason"), saw_call),
                                       usage_from_chunk(chunk))
        if not finished:
            raise UpstreamError("The upstream stream ended before it was done.")

    # ------------------------------------------------------------------ pass-through lane

    def usage_from_body(self, body: bytes) -> c.Usage:
        data = json_object(body)
        return usage_from_chunk(data) if data else c.Usage()

    def usage_from_frame(self, frame: bytes) -> c.Usage | None:
        if b'"done":true' not in frame and b'"done": true' not in frame:
            return None
        data = json_object(frame.strip())
        return usage_from_chunk(data) if data else None

    def error_from_frame(self, frame: bytes) -> str | None:
        if b'"error"' not in frame:
            return None
        data = json_object(frame.strip())
        if data is None or not data.get("error"):
            return None
        return str(data["error"])


@hookimpl
def register_formats(register: Any) -> None:
    register(OllamaFormat)
