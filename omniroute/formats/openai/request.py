"""OpenAI Chat Completions requests <-> canonical.

Conventions of the ``openai`` translation (answers live in :mod:`.response`,
streams in :mod:`.stream`):

* Leading ``system`` / ``developer`` messages become ``Request.system``; later
  ones stay ``Message(role="system")`` in place (a ``developer`` one keeps its
  role in ``meta["openai"]``). Consecutive ``tool`` messages become one
  canonical tool message (one batch of results), and each result gets the name
  of the call it answers.
* Reasoning: ``reasoning_details`` (OpenRouter) when present, else
  ``reasoning_content`` (DeepSeek…) or ``reasoning``; all decode to
  ``Reasoning(source="openai")``. Upstream requests carry back only reasoning of
  that source (another source's opaque values mean nothing to this upstream).
* ``reasoning_effort``: ``none`` turns thinking off; ``max`` is canonical
  ``xhigh`` (the raw value stays in ``meta["openai"]``). Encoded from a thinking
  budget alone with :func:`~omniroute.formats.reasoning.effort_for_budget`. OpenRouter's
  ``reasoning`` object is accepted too.
* Fields this translation does not model (``logprobs``, ``service_tier``…) ride in
  ``meta["openai"]["extra"]`` and are sent again only to an OpenAI upstream.

Connection settings read by :func:`encode_request`: ``max_tokens_param``
(``"max_completion_tokens"``, the default, or ``"max_tokens"`` for servers that
know only that), ``stream_usage`` (default true: ask for the usage chunk),
``reasoning_effort`` (default true; false for models that reject it) and
``cache_control`` (default false; true to pass Anthropic-style ``cache_control``
marks on, for gateways such as OpenRouter that honour them).
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any, cast

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.media import b64decode_text, data_url, parse_data_url
from omniroute.formats.openai.response import NAME, arguments_text, decode_reasoning_fields
from omniroute.formats.reasoning import EFFORTS, effort_for_budget

_MODELLED = frozenset({
    "model", "messages", "stream", "stream_options", "tools", "tool_choice",
    "parallel_tool_calls", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "stop", "seed", "presence_penalty", "frequency_penalty", "response_format",
    "reasoning_effort", "reasoning", "user", "metadata", "n",
})


# ============================================================================ requests


def decode_request(body: dict[str, Any]) -> c.Request:
    """The canonical form of a Chat Completions request body (its head checked:
    :func:`~omniroute.formats.openai.check_head`; each message is checked here)."""
    system, messages = _decode_messages(body["messages"])
    # one pass over the body's keys: the typed fields checked, the unmodelled kept; the
    # fields a body leaves out (most of them) cost nothing
    extra: dict[str, Any] | None = None
    for key, value in body.items():
        kind = _TYPED.get(key)
        if kind is not None:
            if value is not None and not _is(value, kind):
                raise InvalidRequest(f"'{key}' must be a {_KIND_NAMES[kind]}.", param=key)
        elif key not in _MODELLED:
            if extra is None:
                extra = {}
            extra[key] = value
    meta: dict[str, Any] = {}
    if extra is not None:
        meta["extra"] = extra
    get = body.get
    options = get("stream_options")
    if isinstance(options, dict) and options.get("include_usage"):
        meta["include_usage"] = True
    n = get("n")
    if n is not None and n != 1:
        raise InvalidRequest("Only one choice ('n': 1) can be translated.", param="n")
    tools = get("tools")
    tool_choice = get("tool_choice")
    stop = get("stop")
    response_format = get("response_format")
    reasoning = (_decode_reasoning(body, meta) if "reasoning_effort" in body
                 or "reasoning" in body else None)
    # positional, in the fields' order (model, messages, system, tools, tool_choice,
    # parallel_tool_calls, max_tokens, temperature, top_p, top_k, stop, seed,
    # presence_penalty, frequency_penalty, response_format, reasoning, stream, user,
    # metadata): a class called with keywords packs them into a dict first
    request = c.Request(
        body["model"], messages, system,
        [] if tools is None else _decode_tools(tools),
        None if tool_choice is None else _decode_tool_choice(tool_choice),
        get("parallel_tool_calls"),
        get("max_completion_tokens") or get("max_tokens"),
        get("temperature"),
        get("top_p"),
        get("top_k"),
        [] if stop is None else _decode_stop(stop),
        get("seed"),
        get("presence_penalty"),
        get("frequency_penalty"),
        None if response_format is None else _decode_response_format(response_format),
        reasoning,
        bool(get("stream")),
        get("user"),
        get("metadata") or {},
    )
    if meta:
        request.meta[NAME] = meta
    return request


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


#: the scalar fields and the type each must have (None is always accepted: not given)
_TYPED: dict[str, type] = {
    "parallel_tool_calls": bool, "max_completion_tokens": int, "max_tokens": int,
    "temperature": float, "top_p": float, "top_k": int, "seed": int,
    "presence_penalty": float, "frequency_penalty": float, "user": str, "metadata": dict,
}
_KIND_NAMES = {float: "number", int: "integer", bool: "boolean", str: "string", dict: "object"}


def _decode_messages(raw: list[dict[str, Any]]) -> tuple[list[c.Text], list[c.Message]]:
    system: list[c.Text] = []
    out: list[c.Message] = []
    call_names: dict[str, str] = {}
    # a message's place (``messages[i]``) is spelled out only for an error
    for i, m in enumerate(raw):
        role = m.get("role") if isinstance(m, dict) else None
        if role == "user":
            # (a list of parts of these kinds is a list of parts: not copied to say so)
            out.append(c.Message("user", cast("list[c.Part]", _user_parts(m.get("content"), i)),
                                 _name(m, i)))
        elif role == "assistant":
            out.append(_decode_assistant(m, i, call_names))
        elif role == "system" or role == "developer":
            parts = _text_parts(m.get("content"), i)
            if not out:
                system.extend(parts)
                continue
            msg = c.Message("system", cast("list[c.Part]", parts), _name(m, i))
            if role == "developer":
                msg.meta[NAME] = {"role": "developer"}
            out.append(msg)
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequest(f"'messages[{i}].tool_call_id' is required for a tool "
                                     "message.", param=f"messages[{i}].tool_call_id")
            result = c.ToolResult(call_id, _user_parts(m.get("content"), i),
                                  name=call_names.get(call_id))
            if out and out[-1].role == "tool":
                out[-1].parts.append(result)
            else:
                out.append(c.Message("tool", [result]))
        elif not isinstance(role, str):
            raise InvalidRequest("Each message must be an object with a 'role'.",
                                 param="messages")
        else:
            raise InvalidRequest(f"'messages[{i}].role' {role!r} is not supported; use "
                                 "system, developer, user, assistant or tool.",
                                 param=f"messages[{i}].role")
    return system, out


def _name(m: dict[str, Any], i: int) -> str | None:
    name = m.get("name")
    if name is not None and not isinstance(name, str):
        raise InvalidRequest(f"'messages[{i}].name' must be a string.",
                             param=f"messages[{i}].name")
    return name


def _text_parts(content: Any, i: int) -> list[c.Text]:
    if type(content) is str:  # the common case
        return [c.Text(content)] if content else []
    parts = _user_parts(content, i)
    if not all(isinstance(p, c.Text) for p in parts):
        raise InvalidRequest(f"'messages[{i}].content' may hold only text parts.",
                             param=f"messages[{i}].content")
    return parts  # type: ignore[return-value]


def _user_parts(content: Any, i: int) -> list[c.Text | c.Image | c.File]:
    if content is None:
        return []
    if type(content) is str:  # the common case
        return [c.Text(content)] if content else []
    if isinstance(content, str):  # (a subclass)
        return [c.Text(content)] if content else []
    where = f"messages[{i}]"
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}.content' must be a string or an array of parts.",
                             param=f"{where}.content")
    parts: list[c.Text | c.Image | c.File] = []
    for j, part in enumerate(content):
        here = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if not isinstance(text, str):
                raise InvalidRequest(f"'{here}.{kind}' must be a string.", param=f"{here}.{kind}")
            if text or part.get("cache_control"):
                parts.append(c.Text(text, cache_control=part.get("cache_control")))
        elif kind == "image_url":
            parts.append(_decode_image(part.get("image_url"), here, part.get("cache_control")))
        elif kind == "file":
            parts.append(_decode_file(part.get("file"), here, part.get("cache_control")))
        elif kind == "input_audio":
            raise InvalidRequest(f"'{here}': audio input cannot be translated for this model.",
                                 param=here)
        else:
            raise InvalidRequest(f"'{here}.type' {kind!r} is not a supported content part.",
                                 param=f"{here}.type")
    return parts


def _decode_image(image: Any, here: str, cache_control: Any) -> c.Image:
    if isinstance(image, str):  # tolerated shorthand
        image = {"url": image}
    url = image.get("url") if isinstance(image, dict) else None
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"'{here}.image_url.url' is required.", param=f"{here}.image_url.url")
    detail = image.get("detail")
    parsed = parse_data_url(url)
    if parsed is not None:
        return c.Image(media_type=parsed[0], data=parsed[1], detail=detail,
                       cache_control=cache_control)
    return c.Image(url=url, detail=detail, cache_control=cache_control)


def _decode_file(file: Any, here: str, cache_control: Any) -> c.File:
    if not isinstance(file, dict):
        raise InvalidRequest(f"'{here}.file' must be an object.", param=f"{here}.file")
    filename, file_id, file_data = file.get("filename"), file.get("file_id"), file.get("file_data")
    if isinstance(file_data, str) and file_data:
        parsed = parse_data_url(file_data)
        media_type, data = parsed if parsed else (None, file_data)
        if media_type is None and isinstance(filename, str):
            media_type = mimetypes.guess_type(filename)[0]
        return c.File(media_type=media_type, data=data, filename=filename,
                      cache_control=cache_control)
    if isinstance(file_id, str) and file_id:
        return c.File(file_id=file_id, filename=filename, cache_control=cache_control)
    raise InvalidRequest(f"'{here}.file' needs 'file_data' or 'file_id'.", param=f"{here}.file")


def _decode_assistant(m: dict[str, Any], i: int, call_names: dict[str, str]) -> c.Message:
    parts: list[c.Part] = decode_reasoning_fields(m)
    parts.extend(_text_parts(m.get("content"), i))
    refusal = m.get("refusal")
    if isinstance(refusal, str) and refusal:
        parts.append(c.Text(refusal))
    calls = m.get("tool_calls") or []
    where = f"messages[{i}]"
    if not isinstance(calls, list):
        raise InvalidRequest(f"'{where}.tool_calls' must be an array.", param=f"{where}.tool_calls")
    for k, call in enumerate(calls):
        here = f"{where}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequest(f"'{here}.function.name' is required.",
                                 param=f"{here}.function.name")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest(f"'{here}.id' is required.", param=f"{here}.id")
        call_names[call_id] = fn["name"]
        parts.append(c.ToolCall(call_id, fn["name"], arguments_text(fn.get("arguments")),
                                cache_control=call.get("cache_control")))
    return c.Message("assistant", parts, _name(m, i))



def _decode_tools(raw: Any) -> list[c.Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    tools = []
    for i, t in enumerate(raw):
        here = f"tools[{i}]"
        if not isinstance(t, dict):
            raise InvalidRequest(f"'{here}' must be an object.", param=here)
        if t.get("type", "function") != "function":
            name = t.get("name") or t.get("type")
            tools.append(c.Tool(str(name), meta={NAME: {"raw": t}}))
            continue
        fn = t.get("function")
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequest(f"'{here}.function.name' is required.",
                                 param=f"{here}.function.name")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise InvalidRequest(f"'{here}.function.parameters' must be a JSON Schema object.",
                                 param=f"{here}.function.parameters")
        tools.append(c.Tool(fn["name"], fn.get("description"), params, fn.get("strict"),
                            cache_control=t.get("cache_control")))
    return tools


def _decode_tool_choice(raw: Any) -> c.ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return c.ToolChoice(raw)
    if isinstance(raw, dict):
        if raw.get("type") == "function":
            name = (raw.get("function") or {}).get("name")
            if isinstance(name, str) and name:
                return c.ToolChoice("tool", name)
        if raw.get("type") == "allowed_tools":
            mode = (raw.get("allowed_tools") or {}).get("mode")
            return c.ToolChoice("required" if mode == "required" else "auto")
    raise InvalidRequest("'tool_choice' must be auto, none, required or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}}.",
                         param="tool_choice")


def _decode_stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(s, str) for s in raw):
        return list(raw)
    raise InvalidRequest("'stop' must be a string or an array of strings.", param="stop")


def _decode_response_format(raw: Any) -> c.ResponseFormat | None:
    if raw is None:
        return None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if kind in ("text", "json_object"):
        return c.ResponseFormat(kind)
    if kind == "json_schema":
        spec = raw.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequest("'response_format.json_schema' must hold a 'schema' object.",
                                 param="response_format.json_schema")
        return c.ResponseFormat("json_schema", spec.get("schema"), spec.get("name"),
                                spec.get("strict"))
    raise InvalidRequest("'response_format.type' must be text, json_object or json_schema.",
                         param="response_format")


def _decode_reasoning(body: Mapping[str, Any], meta: dict[str, Any]) -> c.ReasoningConfig | None:
    effort = body.get("reasoning_effort")
    extra = body.get("reasoning")  # OpenRouter's unified object
    if effort is None and not isinstance(extra, dict):
        return None
    config = c.ReasoningConfig()
    if effort is not None:
        if effort == "none":
            config.enabled, meta["reasoning_effort"] = False, "none"
        elif effort == "max":
            config.effort, meta["reasoning_effort"] = "xhigh", "max"
        elif effort in EFFORTS:
            config.effort = effort
        else:
            raise InvalidRequest("'reasoning_effort' must be one of none, minimal, low, medium, "
                                 "high, xhigh, max.", param="reasoning_effort")
    if isinstance(extra, dict):
        if extra.get("effort") in EFFORTS and config.effort is None:
            config.effort = extra["effort"]
        if isinstance(extra.get("max_tokens"), int):
            config.budget_tokens = extra["max_tokens"]
        if extra.get("exclude") is True:
            config.include_thoughts = False
        if extra.get("enabled") is False:
            config.enabled = False
    return config


# ---------------------------------------------------------------------- encode request


def encode_request(request: c.Request, client: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Chat Completions body for ``request`` (see the module doc for settings)."""
    settings = client or {}
    marks = bool(settings.get("cache_control", False))
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": _text_content(request.system, marks)})
    for msg in request.messages:
        messages.extend(_encode_message(msg, marks))
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    meta = request.meta.get(NAME, {})
    tools = [_encode_tool(t, marks) for t in request.tools if _expressible(t)]
    if tools:
        body["tools"] = tools
        if request.tool_choice is not None:
            body["tool_choice"] = _encode_tool_choice(request.tool_choice)
        if request.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = request.parallel_tool_calls
    if request.max_tokens is not None:
        body[settings.get("max_tokens_param") or "max_completion_tokens"] = request.max_tokens
    for key in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty"):
        value = getattr(request, key)
        if value is not None:
            body[key] = value
    if request.stop:
        body["stop"] = list(request.stop)
    if request.response_format is not None:
        body["response_format"] = _encode_response_format(request.response_format)
    effort = _encode_effort(request.reasoning, meta)
    if effort is not None and settings.get("reasoning_effort", True):
        body["reasoning_effort"] = effort
    if request.user is not None:
        body["user"] = request.user
    if request.metadata:
        body["metadata"] = dict(request.metadata)
    if request.stream:
        body["stream"] = True
        if settings.get("stream_usage", True):
            body["stream_options"] = {"include_usage": True}
    for key, value in meta.get("extra", {}).items():
        body.setdefault(key, value)
    return body


def _expressible(tool: c.Tool) -> bool:
    """Function tools, and hosted tools this format defined itself."""
    return (NAME in tool.meta and "raw" in tool.meta[NAME]) or not any(
        isinstance(m, dict) and "raw" in m for m in tool.meta.values())


def _encode_tool(tool: c.Tool, marks: bool) -> dict[str, Any]:
    raw = tool.meta.get(NAME, {}).get("raw")
    if raw is not None:
        return dict(raw)
    fn: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        fn["description"] = tool.description
    if tool.parameters is not None:
        fn["parameters"] = tool.parameters
    if tool.strict is not None:
        fn["strict"] = tool.strict
    out: dict[str, Any] = {"type": "function", "function": fn}
    if marks and tool.cache_control:
        out["cache_control"] = tool.cache_control
    return out


def _encode_tool_choice(choice: c.ToolChoice) -> Any:
    if choice.mode == "tool":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def _encode_response_format(rf: c.ResponseFormat) -> dict[str, Any]:
    if rf.type != "json_schema":
        return {"type": rf.type}
    spec: dict[str, Any] = {"name": rf.name or "response"}
    if rf.schema is not None:
        spec["schema"] = rf.schema
    if rf.strict is not None:
        spec["strict"] = rf.strict
    return {"type": "json_schema", "json_schema": spec}


def _encode_effort(config: c.ReasoningConfig | None, meta: Mapping[str, Any]) -> str | None:
    if config is None:
        return None
    if not config.enabled:
        # "none" only when the client said it (older models reject it)
        return "none" if meta.get("reasoning_effort") == "none" else None
    if config.effort is not None:
        raw = meta.get("reasoning_effort")
        return raw if raw and config.effort == "xhigh" else config.effort
    if config.budget_tokens is not None:
        return effort_for_budget(config.budget_tokens)
    return None


def _text_content(parts: list[c.Text], marks: bool) -> Any:
    if len(parts) == 1 and not (marks and parts[0].cache_control):
        return parts[0].text
    return [_text_part(p, marks) for p in parts]


def _text_part(part: c.Text, marks: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "text", "text": part.text}
    if marks and part.cache_control:
        out["cache_control"] = part.cache_control
    return out


def _encode_message(msg: c.Message, marks: bool) -> list[dict[str, Any]]:
    if msg.role == "tool":
        return _encode_tool_results(msg, marks)
    if msg.role == "assistant":
        return [_encode_assistant(msg, marks)]
    role: str = msg.role
    if role == "system" and msg.meta.get(NAME, {}).get("role") == "developer":
        role = "developer"
    out: dict[str, Any] = {"role": role, "content": _content(msg.parts, marks)}
    if msg.name is not None:
        out["name"] = msg.name
    return [out]


def _content(parts: list[c.Part], marks: bool) -> Any:
    if len(parts) == 1 and isinstance(parts[0], c.Text) and not (marks and parts[0].cache_control):
        return parts[0].text
    return [_encode_part(p, marks) for p in parts]


def _encode_part(part: c.Part, marks: bool) -> dict[str, Any]:
    if isinstance(part, c.Text):
        return _text_part(part, marks)
    out: dict[str, Any]
    if isinstance(part, c.Image):
        if part.data is not None:
            url = data_url(part.media_type or "image/png", part.data)
        elif part.url is not None:
            url = part.url
        else:
            raise InvalidRequest("An image without data or URL cannot be sent to an "
                                 "OpenAI-compatible upstream.")
        image: dict[str, Any] = {"url": url}
        if part.detail is not None:
            image["detail"] = part.detail
        out = {"type": "image_url", "image_url": image}
    elif isinstance(part, c.File):
        out = _encode_file(part)
    else:
        raise InvalidRequest(f"A {type(part).__name__} part cannot appear in this message.")
    if marks and part.cache_control:
        out["cache_control"] = part.cache_control
    return out


def _encode_file(part: c.File) -> dict[str, Any]:
    if part.data is not None and (part.media_type or "").startswith("text/"):
        # a plain-text document: Chat Completions files are PDFs, so send the text itself
        text = b64decode_text(part.data)
        if text is not None:
            head = f"{part.filename}\n\n" if part.filename else ""
            return {"type": "text", "text": head + text}
    file: dict[str, Any] = {}
    if part.data is not None:
        media_type = part.media_type or "application/pdf"
        file["file_data"] = data_url(media_type, part.data)
        file["filename"] = part.filename or "document" + (
            mimetypes.guess_extension(media_type) or "")
    elif part.file_id is not None:
        file["file_id"] = part.file_id
        if part.filename is not None:
            file["filename"] = part.filename
    else:
        raise InvalidRequest("A document by URL cannot be sent to an OpenAI-compatible "
                             "upstream; send its content instead.")
    return {"type": "file", "file": file}


def _encode_assistant(msg: c.Message, marks: bool) -> dict[str, Any]:
    texts = [p for p in msg.parts if isinstance(p, c.Text)]
    calls = [p for p in msg.parts if isinstance(p, c.ToolCall)]
    out: dict[str, Any] = {"role": "assistant"}
    out["content"] = _text_content(texts, marks) if texts else None
    reasoning = [p for p in msg.parts if isinstance(p, c.Reasoning) and p.source == NAME]
    details = [_reasoning_detail(p) for p in reasoning]
    if any(d is not None for d in details):
        out["reasoning_details"] = [d for d in details if d is not None]
    elif reasoning:
        text = "".join(p.text for p in reasoning)
        if text:
            out["reasoning_content"] = text
    if calls:
        out["tool_calls"] = [
            {"id": t.id, "type": "function", "function": {"name": t.name, "arguments": t.arguments}}
            for t in calls
        ]
    if msg.name is not None:
        out["name"] = msg.name
    return out


def _reasoning_detail(part: c.Reasoning) -> dict[str, Any] | None:
    detail = part.meta.get(NAME, {}).get("detail")
    if detail is not None:
        return dict(detail)
    if part.signature:
        return {"type": "reasoning.text", "text": part.text, "signature": part.signature}
    if part.encrypted:
        return {"type": "reasoning.encrypted", "data": part.encrypted}
    return None


def _encode_tool_results(msg: c.Message, marks: bool) -> list[dict[str, Any]]:
    """One ``tool`` message per result; images and documents follow in one user message
    (tool messages carry text only), after the whole batch so no user turn splits it."""
    out: list[dict[str, Any]] = []
    media: list[dict[str, Any]] = []
    for result in msg.parts:
        if not isinstance(result, c.ToolResult):
            continue
        texts = [p for p in result.content if isinstance(p, c.Text)]
        others = [p for p in result.content if not isinstance(p, c.Text)]
        if others:
            media.append({"type": "text", "text": f"Attachments of tool result {result.call_id}:"})
            media.extend(_encode_part(p, marks) for p in others)
        content: Any = _text_content(texts, marks) if texts else ""
        if content == "" and result.is_error:
            content = "Error"
        out.append({"role": "tool", "tool_call_id": result.call_id, "content": content})
    if media:
        out.append({"role": "user", "content": media})
    return out
