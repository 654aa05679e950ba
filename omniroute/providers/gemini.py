"""Provider type ``gemini``: Google's Gemini API (Generative Language API).

``POST {base_url}/v1beta/models/{model}:generateContent`` answers JSON;
``:streamGenerateContent?alt=sse`` streams ``GenerateContentResponse`` chunks as
server-sent events. The key goes in ``x-goog-api-key``. The model is named in
the URL, never in the body (the API rejects unknown body fields).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import orjson

from omniroute.errors import GatewayError, UpstreamError, UpstreamStatusError
from omniroute.formats import canonical as c
from omniroute.formats.canonical import token_count
from omniroute.formats.gemini import images as gemini_images
from omniroute.hookspecs import hookimpl
from omniroute.providers.base import (
    Embeddings,
    Preset,
    Provider,
    ProviderContext,
    UpstreamCall,
    UpstreamResponse,
    all_or_none,
    checked_vectors,
    summed_images,
)
from omniroute.providers.http import HTTPProvider, http_settings
from omniroute.storage.store import Connection

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
_API_VERSIONS = ("v1beta", "v1", "v1alpha")
_MAX_MODEL_PAGES = 10
#: ``ErrorInfo`` reasons that mean the gateway's key is bad (Google answers them with 400)
_BAD_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})
#: ``batchEmbedContents`` takes at most this many requests a call
EMBED_BATCH = 100
#: and the gateway makes at most this many such calls at once for one client request
_EMBED_CALLS = 4
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

_PRESETS = [
    # ai.google.dev API reference (verified)
    Preset("gemini", DEFAULT_BASE_URL, "gemini", "Google Gemini API (AI Studio key)"),
]


class GeminiProvider(HTTPProvider):
    """The Gemini ``generateContent`` API over HTTP (JSON and SSE)."""

    type = "gemini"
    price_provider = "google"
    format = "gemini"
    default_prefix = "gemini"
    description = "Google Gemini API (generateContent; Imagen and Gemini image models)"
    capabilities = frozenset({"chat", "embeddings", "images"})
    presets: ClassVar[Mapping[str, Preset]] = {p.name: p for p in _PRESETS}
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    requires_credentials = True

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        base = connection.settings["base_url"].rstrip("/")
        self.api_root = base if base.rsplit("/", 1)[-1] in _API_VERSIONS else f"{base}/v1beta"
        headers = {"User-Agent": context.user_agent, "Content-Type": "application/json"}
        headers.update(connection.settings.get("headers", {}))
        if connection.credentials.get("api_key"):
            headers["x-goog-api-key"] = connection.credentials["api_key"]
        self._json_headers = {**headers, "Accept": "application/json"}
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        #: what the model list said each model makes (Imagen's ``predict``: images)
        self._listed_types: dict[str, str] = {}

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = http_settings(settings, preset, default_base_url=DEFAULT_BASE_URL,
                                 type_name="a gemini")
        return super().configure(settings, credentials, preset)

    def model_url(self, model: str, method: str) -> str:
        """``{api_root}/models/{model}:{method}`` (a ``models/`` prefix is accepted)."""
        return f"{self.api_root}/models/{quote(model.removeprefix('models/'), safe='')}:{method}"

    async def chat(self, call: UpstreamCall) -> UpstreamResponse:
        body = {k: v for k, v in call.body.items() if k != "model"}
        data = orjson.dumps(body)
        if call.stream:
            url = self.model_url(call.model, "streamGenerateContent") + "?alt=sse"
            return await self.post_stream(url, self._stream_headers, data)
        return await self.post_json(
            self.model_url(call.model, "generateContent"), self._json_headers, data)

    async def embed(self, model: str, inputs: list[str], options: dict[str, Any]) -> Embeddings:
        """``POST {api_root}/models/{model}:batchEmbedContents``, one request per input.

        Body ``{"requests": [{"model": "models/{m}", "content": {"parts": [{"text"}]},
        "outputDimensionality"?}]}``; answer ``{"embeddings": [{"values": [...]}]}`` in
        input order (ai.google.dev/api/embeddings). The API takes at most
        :data:`EMBED_BATCH` requests a call (a 400 "at most 100 requests can be in one
        batch" otherwise), so longer inputs go as several calls, at most
        :data:`_EMBED_CALLS` at a time, their vectors joined in order. The API counts
        no tokens here; a count, if one comes, is added up.
        """
        name = f"models/{model.removeprefix('models/')}"
        dimensions = options.get("dimensions")
        requests = []
        for text in inputs:
            one: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
            if dimensions is not None:
                one["outputDimensionality"] = dimensions
            requests.append(one)
        url = self.model_url(model, "batchEmbedContents")
        slots = asyncio.Semaphore(_EMBED_CALLS)

        async def batch(part: list[dict[str, Any]]) -> tuple[list[Any], int | None]:
            async with slots:
                answer = await self.post_json(url, self._json_headers,
                                              orjson.dumps({"requests": part}))
            assert answer.body is not None
            try:
                data = orjson.loads(answer.body)
                vectors = [item["values"] for item in data["embeddings"]]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise UpstreamError("upstream sent a malformed embeddings answer") from None
            usage = data.get("usageMetadata") if isinstance(data, dict) else None
            tokens = usage.get("promptTokenCount") if isinstance(usage, dict) else None
            return checked_vectors(vectors, len(part)), token_count(tokens)

        parts = await all_or_none([batch(requests[i:i + EMBED_BATCH])
                                   for i in range(0, len(requests), EMBED_BATCH)])
        counts = [tokens for _, tokens in parts if tokens is not None]
        return Embeddings([vector for vectors, _ in parts for vector in vectors],
                          sum(counts) if counts else None, model.removeprefix("models/"))

    async def list_models(self) -> list[str]:
        """``GET /v1beta/models`` page by page: the models that can ``generateContent``,
        Imagen's (``predict``) and the embedding models (``embedContent``)."""
        listed: list[str] = []
        token: str | None = None
        for _ in range(_MAX_MODEL_PAGES):
            url = f"{self.api_root}/models?pageSize=1000"
            if token:
                url += f"&pageToken={quote(token, safe='')}"
            data = await self.get_json(url, self._json_headers)
            for entry in (data.get("models") or []) if isinstance(data, dict) else []:
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    continue
                methods = entry.get("supportedGenerationMethods")
                name = entry["name"].removeprefix("models/")
                if isinstance(methods, list) and "predict" in methods and is_imagen(name):
                    self._listed_types[name] = "image"  # Imagen: models/{name}:predict
                elif isinstance(methods, list) and "embedContent" in methods:
                    self._listed_types[name] = "embedding"  # :batchEmbedContents
                elif isinstance(methods, list) and "generateContent" not in methods:
                    continue  # other models that neither chat nor embed
                listed.append(name)
            token = data.get("nextPageToken") if isinstance(data, dict) else None
            if not token:
                break
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]

    def model_type(self, model: str) -> str:
        listed = self._listed_types.get(model)
        return listed if listed is not None else super().model_type(model)

    async def generate_images(self, model: str, request: c.ImageRequest) -> c.ImageResult:
        """Imagen: one ``:predict`` call for all ``n`` images. A Gemini image model makes
        one image a ``:generateContent`` call: ``n`` calls at once (a failed one ends the
        others), their images in order and their usage added up."""
        timeout = self.context.timeouts.images
        if is_imagen(model):
            answer = await self.post_json(
                self.model_url(model, "predict"), self._json_headers,
                orjson.dumps(gemini_images.predict_request(request)), timeout=timeout)
            assert answer.body is not None
            return gemini_images.predict_answer(answer.body)
        url, body = self.model_url(model, "generateContent"), orjson.dumps(
            gemini_images.content_request(request))
        answers = await all_or_none([self.post_json(url, self._json_headers, body,
                                                    timeout=timeout)
                                     for _ in range(request.n)])
        return summed_images([gemini_images.content_answer(answer.body or b"")
                              for answer in answers])

    # ---- errors ---------------------------------------------------------------------
    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """``{"error": {"code", "message", "status", "details": [...]}}`` (google.rpc.Status)."""
        err = _error_object(body)
        if err is None:
            message = body.decode(errors="replace").strip()[:500] or None
            return self.status_error(status, body, headers, message)
        details = [d for d in err.get("details") or [] if isinstance(d, dict)]
        if any(d.get("@type") == _ERROR_INFO and d.get("reason") in _BAD_KEY_REASONS
               for d in details):
            status = 401  # Google says 400, but the client's request is not at fault
        status_name = err.get("status") if isinstance(err.get("status"), str) else None
        return self.status_error(
            status, body, headers, _str(err.get("message")), code=status_name,
            hints=_retry_hint(details))

    def stream_error(self, data: Any) -> GatewayError | None:
        """A chunk that is ``{"error": {...}}``: a status error with its ``code``."""
        err = data.get("error") if isinstance(data, dict) else None
        if not isinstance(err, dict):
            return None
        code = err.get("code")
        status = code if isinstance(code, int) and 400 <= code <= 599 else 502
        return UpstreamStatusError(
            f"upstream stream error: {_str(err.get('message')) or err.get('status') or err}",
            status=status, code=_str(err.get("status")), body=orjson.dumps(data))


def is_imagen(model: str) -> bool:
    return gemini_images.is_imagen(model)


def _error_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, list) and data:  # streamGenerateContent without alt=sse wraps it
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    return err if isinstance(err, dict) else None


def _retry_hint(details: list[dict[str, Any]]) -> dict[str, str]:
    """``RetryInfo.retryDelay`` ("32s", "1.5s") as a ``retry-after`` hint in whole seconds."""
    for detail in details:
        delay = detail.get("retryDelay") if detail.get("@type") == _RETRY_INFO else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return {"retry-after": str(math.ceil(float(delay[:-1])))}
            except ValueError:
                return {}
    return {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(GeminiProvider)
