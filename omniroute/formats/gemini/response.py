"""Gemini ``GenerateContentResponse`` answers -> canonical, and the JSON of one stream frame."""

from __future__ import annotations

from typing import Any

from omniroute.formats import canonical as c
from omniroute.formats.gemini.parts import (
    NAME,
    decode_model_parts,
    stop_reason,
    usage_from_metadata,
)
from omniroute.formats.ids import new_id
from omniroute.formats.json_text import json_object
from omniroute.sse import event_data


def frame_json(frame: bytes) -> dict[str, Any] | None:
    """The chunk in one frame: an SSE event, or a piece of a streamed JSON array."""
    data = event_data(frame)
    if data is None:
        data = frame.strip().lstrip(b"[,").rstrip(b"],").strip()
        if not data:
            return None
    return json_object(data)


def decode_response_body(data: dict[str, Any]) -> c.Response:
    candidates = data.get("candidates") or []
    candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
    content = candidate.get("content") or {}
    resp_id = str(data.get("responseId") or new_id("gen_"))
    parts = decode_model_parts(content.get("parts") or [], resp_id)
    finish = candidate.get("finishReason")
    if not candidates and (data.get("promptFeedback") or {}).get("blockReason"):
        finish = "SAFETY"
    meta: dict[str, Any] = {}
    if finish:
        meta["finishReason"] = finish
    return c.Response(
        id=resp_id, model=str(data.get("modelVersion") or ""), parts=parts,
        stop_reason=stop_reason(finish, any(isinstance(p, c.ToolCall) for p in parts)),
        usage=usage_from_metadata(data.get("usageMetadata")), meta={NAME: meta} if meta else {},
    )
