"""What the fake Gemini API refuses, and how it says so: google.rpc.Status error bodies, and
the 400 the real API gives for a request body it cannot take (``check_request``).
Shared by ``fakes.gemini_upstream`` and ``fakes.code_assist_upstream``."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from fakes.base import json_response

STATUS_NAMES = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
TYPE = "type.googleapis.com/google.rpc."
REQUEST_FIELDS = {
    "contents", "tools", "toolConfig", "safetySettings", "systemInstruction",
    "generationConfig", "cachedContent", "labels",
}
PART_DATA = {"text", "inlineData", "fileData", "functionCall", "functionResponse",
              "executableCode", "codeExecutionResult"}
PART_META = {"thought", "thoughtSignature", "videoMetadata", "partMetadata", "mediaResolution"}


def camel_case(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def field(obj: dict[str, Any], camel: str) -> Any:
    """A field by its lowerCamel name or its snake_case one (the API takes both)."""
    if camel in obj:
        return obj[camel]
    return obj.get("".join("_" + c.lower() if c.isupper() else c for c in camel))


def status_body(code: int, message: str, status_name: str | None = None,
            details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message,
                           "status": status_name or STATUS_NAMES.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return err


def text_of(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    return " ".join(p["text"] for p in parts or [] if isinstance(p, dict)
                    and isinstance(p.get("text"), str) and not p.get("thought"))


def answer_json(status: int, obj: Any, headers: dict[str, str] | None = None) -> web.Response:
    return json_response(status, obj, headers, charset="UTF-8")


def google_error(code: int, message: str, status_name: str | None = None,
                  details: list[dict[str, Any]] | None = None) -> web.Response:
    return answer_json(code, {"error": status_body(code, message, status_name, details)})


def bad_request(message: str, field_path: str | None = None) -> web.Response:
    details = None
    if field_path is not None:
        details = [{"@type": TYPE + "BadRequest",
                    "fieldViolations": [{"field": field_path, "description": message}]}]
    return google_error(400, message, details=details)


def unknown_field(name: str, where: str | None = None) -> web.Response:
    at = f" at '{where}'" if where else ""
    return bad_request(f'Invalid JSON payload received. Unknown name "{name}"{at}: '
                        "Cannot find field.", where or name)


def check_request(body: dict[str, Any], model: str) -> web.Response | None:
    """The 400 answer the real API would give for ``body``, or None."""
    for name in body:
        if camel_case(name) not in REQUEST_FIELDS:
            return unknown_field(name)
    contents = body.get("contents")
    if not contents:
        return bad_request("* GenerateContentRequest.contents: contents is not specified\n")
    if not isinstance(contents, list):
        return bad_request("Invalid value at 'contents' (type.googleapis.com/"
                            "google.ai.generativelanguage.v1beta.Content)")
    system = field(body, "systemInstruction")
    if system is not None and not (isinstance(system, dict) and isinstance(system.get("parts"),
                                                                           list)):
        given = orjson.dumps(system).decode()
        return bad_request("Invalid value at 'system_instruction' (type.googleapis.com/"
                            f"google.ai.generativelanguage.v1beta.Content), {given}")
    for i, tool in enumerate(body.get("tools") or []):
        for name in tool if isinstance(tool, dict) else ():
            if camel_case(name) not in {"functionDeclarations", "googleSearch", "codeExecution",
                                    "urlContext", "googleSearchRetrieval"}:
                return unknown_field(name, f"tools[{i}]")
    pending_calls = 0
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            return bad_request(f"Invalid value at 'contents[{i}]'")
        for name in content:
            if name not in ("role", "parts"):
                return unknown_field(name, f"contents[{i}]")
        role = content.get("role", "user")
        if role not in ("user", "model"):
            return bad_request("Please use a valid role: user, model.")
        parts = content.get("parts")
        if not parts or not isinstance(parts, list):
            return bad_request(f"* GenerateContentRequest.contents[{i}].parts: contents.parts "
                                "must not be empty.\n")
        calls = responses = 0
        for j, part in enumerate(parts):
            where = f"contents[{i}].parts[{j}]"
            if not isinstance(part, dict):
                return bad_request(f"Invalid value at '{where}'")
            for name in part:
                if camel_case(name) not in PART_DATA | PART_META:
                    return unknown_field(name, where)
            data = [n for n in part if camel_case(n) in PART_DATA]
            if len(data) != 1:
                return bad_request(f"* GenerateContentRequest.{where}.data: required oneof "
                                    "field 'data' must have one initialized field\n")
            kind = camel_case(data[0])
            value = part[data[0]]
            if kind == "functionCall":
                calls += 1
                if not isinstance(value.get("args", {}), dict):
                    return bad_request(
                        f"Invalid value at '{where}.function_call.args' (type.googleapis.com/"
                        f"google.protobuf.Struct), {orjson.dumps(value.get('args')).decode()}")
                signed = part.get("thoughtSignature") or part.get("thought_signature")
                if model.startswith("gemini-3") and calls == 1 and not signed:
                    return bad_request(
                        "Function call is missing a thought_signature in functionCall parts. "
                        "This is required for tools to work correctly, and missing "
                        "thought_signature may lead to degraded model performance. Additional "
                        f"data, function call `default_api:{value.get('name')}` , position "
                        f"{i + 1}. Please refer to https://ai.google.dev/gemini-api/docs/"
                        "thought-signatures for more details.")
            if kind == "functionResponse":
                responses += 1
                if not isinstance(value.get("response", {}), dict):
                    return bad_request(
                        f"Invalid value at '{where}.function_response.response' "
                        "(type.googleapis.com/google.protobuf.Struct)")
        if responses and responses != pending_calls:
            return bad_request("Please ensure that the number of function response parts is "
                                "equal to the number of function call parts of the function "
                                "call turn.")
        pending_calls = calls if role == "model" else 0
    return None
