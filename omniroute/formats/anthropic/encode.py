"""Canonical requests -> Anthropic Messages bodies (the provider side), and the
pass-through lane's clean-up of a client's Anthropic body.

The conventions are those of :mod:`omniroute.formats.anthropic.request`, which
decodes client requests; this module is its other half.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.anthropic.response import NAME, text_block
from omniroute.formats.canonical import SYSTEM_REMINDER
from omniroute.formats.media import b64decode_text, parse_data_url, sniff_media_type
from omniroute.formats.reasoning import EFFORT_BUDGETS
from omniroute.formats.tools import args_object

#: ``max_tokens`` sent when neither the request nor the connection sets one
DEFAULT_MAX_TOKENS = 8192
#: the smallest thinking budget the API accepts
MIN_THINKING_BUDGET = 1024
JSON_OBJECT_INSTRUCTION = "Respond with a single valid JSON object and nothing else."

_EFFORTS_OUT = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                "xhigh": "xhigh"}


# ---------------------------------------------------------------------- encode request


def encode_request(request: c.Request, client: Mapping[str, Any] | None = None) -> dict[str, Any]:
    settings = client or {}
    meta = request.meta.get(NAME, {})
    system = list(request.system)
    messages = _encode_messages(request.messages, system)
    rf = request.response_format
    if rf is not None and (rf.type == "json_object" or (rf.type == "json_schema"
                                                         and rf.schema is None)):
        system.append(c.Text(JSON_OBJECT_INSTRUCTION))
    explicit_max = request.max_tokens is not None
    max_tokens = request.max_tokens if request.max_tokens is not None else int(
        settings.get("max_tokens_default") or DEFAULT_MAX_TOKENS)
    body: dict[str, Any] = {"model": request.model, "max_tokens": max_tokens,
                            "messages": messages}
    if system:
        body["system"] = _system_value(system)
    tools = [_encode_tool(t) for t in request.tools if _expressible(t)]
    forced = False
    if tools:
        body["tools"] = tools
        choice = _encode_tool_choice(request.tool_choice, request.parallel_tool_calls)
        if choice is not None:
            body["tool_choice"] = choice
            forced = choice["type"] in ("any", "tool")
    output_config: dict[str, Any] = {}
    thinking = _encode_thinking(request.reasoning, meta, settings, output_config)
    if thinking is not None and thinking.get("type") != "disabled":
        if forced or not _last_tool_turn_signed(messages):
            thinking = None
        elif thinking["type"] == "enabled":
            budget = thinking["budget_tokens"]
            if budget >= max_tokens:
                if explicit_max:  # half for thinking, half for the answer
                    budget = max(MIN_THINKING_BUDGET, max_tokens // 2)
                else:
                    body["max_tokens"] = max_tokens = budget + max_tokens
            if budget >= max_tokens:
                thinking = None
            else:
                thinking["budget_tokens"] = budget
    thinking_on = thinking is not None and thinking["type"] != "disabled"
    if thinking is not None:
        body["thinking"] = thinking
    if rf is not None and rf.type == "json_schema" and rf.schema is not None:
        output_config["format"] = {"type": "json_schema", "schema": rf.schema}
    if output_config:
        body["output_config"] = output_config
    if request.temperature is not None and not (thinking_on and request.temperature != 1):
        body["temperature"] = min(request.temperature, 1.0)
    if request.top_p is not None and not (thinking_on and request.top_p < 0.95):
        body["top_p"] = request.top_p
    if request.top_k is not None and not thinking_on:
        body["top_k"] = request.top_k
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.user is not None or request.metadata.get("user_id") is not None:
        body["metadata"] = {"user_id": request.user or request.metadata.get("user_id")}
    if request.stream:
        body["stream"] = True
    for key, value in meta.get("extra", {}).items():
        body.setdefault(key, value)
    return body


def _system_value(parts: list[c.Text]) -> Any:
    if len(parts) == 1 and not parts[0].cache_control and not parts[0].meta.get(NAME):
        return parts[0].text
    return [text_block(p) for p in parts]



def _encode_messages(messages: list[c.Message], system: list[c.Text]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []  # folded system messages waiting for a user turn
    previous: str | None = None  # canonical role of the last message sent
    for msg in messages:
        if msg.role == "system":
            if not out:
                system.extend(p for p in msg.parts if isinstance(p, c.Text))
            else:
                pending.extend(_reminder(p) for p in msg.parts if isinstance(p, c.Text))
            continue
        blocks = [b for b in (_encode_block(p) for p in msg.parts) if b is not None]
        role = "assistant" if msg.role == "assistant" else "user"
        if role == "user" and pending:
            _insert_after_results(blocks, pending)
            pending = []
        if not blocks:
            continue
        if role == "user" and previous == "tool" and out and out[-1]["role"] == "user":
            out[-1]["content"].extend(blocks)  # results and the text that came with them
        else:
            out.append({"role": role, "content": blocks})
        previous = msg.role
    if pending:
        last_user = next((m for m in reversed(out) if m["role"] == "user"), None)
        if last_user is None:
            out.append({"role": "user", "content": pending})
        else:
            last_user["content"].extend(pending)
    for m in out:  # a lone plain text block is sent as a string
        content = m["content"]
        if len(content) == 1 and set(content[0]) == {"type", "text"} and \
                content[0]["type"] == "text":
            m["content"] = content[0]["text"]
    return out


def _reminder(part: c.Text) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": SYSTEM_REMINDER.format(part.text)}
    if part.cache_control:
        block["cache_control"] = part.cache_control
    return block


def _insert_after_results(blocks: list[dict[str, Any]], extra: list[dict[str, Any]]) -> None:
    at = next((k for k, b in enumerate(blocks) if b["type"] != "tool_result"), len(blocks))
    blocks[at:at] = extra


def _encode_block(part: c.Part) -> dict[str, Any] | None:
    block: dict[str, Any] | None
    if isinstance(part, c.Text):
        if not part.text and not part.cache_control:
            return None  # the API rejects empty text blocks
        return text_block(part)
    if isinstance(part, c.Reasoning):
        if part.source != NAME:
            return None
        if part.redacted:
            return {"type": "redacted_thinking", "data": part.redacted}
        if not part.signature:
            return None
        return {"type": "thinking", "thinking": part.text, "signature": part.signature}
    if isinstance(part, c.ToolCall):
        block = {"type": "tool_use", "id": part.id, "name": part.name,
                 "input": args_object(part.arguments)}
    elif isinstance(part, c.ToolResult):
        block = {"type": "tool_result", "tool_use_id": part.call_id}
        content = [b for b in (_encode_block(p) for p in part.content) if b is not None]
        if len(content) == 1 and set(content[0]) == {"type", "text"}:
            block["content"] = content[0]["text"]
        elif content:
            block["content"] = content
        if part.is_error:
            block["is_error"] = True
    elif isinstance(part, c.Image):
        block = {"type": "image", "source": _image_source(part)}
    else:
        block = _encode_document(part)
    if part.cache_control:
        block["cache_control"] = part.cache_control
    return block


def _image_source(part: c.Image) -> dict[str, Any]:
    raw = part.meta.get(NAME, {}).get("source")
    if raw is not None:
        return dict(raw)
    if part.data is not None:
        return {"type": "base64", "media_type": part.media_type or sniff_media_type(part.data),
                "data": part.data}
    if part.url is not None:
        parsed = parse_data_url(part.url)
        if parsed is not None:
            return {"type": "base64", "media_type": parsed[0] or sniff_media_type(parsed[1]),
                    "data": parsed[1]}
        return {"type": "url", "url": part.url}
    raise InvalidRequest("An image without data or URL cannot be sent to Anthropic.")


def _encode_document(part: c.File) -> dict[str, Any]:
    extras = part.meta.get(NAME, {})
    source: dict[str, Any]
    if extras.get("source") is not None:
        source = dict(extras["source"])
    elif part.data is not None:
        media_type = part.media_type or sniff_media_type(part.data, "application/pdf")
        text = b64decode_text(part.data) if media_type.startswith("text/") else None
        source = {"type": "text", "media_type": media_type, "data": text} if text is not None \
            else {"type": "base64", "media_type": media_type, "data": part.data}
    elif part.url is not None:
        source = {"type": "url", "url": part.url}
    elif part.file_id is not None:
        source = {"type": "file", "file_id": part.file_id}
    else:
        raise InvalidRequest("A document without data, URL or file id cannot be sent to "
                             "Anthropic.")
    block: dict[str, Any] = {"type": "document", "source": source}
    if part.filename is not None:
        block["title"] = part.filename
    for key in ("context", "citations"):
        if extras.get(key) is not None:
            block[key] = extras[key]
    return block


def _expressible(tool: c.Tool) -> bool:
    """Custom tools, and hosted tools this format defined itself."""
    return (NAME in tool.meta and "raw" in tool.meta[NAME]) or not any(
        isinstance(m, dict) and "raw" in m for m in tool.meta.values())


def _encode_tool(tool: c.Tool) -> dict[str, Any]:
    own = tool.meta.get(NAME, {})
    if own.get("raw") is not None:
        return dict(own["raw"])
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = tool.parameters if tool.parameters is not None else {
        "type": "object", "properties": {}}
    if tool.strict is not None:
        out["strict"] = tool.strict
    if tool.cache_control:
        out["cache_control"] = tool.cache_control
    for key, value in own.get("extra", {}).items():
        out.setdefault(key, value)
    return out


def _encode_tool_choice(
        choice: c.ToolChoice | None, parallel: bool | None) -> dict[str, Any] | None:
    if choice is None:
        return {"type": "auto", "disable_parallel_tool_use": True} if parallel is False else None
    out: dict[str, Any] = {"type": {"auto": "auto", "required": "any", "tool": "tool",
                                    "none": "none"}[choice.mode]}
    if choice.mode == "tool":
        out["name"] = choice.name
    if parallel is not None and choice.mode != "none":
        out["disable_parallel_tool_use"] = not parallel
    return out


def _encode_thinking(config: c.ReasoningConfig | None, meta: Mapping[str, Any],
                     settings: Mapping[str, Any], output_config: dict[str, Any]
                     ) -> dict[str, Any] | None:
    if config is None:
        return None
    if not config.enabled:
        return {"type": "disabled"}
    effort = None
    if config.effort is not None:
        effort = meta.get("effort") if config.effort == "xhigh" and meta.get("effort") \
            else _EFFORTS_OUT.get(config.effort)
    if meta.get("effort_only"):
        if effort:
            output_config["effort"] = effort
        return None
    thinking: dict[str, Any]
    if meta.get("thinking") is not None:
        thinking = dict(meta["thinking"])
    elif config.adaptive:
        thinking = {"type": "adaptive"}
    elif config.budget_tokens is not None:
        thinking = {"type": "enabled", "budget_tokens": config.budget_tokens}
    elif settings.get("thinking") == "budget":
        thinking = {"type": "enabled",
                    "budget_tokens": EFFORT_BUDGETS[config.effort or "medium"]}
        effort = None  # models without adaptive thinking reject effort too
    else:
        thinking = {"type": "adaptive"}
    if effort:
        output_config["effort"] = effort
    display = meta.get("display") or (None if config.include_thoughts else "omitted")
    if display:
        thinking["display"] = display
    return thinking


# ---------------------------------------------------------------------- pass-through lane


def without_foreign_reasoning(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without the thinking blocks that carry another provider's reasoning.

    A conversation that went through another provider holds thinking blocks whose
    signature packs that provider's data (:mod:`carry`); Anthropic would refuse
    them. They are dropped, and so is ``thinking`` when the last tool turn is left
    without its signed thinking (as :func:`encode_request` does). ``body`` itself
    is returned when there is nothing to drop (the usual case).
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(_packed_blocks(m) for m in messages):
        return body
    cleaned: list[Any] = []
    for m in messages:
        if not _packed_blocks(m):
            cleaned.append(m)
            continue
        content = [b for b in m["content"] if not _is_packed_block(b)]
        if content:
            cleaned.append({**m, "content": content})
    out = {**body, "messages": cleaned}
    thinking = out.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") != "disabled" and \
            not _last_tool_turn_signed(cleaned):
        del out["thinking"]
    return out


def _packed_blocks(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and message.get("role") == "assistant" and any(
        _is_packed_block(b) for b in content)


def _is_packed_block(block: Any) -> bool:
    return isinstance(block, dict) and block.get("type") == "thinking" and carry.is_packed(
        block.get("signature"))


def _last_tool_turn_signed(messages: list[dict[str, Any]]) -> bool:
    """False when the last assistant turn made tool calls without leading thinking."""
    last = next((m for m in reversed(messages)
                 if isinstance(m, dict) and m.get("role") == "assistant"), None)
    blocks = last.get("content") if last is not None else None
    if not isinstance(blocks, list) or not blocks:
        return True
    if not any(isinstance(b, dict) and b.get("type") == "tool_use" for b in blocks):
        return True
    return isinstance(blocks[0], dict) and blocks[0].get("type") in (
        "thinking", "redacted_thinking")
