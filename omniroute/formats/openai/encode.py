"""Canonical requests -> OpenAI Chat Completions bodies (the provider side).

The conventions are those of :mod:`omniroute.formats.openai.request`, which decodes
client requests (and names the connection settings read here); this module is its
other half.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Mapping
from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.media import b64decode_text, data_url
from omniroute.formats.openai.response import NAME, tool_calls
from omniroute.formats.reasoning import effort_for_budget


def encode_request(request: c.Request, client: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The Chat Completions body for ``request`` (the connection settings it reads are
    listed in :mod:`omniroute.formats.openai.request`)."""
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
        out["tool_calls"] = tool_calls(calls)
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
