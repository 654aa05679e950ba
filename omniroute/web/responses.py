"""The Responses API's own routes besides generation: retrieve, delete, count input tokens.

``POST /v1/responses`` itself is a chat route (:mod:`omniroute.web.client`); its
server-side state (``store``, ``previous_response_id``) is the pipeline stage
:mod:`omniroute.pipeline.responses_state`, whose store these routes read.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from omniroute.appkeys import CATALOG, PRINCIPAL, REGISTRY, STORE
from omniroute.bodies import read_object
from omniroute.errors import InvalidRequest, NotFound
from omniroute.formats.base import ClientRequest, Format
from omniroute.pipeline.responses_state import ResponsesState
from omniroute.storage.responses import ResponseStore
from omniroute.tokens import estimate_request
from omniroute.web.tags import tag_route


def _store(request: web.Request) -> ResponseStore:
    return ResponseStore(request.app[STORE].db)


def _responses_format(request: web.Request) -> Format:
    fmt = request.app[REGISTRY].formats.get("responses")
    if fmt is None:
        raise NotFound("The 'responses' API is not available: its format plugin is not loaded "
                       "(see `omniroute plugins`).")
    return fmt


async def retrieve_response(request: web.Request) -> web.Response:
    """``GET /v1/responses/{id}``: a stored response of the calling key."""
    response_id = request.match_info["id"]
    if request.query.get("stream", "").lower() in ("true", "1"):
        raise InvalidRequest("Streaming a stored response is not supported; "
                             "retrieve it without 'stream'.", param="stream")
    stored = await _store(request).get(response_id, request[PRINCIPAL].key_id)
    if stored is None:
        raise _not_found(response_id)
    return _json(stored.response)


async def delete_response(request: web.Request) -> web.Response:
    """``DELETE /v1/responses/{id}``."""
    response_id = request.match_info["id"]
    if not await _store(request).delete(response_id, request[PRINCIPAL].key_id):
        raise _not_found(response_id)
    return _json({"id": response_id, "object": "response", "deleted": True})


async def count_input_tokens(request: web.Request) -> web.Response:
    """``POST /v1/responses/input_tokens``: the local estimate of the request's input.

    Counted over the canonical request (instructions, input items, tools), with
    ``previous_response_id`` resolved as ``POST /v1/responses`` would.
    """
    fmt = _responses_format(request)
    body = await read_object(request, request.app[CATALOG].settings.max_body_bytes)
    body = await ResponsesState(_store(request), request[PRINCIPAL].key_id).prepare(body)
    named = body.get("model")
    model = named if isinstance(named, str) and named else "-"
    body = {**body, "model": model, "stream": False}
    canonical = fmt.decode_request(ClientRequest(body, model, False, request.headers))
    return _json({"object": "response.input_tokens", "input_tokens": estimate_request(canonical)})


def _not_found(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")


def _json(data: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(data), content_type="application/json")


def setup_responses_routes(app: web.Application) -> None:
    """The Responses routes (``GET /v1/responses`` itself is the WebSocket refusal)."""
    r = app.router
    for base in ("/v1/responses", "/responses"):
        for route in (r.add_post(base + "/input_tokens", count_input_tokens),
                      r.add_get(base + "/{id}", retrieve_response, allow_head=False),
                      r.add_delete(base + "/{id}", delete_response)):
            tag_route(app, route, "responses", "client")
