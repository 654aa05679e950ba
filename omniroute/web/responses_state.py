"""OpenAI Responses server-side state: ``store``, ``previous_response_id`` and their routes.

The Responses API keeps conversations on the server: a response created with
``store`` (true unless the client says false; Codex says false) can be
continued by naming it in ``previous_response_id``, retrieved and deleted.
omniroute keeps them itself (:mod:`omniroute.storage.responses`), whatever
provider answered, so a conversation may move between providers.

:class:`ResponsesState` is the data path's :class:`~omniroute.proxy.Extension`
for ``POST /v1/responses``:

* ``before``: the stored input and output of ``previous_response_id`` go in
  front of the request's input and the field is removed, so no upstream ever
  sees an id it does not know. ``instructions`` are not carried over (the API
  documents the same). An unknown id, or another key's, is the API's own
  ``400 previous_response_not_found`` (clients such as Codex react to it by
  resending the whole conversation).
* ``answer`` / ``frame``: the final response object (the JSON answer, or the
  ``response.completed`` / ``response.incomplete`` event) is stored with the
  turn's effective input *before* it is sent, so a follow-up that the client
  fires the moment it has the id already finds it.

Replayed output items lose their ``id`` (as Codex replays them), except a
reasoning item without ``encrypted_content``, which only its id can resolve.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web

from omniroute.errors import InvalidRequest, NotFound
from omniroute.formats.base import ClientRequest, Format
from omniroute.formats.json_text import json_object
from omniroute.formats.responses.response import frame_json
from omniroute.proxy import Extension, handle
from omniroute.storage.responses import ResponseStore
from omniroute.tokens import estimate_request
from omniroute.web.body import read_object
from omniroute.web.keys import GATEWAY, PRINCIPAL

log = logging.getLogger(__name__)

_FINAL_EVENTS = ("response.completed", "response.incomplete")
_FINAL_MARKERS = tuple(e.encode() for e in _FINAL_EVENTS)  # cheap byte test per frame
_STORED_STATUSES = ("completed", "incomplete")


class ResponsesState(Extension):
    """``store`` and ``previous_response_id`` for one ``POST /v1/responses`` request."""

    def __init__(self, responses: ResponseStore, api_key_id: str | None) -> None:
        self.responses = responses
        self.api_key_id = api_key_id
        self.store = True
        self.previous_id: str | None = None
        #: the input this turn answers: the continued history, then the request's items
        self.input: list[Any] = []
        self.saved = False

    async def before(self, body: dict[str, Any]) -> dict[str, Any]:
        store = body.get("store")
        if store is not None and not isinstance(store, bool):
            raise InvalidRequest("'store' must be a boolean.", param="store")
        self.store = store is not False
        if body.get("conversation") is not None:
            raise InvalidRequest(
                "This gateway does not serve the Conversations API; continue a conversation "
                "with 'previous_response_id' or send the whole input.",
                param="conversation", code="unsupported_parameter")
        items = input_items(body.get("input"))
        previous = body.get("previous_response_id")
        if previous is None:
            self.input = items
            return body
        if not isinstance(previous, str) or not previous:
            raise InvalidRequest("'previous_response_id' must be a non-empty string.",
                                 param="previous_response_id")
        stored = await self.responses.get(previous, self.api_key_id)
        if stored is None:
            raise previous_not_found(previous)
        self.previous_id = previous
        self.input = [*stored.input, *(replayable(item) for item in stored.output), *items]
        body = {k: v for k, v in body.items() if k != "previous_response_id"}
        body["input"] = self.input
        return body

    async def answer(self, body: bytes) -> None:
        if self.store:
            await self._save(json_object(body))

    async def frame(self, frame: bytes) -> None:
        if not self.store or self.saved or not any(m in frame for m in _FINAL_MARKERS):
            return
        event = frame_json(frame)
        if event is not None and event.get("type") in _FINAL_EVENTS:
            await self._save(event.get("response"))

    async def _save(self, response: Any) -> None:
        if not (isinstance(response, dict) and isinstance(response.get("id"), str)
                and response.get("status") in _STORED_STATUSES):
            return
        if self.previous_id is not None:
            response = {**response, "previous_response_id": self.previous_id}
        try:
            await self.responses.save(self.api_key_id, response, self.input)
        except Exception:  # the answer still reaches the client; only its follow-up fails
            log.exception("could not store response %s", response["id"])
            return
        self.saved = True


def input_items(raw: Any) -> list[Any]:
    """The request's ``input`` as a list of items (a string is one user message)."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    return list(raw) if isinstance(raw, list) else []


def replayable(item: Any) -> Any:
    """An output item as the next turn's input: without its id, unless only the id resolves it."""
    if not isinstance(item, dict) or "id" not in item:
        return item
    if item.get("type") == "reasoning" and not item.get("encrypted_content"):
        return item
    return {k: v for k, v in item.items() if k != "id"}


def previous_not_found(response_id: str) -> InvalidRequest:
    return InvalidRequest(f"Previous response with id '{response_id}' not found.",
                          param="previous_response_id", code="previous_response_not_found")


# ----------------------------------------------------------------------------- routes


def _store(request: web.Request) -> ResponseStore:
    return ResponseStore(request.app[GATEWAY].db)


def _responses_format(request: web.Request) -> Format:
    fmt = request.app[GATEWAY].formats.get("responses")
    if fmt is None:
        raise NotFound("The 'responses' API is not available: its format plugin is not loaded "
                       "(see `omniroute plugins`).")
    return fmt


async def create_response(request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: the data path, with the server-side state."""
    state = ResponsesState(_store(request), request[PRINCIPAL].key_id)
    return await handle(request, _responses_format(request), "responses", extension=state)


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
    gateway = request.app[GATEWAY]
    fmt = _responses_format(request)
    body = await read_object(request, gateway.settings.max_body_bytes)
    body = await ResponsesState(_store(request), request[PRINCIPAL].key_id).before(body)
    model = body.get("model") if isinstance(body.get("model"), str) and body["model"] else "-"
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
        r.add_post(base, create_response)
        r.add_post(base + "/input_tokens", count_input_tokens)
        r.add_get(base + "/{id}", retrieve_response, allow_head=False)
        r.add_delete(base + "/{id}", delete_response)
