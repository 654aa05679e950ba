"""Idempotency as a pipeline stage: duplicates share the first request's one upstream call.

A request with ``Idempotency-Key`` (or ``X-Request-Id``) is scoped by its API key
(anonymous clients share one scope) and fingerprinted: its JSON body (keys sorted,
without ``stream`` / ``stream_options``), its client format, endpoint, path model and
provider prefix. Then, in ``before``:

* the first request with the key makes the call; ``call`` shares it, ``stream``
  moves its stream into the shared buffer (a pump task reads the upstream; the
  client reads the buffer), ``answer`` keeps its JSON answer;
* a duplicate with the same fingerprint waits for that answer (bounded by
  ``total_timeout``) and gets it: the same JSON, or the same frames as they arrive,
  with ``X-OmniRoute-Idempotent: true``. The same question asked as JSON and as a
  stream shares the call too: the answer is turned into the other form through the
  canonical model (``chat`` only);
* a different fingerprint gets 409 (``IdempotencyConflict``) in the client's format.

With keys shared between instances (``Idempotency.shared``, ``state_url``) the first
request here also claims the key there (its first ask goes with the request's other
shared work, ``prefetch``; a request that turns out to be a duplicate here gives that
claim back at once): when another instance holds it, this one waits
for that instance's finished answer (bounded by ``total_timeout``) and serves it, and
its own duplicates with it; when it holds it, its finished answer is published for the
window.

A first client that leaves does not end the call while a duplicate waits: ``call``
lets it finish and hands its answer to the duplicates (the pump then ends the
stream's account slot itself), and the client's stream reader, closed by the
pipeline, waits for the pump while others still read it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import suppress
from typing import TYPE_CHECKING

import orjson
from multidict import istr

from omniroute.errors import GatewayError, IdempotencyUnavailable, InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, Format
from omniroute.idempotency.answer import SharedAnswer, State
from omniroute.idempotency.keys import WAIT, Finished, Idempotency
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.relay import finish
from omniroute.pipeline.stages import Stage, StageRun
from omniroute.providers.canonical import collect, events_of
from omniroute.sse import SSESplitter

if TYPE_CHECKING:
    from omniroute.pipeline.operation import Operation
    from omniroute.routing import Route
    from omniroute.sharedstate import Pending, RequestBatch

log = logging.getLogger(__name__)

#: the headers a client names its request by (``istr``: looked up without case-folding)
_IDEMPOTENCY_KEY, _X_REQUEST_ID = istr("Idempotency-Key"), istr("X-Request-Id")

IDEMPOTENT_HEADER = "X-OmniRoute-Idempotent"
#: the request id of the request whose answer a duplicate got
ORIGINAL_HEADER = "X-OmniRoute-Idempotent-Of"
#: body fields that only choose JSON or a stream: not part of the fingerprint
_STREAM_FIELDS = ("stream", "stream_options")
_KEY_MAX = 255
#: seconds between checks, while the first client is gone, that a duplicate still waits
_STILL_WANTED_EVERY = 1.0


class IdempotencyStage(Stage):
    """Coalesces duplicates of a request by its idempotency key (see the module)."""

    name = "idempotency"

    def __init__(self, keys: Idempotency) -> None:
        self.keys = keys

    def enter(self, ctx: RequestContext, operation: Operation) -> StageRun | None:
        if not operation.metered:  # a token count only asks: nothing to share
            return None
        headers = ctx.headers
        key = headers.get(_IDEMPOTENCY_KEY) or headers.get(_X_REQUEST_ID)
        if key is None:
            return None
        return IdempotencyRun(self.keys, key, operation)


class IdempotencyRun(StageRun):
    """One request with an idempotency key: the first one, or a duplicate."""

    wraps = True

    def __init__(self, keys: Idempotency, key: str, operation: Operation) -> None:
        self.keys = keys
        self.key = key
        self.operation = operation
        self.shared: SharedAnswer | None = None  # set when this request is the first
        #: the fingerprint, and the shared claim queued on the request's batch
        self.marks: bytes | None = None
        self.pending: Pending[object] | None = None

    def prefetch(self, ctx: RequestContext, batch: RequestBatch, route: Route | None) -> None:
        keys = self.keys
        if keys.shared is None or not _valid(self.key):
            return
        scope = (ctx.principal.key_id or "", self.key)
        self.marks = fingerprint(ctx, self.operation.endpoint)
        if scope not in keys.answers:  # a duplicate here shares the answer here: no claim
            self.pending = keys.shared.prefetch_claim(batch, scope, self.marks,
                                                      ctx.record.request_id, ctx.stream)

    async def before(self, ctx: RequestContext) -> Reply | None:
        key = self.key
        if self.marks is None and not _valid(key):  # (marks: the prefetch found it valid)
            raise InvalidRequest(f"The idempotency key must be at most {_KEY_MAX} printable "
                                 "characters.", param="Idempotency-Key",
                                 code="invalid_idempotency_key")
        scope = (ctx.principal.key_id or "", key)
        marks = self.marks or fingerprint(ctx, self.operation.endpoint)
        shared, first = self.keys.claim(scope, marks, ctx.record.request_id, ctx.stream)
        pending, self.pending = self.pending, None
        if pending is not None and (shared is None or not first):
            pending.release()  # a claim this request will not make: given back at once
        if shared is None:
            return None
        shared_keys = self.keys.shared
        if first and shared_keys is not None:  # and across instances
            try:  # (its first ask answered with the batch: read without a coroutine)
                found = (shared_keys.claimed(scope, pending)
                         if pending is not None and pending.ran else WAIT)
                if found is WAIT:
                    found = await shared_keys.claim(scope, marks, ctx.record.request_id,
                                                    ctx.stream, ahead=pending)
            except GatewayError as err:
                shared.fail(err)  # the duplicates waiting here get the same answer
                raise
            except BaseException:
                shared.fail(GatewayError("The first request with this idempotency key "
                                         "was cancelled.", status=499, code="client_closed"))
                raise
            if isinstance(found, Finished):  # another instance made the call
                shared.replay(found.request_id, found.stream, found.status, found.headers,
                              found.body, found.chunks)
                return await self._duplicate(ctx, shared)
            if found is True:
                self.keys.claimed.add(scope)
        if first:
            self.shared = shared
            return None
        return await self._duplicate(ctx, shared)

    # ------------------------------------------------------------------ the first request

    def call(self, ctx: RequestContext, calling: Awaitable[Reply]) -> Awaitable[Reply]:
        return calling if self.shared is None else self._shared_call(ctx, calling)

    async def _shared_call(self, ctx: RequestContext, calling: Awaitable[Reply]) -> Reply:
        shared = self.shared
        assert shared is not None
        task = asyncio.ensure_future(calling)
        try:
            return await asyncio.shield(task)
        except GatewayError as err:
            shared.fail(err)
            raise
        except asyncio.CancelledError:
            if not shared.wanted():  # nobody else waits: stop every upstream attempt
                await _drop(task)
                raise
            log.info("request %s: the client left; the call goes on for its duplicates",
                     ctx.record.request_id)
            await self._finish_for_others(ctx, task)
            raise

    async def _finish_for_others(self, ctx: RequestContext, task: asyncio.Future[Reply]) -> None:
        """The first client left while duplicates wait: let the call finish (bounded by
        ``total_timeout``, and only while one still waits) and hand its answer over."""
        shared = self.shared
        assert shared is not None
        left = self.keys.settings().total_timeout
        while not task.done() and left > 0 and shared.wanted():
            await asyncio.wait({task}, timeout=_STILL_WANTED_EVERY)
            left -= _STILL_WANTED_EVERY
        if not task.done():
            await _drop(task)
            shared.fail(GatewayError("The first request with this idempotency key was left "
                                     "by its client and did not finish in time.", status=504,
                                     code="idempotency_wait_timeout", type="timeout_error"))
            return
        try:
            reply = task.result()
        except GatewayError as err:
            shared.fail(err)
            return
        except BaseException as exc:  # noqa: BLE001 - a bug of ours: the others still get an answer
            log.error("the call of request %s failed: %r", ctx.record.request_id, exc)
            shared.fail(GatewayError(f"Internal error: {type(exc).__name__}"))
            return
        if reply.frames is None:
            assert reply.body is not None
            shared.complete(reply.status, _answer_headers(ctx, reply), reply.body)
        else:  # the pump relays it to the duplicates and ends it (account slot, record)
            shared.start(reply, _answer_headers(ctx, reply), owns=True, finish=finish)

    def stream(self, ctx: RequestContext, reply: Reply) -> None:
        shared = self.shared
        if shared is None or reply.target is None or shared.state is not State.CALLING:
            return
        shared.start(reply, _answer_headers(ctx, reply), owns=False, finish=finish)
        reply.frames = shared.reader(self.keys.settings().idle_timeout, first=True)

    async def answer(self, ctx: RequestContext, body: bytes) -> None:
        if self.shared is not None:
            self.shared.complete(ctx.record.status, _answer_headers(ctx, None), body)

    def finished(self, ctx: RequestContext) -> None:
        shared = self.shared
        if shared is not None and shared.state is State.CALLING:  # it never answered
            shared.fail(ctx.error or GatewayError(
                "The first request with this idempotency key failed "
                f"({ctx.record.error or ctx.record.status}).", status=502, code="bad_gateway",
                type="upstream_error"))

    # ------------------------------------------------------------------ a duplicate

    async def _duplicate(self, ctx: RequestContext, shared: SharedAnswer) -> Reply:
        settings = self.keys.settings()
        both_stream = ctx.stream and shared.stream
        if shared.state is State.CALLING or (
                shared.state is State.STREAMING and not both_stream):
            await shared.settled(settings.total_timeout, started=both_stream)
        if shared.state is State.FAILED:
            raise shared.error_copy()
        headers = {**shared.headers, IDEMPOTENT_HEADER: "true",
                   ORIGINAL_HEADER: shared.request_id}
        fmt = ctx.fmt
        if both_stream:
            return Reply(frames=shared.reader(settings.idle_timeout),
                         content_type=fmt.stream_content_type, headers=headers)
        if not ctx.stream and not shared.stream:
            assert shared.body is not None
            return Reply(body=shared.body, status=shared.status, headers=headers)
        # the same question as JSON and as a stream: the other form, through the canonical model
        request = ctx.canonical = ctx.canonical or fmt.decode_request(
            ClientRequest(ctx.body, ctx.model, ctx.stream, ctx.headers, ctx.query))
        if ctx.stream:  # a stream of the JSON answer
            assert shared.body is not None
            if shared.status >= 400:
                return Reply(body=shared.body, status=shared.status, headers=headers)
            response = fmt.decode_response(shared.body)
            return Reply(frames=fmt.encode_stream(_events(events_of(response)), request),
                         content_type=fmt.stream_content_type, headers=headers)
        if not shared.whole:
            raise IdempotencyUnavailable(
                "The first answer with this idempotency key is too large to share; send the "
                "request again with a new key.")
        response = await collect(fmt.decode_stream(_frames(fmt, list(shared.chunks))))
        return Reply(body=fmt.encode_response(response, request), headers=headers)


def _valid(key: str) -> bool:
    return len(key) <= _KEY_MAX and key.isprintable()


def fingerprint(ctx: RequestContext, endpoint: str) -> bytes:
    """What makes two requests the same one: the body without its stream flag, the
    client format, the endpoint and what the path names (model, provider prefix)."""
    body = ctx.body
    if any(name in body for name in _STREAM_FIELDS):
        body = {k: v for k, v in body.items() if k not in _STREAM_FIELDS}
    try:
        text = orjson.dumps([ctx.fmt.name, endpoint, ctx.path_model, ctx.prefix, body],
                            option=orjson.OPT_SORT_KEYS)
    except TypeError:  # not JSON-native (cannot happen for a parsed body): by its repr
        text = repr([ctx.fmt.name, endpoint, ctx.path_model, ctx.prefix, body]).encode()
    return hashlib.sha256(text).digest()


def _answer_headers(ctx: RequestContext, reply: Reply | None) -> dict[str, str]:
    """The headers of the first answer that its duplicates get too."""
    record = ctx.record
    headers = dict(reply.headers) if reply is not None else {}
    if record.provider is not None:
        headers["X-OmniRoute-Provider"] = record.provider
        headers["X-OmniRoute-Model"] = record.model or ""
    return headers


async def _drop(task: asyncio.Future[Reply]) -> None:
    """Stop a call nobody wants any more; an answer it already had is ended."""
    if not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await task
    elif not task.cancelled() and task.exception() is None:
        await finish(task.result(), ConnectionResetError("client left"))


async def _events(events: list[c.Event]) -> AsyncIterator[c.Event]:
    for event in events:
        yield event


async def _frames(fmt: Format, chunks: list[bytes]) -> AsyncIterator[bytes]:
    """The frames of a stream's chunks (a chunk may hold several): SSE events, or lines."""
    if not fmt.stream_content_type.startswith("text/event-stream"):
        for chunk in chunks:
            for line in chunk.splitlines(keepends=True):
                yield line
        return
    splitter = SSESplitter()
    for chunk in chunks:
        for event in splitter.feed(chunk):
            yield event
    tail = splitter.tail()
    if tail.strip():
        yield tail
