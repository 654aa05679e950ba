"""Tools and tool calls across formats: hosted tool definitions, call arguments as objects."""

from __future__ import annotations

from typing import Any

import orjson

from omniroute.formats import canonical as c


def hosted_raw(tool: c.Tool) -> tuple[str, dict[str, Any]] | None:
    """``(format, definition)`` of a hosted tool (web search…), None for a function tool.

    A hosted tool keeps its wire definition in ``meta[<format>]["raw"]``; only
    that format can send it, every other format drops it.
    """
    for name, info in tool.meta.items():
        if isinstance(info, dict) and isinstance(info.get("raw"), dict):
            return name, info["raw"]
    return None


def args_object(arguments: str) -> dict[str, Any]:
    """Tool-call arguments (JSON text) as an object, for formats that send objects."""
    if not arguments.strip():
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {"input": arguments}
    return value if isinstance(value, dict) else {"input": value}
