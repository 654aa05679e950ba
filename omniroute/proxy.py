"""The data path of a chat request, top to bottom.

decode the client's request -> resolve the model to targets -> call the
provider (moving to the next target on failures that are not the client's)
-> send the JSON answer or relay the stream event by event -> record it.

Authentication already happened in the middleware. When client and provider
speak the same format the body goes upstream unchanged except for the model
name, and the upstream bytes come back unchanged; usage is read on the side.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing, suppress

from aiohttp import web

from omniroute.errors import (
    GatewayError,
    InvalidRequest,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStatusError,
)
from omniroute.formats import openai as openai_format
from omniroute.gateway import Gateway
from omniroute.providers.base import UpstreamCall, UpstreamResponse
from omniroute.routing import Route, Target
from omniroute.storage import RequestRecord
from omniroute.web.body import read_object
from omniroute.web.keys import GATEWAY, PRINCIPAL, STREAM_STARTED

log = logging.getLogger(__name__)

#: upstream answers that say "this account or model cannot serve it now":
#: try the next target instead of passing the error to the client
_MOVE_ON_STATUSES = frozenset({401, 402, 403, 404, 408, 409, 425, 429})

_STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions`` and ``/v1/providers/{provider}/chat/completions``."""
    gateway = request.app[GATEWAY]
    started = time.perf_counter()
    record = RequestRecord(
        request_id=gateway.new_request_id(),
        ts=time.time(),
        endpoint="chat.completions",
        api_key_id=request[PRINCIPAL].key_id,
    )
    try:
        body = await read_object(request, gateway.settings.max_body_bytes)
        model, stream = openai_format.check_chat_request(body)
        record.model_requested, record.stream = model, stream
        route = gateway.router.resolve(model, prefix=request.match_info.get("provider"))
        upstream, target = await call_upstream(gateway, route, body, stream, record)
        headers = {
            "X-OmniRoute-Request-Id": record.request_id,
            "X-OmniRoute-Provider": target.prefix,
            "X-OmniRoute-Model": target.model,
            "X-OmniRoute-Fallback-Attempts": str(record.attempts - 1),
        }
        upstream_id = upstream.headers.get("x-request-id")
        if upstream_id:  # lets users quote the provider's own id in a support ticket
            headers["X-Upstream-Request-Id"] = upstream_id
        record.ttfb_ms = (time.perf_counter() - started) * 1000
        if not stream:
            assert upstream.body is not None
            _set_usage(record, openai_format.usage_from_response(upstream.body))
            record.status = upstream.status
            return web.Response(body=upstream.body, status=upstream.status,
                                content_type="application/json", headers=headers)
        return await relay_stream(request, upstream, record, headers,
                                  client_wants_usage=openai_format.wants_stream_usage(body))
    except GatewayError as err:
        record.status, record.error = err.status, err.message
        err.headers.setdefault("X-OmniRoute-Request-Id", record.request_id)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        record.status, record.error = 499, "client disconnected"
        raise
    finally:
        record.latency_ms = (time.perf_counter() - started) * 1000
        gateway.log.add(record)


async def call_upstream(
    gateway: Gateway, route: Route, body: dict, stream: bool, record: RequestRecord
) -> tuple[UpstreamResponse, Target]:
    """Try the route's targets in order until one answers."""
    if not route.targets:
        raise ServiceUnavailable(f"Model {route.requested!r} has no usable target.")
    failures: list[tuple[Target, GatewayError]] = []
    for target in route.targets:
        if target.provider.format != openai_format.NAME:
            raise InvalidRequest(
                f"{target.label} speaks the {target.provider.format!r} format; this endpoint "
                "cannot translate to it yet.", code="format_not_supported")
        record.attempts += 1
        record.provider, record.connection_id, record.model = (
            target.prefix, target.connection.id, target.model)
        call = UpstreamCall(body, target.model, stream, record.request_id)
        try:
            return await target.provider.chat(call), target
        except UpstreamStatusError as err:
            if err.status not in _MOVE_ON_STATUSES and err.status < 500:
                raise  # the client's own mistake: retrying elsewhere would hide it
            failures.append((target, err))
        except UpstreamError as err:
            failures.append((target, err))
        log.warning("%s failed for %s: %s", target.label, record.request_id, failures[-1][1])
    if len(failures) == 1:
        raise failures[0][1]
    detail = "; ".join(f"{t.label}: {e.status} {e.message}" for t, e in failures)
    retry_after = [e.headers["Retry-After"] for _, e in failures if "Retry-After" in e.headers]
    raise ServiceUnavailable(
        f"All {len(failures)} targets for {route.requested!r} failed: {detail}",
        code="all_targets_failed",
        headers={"Retry-After": min(retry_after, key=_seconds)} if retry_after else None,
    )


async def relay_stream(
    request: web.Request,
    upstream: UpstreamResponse,
    record: RequestRecord,
    headers: dict[str, str],
    *,
    client_wants_usage: bool,
) -> web.StreamResponse:
    """Write each upstream event to the client the moment it arrives."""
    assert upstream.events is not None
    response = web.StreamResponse(headers={**_STREAM_HEADERS, **headers})
    async with aclosing(upstream.events) as events:
        await response.prepare(request)
        request[STREAM_STARTED] = True
        try:
            async for event in events:
                found = openai_format.usage_from_event(event)
                if found is not None:
                    usage, usage_only = found
                    _set_usage(record, usage)
                    if usage_only and not client_wants_usage:
                        continue  # we asked for it on the client's behalf; keep it on the side
                upstream_error = openai_format.error_from_event(event)
                if upstream_error is not None:  # relayed as sent; recorded as a failure
                    record.status, record.error = 502, f"upstream stream error: {upstream_error}"
                await response.write(event)
        except GatewayError as err:  # after the first byte: end the stream with an error event
            record.status, record.error = err.status, err.message
            log.warning("stream %s broke: %s", record.request_id, err.message)
            with suppress(ConnectionResetError):
                await response.write(openai_format.error_event(err))
                await response.write_eof()
            return response
        except ConnectionResetError:  # the client went away; aclosing stops the upstream
            record.status, record.error = 499, "client disconnected"
            return response
        except Exception as exc:  # a bug must still end the stream well-formed, and be logged
            log.exception("stream %s failed", record.request_id)
            err = UpstreamError(f"Internal error while relaying the stream: {type(exc).__name__}")
            record.status, record.error = 500, err.message
            with suppress(ConnectionResetError):
                await response.write(openai_format.error_event(err))
                await response.write_eof()
            return response
    if record.error is None:
        record.status = 200
    await response.write_eof()
    return response


def _set_usage(record: RequestRecord, usage: dict[str, int | None]) -> None:
    for key, value in usage.items():
        if isinstance(value, int):
            setattr(record, key, value)


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("inf")
