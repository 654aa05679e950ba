"""Stages: what the pipeline does around every operation, in one ordered list.

A :class:`Stage` is built once at start-up with its collaborators. For each
request the pipeline asks every stage to :meth:`~Stage.enter`; a stage that
takes part returns a :class:`StageRun`, a plain per-request object that may:

* ``prefetch``: only with shared state (``state_url``): queue what ``before`` and
  ``routed`` will ask of it on the request's batch, which the pipeline then sends
  in one round trip (:class:`~omniroute.sharedstate.RequestBatch`);
* ``before``: look at the request before routing, change its body, or answer it
  itself by returning a :class:`~omniroute.pipeline.context.Reply` (a cache hit,
  an idempotent replay, a budget refusal);
* ``routed``: see the resolved route before any target is called, narrow it, or
  refuse the request by raising (a model the key may not use, a budget reservation);
* ``call``: wrap the call of the route's targets (idempotency shares one call among
  duplicates, and keeps it going for them when the first client leaves);
* ``stream``: wrap a streamed answer's frames before they are relayed (progress
  frames), or take over the upstream under them (idempotency fans them out);
* ``answer`` / ``frame``: see a JSON answer, or each chunk of a streamed one,
  just before it is written (a tee for caching, a store of the final response);
* ``finished``: see the finished request and its complete record (usage, metrics). It is
  synchronous: it runs on every request's path after the answer, so it counts, settles
  and hands slow work to a buffer or a task of its own, and never waits.

The list itself is :func:`default_stages`: reading it tells what every request
goes through, in order. Plugins add stages with the ``register_stages`` hook
(:mod:`omniroute.hookspecs`); theirs run after these, plugin by plugin in load
order (built-in plugins first, then by entry point name), each plugin's in the
order it registered them. ``before`` runs in that order, and so does
``finished``: a stage that must see another's effect on the record comes after it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, ClassVar

from omniroute.pipeline.context import Reply, RequestContext

if TYPE_CHECKING:
    from omniroute.pipeline.operation import Operation
    from omniroute.routing import Route
    from omniroute.sharedstate import RequestBatch
    from omniroute.storage import DatabaseBackend


class StageRun:
    """A stage's part in one request. Every method is awaited on the request's path."""

    #: True when :meth:`frame` must see every streamed chunk (costs an await per chunk)
    sees_frames: ClassVar[bool] = False
    #: True when the run wraps the call (:meth:`call`) or a stream's frames (:meth:`stream`);
    #: the pipeline calls neither for a run that does not
    wraps: ClassVar[bool] = False
    #: True when the run does more than ``finished`` (and ``frame``, ``prefetch``): it
    #: overrides ``before``, ``routed`` or ``answer``, or wraps. Set for each subclass
    #: (:meth:`__init_subclass__`); a request whose runs all lack it (the metrics run
    #: alone, mostly) skips the pipeline's four loops over them
    acts: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.acts = cls.wraps or any(getattr(cls, hook) is not getattr(StageRun, hook)
                                    for hook in ("before", "routed", "answer"))

    def prefetch(self, ctx: RequestContext, batch: RequestBatch, route: Route | None) -> None:
        """With shared state only, before ``before``: queue on ``batch`` what this run will
        ask of the shared state before dispatch, and keep the :class:`~omniroute.sharedstate.
        Pending` answers to read in ``before`` / ``routed``. ``route`` is what the model
        resolves to now (None: it does not resolve); ``routed`` sees the route again and
        does its part the usual way when that one differs. Synchronous, and it must not
        raise: what it cannot tell in advance is left to ``before`` and ``routed``."""

    async def before(self, ctx: RequestContext) -> Reply | None:
        """Before routing: return a reply to answer the request without any target."""
        return None

    async def routed(self, ctx: RequestContext) -> None:
        """The model resolved to ``ctx.route``; no target was called yet. May replace
        ``ctx.route`` (fewer targets), add ``ctx.reply_headers``, or raise a ``GatewayError``."""

    def call(self, ctx: RequestContext, calling: Awaitable[Reply]) -> Awaitable[Reply]:
        """Wrap the call of the route's targets (after ``routed``); return what the pipeline
        awaits instead. Runs wrap in stage order, so the last one is outermost."""
        return calling

    def stream(self, ctx: RequestContext, reply: Reply) -> None:
        """A streamed answer (a target's, or one a stage made) is about to be relayed. May
        replace ``reply.frames`` with an async iterator over them, or take over the upstream
        under them: then it also takes ``reply.source`` and ``reply.close`` (set them to None)
        and closes them itself. Runs wrap in stage order (the last one is outermost)."""

    async def answer(self, ctx: RequestContext, body: bytes) -> None:
        """A JSON answer from a target, just before it is sent."""

    async def frame(self, ctx: RequestContext, chunk: bytes) -> None:
        """A chunk of a streamed answer (one or more whole frames), just before it is written."""

    def finished(self, ctx: RequestContext) -> None:
        """The request is over and ``ctx.record`` is complete (status, usage, latency).

        Synchronous, so nothing can cancel it halfway (a client that leaves, a shutdown):
        a budget slot taken in ``routed`` is always given back. Work that must wait (a
        write) goes to a buffer or a task the stage owns."""


class Stage:
    """A step every request passes; subclass it, and add it to :func:`default_stages`
    (built in) or register it from a plugin (``register_stages``). ``name`` is unique."""

    name: ClassVar[str]

    def enter(self, ctx: RequestContext, operation: Operation) -> StageRun | None:
        """This stage's run for the request, or None when it takes no part (keep it cheap)."""
        return None


def default_stages(
    db: DatabaseBackend, budgets: Stage | None = None, idempotency: Stage | None = None,
    progress: Stage | None = None, cache: Stage | None = None,
) -> list[Stage]:
    """The stages of every request, in the order they run.

    :param budgets: the per-key limits stage
        (:class:`~omniroute.budgets.stage.BudgetStage`, built by the gateway).
    :param idempotency: duplicates share one call
        (:class:`~omniroute.idempotency.IdempotencyStage`, built with the app's keys).
    :param progress: progress frames on a stream
        (:class:`~omniroute.pipeline.progress.ProgressStage`); after idempotency, so that
        it wraps each client's own stream, a duplicate's too.
    :param cache: the response cache stage (:class:`~omniroute.cache.stage.CacheStage`);
        before idempotency: a hit is answered before a key is claimed (a claimed key
        whose first request a later stage answered would leave its duplicates without
        the shared answer), and every duplicate of a hit is a hit itself.
    """
    from omniroute.pipeline.responses_state import ResponsesStage

    return [
        *([budgets] if budgets is not None else []),  # key limits and budgets
        *([cache] if cache is not None else []),  # exact (and semantic) response cache
        *([idempotency] if idempotency is not None else []),  # duplicates share one call
        *([progress] if progress is not None else []),  # X-OmniRoute-Progress frames
        ResponsesStage(db),  # Responses `store` / `previous_response_id`
    ]
