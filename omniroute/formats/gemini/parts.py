"""Gemini parts and their canonical form: text, thoughts, media, calls, results, usage.

The pieces requests, answers (:mod:`.request`, :mod:`.response`) and streams
(:mod:`.stream`) share. Conventions are described in :mod:`omniroute.formats.gemini`.
"""

from __future__ import annotations

from typing import Any

from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.ids import stable_id
from omniroute.formats.json_text import dumps
from omniroute.formats.tools import args_object

NAME = "gemini"
SKIP_SIGNATURE = "skip_thought_signature_validator"

STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "NOT_FOUND", 405: "UNIMPLEMENTED", 409: "ABORTED", 413: "INVALID_ARGUMENT",
    415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
_FILTERED = {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
             "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "LANGUAGE", "MODEL_ARMOR"}
_FAILED = {"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "MISSING_THOUGHT_SIGNATURE",
           "MALFORMED_RESPONSE", "TOO_MANY_TOOL_CALLS"}
_FINISH = {"end_turn": "STOP", "tool_use": "STOP", "stop_sequence": "STOP", "pause_turn": "STOP",
           "max_tokens": "MAX_TOKENS", "content_filter": "SAFETY", "refusal": "SAFETY",
           "error": "OTHER"}


def status_name(status: int) -> str:
    if status in STATUS_NAMES:
        return STATUS_NAMES[status]
    return "INTERNAL" if status >= 500 else "FAILED_PRECONDITION"


def stop_reason(finish: str | None, saw_call: bool) -> c.StopReason:
    if finish in ("MAX_TOKENS",):
        return "max_tokens"
    if finish in _FILTERED:
        return "content_filter"
    if finish in _FAILED:
        return "error"
    return "tool_use" if saw_call else "end_turn"


def finish_reason(response_stop: str | None) -> str:
    return _FINISH.get(response_stop or "end_turn", "STOP")


def is_gemini3(model: str) -> bool:
    name = model.rsplit("/", 1)[-1]
    return not name.startswith(("gemini-1", "gemini-2"))

# ---------------------------------------------------------------------------- usage


def usage_from_metadata(meta: Any) -> c.Usage:
    if not isinstance(meta, dict):
        return c.Usage()
    prompt = meta.get("promptTokenCount")
    tool_prompt = meta.get("toolUsePromptTokenCount") or 0
    candidates = meta.get("candidatesTokenCount")
    thoughts = meta.get("thoughtsTokenCount")
    output = (None if candidates is None and thoughts is None
              else (candidates or 0) + (thoughts or 0))
    return c.Usage(
        input_tokens=None if prompt is None else prompt + tool_prompt,
        output_tokens=output,
        cache_read_tokens=meta.get("cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def usage_metadata(usage: c.Usage) -> dict[str, Any]:
    prompt, output = usage.input_tokens or 0, usage.output_tokens or 0
    thoughts = usage.reasoning_tokens or 0
    out: dict[str, Any] = {"promptTokenCount": prompt,
                           "candidatesTokenCount": max(output - thoughts, 0)}
    if thoughts:
        out["thoughtsTokenCount"] = thoughts
    if usage.cache_read_tokens:
        out["cachedContentTokenCount"] = usage.cache_read_tokens
    out["totalTokenCount"] = prompt + output
    return out


# ---------------------------------------------------------------------------- parts


def media_part(part: dict[str, Any]) -> c.Image | c.File | None:
    if isinstance(part.get("inlineData"), dict):
        blob = part["inlineData"]
        mime, data = blob.get("mimeType"), blob.get("data")
        if isinstance(mime, str) and mime.startswith("image/"):
            return c.Image(media_type=mime, data=data)
        return c.File(media_type=mime, data=data, filename=blob.get("displayName"))
    if isinstance(part.get("fileData"), dict):
        ref = part["fileData"]
        mime, uri = ref.get("mimeType"), ref.get("fileUri")
        if isinstance(mime, str) and mime.startswith("image/"):
            return c.Image(media_type=mime, url=uri)
        return c.File(media_type=mime, url=uri, filename=ref.get("displayName"))
    return None


def encode_media(part: c.Image | c.File) -> dict[str, Any] | None:
    if part.data is not None:
        default = "image/png" if isinstance(part, c.Image) else "application/pdf"
        return {"inlineData": {"mimeType": part.media_type or default, "data": part.data}}
    uri = part.url or (part.file_id if isinstance(part, c.File) else None)
    if uri:
        ref: dict[str, Any] = {"fileUri": uri}
        if part.media_type:
            ref["mimeType"] = part.media_type
        return {"fileData": ref}
    return None


def tool_result(part: dict[str, Any], call_id: str) -> c.ToolResult:
    response = part.get("response")
    name = part.get("name")
    content: list[c.Text | c.Image | c.File] = []
    is_error = False
    if isinstance(response, dict) and set(response) == {"output"} \
            and isinstance(response["output"], str):
        content.append(c.Text(response["output"]))
    elif isinstance(response, dict) and set(response) == {"error"} \
            and isinstance(response["error"], str):
        content.append(c.Text(response["error"]))
        is_error = True
    else:
        content.append(c.Text(dumps(response if response is not None else {})))
        is_error = isinstance(response, dict) and "error" in response and "output" not in response
    for inner in part.get("parts") or []:
        media = media_part(inner) if isinstance(inner, dict) else None
        if media is not None:
            content.append(media)
    info: dict[str, Any] = {"response": response}
    if part.get("id"):
        info["id"] = part["id"]
    return c.ToolResult(call_id, content, is_error=is_error,
                        name=name if isinstance(name, str) else None, meta={NAME: info})


def encode_tool_result(result: c.ToolResult, name: str) -> list[dict[str, Any]]:
    info = result.meta.get(NAME) or {}
    response = info.get("response")
    if not isinstance(response, dict):
        text = "".join(p.text for p in result.content if isinstance(p, c.Text))
        response = {"error": text} if result.is_error else {"output": text}
    call: dict[str, Any] = {"name": name, "response": response}
    call_id = info.get("id") if NAME in result.meta else result.call_id
    if call_id:  # a Gemini client's result keeps the id it had (or none)
        call["id"] = call_id
    parts: list[dict[str, Any]] = [{"functionResponse": call}]
    for part in result.content:
        if isinstance(part, (c.Image, c.File)):
            media = encode_media(part)
            if media is not None:
                parts.append(media)
    return parts


def decode_call(part: dict[str, Any], fallback_id: str) -> c.ToolCall:
    call = part["functionCall"]
    info: dict[str, Any] = {}
    if call.get("id"):
        info["id"] = call["id"]
    args = call.get("args")
    # meta["gemini"] is always set: it marks a call Gemini made (with or without an id)
    return c.ToolCall(id=str(call.get("id") or fallback_id), name=str(call.get("name") or ""),
                      arguments=dumps(args if args is not None else {}), meta={NAME: info})


def encode_call(part: c.ToolCall, signature: str | None = None, *,
                upstream: bool = False) -> dict[str, Any]:
    """A ``functionCall`` part. Upstream, a call Gemini made without an id stays without."""
    info = part.meta.get(NAME) or {}
    call: dict[str, Any] = {"id": part.id, "name": part.name, "args": args_object(part.arguments)}
    if upstream and NAME in part.meta:
        if info.get("id"):
            call["id"] = info["id"]
        else:
            del call["id"]
    out: dict[str, Any] = {"functionCall": call}
    if signature:
        out["thoughtSignature"] = signature
    return out


def call_signature(signature: str) -> c.Reasoning:
    """A function call's thought signature, as the reasoning part just before the call.

    Other formats carry it like any reasoning they cannot read (a Responses
    client in ``encrypted_content``, an Anthropic client in a thinking
    signature), so it reaches the call again when the history comes back.
    """
    return c.Reasoning(signature=signature, source=NAME)


def is_call_signature(part: c.Part) -> bool:
    return isinstance(part, c.Reasoning) and part.source == NAME and bool(part.signature) \
        and not part.text and not part.summary


def _thought(part: dict[str, Any]) -> c.Reasoning:
    signature = part.get("thoughtSignature")
    packed = carry.unpack(signature)
    if packed is not None:
        return packed
    return c.Reasoning(text=str(part.get("text") or ""), signature=signature, source=NAME)


def decode_model_parts(parts: list[Any], id_seed: Any) -> list[c.Part]:
    """Canonical parts of a ``model`` turn (a history turn or an answer)."""
    out: list[c.Part] = []
    for pi, part in enumerate(parts):
        if not isinstance(part, dict):
            continue
        signature = part.get("thoughtSignature")
        packed = carry.unpack(signature)
        if "functionCall" in part and isinstance(part["functionCall"], dict):
            call = part["functionCall"]
            if packed is not None:
                last = out[-1] if out else None
                if isinstance(last, c.Reasoning) and not carry.has_opaque(last) \
                        and last.text == packed.text:
                    out.pop()
                out.append(packed)
            elif signature:
                out.append(call_signature(signature))
            out.append(decode_call(part, stable_id("call_", id_seed, pi, call.get("name"),
                                                   call.get("args"))))
        elif part.get("thought"):
            out.append(_thought(part))
        elif "text" in part:
            meta = {NAME: {"thoughtSignature": signature}} if signature else {}
            if packed is not None:
                out.append(packed)
                meta = {}
            out.append(c.Text(str(part.get("text") or ""), meta=meta))
        else:
            media = media_part(part)
            if media is not None:
                out.append(media)
    return out


def encode_model_parts(parts: list[c.Part], *, upstream: bool,
                       dummy_signature: bool = False) -> list[dict[str, Any]]:
    """Gemini parts of an assistant turn.

    :param upstream: for a Gemini upstream (own signatures only, another
        format's reasoning dropped) rather than for a Gemini client (another
        format's reasoning shown as thoughts, its opaque data packed).
    :param dummy_signature: give the turn's first call the documented dummy
        signature when it has none (Gemini 3 rejects unsigned calls).
    """
    out: list[dict[str, Any]] = []
    pending: str | None = None  # another format's reasoning, packed, for the next call
    own: str | None = None  # a call's own signature (:func:`call_signature`)
    first_call = True
    for i, part in enumerate(parts):
        if isinstance(part, c.Reasoning):
            if is_call_signature(part) and i + 1 < len(parts) \
                    and isinstance(parts[i + 1], c.ToolCall):
                own = part.signature
            elif part.source == NAME:
                thought: dict[str, Any] = {"text": part.text or "\n\n".join(part.summary),
                                           "thought": True}
                if part.signature:
                    thought["thoughtSignature"] = part.signature
                out.append(thought)
            elif not upstream:
                text = part.text or "\n\n".join(part.summary)
                if carry.has_opaque(part):
                    pending = carry.pack(part)
                if text or pending:
                    out.append({"text": text, "thought": True})
        elif isinstance(part, c.Text):
            text_part: dict[str, Any] = {"text": part.text}
            signature = (part.meta.get(NAME) or {}).get("thoughtSignature")
            if signature:
                text_part["thoughtSignature"] = signature
            out.append(text_part)
        elif isinstance(part, c.ToolCall):
            signature = None
            if own is not None:
                signature, own = own, None
            elif pending is not None:
                signature, pending = pending, None
            elif dummy_signature and first_call:
                signature = SKIP_SIGNATURE
            out.append(encode_call(part, signature, upstream=upstream))
            first_call = False
        elif isinstance(part, (c.Image, c.File)):
            media = encode_media(part)
            if media is not None:
                out.append(media)
    if pending is not None:  # no call followed: the packed data stays on its thought
        for thought in reversed(out):
            if thought.get("thought"):
                thought["thoughtSignature"] = pending
                break
    return out
