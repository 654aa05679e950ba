"""Responses API items and their canonical parts: content, messages, calls, reasoning.

The pieces requests, answers and streams share; input items are decoded by
:class:`InputDecoder` and encoded by :func:`encode_input`. Conventions are
described in :mod:`omniroute.formats.responses`.
"""

from __future__ import annotations

from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.ids import new_id
from omniroute.formats.json_text import dumps
from omniroute.formats.media import data_url, parse_data_url
from omniroute.formats.responses.names import NAME, ToolIndex, flat_name
from omniroute.formats.responses.tools import custom_input


def text_meta(item: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    if item.get("id"):
        info["item_id"] = item["id"]
    if item.get("phase"):
        info["phase"] = item["phase"]
    if part.get("annotations"):
        info["annotations"] = part["annotations"]
    if part.get("type") == "refusal":
        info["refusal"] = True
    return {NAME: info} if info else {}


def decode_content(content: Any, item: dict[str, Any] | None = None) -> list[c.Part]:
    """Canonical parts of a message's (or a tool output's) ``content``."""
    item = item or {}
    if isinstance(content, str):
        return [c.Text(content, meta=text_meta(item, {}))]
    if not isinstance(content, list):
        raise InvalidRequest("Message content must be a string or an array.", param="input")
    parts: list[c.Part] = []
    for part in content:
        if not isinstance(part, dict):
            raise InvalidRequest("Each content part must be an object.", param="input")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
            parts.append(c.Text(str(part.get("text") or ""), meta=text_meta(item, part)))
        elif kind == "refusal":
            parts.append(c.Text(str(part.get("refusal") or ""), meta=text_meta(item, part)))
        elif kind == "input_image":
            parts.append(_decode_image(part))
        elif kind == "input_file":
            parts.append(_decode_file(part))
        else:
            raise InvalidRequest(f"Unsupported content part type {kind!r}.", param="input")
    return parts


def _decode_image(part: dict[str, Any]) -> c.Image:
    url = part.get("image_url")
    if isinstance(url, dict):  # tolerate the chat-completions shape
        url = url.get("url")
    detail = part.get("detail")
    meta = {NAME: {"file_id": part["file_id"]}} if part.get("file_id") else {}
    parsed = parse_data_url(url) if isinstance(url, str) else None
    if parsed:
        return c.Image(media_type=parsed[0], data=parsed[1], detail=detail, meta=meta)
    return c.Image(url=url if isinstance(url, str) else None, detail=detail, meta=meta)


def _decode_file(part: dict[str, Any]) -> c.File:
    raw = part.get("file_data")
    media_type, data = None, None
    if isinstance(raw, str):
        parsed = parse_data_url(raw)
        media_type, data = parsed if parsed else (None, raw)
    return c.File(media_type=media_type, data=data, url=part.get("file_url"),
                  file_id=part.get("file_id"), filename=part.get("filename"))


def encode_user_part(part: c.Part) -> dict[str, Any] | None:
    if isinstance(part, c.Text):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, c.Image):
        out: dict[str, Any] = {"type": "input_image", "detail": part.detail or "auto"}
        if part.data is not None:
            out["image_url"] = data_url(part.media_type, part.data)
        elif part.url:
            out["image_url"] = part.url
        elif part.meta.get(NAME, {}).get("file_id"):
            out["file_id"] = part.meta[NAME]["file_id"]
        else:
            return None
        return out
    if isinstance(part, c.File):
        out = {"type": "input_file"}
        if part.file_id:
            out["file_id"] = part.file_id
        elif part.data is not None:
            out["file_data"] = data_url(part.media_type or "application/pdf", part.data)
        elif part.url:
            out["file_url"] = part.url
        else:
            return None
        if part.filename:
            out["filename"] = part.filename
        return out
    return None


def encode_tool_output(result: c.ToolResult) -> str | list[dict[str, Any]]:
    if all(isinstance(p, c.Text) for p in result.content):
        return "".join(p.text for p in result.content if isinstance(p, c.Text))
    return [x for x in (encode_user_part(p) for p in result.content) if x is not None]


def decode_reasoning(item: dict[str, Any]) -> c.Reasoning:
    summary = [s.get("text", "") for s in item.get("summary") or [] if isinstance(s, dict)]
    packed = carry.unpack(item.get("encrypted_content"))
    if packed is not None:  # another format's reasoning, back from the client
        packed.summary = summary
        return packed
    text = "".join(p.get("text", "") for p in item.get("content") or [] if isinstance(p, dict))
    meta = {NAME: {"id": item["id"]}} if item.get("id") else {}
    return c.Reasoning(text=text, encrypted=item.get("encrypted_content"), summary=summary,
                       source=NAME, meta=meta)


def decode_call(item: dict[str, Any]) -> c.ToolCall:
    """A ``function_call`` / ``custom_tool_call`` item as a canonical tool call."""
    info: dict[str, Any] = {}
    if item.get("id"):
        info["id"] = item["id"]
    namespace = item.get("namespace")
    name = str(item.get("name") or "")
    if namespace:
        info.update(namespace=namespace, name=name)
    if item.get("type") == "custom_tool_call":
        info["custom"] = True
        arguments = dumps({"input": item.get("input") or ""})
    else:
        arguments = item.get("arguments") or ""
        if not isinstance(arguments, str):
            arguments = dumps(arguments)
    call_id = item.get("call_id") or item.get("id")
    if not call_id:
        raise InvalidRequest("A function_call item needs a 'call_id'.", param="input")
    return c.ToolCall(id=str(call_id), name=flat_name(namespace, name), arguments=arguments,
                      meta={NAME: info} if info else {})


def reasoning_item(part: c.Reasoning, item_id: str) -> dict[str, Any]:
    """A Responses reasoning item for ``part``; another format's data is packed."""
    own = part.source == NAME
    item: dict[str, Any] = {"id": item_id, "type": "reasoning"}
    summary = part.summary or ([] if own or not part.text else [part.text])
    item["summary"] = [{"type": "summary_text", "text": s} for s in summary]
    if own and part.text:
        item["content"] = [{"type": "reasoning_text", "text": part.text}]
    if own and part.encrypted:
        item["encrypted_content"] = part.encrypted
    elif not own and carry.has_opaque(part):
        item["encrypted_content"] = carry.pack(part)
    return item


def call_item(part: c.ToolCall, tools: ToolIndex, status: str = "completed") -> dict[str, Any]:
    """A ``function_call`` (or ``custom_tool_call``) output item for ``part``."""
    info = part.meta.get(NAME) or {}
    namespace, name = tools.wire(part.name)
    if info.get("namespace") and not namespace:
        namespace, name = info["namespace"], info.get("name", name)
    item_id = info.get("id") or call_item_id(part.id, "ctc_" if info.get("custom") else "fc_")
    if info.get("custom") or tools.is_custom(part.name):
        args = custom_input(part.arguments)
        item = {"id": item_id, "type": "custom_tool_call", "status": status,
                "call_id": part.id, "name": name, "input": args}
    else:
        item = {"id": item_id, "type": "function_call", "status": status,
                "arguments": part.arguments, "call_id": part.id, "name": name}
    if namespace:
        item["namespace"] = namespace
    return item


def call_item_id(call_id: str, prefix: str = "fc_") -> str:
    """The item id of a call: derived from its call id so it is the same every time."""
    return prefix + call_id.removeprefix("call_").removeprefix("toolu_")


class InputDecoder:
    """Turns the ``input`` item list into canonical messages."""

    def __init__(self) -> None:
        self.system: list[c.Text] = []
        self.messages: list[c.Message] = []
        self.call_names: dict[str, str] = {}
        self._leading = True

    def _current(self, role: str) -> c.Message:
        last = self.messages[-1] if self.messages else None
        if last is None or last.role != role or (role == "user"):
            last = c.Message(role)  # type: ignore[arg-type]
            self.messages.append(last)
        return last

    def add(self, item: Any) -> None:
        if not isinstance(item, dict):
            raise InvalidRequest("Each input item must be an object.", param="input")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind != "message" or item.get("role") not in ("system", "developer"):
            self._leading = False
        if kind == "message":
            self._message(item)
        elif kind in ("function_call", "custom_tool_call"):
            call = decode_call(item)
            self.call_names[call.id] = call.name
            self._current("assistant").parts.append(call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = str(item.get("call_id") or "")
            output = item.get("output")
            content = decode_content(output if output is not None else "")
            name = self.call_names.get(call_id)
            if name is None and item.get("name"):
                name = flat_name(item.get("namespace"), str(item["name"]))
            self._current("tool").parts.append(c.ToolResult(call_id, content, name=name))  # type: ignore[arg-type]
        elif kind == "reasoning":
            self._current("assistant").parts.append(decode_reasoning(item))
        elif kind == "item_reference":
            raise InvalidRequest("Item references need the stored response; send the items.",
                                 param="input")
        # hosted tool calls (web_search_call…) ran upstream; no other format can replay them

    def _message(self, item: dict[str, Any]) -> None:
        role = item.get("role")
        if role in ("system", "developer"):
            texts = [p for p in decode_content(item.get("content"), item) if isinstance(p, c.Text)]
            for text in texts:
                text.meta.setdefault(NAME, {})["role"] = role
            if self._leading:
                self.system.extend(texts)
            else:
                self.messages.append(c.Message("system", list(texts), meta={NAME: {"role": role}}))
        elif role == "user":
            self._current("user").parts.extend(decode_content(item.get("content"), item))
        elif role == "assistant":
            self._current("assistant").parts.extend(decode_content(item.get("content"), item))
        else:
            raise InvalidRequest(f"Unknown message role {role!r}.", param="input")


def message_item(item_id: str, texts: list[c.Text], status: str = "completed") -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "message", "status": status,
                            "role": "assistant", "content": [content_part(t) for t in texts]}
    phase = next(((t.meta.get(NAME) or {}).get("phase") for t in texts
                  if (t.meta.get(NAME) or {}).get("phase")), None)
    if phase:
        item["phase"] = phase
    return item


def content_part(text: c.Text) -> dict[str, Any]:
    info = text.meta.get(NAME) or {}
    if info.get("refusal"):
        return {"type": "refusal", "refusal": text.text}
    return {"type": "output_text", "annotations": info.get("annotations") or [],
            "text": text.text}


def text_item_key(text: c.Text) -> Any:
    """Texts with the same key share one message item (their source item id)."""
    return (text.meta.get(NAME) or {}).get("item_id")


def output_items(response: c.Response, tools: ToolIndex) -> list[dict[str, Any]]:
    """The ``output`` items of a canonical answer, in part order."""
    items: list[dict[str, Any]] = []
    texts: list[c.Text] = []

    def flush() -> None:
        if texts:
            key = text_item_key(texts[0])
            items.append(message_item(key or new_id("msg_"), list(texts)))
            texts.clear()

    for part in response.parts:
        if isinstance(part, c.Text):
            key = text_item_key(part)
            if texts and (key is None or key != text_item_key(texts[0])):
                flush()
            texts.append(part)
            continue
        flush()
        if isinstance(part, c.Reasoning):
            item_id = (part.meta.get(NAME) or {}).get("id") or new_id("rs_")
            items.append(reasoning_item(part, item_id))
        elif isinstance(part, c.ToolCall):
            items.append(call_item(part, tools))
    flush()
    return items


def encode_input(request: c.Request, tools: ToolIndex) -> list[dict[str, Any]]:
    """The ``input`` items of a canonical request."""
    items: list[dict[str, Any]] = []
    for text in request.system:
        role = (text.meta.get(NAME) or {}).get("role")
        if role:
            items.append({"type": "message", "role": role,
                          "content": [{"type": "input_text", "text": text.text}]})
    for message in request.messages:
        if message.role == "system":
            role = (message.meta.get(NAME) or {}).get("role", "developer")
            content = [{"type": "input_text", "text": p.text}
                       for p in message.parts if isinstance(p, c.Text)]
            items.append({"type": "message", "role": role, "content": content})
        elif message.role == "user":
            content = [x for x in (encode_user_part(p) for p in message.parts) if x is not None]
            if content:
                items.append({"type": "message", "role": "user", "content": content})
        elif message.role == "tool":
            for part in message.parts:
                if isinstance(part, c.ToolResult):
                    items.append(_output_item(part, tools))
        else:
            items.extend(_assistant_items(message, tools))
    return items


def _output_item(result: c.ToolResult, tools: ToolIndex) -> dict[str, Any]:
    custom = tools.is_custom(result.name or "") or bool(
        (result.meta.get(NAME) or {}).get("custom"))
    kind = "custom_tool_call_output" if custom else "function_call_output"
    return {"type": kind, "call_id": result.call_id, "output": encode_tool_output(result)}


def _assistant_items(message: c.Message, tools: ToolIndex) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    texts: list[c.Text] = []

    def flush() -> None:
        if texts:
            content = [{"type": "output_text", "text": t.text} if not (
                t.meta.get(NAME) or {}).get("refusal") else {"type": "refusal", "refusal": t.text}
                for t in texts]
            item: dict[str, Any] = {"type": "message", "role": "assistant", "content": content}
            phase = (texts[0].meta.get(NAME) or {}).get("phase")
            if phase:
                item["phase"] = phase
            items.append(item)
            texts.clear()

    for part in message.parts:
        if isinstance(part, c.Text):
            texts.append(part)
            continue
        flush()
        if isinstance(part, c.Reasoning):
            if part.source == NAME and part.encrypted:
                item = {"type": "reasoning",
                        "summary": [{"type": "summary_text", "text": s} for s in part.summary],
                        "encrypted_content": part.encrypted}
                if (part.meta.get(NAME) or {}).get("id"):
                    item["id"] = part.meta[NAME]["id"]
                items.append(item)
        elif isinstance(part, c.ToolCall):
            item = call_item(part, tools)
            if not (part.meta.get(NAME) or {}).get("id"):
                item.pop("id")  # a made-up item id would name an item the upstream never stored
            item.pop("status", None)
            items.append(item)
    flush()
    return items
