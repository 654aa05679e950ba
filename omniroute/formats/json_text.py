"""JSON text the formats read and write: values to ``str``, bodies to objects."""

from __future__ import annotations

from typing import Any

import orjson


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object, or None."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
