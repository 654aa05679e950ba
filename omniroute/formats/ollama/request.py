"""Ollama ``/api/chat`` requests <-> canonical: decoding client bodies, encoding for an upstream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.ids import stable_id
from omniroute.formats.media import sniff_media_type
from omniroute.formats.ollama.response import NAME, decode_tool_call, encode_tool_call, texts
from omniroute.formats.tools import hosted_raw

_OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": "seed",
            "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty"}
_LEVELS = ("low", "medium", "high")


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
        if (call_id and call.id == call_id) or (not call_id and call.name == name):
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


def _images(parts: list[Any]) -> list[str]:
    """Base64 images of ``parts``; Ollama takes none by URL, so a URL image is refused."""
    for p in parts:
        if isinstance(p, c.Image) and not p.data:
            raise InvalidRequest("Ollama takes images by value only (base64); this request has "
                                 f"an image by URL ({p.url or 'no data'}). Send the image data "
                                 "instead.", param="messages")
    return [p.data for p in parts if isinstance(p, c.Image) and p.data]


def decode_request(body: dict[str, Any], model: str, stream: bool) -> c.Request:
    """A client body (already checked) as a canonical request."""
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
        model=model, messages=messages, system=system,
        tools=_decode_tools(body.get("tools")), response_format=response_format,
        reasoning=_decode_think(body.get("think"), meta), stream=stream,
        meta={NAME: meta} if meta else {}, **fields,
    )


def encode_request(request: c.Request,
                   client: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``/api/chat`` body for an Ollama upstream."""
    meta = request.meta.get(NAME) or {}
    names = {p.id: p.name for m in request.messages if m.role == "assistant"
             for p in m.parts if isinstance(p, c.ToolCall)}
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": texts(list(request.system))})
    for message in request.messages:
        if message.role == "tool":
            for result in message.parts:
                if isinstance(result, c.ToolResult):
                    out: dict[str, Any] = {"role": "tool", "content": texts(list(result.content)),
                           "tool_name": result.name or names.get(result.call_id, "")}
                    if NAME not in result.meta or result.meta[NAME].get("tool_call_id"):
                        out["tool_call_id"] = result.call_id
                    if _images(result.content):
                        out["images"] = _images(result.content)
                    messages.append(out)
            continue
        out = {"role": message.role, "content": texts(message.parts)}
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
