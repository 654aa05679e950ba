"""Responses tool definitions <-> canonical tools: function, namespace, custom and hosted tools."""

from __future__ import annotations

from typing import Any

import orjson

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.responses.names import NAME, flat_name
from omniroute.formats.tools import hosted_raw

CUSTOM_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The raw input of the tool."}},
    "required": ["input"],
}


def decode_tools(raw: Any) -> list[c.Tool]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    tools: list[c.Tool] = []
    for tool in raw:
        if not isinstance(tool, dict):
            raise InvalidRequest("Each tool must be an object.", param="tools")
        kind = tool.get("type")
        if kind == "namespace":
            namespace = str(tool.get("name") or "")
            for inner in tool.get("tools") or []:
                if isinstance(inner, dict):
                    tools.append(_function_tool(inner, namespace, tool.get("description")))
        elif kind in ("function", "custom"):
            tools.append(_function_tool(tool, None, None))
        else:
            tools.append(c.Tool(name=str(tool.get("name") or kind), meta={NAME: {"raw": tool}}))
    return tools


def _function_tool(tool: dict[str, Any], namespace: str | None, ns_description: Any) -> c.Tool:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("A function tool needs a 'name'.", param="tools")
    info: dict[str, Any] = {}
    if namespace:
        info.update(namespace=namespace, name=name)
        if ns_description:
            info["namespace_description"] = ns_description
    extra = {k: v for k, v in tool.items()
             if k not in ("type", "name", "description", "parameters", "strict", "format")}
    if extra:
        info["extra"] = extra
    if tool.get("type") == "custom":
        info["custom"] = tool.get("format") or {"type": "text"}
        return c.Tool(flat_name(namespace, name), tool.get("description"), CUSTOM_PARAMETERS,
                      meta={NAME: info})
    return c.Tool(flat_name(namespace, name), tool.get("description"), tool.get("parameters"),
                  tool.get("strict"), meta={NAME: info} if info else {})


def encode_tools(tools: list[c.Tool]) -> list[dict[str, Any]]:
    """Responses tool definitions: namespaces regrouped, hosted tools restored."""
    out: list[dict[str, Any]] = []
    spaces: dict[str, dict[str, Any]] = {}
    for tool in tools:
        hosted = hosted_raw(tool)
        if hosted is not None:
            if hosted[0] == NAME:
                out.append(hosted[1])
            continue
        info = tool.meta.get(NAME) or {}
        wire_name = info.get("name", tool.name) if info.get("namespace") else tool.name
        if "custom" in info:
            definition: dict[str, Any] = {"type": "custom", "name": wire_name}
            if tool.description is not None:
                definition["description"] = tool.description
            definition["format"] = info["custom"]
        else:
            definition = {"type": "function", "name": wire_name}
            if tool.description is not None:
                definition["description"] = tool.description
            definition["parameters"] = tool.parameters if tool.parameters is not None else {
                "type": "object", "properties": {}}
            if tool.strict is not None:
                definition["strict"] = tool.strict
        definition.update(info.get("extra") or {})
        namespace = info.get("namespace")
        if namespace:
            space = spaces.get(namespace)
            if space is None:
                space = spaces[namespace] = {
                    "type": "namespace", "name": namespace,
                    "description": info.get("namespace_description")
                    or f"Tools in the {namespace} namespace.",
                    "tools": [],
                }
                out.append(space)
            space["tools"].append(definition)
        else:
            out.append(definition)
    return out


def custom_input(arguments: str) -> str:
    try:
        value = orjson.loads(arguments) if arguments else {}
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return arguments
