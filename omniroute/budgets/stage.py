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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from omniroute.budgets.ledger import Budgets, KeyState, Reservation
from omniroute.budgets.limits import Limits
from omniroute.errors import ModelNotAllowed, ModelUnpriced, PermissionDenied
from omniroute.pipeline.context import Reply, RequestContext
from omniroute.pipeline.stages import Stage, StageRun

if TYPE_CHECKING:
    from omniroute.config import Settings
    from omniroute.pipeline.operation import Operation
    from omniroute.routing import Target

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
                ctx.route = route = dataclasses.replace(route, targets=allowed)
        if not limits.periods or not self.operation.metered:
            return
        assert self.slot is not None
        tokens_in, tokens_out = self.estimate(ctx)
        usd = 0.0
        if limits.usd:  # priced on the dearest target; unpriced ones cannot be charged
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
                ctx.route = dataclasses.replace(route, targets=tuple(priced))
        self.reservation = self.stage.budgets.reserve(self.slot, limits, usd,
                                                      tokens_in + tokens_out)
        if self.reservation.warning is not None:
            if ctx.reply_headers is None:
                ctx.reply_headers = {}
            ctx.reply_headers[WARNING_HEADER] = self.reservation.warning

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
            budgets.settle(held, held.usd if usd is None else usd,
                           held.tokens if tokens is None else tokens)
        if self.slot is not None:
            budgets.leave(self.slot)
            self.slot = None


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
