"""Provider type ``openai``: any OpenAI-compatible Chat Completions endpoint.

Presets name the well-known services (base URL and default prefix); any other
base URL works too (``--base-url``), e.g. a local vLLM or llama.cpp server.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aiohttp
import orjson

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.audio import SpeechRequest, TranscribeRequest
from omniroute.formats.canonical import token_count
from omniroute.formats.openai import images as openai_images
from omniroute.formats.openai.audio import speech_body
from omniroute.hookspecs import hookimpl
from omniroute.providers.base import (
    Embeddings,
    Preset,
    Provider,
    ProviderContext,
    Transcribed,
    UpstreamCall,
    UpstreamResponse,
    all_or_none,
    checked_vectors,
    summed_images,
)
from omniroute.providers.framing import RAW
from omniroute.providers.http import HTTPProvider
from omniroute.storage.store import Connection

_PRESETS = [
    Preset("openai", "https://api.openai.com/v1", "openai", "OpenAI"),
    Preset("openrouter", "https://openrouter.ai/api/v1", "openrouter", "OpenRouter"),
    Preset("groq", "https://api.groq.com/openai/v1", "groq", "Groq"),
    Preset("deepseek", "https://api.deepseek.com/v1", "deepseek", "DeepSeek"),
    Preset("together", "https://api.together.xyz/v1", "together", "Together AI"),
    Preset("mistral", "https://api.mistral.ai/v1", "mistral", "Mistral AI"),
    Preset("fireworks", "https://api.fireworks.ai/inference/v1", "fireworks", "Fireworks AI"),
    Preset("xai", "https://api.x.ai/v1", "xai", "xAI (Grok)"),
    Preset("nvidia", "https://integrate.api.nvidia.com/v1", "nvidia", "NVIDIA NIM"),
    Preset("cerebras", "https://api.cerebras.ai/v1", "cerebras", "Cerebras"),
    Preset("perplexity", "https://api.perplexity.ai", "pplx", "Perplexity"),
    # embeddings (and chat) services with OpenAI-compatible APIs (each vendor's API docs)
    Preset("nebius", "https://api.tokenfactory.nebius.com/v1", "nebius",
           "Nebius Token Factory (formerly AI Studio)"),
    Preset("jina", "https://api.jina.ai/v1", "jina", "Jina AI (embeddings)"),
    Preset("github", "https://models.github.ai/inference", "github", "GitHub Models"),
    Preset("vllm", "http://127.0.0.1:8000/v1", "vllm", "vLLM (local)", needs_api_key=False),
    Preset("llamacpp", "http://127.0.0.1:8080/v1", "llamacpp", "llama.cpp server (local)",
           needs_api_key=False),
    Preset("lmstudio", "http://127.0.0.1:1234/v1", "lmstudio", "LM Studio (local)",
           needs_api_key=False),
    Preset("ollama", "http://127.0.0.1:11434/v1", "ollama",
           "Ollama's OpenAI-compatible endpoint (local)", needs_api_key=False),
]


#: hosts whose images come from Chat Completions (``images_via_chat``)
_CHAT_IMAGE_HOSTS = frozenset({"openrouter.ai"})


class OpenAIProvider(HTTPProvider):
    """OpenAI Chat Completions over HTTP (JSON and SSE); embeddings, and the audio API
    (``/audio/transcriptions``, ``/audio/translations``, ``/audio/speech``) passed through."""

    type = "openai"
    price_provider: ClassVar[str | None] = "openai"
    format = "openai"
    capabilities = frozenset({"chat", "embeddings", "images", "transcription", "translation",
                              "speech"})
    default_prefix = "openai"
    description = "Any OpenAI-compatible Chat Completions API"
    presets: ClassVar[Mapping[str, Preset]] = {p.name: p for p in _PRESETS}
    credential_fields: ClassVar[tuple[str, ...]] = ("api_key",)
    requires_credentials = False  # a custom base URL (a local server) may need no key

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        settings = connection.settings
        self.base_url = settings["base_url"].rstrip("/")
        self.chat_url = f"{self.base_url}/chat/completions"
        #: ask for usage in streams (the upstream may reject stream_options)
        self.stream_usage = bool(settings.get("stream_usage", True))
        #: images from Chat Completions (``modalities``), not ``/images/generations``:
        #: OpenRouter has no images endpoint, so its connections default to this
        self.images_via_chat = images_through_chat(settings)
        headers = {"User-Agent": context.user_agent, "Content-Type": "application/json"}
        headers.update(settings.get("headers", {}))
        api_key = connection.credentials.get("api_key")
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._json_headers = {**headers, "Accept": "application/json"}
        self._stream_headers = {**headers, "Accept": "text/event-stream"}
        #: a multipart upload sets its own Content-Type (with the boundary)
        self._form_headers = {k: v for k, v in headers.items() if k != "Content-Type"}

    @classmethod
    def configure(
        cls, settings: dict[str, Any], credentials: dict[str, Any], preset: Preset | None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = dict(settings)
        if preset is not None:
            settings.setdefault("base_url", preset.base_url)
            settings["headers"] = {**preset.headers, **settings.get("headers", {})}
        base_url = settings.get("base_url")
        if not base_url:
            raise ValueError("an openai connection needs a base_url (or a preset)")
        parts = urlsplit(str(base_url))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
        headers = settings.get("headers", {})
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ValueError("headers must map header names to strings")
        for flag in ("stream_usage", "images_via_chat"):
            if flag in settings and not isinstance(settings[flag], bool):
                raise ValueError(f"{flag} must be true or false")
        return super().configure(settings, credentials, preset)

    def chat(self, call: UpstreamCall) -> Coroutine[Any, Any, UpstreamResponse]:
        # the body is ready before any wait: the POST's own coroutine is the call's (one
        # that only awaited it would cost every request a frame and an await)
        body = call.body
        if body.get("model") != call.model:
            body = {**body, "model": call.model}
        if call.stream:
            if self.stream_usage and not (body.get("stream_options") or {}).get("include_usage"):
                body = {**body, "stream_options": {
                    **(body.get("stream_options") or {}), "include_usage": True}}
            return self.post_stream(self.chat_url, self._stream_headers, orjson.dumps(body))
        return self.post_json(self.chat_url, self._json_headers, orjson.dumps(body))

    async def embed(self, model: str, inputs: list[str], options: dict[str, Any]) -> Embeddings:
        """``POST {base_url}/embeddings``, always asking for floats."""
        body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
        if options.get("dimensions") is not None:
            body["dimensions"] = options["dimensions"]
        answer = await self.post_json(f"{self.base_url}/embeddings", self._json_headers,
                                      orjson.dumps(body))
        assert answer.body is not None
        return embeddings_from(answer.body, model, len(inputs))

    async def transcribe(self, model: str, request: TranscribeRequest) -> Transcribed:
        """``POST {base_url}/audio/transcriptions`` (or ``/translations``): the client's form
        as it sent it, with the upstream's model; the answer comes back as it is."""
        path = "translations" if request.task == "translate" else "transcriptions"
        form = aiohttp.FormData()
        form.add_field("model", model)
        for name, values in request.fields.items():
            for value in values:
                form.add_field(name, value)
        upload = request.file
        form.add_field("file", upload.data, filename=upload.filename,
                       content_type=upload.content_type or "application/octet-stream")
        answer = await self.post_body(f"{self.base_url}/audio/{path}", self._form_headers, form)
        return Transcribed(body=answer.body,
                           content_type=answer.headers.get("content-type", ""))

    async def speak(self, model: str, request: SpeechRequest) -> UpstreamResponse:
        """``POST {base_url}/audio/speech``: the audio streams back chunk by chunk."""
        headers = {**self._json_headers, "Accept": "*/*"}
        return await self.post_stream(f"{self.base_url}/audio/speech", headers,
                                      orjson.dumps(speech_body(request, model)), framing=RAW)

    async def generate_images(self, model: str, request: c.ImageRequest) -> c.ImageResult:
        """``POST {base_url}/images/generations`` with the client's fields as sent; with
        ``images_via_chat``, ``n`` Chat Completions calls at once, one image each (a
        failed one ends the others), their images in order and their usage added up."""
        if self.images_via_chat:
            chat = orjson.dumps(openai_images.chat_request(request, model))
            answers = await all_or_none([
                self.post_json(self.chat_url, self._json_headers, chat,
                               timeout=self.context.timeouts.images)
                for _ in range(request.n)])
            return summed_images([openai_images.chat_answer(answer.body or b"")
                                  for answer in answers])
        body = openai_images.encode_request(request, model)
        answer = await self.post_json(f"{self.base_url}/images/generations", self._json_headers,
                                      orjson.dumps(body), timeout=self.context.timeouts.images)
        assert answer.body is not None
        return openai_images.decode_answer(answer.body)

    async def list_models(self) -> list[str]:
        data = await self.get_json(f"{self.base_url}/models", self._json_headers)
        entries = data.get("data", []) if isinstance(data, dict) else []
        listed = [m["id"] for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)]
        configured = self.configured_models
        return configured + [m for m in listed if m not in configured]


def images_through_chat(settings: Mapping[str, Any]) -> bool:
    """The ``images_via_chat`` setting; left out, true for OpenRouter's base URL."""
    if "images_via_chat" in settings:
        return bool(settings["images_via_chat"])
    return urlsplit(str(settings.get("base_url", ""))).hostname in _CHAT_IMAGE_HOSTS


def embeddings_from(body: bytes, model: str, count: int) -> Embeddings:
    """OpenAI's ``{"data": [{"index", "embedding"}], "model", "usage"}``, in input order."""
    try:
        data = orjson.loads(body)
        items = sorted(data["data"], key=lambda item: item["index"])
        vectors = [item["embedding"] for item in items]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise UpstreamError("upstream sent a malformed embeddings answer") from None
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens")
    return Embeddings(checked_vectors(vectors, count),
                      token_count(tokens),
                      data.get("model") if isinstance(data.get("model"), str) else model)


@hookimpl
def register_providers(register: Callable[[type[Provider]], None]) -> None:
    register(OpenAIProvider)
