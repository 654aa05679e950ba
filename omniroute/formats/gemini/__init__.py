"""The Gemini ``generateContent`` wire format, as Gemini CLI and google-genai speak it.

The model and the stream flag live in the URL (``models/{model}:generateContent``
or ``:streamGenerateContent?alt=sse``); the body holds ``contents`` (roles
``user`` / ``model``), ``systemInstruction``, ``tools``, ``toolConfig`` and
``generationConfig``. A streamed answer is SSE frames, each a whole
``GenerateContentResponse``. Requests are translated in :mod:`.request`,
answers in :mod:`.response`, parts (shared by both) in :mod:`.parts`, tool
schemas in :mod:`.schema` and streams in :mod:`.stream`.

Conventions this package keeps:

* Tool calls arrive whole. Calls without an ``id`` get a stable generated one;
  a ``functionResponse`` is matched to its call by ``id``, else by name in order.
* Thought signatures ride in ``Reasoning.signature`` with source ``gemini``:
  a thought part's on its own reasoning part, a function call's on an empty
  reasoning part just before the call (so formats that carry foreign
  reasoning carry it too), a text part's in ``meta["gemini"]``. They only go
  back to a Gemini upstream; clients' dummy ``skip_thought_signature_validator``
  values are kept as they are, and unsigned calls from other formats get that
  dummy for Gemini 3.
* Reasoning another format produced travels to a Gemini client packed into a
  ``thoughtSignature`` (:mod:`carry`), on the first function call after it
  (clients keep those; they drop thought parts), or on the thought part.
* A system message later in the conversation (Gemini has none) goes as user text
  wrapped in ``<system-reminder>`` tags, as the Anthropic translation folds it.
* Field names are read in either spelling (the API takes ``inline_data`` as well as
  ``inlineData``; google-genai sends a mix): :func:`camel_body`.
* Tool parameters are sent as ``parametersJsonSchema`` without ``$schema``; a
  connection setting ``gemini_schema: openapi`` sends the OpenAPI subset
  (``parameters``) instead. Decoding normalises both to JSON Schema.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from omniroute.errors import GatewayError, InvalidRequest, UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.base import ClientRequest, ClientRoute, Format, ModelInfo
from omniroute.formats.gemini import request as gemini_request
from omniroute.formats.gemini import stream as gemini_stream
from omniroute.formats.gemini.parts import (
    NAME,
    SKIP_SIGNATURE,
    encode_model_parts,
    finish_reason,
    is_gemini3,
    status_name,
    stop_reason,
    usage_from_metadata,
    usage_metadata,
)
from omniroute.formats.gemini.request import camel_body
from omniroute.formats.gemini.response import decode_response_body, frame_json
from omniroute.formats.json_text import json_object
from omniroute.hookspecs import hookimpl
from omniroute.sse import encode

__all__ = ["NAME", "GeminiFormat", "status_name"]


class GeminiFormat(Format):
    """Google's Gemini API: ``generateContent`` / ``streamGenerateContent``."""

    name = NAME
    #: google-genai on ``api_version="v1"`` shares ``GET /v1/models`` with OpenAI clients;
    #: its own headers tell it apart
    _GOOGLE = ("x-goog-api-client", "x-goog-api-key")
    client_routes = (
        *(route for base in ("/v1beta/models/", "/v1/models/") for route in (
            ClientRoute("POST", base + "{model:.*}:generateContent", "chat",
                        "gemini.generateContent", stream=False),
            ClientRoute("POST", base + "{model:.*}:streamGenerateContent", "chat",
                        "gemini.streamGenerateContent", stream=True),
            ClientRoute("POST", base + "{model:.*}:countTokens", "count_tokens",
                        "gemini.countTokens"),
        )),
        ClientRoute("GET", "/v1beta/models", "models"),
        ClientRoute("GET", "/v1beta/models/{model:.+}", "model"),
        ClientRoute("GET", "/v1/models", "models", when_headers=_GOOGLE),
        ClientRoute("GET", "/v1/models/{model:.+}", "model", when_headers=_GOOGLE),
    )
    path_prefixes = ("/v1beta/",)

    # ------------------------------------------------------------------ client side

    def inspect(self, body: dict[str, Any], *, path_model: str | None = None,
                path_stream: bool | None = None) -> tuple[str, bool]:
        model = path_model or body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise InvalidRequest("The model is required (models/{model}:generateContent).",
                                 param="model", code="missing_model")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise InvalidRequest("'contents' is required and must be a non-empty array.",
                                 param="contents")
        return model.removeprefix("models/"), bool(path_stream)

    def temperature(self, body: dict[str, Any]) -> Any:
        config = body.get("generationConfig")
        return config.get("temperature") if isinstance(config, dict) else None

    def decode_request(self, request: ClientRequest) -> c.Request:
        body = camel_body(request.body)
        self.inspect(body, path_model=request.model, path_stream=request.stream)
        return gemini_request.decode_request(body, request.model, request.stream)

    #: (the module's function itself: no method call in between, on every cacheable request)
    text_request = staticmethod(gemini_request.text_request)

    def encode_response(self, response: c.Response, request: c.Request) -> bytes:
        return orjson.dumps(self.response_body(response))

    def response_body(self, response: c.Response) -> dict[str, Any]:
        """The ``GenerateContentResponse`` for a canonical answer."""
        parts = encode_model_parts(response.parts, upstream=False)
        finish = (response.meta.get(NAME) or {}).get("finishReason")
        if finish is None or stop_reason(finish, False) != stop_reason(
                finish_reason(response.stop_reason), False):
            finish = finish_reason(response.stop_reason)
        return {
            "candidates": [{"content": {"role": "model", "parts": parts},
                            "finishReason": finish, "index": 0}],
            "usageMetadata": usage_metadata(response.usage),
            "modelVersion": response.model,
            "responseId": response.id,
        }

    def encode_stream(self, events: AsyncIterator[c.Event],
                      request: c.Request) -> AsyncIterator[bytes]:
        return gemini_stream.encode_stream(events, request)

    def claims_path(self, path: str) -> bool:
        # google-genai on api_version v1 calls /v1/models/{model}:{method}
        return super().claims_path(path) or (path.startswith("/v1/models/") and ":" in path)

    def model_name(self, path_model: str) -> str:
        return path_model.removeprefix("models/")

    def model_list(self, models: Sequence[ModelInfo]) -> dict[str, Any]:
        return {"models": [self.model_card(m) for m in models]}

    def model_card(self, model: ModelInfo) -> dict[str, Any]:
        return {"name": f"models/{model.id}", "displayName": model.id, "version": "001",
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                               "countTokens"]}

    def count_request(self, body: dict[str, Any], path_model: str | None) -> tuple[
            str, dict[str, Any]]:
        # the API takes `contents` (and systemInstruction, tools) or a whole request
        inner = body.get("generateContentRequest")
        if isinstance(inner, dict):
            body = inner
        model = self.model_name(path_model or "")
        if not model:
            raise InvalidRequest("The model is required (models/{model}:countTokens).",
                                 param="model", code="missing_model")
        return model, body

    def count_answer(self, tokens: int) -> dict[str, Any]:
        return {"totalTokens": tokens}

    def error_body(self, err: GatewayError) -> bytes:
        error: dict[str, Any] = {"code": err.status, "message": err.message,
                                 "status": status_name(err.status)}
        if err.details is not None:  # google.rpc.ErrorInfo: string metadata
            error["details"] = [{
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": err.code.upper(), "domain": "omniroute",
                "metadata": {k: str(v) for k, v in err.details.items() if v is not None}}]
        return orjson.dumps({"error": error})

    def error_frame(self, err: GatewayError) -> bytes:
        return encode(self.error_body(err))

    # ------------------------------------------------------------------ provider side

    def encode_request(self, request: c.Request,
                       client: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return gemini_request.encode_request(request, client)

    def decode_response(self, body: bytes) -> c.Response:
        data = json_object(body)
        if data is None:
            raise UpstreamError("The upstream answered with a body that is not a JSON object.")
        if isinstance(data.get("error"), dict):
            raise UpstreamError(str(data["error"].get("message") or "upstream error"))
        return decode_response_body(data)

    def decode_stream(self, frames: AsyncIterator[bytes]) -> AsyncIterator[c.Event]:
        return gemini_stream.decode_stream(frames)

    # ------------------------------------------------------------------ pass-through lane

    def with_model(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The body as sent (the model is in the URL), minus another provider's reasoning
        packed into ``thoughtSignature`` values (a history that went through it): Gemini
        would refuse them. A Gemini 3 call left unsigned gets the documented dummy."""
        contents = body.get("contents")
        if not isinstance(contents, list) or not any(_packed_parts(c_) for c_ in contents):
            return body
        cleaned = [_without_packed(c_, is_gemini3(model)) if _packed_parts(c_) else c_
                   for c_ in contents]
        return {**body, "contents": [c_ for c_ in cleaned if c_.get("parts")]}

    def usage_from_body(self, body: bytes) -> c.Usage:
        data = json_object(body)
        return usage_from_metadata(data.get("usageMetadata")) if data else c.Usage()

    content_pattern = re.compile(rb'"text": ?"[^"]|"functionCall"')

    def usage_from_frame(self, frame: bytes) -> c.Usage | None:
        if frame.find(b"usageMetadata") < 0:  # (not ``in``: see omniroute.sse.CR)
            return None
        data = frame_json(frame)
        if data is None or not isinstance(data.get("usageMetadata"), dict):
            return None
        return usage_from_metadata(data["usageMetadata"])

    def error_from_frame(self, frame: bytes) -> str | None:
        if frame.find(b'"error"') < 0:
            return None
        data = frame_json(frame)
        if data is None or not isinstance(data.get("error"), dict):
            return None
        return str(data["error"].get("message") or "upstream error")


def _signature_key(part: dict[str, Any]) -> str | None:
    for key in ("thoughtSignature", "thought_signature"):
        if carry.is_packed(part.get(key)):
            return key
    return None


def _packed_parts(content: Any) -> bool:
    parts = content.get("parts") if isinstance(content, dict) else None
    return isinstance(parts, list) and any(
        isinstance(p, dict) and _signature_key(p) for p in parts)


def _without_packed(content: dict[str, Any], gemini3: bool) -> dict[str, Any]:
    parts: list[Any] = []
    first_call = True
    for part in content["parts"]:
        key = _signature_key(part) if isinstance(part, dict) else None
        is_call = isinstance(part, dict) and ("functionCall" in part or "function_call" in part)
        if key is not None:
            if part.get("thought"):
                continue  # another provider's thinking, shown to the client only
            part = {k: v for k, v in part.items() if k != key}
            if is_call and gemini3 and first_call:
                part["thoughtSignature"] = SKIP_SIGNATURE
        if is_call:
            first_call = False
        parts.append(part)
    return {**content, "parts": parts}


@hookimpl
def register_formats(register: Any) -> None:
    register(GeminiFormat)
