"""The data path of every client request, top to bottom.

read the body -> the client's format checks it (model, stream) -> resolve the
model to targets -> call a target, moving to the next on failures that are not
the client's -> send the JSON answer, or relay the stream frame by frame ->
record it.

Each target is served on one of two lanes. When the client and the provider
speak the same format (the *pass-through* lane) the body goes upstream as sent
except for the model name, and the upstream frames come back unchanged; the
format reads usage and errors on the side. Otherwise (the *translated* lane)
the client's format decodes the request into the canonical model once, the
provider's format encodes it for each target, and the answer flows back
provider format -> canonical events -> client format.

Authentication already happened in the middleware; errors raised here are
rendered in the client's format by the middleware too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from aiohttp import web

from omniroute.errors import (
    CircuitOpen,
    ConnectionBusy,
    GatewayError,
    ModelNotFound,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStatusError,
)
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, Format
from omniroute.gateway import Gateway
from omniroute.providers.base import UpstreamCall, UpstreamResponse
from omniroute.resilience import Attempt, Plan, session_id
from omniroute.routing import Route, Target
from omniroute.storage import RequestRecord
from omniroute.watch import after_check
from omniroute.web.body import read_object
from omniroute.web.keys import GATEWAY, PRINCIPAL, STREAM_STARTED

log = logging.getLogger(__name__)
T = TypeVar("T")

#: the body field a client may name its session with (removed before going upstream)
SESSION_FIELD = "x_session_id"
#: a stream that has no upstream answer after this many seconds starts with keep-alives
KEEPALIVE_AFTER = 2.0
KEEPALIVE_EVERY = 10.0
#: unread bytes queued for a client past which a write waits for it (aiohttp drains at 64 KiB)
_BACKLOG = 64 * 1024
#: upstream response headers worth passing on to the client
_PASSED_HEADERS = (("x-request-id", "X-Upstream-Request-Id"),
                   ("request-id", "X-Upstream-Request-Id"))  # Anthropic's name for it


@dataclass(slots=True)
class Answer:
    """A target that answered, and how its answer reaches the client."""

    target: Target
    upstream: UpstreamResponse
    provider_format: Format
    #: the canonical request, on the translated lane (None on the pass-through lane)
    request: c.Request | None
    #: the resilience attempt, open until the answer is complete (see :func:`finish`)
    attempt: Attempt | None = None
    #: why the answer failed after its first byte (charged to the account at the end)
    failure: BaseException | None = None
    #: a translated JSON answer, decoded while its attempt was still open
    decoded: c.Response | None = None


async def finish(answer: Answer, error: BaseException | None = None) -> None:
    """The answer is over: release its account slot and record how it went.

    Success, an upstream failure (cooldown, breaker), or neither when the
    client left or the gateway itself failed; also closes an unread stream.
    """
    attempt, answer.attempt = answer.attempt, None
    error = error or answer.failure
    if attempt is not None:
        await attempt.__aexit__(type(error) if error else None, error, None)
    events = answer.upstream.events
    if events is not None and error is not None:
        with suppress(Exception):
            await events.aclose()  # type: ignore[attr-defined]
        if answer.upstream.close is not None:
            answer.upstream.close()  # also when the stream was never read


class Extension:
    """A per-request addition to the data path (e.g. Responses ``previous_response_id``).

    Every method is awaited on the request's path, so keep them quick and bounded.
    """

    async def before(self, body: dict[str, Any]) -> dict[str, Any]:
        """The client body as the gateway should serve it (e.g. with stored history)."""
        return body

    async def answer(self, body: bytes) -> None:
        """A JSON answer, just before it is sent."""

    async def frame(self, frame: bytes) -> None:
        """A stream frame, just before it is written to the client."""


async def handle(
    request: web.Request,
    fmt: Format,
    endpoint: str,
    *,
    path_model: str | None = None,
    path_stream: bool | None = None,
    extension: Extension | None = None,
) -> web.StreamResponse:
    """Serve one client request spoken in ``fmt``."""
    gateway = request.app[GATEWAY]
    started = time.perf_counter()
    record = RequestRecord(
        request_id=gateway.new_request_id(),
        ts=time.time(),
        endpoint=endpoint,
        api_key_id=request[PRINCIPAL].key_id,
    )
    answer: Answer | None = None
    failure: BaseException | None = None
    try:
        body = await read_object(request, gateway.settings.max_body_bytes)
        if extension is not None:
            body = await extension.before(body)
        model, stream = fmt.inspect(body, path_model=path_model, path_stream=path_stream)
        record.model_requested, record.stream = model, stream
        client = ClientRequest(body, model, stream, request.headers, request.query)
        prefix = request.match_info.get("provider")  # a miss may be a write made elsewhere:
        route = await after_check(gateway.watcher, lambda: gateway.router.resolve(
            model, prefix=prefix), ModelNotFound)
        session = _session(request, fmt, body, model, route)
        calling = call_upstream(gateway, route, fmt, client, record, session)
        response = None
        if stream and fmt.keepalive_frame() is not None:
            answer, response = await _with_keepalive(request, fmt, calling, record)
            if answer is None:
                assert response is not None
                return response
        else:
            answer = await calling
        headers = _answer_headers(answer, record)
        if session is not None:
            headers["X-OmniRoute-Session-Id"] = session
        record.ttfb_ms = (time.perf_counter() - started) * 1000
        if not stream:
            reply = _json_answer(fmt, answer, record, headers)
            if extension is not None:
                assert isinstance(reply.body, bytes)
                await extension.answer(reply.body)
            return reply
        return await relay_stream(request, fmt, client, answer, record, headers, response,
                                  extension)
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
        if answer is not None:
            await finish(answer, failure)
        record.latency_ms = (time.perf_counter() - started) * 1000
        gateway.log.add(record)


async def call_upstream(
    gateway: Gateway, route: Route, fmt: Format, client: ClientRequest, record: RequestRecord,
    session: str | None = None,
) -> Answer:
    """Try the route's targets in the strategy's order until one answers.

    A target is skipped while it cools down, is terminal or sits behind an open
    breaker; when all of them rest, wait (bounded) for the soonest. Failures
    that are the client's own mistake go straight back; the others move on,
    and when every target failed the client gets a 503 naming each one and why.
    """
    plan = await plan_targets(gateway, route, session)
    failures: list[tuple[Target, GatewayError]] = []
    canonical: c.Request | None = None  # decoded once, on the first translated target
    for target in plan.targets:
        provider_format = gateway.formats.get(target.provider.format)
        if provider_format is None:
            failures.append((target, UpstreamError(
                f"no format plugin {target.provider.format!r} is loaded")))
            continue
        if provider_format is fmt:
            body, request = fmt.with_model(client.body, target.model), None
            if SESSION_FIELD in body:  # ours, never the upstream's
                body = {k: v for k, v in body.items() if k != SESSION_FIELD}
        else:
            if canonical is None:
                canonical = fmt.decode_request(client)
            request = dataclasses.replace(canonical, model=target.model)
            body = provider_format.encode_request(request, target.connection.settings)
        call = UpstreamCall(body, target.model, client.stream, record.request_id,
                            client_headers=client.headers)
        tried = await try_target(gateway, target, record, session, failures,
                                 partial(target.provider.chat, call))
        if tried is None:
            log.warning("%s failed for %s: %s", target.label, record.request_id,
                        failures[-1][1])
            continue
        upstream, attempt = tried
        attempt.first_byte()
        answer = Answer(target, upstream, provider_format, request or canonical, attempt)
        if client.stream:
            return answer  # a stream keeps its slot until it ends (see finish)
        if request is not None:  # translated: a broken body is this target's failure
            try:
                assert upstream.body is not None
                answer.decoded = provider_format.decode_response(upstream.body)
            except UpstreamError as exc:
                await finish(answer, exc)
                failures.append((target, exc))
                log.warning("%s failed for %s: %s", target.label, record.request_id, exc)
                continue
        await finish(answer)  # a JSON answer is complete: release the slot now
        return answer
    raise all_failed(route, failures, plan.skipped)


async def plan_targets(gateway: Gateway, route: Route, session: str | None) -> Plan:
    """The targets to try, in order; when every one rests, wait (bounded) for the soonest."""
    resilience = gateway.resilience
    if not route.targets:
        raise ServiceUnavailable(f"Model {route.requested!r} has no usable target.")
    strategy = route.strategy or gateway.settings.account_strategy
    plan = resilience.plan(route.targets, strategy=strategy, session_id=session)
    if not plan.targets:
        await resilience.wait_for_available(route.targets)  # bounded; else 429 / 503
        plan = resilience.plan(route.targets, strategy=strategy, session_id=session)
    return plan


async def try_target(
    gateway: Gateway,
    target: Target,
    record: RequestRecord,
    session: str | None,
    failures: list[tuple[Target, GatewayError]],
    send: Callable[[], Awaitable[T]],
    *,
    skip: tuple[type[GatewayError], ...] = (),
) -> tuple[T, Attempt] | None:
    """One target: take a slot of its account, ``send()``, judge a failure.

    Returns the result with the attempt still open (the caller ends it with
    :func:`finish` or ``__aexit__``), or None after adding why to ``failures``
    (busy, resting, an upstream failure worth moving on from, or a ``skip``
    error: the target cannot do this at all, and is not charged). The client's
    own mistakes are raised. A 401/403 gets one retry after a credential refresh
    where the provider supports it.
    """
    refreshed = False
    while True:  # at most twice: once more after a credential refresh
        record.attempts += 1
        record.provider, record.connection_id, record.model = (
            target.prefix, target.connection.id, target.model)
        attempt = gateway.resilience.attempt(target, session_id=session, refreshed=refreshed)
        try:
            await attempt.__aenter__()  # a slot of the account's limits; the breaker
        except (ConnectionBusy, CircuitOpen) as err:  # not tried: full, or resting
            record.attempts -= 1
            failures.append((target, err))
            return None
        try:
            return await send(), attempt
        except BaseException as exc:
            await attempt.__aexit__(type(exc), exc, exc.__traceback__)  # charges the account
            if isinstance(exc, skip):
                record.attempts -= 1
                failures.append((target, exc))
                return None
            if not isinstance(exc, (UpstreamError, UpstreamStatusError)):
                raise
            decision = attempt.decision
            if decision is not None and decision.refresh and not refreshed:
                refreshed = await target.provider.refresh_credentials()
                if refreshed:
                    continue
            if decision is not None and not decision.move_on:
                raise  # the client's own mistake: retrying elsewhere would hide it
            failures.append((target, exc))
            return None


def all_failed(
    route: Route, failures: list[tuple[Target, GatewayError]],
    skipped: tuple[tuple[Target, str], ...],
) -> GatewayError:
    """The error for a request no target could serve."""
    if len(failures) == 1 and not skipped and not isinstance(failures[0][1], ConnectionBusy):
        return failures[0][1]  # one target: its own error says it best
    if failures and all(isinstance(e, ConnectionBusy) for _, e in failures) and not skipped:
        waits = [e.retry_after for _, e in failures if e.retry_after is not None]
        return RateLimited(
            f"Every account for {route.requested!r} is at its limit; retry shortly.",
            retry_after=min(waits) if waits else 1.0, code="all_accounts_busy")
    detail = "; ".join([*(f"{t.label}: {e.status} {e.message}" for t, e in failures),
                        *(f"{t.label}: skipped ({why})" for t, why in skipped)])
    count = len(failures) + len(skipped)
    retry_after = [e.headers["Retry-After"] for _, e in failures if "Retry-After" in e.headers]
    return ServiceUnavailable(
        f"All {count} targets for {route.requested!r} failed: {detail}",
        code="all_targets_failed",
        headers={"Retry-After": min(retry_after, key=_seconds)} if retry_after else None,
    )


def _session(
    request: web.Request, fmt: Format, body: dict[str, Any], model: str, route: Route
) -> str | None:
    """The sticky-session id: the client's own, else (with a choice of targets) a fingerprint."""
    if len(route.targets) > 1:
        system, first_user = fmt.conversation_seed(body)
        return session_id(request.headers, body, model=model, system=system,
                          first_user=first_user)
    # one target: nothing to pin; echo an id the client chose, skip the fingerprint
    headers = request.headers
    explicit = headers.get("X-Session-Id") or headers.get("X-OmniRoute-Session")
    if explicit is None and isinstance(body.get(SESSION_FIELD), (str, int)):
        explicit = str(body[SESSION_FIELD])
    return session_id({"x-session-id": explicit}) if explicit else None


def _json_answer(
    fmt: Format, answer: Answer, record: RequestRecord, headers: dict[str, str]
) -> web.Response:
    upstream = answer.upstream
    assert upstream.body is not None
    if answer.request is None:
        body, usage = upstream.body, fmt.usage_from_body(upstream.body)
    else:
        response = answer.decoded or answer.provider_format.decode_response(upstream.body)
        body, usage = fmt.encode_response(response, answer.request), response.usage
    _set_usage(record, usage)
    record.status = upstream.status
    return web.Response(body=body, status=upstream.status, content_type="application/json",
                        headers=headers)


async def _with_keepalive(
    request: web.Request, fmt: Format, calling: Awaitable[Answer], record: RequestRecord
) -> tuple[Answer | None, web.StreamResponse | None]:
    """Wait for an answer; past ``KEEPALIVE_AFTER`` start the stream and send keep-alives.

    A quick answer keeps its real status and headers. A slow one (a long queue,
    fallback across targets) gets the stream started with 200 and the format's
    keep-alive frame (Anthropic ``ping``) every ``KEEPALIVE_EVERY`` seconds, so
    the client does not time out; if every target then fails, the stream ends
    with the format's error frame. Returns ``(answer, started response or None)``,
    or ``(None, response)`` when the error was already written.
    """
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
            return None, await _end_with_error(response, fmt, err)
        except Exception as exc:  # a bug of ours, after the headers went out
            log.exception("request %s failed", record.request_id)
            err = GatewayError(f"Internal error: {type(exc).__name__}")
            record.status, record.error = 500, err.message
            return None, await _end_with_error(response, fmt, err)
    finally:
        if not task.done():  # the client left: stop every upstream attempt
            task.cancel()
            with suppress(asyncio.CancelledError, Exception):
                await task
        elif not handed_over and not task.cancelled() and task.exception() is None:
            await finish(task.result(), ConnectionResetError("client left"))


async def relay_stream(
    request: web.Request,
    fmt: Format,
    client: ClientRequest,
    answer: Answer,
    record: RequestRecord,
    headers: dict[str, str],
    response: web.StreamResponse | None = None,
    extension: Extension | None = None,
) -> web.StreamResponse:
    """Write each frame to the client the moment it is ready.

    :param response: a stream already started (keep-alives were sent while waiting).
    """
    events = answer.upstream.events
    assert events is not None
    if answer.request is None:
        frames = _passthrough(fmt, answer, record, fmt.hidden_frames(client))
    else:
        decoded = answer.provider_format.decode_stream(events)
        frames = fmt.encode_stream(_tap_usage(decoded, record), answer.request)
    if response is None:
        response = web.StreamResponse(headers={
            "Content-Type": fmt.stream_content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **headers,
        })
    # closing `frames` closes every layer down to the upstream connection
    async with aclosing(frames), aclosing(events):
        if not response.prepared:
            await response.prepare(request)
            request[STREAM_STARTED] = True
        try:
            # a client that stops reading must not hold the account forever: once its
            # unread backlog is over the high-water mark a write would wait for it, and
            # that wait is bounded by the idle timeout (no cost while the client keeps up)
            idle = request.app[GATEWAY].settings.idle_timeout
            transport = request.transport
            async for frame in frames:
                if extension is not None:
                    await extension.frame(frame)
                if transport is not None and transport.get_write_buffer_size() > _BACKLOG:
                    async with asyncio.timeout(idle):
                        await response.write(frame)
                else:
                    await response.write(frame)
        except GatewayError as err:  # after the first byte: end the stream with an error
            record.status, record.error = err.status, err.message
            log.warning("stream %s broke: %s", record.request_id, err.message)
            answer.failure = err  # the account pays for it at the end (cooldown, breaker)
            return await _end_with_error(response, fmt, err)
        except ConnectionResetError as exc:  # the client went away; aclosing stops the upstream
            record.status, record.error = 499, "client disconnected"
            answer.failure = exc  # not the account's fault: nothing is charged
            return response
        except TimeoutError as exc:  # the client stopped reading (upstream stalls are typed)
            record.status, record.error = 499, "client stopped reading"
            answer.failure = exc  # not the account's fault either
            return response
        except Exception as exc:  # a bug must still end the stream well-formed, and be logged
            log.exception("stream %s failed", record.request_id)
            answer.failure = exc  # ours, not the account's
            err = GatewayError(f"Internal error while relaying the stream: {type(exc).__name__}")
            record.status, record.error = 500, err.message
            return await _end_with_error(response, fmt, err)
    if record.error is None:
        record.status = 200
    await response.write_eof()
    return response


async def _passthrough(
    fmt: Format, answer: Answer, record: RequestRecord,
    hidden: Callable[[bytes], bool] | None,
) -> AsyncIterator[bytes]:
    """The upstream's own frames, unchanged; usage and errors are read on the side."""
    assert answer.upstream.events is not None
    async for frame in answer.upstream.events:
        usage = fmt.usage_from_frame(frame)
        if usage is not None:
            _set_usage(record, usage)
            if hidden is not None and hidden(frame):
                continue  # asked for on the client's behalf; kept on the side
        upstream_error = fmt.error_from_frame(frame)
        if upstream_error is not None:  # relayed as sent; recorded and charged as a failure
            record.status, record.error = 502, f"upstream stream error: {upstream_error}"
            answer.failure = UpstreamError(record.error)
        yield frame


async def _tap_usage(
    events: AsyncIterator[c.Event], record: RequestRecord
) -> AsyncIterator[c.Event]:
    async with aclosing(events):
        async for event in events:
            if isinstance(event, (c.Start, c.Finish)):
                _set_usage(record, event.usage)
            yield event


async def _end_with_error(
    response: web.StreamResponse, fmt: Format, err: GatewayError
) -> web.StreamResponse:
    with suppress(ConnectionResetError):
        await response.write(fmt.error_frame(err))
        await response.write_eof()
    return response


def _answer_headers(answer: Answer, record: RequestRecord) -> dict[str, str]:
    headers = {
        "X-OmniRoute-Request-Id": record.request_id,
        "X-OmniRoute-Provider": answer.target.prefix,
        "X-OmniRoute-Model": answer.target.model,
        "X-OmniRoute-Fallback-Attempts": str(record.attempts - 1),
    }
    for upstream_name, name in _PASSED_HEADERS:
        value = answer.upstream.headers.get(upstream_name)
        if value and name not in headers:
            headers[name] = value
    return headers


def _set_usage(record: RequestRecord, usage: c.Usage) -> None:
    if usage.input_tokens is not None:
        record.prompt_tokens = _count(usage.input_tokens)
    if usage.output_tokens is not None:
        record.completion_tokens = _count(usage.output_tokens)
    if usage.cache_read_tokens is not None:
        record.cached_tokens = _count(usage.cache_read_tokens)
    if usage.reasoning_tokens is not None:
        record.reasoning_tokens = _count(usage.reasoning_tokens)


def _count(value: int) -> int | None:
    """An upstream's token count, or None when it is not a plausible one (SQLite stores
    64-bit integers: one absurd number must not stop the request log)."""
    return value if 0 <= value < 2**53 else None


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("inf")
