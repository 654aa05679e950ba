"""OpenAI Responses server-side state as a stage: ``store`` and ``previous_response_id``.

The Responses API keeps conversations on the server: a response created with
``store`` (true unless the client says false; Codex says false) can be
continued by naming it in ``previous_response_id``, retrieved and deleted.
omniroute keeps them itself (:mod:`omniroute.storage.responses`), whatever
provider answered, so a conversation may move between providers.

:class:`ResponsesStage` runs after the key-limits stage; for each
``POST /v1/responses`` request it runs a :class:`ResponsesState`:

* ``before``: the stored input and output of ``previous_response_id`` go in
  front of the request's input and the field is removed, so no upstream ever
  sees an id it does not know. ``instructions`` are not carried over (the API
  documents the same). An unknown id, or another key's, is the API's own
  ``400 previous_response_not_found`` (clients such as Codex react to it by
  resending the whole conversation).
* ``answer`` / ``frame``: the final response object (the JSON answer, or the
  ``response.completed`` / ``response.incomplete`` event) is stored with the
  turn's effective input *before* it is sent, so a follow-up that the client
  fires the moment it has the id already finds it. The store waits at most 2 s
  (:meth:`ResponseStore.save`): past that the answer goes out unstored.

Replayed output items lose their ``id`` (as Codex replays them), except a
reasoning item without ``encrypted_content``, which only its id can resolve.
"""

from __future__ import annotations

from typing import Any

from omniroute.errors import InvalidRequest
from omniroute.formats.json_text import json_object
from omniroute.formats.responses.response import frame_json
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.operation import Operation
from omniroute.pipeline.stages import Stage, StageRun
from omniroute.sse import SSESplitter
from omniroute.storage import DatabaseBackend
from omniroute.storage.responses import ResponseStore

_FINAL_EVENTS = ("response.completed", "response.incomplete")
_FINAL_MARKERS = tuple(e.encode() for e in _FINAL_EVENTS)  # cheap byte test per frame
_STORED_STATUSES = ("completed", "incomplete")


class ResponsesStage(Stage):
    """Runs :class:`ResponsesState` for every Responses generation request."""

    name = "responses-state"

    def __init__(self, db: DatabaseBackend) -> None:
        self.responses = ResponseStore(db)

    def enter(self, ctx: RequestContext, operation: Operation) -> StageRun | None:
        if operation.name != "chat" or ctx.fmt.name != "responses":
            return None
        return ResponsesState(self.responses, ctx.principal.key_id)


class ResponsesState(StageRun):
    """``store`` and ``previous_response_id`` for one ``POST /v1/responses`` request."""

    sees_frames = True

    def __init__(self, responses: ResponseStore, api_key_id: str | None) -> None:
        self.responses = responses
        self.api_key_id = api_key_id
        self.store = True
        self.previous_id: str | None = None
        #: the input this turn answers: the continued history, then the request's items
        self.input: list[Any] = []
        self.saved = False

    async def before(self, ctx: RequestContext) -> Reply | None:
        ctx.body = await self.prepare(ctx.body)
        return None

    async def prepare(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body with the stored history of ``previous_response_id`` in front of its input."""
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

    async def answer(self, ctx: RequestContext, body: bytes) -> None:
        if self.store:
            await self._save(json_object(body))

    async def frame(self, ctx: RequestContext, frame: bytes) -> None:
        if not self.store or self.saved or all(frame.find(m) < 0 for m in _FINAL_MARKERS):
            return
        splitter = SSESplitter()  # a chunk may hold several events (the last maybe unended)
        for event_bytes in [*splitter.feed(frame), splitter.tail()]:
            event = frame_json(event_bytes) if any(
                m in event_bytes for m in _FINAL_MARKERS) else None
            if event is not None and event.get("type") in _FINAL_EVENTS:
                await self._save(event.get("response"))
                return

    async def _save(self, response: Any) -> None:
        if not (isinstance(response, dict) and isinstance(response.get("id"), str)
                and response.get("status") in _STORED_STATUSES):
            return
        if self.previous_id is not None:
            response = {**response, "previous_response_id": self.previous_id}
        # bounded; a failure is logged by the store (once per outage): the answer still
        # reaches the client, only a follow-up naming its id fails
        self.saved = await self.responses.save(self.api_key_id, response, self.input)


def keeps_state(ctx: RequestContext) -> bool:
    """Whether the Responses API keeps this request's response on the server (``store`` is
    not false): an answer made without this stage (a cache hit) could not be continued."""
    return ctx.fmt.name == "responses" and ctx.body.get("store") is not False


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
