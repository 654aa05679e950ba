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

Requests going upstream are encoded by :mod:`.encode`, the other half of this module.
Connection settings read by :func:`~.encode.encode_request`: ``max_tokens_param``
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
from omniroute.formats.media import parse_data_url
from omniroute.formats.openai.response import NAME, arguments_text, decode_reasoning_fields
from omniroute.formats.reasoning import EFFORTS

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


#: the fields of a body that :func:`text_request` reads (any other: the body is decoded)
_TEXT_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "top_k", "stop", "seed", "presence_penalty", "frequency_penalty",
    "parallel_tool_calls", "user", "metadata",
})


def text_request(body: dict[str, Any]) -> c.TextRequest | None:
    """The :data:`~omniroute.formats.canonical.TextRequest` that :func:`decode_request`
    would make of ``body`` (a checked head), when it has only text messages (``role`` and
    a string ``content``, nothing else) and none of the fields that make it more; else None.

    Values are taken as sent, not checked: a body the decode refuses for a field's type
    gets a text form all the same, in which that value differs from any valid one.
    """
    # (``issuperset``: ~200 instructions fewer than ``body.keys() <= _TEXT_FIELDS``)
    if not _TEXT_FIELDS.issuperset(body):
        return None
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    try:
        for m in body["messages"]:
            # a role and a content, and nothing else: two fields, both read (``len``, not
            # ``m.keys() != {"role", "content"}``: ~1k instructions fewer a message)
            role, content = m["role"], m["content"]
            if len(m) != 2 or type(content) is not str:
                return None
            if role == "user" or role == "assistant" or (role == "system" and turns):
                turns.append((role, content))
            elif (role == "system" or role == "developer") and not turns:
                if content:
                    system.append(content)
            else:  # (a later developer message keeps its role in its meta)
                return None
    except (KeyError, TypeError, AttributeError):  # not a role and a content: the decode
        return None  # says what is wrong
    # (each lookup its own call: ~1.7k instructions fewer than the ten through one
    # ``map(body.get, ...)``, which has fewer bytecodes but calls ``get`` the generic way)
    get = body.get
    stop = get("stop")
    return system, turns, (
        get("parallel_tool_calls"), get("max_completion_tokens") or get("max_tokens"),
        get("temperature"), get("top_p"), get("top_k"),
        [] if stop is None else [stop] if isinstance(stop, str) else stop,
        get("seed"), get("presence_penalty"), get("frequency_penalty"))


def asked_text(body: dict[str, Any]) -> str | None:
    """The text of the body's last message when it is a user's (``role`` and a string
    ``content``, not empty, nothing else) and the body has only fields :func:`text_request`
    reads; else None. The other messages are not read."""
    if not _TEXT_FIELDS.issuperset(body):
        return None
    try:
        last = body["messages"][-1]
        text = last["content"]
        if type(text) is str and text and len(last) == 2 and last["role"] == "user":
            return text
    except (KeyError, IndexError, TypeError):
        pass
    return None


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
