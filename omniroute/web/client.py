"""Client API routes: each client API's own endpoints, all served by one data path.

| client | routes |
|---|---|
| OpenAI Chat | ``POST /v1/chat/completions`` (also ``/chat/completions``), ``POST /v1/providers/{prefix}/chat/completions``, ``GET /v1/models`` (also ``/models``), ``GET /v1/models/{id}`` |
| OpenAI Completions (legacy) | ``POST /v1/completions`` (also ``/completions``), served by chat models |
| Anthropic | ``POST /v1/messages``, ``POST /v1/messages/count_tokens`` (also without ``/v1``) |
| OpenAI Responses | ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``, ``POST /v1/responses/input_tokens`` (also without ``/v1``); state in the pipeline stage :mod:`omniroute.pipeline.responses_state` |
| Gemini | ``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent``, the same under ``/v1/models/``; ``GET /v1beta/models`` |
| Ollama | ``POST /api/chat`` (also ``/v1/api/chat``), ``GET /api/tags``, ``GET /api/version`` |
| Embeddings | ``POST /v1/embeddings`` (also ``/embeddings``), ``POST /api/embed``, ``POST /api/embeddings``; see :mod:`embeddings` |

Which client API a path belongs to also decides the shape of its errors
(:func:`client_format_of`), so a Gemini client gets a Gemini error even for an
unknown route under ``/v1beta``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from omniroute.appkeys import GATEWAY, PIPELINE
from omniroute.errors import GatewayError, InvalidRequest, NotFound
from omniroute.formats.base import Format
from omniroute.formats.completions import CompletionsFormat
from omniroute.gateway import Gateway
from omniroute.pipeline import Chat, CountTokens, Operation
from omniroute.version import __version__
from omniroute.web.embeddings import setup_embeddings_routes
from omniroute.web.responses import setup_responses_routes

#: paths under /api/ that are client API (Ollama's), not management API
OLLAMA_PATHS = frozenset({"/api/chat", "/api/tags", "/api/version", "/v1/api/chat",
                          "/api/embed", "/api/embeddings"})

_GEMINI_ACTIONS = {"generateContent": False, "streamGenerateContent": True}


def client_format_of(path: str) -> str:
    """The client API a request path belongs to (it shapes the errors)."""
    if path.startswith(("/v1/messages", "/messages")):
        return "anthropic"
    if path.startswith(("/v1/responses", "/responses")):
        return "responses"
    if path.startswith("/v1beta/") or (path.startswith("/v1/models/") and ":" in path):
        return "gemini"
    if path in OLLAMA_PATHS:
        return "ollama"
    return "openai"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _unavailable(format_name: str) -> Handler:
    async def serve(request: web.Request) -> web.StreamResponse:
        raise NotFound(f"The {format_name!r} API is not available: its format plugin "
                       "is not loaded (see `omniroute plugins`).")

    return serve


def _route(app: web.Application, operation: Operation) -> Handler:
    """A handler serving ``operation`` through the pipeline."""
    pipeline = app[PIPELINE]

    async def serve(request: web.Request) -> web.StreamResponse:
        return await pipeline.serve(request, operation)

    return serve


def _chat(app: web.Application, fmt: Format | None, format_name: str, endpoint: str) -> Handler:
    if fmt is None:
        return _unavailable(format_name)
    return _route(app, Chat(fmt, endpoint, app[GATEWAY].formats))


def _gemini(app: web.Application) -> Handler:
    """``POST /v1beta/models/{model}:generateContent`` (``:streamGenerateContent``, ``:countTokens``)."""
    gateway = app[GATEWAY]
    fmt = gateway.formats.get("gemini")
    if fmt is None:
        return _unavailable("gemini")
    pipeline = app[PIPELINE]
    operations: dict[str, Operation] = {
        action: Chat(fmt, f"gemini.{action}", gateway.formats) for action in _GEMINI_ACTIONS}
    operations["countTokens"] = CountTokens(
        fmt, "gemini.countTokens", lambda tokens: {"totalTokens": tokens},
        connect_timeout=lambda: gateway.timeouts.connect, unwrap="generateContentRequest")

    async def serve(request: web.Request) -> web.StreamResponse:
        model, _, action = request.match_info["tail"].rpartition(":")
        model = model.removeprefix("models/")
        operation = operations.get(action)
        if operation is None:
            raise NotFound(f"Unknown Gemini method {action!r}; this gateway serves "
                           "generateContent, streamGenerateContent and countTokens.")
        if not model:
            raise InvalidRequest("The model is missing from the URL: "
                                 "POST /v1beta/models/{model}:" + action, param="model",
                                 code="missing_model")
        return await pipeline.serve(request, operation, path_model=model,
                                    path_stream=_GEMINI_ACTIONS.get(action, False))

    return serve


async def gemini_model(request: web.Request) -> web.Response:
    """``GET /v1beta/models/{model}``: one model, Gemini's format."""
    wanted = request.match_info["tail"].removeprefix("models/")
    for model, _ in await _all_models(request.app[GATEWAY]):
        if model == wanted:
            return web.json_response(_gemini_model(model))
    raise NotFound(f"models/{wanted} is not found; GET /v1beta/models lists them.",
                   code="model_not_found")


def _gemini_model(model: str) -> dict[str, Any]:
    return {"name": f"models/{model}", "displayName": model, "version": "001",
            "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                           "countTokens"]}


# ----------------------------------------------------------------------------- model lists


async def _all_models(gateway: Gateway) -> list[tuple[str, str]]:
    """``(model id, owner)``: combos, aliases, then every active connection's models."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []

    def add(model_id: str, owner: str) -> None:
        if model_id not in seen:
            seen.add(model_id)
            out.append((model_id, owner))

    for combo in gateway.combos:
        add(combo.name, "combo")
    for alias in gateway.aliases:
        if not any(ch in alias for ch in "*?["):
            add(alias, "alias")
    providers = list(gateway.providers.values())
    lists = await asyncio.gather(*(gateway.models_of(p) for p in providers))
    for provider, models in zip(providers, lists):
        for model in models:
            add(f"{provider.connection.prefix}/{model}", provider.connection.prefix)
    return out


async def list_models(request: web.Request) -> web.Response:
    """``GET /v1/models``: OpenAI's list format (Gemini's for google-genai)."""
    if _from_google_client(request):
        return await gemini_models(request)
    gateway = request.app[GATEWAY]
    created = int(gateway.started_at)
    data = [{"id": m, "object": "model", "created": created, "owned_by": owner}
            for m, owner in await _all_models(gateway)]
    return web.json_response({"object": "list", "data": data})


def _from_google_client(request: web.Request) -> bool:
    """google-genai (api_version ``v1``) shares ``/v1/models`` with OpenAI clients."""
    return "x-goog-api-client" in request.headers or "x-goog-api-key" in request.headers


async def get_model(request: web.Request) -> web.Response:
    """``GET /v1/models/{id}``: one model, OpenAI's format (ids may hold slashes)."""
    if _from_google_client(request):
        request.match_info["tail"] = request.match_info["id"]
        return await gemini_model(request)
    gateway = request.app[GATEWAY]
    wanted = request.match_info["id"]
    for model, owner in await _all_models(gateway):
        if model == wanted:
            return web.json_response({"id": model, "object": "model",
                                      "created": int(gateway.started_at), "owned_by": owner})
    raise NotFound(f"The model {wanted!r} does not exist; GET /v1/models lists them.",
                   code="model_not_found")


async def gemini_models(request: web.Request) -> web.Response:
    """``GET /v1beta/models``: Gemini's list format."""
    models = await _all_models(request.app[GATEWAY])
    return web.json_response({"models": [_gemini_model(m) for m, _ in models]})


async def ollama_tags(request: web.Request) -> web.Response:
    """``GET /api/tags``: Ollama's list of local models."""
    gateway = request.app[GATEWAY]
    modified = datetime.fromtimestamp(gateway.started_at, UTC).isoformat()
    return web.json_response({"models": [
        {"name": m, "model": m, "modified_at": modified, "size": 0, "digest": "",
         "details": {"format": "", "family": owner, "families": [owner],
                     "parameter_size": "", "quantization_level": ""}}
        for m, owner in await _all_models(gateway)]})


async def ollama_version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


async def responses_websocket(request: web.Request) -> web.Response:
    """``GET /v1/responses``: Codex tries a WebSocket first; refuse at once so it POSTs."""
    raise GatewayError("This gateway serves the Responses API over HTTP POST only "
                       "(no WebSocket).", status=405, type="invalid_request_error",
                       code="websocket_not_supported", headers={"Allow": "POST"})


async def root(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    return web.json_response({
        "name": "omniroute",
        "status": "ok",
        "uptime_s": round(time.time() - gateway.started_at, 1),
    })


def setup_client_routes(app: web.Application) -> None:
    r = app.router
    formats = app[GATEWAY].formats
    chat = _chat(app, formats.get("openai"), "openai", "chat.completions")
    for path in ("/v1/chat/completions", "/chat/completions",
                 "/v1/providers/{provider}/chat/completions"):
        r.add_post(path, chat)
    anthropic = formats.get("anthropic")
    messages = _chat(app, anthropic, "anthropic", "messages")
    count = _unavailable("anthropic") if anthropic is None else _route(app, CountTokens(
        anthropic, "messages.count_tokens", lambda tokens: {"input_tokens": tokens},
        connect_timeout=lambda: app[GATEWAY].timeouts.connect))
    for base in ("/v1/messages", "/messages"):
        r.add_post(base, messages)
        r.add_post(base + "/count_tokens", count)
    responses = _chat(app, formats.get("responses"), "responses", "responses")
    for path in ("/v1/responses", "/responses"):
        r.add_post(path, responses)
    setup_responses_routes(app)
    r.add_get("/v1/responses", responses_websocket, allow_head=False)
    # client side only: no provider speaks legacy completions, no plugin registers it
    completions = _chat(app, CompletionsFormat(), "completions", "completions")
    for path in ("/v1/completions", "/completions"):
        r.add_post(path, completions)
    ollama = _chat(app, formats.get("ollama"), "ollama", "ollama.chat")
    for path in ("/api/chat", "/v1/api/chat"):
        r.add_post(path, ollama)
    r.add_get("/api/tags", ollama_tags)
    setup_embeddings_routes(app)
    r.add_get("/api/version", ollama_version)
    gemini = _gemini(app)
    for base in ("/v1beta/models/", "/v1/models/"):
        r.add_post(base + "{tail:.+}", gemini)
    r.add_get("/v1beta/models", gemini_models)
    r.add_get("/v1beta/models/{tail:.+}", gemini_model)
    for path in ("/v1/models", "/models"):
        r.add_get(path, list_models)
    r.add_get("/v1/models/{id:.+}", get_model)
    r.add_get("/", root)  # also answers HEAD
