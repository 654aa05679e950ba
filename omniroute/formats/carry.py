"""Opaque reasoning carried through a client format that cannot express it.

An Anthropic thinking signature means nothing to a Responses or Gemini client,
but the client must hand it back for the next turn to work (Anthropic rejects a
tool loop whose thinking lost its signature). So when a format encodes a
:class:`~omniroute.formats.canonical.Reasoning` that another format produced,
it packs the opaque values into the one opaque field its own clients replay
untouched (Responses ``encrypted_content``, Gemini ``thoughtSignature``), and
unpacks them again when the client sends them back.

On the pass-through lane, the client's body goes upstream as sent: the format
drops packed values from it first (:func:`is_packed`).

The packed value is standard base64 (Gemini SDKs decode thought signatures as
base64 bytes) of a magic prefix followed by JSON; real provider values never
start with the prefix.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import orjson

from omniroute.formats import canonical as c

_MAGIC = b"omniroute:v1"  # 12 bytes: its base64 form is a fixed text prefix
_PREFIX = base64.b64encode(_MAGIC).decode()


def is_packed(value: Any) -> bool:
    """True when ``value`` is a :func:`pack` result (cheap: a prefix test).

    On the pass-through lane a history that travelled through another provider
    still holds such values; they mean nothing to this format's upstream, which
    would reject them as invalid signatures, so the format drops them.
    """
    return isinstance(value, str) and value.startswith(_PREFIX)


def has_opaque(part: c.Reasoning) -> bool:
    """True when ``part`` holds data only its source format understands."""
    return bool(part.signature or part.redacted or part.encrypted)


def pack(part: c.Reasoning) -> str:
    """The opaque values of ``part`` (and its text, which signatures cover) as one string."""
    data: dict[str, Any] = {"source": part.source, "text": part.text}
    for name in ("signature", "redacted", "encrypted"):
        value = getattr(part, name)
        if value is not None:
            data[name] = value
    return base64.b64encode(_MAGIC + orjson.dumps(data)).decode()


def unpack(value: Any) -> c.Reasoning | None:
    """The reasoning :func:`pack` stored in ``value``, or None for any other value.

    Accepts the URL-safe alphabet and missing padding too: google-genai decodes a
    thought signature to bytes and encodes it again URL-safe.
    """
    if not isinstance(value, str) or not value.startswith(_PREFIX):
        return None
    value = value.replace("-", "+").replace("_", "/")
    value += "=" * (-len(value) % 4)
    try:
        raw = base64.b64decode(value, validate=True)
        data = orjson.loads(raw[len(_MAGIC):])
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    source = data.get("source")
    return c.Reasoning(
        text=data.get("text") or "",
        signature=data.get("signature"),
        redacted=data.get("redacted"),
        encrypted=data.get("encrypted"),
        source=source if isinstance(source, str) else None,
    )
