"""The oracle's own readers of what the gateway sent, written from the specs, not from the
gateway's code: the oracle must not judge the code under test with that same code.

- :func:`sse_events`: server-sent events as the WHATWG HTML spec parses them.
- :func:`camel_keys`: a Gemini body with its snake_case field names (the API takes both
  spellings) in lowerCamelCase, leaving the caller's own data alone.
- :func:`json_schema`: JSON Schema from Gemini's OpenAPI-subset ``Schema``.
- :func:`data_url`: the media type and base64 data of a ``data:`` URL (RFC 2397).
"""

from __future__ import annotations

import re
from typing import Any

#: Gemini fields whose values are the caller's own data (function arguments and results,
#: schemas, labels): their keys are names the caller chose, never renamed
_OPAQUE = frozenset({"args", "response", "parameters", "parametersJsonSchema", "responseSchema",
                     "responseJsonSchema", "labels"})


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """``(event name or None, data)`` of each event in ``raw``.

    Lines end in CRLF, LF or CR; a blank line dispatches the event; ``data`` lines join
    with LF; a line starting with ``:`` is a comment; one space after the colon is
    dropped; an event without data is not dispatched, nor is one that the stream ends in
    the middle of.
    """
    out: list[tuple[str | None, str]] = []
    name: str | None = None
    data: list[str] = []
    for line in re.split(r"\r\n|\r|\n", raw.decode()):
        if not line:
            if data:
                out.append((name, "\n".join(data)))
            name, data = None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return out


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def camel_keys(value: Any) -> Any:
    """``value`` with every field name in lowerCamelCase, except inside :data:`_OPAQUE`."""
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _camel(key)
        out[name] = item if name in _OPAQUE else camel_keys(item)
    return out


def json_schema(schema: Any) -> Any:
    """JSON Schema from an OpenAPI-subset schema: ``type`` lower-cased, ``nullable`` as a
    ``"null"`` type, down ``properties``, ``items`` and ``anyOf``."""
    if not isinstance(schema, dict):
        return schema
    out = {_camel(k): v for k, v in schema.items()}
    nullable = out.pop("nullable", False) is True
    if isinstance(out.get("type"), str):
        out["type"] = out["type"].lower()
        if nullable:
            out["type"] = [out["type"], "null"]
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: json_schema(v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = json_schema(out["items"])
    if isinstance(out.get("anyOf"), list):
        out["anyOf"] = [json_schema(v) for v in out["anyOf"]]
    return out


def data_url(url: str) -> tuple[str | None, str] | None:
    """``(media type or None, base64 data)`` of a base64 ``data:`` URL, else None."""
    match = re.fullmatch(r"data:([^,;]*)((?:;[^,;]*)*);base64,(.*)", url, re.DOTALL)
    if match is None:
        return None
    return match.group(1) or None, match.group(3)
