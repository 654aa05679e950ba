"""Gemini's two schema dialects and plain JSON Schema.

Gemini takes tool parameters and response schemas either as its OpenAPI 3.0
subset (``parameters`` / ``responseSchema``: upper-case ``"OBJECT"`` types,
``nullable``, int64 bounds sent as strings) or as JSON Schema
(``parametersJsonSchema`` / ``responseJsonSchema``). The canonical model holds
JSON Schema, so decoding normalises the subset, and encoding either passes
JSON Schema through without ``$schema`` or rewrites it into the subset.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# keys whose value is one subschema / a map of subschemas / a list of subschemas
_ONE = ("items", "additionalProperties", "not", "contains", "if", "then", "else",
        "propertyNames", "unevaluatedItems", "unevaluatedProperties")
_MAP = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_LIST = ("anyOf", "oneOf", "allOf", "prefixItems")
_INT_KEYS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties")
# what the OpenAPI subset (``parameters`` / ``responseSchema``) accepts
_OPENAPI_KEYS = frozenset({
    "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
    "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
    "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum",
})


def _walk(schema: Any, node: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    """Apply ``node`` to every schema object, children first; a new structure."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _ONE and isinstance(value, dict):
            out[key] = _walk(value, node)
        elif key in _MAP and isinstance(value, dict):
            out[key] = {k: _walk(v, node) for k, v in value.items()}
        elif key in _LIST and isinstance(value, list):
            out[key] = [_walk(v, node) for v in value]
        else:
            out[key] = value
    return node(out)


def _from_openapi_node(node: dict[str, Any]) -> dict[str, Any]:
    kind = node.get("type")
    if isinstance(kind, str):
        node["type"] = kind.lower()
    elif isinstance(kind, list):
        node["type"] = [k.lower() if isinstance(k, str) else k for k in kind]
    if node.pop("nullable", False) is True:
        if "type" in node:
            kind = node["type"]
            kinds = kind if isinstance(kind, list) else [kind]
            node["type"] = [*kinds, "null"] if "null" not in kinds else kinds
        elif isinstance(node.get("anyOf"), list):
            node["anyOf"] = [*node["anyOf"], {"type": "null"}]
    node.pop("propertyOrdering", None)
    if node.get("format") == "enum":
        node.pop("format")
    for key in _INT_KEYS:
        value = node.get(key)
        if isinstance(value, str) and value.isdigit():
            node[key] = int(value)
    return node


def _camel_keywords(schema: Any) -> Any:
    """Schema keywords in lowerCamelCase (google-genai sends ``any_of``, ``max_items``…);
    property names (the keys of ``properties`` and ``$defs``) are left alone."""
    if isinstance(schema, list):
        return [_camel_keywords(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        head, *rest = key.split("_")
        name = head + "".join(w[:1].upper() + w[1:] for w in rest) if rest and head else key
        if name in _MAP and isinstance(value, dict):
            out[name] = {k: _camel_keywords(v) for k, v in value.items()}
        elif name in _ONE or name in _LIST:
            out[name] = _camel_keywords(value)
        else:
            out[name] = value
    return out


def to_json_schema(schema: Any) -> Any:
    """JSON Schema from a Gemini ``parameters`` / ``responseSchema`` (OpenAPI subset)."""
    return _walk(_camel_keywords(schema), _from_openapi_node)


def _strip_meta(node: dict[str, Any]) -> dict[str, Any]:
    node.pop("$schema", None)
    return node


def for_json_schema_field(schema: Any) -> Any:
    """JSON Schema for ``parametersJsonSchema`` / ``responseJsonSchema`` (no ``$schema``)."""
    return _walk(schema, _strip_meta)


def to_openapi(schema: Any) -> Any:
    """The OpenAPI subset for ``parameters`` / ``responseSchema``.

    ``$ref``s are inlined from ``$defs``; ``const`` becomes a one-value ``enum``;
    a ``null`` member of ``type`` becomes ``nullable``; other keywords the subset
    rejects (``$schema``, ``additionalProperties``, ``oneOf``…) are dropped.
    """
    if not isinstance(schema, dict):
        return schema
    defs = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    return _to_openapi(schema, defs, 0)


def _to_openapi(schema: Any, defs: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1])
        if target is None or depth > 8:
            return {"type": "object", "description": schema.get("description", ref)}
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return _to_openapi(merged, defs, depth + 1)
    out: dict[str, Any] = {}
    if "const" in schema and "enum" not in schema:
        out["enum"] = [schema["const"]]
    variants = schema.get("anyOf") or schema.get("oneOf")
    for key, value in schema.items():
        if key not in _OPENAPI_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {k: _to_openapi(v, defs, depth + 1) for k, v in value.items()}
        elif key == "items" and isinstance(value, dict):
            out[key] = _to_openapi(value, defs, depth + 1)
        elif key == "anyOf":
            continue
        elif key == "type" and isinstance(value, list):
            kinds = [k for k in value if k != "null"]
            if len(kinds) < len(value):
                out["nullable"] = True
            if len(kinds) == 1:
                out["type"] = kinds[0]
            elif kinds:
                out["anyOf"] = [{"type": k} for k in kinds]
        else:
            out[key] = value
    if isinstance(variants, list):
        plain = [v for v in variants if not (isinstance(v, dict) and v.get("type") == "null")]
        if len(plain) < len(variants):
            out["nullable"] = True
        converted = [_to_openapi(v, defs, depth + 1) for v in plain]
        if len(converted) == 1 and isinstance(converted[0], dict):
            out = {**converted[0], **out}
        elif converted:
            out["anyOf"] = converted
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out
