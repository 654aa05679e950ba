"""Responses requests <-> canonical: decoding client bodies, encoding for a Responses upstream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.responses.items import InputDecoder, encode_input
from omniroute.formats.responses.names import NAME, ToolIndex, flat_name
from omniroute.formats.responses.tools import decode_tools, encode_tools

# request fields carried verbatim to a Responses upstream (canonical has no slot for them)
_PASSTHROUGH = (
    "store", "include", "previous_response_id", "prompt_cache_key", "service_tier",
    "truncation", "background", "safety_identifier", "max_tool_calls", "top_logprobs",
    "prompt_cache_retention", "conversation", "prompt",
)
# server-side conversation state: the gateway resolves it, an upstream never sees it
_SERVER_STATE = ("previous_response_id", "conversation")


def _decode_tool_choice(raw: Any) -> c.ToolChoice | None:
    if raw is None:
        return None
    if raw in ("auto", "none", "required"):
        return c.ToolChoice(raw)
    if isinstance(raw, dict):
        kind = raw.get("type")
        if kind in ("function", "custom") and raw.get("name"):
            return c.ToolChoice("tool", flat_name(raw.get("namespace"), str(raw["name"])))
        if kind == "allowed_tools":
            return c.ToolChoice("required" if raw.get("mode") == "required" else "auto")
        return c.ToolChoice("auto")  # a hosted tool: the raw choice rides in meta
    raise InvalidRequest("'tool_choice' is not valid.", param="tool_choice")


def encode_tool_choice(choice: c.ToolChoice | None, tools: ToolIndex,
                       meta: dict[str, Any]) -> Any:
    if "tool_choice" in meta:
        return meta["tool_choice"]
    if choice is None:
        return None
    if choice.mode == "tool" and choice.name:
        namespace, name = tools.wire(choice.name)
        out: dict[str, Any] = {"type": "custom" if tools.is_custom(choice.name) else "function",
                               "name": name}
        if namespace:
            out["namespace"] = namespace
        return out
    return choice.mode if choice.mode != "tool" else "required"


def _decode_text_format(text: Any) -> c.ResponseFormat | None:
    if not isinstance(text, dict) or not isinstance(text.get("format"), dict):
        return None
    fmt = text["format"]
    kind = fmt.get("type")
    if kind == "json_schema":
        return c.ResponseFormat(
            "json_schema", fmt.get("schema"), fmt.get("name"), fmt.get("strict"))
    if kind == "json_object":
        return c.ResponseFormat("json_object")
    return c.ResponseFormat("text")


def encode_text_format(fmt: c.ResponseFormat | None) -> dict[str, Any]:
    if fmt is None or fmt.type == "text":
        return {"type": "text"}
    if fmt.type == "json_object":
        return {"type": "json_object"}
    out: dict[str, Any] = {"type": "json_schema", "name": fmt.name or "response",
                           "schema": fmt.schema or {}}
    if fmt.strict is not None:
        out["strict"] = fmt.strict
    return out


def _effort_for_budget(budget: int) -> str:
    return "low" if budget <= 2048 else "medium" if budget <= 16384 else "high"


def encode_reasoning(cfg: c.ReasoningConfig | None, meta: dict[str, Any]) -> dict[str, Any] | None:
    if cfg is None or not cfg.enabled:
        return None
    effort = cfg.effort or (_effort_for_budget(cfg.budget_tokens) if cfg.budget_tokens else None)
    out: dict[str, Any] = {}
    if effort:
        out["effort"] = effort
    summary = meta.get("reasoning_summary")
    if summary is None and cfg.include_thoughts:
        summary = "auto"
    if summary is not None:
        out["summary"] = summary
    return out or None


def instructions_of(request: c.Request) -> str | None:
    texts = [t.text for t in request.system if not (t.meta.get(NAME) or {}).get("role")]
    return "\n\n".join(texts) if texts else None


#: the fields of a body that :func:`text_request` reads (any other: the body is decoded);
#: of those carried to an upstream, only the ones the cache key leaves out
_TEXT_FIELDS = frozenset({
    "model", "input", "instructions", "max_output_tokens", "temperature", "top_p",
    "parallel_tool_calls", "stream", "user", "metadata", "store", "prompt_cache_key",
    "prompt_cache_retention", "service_tier", "safety_identifier",
})
_TEXT_ROLES = frozenset({"user", "assistant"})


def text_request(body: dict[str, Any]) -> c.TextRequest | None:
    """The :data:`~omniroute.formats.canonical.TextRequest` that :func:`decode_request`
    would make of ``body`` (checked by ``inspect``), when its ``instructions`` are a
    string and its ``input`` a non-empty string or user and assistant messages with a
    non-empty string ``content`` (no id, no phase; no two assistant messages in a row,
    which the decode joins), and it has none of the fields that make it more; else None.
    Values are taken as sent, not checked."""
    if not body.keys() <= _TEXT_FIELDS:
        return None
    instructions = body.get("instructions")
    if instructions is not None and type(instructions) is not str:
        return None
    turns: list[tuple[str, str]] = []
    raw = body.get("input")
    if type(raw) is str:
        if not raw:  # (decoded as one empty text part, which a turn of text has not)
            return None
        turns.append(("user", raw))
    elif isinstance(raw, list):
        for item in raw:
            if not isinstance(item, dict) or not item.keys() <= {"type", "role", "content"}:
                return None
            content, role = item.get("content"), item.get("role")
            if (type(content) is not str or not content or role not in _TEXT_ROLES
                    or item.get("type", "message") != "message"
                    or (role == "assistant" and turns and turns[-1][0] == "assistant")):
                return None
            turns.append((role, content))
    elif raw is not None:
        return None
    get = body.get
    return [instructions] if instructions else [], turns, (
        get("parallel_tool_calls"), get("max_output_tokens"), get("temperature"),
        get("top_p"), None, [], None, None, None)


def decode_request(body: dict[str, Any], model: str, stream: bool) -> c.Request:
    """A client body (already checked) as a canonical request."""
    decoder = InputDecoder()
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        decoder.messages.append(c.Message("user", [c.Text(raw_input)]))
    else:
        for item in raw_input or []:
            decoder.add(item)
    system: list[c.Text] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        system.append(c.Text(instructions))
    system.extend(decoder.system)
    tools = decode_tools(body.get("tools"))
    meta: dict[str, Any] = {k: body[k] for k in _PASSTHROUGH if k in body}
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in ("function", "custom"):
        meta["tool_choice"] = choice
    reasoning_raw = body.get("reasoning")
    reasoning = None
    if isinstance(reasoning_raw, dict):
        effort = reasoning_raw.get("effort")
        summary = reasoning_raw.get("summary")
        if "summary" in reasoning_raw:
            meta["reasoning_summary"] = summary
        reasoning = c.ReasoningConfig(
            enabled=effort != "none", effort=effort if effort != "none" else None,
            include_thoughts=summary not in (None, "none"),
        )
    text = body.get("text")
    if isinstance(text, dict) and text.get("verbosity"):
        meta["verbosity"] = text["verbosity"]
    metadata = body.get("metadata")
    return c.Request(
        model=model,
        messages=decoder.messages,
        system=system,
        tools=tools,
        tool_choice=_decode_tool_choice(choice),
        parallel_tool_calls=body.get("parallel_tool_calls"),
        max_tokens=body.get("max_output_tokens"),
        temperature=body.get("temperature"),
        top_p=body.get("top_p"),
        response_format=_decode_text_format(text),
        reasoning=reasoning,
        stream=stream,
        user=body.get("user"),
        metadata=metadata if isinstance(metadata, dict) else {},
        meta={NAME: meta} if meta else {},
    )


def encode_request(request: c.Request,
                   client: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``/v1/responses`` body for a Responses upstream."""
    meta = request.meta.get(NAME) or {}
    tools = ToolIndex(request.tools)
    body: dict[str, Any] = {"model": request.model}
    instructions = instructions_of(request)
    if instructions is not None:
        body["instructions"] = instructions
    body["input"] = encode_input(request, tools)
    if request.tools:
        body["tools"] = encode_tools(request.tools)
    choice = encode_tool_choice(request.tool_choice, tools, meta)
    if choice is not None:
        body["tool_choice"] = choice
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls
    max_tokens = request.max_tokens or (client or {}).get("max_tokens")
    if max_tokens:
        body["max_output_tokens"] = max_tokens
    for name in ("temperature", "top_p", "user"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.metadata:
        body["metadata"] = request.metadata
    text: dict[str, Any] = {}
    if request.response_format is not None and request.response_format.type != "text":
        text["format"] = encode_text_format(request.response_format)
    if meta.get("verbosity"):
        text["verbosity"] = meta["verbosity"]
    if text:
        body["text"] = text
    reasoning = encode_reasoning(request.reasoning, meta)
    if reasoning:
        body["reasoning"] = reasoning
    for key in _PASSTHROUGH:
        if key in meta and key not in _SERVER_STATE:
            body[key] = meta[key]
    body.setdefault("store", False)
    if reasoning and body["store"] is False and "include" not in meta:
        body["include"] = ["reasoning.encrypted_content"]
    body["stream"] = request.stream
    return body
