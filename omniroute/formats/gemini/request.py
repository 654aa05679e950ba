"""Gemini ``generateContent`` requests <-> canonical.

Decoding reads a client's body (field names already in camelCase, see
:func:`camel_body`); encoding writes the body for a Gemini upstream. The
conventions are listed in :mod:`omniroute.formats.gemini`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.canonical import SYSTEM_REMINDER
from omniroute.formats.gemini import schema
from omniroute.formats.gemini.parts import (
    NAME,
    decode_model_parts,
    encode_media,
    encode_model_parts,
    encode_tool_result,
    is_gemini3,
    media_part,
    tool_result,
)
from omniroute.formats.ids import stable_id
from omniroute.formats.tools import hosted_raw

_MODES = {"AUTO": "auto", "ANY": "required", "NONE": "none", "VALIDATED": "auto"}
_EFFORT_BUDGET = {"minimal": 512, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 32768}
_GENERATION_KEYS = ("candidateCount", "responseModalities", "speechConfig", "mediaResolution",
                    "responseLogprobs", "logprobs", "routingConfig", "imageConfig")
_BODY_KEYS = ("safetySettings", "cachedContent", "labels")


# ---------------------------------------------------------------------------- decoding

#: keys whose values are the caller's own data (function arguments and results, schemas):
#: their keys are never renamed
_OPAQUE_VALUES = frozenset({"args", "response", "parameters", "parametersJsonSchema",
                            "responseSchema", "responseJsonSchema", "labels"})


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def camel_body(value: Any) -> Any:
    """A request body with every field name in lowerCamelCase.

    The API takes both spellings, and google-genai sends a mix (``inlineData``
    with ``mime_type``, ``thinkingConfig`` with ``include_thoughts``,
    ``parameters_json_schema``); the decoder reads one. Values that are the
    caller's own data (:data:`_OPAQUE_VALUES`) keep their keys.
    """
    if isinstance(value, list):
        return [camel_body(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = camel_case(key) if "_" in key else key
        out[name] = item if name in _OPAQUE_VALUES else camel_body(item)
    return out


def _decode_contents(contents: list[Any]) -> list[c.Message]:
    messages: list[c.Message] = []
    pending: list[c.ToolCall] = []
    for ci, content in enumerate(contents):
        if not isinstance(content, dict):
            raise InvalidRequest("Each content must be an object.", param="contents")
        parts = content.get("parts") or []
        if not isinstance(parts, list):
            raise InvalidRequest("'parts' must be an array.", param="contents")
        if content.get("role") == "model":
            decoded = decode_model_parts(parts, ci)
            pending += [p for p in decoded if isinstance(p, c.ToolCall)]
            if decoded:
                messages.append(c.Message("assistant", decoded))
            continue
        results: list[c.Part] = []
        others: list[c.Part] = []
        for pi, part in enumerate(parts):
            if not isinstance(part, dict):
                raise InvalidRequest("Each part must be an object.", param="contents")
            if isinstance(part.get("functionResponse"), dict):
                response = part["functionResponse"]
                call = _match(pending, response.get("id"), response.get("name"))
                call_id = call.id if call is not None else str(
                    response.get("id") or stable_id("call_", ci, pi, response.get("name")))
                results.append(tool_result(response, call_id))
            elif "text" in part:
                others.append(c.Text(str(part.get("text") or "")))
            else:
                media = media_part(part)
                if media is not None:
                    others.append(media)
        if results:
            messages.append(c.Message("tool", results))
        if others:
            messages.append(c.Message("user", others))
    return messages


def _match(pending: list[c.ToolCall], call_id: Any, name: Any) -> c.ToolCall | None:
    for rule in (lambda p: call_id and (p.id == call_id
                                        or (p.meta.get(NAME) or {}).get("id") == call_id),
                 lambda p: p.name == name):
        for call in pending:
            if rule(call):
                pending.remove(call)
                return call
    return None


def _decode_tools(raw: Any) -> list[c.Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    tools: list[c.Tool] = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise InvalidRequest("Each tool must be an object.", param="tools")
        for key, value in entry.items():
            if key in ("functionDeclarations", "function_declarations"):
                for decl in value or []:
                    tools.append(_declaration(decl))
            else:
                tools.append(c.Tool(name=key, meta={NAME: {"raw": {key: value}}}))
    return tools


def _declaration(decl: Any) -> c.Tool:
    if not isinstance(decl, dict) or not isinstance(decl.get("name"), str):
        raise InvalidRequest("A function declaration needs a 'name'.", param="tools")
    if decl.get("parametersJsonSchema") is not None:
        params = decl["parametersJsonSchema"]
    elif decl.get("parameters") is not None:
        params = schema.to_json_schema(decl["parameters"])
    else:
        params = None
    extra = {k: v for k, v in decl.items()
             if k not in ("name", "description", "parameters", "parametersJsonSchema")}
    return c.Tool(decl["name"], decl.get("description"), params,
                  meta={NAME: {"extra": extra}} if extra else {})


def _decode_tool_choice(config: Any) -> tuple[c.ToolChoice | None, dict[str, Any]]:
    if not isinstance(config, dict) or not isinstance(config.get("functionCallingConfig"), dict):
        return None, {}
    fcc = config["functionCallingConfig"]
    mode = _MODES.get(str(fcc.get("mode") or "AUTO").upper(), "auto")
    names = fcc.get("allowedFunctionNames") or []
    if mode == "required" and len(names) == 1:
        return c.ToolChoice("tool", names[0]), {}
    return c.ToolChoice(mode), ({"allowedFunctionNames": names} if names else {})  # type: ignore[arg-type]


def _decode_generation(gen: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "temperature": gen.get("temperature"), "top_p": gen.get("topP"),
        "top_k": _whole(gen.get("topK")),
        "max_tokens": gen.get("maxOutputTokens"), "seed": gen.get("seed"),
        "presence_penalty": gen.get("presencePenalty"),
        "frequency_penalty": gen.get("frequencyPenalty"),
    }
    stops = gen.get("stopSequences")
    out["stop"] = list(stops) if isinstance(stops, list) else []
    mime = gen.get("responseMimeType")
    if mime == "application/json":
        if gen.get("responseJsonSchema") is not None:
            out["response_format"] = c.ResponseFormat("json_schema", gen["responseJsonSchema"])
        elif gen.get("responseSchema") is not None:
            out["response_format"] = c.ResponseFormat(
                "json_schema", schema.to_json_schema(gen["responseSchema"]))
        else:
            out["response_format"] = c.ResponseFormat("json_object")
    elif mime:
        meta["responseMimeType"] = mime
    thinking = gen.get("thinkingConfig")
    if isinstance(thinking, dict):
        budget = thinking.get("thinkingBudget")
        level = thinking.get("thinkingLevel")
        out["reasoning"] = c.ReasoningConfig(
            enabled=budget != 0,
            effort=level.lower() if isinstance(level, str) else None,
            budget_tokens=budget if isinstance(budget, int) and budget > 0 else None,
            include_thoughts=bool(thinking.get("includeThoughts")),
            adaptive=budget == -1,
        )
    extra = {k: gen[k] for k in _GENERATION_KEYS if k in gen}
    if extra:
        meta["generationConfig"] = extra
    return out


def _whole(value: Any) -> Any:
    """A count sent as a float (google-genai sends ``topK: 3.0``) as an int."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _thinking_config(cfg: c.ReasoningConfig, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    gemini3 = is_gemini3(model)
    if not cfg.enabled:
        out["thinkingLevel" if gemini3 else "thinkingBudget"] = "low" if gemini3 else 0
        return out
    if gemini3:
        effort = cfg.effort or (("low" if cfg.budget_tokens <= 1024 else "high")
                                if cfg.budget_tokens else None)
        if effort:
            out["thinkingLevel"] = {"xhigh": "high", "none": "low"}.get(effort, effort)
    elif cfg.budget_tokens:
        out["thinkingBudget"] = cfg.budget_tokens
    elif cfg.effort:
        out["thinkingBudget"] = _EFFORT_BUDGET.get(cfg.effort, -1)
    elif cfg.adaptive:
        out["thinkingBudget"] = -1
    if cfg.include_thoughts:
        out["includeThoughts"] = True
    return out


#: the fields of a body (in camelCase) that :func:`text_request` reads, and those of its
#: ``generationConfig`` (any other: the body is decoded)
_TEXT_FIELDS = frozenset({"contents", "systemInstruction", "generationConfig"})
_TEXT_GENERATION = frozenset({"temperature", "topP", "topK", "maxOutputTokens", "seed",
                              "presencePenalty", "frequencyPenalty", "stopSequences"})


def _camel_keys(value: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any] | None:
    """``value`` with its keys in camelCase (not its values), when they are all
    ``allowed`` and no two spell the same name; else None."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = camel_case(key) if "_" in key else key
        if name not in allowed or name in out:
            return None
        out[name] = item
    return out


def _one_text(content: Any) -> str | None:
    """The text of a content (or a system instruction) that is one non-empty text part
    (and, for a content, a role); else None."""
    if not isinstance(content, dict) or not content.keys() <= {"role", "parts"}:
        return None
    parts = content.get("parts")
    if not isinstance(parts, list) or len(parts) != 1:
        return None
    part = parts[0]
    if not isinstance(part, dict) or len(part) != 1:
        return None
    text = part.get("text")
    return text if type(text) is str and text else None


def text_request(body: dict[str, Any]) -> c.TextRequest | None:
    """The :data:`~omniroute.formats.canonical.TextRequest` that :func:`decode_request`
    would make of the client body ``body`` (either spelling of its field names), when each
    content is a ``user`` or ``model`` turn of one non-empty text part, the system
    instruction a string or one text part, and the generation config only sampling
    settings; else None. Values are taken as sent, not checked."""
    fields = _camel_keys(body, _TEXT_FIELDS)
    if fields is None:
        return None
    system: list[str] = []
    instruction = fields.get("systemInstruction")
    if type(instruction) is str:
        if instruction:
            system.append(instruction)
    elif instruction:  # (an empty one is none: the decode reads ``or``)
        text = _one_text(instruction)
        if text is None:
            return None
        system.append(text)
    contents = fields.get("contents")
    if not isinstance(contents, list) or not contents:
        return None
    turns: list[tuple[str, str]] = []
    for content in contents:
        text = _one_text(content)
        if text is None:
            return None
        role = content.get("role", "user")
        if role != "user" and role != "model":
            return None
        turns.append(("assistant" if role == "model" else "user", text))
    gen = fields.get("generationConfig") or {}
    if not isinstance(gen, dict):
        return None
    gen = _camel_keys(gen, _TEXT_GENERATION)
    if gen is None:
        return None
    stops = gen.get("stopSequences")
    get = gen.get
    return system, turns, (
        None, get("maxOutputTokens"), get("temperature"), get("topP"), _whole(get("topK")),
        list(stops) if isinstance(stops, list) else [], get("seed"), get("presencePenalty"),
        get("frequencyPenalty"))


def decode_request(body: dict[str, Any], model: str, stream: bool) -> c.Request:
    """A client body (field names already in camelCase, checked) as a canonical request."""
    meta: dict[str, Any] = {k: body[k] for k in _BODY_KEYS if k in body}
    system: list[c.Text] = []
    instruction = body.get("systemInstruction") or body.get("system_instruction")
    if isinstance(instruction, str):
        system.append(c.Text(instruction))
    elif isinstance(instruction, dict):
        system += [c.Text(str(p["text"])) for p in instruction.get("parts") or []
                   if isinstance(p, dict) and "text" in p]
    choice, choice_meta = _decode_tool_choice(body.get("toolConfig"))
    meta.update(choice_meta)
    gen = body.get("generationConfig") or {}
    if not isinstance(gen, dict):
        raise InvalidRequest("'generationConfig' must be an object.", param="generationConfig")
    fields = _decode_generation(gen, meta)
    return c.Request(
        model=model.removeprefix("models/"),
        messages=_decode_contents(body["contents"]),
        system=system,
        tools=_decode_tools(body.get("tools")),
        tool_choice=choice,
        stream=stream,
        meta={NAME: meta} if meta else {},
        **fields,
    )


# ---------------------------------------------------------------------------- encoding


def encode_request(request: c.Request,
                   client: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``generateContent`` body for a Gemini upstream."""
    settings = client or {}
    meta = request.meta.get(NAME) or {}
    names = {p.id: p.name for m in request.messages if m.role == "assistant"
             for p in m.parts if isinstance(p, c.ToolCall)}
    dummy = is_gemini3(request.model)
    contents: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role == "assistant":
            role, parts = "model", encode_model_parts(message.parts, upstream=True,
                                                      dummy_signature=dummy)
        elif message.role == "tool":
            role, parts = "user", [
                x for p in message.parts if isinstance(p, c.ToolResult)
                for x in encode_tool_result(p, p.name or names.get(p.call_id, ""))]
        elif message.role == "system":  # Gemini has none mid-conversation: a marked user text
            role, parts = "user", [{"text": SYSTEM_REMINDER.format(p.text)}
                                   for p in message.parts if isinstance(p, c.Text)]
        else:
            role, parts = "user", _user_parts(message.parts)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if request.system:
        body["systemInstruction"] = {"parts": [{"text": t.text} for t in request.system]}
    tools = _tools(request.tools, settings.get("gemini_schema") == "openapi")
    if tools:
        body["tools"] = tools
        config = _tool_config(request.tool_choice, meta)
        if config:
            body["toolConfig"] = config
    gen = _generation(request, settings, meta)
    if gen:
        body["generationConfig"] = gen
    for key in _BODY_KEYS:
        if key in meta:
            body[key] = meta[key]
    return body


def _user_parts(parts: list[c.Part]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for part in parts:
        if isinstance(part, c.Text):
            out.append({"text": part.text})
        elif isinstance(part, (c.Image, c.File)):
            media = encode_media(part)
            if media is not None:
                out.append(media)
    return out


def _tools(tools: list[c.Tool], openapi: bool) -> list[dict[str, Any]]:
    declarations: list[dict[str, Any]] = []
    hosted: list[dict[str, Any]] = []
    for tool in tools:
        raw = hosted_raw(tool)
        if raw is not None:
            if raw[0] == NAME:
                hosted.append(raw[1])
            continue
        decl: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            decl["description"] = tool.description
        if tool.parameters is not None:
            if openapi:
                decl["parameters"] = schema.to_openapi(tool.parameters)
            else:
                decl["parametersJsonSchema"] = schema.for_json_schema_field(tool.parameters)
        decl.update((tool.meta.get(NAME) or {}).get("extra") or {})
        declarations.append(decl)
    out: list[dict[str, Any]] = [{"functionDeclarations": declarations}] if declarations else []
    return out + hosted


def _tool_config(choice: c.ToolChoice | None, meta: dict[str, Any]) -> dict[str, Any] | None:
    if choice is None:
        return None
    config: dict[str, Any] = {
        "mode": {"auto": "AUTO", "none": "NONE", "required": "ANY", "tool": "ANY"}[choice.mode]}
    if choice.mode == "tool" and choice.name:
        config["allowedFunctionNames"] = [choice.name]
    elif meta.get("allowedFunctionNames"):
        config["allowedFunctionNames"] = meta["allowedFunctionNames"]
    return {"functionCallingConfig": config}


def _generation(request: c.Request, settings: Mapping[str, Any],
                meta: dict[str, Any]) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    for key, value in (("temperature", request.temperature), ("topP", request.top_p),
                       ("topK", request.top_k),
                       ("maxOutputTokens", request.max_tokens or settings.get("max_tokens")),
                       ("seed", request.seed), ("presencePenalty", request.presence_penalty),
                       ("frequencyPenalty", request.frequency_penalty)):
        if value is not None:
            gen[key] = value
    if request.stop:
        gen["stopSequences"] = list(request.stop)
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        gen["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema is not None:
            if settings.get("gemini_schema") == "openapi":
                gen["responseSchema"] = schema.to_openapi(fmt.schema)
            else:
                gen["responseJsonSchema"] = schema.for_json_schema_field(fmt.schema)
    elif meta.get("responseMimeType"):
        gen["responseMimeType"] = meta["responseMimeType"]
    if request.reasoning is not None:
        thinking = _thinking_config(request.reasoning, request.model)
        if thinking:
            gen["thinkingConfig"] = thinking
    gen.update(meta.get("generationConfig") or {})
    return gen
