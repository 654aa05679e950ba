"""Anthropic Messages requests <-> canonical (decoding here; encoding in :mod:`.encode`).

Conventions of the ``anthropic`` translation (answers, usage and errors live in
:mod:`.response`, streams in :mod:`.stream`):

* **System.** ``system`` (a string or text blocks, ``cache_control`` kept) is
  ``Request.system``. A ``role: "system"`` message inside ``messages`` (Claude
  Code sends them) stays a canonical system message in place. The documented
  API has no such role, so when encoding, a system message before the first
  turn joins ``system``, and a later one is folded into the next user turn
  (the previous one when none follows) as a text block wrapped in
  ``<system-reminder>`` tags, placed after that turn's tool results.
* **max_tokens** is required upstream: the request's value, else the
  connection's ``max_tokens_default``, else :data:`DEFAULT_MAX_TOKENS`.
* **Thinking.** ``thinking`` and ``output_config.effort`` map to
  ``ReasoningConfig`` (``max`` effort is canonical ``xhigh``; the raw value is
  kept). An effort from another format is sent as adaptive thinking plus
  ``output_config.effort`` (the current API), or, with the connection setting
  ``thinking: "budget"`` (older models), as ``{"type": "enabled"}`` with the
  budget of :data:`~omniroute.formats.reasoning.EFFORT_BUDGETS`. When thinking
  is on, what the API rejects alongside it is left out: ``top_k``, a
  ``temperature`` other than 1, a ``top_p`` below 0.95. A budget must stay
  below ``max_tokens``: with no ``max_tokens`` asked for, the default grows by
  the budget; with one asked for, the budget shrinks to half of it. Thinking
  itself is left out when ``tool_choice`` forces a tool, when ``max_tokens``
  leaves no room for the minimum budget (1024), or when the last assistant
  turn made tool calls without a signed thinking block (the API rejects it).
* **Reasoning parts** go upstream only when Anthropic produced them
  (``source == "anthropic"``) and they are signed (or redacted): anything else
  is dropped. Towards an Anthropic *client*, reasoning of another source
  becomes a thinking block whose ``signature`` packs the source's opaque values
  (:mod:`omniroute.formats.carry`), so they come back on the next turn.
* **Structured output.** ``json_schema`` <-> ``output_config.format``; a bare
  ``json_object`` (no schema) has no Anthropic form and becomes a system
  instruction to answer with one JSON object.
* Tool ids and names are never changed; tool ``input`` objects become JSON
  text with ``orjson`` and back. Consecutive tool results (and the text that
  follows them) are sent as one user turn, results first, as the API requires.
* Server tool blocks (``server_tool_use``, ``web_search_tool_result``…) have no
  canonical form and are dropped when translating; hosted tool *definitions*
  ride in ``Tool.meta["anthropic"]["raw"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.anthropic.response import NAME, decode_thinking_block
from omniroute.formats.media import b64encode_text

_EFFORTS_IN = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh",
               "max": "xhigh"}
_MODELLED = frozenset({
    "model", "messages", "system", "max_tokens", "stream", "tools", "tool_choice",
    "temperature", "top_p", "top_k", "stop_sequences", "metadata", "thinking",
    "output_config", "output_format",
})

# ============================================================================ checks


def check_request(body: dict[str, Any]) -> tuple[str, bool]:
    """The model and stream flag of a Messages request; 400 when it cannot be served."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("model: field required (a non-empty string).", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise InvalidRequest("messages: field required (an array of messages).",
                             param="messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
            raise InvalidRequest(f"messages.{i}.role: must be 'user' or 'assistant'.",
                                 param=f"messages.{i}.role")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        raise InvalidRequest("max_tokens: must be a positive integer.", param="max_tokens")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream: must be a boolean.", param="stream")
    return model, stream


# ============================================================================ requests


def decode_request(body: dict[str, Any]) -> c.Request:
    check_request(body)
    meta: dict[str, Any] = {}
    extra = {k: v for k, v in body.items() if k not in _MODELLED}
    if extra:
        meta["extra"] = extra
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("metadata: must be an object.", param="metadata")
    metadata = dict(metadata or {})
    user = metadata.pop("user_id", None)
    tools = _decode_tools(body.get("tools"))
    choice, parallel = _decode_tool_choice(body.get("tool_choice"))
    request = c.Request(
        model=body["model"],
        messages=_decode_messages(body["messages"]),
        system=_decode_system(body.get("system")),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        max_tokens=body.get("max_tokens"),
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        top_k=_number(body, "top_k", integer=True),
        stop=_decode_stop(body.get("stop_sequences")),
        response_format=_decode_output_format(body),
        reasoning=_decode_thinking(body, meta),
        stream=bool(body.get("stream")),
        user=user if isinstance(user, str) else None,
        metadata=metadata,
    )
    if meta:
        request.meta[NAME] = meta
    return request


#: the fields of a body that :func:`text_request` reads (any other: the body is decoded)
_TEXT_FIELDS = frozenset({
    "model", "messages", "system", "max_tokens", "stream", "temperature", "top_p", "top_k",
    "stop_sequences", "metadata",
})
_TEXT_ROLES = frozenset({"user", "assistant", "system"})


def text_request(body: dict[str, Any]) -> c.TextRequest | None:
    """The :data:`~omniroute.formats.canonical.TextRequest` that :func:`decode_request`
    would make of ``body``, when its system is a string (or plain text blocks), its
    messages have only a ``role`` and a string ``content``, and it has none of the fields
    that make it more (tools, thinking, output format, extras); else None.

    Values are taken as sent, not checked (as the OpenAI text form does): a body the
    decode refuses for a value gets a text form all the same, keyed apart from any valid
    one. A ``system`` message inside ``messages`` stays a turn, as the decode keeps it.
    """
    if not body.keys() <= _TEXT_FIELDS:
        return None
    raw = body.get("system")
    system: list[str] = []
    if isinstance(raw, str):
        if raw:
            system.append(raw)
    elif isinstance(raw, list):
        for block in raw:  # (an empty text block stays one: the decode keeps it)
            if not isinstance(block, dict) or len(block) != 2 or block.get("type") != "text":
                return None
            text = block.get("text")
            if type(text) is not str:
                return None
            system.append(text)
    elif raw is not None:
        return None
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    turns: list[tuple[str, str]] = []
    for m in messages:
        if not isinstance(m, dict) or len(m) != 2:
            return None
        content, role = m.get("content"), m.get("role")
        if type(content) is not str or role not in _TEXT_ROLES:
            return None
        turns.append((role, content))
    stop = body.get("stop_sequences")
    if stop is not None and not isinstance(stop, list):
        return None
    get = body.get
    return system, turns, (
        None, get("max_tokens"), get("temperature"), get("top_p"), get("top_k"),
        [] if stop is None else list(stop), None, None, None)


def _number(body: Mapping[str, Any], key: str, integer: bool = False) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise InvalidRequest(f"{key}: must be {'an integer' if integer else 'a number'}.",
                             param=key)
    return value


def _decode_stop(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise InvalidRequest("stop_sequences: must be an array of strings.",
                             param="stop_sequences")
    return list(raw)


def _decode_system(raw: Any) -> list[c.Text]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [c.Text(raw)]
    if not isinstance(raw, list):
        raise InvalidRequest("system: must be a string or an array of text blocks.",
                             param="system")
    return [_decode_text(b, f"system.{i}") for i, b in enumerate(raw)]


def _decode_text(block: Any, where: str) -> c.Text:
    if not isinstance(block, dict) or block.get("type") != "text" or \
            not isinstance(block.get("text"), str):
        raise InvalidRequest(f"{where}: must be a text block with a 'text' string.", param=where)
    text = c.Text(block["text"], cache_control=block.get("cache_control"))
    if block.get("citations"):
        text.meta[NAME] = {"citations": block["citations"]}
    return text


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest(f"{where}.content: must be a string or an array of content blocks.",
                             param=f"{where}.content")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"{where}.content.{j}: must be a content block with a 'type'.",
                                 param=f"{where}.content.{j}")
    return content


def _decode_messages(raw: list[dict[str, Any]]) -> list[c.Message]:
    out: list[c.Message] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(raw):
        where = f"messages.{i}"
        blocks = _blocks(m.get("content"), where)
        if m["role"] == "system":
            out.append(c.Message("system", [
                _decode_text(b, f"{where}.content.{j}") for j, b in enumerate(blocks)]))
        elif m["role"] == "assistant":
            parts: list[c.Part] = []
            for j, block in enumerate(blocks):
                part = _decode_assistant_block(block, f"{where}.content.{j}")
                if isinstance(part, c.ToolCall):
                    call_names[part.id] = part.name
                if part is not None:
                    parts.append(part)
            out.append(c.Message("assistant", parts))
        else:
            results: list[c.Part] = []
            rest: list[c.Part] = []
            for j, block in enumerate(blocks):
                here = f"{where}.content.{j}"
                if block["type"] == "tool_result":
                    results.append(_decode_tool_result(block, here, call_names))
                else:
                    rest.append(_decode_media(block, here))
            if results:
                out.append(c.Message("tool", results))
            if rest or not results:
                out.append(c.Message("user", rest))
    return out


def _decode_media(block: dict[str, Any], where: str) -> c.Text | c.Image | c.File:
    kind = block["type"]
    if kind == "text":
        return _decode_text(block, where)
    cache_control = block.get("cache_control")
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequest(f"{where}.source: field required.", param=f"{where}.source")
    stype = source.get("type")
    if kind == "image":
        if stype == "base64":
            return c.Image(media_type=source.get("media_type"), data=source.get("data"),
                           cache_control=cache_control)
        if stype == "url":
            return c.Image(url=source.get("url"), cache_control=cache_control)
        return c.Image(cache_control=cache_control, meta={NAME: {"source": source}})
    if kind == "document":
        doc = c.File(filename=block.get("title"), cache_control=cache_control)
        extras = {k: block[k] for k in ("context", "citations") if block.get(k) is not None}
        if stype == "base64":
            doc.media_type, doc.data = source.get("media_type"), source.get("data")
        elif stype == "text":
            doc.media_type = source.get("media_type") or "text/plain"
            doc.data = b64encode_text(source.get("data") or "")
        elif stype == "url":
            doc.url = source.get("url")
        elif stype == "file":
            doc.file_id = source.get("file_id")
        else:
            extras["source"] = source
        if extras:
            doc.meta[NAME] = extras
        return doc
    raise InvalidRequest(f"{where}.type: {kind!r} blocks are not supported in a user turn.",
                         param=f"{where}.type")


def _decode_tool_result(block: dict[str, Any], where: str,
                        call_names: Mapping[str, str]) -> c.ToolResult:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest(f"{where}.tool_use_id: field required.", param=f"{where}.tool_use_id")
    content = block.get("content")
    parts = [] if content is None else [
        _decode_media(b, f"{where}.content.{k}") for k, b in enumerate(_blocks(content, where))]
    return c.ToolResult(call_id, parts, is_error=bool(block.get("is_error")),
                        name=call_names.get(call_id), cache_control=block.get("cache_control"))



def _decode_assistant_block(block: dict[str, Any], where: str) -> c.Part | None:
    kind = block["type"]
    if kind == "text":
        return _decode_text(block, where)
    if kind in ("thinking", "redacted_thinking"):
        return decode_thinking_block(block)
    if kind == "tool_use":
        call_id, name = block.get("id"), block.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str) or not call_id or not name:
            raise InvalidRequest(f"{where}: a tool_use block needs 'id' and 'name'.", param=where)
        return c.ToolCall(call_id, name, orjson.dumps(block.get("input") or {}).decode(),
                          cache_control=block.get("cache_control"))
    if kind in ("image", "document"):
        raise InvalidRequest(f"{where}.type: {kind!r} blocks are not allowed in an assistant "
                             "turn.", param=f"{where}.type")
    return None  # server tool blocks: no canonical form (see the module doc)


def _decode_tools(raw: Any) -> list[c.Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("tools: must be an array.", param="tools")
    tools = []
    for i, t in enumerate(raw):
        where = f"tools.{i}"
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            raise InvalidRequest(f"{where}.name: field required.", param=f"{where}.name")
        if t.get("type") not in (None, "custom"):
            tools.append(c.Tool(t["name"], meta={NAME: {"raw": t}}))
            continue
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise InvalidRequest(f"{where}.input_schema: field required (a JSON Schema object).",
                                 param=f"{where}.input_schema")
        tool = c.Tool(t["name"], t.get("description"), schema, t.get("strict"),
                      cache_control=t.get("cache_control"))
        extra = {k: v for k, v in t.items() if k not in (
            "name", "description", "input_schema", "strict", "cache_control")}
        if extra:
            tool.meta[NAME] = {"extra": extra}
        tools.append(tool)
    return tools


def _decode_tool_choice(raw: Any) -> tuple[c.ToolChoice | None, bool | None]:
    if raw is None:
        return None, None
    kind = raw.get("type") if isinstance(raw, dict) else None
    modes = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}
    if kind not in modes or (kind == "tool" and not isinstance(raw.get("name"), str)):
        raise InvalidRequest("tool_choice: must be {\"type\": auto | any | none} or "
                             "{\"type\": \"tool\", \"name\": ...}.", param="tool_choice")
    parallel = raw.get("disable_parallel_tool_use")
    return (c.ToolChoice(modes[kind], raw.get("name") if kind == "tool" else None),  # type: ignore[arg-type]
            None if parallel is None else not parallel)


def _decode_output_format(body: Mapping[str, Any]) -> c.ResponseFormat | None:
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else None
    fmt = fmt or body.get("output_format")  # the structured-outputs beta's field
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or \
            not isinstance(fmt.get("schema"), dict):
        raise InvalidRequest("output_config.format: must be {\"type\": \"json_schema\", "
                             "\"schema\": {...}}.", param="output_config.format")
    return c.ResponseFormat("json_schema", fmt["schema"])


def _decode_thinking(body: Mapping[str, Any], meta: dict[str, Any]) -> c.ReasoningConfig | None:
    thinking = body.get("thinking")
    config = body.get("output_config")
    effort = config.get("effort") if isinstance(config, dict) else None
    if thinking is None and effort is None:
        return None
    out = c.ReasoningConfig()
    if effort is not None:
        if effort not in _EFFORTS_IN:
            raise InvalidRequest("output_config.effort: must be low, medium, high, xhigh or max.",
                                 param="output_config.effort")
        out.effort = _EFFORTS_IN[effort]
        if effort == "max":
            meta["effort"] = "max"
    if thinking is None:
        meta["effort_only"] = True
        return out
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise InvalidRequest("thinking.budget_tokens: field required (an integer).",
                                 param="thinking.budget_tokens")
        out.budget_tokens = budget
    elif kind == "adaptive":
        out.adaptive = True
    elif kind == "disabled":
        out.enabled = False
    elif kind == "between_tools":
        meta["thinking"] = thinking
    else:
        raise InvalidRequest("thinking.type: must be enabled, adaptive or disabled.",
                             param="thinking.type")
    display = thinking.get("display")
    if display is not None:
        meta["display"] = display
        out.include_thoughts = display != "omitted"
    return out
