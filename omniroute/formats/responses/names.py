"""Names on the Responses wire: the format's name, and tool names flattened from namespaces."""

from __future__ import annotations

from typing import Any

from omniroute.formats import canonical as c
from omniroute.formats.tools import hosted_raw

NAME = "responses"


def flat_name(namespace: str | None, name: str) -> str:
    """The canonical name of ``name`` inside ``namespace``."""
    if not namespace:
        return name
    return namespace + name if namespace.endswith("__") else f"{namespace}__{name}"


class ToolIndex:
    """How the request's canonical tools map back to Responses names and kinds."""

    def __init__(self, tools: list[c.Tool]) -> None:
        self.by_name: dict[str, dict[str, Any]] = {}
        for tool in tools:
            info = tool.meta.get(NAME)
            if isinstance(info, dict) and hosted_raw(tool) is None:
                self.by_name[tool.name] = info

    def wire(self, name: str) -> tuple[str | None, str]:
        """``(namespace, name)`` of a canonical tool name."""
        info = self.by_name.get(name) or {}
        namespace = info.get("namespace")
        return (namespace, info.get("name", name)) if namespace else (None, name)

    def is_custom(self, name: str) -> bool:
        return "custom" in (self.by_name.get(name) or {})
