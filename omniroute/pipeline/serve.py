"""The data path of every client request, top to bottom.

read the body -> the operation reads the model (and stream flag) -> stages
look at the request (and may answer it) -> resolve the model to targets ->
call the targets in the strategy's order, moving on from failures that are
not the client's -> send the JSON answer, or relay the stream chunk by chunk
-> record it in the request log.

:class:`Pipeline` owns what every request shares: the record, the
``X-OmniRoute-*`` headers, errors in the client's own format (the middleware
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
from contextlib import aclosing, suppress
from functools import partial
from typing import Protocol

import orjson
from aiohttp import web

from omniroute.appkeys import PRINCIPAL, STREAM_STARTED
from omniroute.bodies import read_object
from omniroute.config import Settings
from omniroute.credentials import Refresher
from omniroute.errors import GatewayError, InvalidRequest, ModelNotFound, ShuttingDown
from omniroute.pipeline.attempts import Failures, all_failed, plan_targets, tried, try_target
from omniroute.pipeline.bodylog import BodyLog
from omniroute.pipeline.context import Closable, Reply, RequestContext
from omniroute.pipeline.hedge import Tried, lane, race
from omniroute.pipeline.operation import Operation
from omniroute.pipeline.stages import Stage
from omniroute.pipeline.usage import since
from omniroute.pricing import PriceBook
from omniroute.resilience import Resilience, session_id
from omniroute.routing import Router, Target
from omniroute.storage import RequestLog, RequestRecord
from omniroute.watch import ConfigWatcher, after_check

log = logging.getLogger(__name__)

#: the body field a client may name its session with (removed before going upstream)
SESSION_FIELD = "x_session_id"
#: a stream that has no upstream answer after this many seconds starts with keep-alives
KEEPALIVE_AFTER = 2.0
KEEPALIVE_EVERY = 10.0
#: unread bytes queued for a client past which a write waits for it (aiohttp drains at 64 KiB)
_BACKLOG = 64 * 1024
#: the record's error class when the client went away (or stopped reading)
CLIENT_LEFT = "ClientDisconnected"
#: a stored user agent is cut to this many characters
_USER_AGENT_MAX = 256
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
        prices: PriceBook,
    ) -> None:
        self.catalog = catalog
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

    async def serve(
        self,
        request: web.Request,
        operation: Operation,
        *,
        path_model: str | None = None,
        path_stream: bool | None = None,
    ) -> web.StreamResponse:
        """Serve one client request with ``operation``."""
        settings = self.catalog.settings
        started = time.perf_counter()
        principal = request[PRINCIPAL]
        headers_in = request.headers
        record = RequestRecord(request_id=self.new_request_id(), ts=time.time(),
                               endpoint=operation.endpoint, api_key_id=principal.key_id,
                               client_format=operation.fmt.name,
                               user_agent=_user_agent(headers_in.get("User-Agent")))
        ctx = RequestContext(principal, operation.fmt, record, headers_in, request.query,
                             path_model=path_model, path_stream=path_stream,
                             prefix=request.match_info.get("provider"), started=started)
        body_log = BodyLog(settings.log_body_max_bytes) if settings.log_bodies else None
        streamed: list[bytes] | None = None  # a stream's first bytes, for body_log
        reply: Reply | None = None
        failure: BaseException | None = None
        self.in_flight += 1
        try:
            ctx.body = await read_object(request, settings.max_body_bytes)
            if body_log is not None:
                record.request_body = body_log.request(ctx.body)
            operation.inspect(ctx)
            record.model_requested, record.stream = ctx.model, ctx.stream
            _check_header_safe(ctx.model, "model")
            for stage in self.stages:
                run = stage.enter(ctx, operation)
                if run is not None:
                    ctx.runs.append(run)
            for run in ctx.runs:
                reply = await run.before(ctx)
                if reply is not None:
                    break
            response = None
            if reply is None:
                # an unknown model is the client's mistake, unless it was added a moment ago
                assert self.watcher is not None
                ctx.route = await after_check(
                    self.watcher, lambda: self.catalog.router.resolve(ctx.model, prefix=ctx.prefix),
                    ModelNotFound)
                record.combo = ctx.route.combo
                for run in ctx.runs:
                    await run.routed(ctx)
                if operation.sticky:
                    ctx.session = _session(ctx)
                calling = self._call_targets(operation, ctx)
                if ctx.stream and operation.fmt.keepalive_frame() is not None:
                    reply, response = await _with_keepalive(request, ctx, calling)
                    if reply is None:
                        assert response is not None
                        return response
                else:
                    reply = await calling
            record.ttfb_ms = since(started)
            if reply.frames is None:
                assert reply.body is not None
                if operation.generates:  # a whole answer: its content came with it
                    record.ttfc_ms = record.ttfb_ms
                record.status = reply.status
                self.prices.charge(record, reply.target)  # its usage is known: a header
                headers = _headers(ctx, reply)
                _usage_headers(record, headers)
                if reply.target is not None:
                    for run in ctx.runs:
                        await run.answer(ctx, reply.body)
                if body_log is not None:
                    record.response_body = body_log.text(reply.body)
                return web.Response(body=reply.body, status=reply.status,
                                    content_type=reply.content_type, headers=headers)
            headers = _headers(ctx, reply)
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
            failure = err
            err.headers.setdefault("X-OmniRoute-Request-Id", record.request_id)
            for name, value in (ctx.reply_headers or {}).items():  # X-OmniRoute-Cache...
                err.headers.setdefault(name, value)
            if record.provider is not None:  # an upstream answered (or was last tried)
                err.headers.setdefault("X-OmniRoute-Provider", record.provider)
                err.headers.setdefault("X-OmniRoute-Model", record.model or "")
                err.headers.setdefault("X-OmniRoute-Fallback-Attempts",
                                       str(max(0, record.attempts - 1)))
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
            self.in_flight -= 1
            if reply is not None:
                await finish(reply, failure)
                if reply.on_end is not None:
                    try:
                        await reply.on_end()
                    except Exception:  # the record goes out without it, never the request
                        log.exception("completing the record of %s failed", record.request_id)
            record.latency_ms = since(started)
            _complete(ctx, reply)
            if streamed is not None and body_log is not None:
                record.response_body = body_log.text(b"".join(streamed))
            if reply is not None and record.cost_usd is None:  # a stream's usage came last
                self.prices.charge(record, reply.target)
            assert self.request_log is not None
            if principal.log_usage:
                self.request_log.add(record)
            elif principal.key_id is not None:  # the key keeps no records; its use is noted
                self.request_log.touch(principal.key_id, record.ts)
            if self._idle is not None and self.in_flight == 0:
                self._idle.set()
            for run in ctx.runs:
                try:
                    await run.finished(ctx)
                except Exception:  # a stage's bug must not turn a served request into an error
                    log.exception("stage %s failed after request %s", type(run).__name__,
                                  record.request_id)

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
        plan = await plan_targets(resilience, route, settings.account_strategy,
                                  ctx.session, wait=operation.metered)
        failures: Failures = []
        one = partial(self._try_target, operation, ctx, failures)
        if operation.metered and settings.hedge and len(plan.targets) > 1:
            reply = await race(resilience, operation, ctx, plan.targets, failures, one)
        else:
            reply = await self._in_turn(operation, ctx, plan.targets, failures, one)
        if reply is None:
            return await operation.unserved(ctx, all_failed(route, failures, plan.skipped))
        if reply.frames is None:
            await finish(reply)  # a JSON answer is complete: release the slot now
        return reply  # a stream keeps its slot until it ends (see finish)

    def _try_target(
        self, operation: Operation, ctx: RequestContext, failures: Failures, target: Target
    ) -> Awaitable[Tried]:
        """One metered call of ``target``, with its account's accounting (:func:`try_target`)."""
        assert self.refresher is not None
        return try_target(self.resilience, target, ctx.record, ctx.session, failures,
                          partial(operation.call, ctx, target), self.refresher, ctx.tries)

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
            attempt.first_byte(lane(ctx))
            reply.target, reply.attempt = target, attempt
            return reply
        return None


async def finish(reply: Reply, error: BaseException | None = None) -> None:
    """The answer is over: release its account slot and record how it went.

    Success, an upstream failure (cooldown, breaker), or neither when the
    client left or the gateway itself failed; also closes an unread stream.
    """
    attempt, reply.attempt = reply.attempt, None
    error = error or reply.failure
    if attempt is not None:
        await attempt.__aexit__(type(error) if error else None, error, None)
    if reply.frames is not None and error is not None:
        for frames in (reply.frames, reply.source):
            if isinstance(frames, Closable):
                with suppress(Exception):
                    await frames.aclose()
        if reply.close is not None:
            reply.close()  # also when the stream was never read


def _check_header_safe(value: str, name: str) -> None:
    """Client input that goes back in a response header must hold no control characters."""
    if not value.isprintable():
        raise InvalidRequest(f"'{name}' holds a control character (a line break or the "
                             "like); send a plain model name.", param=name,
                             code="invalid_model")


def _session(ctx: RequestContext) -> str | None:
    """The sticky-session id: the client's own, else (with a choice of targets) a fingerprint."""
    assert ctx.route is not None
    body, headers = ctx.body, ctx.headers
    if len(ctx.route.targets) > 1:
        system, first_user = ctx.fmt.conversation_seed(body)
        return session_id(headers, body, model=ctx.model, system=system,
                          first_user=first_user)
    # one target: nothing to pin; echo an id the client chose, skip the fingerprint
    explicit = headers.get("X-Session-Id") or headers.get("X-OmniRoute-Session")
    if explicit is None and isinstance(body.get(SESSION_FIELD), (str, int)):
        explicit = str(body[SESSION_FIELD])
    return session_id({"x-session-id": explicit}) if explicit else None


def _headers(ctx: RequestContext, reply: Reply) -> dict[str, str]:
    record = ctx.record
    headers = {"X-OmniRoute-Request-Id": record.request_id}
    if reply.target is not None:
        headers["X-OmniRoute-Provider"] = reply.target.prefix
        headers["X-OmniRoute-Model"] = reply.target.model
        headers["X-OmniRoute-Fallback-Attempts"] = str(max(0, record.attempts - 1))
    for name, value in reply.headers.items():
        headers.setdefault(name, value)
    if ctx.reply_headers is not None:
        headers.update(ctx.reply_headers)
    if ctx.session is not None:
        headers["X-OmniRoute-Session-Id"] = ctx.session
    return headers


def _usage_headers(record: RequestRecord, headers: dict[str, str]) -> None:
    """A JSON answer's cost, token counts and latency so far, as ``X-OmniRoute-*`` headers."""
    if record.cost_usd is not None:
        headers["X-OmniRoute-Response-Cost"] = format_cost(record.cost_usd)
    if record.prompt_tokens is not None:
        headers["X-OmniRoute-Tokens-In"] = str(record.prompt_tokens)
    if record.completion_tokens is not None:
        headers["X-OmniRoute-Tokens-Out"] = str(record.completion_tokens)
    if record.ttfb_ms is not None:
        headers["X-OmniRoute-Latency-Ms"] = str(round(record.ttfb_ms))


def format_cost(cost: float) -> str:
    """A cost in USD in plain decimal notation, to 1e-10 USD, without trailing zeros."""
    text = f"{cost:.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _user_agent(value: str | None) -> str | None:
    return value if value is None or len(value) <= _USER_AGENT_MAX else value[:_USER_AGENT_MAX]


def _complete(ctx: RequestContext, reply: Reply | None) -> None:
    """The record's last fields, once the request is over: the attempt log (with the
    answering target's final status) and the output rate."""
    record = ctx.record
    tries = ctx.tries
    if tries:
        if reply is not None and reply.target is not None:
            label = reply.target.label
            for entry in reversed(tries):
                if entry["target"] == label and entry["failure"] is None:
                    entry["status"] = record.status
                    if record.status >= 400:
                        entry["failure"] = record.error_class
                    break
        record.attempt_log = orjson.dumps(tries).decode()
    tokens, total = record.completion_tokens, record.latency_ms
    if tokens and total:
        first = record.ttfc_ms if record.stream else None
        generating = total - first if first is not None and total > first else total
        record.tokens_per_s = round(tokens * 1000 / generating, 2) if generating > 0 else None


async def _with_keepalive(
    request: web.Request, ctx: RequestContext, calling: Awaitable[Reply]
) -> tuple[Reply | None, web.StreamResponse | None]:
    """Wait for an answer; past ``KEEPALIVE_AFTER`` start the stream and send keep-alives.

    A quick answer keeps its real status and headers. A slow one (a long queue,
    fallback across targets) gets the stream started with 200 and the format's
    keep-alive frame (Anthropic ``ping``) every ``KEEPALIVE_EVERY`` seconds, so
    the client does not time out; if every target then fails, the stream ends
    with the format's error frame. Returns ``(reply, started response or None)``,
    or ``(None, response)`` when the error was already written.
    """
    fmt, record = ctx.fmt, ctx.record
    task = asyncio.ensure_future(calling)
    handed_over = False
    try:
        done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_AFTER)
        if done:
            handed_over = True
            return task.result(), None
        response = web.StreamResponse(headers={
            "Content-Type": fmt.stream_content_type, "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", "X-OmniRoute-Request-Id": record.request_id})
        await response.prepare(request)
        request[STREAM_STARTED] = True
        ping = fmt.keepalive_frame()
        assert ping is not None
        while not done:
            await response.write(ping)
            done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_EVERY)
        handed_over = True
        try:
            return task.result(), response
        except GatewayError as err:
            record.status, record.error = err.status, err.message
            record.error_class = type(err).__name__
            return None, await _end_with_error(response, ctx, err)
        except Exception as exc:  # a bug of ours, after the headers went out
            log.exception("request %s failed", record.request_id)
            internal = GatewayError(f"Internal error: {type(exc).__name__}")
            record.status, record.error = 500, internal.message
            record.error_class = type(exc).__name__
            return None, await _end_with_error(response, ctx, internal)
    finally:
        if not task.done():  # the client left: stop every upstream attempt
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
        elif not handed_over and not task.cancelled() and task.exception() is None:
            await finish(task.result(), ConnectionResetError("client left"))


async def relay(
    request: web.Request,
    ctx: RequestContext,
    reply: Reply,
    headers: dict[str, str],
    response: web.StreamResponse | None,
    idle: float,
) -> web.StreamResponse:
    """Write each chunk of the stream to the client the moment it is ready.

    :param response: a stream already started (keep-alives were sent while waiting).
    :param idle: how long a write may wait for a client that stopped reading.
    """
    record, frames, source = ctx.record, reply.frames, reply.source
    assert frames is not None
    if response is None:
        response = web.StreamResponse(headers={
            "Content-Type": reply.content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **headers,
        })
    taps = [run for run in ctx.runs if run.sees_frames]
    # closing `frames` closes every layer down to the upstream connection
    async with aclosing(frames):  # type: ignore[type-var]
        if not response.prepared:
            await response.prepare(request)
            request[STREAM_STARTED] = True
        try:
            # a client that stops reading must not hold the account forever: once its
            # unread backlog with this chunk passes the high-water mark a write would wait
            # for it, and that wait is bounded by the idle timeout (no cost while the
            # client keeps up; a chunk may hold many frames, so its own size counts)
            transport = request.transport
            async for chunk in frames:
                for run in taps:
                    await run.frame(ctx, chunk)
                if transport is not None and (
                        transport.get_write_buffer_size() + len(chunk) > _BACKLOG):
                    async with asyncio.timeout(idle):
                        await response.write(chunk)
                else:
                    await response.write(chunk)
        except GatewayError as err:  # after the first byte: end the stream with an error
            record.status, record.error = err.status, err.message
            record.error_class = type(err).__name__
            log.warning("stream %s broke: %s", record.request_id, err.message)
            reply.failure = err  # the account pays for it at the end (cooldown, breaker)
            return await _end_with_error(response, ctx, err)
        except ConnectionResetError as exc:  # the client went away; aclosing stops the upstream
            record.status, record.error = 499, "client disconnected"
            record.error_class = CLIENT_LEFT
            reply.failure = exc  # not the account's fault: nothing is charged
            return response
        except TimeoutError as exc:  # the client stopped reading (upstream stalls are typed)
            record.status, record.error = 499, "client stopped reading"
            record.error_class = CLIENT_LEFT
            reply.failure = exc  # not the account's fault either
            return response
        except asyncio.CancelledError as exc:
            ended = ctx.ended_by
            task = asyncio.current_task()
            if ended is None or task is None:
                raise  # the client left (the handler is cancelled)
            task.uncancel()  # the gateway ended it (shutting down): finish the stream well
            record.status, record.error = ended.status, ended.message
            record.error_class = type(ended).__name__
            reply.failure = exc  # not the account's fault
            return await _end_with_error(response, ctx, ended)
        except Exception as exc:  # a bug must still end the stream well-formed, and be logged
            log.exception("stream %s failed", record.request_id)
            reply.failure = exc  # ours, not the account's
            internal = GatewayError(
                f"Internal error while relaying the stream: {type(exc).__name__}")
            record.status, record.error = 500, internal.message
            record.error_class = type(exc).__name__
            return await _end_with_error(response, ctx, internal)
        finally:
            if source is not None:
                with suppress(Exception):
                    await source.aclose()  # type: ignore[attr-defined]
    if record.error is None:
        record.status = 200
    await response.write_eof()
    return response


async def _end_with_error(
    response: web.StreamResponse, ctx: RequestContext, err: GatewayError
) -> web.StreamResponse:
    with suppress(ConnectionResetError):
        await response.write(ctx.fmt.error_frame(err))
        await response.write_eof()
    return response
