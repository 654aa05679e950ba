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

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from omniroute.cache.key import RAW_MAX, last_text, text_exact
from omniroute.cache.memo import KeyMemo
from omniroute.cache.memory import Kept, MemoryCache
from omniroute.cache.request import CACHE_CONTROL, CACHE_HEADER, NO_CACHE, bypassed, is_zero, say
from omniroute.cache.runs import CacheRun, CacheStreamRun, miss_run
from omniroute.cache.service import ResponseCache
from omniroute.pipeline.context import RequestContext
from omniroute.pipeline.responses_state import keeps_state
from omniroute.pipeline.stages import Stage, StageRun

if TYPE_CHECKING:
    from omniroute.config import Settings
    from omniroute.pipeline.operation import Operation


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
        #: one loaded by its name): see :func:`omniroute.cache.runs._finish_miss`
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
                    missed = miss_run(ctx.stream, self, (
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
        run = miss_run(ctx.stream, self, exact, ttl, max_bytes, asked)
        ctx.tap = run
        return run
