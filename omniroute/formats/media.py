"""Small helpers the formats share: data URLs, image types, generated ids, JSON args."""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from typing import Any

import orjson

from omniroute.formats import canonical as c

_MAGIC_TYPES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)


def parse_data_url(url: str) -> tuple[str | None, str] | None:
    """``(media_type, base64 data)`` of a ``data:...;base64,...`` URL, else None."""
    if not url.startswith("data:"):
        return None
    head, sep, data = url[5:].partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    media_type = head[: -len(";base64")] or None
    return media_type, data


def data_url(media_type: str | None, data: str) -> str:
    return f"data:{media_type or 'application/octet-stream'};base64,{data}"


def sniff_media_type(data: str, default: str = "image/png") -> str:
    """The media type of base64 ``data`` from its first bytes (Ollama sends bare base64)."""
    try:
        head = base64.b64decode(data[:32] + "=" * (-len(data[:32]) % 4))
    except (binascii.Error, ValueError):
        return default
    for magic, media_type in _MAGIC_TYPES:
        if head.startswith(magic):
            return media_type
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return default


def _token() -> str:
    return uuid.uuid4().hex


def new_id(prefix: str) -> str:
    """A fresh random id such as ``resp_…`` or ``call_…``."""
    return prefix + _token()


def stable_id(prefix: str, *parts: Any) -> str:
    """An id derived from ``parts``: the same history always gets the same ids."""
    digest = hashlib.sha256(orjson.dumps(parts, default=str)).hexdigest()[:24]
    return prefix + digest


def hosted_raw(tool: c.Tool) -> tuple[str, dict[str, Any]] | None:
    """``(format, definition)`` of a hosted tool (web search…), None for a function tool.

    A hosted tool keeps its wire definition in ``meta[<format>]["raw"]``; only
    that format can send it, every other format drops it.
    """
    for name, info in tool.meta.items():
        if isinstance(info, dict) and isinstance(info.get("raw"), dict):
            return name, info["raw"]
    return None


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def args_object(arguments: str) -> dict[str, Any]:
    """Tool-call arguments (JSON text) as an object, for formats that send objects."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"input": arguments}
    return value if isinstance(value, dict) else {"input": value}


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object, or None."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
