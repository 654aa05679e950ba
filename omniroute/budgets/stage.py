"""Budgets and limits as a pipeline stage: refuse before dispatch, settle when finished.

For a request whose API key has limits (``Principal.limits``; a key without
any costs this stage one attribute read):

* ``before``: the allowed models (the requested name; see ``routed`` for
  the resolved ones), then a slot of the key's concurrency and
  requests-per-minute limits (429 with ``Retry-After``);
* ``routed``: the resolved targets that the ``models`` patterns do not allow
  are dropped (none left: 403). For a key with a USD budget the targets
  without a known price are dropped too (none left: 403 ``model_unpriced``:
  what cannot be priced cannot be charged, so it fails closed). Then the
  request is admitted against the key's windows and reserves its estimate:
  input tokens from the body's size (``ctx.body_bytes`` / 4, nothing decoded
  or serialised) and, for an operation that generates output
  (:attr:`~omniroute.pipeline.operation.Operation.generates`), its
  ``max_tokens`` (or the ``budget_output_tokens`` setting), priced by the
  operation (``Operation.estimate_usd``: images by their count, audio by the
  seconds or characters it measured before the call) on the
  most expensive target (429 ``budget_exceeded``; 503 while the budget store
  fails). Past the warning threshold the answer carries
  ``X-OmniRoute-Budget-Warning``;
* ``finished``: the reservation gives way to the record's real cost and tokens,
  also when the request failed or the client left; an answer whose cost is
  still unknown (no usage, or its price was removed meanwhile) is charged its
  estimate, a request no target answered nothing. The slot is freed.

With a shared ledger (``state_url``: ``Budgets.shared``) the slot and the
reservation are taken there first, atomically across the instances; this
instance's ledger counts them too, and decides alone while the shared one cannot
be reached. Both are queued on the request's batch (``prefetch``, with the route
as it resolves then), so they cost no round trip of their own: ``before`` and
``routed`` read their answers. The request is priced once: when ``routed`` finds
the route the prefetch priced (the router keeps its routes: the same object), it
takes that estimate and its reservation; when the route changed meanwhile, the
prefetched reservation is given back, and the request is priced and reserved
again, one round trip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from omniroute.budgets.ledger import Budgets, KeyState, Reservation
from omniroute.budgets.limits import Limits
from omniroute.errors import GatewayError, ModelNotAllowed, ModelUnpriced, PermissionDenied
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.stages import Stage, StageRun

if TYPE_CHECKING:
    from omniroute.config import Settings
    from omniroute.pipeline.operation import Operation
    from omniroute.routing import Route, Target
    from omniroute.sharedstate import Pending, RequestBatch

WARNING_HEADER = "X-OmniRoute-Budget-Warning"
#: a reservation's input estimate: about four bytes of the request's JSON a token
BYTES_PER_TOKEN = 4


class PriceEstimator(Protocol):
    """What budgets need of the price book: a request's likely cost on one target."""

    def estimate_usd(self, target: Target, input_tokens: int, output_tokens: int, *,
                     images: int = 0, seconds: float = 0.0,
                     characters: int = 0) -> float | None:
        """USD for these token counts (and ``images`` images, seconds of audio, characters
        of speech) on ``target``; None when its price is unknown."""


class BudgetStage(Stage):
    """Enforces each API key's limits (:class:`~omniroute.budgets.limits.Limits`)."""

    name = "budgets"

    def __init__(self, budgets: Budgets, settings: Callable[[], Settings],
                 prices: PriceEstimator) -> None:
        """
        :param settings: the live runtime settings (``budget_output_tokens``).
        :param prices: prices the reservation's estimate (the gateway's
            :class:`~omniroute.pricing.PriceBook`).
        """
        self.budgets = budgets
        self.settings = settings
        self.prices = prices

    def enter(self, ctx: RequestContext, operation: Operation) -> StageRun | None:
        limits = ctx.principal.limits
        if limits is None or ctx.principal.key_id is None or not limits.enforced:
            return None
        return BudgetRun(self, limits, ctx.principal.key_id, operation)


class BudgetRun(StageRun):
    """One request of a limited key."""

    def __init__(self, stage: BudgetStage, limits: Limits, key_id: str,
                 operation: Operation) -> None:
        self.stage = stage
        self.limits = limits
        self.key_id = key_id
        self.operation = operation
        self.model_allowed = not limits.models
        self.slot: KeyState | None = None
        self.reservation: Reservation | None = None
        #: the shared ledger holds a slot of this request
        self.shared_slot = False
        #: the slot and the reservation queued on the request's batch
        self.pending_slot: Pending[bool] | None = None
        self.pending_reservation: Pending[object | None] | None = None
        #: what the prefetch priced: the route as resolved then, its allowed targets (and
        #: whether the ``models`` patterns filtered them), its priced ones, the estimate's
        #: input and output tokens, and its USD, and the body and canonical request it
        #: estimated; ``routed`` reuses it when the request resolves to the same route
        #: (the router keeps its routes: the same object) and its estimate is the same
        #: (the same body and canonical request: a stage replaces them, never edits them
        #: in place, so the same objects are the same request; others are estimated again)
        self.prefetched: tuple[Route, Route, bool, Route, int, int, float, object,
                               object] | None = None

    def prefetch(self, ctx: RequestContext, batch: RequestBatch, route: Route | None) -> None:
        limits, shared = self.limits, self.stage.budgets.shared
        if shared is None or limits.unreadable is not None:
            return
        if limits.concurrency is not None or limits.rpm is not None:
            self.pending_slot = shared.prefetch_enter(batch, self.key_id, limits)
        if route is None or not limits.periods or not self.operation.metered:
            return
        resolved = allowed = route
        tokens_in, tokens_out = self.estimate(ctx)
        filtered = not (self.model_allowed or limits.allows(ctx.model))
        try:
            if filtered:
                allowed = self.allowed(ctx, route)
            route, usd = self.priced(ctx, allowed, tokens_in, tokens_out)
        except GatewayError:  # refused in routed, where it is raised
            return
        self.prefetched = (resolved, allowed, filtered, route, tokens_in, tokens_out, usd,
                           ctx.body, ctx.canonical)
        self.pending_reservation = shared.prefetch_reserve(
            batch, self.stage.budgets.state(self.key_id), limits, usd, tokens_in + tokens_out)

    async def before(self, ctx: RequestContext) -> Reply | None:
        limits = self.limits
        if limits.unreadable is not None:
            raise PermissionDenied("This API key's limits cannot be read; an operator must "
                                   "set them again.", code="limits_unreadable")
        if not self.model_allowed and limits.allows(ctx.model):
            self.model_allowed = True
        if limits.concurrency is not None or limits.rpm is not None or limits.periods:
            budgets = self.stage.budgets
            if budgets.shared is not None and (limits.concurrency is not None
                                               or limits.rpm is not None):
                pending, self.pending_slot = self.pending_slot, None
                if pending is not None and pending.ran:
                    self.shared_slot = pending.result()
                else:
                    self.shared_slot = await budgets.shared.enter(self.key_id, limits)
            self.slot = budgets.enter(self.key_id, limits, checked=self.shared_slot)
        return None

    async def routed(self, ctx: RequestContext) -> None:
        limits, route = self.limits, ctx.route
        assert route is not None
        prefetched = self.prefetched
        if (prefetched is not None and prefetched[0] is route
                and prefetched[2] is not self.model_allowed and prefetched[7] is ctx.body
                and prefetched[8] is ctx.canonical):
            # the route and the request the prefetch priced (as nearly always): its allowed
            # and priced route, its estimate (the same body and canonical request), its price
            ctx.route, usd, tokens = prefetched[3], prefetched[6], prefetched[4] + prefetched[5]
        else:
            if (prefetched is not None and prefetched[0] is route
                    and prefetched[2] is not self.model_allowed):  # the route it priced
                ctx.route = route = prefetched[1]
            else:
                prefetched = None
                if not self.model_allowed:
                    ctx.route = route = self.allowed(ctx, route)
            if not limits.periods or not self.operation.metered:
                return
            tokens_in, tokens_out = self.estimate(ctx)
            if (prefetched is not None and prefetched[4] == tokens_in
                    and prefetched[5] == tokens_out):  # priced once a request
                ctx.route, usd = prefetched[3], prefetched[6]
            else:  # another route or another estimate (a stage changed the body)
                prefetched = None
                ctx.route, usd = self.priced(ctx, route, tokens_in, tokens_out)
            tokens = tokens_in + tokens_out
        assert self.slot is not None
        budgets = self.stage.budgets
        handle = None
        if budgets.shared is not None:
            pending, self.pending_reservation = self.pending_reservation, None
            if pending is not None and pending.ran and prefetched is not None:
                handle = pending.result()
            else:  # not prefetched, or for another estimate: made again
                if pending is not None:
                    pending.release()
                handle = await budgets.shared.reserve(self.slot, limits, usd, tokens)
        self.reservation = budgets.reserve(self.slot, limits, usd, tokens,
                                           checked=handle is not None)
        self.reservation.handle = handle
        if self.reservation.warning is not None:
            if ctx.reply_headers is None:
                ctx.reply_headers = {}
            ctx.reply_headers[WARNING_HEADER] = self.reservation.warning

    def allowed(self, ctx: RequestContext, route: Route) -> Route:
        """``route`` with only the targets the key's ``models`` patterns allow.

        :raises ModelNotAllowed: none is.
        """
        limits = self.limits
        allowed = tuple(t for t in route.targets if limits.allows(f"{t.prefix}/{t.model}"))
        if not allowed:
            raise ModelNotAllowed(
                f"This API key may not use model {ctx.model!r}; it may use "
                f"{', '.join(limits.models)}.", param="model")
        if len(allowed) < len(route.targets):
            return dataclasses.replace(route, targets=allowed)
        return route

    def priced(self, ctx: RequestContext, route: Route, tokens_in: int,
               tokens_out: int) -> tuple[Route, float]:
        """The reservation of ``tokens_in`` and ``tokens_out`` (:meth:`estimate`) on
        ``route``: the route without the targets that cannot be priced (with a USD
        budget), and the estimate in USD on the dearest target.

        :raises ModelUnpriced: a USD budget and no target with a known price.
        """
        usd = 0.0
        if self.limits.usd:  # priced on the dearest target; unpriced ones cannot be charged
            priced: list[Target] = []
            for target in route.targets:
                price = self.operation.estimate_usd(ctx, self.stage.prices, target,
                                                    tokens_in, tokens_out)
                if price is not None:
                    priced.append(target)
                    usd = max(usd, price)
            if not priced:
                raise ModelUnpriced(
                    f"No price is known for model {ctx.model!r} "
                    f"({', '.join(t.label for t in route.targets)}), and this API key has a "
                    f"USD budget, so its requests cannot be charged. An operator must set its "
                    f"price with PUT /api/pricing.", param="model")
            if len(priced) < len(route.targets):
                route = dataclasses.replace(route, targets=tuple(priced))
        return route, usd

    def estimate(self, ctx: RequestContext) -> tuple[int, int]:
        """Likely (input, output) tokens: the body's size, and for an operation that
        generates output its ``max_tokens`` (or the ``budget_output_tokens`` setting)."""
        tokens_in = -(-ctx.body_bytes // BYTES_PER_TOKEN)
        if not self.operation.generates:
            return tokens_in, 0
        canonical = ctx.canonical
        cap = canonical.max_tokens if canonical is not None else output_cap(ctx.body)
        return tokens_in, cap or self.stage.settings().budget_output_tokens

    def finished(self, ctx: RequestContext) -> None:
        budgets = self.stage.budgets
        held = self.reservation
        if held is not None:
            self.reservation = None
            record = ctx.record
            usd, tokens = record.cost_usd, None
            if record.prompt_tokens is not None or record.completion_tokens is not None:
                tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
            if record.ttfb_ms is None:  # no target answered: nothing was spent
                usd, tokens = usd or 0.0, tokens or 0
            # an answer whose cost (or size) is not known is charged its estimate
            usd = held.usd if usd is None else usd
            tokens = held.tokens if tokens is None else tokens
            if held.handle is not None and budgets.shared is not None:
                if self.shared_slot:  # its slot given back with its settle: one write
                    self.shared_slot = False
                    budgets.shared.settle(held.handle, usd, tokens, leave=self.key_id)
                else:
                    budgets.shared.settle(held.handle, usd, tokens)
            budgets.settle(held, usd, tokens)
        if self.slot is not None:
            budgets.leave(self.slot)
            self.slot = None
        if self.shared_slot and budgets.shared is not None:
            self.shared_slot = False
            budgets.shared.leave(self.key_id)


#: where the client formats carry the answer's token cap: (field, nested field or None)
_OUTPUT_CAPS = (
    ("max_completion_tokens", None),  # OpenAI chat
    ("max_tokens", None),  # OpenAI chat (older), Anthropic, completions
    ("max_output_tokens", None),  # Responses
    ("generationConfig", "maxOutputTokens"),  # Gemini
    ("generation_config", "max_output_tokens"),  # Gemini, snake_case
    ("options", "num_predict"),  # Ollama
)


def output_cap(body: Mapping[str, Any]) -> int | None:
    """The most output tokens the request asks for, read from the body as sent (a few
    dictionary lookups: the body is not decoded for an estimate); None: it sets none."""
    for name, inner in _OUTPUT_CAPS:
        value = body.get(name)
        if value is not None and inner is not None:
            value = value.get(inner) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
