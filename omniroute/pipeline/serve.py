"""The data path of every client request, top to bottom.

read the body -> the operation reads the model (and stream flag) -> with
shared state, what the stages need of it goes out in one round trip -> stages
look at the request (and may answer it) -> resolve the model to targets ->
call the targets in the strategy's order, moving on from failures that are
not the client's -> send the JSON answer, or relay the stream chunk by chunk
-> record it in the request log.

:class:`Pipeline` owns what every request shares: the record, the
``X-OmniRoute-*`` headers, errors in the client's own format (the route's guard
renders a raised ``GatewayError``; once a stream has started, the stream
itself ends with the format's error frame), keep-alives while a stream waits
for its first target, the bound on a client that stops reading, and the
request log. An :class:`~omniroute.pipeline.operation.Operation` only says what
calling one target means; a :class:`~omniroute.pipeline.stages.Stage` adds a
step around every operation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial
from typing import NoReturn, Protocol

from aiohttp import hdrs, web
from multidict import istr

from omniroute.appkeys import PRINCIPAL
from omniroute.config import Settings
from omniroute.credentials import Refresher
from omniroute.errors import GatewayError, InvalidRequest, ModelNotFound, ShuttingDown
from omniroute.pipeline.attempts import (
    Failures,
    all_failed,
    first_plan,
    tried,
    try_target,
    waited_plan,
)
from omniroute.pipeline.bodylog import BodyLog
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.hedge import Tried, race
from omniroute.pipeline.operation import Operation
from omniroute.pipeline.relay import CLIENT_LEFT, finish, relay, with_keepalive
from omniroute.pipeline.stages import Stage, StageRun
from omniroute.pipeline.usage import complete, usage_headers, user_agent
from omniroute.pricing import PriceBook
from omniroute.resilience import Resilience, session_id
from omniroute.routing import Router, Target
from omniroute.sharedstate import RequestBatch
from omniroute.storage import RequestLog, RequestRecord
from omniroute.watch import ConfigWatcher, after_check

log = logging.getLogger(__name__)

#: the body field a client may name its session with (removed before going upstream)
SESSION_FIELD = "x_session_id"
#: the headers that may name it (``istr``: looked up without case-folding the name)
_SESSION_ID, _OMNIROUTE_SESSION = istr("X-Session-Id"), istr("X-OmniRoute-Session")
#: the answer's ``X-OmniRoute-*`` headers (``istr`` names: aiohttp's ``CIMultiDict`` takes
#: an istr name as it is, and case-folds a plain str one on every answer)
REQUEST_ID_HEADER = istr("X-OmniRoute-Request-Id")
_PROVIDER, _MODEL = istr("X-OmniRoute-Provider"), istr("X-OmniRoute-Model")
_FALLBACK_ATTEMPTS = istr("X-OmniRoute-Fallback-Attempts")
_SESSION_ID_OUT = istr("X-OmniRoute-Session-Id")
#: seconds the streams ended at shutdown get to write their error event and finish
_END_STREAMS_WITHIN = 5.0


class LiveConfig(Protocol):
    """What the pipeline reads of the live configuration (the app's
    :class:`~omniroute.catalog.Catalog`; its attributes are replaced on every reload)."""

    settings: Settings
    router: Router


class Pipeline:
    """The data path's shared collaborators, built once at start-up."""

    def __init__(
        self, catalog: LiveConfig, resilience: Resilience, new_request_id: Callable[[], str],
        prices: PriceBook, batches: Callable[[], RequestBatch | None] | None = None,
    ) -> None:
        """
        :param batches: a new batch of shared-state work per request (the shared state's
            :meth:`~omniroute.sharedstate.SharedState.request_batch`; None: no shared
            state, nothing is prefetched).
        """
        self.catalog = catalog
        self.batches = batches
        self.resilience = resilience
        self.prices = prices
        self.new_request_id = new_request_id
        self.stages: list[Stage] = []
        self.request_log: RequestLog | None = None
        self.refresher: Refresher | None = None
        self.watcher: ConfigWatcher | None = None
        #: requests being served now, and the streams among them being relayed (their
        #: tasks): a shutdown waits for the first and ends the second (:meth:`drain`)
        self.in_flight = 0
        #: the shutdown grace is over: what is still running is being cut
        self.stopped = False
        self._streams: dict[asyncio.Task[object], RequestContext] = {}
        self._idle: asyncio.Event | None = None  # set when in_flight reaches 0 while draining

    def open(self, request_log: RequestLog, stages: list[Stage], refresher: Refresher,
             watcher: ConfigWatcher) -> None:
        """Connect what exists only once the gateway has started (its database)."""
        self.request_log = request_log
        self.stages = stages
        self.refresher = refresher
        self.watcher = watcher

    async def drain(self, grace: float) -> None:
        """Shutting down: wait up to ``grace`` seconds for the requests in flight, then
        end the streams still open with their format's error event (bounded too).

        The caller has stopped accepting connections; the request log is flushed after.
        """
        if self.in_flight:
            self._idle = asyncio.Event()
            log.info("waiting up to %.0fs for %d request(s) in flight", grace, self.in_flight)
            with suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._idle.wait()
        self.stopped = True
        if not self._streams:
            return
        log.warning("ending %d open stream(s): the server is shutting down", len(self._streams))
        shutting_down = ShuttingDown("The server is shutting down; retry the request.")
        tasks = list(self._streams)
        for task, ctx in self._streams.items():
            ctx.ended_by = shutting_down
            task.cancel()
        await asyncio.wait(tasks, timeout=_END_STREAMS_WITHIN)

    def handler(self, operation: Operation,
                path_stream: bool | None = None) -> Callable[[web.Request],
                                                             Awaitable[web.StreamResponse]]:
        """The route handler of ``operation``: :meth:`serve` with both bound (a partial:
        aiohttp awaits the pipeline itself, no coroutine in between).

        :param path_stream: the stream flag the route's path implies (Gemini's
            ``:streamGenerateContent``), when it implies one.
        """
        return partial(self.serve, operation, path_stream)

    async def serve(self, operation: Operation, path_stream: bool | None,
                    request: web.Request) -> web.StreamResponse:
        """Serve one client request with ``operation`` (the model a path names is its
        ``{model}``, the provider prefix its ``{provider}``)."""
        settings = self.catalog.settings
        started = time.perf_counter()
        principal = request[PRINCIPAL]
        headers_in = request.headers
        # positional arguments and plain assignments: a class called with keywords
        # packs them into a dict first, on every request
        record = RequestRecord(self.new_request_id(), time.time(), operation.endpoint)
        record.api_key_id = principal.key_id
        record.client_format = operation.fmt.name
        record.user_agent = user_agent(headers_in.get(hdrs.USER_AGENT))
        match = request.match_info
        ctx = RequestContext(principal, operation.fmt, record, headers_in, request.query,
                             match.get("model"), path_stream, match.get("provider"), started)
        body_log = BodyLog(settings.log_body_max_bytes) if settings.log_bodies else None
        streamed: list[bytes] | None = None  # a stream's first bytes, for body_log
        reply: Reply | None = None
        failure: BaseException | None = None
        self.in_flight += 1
        try:
            await operation.read(ctx, request, settings)
            if body_log is not None:
                record.request_body = body_log.request(ctx.body)
            operation.inspect(ctx)
            record.model_requested, record.stream = ctx.model, int(ctx.stream)
            if not ctx.model.isprintable():
                _header_unsafe("model")
            acting = False  # a run does more than finished (StageRun.acts)
            for stage in self.stages:
                run = stage.enter(ctx, operation)
                if run is not None:
                    ctx.runs.append(run)
                    if run.acts:
                        acting = True
            if self.batches is not None:
                sending = self._prefetch(ctx, operation, self.batches)
                if sending is not None:  # (nothing queued: nothing to wait for)
                    await sending
            for run in ctx.runs if acting else ():
                if type(run).before is not _NO_BEFORE:  # (a no-op is not awaited)
                    reply = await run.before(ctx)
                    if reply is not None:
                        break
            response = None
            if reply is None:
                # an unknown model is the client's mistake, unless it was added a moment ago
                try:
                    ctx.route = self.catalog.router.resolve(ctx.model, prefix=ctx.prefix)
                except ModelNotFound:
                    assert self.watcher is not None
                    ctx.route = await after_check(
                        self.watcher,
                        lambda: self.catalog.router.resolve(ctx.model, prefix=ctx.prefix),
                        ModelNotFound)
                record.combo = ctx.route.combo
                for run in ctx.runs if acting else ():
                    if type(run).routed is not _NO_ROUTED:
                        await run.routed(ctx)
                if operation.sticky:
                    ctx.session = _session(ctx)
                calling: Awaitable[Reply] = self._call_targets(operation, ctx)
                for run in ctx.runs if acting else ():
                    if run.wraps:  # idempotency: one call shared with its duplicates
                        calling = run.call(ctx, calling)
                if ctx.stream and operation.fmt.keepalive_frame() is not None:
                    waiting = asyncio.current_task()
                    assert waiting is not None
                    self._streams[waiting] = ctx  # a shutdown ends its keep-alives well too
                    try:
                        reply, response = await with_keepalive(request, ctx, calling)
                    finally:
                        del self._streams[waiting]
                    if reply is None:
                        assert response is not None
                        return response
                else:
                    reply = await calling
            record.ttfb_ms = (time.perf_counter() - started) * 1000
            if reply.frames is None:
                assert reply.body is not None
                if operation.generates:  # a whole answer: its content came with it
                    record.ttfc_ms = record.ttfb_ms
                record.status = reply.status
                self.prices.charge(record, reply.target)  # its usage is known: a header
                headers = _headers(ctx, reply)
                usage_headers(record, headers)
                if reply.target is not None and acting:
                    for run in ctx.runs:
                        if type(run).answer is not _NO_ANSWER:
                            await run.answer(ctx, reply.body)
                if body_log is not None:
                    record.response_body = body_log.text(reply.body)
                media = _MEDIA.get(reply.content_type)
                if media is None:
                    media = _media(reply.content_type)
                    if len(_MEDIA) < _MEDIA_KEPT:  # an upstream's own may vary: bounded
                        _MEDIA[reply.content_type] = media
                media_type, charset = media
                return web.Response(body=reply.body, status=reply.status,
                                    content_type=media_type, charset=charset, headers=headers)
            headers = _headers(ctx, reply)
            for run in ctx.runs if acting else ():
                if run.wraps:  # idempotency's fan-out, progress frames
                    run.stream(ctx, reply)
            if body_log is not None:
                streamed = []
                reply.frames = body_log.tee(reply.frames, streamed)
            task = asyncio.current_task()
            assert task is not None
            self._streams[task] = ctx
            try:
                return await relay(request, ctx, reply, headers, response, settings.idle_timeout)
            finally:
                del self._streams[task]
        except GatewayError as err:
            record.status, record.error = err.status, err.message
            record.error_class = type(err).__name__
            failure = ctx.error = err
            err.headers.setdefault(REQUEST_ID_HEADER, record.request_id)
            for name, value in (ctx.reply_headers or {}).items():  # X-OmniRoute-Cache...
                err.headers.setdefault(name, value)
            if record.provider is not None:  # an upstream answered (or was last tried)
                err.headers.setdefault(_PROVIDER, record.provider)
                err.headers.setdefault(_MODEL, record.model or "")
                err.headers.setdefault(_FALLBACK_ATTEMPTS, str(max(0, record.attempts - 1)))
            raise
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            if self.stopped and isinstance(exc, asyncio.CancelledError):  # past the grace
                record.status, record.error = 503, "cut by the server's shutdown"
                record.error_class = ShuttingDown.__name__
            else:
                record.status, record.error = 499, "client disconnected"
                record.error_class = CLIENT_LEFT
            failure = exc
            raise
        except Exception as exc:  # a bug of ours: recorded, not charged to the account
            record.status, record.error = 500, f"internal error: {type(exc).__name__}"
            record.error_class = type(exc).__name__
            failure = exc
            raise
        finally:
            try:  # the record is completed as far as it can be, and always goes out
                if reply is not None and _unfinished(reply, failure):
                    await finish(reply, failure)
                    if reply.on_end is not None:
                        await reply.on_end()
                record.latency_ms = (time.perf_counter() - started) * 1000
                complete(ctx, reply)
                if streamed is not None and body_log is not None:
                    record.response_body = body_log.text(b"".join(streamed))
                if reply is not None and record.cost_usd is None:  # a stream's usage came last
                    self.prices.charge(record, reply.target)
            except Exception:  # a bug of ours: the record goes out without the rest
                log.exception("completing the record of %s failed", record.request_id)
            finally:
                self._done(ctx)

    def _prefetch(self, ctx: RequestContext, operation: Operation,
                  batches: Callable[[], RequestBatch | None]) -> Awaitable[None] | None:
        """Shared state: what the stages will ask of it before dispatch, and the slot of
        the route's only target, in one round trip (a
        :class:`~omniroute.sharedstate.RequestBatch`): its send, to await (None: nothing
        to send)."""
        batch = ctx.batch = batches()
        if batch is None:
            return None
        try:  # resolved again after the stages, which may change the model
            route = self.catalog.router.resolve(ctx.model, prefix=ctx.prefix)
        except GatewayError:
            route = None
        for run in ctx.runs:
            run.prefetch(ctx, batch, route)
        if route is not None and operation.metered:
            limiter = self.resilience.limiter_ahead(route.targets)
            if limiter is not None:
                batch.take_slot(limiter.name, limiter.max_concurrency, limiter.rpm)
        return batch.send()

    def _done(self, ctx: RequestContext) -> None:
        """The request is over: its record goes to the log, and every stage hears of it
        (synchronously: a budget slot is given back even when this request's task is
        being cancelled meanwhile)."""
        record, principal = ctx.record, ctx.principal
        assert self.request_log is not None
        if principal.log_usage:
            self.request_log.add(record)
        elif principal.key_id is not None:  # the key keeps no records; its use is noted
            self.request_log.touch(principal.key_id, record.ts)
        self.in_flight -= 1
        if self._idle is not None and self.in_flight == 0:
            self._idle.set()
        for run in ctx.runs:
            try:  # a stage's bug must not turn a served request into an error
                run.finished(ctx)
            except Exception:
                log.exception("stage %s failed after request %s", type(run).__name__,
                              record.request_id)
        if ctx.batch is not None:  # what it took and nobody used is given back
            ctx.batch.release()

    async def _call_targets(self, operation: Operation, ctx: RequestContext) -> Reply:
        """Try the route's targets in the strategy's order until one answers.

        A target is skipped while it cools down, is terminal or sits behind an
        open breaker; when all of them rest, wait (bounded) for the soonest.
        Failures that are the client's own mistake go straight back; the
        others move on, and when every target failed the client gets a 503
        naming each one and why (or the operation's own answer, such as an
        estimate). A metered call slow to give its first byte races the next
        target (:mod:`omniroute.pipeline.hedge`).
        """
        route, resilience = ctx.route, self.resilience
        assert route is not None
        settings = self.catalog.settings
        plan = first_plan(resilience, route, settings.account_strategy, ctx.session)
        if not plan.targets and operation.metered:  # every one rests: wait (bounded)
            plan = await waited_plan(resilience, route, settings.account_strategy,
                                     ctx.session)
        failures: Failures = []
        assert self.refresher is not None
        # one metered call of a target, with its account's accounting (:func:`try_target`)
        one = partial(try_target, resilience, self.refresher, ctx, failures, operation.call)
        if operation.metered and operation.hedged and settings.hedge and len(plan.targets) > 1:
            reply = await race(resilience, operation, ctx, plan.targets, failures, one)
        else:
            reply = await self._in_turn(operation, ctx, plan.targets, failures, one)
        if reply is None:
            return await operation.unserved(ctx, all_failed(route, failures, plan.skipped))
        if reply.on_win is not None:  # the served answer's usage, the cache's tap
            reply.on_win()
        if reply.frames is None and reply.attempt is not None:
            # a JSON answer is complete: release the slot now (finish(reply), without a
            # coroutine: there is no stream to close)
            attempt, reply.attempt = reply.attempt, None
            attempt.end()
        return reply  # a stream keeps its slot until it ends (see finish)

    async def _in_turn(
        self, operation: Operation, ctx: RequestContext, targets: tuple[Target, ...],
        failures: Failures, one: Callable[[Target], Awaitable[Tried]],
    ) -> Reply | None:
        """Call ``targets`` one after the other until one answers (None: none did)."""
        record = ctx.record
        for target in targets:
            unusable = operation.unusable(target)
            if unusable is not None:  # it cannot do this at all: skipped, not charged
                failures.append((target, unusable))
                ctx.tries.append(tried(target, unusable))
                continue
            if not operation.metered:
                started = time.perf_counter()
                try:
                    reply = await operation.call(ctx, target)
                except GatewayError as err:
                    ctx.tries.append(tried(target, err, started))
                    raise
                entry = tried(target, None, started)
                ctx.tries.append(entry)
                if reply is None:  # it could not serve this one (an unmetered call says so)
                    entry["failure"] = "Unanswered"
                    continue
                record.provider, record.connection_id, record.model = (
                    target.prefix, target.connection.id, target.model)
                reply.target = target
                return reply
            outcome = await one(target)
            if outcome is None:
                log.warning("%s failed for %s: %s", target.label, record.request_id,
                            failures[-1][1])
                continue
            reply, attempt = outcome
            assert reply is not None
            attempt.first_byte("stream" if ctx.stream else "json")  # hedge.lane(ctx)
            reply.target, reply.attempt = target, attempt
            return reply
        return None


#: a stage run's hooks that it does not override are not awaited (they do nothing)
_NO_BEFORE, _NO_ROUTED, _NO_ANSWER = StageRun.before, StageRun.routed, StageRun.answer


def _unfinished(reply: Reply, failure: BaseException | None) -> bool:
    """Whether :func:`finish` has anything left to do for ``reply``: an attempt to end,
    or a stream to close after an error."""
    return reply.attempt is not None or (
        reply.frames is not None and (failure is not None or reply.failure is not None))


#: ``_media`` of the content types answers have had (a handful: operations name theirs,
#: but a transcription passes its upstream's on), at most ``_MEDIA_KEPT`` of them
_MEDIA: dict[str, tuple[str, str | None]] = {}
_MEDIA_KEPT = 64


def _media(content_type: str) -> tuple[str, str | None]:
    """``text/plain; charset=utf-8`` -> ``("text/plain", "utf-8")``: aiohttp takes the
    charset apart from the type."""
    media_type, _, params = content_type.partition(";")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return media_type.strip(), value.strip().strip('"')
    return media_type.strip(), None


def _header_unsafe(name: str) -> NoReturn:
    """Client input that goes back in a response header must hold no control characters
    (the caller checks ``isprintable()``)."""
    raise InvalidRequest(f"'{name}' holds a control character (a line break or the "
                         "like); send a plain model name.", param=name, code="invalid_model")


def _session(ctx: RequestContext) -> str | None:
    """The sticky-session id: the client's own, else (with a choice of targets) a fingerprint."""
    assert ctx.route is not None
    body, headers = ctx.body, ctx.headers
    if len(ctx.route.targets) > 1:
        system, first_user = ctx.fmt.conversation_seed(body)
        return session_id(headers, body, model=ctx.model, system=system,
                          first_user=first_user)
    # one target: nothing to pin; echo an id the client chose, skip the fingerprint
    explicit = headers.get(_SESSION_ID) or headers.get(_OMNIROUTE_SESSION)
    if explicit is None and isinstance(body.get(SESSION_FIELD), (str, int)):
        explicit = str(body[SESSION_FIELD])
    return session_id({"x-session-id": explicit}) if explicit else None


def _headers(ctx: RequestContext, reply: Reply) -> dict[str, str]:
    """The answer's ``X-OmniRoute-*`` headers, the operation's own (``reply.headers``) and
    the stages' (``ctx.reply_headers``)."""
    record, target = ctx.record, reply.target
    headers: dict[str, str]
    if target is not None:
        headers = {REQUEST_ID_HEADER: record.request_id, _PROVIDER: target.prefix,
                   _MODEL: target.model,
                   _FALLBACK_ATTEMPTS: str(max(0, record.attempts - 1))}
    else:
        headers = {REQUEST_ID_HEADER: record.request_id}
    for name, value in reply.headers.items():
        headers.setdefault(name, value)
    if ctx.reply_headers is not None:
        headers.update(ctx.reply_headers)
    if ctx.session is not None:
        headers[_SESSION_ID_OUT] = ctx.session
    return headers
