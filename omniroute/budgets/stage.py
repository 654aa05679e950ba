"""Budgets and limits as a pipeline stage: refuse before dispatch, settle when finished.

For a request whose API key has limits (``Principal.limits``; a key without
any costs this stage one attribute read):

* ``before``: the allowed models (the requested name; see ``routed`` for
  the resolved ones), then a slot of the key's concurrency and
  requests-per-minute limits (429 with ``Retry-After``);
* ``routed``: the resolved targets that the ``models`` patterns do not allow
  are dropped (none left: 403), then the request is admitted against the
  key's windows and reserves its estimate: prompt tokens
  (:func:`omniroute.tokens.estimate_request`) and ``max_tokens`` (or the
  ``budget_output_tokens`` setting), priced by the most expensive target
  (429 ``budget_exceeded``; 503 while the budget store fails). Past the
  warning threshold the answer carries ``X-OmniRoute-Budget-Warning``;
* ``finished``: the reservation gives way to the record's real cost and tokens,
  also when the request failed or the client left; the slot is freed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import orjson

from omniroute.budgets.ledger import Budgets, KeyState, Reservation
from omniroute.budgets.limits import Limits
from omniroute.errors import GatewayError, ModelNotAllowed, PermissionDenied
from omniroute.formats.base import ClientRequest
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.stages import Stage, StageRun
from omniroute.tokens import estimate_request

if TYPE_CHECKING:
    from omniroute.config import Settings
    from omniroute.pipeline.operation import Operation
    from omniroute.routing import Target

WARNING_HEADER = "X-OmniRoute-Budget-Warning"


class PriceEstimator(Protocol):
    """What budgets need of the price book: a request's likely cost on one target."""

    def estimate_usd(self, target: Target, input_tokens: int,
                     output_tokens: int) -> float | None:
        """USD for these token counts on ``target``; None when its price is unknown."""


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

    async def before(self, ctx: RequestContext) -> Reply | None:
        limits = self.limits
        if limits.unreadable is not None:
            raise PermissionDenied("This API key's limits cannot be read; an operator must "
                                   "set them again.", code="limits_unreadable")
        if not self.model_allowed and limits.allows(ctx.model):
            self.model_allowed = True
        if limits.concurrency is not None or limits.rpm is not None or limits.periods:
            self.slot = self.stage.budgets.enter(self.key_id, limits)
        return None

    async def routed(self, ctx: RequestContext) -> None:
        limits, route = self.limits, ctx.route
        assert route is not None
        if not self.model_allowed:
            allowed = tuple(t for t in route.targets if limits.allows(f"{t.prefix}/{t.model}"))
            if not allowed:
                raise ModelNotAllowed(
                    f"This API key may not use model {ctx.model!r}; it may use "
                    f"{', '.join(limits.models)}.", param="model")
            if len(allowed) < len(route.targets):
                ctx.route = dataclasses.replace(route, targets=allowed)
        if not limits.periods or not self.operation.metered:
            return
        assert self.slot is not None and ctx.route is not None
        tokens_in, tokens_out = self.estimate(ctx)
        usd = 0.0
        if limits.usd:
            prices = self.stage.prices
            usd = max((p for p in (prices.estimate_usd(t, tokens_in, tokens_out)
                                   for t in ctx.route.targets) if p is not None), default=0.0)
        self.reservation = self.stage.budgets.reserve(self.slot, limits, usd,
                                                      tokens_in + tokens_out)
        if self.reservation.warning is not None:
            if ctx.reply_headers is None:
                ctx.reply_headers = {}
            ctx.reply_headers[WARNING_HEADER] = self.reservation.warning

    def estimate(self, ctx: RequestContext) -> tuple[int, int]:
        """Likely (input, output) tokens: the prompt's estimate and ``max_tokens``."""
        default_out = self.stage.settings().budget_output_tokens
        if self.operation.name == "chat":
            if ctx.canonical is None:  # decoded once: the translated lane reuses it
                try:
                    ctx.canonical = ctx.fmt.decode_request(ClientRequest(
                        ctx.body, ctx.model, ctx.stream, ctx.headers, ctx.query))
                except GatewayError:  # refused where the body is used; estimate its size
                    return _size_estimate(ctx), default_out
            return estimate_request(ctx.canonical), ctx.canonical.max_tokens or default_out
        return _size_estimate(ctx), 0

    async def finished(self, ctx: RequestContext) -> None:
        budgets = self.stage.budgets
        if self.reservation is not None:
            record = ctx.record
            tokens = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
            budgets.settle(self.reservation, record.cost_usd or 0.0, tokens)
            self.reservation = None
        if self.slot is not None:
            budgets.leave(self.slot)
            self.slot = None


def _size_estimate(ctx: RequestContext) -> int:
    """Input tokens from the body's size: about four bytes of JSON a token."""
    return len(orjson.dumps(ctx.body)) // 4
