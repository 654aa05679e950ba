"""The cache stage's runs: what one request does with the cache once
:class:`~omniroute.cache.stage.CacheStage` took it (a lookup's run, a stream's, and the
runs of a miss the ``memory`` backend told at once), and how a miss's answer is stored.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, TypeVar

from omniroute.cache import entry as entries
from omniroute.cache.entry import HEAD_BYTES
from omniroute.cache.key import (
    Exact,
    cache_key,
    exact_key,
    last_text,
    last_text_of,
    text_exact,
    uncacheable,
)
from omniroute.cache.layer import CacheKey
from omniroute.cache.memo import Known
from omniroute.cache.memory import Kept
from omniroute.cache.request import (
    SIMILARITY_HEADER,
    canonical_of,
    memo_slot,
    say,
)
from omniroute.cache.service import Found, Producer
from omniroute.errors import GatewayError
from omniroute.formats import canonical as c
from omniroute.formats.base import Format
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.relay import STREAM_HEADERS
from omniroute.pipeline.responses_state import keeps_state
from omniroute.pipeline.stages import StageRun
from omniroute.pipeline.usage import frames_of, set_usage, since
from omniroute.providers.canonical import collect

if TYPE_CHECKING:
    from omniroute.cache.stage import CacheStage
    from omniroute.routing import Route
    from omniroute.sharedstate import Pending, RequestBatch

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class CacheRun(StageRun):
    """One cacheable request: the lookup, and on a miss what the answer was."""

    #: set on a miss: the exact key the answer is to be stored under (None: a hit, a bypass;
    #: a miss told at enter: the request's bytes, :data:`~omniroute.cache.key.Asked`)
    exact: Kept | None = None
    #: the request's last user text (:func:`~omniroute.cache.key.last_text`), found while
    #: the built-in ``memory`` backend is the cache's (None: it has none, or it is not)
    asked: str | None = None
    #: the whole key, made while a layer was active (None: no layer is asked or fed)
    key: CacheKey | None = None
    decoded: c.Response | None = None  # translated / canonical lane, JSON
    body: bytes | None = None  # pass-through lane, JSON
    kept: list[c.Event] | None = None  # translated / canonical lane, stream
    size = 0
    too_big = False
    #: the exact key found in ``prefetch``, and the shared backends' lookups queued on the
    #: request's batch
    ahead: Exact | None = None
    pending: dict[int, Pending[bytes | None]] | None = None
    #: the request's memo slot (None: it has none), and its entry there (None: a request
    #: not seen as a hit before)
    slot: tuple[Hashable, ...] | None = None
    known: Known | None = None

    def __init__(self, stage: CacheStage, mode: str, ttl: float, max_bytes: int) -> None:
        # (the other attributes start as the class's: a miss sets only what it uses)
        self.stage = stage
        self.mode = mode
        self.ttl = ttl
        self.max_bytes = max_bytes

    def prefetch(self, ctx: RequestContext, batch: RequestBatch, route: Route | None) -> None:
        exact = self.ahead = self.lookup_key(ctx)
        if exact is not None:
            self.pending = self.stage.cache.prefetch(exact, batch)

    def lookup_key(self, ctx: RequestContext) -> Exact | None:
        """The request's exact cache key (None: it is not cacheable). Without an active
        layer, a request the format reads as text (``Format.text_request``) is keyed
        without being decoded; else the memo's key for a request that was a hit before,
        else the key of the decoded request (with a layer active, the whole
        :class:`CacheKey`, kept on ``self.key``)."""
        limits = ctx.principal.limits
        if limits is not None and not limits.allows(ctx.model):
            return None
        fmt = ctx.fmt
        # a route pinned to a provider (/v1/providers/{prefix}/...) asks that provider:
        # keyed as the same `prefix/model` a plain route would name it by
        model = f"{ctx.prefix}/{ctx.model}" if ctx.prefix else ctx.model
        layers = self.stage.cache.layered()
        memory = self.stage.memory
        if not layers:
            text = fmt.text_request(ctx.body)
            if text is not None:  # (the mode's temperature: checked by enter, as sent)
                if keeps_state(ctx):
                    return None
                if memory is not None:
                    self.asked = last_text(text)
                return text_exact(text, ctx.principal.key_id or "", model)
        slot = self.slot = memo_slot(ctx, self.mode, layers)
        if slot is not None:
            known = self.known = self.stage.memo.get(slot)
            if known is not None:  # the same inputs: the same key, not decoded again
                self.key = known.key
                if memory is not None:
                    self.asked = last_text_of(known.request)
                return known.exact
        request = canonical_of(ctx)
        if (request is None or (self.mode == "deterministic" and request.temperature != 0)
                or uncacheable(request) is not None or keeps_state(ctx)):
            return None
        tenant = ctx.principal.key_id or ""
        exact = exact_key(request, tenant, model)
        if memory is not None:
            self.asked = last_text_of(request)
        if layers:  # (the layers are given its name, CacheKey.exact)
            self.key = cache_key(request, tenant, model, exact=exact)
        return exact

    async def before(self, ctx: RequestContext) -> Reply | None:
        cache = self.stage.cache
        exact = self.ahead if self.ahead is not None else self.lookup_key(ctx)
        if exact is None:
            cache.bypasses += 1
            say(ctx, "BYPASS")
            return None
        key = self.key
        if self.asked is not None:  # (the built-in memory backend's entries kept by bytes)
            self.stage.memory.resolve(self.asked)  # type: ignore[union-attr]
        # the backends that tell a miss at once (a dict, a set) are not awaited: with no
        # other backend and no layer to ask, a miss costs no coroutine
        start = cache.absent(exact)
        if start < len(cache.backends) or (key is not None and key.scope):
            found = await cache.lookup(exact, self.pending, key, start)
            if found is not None:
                request = self._hit_request(ctx, exact)
                if request is not None:
                    cache.hits += 1
                    return await self.hit(ctx, request, found)
        cache.misses += 1
        say(ctx, "MISS")
        self.exact = exact
        ctx.tap = self
        return None

    def _hit_request(self, ctx: RequestContext, exact: Exact) -> c.Request | None:
        """The request a hit's answer is encoded for: the memo's, or decoded now and kept
        there with its key (a hit's request never goes on to an upstream). Only hits are
        kept: a stream of new requests costs the memo nothing."""
        known = self.known
        if known is None and self.slot is None:  # keyed from its text form: not asked yet
            slot = self.slot = memo_slot(ctx, self.mode, False)
            known = None if slot is None else self.stage.memo.get(slot)
        if known is not None:
            return known.request
        request = canonical_of(ctx)
        if request is not None and self.slot is not None:
            self.stage.memo.put(self.slot, Known(exact, self.key, request))
        return request

    async def hit(self, ctx: RequestContext, request: c.Request, found: Found) -> Reply:
        response, record, fmt = found.entry.response, ctx.record, ctx.fmt
        record.cache_hit = 1
        record.model = response.model
        set_usage(record, response.usage)
        record.cost_usd, record.list_cost_usd = 0.0, found.entry.cost
        say(ctx, "HIT")
        if found.similarity is not None:
            assert ctx.reply_headers is not None
            ctx.reply_headers[SIMILARITY_HEADER] = f"{found.similarity:.4f}"
        if not ctx.stream:
            return Reply(body=fmt.encode_response(response, request))
        if not any(type(run).stream is not StageRun.stream for run in ctx.runs):
            # nothing wraps the stream (progress frames): every frame is known now, so
            # the replay is one body, written with its headers in one write
            frames = [frame async for frame in fmt.encode_stream(
                entries.replay(response), request)]
            return Reply(body=b"".join(frames), content_type=fmt.stream_content_type,
                         headers=dict(STREAM_HEADERS))

        def first() -> None:
            record.ttfc_ms = since(ctx.started)

        events = entries.replay(response, first)
        return Reply(frames=fmt.encode_stream(events, request), source=events,
                     content_type=fmt.stream_content_type)

    # ------------------------------------------------------------ the answer (a miss)

    def response(self, response: c.Response) -> None:
        self.decoded = response

    def events(self, events: AsyncIterator[c.Event]) -> AsyncIterator[c.Event]:
        return self._kept(events)

    async def _kept(self, events: AsyncIterator[c.Event]) -> AsyncIterator[c.Event]:
        # kept from the first event on: only the stream that is relayed runs this (a call
        # that lost a hedged race is never iterated, so it cannot take the winner's place)
        kept: list[c.Event] = []
        self.kept = kept
        async with aclosing(events):  # type: ignore[type-var]
            async for event in events:
                if not self.too_big:
                    kept.append(event)
                    if isinstance(event, (c.TextDelta, c.ReasoningDelta)):
                        self.size += len(event.text)
                    elif isinstance(event, c.ToolArgsDelta):
                        self.size += len(event.arguments)
                    if self.size > self.max_bytes:
                        self.too_big = True
                        kept.clear()
                yield event

    def passed(self, body: bytes) -> None:
        # (the tap: set on a miss only) pass-through: decoded off the response path
        self.body = body

    def chunk(self, chunk: bytes) -> None:
        """(a JSON answer has no frames: :class:`CacheStreamRun` keeps a stream's)"""

    def finished(self, ctx: RequestContext) -> None:
        exact, record = self.exact, ctx.record
        if (exact is None or self.too_big or record.status != 200 or record.error is not None
                or record.cache_hit):
            return
        stage = self.stage
        cache, fmt, asked = stage.cache, ctx.fmt, self.asked
        if asked is not None and stage.memory is not None:
            stage.memory.index(asked, exact)
        created = stage.clock()
        expires = created + self.ttl
        # what the answer cost (a subscription's list price: it is what a hit saves)
        cost = record.list_cost_usd
        if cost is None:
            cost = record.cost_usd
        formats = cache.formats
        if self.decoded is None and self.kept is None and formats is not None \
                and formats.get(fmt.name) is fmt:
            # pass-through: stored as it came, decoded (and checked) when it is read;
            # unless it is too large that way (its canonical entry is smaller)
            body, frames = self.body, self.frames
            data = (entries.dump_body(body, fmt.name, ctx.model, created, cost, expires)
                    if body is not None else
                    entries.dump_body(b"".join(frames), fmt.name, ctx.model, created, cost,
                                      expires, stream=True) if frames else None)
            if data is not None and len(data) <= self.max_bytes:
                # (``exact`` an Asked key only while the memory backend is the cache's
                # only one: it keeps such a key as it is; the store's type names Exact)
                cache.store(exact, data, self.ttl, self.key)  # type: ignore[arg-type]
                return
        produce = self._producer(fmt, ctx.model, cost, created, expires)
        if produce is not None:
            cache.store(exact, produce, self.ttl, self.key)  # type: ignore[arg-type]

    #: a pass-through stream's frames (:class:`CacheStreamRun` keeps them)
    frames: Sequence[bytes] = ()

    def _producer(self, fmt: Format, model: str, cost: float | None, created: float,
                  expires: float) -> Producer | None:
        """What decodes the answer into a canonical entry, in the writer."""
        response, body, events, frames = self.decoded, self.body, self.kept, self.frames
        if response is None and body is None and events is None and not frames:
            return None
        max_bytes = self.max_bytes

        async def produce() -> bytes | None:
            answer = response
            if answer is None:
                try:
                    if body is not None:
                        answer = fmt.decode_response(body)
                    elif events is not None:
                        answer = await collect(_iterate(events))
                    else:
                        whole = frames_of(fmt, b"".join(frames))
                        answer = await collect(fmt.decode_stream(_iterate(whole)))
                except GatewayError as err:  # an answer we cannot read is not kept
                    log.info("not caching an answer that does not decode: %s", err.message)
                    return None
            if not entries.storable(answer):
                return None
            data = entries.dump(answer, model, created, cost, expires)
            return data if len(data) <= max_bytes else None

        return produce


class CacheStreamRun(CacheRun):
    """A streamed cacheable request: on the pass-through lane its frames are kept too
    (shown to the tap as they go, :meth:`chunk`)."""

    frames: list[bytes]

    def __init__(self, stage: CacheStage, mode: str, ttl: float, max_bytes: int) -> None:
        super().__init__(stage, mode, ttl, max_bytes)
        self.frames = []

    def chunk(self, chunk: bytes) -> None:
        if self.too_big:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes * 4:  # frames are far larger than what they carry
            self.too_big = True
            self.frames.clear()
            return
        self.frames.append(chunk)


def _finish_miss(run: CacheRun, ctx: RequestContext) -> None:
    """``finished`` of a miss told at ``enter`` (:class:`CacheMissRun`,
    :class:`CacheMissStreamRun`): a pass-through answer is stored in the memory backend as it
    came, its entry (:func:`~omniroute.cache.entry.dump_body`) made only when it is first read
    (:meth:`MemoryCache.put_later`): what :meth:`CacheRun.finished` stores, the same bytes
    once made. That one does it the usual way for any other answer (translated), a format not
    loaded to decode it, an answer that may be too large (its size is known within a bound
    only). (One function for both runs, the stage's ``_done`` calling it: no call in between.)
    """
    frames = run.frames  # (a stream's, on the pass-through lane; () for a JSON answer)
    answer = b"".join(frames) if frames else run.body
    if answer is not None:
        record = ctx.record
        if record.status != 200 or record.error is not None or record.cache_hit:
            return
        fmt, stage, model = ctx.fmt, run.stage, ctx.model
        name = fmt.name
        size = len(answer) + HEAD_BYTES + 6 * (len(name) + len(model))
        if size <= run.max_bytes and fmt in stage.decodes:
            created, ttl = stage.clock(), run.ttl
            cost = record.list_cost_usd  # (what the answer cost: see finished)
            if cost is None:
                cost = record.cost_usd
            # (told: the memory backend's run, its key set; not asserted, bytecodes a miss)
            stage.memory.put_later(run.exact, (  # type: ignore[union-attr, arg-type]
                answer, name, model, created, cost, created + ttl, bool(frames)), size, ttl,
                run.asked)
            stage.cache.stored += 1
            return
    CacheRun.finished(run, ctx)


class CacheMissRun(CacheRun):
    """A miss told by :meth:`CacheStage.told`: nothing is left to do before the call."""

    before = StageRun.before  # (the pipeline awaits no ``before`` it does not override)

    def __init__(self, stage: CacheStage, exact: Kept, ttl: float, max_bytes: int,
                 asked: str | None) -> None:
        # (what a miss reads: its key set here; no mode, which only a lookup reads)
        self.stage = stage
        self.exact = exact
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.asked = asked

    finished = _finish_miss


class CacheMissStreamRun(CacheStreamRun):
    """A streamed miss told by :meth:`CacheStage.told`."""

    before = StageRun.before

    def __init__(self, stage: CacheStage, exact: Kept, ttl: float, max_bytes: int,
                 asked: str | None) -> None:
        # (CacheMissRun's, and the frames: no chain of __init__ calls)
        self.stage = stage
        self.exact = exact
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.asked = asked
        self.frames = []

    finished = _finish_miss  # (its frames: kept on the pass-through lane, while not too big)


_new = object.__new__


def miss_run(stream: bool, stage: CacheStage, exact: Kept, ttl: float, max_bytes: int,
              asked: str | None) -> CacheRun:
    """A :class:`CacheMissStreamRun` (``stream``) or :class:`CacheMissRun`, as their
    ``__init__`` makes them (``frames``, ``size`` and ``too_big`` their own): made by a
    function, which the interpreter calls in its own loop, where calling a class runs
    ``__init__`` through C in a frame of its own (~225 instructions a miss fewer: 2,970
    against 3,195 a run made and dropped, callgrind)."""
    run: CacheRun
    # (and as its own, the class defaults the miss reads: CPython 3.11 does not specialize
    # the read of a class attribute through an instance, ~200 instructions each time)
    if stream:
        run = _new(CacheMissStreamRun)
        run.frames = []
        run.size = 0
        run.too_big = False
    else:
        run = _new(CacheMissRun)
        run.frames = ()
    run.stage = stage
    run.exact = exact
    run.ttl = ttl
    run.max_bytes = max_bytes
    run.asked = asked
    return run


async def _iterate(items: list[_T]) -> AsyncIterator[_T]:
    for item in items:
        yield item
