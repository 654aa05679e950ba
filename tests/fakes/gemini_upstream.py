"""Fake Gemini API (Generative Language API) upstream for gateway tests.

Speaks the real wire format of ``POST /v1beta/models/{model}:generateContent``,
``:streamGenerateContent`` (``?alt=sse``: server-sent ``GenerateContentResponse``
chunks, CRLF-terminated; without it, a JSON array) and ``GET /v1beta/models``
(paged; ``/v1/...`` too), checked against the google-genai SDK, and
``POST /v1beta/models/{model}:batchEmbedContents`` for the ``other_models`` (embedding
models: ``{"embeddings": [{"values"}]}``, vectors from ``fake_vector``; it pops the same
``script``, honouring only ``error()`` behaviours). Usage::

    fake = FakeGemini()
    fake.script += [error(429), reply(text="hi", chunks=2)]
    server = await aiohttp_server(fake.app)
    client = genai.Client(api_key="AIza-upstream-test",
                          http_options=types.HttpOptions(base_url=str(server.make_url(""))))

``script`` is a queue: each generate request pops one ``Behaviour`` (an empty queue
means the default reply). Behaviour helpers, each for one request:

- ``reply(text=None, chunks=None, delay=None, tool_calls=None, thinking=None,
  finish_reason=None, usage=None)``: ``tool_calls``: ``N`` forces N ``functionCall``
  parts (to the declared functions, cycling), or a list of ``{"name", "arguments": dict}``;
  ``0`` forbids them. Function calls come whole, each with a ``thoughtSignature``.
  ``thinking``: the text of ``thought: true`` parts (by default present when
  ``thinkingConfig.includeThoughts`` is set). ``usage`` overrides ``usageMetadata`` fields.
- ``error(status, message=None, status_name=None, headers=None, retry_delay="32s")``:
  google.rpc.Status ``{"error": {"code", "message", "status", "details"}}``; a 429
  carries QuotaFailure, Help and RetryInfo details.
- ``hang_before_headers(seconds)``, ``hang_mid_stream(after_chunks, seconds)``,
  ``drop_mid_stream(after_chunks)``, ``mid_stream_error(after_chunks, message=...,
  code=500, status_name="INTERNAL")`` (a ``data: {"error": ...}`` chunk, then the body
  ends), ``garbage(body=None)``, ``slow(delay)``.

Like the real API the fake refuses, with its error shape: a missing key (403) or a wrong
one (400 ``API_KEY_INVALID``; ``x-goog-api-key`` or ``?key=``), an unknown body field
such as ``model`` or ``messages`` (400 "Unknown name"), missing or empty ``contents``,
a role other than ``user`` / ``model``, parts with unknown fields (OpenAI-style
``{"type": "text"}``), ``functionCall.args`` that is not an object, a function-response
turn whose part count differs from the call turn's, and (``gemini-3*`` models) a
``functionCall`` part sent back without its ``thoughtSignature``. An unknown model is a
404.

Images (``image_models``): ``POST .../models/imagen-*:predict`` answers Imagen's
``{"predictions": [{"mimeType", "bytesBase64Encoded"}]}`` (``sampleCount`` from 1 to 4,
only ``instances`` / ``parameters`` in the body, Imagen's aspect ratios); a Gemini image
model's ``generateContent`` with ``responseModalities`` holding ``IMAGE`` answers one
``inlineData`` part and image-token usage (1290 a 1024x1024 image). The images are
``fake_image(prompt, i)``. ``refused(reason)`` answers as the safety filters do (Imagen:
``raiFilteredReason`` predictions; a Gemini model: no image, ``finishReason``
``IMAGE_SAFETY``).

Default reply: ``"Hello! You said: <last user text>"``; a call to the first declared
function when the last user text contains "weather". ``requests`` records every
request; ``closed_streams`` counts generate requests whose client went away before the
answer finished (``stream_closed`` is set each time); fake-initiated drops don't count.
``latency``, ``fail_rate`` and ``seed`` act as in every fake (``fakes.base``); its failures
are ``INTERNAL`` 500s and ``UNAVAILABLE`` 503s.

The request checks and error bodies are in ``fakes.gemini_checks``, the image answers in
``fakes.gemini_images``; this module is the fake, its behaviours and its replies.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from fakes import base
from fakes.base import (
    ALNUM,
    FakeUpstream,
    Recorded,
    fake_args,
    fake_vector,
    fault_helpers,
    pick,
    rand,
    split,
    sse,
    tokens,
)
from fakes.gemini_checks import (
    TYPE,
    answer_json,
    bad_request,
    check_request,
    field,
    google_error,
    status_body,
    text_of,
    unknown_field,
)
from fakes.gemini_images import IMAGE_TOKENS, image_content, predict

__all__ = ["IMAGE_TOKENS", "Behaviour", "FakeGemini", "Recorded", "drop_mid_stream", "error",
           "garbage", "hang_before_headers", "hang_mid_stream", "mid_stream_error", "refused",
           "reply", "slow"]

#: ``batchEmbedContents`` refuses more requests than this in one call
EMBED_BATCH_LIMIT = 100


@dataclass
class Behaviour(base.Behaviour):
    """How to answer one generate request; build with the helper functions.

    ``error`` is the google.rpc.Status ``body["error"]``.
    """

    thinking: str | None = None
    finish_reason: str | None = None
    #: the safety filters' reason to refuse an image request
    refused: str | None = None


def refused(reason: str = "Unable to show generated images. All images were filtered out "
                          "because they violated Vertex AI's usage guidelines.") -> Behaviour:
    return Behaviour(refused=reason)


def reply(
    text: str | None = None,
    chunks: int | None = None,
    delay: float | None = None,
    tool_calls: int | list[dict[str, Any]] | None = None,
    thinking: str | None = None,
    finish_reason: str | None = None,
    usage: dict[str, int] | None = None,
) -> Behaviour:
    return Behaviour(text=text, chunks=chunks, delay=delay, tool_calls=tool_calls,
                     thinking=thinking, finish_reason=finish_reason, usage=dict(usage or {}))


def error(
    status: int,
    message: str | None = None,
    status_name: str | None = None,
    headers: dict[str, str] | None = None,
    retry_delay: str | None = "32s",
) -> Behaviour:
    details: list[dict[str, Any]] = []
    if status == 429:
        message = message or ("You exceeded your current quota, please check your plan and "
                              "billing details.")
        details = [
            {"@type": TYPE + "QuotaFailure", "violations": [{
                "quotaMetric":
                    "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                "quotaDimensions": {"location": "global", "model": "gemini-2.5-flash"},
                "quotaValue": "10"}]},
            {"@type": TYPE + "Help", "links": [{
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
        ]
        if retry_delay:
            details.append({"@type": TYPE + "RetryInfo", "retryDelay": retry_delay})
    body = status_body(status, message or f"Fake upstream error {status}", status_name, details)
    return Behaviour(status=status, error=body, headers=dict(headers or {}))


def mid_stream_error(
    after_chunks: int,
    message: str = "An internal error has occurred. Please retry or report in "
                   "https://developers.generativeai.google/guide/troubleshooting",
    code: int = 500,
    status_name: str = "INTERNAL",
) -> Behaviour:
    return Behaviour(error_after=after_chunks, error=status_body(code, message, status_name))


hang_before_headers, hang_mid_stream, drop_mid_stream, garbage, slow = fault_helpers(Behaviour)


# ----------------------------------------------------------------------------- helpers

def _signature() -> str:
    """An opaque thought signature (base64, as the SDK checks)."""
    return base64.b64encode(b"\x0a\x2c" + secrets.token_bytes(46)).decode()


def _sse(chunk: dict[str, Any]) -> bytes:
    return sse(chunk, end=b"\r\n\r\n")


# ----------------------------------------------------------------------------- the fake

class FakeGemini(FakeUpstream[Behaviour]):
    """In-process fake of the Gemini generateContent API (see module docstring)."""

    behaviour = Behaviour
    key_in = ("x-goog-api-key", "?key")
    respond_json = staticmethod(answer_json)

    def __init__(
        self,
        *,
        api_key: str | None = "AIza-upstream-test",
        models: Sequence[str] = ("gemini-2.5-flash", "gemini-2.5-pro", "gemini-3-pro-preview"),
        other_models: Sequence[str] = ("gemini-embedding-001",),
        image_models: Sequence[str] = ("imagen-4.0-generate-001", "gemini-2.5-flash-image"),
        max_page: int = 1000,
        **knobs: Any,  # chunks, delay, latency, fail_rate, seed: see fakes.base
    ) -> None:
        super().__init__(api_key=api_key, models=models, **knobs)
        self.other_models = list(other_models)  # listed, but cannot generateContent
        self.image_models = list(image_models)  # Imagen (predict) and Gemini image models
        self.max_page = max_page  # GET /v1beta/models page size cap
        for version in ("v1beta", "v1"):  # the real API serves both
            self.app.router.add_post(f"/{version}/models/{{target}}", self._generate)
            self.app.router.add_get(f"/{version}/models", self._models)

    def _auth_missing(self) -> web.Response:
        return google_error(403, "Method doesn't allow unregistered callers (callers without "
                             "established identity). Please use API Key or other form of API "
                             "consumer identity to call this API.")

    def _auth_wrong(self, key: str) -> web.Response:
        message = "API key not valid. Please pass a valid API key."
        return google_error(400, message, details=[
            {"@type": TYPE + "ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": TYPE + "LocalizedMessage", "locale": "en-US", "message": message},
        ])

    def _failure(self, status: int) -> Behaviour:
        if status == 500:
            return error(500, "An internal error has occurred. Please retry or report in "
                              "https://developers.generativeai.google/guide/troubleshooting")
        return error(503, "The model is overloaded. Please try again later.")

    # ---- handlers -------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.StreamResponse:
        await self._record(request)
        if (err := self._auth_error(request)) is not None:
            return err
        size = min(int(request.query.get("pageSize", "50")), self.max_page)
        start = int(request.query.get("pageToken") or 0)
        names = self.models + self.other_models + self.image_models
        page = names[start:start + size]
        models = [{
            "name": f"models/{m}", "version": "001", "displayName": m.replace("-", " ").title(),
            "description": f"Fake {m}", "inputTokenLimit": 1048576, "outputTokenLimit": 65536,
            "supportedGenerationMethods": (
                ["predict"] if m.startswith("imagen") else
                ["generateContent", "countTokens", "createCachedContent"]
                if m in self.models or m in self.image_models else ["embedContent"]),
        } for m in page]
        out: dict[str, Any] = {"models": models}
        if start + size < len(names):
            out["nextPageToken"] = str(start + size)
        return answer_json(200, out)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        rec = await self._record(request)
        method = request.match_info["target"].rpartition(":")[2]
        if method == "batchEmbedContents":
            return await self._embed(request, rec)
        if method not in ("generateContent", "streamGenerateContent", "predict"):
            return google_error(404, f"Method not found: {method}")
        return await self._answer(request, rec)

    async def _embed(self, request: web.Request, rec: Recorded) -> web.StreamResponse:
        """``:batchEmbedContents``: ``{"requests": [{"model", "content", "outputDimensionality"}]}``
        -> ``{"embeddings": [{"values"}]}``; pops the script, honouring only ``error()``.
        More than :data:`EMBED_BATCH_LIMIT` requests are a 400, as Google answers."""
        b = self.script.pop(0) if self.script else Behaviour()
        if (early := await self._before(request, b)) is not None:
            return early
        model = request.match_info["target"].rpartition(":")[0]
        if model not in self.other_models:
            version = request.path.split("/")[1]
            return google_error(404, f"models/{model} is not found for API version {version}, or "
                                 "is not supported for embedContent. Call ListModels to see "
                                 "the list of available models and their supported methods.")
        body = rec.json if isinstance(rec.json, dict) else {}
        unknown = set(body) - {"requests"}
        if unknown:
            return unknown_field(sorted(unknown)[0])
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return bad_request("* BatchEmbedContentsRequest.requests: contents is not specified",
                                "requests")
        if len(requests) > EMBED_BATCH_LIMIT:  # Google's own words, e.g. langchainjs#4491
            return bad_request("* BatchEmbedContentsRequest.requests: at most 100 requests "
                                "can be in one batch", "requests")
        vectors = []
        for i, one in enumerate(requests):
            if not isinstance(one, dict) or one.get("model") != f"models/{model}":
                return bad_request(f"Model names in batch requests must match the model in the "
                                    f"URL (requests[{i}].model).", f"requests[{i}].model")
            unknown = set(one) - {"model", "content", "taskType", "title",
                                  "outputDimensionality"}
            if unknown:
                return unknown_field(sorted(unknown)[0], f"requests[{i}]")
            text = text_of(one.get("content"))
            if not text:
                return bad_request("* BatchEmbedContentsRequest.requests[].content: contents is "
                                    "not specified", f"requests[{i}].content")
            vectors.append({"values": fake_vector(text, one.get("outputDimensionality") or 8)})
        return answer_json(200, {"embeddings": vectors})

    async def _serve(self, request: web.Request, rec: Recorded, b: Behaviour) -> web.StreamResponse:
        if (early := await self._before(request, b)) is not None:
            return early
        model, _, method = request.match_info["target"].rpartition(":")
        stream = method == "streamGenerateContent"
        if model in self.image_models and not stream and isinstance(rec.json, dict):
            return predict(rec.json, model, b.refused) if method == "predict" \
                else image_content(rec.json, model, b.refused)
        if model not in self.models or method == "predict":
            version = request.path.split("/")[1]
            return google_error(404, f"models/{model} is not found for API version {version}, or "
                                 "is not supported for generateContent. Call ListModels to see "
                                 "the list of available models and their supported methods.")
        body = rec.json
        if not isinstance(body, dict):
            return bad_request("Invalid JSON payload received. Expected an object.")
        if (problem := check_request(body, model)) is not None:
            return problem
        as_sse = request.query.get("alt") == "sse"
        if b.garbage is not None:
            return self._garbage(b, stream)
        if b.error is not None and not stream:
            return answer_json(b.error["code"], {"error": b.error})
        chunks = self._chunks(body, b, model)
        if not stream:
            return await self._send_whole(request, b, orjson.dumps(self._merged(chunks)))
        if not as_sse:
            return answer_json(200, b"[" + b",\r\n".join(orjson.dumps(c) for c in chunks) + b"]")
        return await self._stream(request, chunks, b)


    # ---- reply construction ---------------------------------------------------------
    def _plan(self, body: dict[str, Any], b: Behaviour):
        contents = body.get("contents") or []
        decls = [d for t in body.get("tools") or [] if isinstance(t, dict)
                 for d in field(t, "functionDeclarations") or []]
        mode = field(field(field(body, "toolConfig") or {}, "functionCallingConfig") or {},
                      "mode") or "AUTO"
        n = b.tool_calls
        if n is None:
            last = contents[-1] if contents else {}
            wants = last.get("role", "user") == "user" and "weather" in text_of(last).lower()
            n = 1 if decls and (wants or mode == "ANY") and mode != "NONE" else 0
        if isinstance(n, list):
            calls = [{"name": c["name"], "args": c["arguments"]} for c in n]
        else:
            picked = pick(decls, n, {"name": "get_weather", "parameters": {}})
            calls = [{"name": d["name"],
                      "args": fake_args(d.get("parameters") or field(d, "parametersJsonSchema"))}
                     for d in picked]
        thinking_config = field(field(body, "generationConfig") or {}, "thinkingConfig") or {}
        thinking = b.thinking
        if thinking is None and field(thinking_config, "includeThoughts"):
            thinking = "**Considering the request**\n\nThe user wants an answer."
        users = [c for c in contents if c.get("role", "user") == "user" and text_of(c)]
        said = text_of(users[-1]) if users else ""
        text = b.text if b.text is not None else (None if calls else f"Hello! You said: {said}")
        return thinking, text, calls

    def _chunks(self, body: dict[str, Any], b: Behaviour, model: str) -> list[dict[str, Any]]:
        """Every stream chunk (GenerateContentResponse), in order."""
        thinking, text, calls = self._plan(body, b)
        n = b.chunks or self.chunks
        part_groups: list[list[dict[str, Any]]] = []
        if thinking is not None:
            part_groups += [[{"text": p, "thought": True}] for p in split(thinking, n)]
        if text is not None:
            part_groups += [[{"text": p}] for p in split(text, n)]
        if calls:
            part_groups.append([{"functionCall": c, "thoughtSignature": _signature()}
                                for c in calls])
        contents = body["contents"]
        prompt = tokens(text_of(field(body, "systemInstruction")))
        prompt += sum(tokens(text_of(c)) for c in contents)
        thoughts_total = tokens(thinking) if thinking is not None else 0
        response_id = rand(22, ALNUM + "-_")
        out: list[dict[str, Any]] = []
        candidates_so_far = thoughts_so_far = 0
        for i, parts in enumerate(part_groups):
            for p in parts:
                size = tokens(p.get("text") or orjson.dumps(p.get("functionCall")).decode())
                if p.get("thought"):
                    thoughts_so_far = thoughts_total
                else:
                    candidates_so_far += size
            usage: dict[str, Any] = {
                "promptTokenCount": prompt,
                "candidatesTokenCount": candidates_so_far,
                "totalTokenCount": prompt + candidates_so_far + thoughts_so_far,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
            }
            if thoughts_so_far:
                usage["thoughtsTokenCount"] = thoughts_so_far
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if i == len(part_groups) - 1:
                candidate["finishReason"] = b.finish_reason or "STOP"
                usage.update(b.usage)
                if usage.get("cachedContentTokenCount"):
                    usage["cacheTokensDetails"] = [
                        {"modality": "TEXT", "tokenCount": usage["cachedContentTokenCount"]}]
            out.append({"candidates": [candidate], "usageMetadata": usage,
                        "modelVersion": model, "responseId": response_id})
        return out

    def _merged(self, chunks: list[dict[str, Any]]) -> dict[str, Any]:
        """The non-stream answer: every chunk's parts in one candidate (texts joined)."""
        parts: list[dict[str, Any]] = []
        for chunk in chunks:
            for part in chunk["candidates"][0]["content"]["parts"]:
                last = parts[-1] if parts else None
                if (last is not None and "text" in part and "text" in last
                        and bool(last.get("thought")) == bool(part.get("thought"))):
                    last["text"] += part["text"]
                else:
                    parts.append(dict(part))
        final = chunks[-1]
        candidate = {**final["candidates"][0], "content": {"parts": parts, "role": "model"}}
        return {**final, "candidates": [candidate]}

    async def _stream(self, request: web.Request, chunks: list[dict[str, Any]], b: Behaviour):
        return await self._send_stream(request, b, [_sse(c) for c in chunks],
                                       {"Cache-Control": "no-cache"},
                                       lambda sent: _sse({"error": b.error}))

