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

import time
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import aclosing
from functools import partial
from itertools import accumulate

from multidict import istr

from omniroute.errors import GatewayError, UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest, Format
from omniroute.pipeline.context import AnswerTap, KnowsItsEnd, Reply, RequestContext
from omniroute.pipeline.operation import Operation
from omniroute.pipeline.serve import SESSION_FIELD
from omniroute.pipeline.translated import Translated
from omniroute.pipeline.usage import (
    KEEP_BYTES,
    StreamOutput,
    estimate_missing,
    frames_of,
    request_of,
    response_texts,
    set_usage,
    usage_complete,
)
from omniroute.providers.base import UpstreamCall, UpstreamResponse
from omniroute.providers.canonical import CanonicalProvider, call_complete, call_stream
from omniroute.routing import Target
from omniroute.sse import CR
from omniroute.storage import RequestRecord

#: the upstream's request id, passed on to the client as ``X-Upstream-Request-Id``
#: (``request-id``: Anthropic's name for it); ``istr`` names are looked up without
#: being case-folded on every request
_X_REQUEST_ID, _REQUEST_ID = istr("x-request-id"), istr("request-id")


class Chat(Operation):
    """A generation request in the client's format, served by any provider format."""

    name = "chat"
    capability = "chat"
    sticky = True
    generates = True

    def __init__(self, fmt: Format, endpoint: str, formats: Mapping[str, Format]) -> None:
        super().__init__(fmt, endpoint)
        #: every loaded format by name: the provider side of each target
        self.formats = formats

    def inspect(self, ctx: RequestContext) -> None:
        ctx.model, ctx.stream = self.fmt.inspect(ctx.body, path_model=ctx.path_model,
                                                 path_stream=ctx.path_stream)

    def unusable(self, target: Target) -> GatewayError | None:
        provider = target.provider
        if self.capability in provider.capabilities and (
                provider.format in self.formats or isinstance(provider, CanonicalProvider)):
            return None  # the common case, in one call
        unsupported = super().unusable(target)  # a type that has no chat at all says so first
        if unsupported is None and provider.format not in self.formats and not isinstance(
                provider, CanonicalProvider):
            return UpstreamError(f"no format plugin {provider.format!r} is loaded")
        return unsupported

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
        upstream = await target.provider.chat(UpstreamCall(  # (no keywords: see serve)
            body, target.model, ctx.stream, record.request_id, ctx.headers))
        headers = _passed_headers(upstream)
        if not ctx.stream:
            assert upstream.body is not None
            if request is None:
                answer = upstream.body
                won = partial(self._passthrough_won, ctx, answer)
            else:  # a body that cannot be decoded is this target's failure (raised here)
                response = provider_format.decode_response(upstream.body)
                answer = fmt.encode_response(response, request)
                won = partial(_answered, ctx, response, request)
            reply = Reply(answer, None, upstream.status)  # (no keywords: see serve)
            reply.headers, reply.on_win = headers, won
            return reply
        if request is None:  # pass-through: what one socket read brought leaves in one write
            reads = upstream.reads if upstream.reads is not None else _one_by_one(upstream)
            client = self._client_request(ctx)
            output = StreamOutput(record, ctx.started, fmt, client=client)
            reply = Reply(None, None, 200, fmt.stream_content_type, headers, reads,
                          upstream.close)  # (no keywords: see serve)
            reply.on_end = output.estimate
            reply.frames = _Passthrough(fmt, reply, output, reads, fmt.hidden_frames(client),
                                        ctx.tap)
        else:
            output = StreamOutput(record, ctx.started, fmt, request=request)
            reply = Reply(close=upstream.close, headers=headers,
                          content_type=fmt.stream_content_type, on_end=output.estimate)
            if upstream.reads is not None and upstream.split is not None and ctx.tap is None:
                decoder = provider_format.stream_decoder()
                encoder = fmt.stream_encoder(request) if decoder is not None else None
                if decoder is not None and encoder is not None:  # one write per read
                    reply.source = upstream.reads
                    reply.frames = Translated(upstream.reads, upstream.split, decoder,
                                              encoder, output)
                    return reply
            events = reply.source = upstream.events
            assert events is not None
            canonical = output.events(provider_format.decode_stream(events))
            if ctx.tap is not None:
                canonical = ctx.tap.events(canonical)
            reply.frames = fmt.encode_stream(canonical, request)
        return reply

    def _passthrough_won(self, ctx: RequestContext, answer: bytes) -> None:
        """A pass-through JSON answer is the one served: the cache's tap sees it, and its
        usage goes in the record."""
        record, fmt, tap = ctx.record, self.fmt, ctx.tap
        if tap is not None:
            tap.passed(answer)
        set_usage(record, fmt.usage_from_body(answer))
        if not usage_complete(record):  # decoded only when the counts are missing
            _estimate_passthrough(record, fmt, answer, self._client_request(ctx))

    @staticmethod
    def _client_request(ctx: RequestContext) -> ClientRequest:
        return ClientRequest(ctx.body, ctx.model, ctx.stream, ctx.headers, ctx.query)

    def _canonical_request(self, ctx: RequestContext, target: Target) -> c.Request:
        """The request in the canonical model, for ``target``'s upstream model name."""
        if ctx.canonical is None:  # decoded once, on the first target that needs it
            ctx.canonical = self.fmt.decode_request(self._client_request(ctx))
        return ctx.canonical.for_model(target.model)

    async def _call_canonical(
        self, ctx: RequestContext, target: Target, provider: CanonicalProvider
    ) -> Reply:
        """The canonical lane: the provider takes and gives canonical objects."""
        request = self._canonical_request(ctx, target)
        timeouts = provider.context.timeouts
        if not ctx.stream:
            response = await call_complete(provider, request, timeouts)
            return Reply(body=self.fmt.encode_response(response, request),
                         on_win=partial(_answered, ctx, response, request))
        events = await call_stream(provider, request, timeouts)  # its first event is there
        output = StreamOutput(ctx.record, ctx.started, self.fmt, request=request)
        canonical = output.events(events)
        if ctx.tap is not None:
            canonical = ctx.tap.events(canonical)
        frames = self.fmt.encode_stream(canonical, request)
        return Reply(frames=frames, source=events, content_type=self.fmt.stream_content_type,
                     on_end=output.estimate)


class _Passthrough(KnowsItsEnd):
    """The upstream's own bytes, unchanged, each block of whole frames one socket read
    brought as one chunk (so they leave in one write). Usage and errors are read on the
    side (:class:`_SideReading`), once the block has been written: the client does not
    wait for them (the block handed out is read when the next one is asked for, or at
    :meth:`aclose`, also when the client left as it was written: its usage still
    counts). Only when the gateway asked for a frame the client must not see
    (``hidden``: OpenAI's usage-only chunk) is a block read first, to cut it out.

    An async iterator written as a class: an async generator costs every stream the
    event loop's hooks (a ``WeakSet`` entry made and dropped). The side reading refers
    to the reply, which refers to this: it is let go when the stream ends or is closed,
    so that they are freed at once, not by the garbage collector.

    Each block handed out is shown to ``tap`` (the cache's, on a miss) as it goes:
    synchronously, where a stage's ``frame`` hook would cost the relay a coroutine a
    chunk."""

    __slots__ = ("_ended", "_hidden", "_reads", "_side", "_tap", "_written")

    def __init__(self, fmt: Format, reply: Reply, output: StreamOutput,
                 reads: AsyncIterator[bytes], hidden: Callable[[bytes], bool] | None,
                 tap: AnswerTap | None = None) -> None:
        self._side: _SideReading | None = _SideReading(fmt, reply, output, hidden)
        self._reads, self._hidden, self._tap = reads, hidden, tap
        self._written: bytes | None = None  # handed out, not read on the side yet
        #: the upstream reads' own :meth:`ended`, when they can tell
        self._ended: Callable[[], bool] | None = getattr(reads, "ended", None)

    def ended(self) -> bool:
        """True when the block handed out last was the stream's last: the relay sends
        it with the stream's end, in one write (one wake-up of the client, not two)."""
        ended = self._ended
        return ended is not None and ended()

    def __aiter__(self) -> _Passthrough:
        return self

    async def __anext__(self) -> bytes:
        side, written = self._side, self._written
        if side is None:
            raise StopAsyncIteration
        if written is not None:
            self._written = None
            side.read(written)
        while True:
            try:
                block = await self._reads.__anext__()
            except StopAsyncIteration:
                self._side = None
                raise
            side.arrived()
            if self._hidden is None:
                self._written = block
            else:
                cut = side.read(block)
                if cut:
                    block = _without(block, cut)
                if not block:
                    continue
            tap = self._tap
            if tap is not None:
                tap.chunk(block)
            return block

    async def aclose(self) -> None:
        side, written = self._side, self._written
        self._side = self._written = None
        if written is not None and side is not None:
            side.read(written)


class _SideReading:
    """What a pass-through stream's blocks say besides their bytes: the first content
    token (the format's :attr:`~Format.content_pattern`, until it is found), usage and
    upstream errors (in the frames cut out of a block around one of the format's
    :attr:`~Format.side_markers`, and only there), and the blocks kept for an estimate."""

    __slots__ = ("arrival", "content", "fmt", "hidden", "keeping", "markers", "output",
                 "reply", "waiting")

    def __init__(self, fmt: Format, reply: Reply, output: StreamOutput,
                 hidden: Callable[[bytes], bool] | None) -> None:
        self.fmt, self.reply, self.output, self.hidden = fmt, reply, output, hidden
        self.markers, self.content = fmt.side_markers, fmt.content_pattern
        self.keeping = True  # until the upstream's usage is complete
        self.waiting = True  # for the first content token
        self.arrival = 0.0  # perf_counter() when the block being read arrived

    def arrived(self) -> None:
        """A block has arrived (its time is its first content token's, if it holds it)."""
        if self.waiting:
            self.arrival = time.perf_counter()

    def read(self, block: bytes) -> list[tuple[int, int]]:
        """Read ``block``; return the spans of the frames the client must not see."""
        output = self.output
        record = output.record
        if self.waiting and (self.content is None or self.content.search(block) is not None):
            record.ttfc_ms = (self.arrival - output.started) * 1000
            self.waiting = False
        output.size += len(block)
        if self.keeping and output.kept < KEEP_BYTES:
            output.frames.append(block)
            output.kept += len(block)
        cut: list[tuple[int, int]] = []
        fmt, hidden = self.fmt, self.hidden
        for start, end in _marked(fmt, block, self.markers):
            frame = block[start:end]
            usage = fmt.usage_from_frame(frame)
            if usage is not None:
                set_usage(record, usage)
                if self.keeping and usage_complete(record):  # no estimate needed: let go
                    self.keeping = False
                    output.frames.clear()
                if hidden is not None and hidden(frame):  # asked for on the client's behalf
                    cut.append((start, end))
                    continue
            upstream_error = fmt.error_from_frame(frame)
            if upstream_error is not None:  # relayed as sent; recorded and charged as a failure
                record.status, record.error = 502, f"upstream stream error: {upstream_error}"
                record.error_class = "UpstreamError"
                self.reply.failure = UpstreamError(record.error)
        return cut


def _marked(fmt: Format, block: bytes, markers: tuple[bytes, ...]) -> list[tuple[int, int]]:
    """Where in ``block`` (whole frames) the frames that hold one of ``markers`` are, in
    order; every frame when there are no markers. One search per marker over the block;
    a frame is cut out only around a marker found."""
    if not markers:
        return _spans(frames_of(fmt, block))
    found: list[int] = []
    for marker in markers:
        at = block.find(marker)
        while at >= 0:
            found.append(at)
            at = block.find(marker, at + len(marker))
    if not found:
        return []
    ndjson = "ndjson" in fmt.stream_content_type
    if not ndjson and CR in block:  # CRLF events: cut the block into its events
        spans = _spans(frames_of(fmt, block))
        ends = [end for _, end in spans]
        return [spans[i] for i in sorted({bisect_right(ends, at) for at in found})]
    sep = b"\n" if ndjson else b"\n\n"
    marked: dict[int, int] = {}
    for at in sorted(found):
        start = block.rfind(sep, 0, at)
        start = 0 if start < 0 else start + len(sep)
        if start not in marked:
            end = block.find(sep, at)
            marked[start] = len(block) if end < 0 else end + len(sep)
    return list(marked.items())


def _spans(frames: list[bytes]) -> list[tuple[int, int]]:
    """Where each of ``frames`` is in their concatenation."""
    ends = list(accumulate(map(len, frames)))
    return list(zip([0, *ends[:-1]], ends, strict=True))


def _without(block: bytes, spans: list[tuple[int, int]]) -> bytes:
    """``block`` without the bytes of ``spans`` (in order, not overlapping)."""
    pieces, at = [], 0
    for start, end in spans:
        pieces.append(block[at:start])
        at = end
    pieces.append(block[at:])
    return b"".join(pieces)


async def _one_by_one(upstream: UpstreamResponse) -> AsyncIterator[bytes]:
    """A provider that offers only ``events``: each frame on its own."""
    events = upstream.events
    assert events is not None
    async with aclosing(events):  # type: ignore[type-var]
        async for frame in events:
            yield frame


def _passed_headers(upstream: UpstreamResponse) -> dict[str, str]:
    """The upstream answer's headers the client gets too: its id of the answer."""
    get = upstream.headers.get
    value = get(_X_REQUEST_ID) or get(_REQUEST_ID)
    return {"X-Upstream-Request-Id": value} if value else {}


def _answered(ctx: RequestContext, response: c.Response, request: c.Request) -> None:
    """A translated (or canonical) JSON answer is the one served: the cache's tap sees
    it, and its counts go in the record."""
    if ctx.tap is not None:
        ctx.tap.response(response)
    _estimate_answer(ctx.record, response, request)


def _estimate_answer(
    record: RequestRecord, response: c.Response, request: c.Request | None
) -> None:
    """A whole answer's counts into the record, estimated where the upstream sent none."""
    set_usage(record, response.usage)
    if not usage_complete(record):
        estimate_missing(record, request, response_texts(response))


def _estimate_passthrough(
    record: RequestRecord, fmt: Format, answer: bytes, client: ClientRequest
) -> None:
    """A pass-through answer without (all) its counts: estimate them from the decoded answer."""
    try:
        texts = response_texts(fmt.decode_response(answer))
    except Exception:  # noqa: BLE001 - an answer we cannot read goes to the client as it is
        texts = []
    estimate_missing(record, request_of(fmt, client), texts)
