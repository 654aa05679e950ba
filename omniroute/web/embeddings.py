"""Embeddings: OpenAI's ``POST /v1/embeddings`` and Ollama's ``POST /api/embed``.

| client | routes | request -> answer |
|---|---|---|
| OpenAI | ``POST /v1/embeddings`` (also ``/embeddings``) | ``{model, input: str or [str], dimensions?, encoding_format?}`` -> ``{object: "list", data, model, usage}`` |
| Ollama | ``POST /api/embed`` | ``{model, input: str or [str], dimensions?}`` -> ``{model, embeddings, total_duration, prompt_eval_count}`` |
| Ollama (legacy) | ``POST /api/embeddings`` | ``{model, prompt}`` -> ``{embedding}`` |

Every route reads its body into an :class:`EmbedRequest`, resolves the model
like chat does (``prefix/model``, aliases, combos), and tries the targets
through the resilience layer: a target whose provider type serves no
embeddings is skipped without being charged, a failure that is not the
client's moves on. Errors take the client's shape in the middleware.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from omniroute.appkeys import GATEWAY, PIPELINE
from omniroute.errors import InvalidRequest, NotFound
from omniroute.pipeline import Embed, EmbedRequest
from omniroute.pipeline.embed import Decode, Encode
from omniroute.providers.base import Embeddings

#: the most inputs one request may embed (OpenAI's own limit)
MAX_INPUTS = 2048


# ----------------------------------------------------------------------------- request bodies

def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: the model to embed with.", param="model",
                             code="missing_model")
    return model


def _inputs(value: Any, name: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts:
        raise InvalidRequest(f"'{name}' must be a non-empty string or a non-empty list of "
                             "strings.", param=name, code="invalid_input")
    if len(texts) > MAX_INPUTS:
        raise InvalidRequest(f"'{name}' holds {len(texts)} items; at most {MAX_INPUTS} may be "
                             "embedded at once.", param=name, code="too_many_inputs")
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text:
            got = "an empty string" if text == "" else type(text).__name__
            raise InvalidRequest(f"'{name}[{i}]' must be a non-empty string, got {got} "
                                 "(token arrays are not supported).", param=name,
                                 code="invalid_input")
    return texts


def _options(body: dict[str, Any]) -> dict[str, Any]:
    dimensions = body.get("dimensions")
    if dimensions is None:
        return {}
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1:
        raise InvalidRequest("'dimensions' must be a positive integer.", param="dimensions",
                             code="invalid_dimensions")
    return {"dimensions": dimensions}


def openai_request(body: dict[str, Any]) -> EmbedRequest:
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.",
                             param="encoding_format", code="invalid_encoding_format")
    return EmbedRequest(_model(body), _inputs(body.get("input"), "input"), _options(body),
                        encoding)


def ollama_request(body: dict[str, Any]) -> EmbedRequest:
    return EmbedRequest(_model(body), _inputs(body.get("input"), "input"), _options(body))


def legacy_request(body: dict[str, Any]) -> EmbedRequest:
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        raise InvalidRequest("'prompt' is one string; POST /api/embed embeds a list.",
                             param="prompt", code="invalid_input")
    return EmbedRequest(_model(body), _inputs(prompt, "prompt"), _options(body))


# ----------------------------------------------------------------------------- answers

def openai_answer(ask: EmbedRequest, result: Embeddings, tokens: int, _ns: int) -> Any:
    def encoded(vector: list[float]) -> Any:
        if ask.encoding == "base64":
            return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        return vector

    return {"object": "list", "model": ask.model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)}
                     for i, v in enumerate(result.vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def ollama_answer(ask: EmbedRequest, result: Embeddings, tokens: int, ns: int) -> Any:
    return {"model": ask.model, "embeddings": result.vectors, "total_duration": ns,
            "load_duration": 0, "prompt_eval_count": tokens}


def legacy_answer(ask: EmbedRequest, result: Embeddings, tokens: int, ns: int) -> Any:
    return {"embedding": result.vectors[0]}


# ----------------------------------------------------------------------------- routes

def endpoint(
    app: web.Application, format_name: str, decode: Decode, encode: Encode
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler serving one embeddings API through the pipeline."""
    fmt = app[GATEWAY].formats.get(format_name)
    pipeline = app[PIPELINE]
    if fmt is None:
        async def unavailable(request: web.Request) -> web.StreamResponse:
            raise NotFound(f"The {format_name!r} API is not available: its format plugin "
                           "is not loaded (see `omniroute plugins`).")
        return unavailable
    operation = Embed(fmt, "embeddings", decode, encode)

    async def serve(request: web.Request) -> web.StreamResponse:
        return await pipeline.serve(request, operation)

    return serve


def setup_embeddings_routes(app: web.Application) -> None:
    openai = endpoint(app, "openai", openai_request, openai_answer)
    for path in ("/v1/embeddings", "/embeddings"):
        app.router.add_post(path, openai)
    app.router.add_post("/api/embed", endpoint(app, "ollama", ollama_request, ollama_answer))
    app.router.add_post("/api/embeddings", endpoint(app, "ollama", legacy_request, legacy_answer))
