"""Client API routes, registered from the formats: each format declares its own.

Every loaded :class:`~omniroute.formats.base.Format` lists its endpoints in
``client_routes`` (:class:`~omniroute.formats.base.ClientRoute`: method, path,
operation, request-log name, the stream flag its path implies). This module
binds each one at start-up: ``chat``, ``count_tokens``, ``embeddings``, ``images``
and the audio routes (``transcription``, ``translation``, ``speech``) to a pipeline
operation (:mod:`omniroute.pipeline`), ``models`` and ``model`` to the format's
model-list shape (a ``models`` route lists one type of model when it names one, and
``?type=`` filters any of them). Two formats may declare one path
(google-genai and OpenAI clients share ``GET /v1/models``): the one whose
``when_headers`` the request carries serves it, else the one without any.

Each registered route is tagged (:mod:`omniroute.web.tags`) with its format and its
access class; the routes' guards (:mod:`omniroute.web.guard`) authenticate and render
errors by these tags.
A new client format therefore needs no edit here: registering it is enough.

Besides the formats' routes: the Responses API's stored-response routes
(:mod:`omniroute.web.responses`), its WebSocket refusal, Ollama's
``/api/version`` and ``GET /``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial

import orjson
from aiohttp import web

from omniroute.appkeys import CATALOG, PIPELINE, REGISTRY
from omniroute.errors import GatewayError, InvalidRequest, NotFound
from omniroute.formats.base import ClientRoute, Format, ModelInfo
from omniroute.pipeline import (
    Chat,
    CountTokens,
    Embed,
    Images,
    Operation,
    Speak,
    Transcribe,
    Translate,
)
from omniroute.providers.model_types import MODEL_TYPES
from omniroute.version import __version__
from omniroute.web.dashboard import redirect_to_dashboard, wants_page
from omniroute.web.responses import setup_responses_routes
from omniroute.web.tags import tag_resource, tag_route

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
#: the audio operations, by route operation (the format's ``audio`` API serves them)
_AUDIO: dict[str, type[Transcribe] | type[Speak]] = {
    "transcription": Transcribe, "translation": Translate, "speech": Speak}


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _bind(app: web.Application, fmt: Format, route: ClientRoute) -> Handler:
    """The handler of one declared route."""
    catalog, pipeline, formats = app[CATALOG], app[PIPELINE], app[REGISTRY].formats
    operation: Operation
    if route.operation == "models":
        async def models(request: web.Request) -> web.StreamResponse:
            wanted = _model_type(request, route)
            infos = await catalog.model_infos()
            return _json(fmt.model_list(infos if wanted is None else _of_type(infos, wanted)))
        return models
    if route.operation == "model":
        async def model(request: web.Request) -> web.StreamResponse:
            wanted = fmt.model_name(request.match_info["model"])
            for info in await catalog.model_infos():
                if info.id == wanted:
                    return _json(fmt.model_card(info))
            raise NotFound(f"The model {wanted!r} does not exist; the model list names "
                           "every model this gateway serves.", code="model_not_found")
        return model
    if route.operation == "chat":
        operation = Chat(fmt, route.endpoint, formats)
    elif route.operation == "count_tokens":
        operation = CountTokens(fmt, route.endpoint,
                                connect_timeout=lambda: catalog.timeouts.connect)
    elif route.operation == "embeddings":
        operation = Embed(fmt, route.endpoint, partial(fmt.embed_request, route=route),
                          partial(fmt.embed_answer, route=route))
    elif route.operation == "images":
        operation = Images(fmt, route.endpoint, partial(fmt.image_request, route=route),
                           partial(fmt.image_answer, route=route))
    elif route.operation in _AUDIO:
        operation = _AUDIO[route.operation](fmt, route.endpoint)
    else:
        raise ValueError(f"format {fmt.name!r} declares {route.method} {route.path} with an "
                         f"unknown operation {route.operation!r}")
    return pipeline.handler(operation, route.stream)


def _model_type(request: web.Request, route: ClientRoute) -> str | None:
    """The type of model a list asks for: the route's own, else ``?type=`` (None: all)."""
    if route.model_type is not None:
        return route.model_type
    wanted = request.query.get("type")
    if not wanted:
        return None
    if wanted not in MODEL_TYPES:
        raise InvalidRequest(f"'type' must be one of {', '.join(MODEL_TYPES)}, got "
                             f"{wanted!r}.", param="type", code="invalid_type")
    return wanted


def _of_type(infos: list[ModelInfo], wanted: str) -> list[ModelInfo]:
    return [info for info in infos if info.type == wanted]


def _dispatch(choices: list[tuple[tuple[str, ...], Handler]], default: Handler) -> Handler:
    """One path, several formats: the first whose ``when_headers`` the request carries."""
    async def serve(request: web.Request) -> web.StreamResponse:
        headers = request.headers
        for names, handler in choices:
            if any(name in headers for name in names):
                return await handler(request)
        return await default(request)

    return serve


def setup_client_routes(app: web.Application) -> None:
    """Register every loaded format's client routes, then the few routes of no format."""
    formats = app[REGISTRY].formats
    declared: dict[tuple[str, str], list[tuple[Format, ClientRoute]]] = {}
    for fmt in formats.values():
        for route in fmt.client_routes:
            declared.setdefault((route.method, route.path), []).append((fmt, route))
    for (method, path), entries in declared.items():
        defaults = [(f, r) for f, r in entries if not r.when_headers]
        if len(defaults) > 1:
            names = ", ".join(f.name for f, _ in defaults)
            raise ValueError(f"formats {names} all declare {method} {path}; one of them must "
                             "name the headers that tell its requests apart (when_headers)")
        choices = [(r.when_headers, _bind(app, f, r)) for f, r in entries if r.when_headers]
        if defaults:
            fmt, route = defaults[0]
            default = _bind(app, fmt, route)
        else:  # only header-selected formats: the first serves requests without the headers
            fmt, route = entries[0]
            default = choices[0][1]
        handler = _dispatch(choices, default) if choices else default
        added = app.router.add_route(method, path, handler)
        tag_route(app, added, fmt.name, "client")
    r = app.router
    setup_responses_routes(app)
    tag_route(app, r.add_get("/v1/responses", responses_websocket, allow_head=False),
              "responses", "client")
    tag_route(app, r.add_get("/api/version", ollama_version), "ollama", "client")
    resource = r.add_get("/", root).resource  # GET and HEAD
    assert resource is not None
    tag_resource(app, resource, None, "public")


async def ollama_version(request: web.Request) -> web.Response:
    return _json({"version": __version__})


async def responses_websocket(request: web.Request) -> web.Response:
    """``GET /v1/responses``: Codex tries a WebSocket first; refuse at once so it POSTs."""
    raise GatewayError("This gateway serves the Responses API over HTTP POST only "
                       "(no WebSocket).", status=405, type="invalid_request_error",
                       code="websocket_not_supported", headers={"Allow": "POST"})


async def root(request: web.Request) -> web.Response:
    if wants_page(request):  # a browser: the dashboard
        return redirect_to_dashboard()
    started_at = request.app[CATALOG].started_at
    return _json({"name": "omniroute", "status": "ok",
                  "uptime_s": round(time.time() - started_at, 1)})
