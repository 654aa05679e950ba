"""The exact response cache as a pipeline stage.

For every generation request (:class:`~omniroute.pipeline.chat.Chat`):

* ``enter`` decides, without decoding anything, whether the cache takes part: not
  with the mode ``off`` (the ``cache_mode`` setting, or the API key's ``cache``
  limit), a bypass header (``X-OmniRoute-No-Cache: true``, ``Cache-Control:
  no-cache`` / ``no-store``), or, in the default ``deterministic`` mode, a
  temperature other than an explicit 0 (``Format.temperature``). Those answers
  say ``X-OmniRoute-Cache: BYPASS``.
* ``before`` computes the request's exact key and asks the
  :class:`~omniroute.cache.service.ResponseCache`. While no layer is active, a
  request its format reads as text (``Format.text_request``) is keyed from that,
  without a decode (:func:`~omniroute.cache.key.text_key`: the same key). Any other
  is decoded into the canonical model once (kept on ``ctx.canonical`` for the
  operation), refused when it must not be cached (log-probabilities, ``n > 1``, a
  Responses request whose response the server keeps), and keyed (with a layer
  active, the whole :class:`~omniroute.cache.layer.CacheKey`). A hit answers at
  once in the client's format, JSON or a stream (``HIT``), decoding the request
  for that; a miss (``MISS``) keeps the key and decodes nothing more. A request
  seen before as a hit (the same body's bytes and the same scoping inputs: a
  :class:`~omniroute.cache.memo.KeyMemo` slot) takes the key and the request of
  that hit, without decoding.
  With the ``memory`` backend alone and no layer active (the default), a text
  request is keyed in ``enter`` instead, and a miss, which that dict tells at once, is
  told there (:meth:`CacheStage.told`: no ``before`` to await; its answer is stored as
  it came and made into an entry only when first read, ``MemoryCache.put_later``).
  With shared state (``state_url``) that is done in ``prefetch``, and the lookup of
  a backend that keeps its entries there (``redis``) goes out with the request's
  other shared work, in its one round trip; ``before`` reads its answer.
* on a miss the answer is kept as it passes: the canonical response or events on
  the translated and canonical lanes (``ctx.tap``), the client-format body or
  frames on the pass-through lane (stored as they came, with their format's name,
  and decoded only when they are read: :func:`~omniroute.cache.entry.dump_body`).
* ``finished`` stores the answer when the request succeeded (a stream that ended
  normally) and it is complete (an answer kept as it came goes into the backends that
  take it at once; the others' decode is queued for the cache's writer): never an
  error, a ``length`` stop, an empty answer (a pass-through answer is checked when it
  is read: such an answer is never served).

A hit's record: ``cache_hit``, the stored answer's token counts, ``cost_usd`` 0 and
``list_cost_usd`` what the answer cost when it was made (what the hit saved; the
usage summaries report ``list - cost`` as saved).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING, TypeVar

from omniroute.cache import entry as entries
from omniroute.cache.entry import HEAD_BYTES
from omniroute.cache.key import (
    RAW_MAX,
    Exact,
    cache_key,
    exact_key,
    last_text,
    last_text_of,
    text_exact,
    uncacheable,
)
from omniroute.cache.layer import CacheKey
from omniroute.cache.memo import KeyMemo, Known
from omniroute.cache.memory import Kept, MemoryCache
from omniroute.cache.request import (
    CACHE_CONTROL,
    CACHE_HEADER,
    NO_CACHE,
    SIMILARITY_HEADER,
    bypassed,
    canonical_of,
    is_zero,
    memo_slot,
    say,
)
from omniroute.cache.service import Found, Producer, ResponseCache
from omniroute.errors import GatewayError
from omniroute.formats import canonical as c
from omniroute.formats.base import Format
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.relay import STREAM_HEADERS
from omniroute.pipeline.responses_state import keeps_state
from omniroute.pipeline.stages import Stage, StageRun
from omniroute.pipeline.usage import frames_of, set_usage, since
from omniroute.providers.canonical import collect

if TYPE_CHECKING:
    from omniroute.config import Settings
    from omniroute.pipeline.operation import Operation
    from omniroute.routing import Route
    from omniroute.sharedstate import Pending, RequestBatch

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class CacheStage(Stage):
    """Looks every cacheable request up, answers hits, stores complete answers."""

    name = "cache"

    def __init__(self, cache: ResponseCache, settings: Callable[[], Settings],
                 clock: Callable[[], float] = time.time, memo: KeyMemo | None = None) -> None:
        """
        :param settings: the live runtime settings (``cache_mode``, ``cache_ttl``,
            ``cache_max_entry_bytes``).
        :param clock: wall-clock time, for an entry's creation time.
        :param memo: the keys of requests seen before (None: a new, default-sized one).
        """
        self.cache = cache
        self.settings = settings
        self.clock = clock
        self.memo = memo if memo is not None else KeyMemo()
        #: the cache's only backend when it is the built-in ``memory`` one (the default
        #: configuration), else None: see :meth:`told`
        self.memory = (cache.backends[0] if len(cache.backends) == 1
                       and type(cache.backends[0]) is MemoryCache else None)
        #: whether a new request may be kept by its bytes (the formats that give it its
        #: exact key later are known)
        self.asks = self.memory is not None and cache.formats is not None
        if self.memory is not None:
            self.memory.formats = cache.formats
        #: the formats that decode the entries kept as an upstream's answer came (each the
        #: one loaded by its name): see :func:`_finish_miss`
        self.decodes = frozenset(f for name, f in (cache.formats or {}).items()
                                 if f.name == name)

    def enter(self, ctx: RequestContext, operation: Operation) -> StageRun | None:
        if operation.name != "chat":
            return None
        settings = self.settings()
        mode, ttl = settings.cache_mode, settings.cache_ttl
        principal = ctx.principal
        limits = principal.limits
        if limits is not None:
            mode = limits.cache or mode
            ttl = limits.cache_ttl or ttl
        # the temperature first: most requests give none, or one that is not 0 (two
        # header lookups fewer, the header's 21 bytecodes of 62); the headers looked up
        # here, read only when one is there (most requests send neither: no call)
        fmt, body, headers = ctx.fmt, ctx.body, ctx.headers
        if (mode == "off"
                or (mode == "deterministic" and not is_zero(fmt.temperature(body)))
                or ((headers.get(NO_CACHE) is not None
                     or headers.get(CACHE_CONTROL) is not None) and bypassed(ctx))):
            self.cache.bypasses += 1
            say(ctx, "BYPASS")
            return None
        memory, cache = self.memory, self.cache
        layers = cache.layers
        if memory is not None and not ctx.runs and not (layers and (
                self._layers_on if settings is self._layers_for and layers is self._layers_seen
                else self._layered(settings))):
            model = ctx.model
            asked = fmt.asked_text(body)
            if (asked is not None and self.asks and asked not in memory.asked
                    and (limits is None or limits.allows(model))):
                # no entry of a request with this last user text: a new question (told
                # below), kept by its bytes as read (no stage runs before this one), given
                # its exact key when a request with that text comes (MemoryCache.resolve)
                raw, read = ctx.as_read  # type: ignore[misc]
                if len(raw) <= RAW_MAX and read is body:
                    memory.misses += 1
                    cache.misses += 1
                    said = ctx.reply_headers  # (say, written in)
                    if said is None:
                        ctx.reply_headers = {CACHE_HEADER: "MISS"}
                    else:
                        said[CACHE_HEADER] = "MISS"
                    prefix = ctx.prefix
                    missed = _miss_run(ctx.stream, self, (
                        raw, fmt.name, principal.key_id or "",
                        f"{prefix}/{model}" if prefix else model, asked),
                        ttl, settings.cache_max_entry_bytes, asked)
                    ctx.tap = missed
                    return missed
            told = self.told(ctx, memory, mode, ttl, settings.cache_max_entry_bytes)
            if told is not None:
                return told
        run = CacheStreamRun if ctx.stream else CacheRun
        return run(self, mode, ttl, settings.cache_max_entry_bytes)

    #: (:meth:`_layered`) the settings object and layer list its answer was read for
    _layers_for: object = None
    _layers_seen: object = None
    _layers_on = False

    def _layered(self, settings: Settings) -> bool:
        """Whether a layer is active now (:meth:`ResponseCache.layered`). When every layer
        names the setting it follows (:attr:`CacheLayer.setting`), that is read from
        ``settings`` and kept for as long as the same settings object (and layer list) is
        the live one: :meth:`enter` then reads no layer on a request."""
        layers = self.cache.layers
        names = [name for name in (layer.setting for layer in layers) if name is not None]
        if len(names) < len(layers):
            self._layers_for = None
            return self.cache.layered()
        self._layers_on = any(getattr(settings, name) for name in names)
        self._layers_for, self._layers_seen = settings, layers
        return self._layers_on

    def told(self, ctx: RequestContext, memory: MemoryCache, mode: str, ttl: float,
             max_bytes: int) -> CacheRun | None:
        """The built-in path (the ``memory`` backend alone, no layer active): a request read
        as text (``Format.text_request``) is keyed here, and a miss, which that dict tells at
        once, is one already (counted, ``MISS`` said): its run has no ``before`` for the
        pipeline to await, and its answer goes into the dict as it came, made into an
        entry only when it is first read (:meth:`MemoryCache.put_later`). A key the dict
        holds is looked up by the usual ``before``. None: the usual run, for a request
        that is not keyed from its text form, or that is not cacheable (``before`` says
        why). Only with no stage in front of this one: a stage's ``before`` may replace
        the body. (A new request with a last user text, ``Format.asked_text``, is told a
        miss by :meth:`enter` before this, without a text form.)

        The same answers as the usual path (tests compare them): the same key, the same
        counts, headers and entries."""
        principal, fmt, model = ctx.principal, ctx.fmt, ctx.model
        limits = principal.limits
        if (limits is not None and not limits.allows(model)) or (
                fmt.name == "responses" and keeps_state(ctx)):  # (the name: a call fewer)
            return None
        prefix = ctx.prefix
        text = fmt.text_request(ctx.body)
        if text is None:
            return None
        exact = text_exact(text, principal.key_id or "", f"{prefix}/{model}" if prefix else model)
        asked = last_text(text)  # (what Format.asked_text read, when it read one)
        if asked is not None:
            memory.resolve(asked)
        if not memory.absent(exact):  # looked up by before, as usual
            run = (CacheStreamRun if ctx.stream else CacheRun)(self, mode, ttl, max_bytes)
            run.ahead, run.asked = exact, asked
            return run
        return self._missed(ctx, exact, asked, ttl, max_bytes)

    def _missed(self, ctx: RequestContext, exact: Kept, asked: str | None, ttl: float,
                max_bytes: int) -> CacheRun:
        """The run of a miss :meth:`told` (``asked``: the request's last user text)."""
        self.cache.misses += 1
        say(ctx, "MISS")
        run = _miss_run(ctx.stream, self, exact, ttl, max_bytes, asked)
        ctx.tap = run
        return run


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


def _miss_run(stream: bool, stage: CacheStage, exact: Kept, ttl: float, max_bytes: int,
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
