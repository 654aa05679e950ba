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

from aiohttp import web

from omniroute.appkeys import PRINCIPAL, STREAM_STARTED
from omniroute.bodies import read_object
from omniroute.config import Settings
from omniroute.credentials import Refresher
from omniroute.errors import GatewayError, InvalidRequest, ModelNotFound
from omniroute.pipeline.attempts import Failures, all_failed, plan_targets, try_target
from omniroute.pipeline.context import Closable, Reply, RequestContext
from omniroute.pipeline.hedge import Tried, lane, race
from omniroute.pipeline.operation import Operation
from omniroute.pipeline.stages import Stage
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

    def open(self, request_log: RequestLog, stages: list[Stage], refresher: Refresher,
             watcher: ConfigWatcher) -> None:
        """Connect what exists only once the gateway has started (its database)."""
        self.request_log = request_log
        self.stages = stages
        self.refresher = refresher
        self.watcher = watcher

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
        record = RequestRecord(request_id=self.new_request_id(), ts=time.time(),
                               endpoint=operation.endpoint, api_key_id=principal.key_id)
        ctx = RequestContext(principal, operation.fmt, record, request.headers, request.query,
                             path_model=path_model, path_stream=path_stream,
                             prefix=request.match_info.get("provider"), started=started)
        reply: Reply | None = None
        failure: BaseException | None = None
        try:
            ctx.body = await read_object(request, settings.max_body_bytes)
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
            if reply.frames is None:  # its usage is known: the cost goes in a header
                self.prices.charge(record, reply.target)
            headers = _headers(ctx, reply)
            record.ttfb_ms = (time.perf_counter() - started) * 1000
            if reply.frames is None:
                assert reply.body is not None
                if reply.target is not None:
                    for run in ctx.runs:
                        await run.answer(ctx, reply.body)
                record.status = reply.status
                return web.Response(body=reply.body, status=reply.status,
                                    content_type=reply.content_type, headers=headers)
            idle = settings.idle_timeout
            return await relay(request, ctx, reply, headers, response, idle)
        except GatewayError as err:
            record.status, record.error = err.status, err.message
            failure = err
            err.headers.setdefault("X-OmniRoute-Request-Id", record.request_id)
            if record.provider is not None:  # an upstream answered (or was last tried)
                err.headers.setdefault("X-OmniRoute-Provider", record.provider)
                err.headers.setdefault("X-OmniRoute-Model", record.model or "")
                err.headers.setdefault("X-OmniRoute-Fallback-Attempts",
                                       str(max(0, record.attempts - 1)))
            raise
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            record.status, record.error = 499, "client disconnected"
            failure = exc
            raise
        except Exception as exc:  # a bug of ours: recorded, not charged to the account
            record.status, record.error = 500, f"internal error: {type(exc).__name__}"
            failure = exc
            raise
        finally:
            if reply is not None:
                await finish(reply, failure)
            record.latency_ms = (time.perf_counter() - started) * 1000
            if reply is not None and record.cost_usd is None:  # a stream's usage came last
                self.prices.charge(record, reply.target)
            assert self.request_log is not None
            self.request_log.add(record)
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
                          partial(operation.call, ctx, target), self.refresher)

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
                continue
            if not operation.metered:
                reply = await operation.call(ctx, target)
                if reply is None:
                    continue
                reply.target = target
                return reply
            tried = await one(target)
            if tried is None:
                log.warning("%s failed for %s: %s", target.label, record.request_id,
                            failures[-1][1])
                continue
            reply, attempt = tried
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
            return None, await _end_with_error(response, ctx, err)
        except Exception as exc:  # a bug of ours, after the headers went out
            log.exception("request %s failed", record.request_id)
            internal = GatewayError(f"Internal error: {type(exc).__name__}")
            record.status, record.error = 500, internal.message
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
            log.warning("stream %s broke: %s", record.request_id, err.message)
            reply.failure = err  # the account pays for it at the end (cooldown, breaker)
            return await _end_with_error(response, ctx, err)
        except ConnectionResetError as exc:  # the client went away; aclosing stops the upstream
            record.status, record.error = 499, "client disconnected"
            reply.failure = exc  # not the account's fault: nothing is charged
            return response
        except TimeoutError as exc:  # the client stopped reading (upstream stalls are typed)
            record.status, record.error = 499, "client stopped reading"
            reply.failure = exc  # not the account's fault either
            return response
        except Exception as exc:  # a bug must still end the stream well-formed, and be logged
            log.exception("stream %s failed", record.request_id)
            reply.failure = exc  # ours, not the account's
            internal = GatewayError(
                f"Internal error while relaying the stream: {type(exc).__name__}")
            record.status, record.error = 500, internal.message
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
