"""Media carried inline: data URLs, media types sniffed from bytes, text documents as base64."""

from __future__ import annotations

import base64
import binascii

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


def b64encode_text(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def b64decode_text(data: str) -> str | None:
    """UTF-8 text from base64, or None when ``data`` is not base64 of text."""
    try:
        return base64.b64decode(data, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
