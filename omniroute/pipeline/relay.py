"""Streams to the client: keep-alives while the first target is awaited, the relay
chunk by chunk, a stream's end in the format's error event, and an answer's end.

A stream is written the moment each chunk is ready, and the frames one upstream read
brought leave in one write (the headers leave with the first chunk, in its write; the
end of a chunked answer with the last chunk, when the stream can tell it is the last). A
client that stops reading is bounded by the idle timeout once its unread backlog
passes :data:`BACKLOG`. Once the headers are out, every failure
ends the stream with the client format's own error frame; a binary answer
(``ctx.binary``: speech audio) has no room for one, and its connection is cut instead,
so that the client sees an incomplete transfer rather than a file that seems whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from contextlib import suppress

from aiohttp import web

from omniroute.appkeys import STREAM_STARTED
from omniroute.errors import GatewayError
from omniroute.pipeline.context import Closable, KnowsItsEnd, Reply, RequestContext

log = logging.getLogger(__name__)

#: a stream that has no upstream answer after this many seconds starts with keep-alives
KEEPALIVE_AFTER = 2.0
KEEPALIVE_EVERY = 10.0
#: unread bytes queued for a client past which a write waits for it (aiohttp drains at 64 KiB)
BACKLOG = 64 * 1024
#: the record's error class when the client went away (or stopped reading)
CLIENT_LEFT = "ClientDisconnected"


async def finish(reply: Reply, error: BaseException | None = None) -> None:
    """The answer is over: release its account slot and record how it went.

    Success, an upstream failure (cooldown, breaker), or neither when the
    client left or the gateway itself failed; also closes an unread stream.
    """
    attempt, reply.attempt = reply.attempt, None
    error = error or reply.failure
    if attempt is not None:
        attempt.end(error)
    if reply.frames is not None and error is not None:
        for frames in (reply.frames, reply.source):
            if isinstance(frames, Closable):
                with suppress(Exception):
                    await frames.aclose()
        if reply.close is not None:
            reply.close()  # also when the stream was never read


async def with_keepalive(
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
            "X-Accel-Buffering": "no", "X-OmniRoute-Request-Id": record.request_id,
            **(ctx.reply_headers or {})})
        await response.prepare(request)
        request[STREAM_STARTED] = True
        ping = fmt.keepalive_frame()
        assert ping is not None
        try:
            while not done:
                await response.write(ping)
                done, _ = await asyncio.wait({task}, timeout=KEEPALIVE_EVERY)
        except asyncio.CancelledError:
            ended, current = ctx.ended_by, asyncio.current_task()
            if ended is None or current is None:
                raise  # the client left
            current.uncancel()  # the gateway is shutting down: end the stream well
            record.status, record.error = ended.status, ended.message
            record.error_class = type(ended).__name__
            return None, await end_with_error(response, ctx, ended)
        handed_over = True
        try:
            return task.result(), response
        except GatewayError as err:
            record.status, record.error = err.status, err.message
            record.error_class = type(err).__name__
            return None, await end_with_error(response, ctx, err)
        except Exception as exc:  # a bug of ours, after the headers went out
            log.exception("request %s failed", record.request_id)
            internal = GatewayError(f"Internal error: {type(exc).__name__}")
            record.status, record.error = 500, internal.message
            record.error_class = type(exc).__name__
            return None, await end_with_error(response, ctx, internal)
    finally:
        if not task.done():  # the client left: stop every upstream attempt
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
        elif not handed_over and not task.cancelled() and task.exception() is None:
            await finish(task.result(), ConnectionResetError("client left"))


#: what every stream's answer says besides its content type: no cache, no proxy buffering
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _HeadersWithFirstChunk(web.StreamResponse):
    """A stream whose headers leave with its first chunk, in one write.

    aiohttp's ``StreamResponse`` writes its headers at ``prepare``, a write (and a
    wake-up of the client) of their own just before the first chunk that is already
    at hand; ``web.Response`` holds them for the body, and this does the same. (An
    aiohttp without that buffering sends them at ``prepare``, as before.)
    """

    _send_headers_immediately = False


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
    eof_sent = False  # the stream's end went out with its last chunk
    if response is None:  # the first chunk is at hand: the headers go out with it
        response = _HeadersWithFirstChunk(headers={
            "Content-Type": reply.content_type, **STREAM_HEADERS, **headers})
    # a target's frames only: a stage's own answer (an idempotent replay) was seen once
    taps = [run for run in ctx.runs if run.sees_frames] if reply.target is not None else []
    # closing `frames` closes every layer down to the upstream connection: the
    # ``finally`` below is ``contextlib.aclosing(frames)`` spelled out (the context
    # manager costs every stream three calls and two coroutines more)
    try:
        if not response.prepared:
            await response.prepare(request)
            request[STREAM_STARTED] = True
        try:
            # a client that stops reading must not hold the account forever: once its
            # unread backlog with this chunk passes the high-water mark a write would wait
            # for it, and that wait is bounded by the idle timeout (no cost while the
            # client keeps up; a chunk may hold many frames, so its own size counts)
            transport = request.transport
            # a stream that knows when its last chunk is out (the pass-through's) has it
            # leave with the stream's end, in one write: else the client is woken for
            # the chunk, and again for the end once the chunk's usage was read
            last = frames.ended if isinstance(frames, KnowsItsEnd) else None
            async for chunk in frames:
                for run in taps:
                    await run.frame(ctx, chunk)
                eof_sent = last is not None and last()
                write = response.write_eof if eof_sent else response.write
                if transport is not None and (
                        transport.get_write_buffer_size() + len(chunk) > BACKLOG):
                    async with asyncio.timeout(idle):
                        await write(chunk)
                else:
                    await write(chunk)
        except GatewayError as err:  # after the first byte: end the stream with an error
            record.status, record.error = err.status, err.message
            record.error_class = type(err).__name__
            log.warning("stream %s broke: %s", record.request_id, err.message)
            reply.failure = err  # the account pays for it at the end (cooldown, breaker)
            return await _broken(request, response, ctx, err)
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
            return await _broken(request, response, ctx, ended)
        except Exception as exc:  # a bug must still end the stream well-formed, and be logged
            log.exception("stream %s failed", record.request_id)
            reply.failure = exc  # ours, not the account's
            internal = GatewayError(
                f"Internal error while relaying the stream: {type(exc).__name__}")
            record.status, record.error = 500, internal.message
            record.error_class = type(exc).__name__
            return await _broken(request, response, ctx, internal)
        finally:
            if source is not None:
                # ``suppress(Exception)``, without a context manager per stream
                try:  # noqa: SIM105
                    await source.aclose()  # type: ignore[attr-defined]
                except Exception:  # noqa: BLE001 - closing what already ended
                    pass
    finally:
        await frames.aclose()  # type: ignore[attr-defined]
    if record.error is None:
        record.status = 200
    if not eof_sent:
        await response.write_eof()
    return response


async def _broken(request: web.Request, response: web.StreamResponse, ctx: RequestContext,
                  err: GatewayError) -> web.StreamResponse:
    """End a stream that failed after its first byte: the format's error frame, or for a
    binary answer a cut connection (what was sent stays sent; the end never comes)."""
    if not ctx.binary:
        return await end_with_error(response, ctx, err)
    ctx.error = err
    with suppress(ConnectionResetError):
        await response.write(b"")  # headers still held for a first chunk go out first
    if request.transport is not None:
        request.transport.close()
    return response


async def end_with_error(
    response: web.StreamResponse, ctx: RequestContext, err: GatewayError
) -> web.StreamResponse:
    ctx.error = err
    with suppress(ConnectionResetError):
        await response.write(ctx.fmt.error_frame(err))
        await response.write_eof()
    return response
