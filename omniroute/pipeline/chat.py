"""Chat: every client API's generation endpoint, on one of two lanes per target.

When the client and the provider speak the same format (the *pass-through*
lane) the body goes upstream as sent except for the model name, and the
upstream frames come back unchanged; the format reads usage and errors on the
side. Otherwise (the *translated* lane) the client's format decodes the
request into the canonical model once, the provider's format encodes it for
each target, and the answer flows back provider format -> canonical events ->
client format. A provider that speaks the canonical model itself
(:class:`~omniroute.providers.canonical.CanonicalProvider`, the *canonical*
lane) gets the decoded request as it is, and the client's format encodes its
answer.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from itertools import accumulate

from omniroute.errors import GatewayError, UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, Format
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.operation import Operation
from omniroute.pipeline.serve import SESSION_FIELD
from omniroute.providers.base import UpstreamCall, UpstreamResponse
from omniroute.providers.canonical import CanonicalProvider, call_complete, call_stream
from omniroute.routing import Target
from omniroute.storage import RequestRecord

#: upstream response headers worth passing on to the client
_PASSED_HEADERS = (("x-request-id", "X-Upstream-Request-Id"),
                   ("request-id", "X-Upstream-Request-Id"))  # Anthropic's name for it


class Chat(Operation):
    """A generation request in the client's format, served by any provider format."""

    name = "chat"
    capability = "chat"
    sticky = True

    def __init__(self, fmt: Format, endpoint: str, formats: Mapping[str, Format]) -> None:
        super().__init__(fmt, endpoint)
        #: every loaded format by name: the provider side of each target
        self.formats = formats

    def inspect(self, ctx: RequestContext) -> None:
        ctx.model, ctx.stream = self.fmt.inspect(ctx.body, path_model=ctx.path_model,
                                                 path_stream=ctx.path_stream)

    def unusable(self, target: Target) -> GatewayError | None:
        provider = target.provider
        if provider.format not in self.formats and not isinstance(provider, CanonicalProvider):
            return UpstreamError(f"no format plugin {provider.format!r} is loaded")
        return super().unusable(target)

    async def call(self, ctx: RequestContext, target: Target) -> Reply:
        fmt, record = self.fmt, ctx.record
        if isinstance(target.provider, CanonicalProvider):
            return await self._call_canonical(ctx, target, target.provider)
        provider_format = self.formats[target.provider.format]
        request: c.Request | None = None  # the canonical request, on the translated lane
        if provider_format is fmt:
            body = fmt.with_model(ctx.body, target.model)
            if SESSION_FIELD in body:  # ours, never the upstream's
                body = {k: v for k, v in body.items() if k != SESSION_FIELD}
        else:
            request = self._canonical_request(ctx, target)
            body = provider_format.encode_request(request, target.connection.settings)
        upstream = await target.provider.chat(UpstreamCall(
            body, target.model, ctx.stream, record.request_id, client_headers=ctx.headers))
        headers = _passed_headers(upstream)
        if not ctx.stream:
            assert upstream.body is not None
            if request is None:
                answer, usage = upstream.body, fmt.usage_from_body(upstream.body)
            else:  # a body that cannot be decoded is this target's failure (raised here)
                response = provider_format.decode_response(upstream.body)
                answer, usage = fmt.encode_response(response, request), response.usage
            set_usage(record, usage)
            return Reply(body=answer, status=upstream.status, headers=headers)
        if request is None:  # pass-through: what one socket read brought leaves in one write
            reads = upstream.reads if upstream.reads is not None else _one_by_one(upstream)
            reply = Reply(source=reads, close=upstream.close, headers=headers,
                          content_type=fmt.stream_content_type)
            reply.frames = _passthrough(fmt, reply, record, reads, fmt.hidden_frames(
                ClientRequest(ctx.body, ctx.model, ctx.stream, ctx.headers, ctx.query)))
        else:
            events = upstream.events
            assert events is not None
            reply = Reply(source=events, close=upstream.close, headers=headers,
                          content_type=fmt.stream_content_type)
            decoded = provider_format.decode_stream(events)
            reply.frames = fmt.encode_stream(_tap_usage(decoded, record), request)
        return reply

    def _canonical_request(self, ctx: RequestContext, target: Target) -> c.Request:
        """The request in the canonical model, for ``target``'s upstream model name."""
        if ctx.canonical is None:  # decoded once, on the first target that needs it
            ctx.canonical = self.fmt.decode_request(ClientRequest(
                ctx.body, ctx.model, ctx.stream, ctx.headers, ctx.query))
        return dataclasses.replace(ctx.canonical, model=target.model)

    async def _call_canonical(
        self, ctx: RequestContext, target: Target, provider: CanonicalProvider
    ) -> Reply:
        """The canonical lane: the provider takes and gives canonical objects."""
        request = self._canonical_request(ctx, target)
        timeouts = provider.context.timeouts
        if not ctx.stream:
            response = await call_complete(provider, request, timeouts)
            set_usage(ctx.record, response.usage)
            return Reply(body=self.fmt.encode_response(response, request))
        events = await call_stream(provider, request, timeouts)  # its first event is there
        frames = self.fmt.encode_stream(_tap_usage(events, ctx.record), request)
        return Reply(frames=frames, source=events, content_type=self.fmt.stream_content_type)


async def _passthrough(
    fmt: Format, reply: Reply, record: RequestRecord, reads: AsyncIterator[list[bytes]],
    hidden: Callable[[bytes], bool] | None,
) -> AsyncIterator[bytes]:
    """The upstream's own frames, unchanged, those of one socket read as one chunk (so
    they leave in one write); usage and errors are read on the side, in the frames that
    hold one of the format's :attr:`~Format.side_markers`."""
    markers = fmt.side_markers
    async for frames in reads:
        chunk = frames[0] if len(frames) == 1 else b"".join(frames)
        kept = frames
        for frame in _marked(frames, chunk, markers):
            usage = fmt.usage_from_frame(frame)
            if usage is not None:
                set_usage(record, usage)
                if hidden is not None and hidden(frame):  # asked for on the client's behalf
                    kept = [f for f in kept if f is not frame]
                    chunk = b"".join(kept)
                    continue
            upstream_error = fmt.error_from_frame(frame)
            if upstream_error is not None:  # relayed as sent; recorded and charged as a failure
                record.status, record.error = 502, f"upstream stream error: {upstream_error}"
                reply.failure = UpstreamError(record.error)
        if chunk:
            yield chunk


def _marked(frames: list[bytes], chunk: bytes, markers: tuple[bytes, ...]) -> list[bytes]:
    """The frames of ``chunk`` (their concatenation) that hold one of ``markers``; all of
    them when there are no markers. One search per marker over the chunk, not per frame."""
    if not markers:
        return frames
    found: list[int] = []
    for marker in markers:
        at = chunk.find(marker)
        while at >= 0:
            found.append(at)
            at = chunk.find(marker, at + 1)
    if not found:
        return []
    if len(frames) == 1:
        return frames
    ends = list(accumulate(map(len, frames)))
    return [frames[i] for i in sorted({bisect_right(ends, at) for at in found})]


async def _one_by_one(upstream: UpstreamResponse) -> AsyncIterator[list[bytes]]:
    """A provider that offers only ``events``: each frame on its own."""
    events = upstream.events
    assert events is not None
    async with aclosing(events):  # type: ignore[type-var]
        async for frame in events:
            yield [frame]


async def _tap_usage(
    events: AsyncIterator[c.Event], record: RequestRecord
) -> AsyncIterator[c.Event]:
    async with aclosing(events):  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, (c.Start, c.Finish)):
                set_usage(record, event.usage)
            yield event


def _passed_headers(upstream: UpstreamResponse) -> dict[str, str]:
    headers: dict[str, str] = {}
    for upstream_name, name in _PASSED_HEADERS:
        value = upstream.headers.get(upstream_name)
        if value and name not in headers:
            headers[name] = value
    return headers


def set_usage(record: RequestRecord, usage: c.Usage) -> None:
    """Copy an answer's token counts into the request record."""
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


