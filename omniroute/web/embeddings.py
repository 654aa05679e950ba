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

import asyncio
import base64
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiohttp import web

from omniroute.errors import (
    EmbeddingsNotSupported,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
)
from omniroute.gateway import Gateway
from omniroute.providers.base import Embeddings
from omniroute.proxy import all_failed, plan_targets, try_target
from omniroute.routing import Route, Target
from omniroute.storage import RequestRecord
from omniroute.tokens import estimate_text
from omniroute.watch import after_check
from omniroute.web.body import read_object
from omniroute.web.keys import GATEWAY, PRINCIPAL

log = logging.getLogger(__name__)

#: the most inputs one request may embed (OpenAI's own limit)
MAX_INPUTS = 2048


@dataclass(slots=True)
class EmbedRequest:
    """What any client asked for, in one shape."""

    model: str
    inputs: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    #: OpenAI clients may ask for ``"base64"`` (little-endian float32)
    encoding: str = "float"


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


# ----------------------------------------------------------------------------- the data path

Decode = Callable[[dict[str, Any]], EmbedRequest]
Encode = Callable[[EmbedRequest, Embeddings, int, int], Any]


def endpoint(decode: Decode, encode: Encode) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        return await handle(request, decode, encode)

    return serve


async def handle(request: web.Request, decode: Decode, encode: Encode) -> web.Response:
    """Read, route, embed (with fallback), answer, record."""
    gateway = request.app[GATEWAY]
    started = time.perf_counter()
    record = RequestRecord(request_id=gateway.new_request_id(), ts=time.time(),
                           endpoint="embeddings", api_key_id=request[PRINCIPAL].key_id)
    try:
        ask = decode(await read_object(request, gateway.settings.max_body_bytes))
        record.model_requested = ask.model
        route = await after_check(gateway.watcher, lambda: gateway.router.resolve(ask.model),
                                  ModelNotFound)
        target, result = await embed(gateway, route, ask, record)
        tokens = result.prompt_tokens
        if tokens is None:  # the upstream did not count: estimate, as for chat
            tokens = sum(estimate_text(text) for text in ask.inputs)
        record.status, record.prompt_tokens = 200, tokens
        record.ttfb_ms = (time.perf_counter() - started) * 1000
        elapsed_ns = int((time.perf_counter() - started) * 1e9)
        return web.json_response(encode(ask, result, tokens, elapsed_ns), headers={
            "X-OmniRoute-Request-Id": record.request_id,
            "X-OmniRoute-Provider": target.prefix,
            "X-OmniRoute-Model": target.model,
            "X-OmniRoute-Fallback-Attempts": str(max(0, record.attempts - 1))})
    except GatewayError as err:
        record.status, record.error = err.status, err.message
        err.headers.setdefault("X-OmniRoute-Request-Id", record.request_id)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        record.status, record.error = 499, "client disconnected"
        raise
    except Exception as exc:  # a bug of ours: recorded, then rendered by the middleware
        record.status, record.error = 500, f"internal error: {type(exc).__name__}"
        raise
    finally:
        record.latency_ms = (time.perf_counter() - started) * 1000
        gateway.log.add(record)


async def embed(
    gateway: Gateway, route: Route, ask: EmbedRequest, record: RequestRecord
) -> tuple[Target, Embeddings]:
    """Try the route's targets in the strategy's order until one embeds (as chat does)."""
    plan = await plan_targets(gateway, route, None)
    failures: list[tuple[Target, GatewayError]] = []
    for target in plan.targets:
        tried = await try_target(
            gateway, target, record, None, failures,
            partial(target.provider.embed, target.model, ask.inputs, ask.options),
            skip=(EmbeddingsNotSupported,))  # a type without embeddings: skipped, not charged
        if tried is None:
            log.warning("%s failed for %s: %s", target.label, record.request_id,
                        failures[-1][1])
            continue
        result, attempt = tried
        await attempt.__aexit__(None, None, None)
        return target, result
    raise all_failed(route, failures, plan.skipped)


def setup_embeddings_routes(app: web.Application) -> None:
    openai = endpoint(openai_request, openai_answer)
    for path in ("/v1/embeddings", "/embeddings"):
        app.router.add_post(path, openai)
    app.router.add_post("/api/embed", endpoint(ollama_request, ollama_answer))
    app.router.add_post("/api/embeddings", endpoint(legacy_request, legacy_answer))
