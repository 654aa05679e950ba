"""A request's plan: a route's targets in the strategy's order, minus those that rest.

The :class:`Planner` is the planning half of
:class:`~omniroute.resilience.core.Resilience` (which hands a request's plan over to
it): it asks the strategy (:mod:`.strategies`) for an order, leaves out the targets
whose account rests (terminal, cooling down, behind an open breaker), puts the
session's sticky connection first while it is usable, and cuts the plan at
``max_attempts``.

A :class:`Kept` plan is a route's plan made when every one of its accounts was
:func:`clear` (no cooldown recorded, not terminal, breaker closed) with a strategy
whose order depends on nothing else (``priority``; ``fill-first`` without limits;
any strategy for one target). While its accounts stay clear it is the answer again,
as it is: checking them is a few attribute reads per target. The first account that
rests (here or, through a shared store, on another instance) sends the next request
back to the full planning, which keeps a new plan once all are clear again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omniroute.config import Settings
from omniroute.pricing import PriceBook
from omniroute.resilience.account import Account
from omniroute.resilience.attempt import Plan
from omniroute.resilience.clock import Clock
from omniroute.resilience.sessions import SessionStore
from omniroute.resilience.stats import ConnectionStats
from omniroute.resilience.strategies import DEFAULT, STRATEGIES, Context, Rotation, normalize
from omniroute.routing import Target

log = logging.getLogger(__name__)

#: routes whose plans are kept (past it they are all forgotten, as the router's routes)
PLANS_KEPT = 4096


def clear(accounts: tuple[Account, ...]) -> bool:
    """Nothing recorded could make any of ``accounts`` rest: no cooldown set (not even
    one that has run out), no terminal state, breaker closed."""
    for account in accounts:
        stats = account.stats
        if (stats.cooling_until is not None or stats.terminal_reason is not None
                or account.breaker_state.opened_at is not None):
            return False
    return True


@dataclass(frozen=True, slots=True)
class Kept:
    """A route's plan, kept while :func:`clear` holds for its accounts."""

    #: the route's targets (the key is their ``id``: held here, it stays unique)
    targets: tuple[Target, ...]
    #: the strategy the plan was asked with (None: the setting's)
    strategy: str | None
    accounts: tuple[Account, ...]
    #: every target, in the strategy's order (a session's connection may come from past
    #: ``max_attempts``)
    ordered: tuple[Target, ...]
    plan: Plan


class Planner:
    """Plans a request's targets, and keeps a route's plan while nothing in it rests."""

    def __init__(
        self,
        settings: Settings,
        *,
        account: Callable[[Target], Account],
        sessions: SessionStore,
        clock: Clock,
        rng: random.Random,
        prices: PriceBook,
    ) -> None:
        """
        :param settings: the runtime settings (``account_strategy``, ``max_attempts``,
            ``round_robin_sticky``).
        :param account: a target's :class:`~omniroute.resilience.account.Account`.
        :param sessions: the sticky sessions (a session's connection goes first).
        :param clock: time source (whether a rest is over).
        :param rng: randomness for the random strategies.
        :param prices: the prices ``cost-optimized`` orders by.
        """
        self.settings = settings
        self.account = account
        self.sessions = sessions
        self.clock = clock
        self.rng = rng
        self.prices = prices
        self.rotation = Rotation()
        #: the plans of routes whose accounts were all clear, by ``id(targets)``
        self._kept: dict[int, Kept] = {}
        self._warned: set[str] = set()

    def configure(self, settings: Settings) -> None:
        """Apply (changed) settings: the kept plans go (``max_attempts``, the strategy)."""
        self.settings = settings
        self._kept.clear()

    def forget(self) -> None:
        """Forget the kept plans (connections were reloaded or removed)."""
        self._kept.clear()

    def plan(
        self, targets: Sequence[Target], strategy: str | None = None,
        session_id: str | None = None,
    ) -> Plan:
        """The targets to try, in order (see :meth:`Resilience.plan
        <omniroute.resilience.core.Resilience.plan>`).

        A route's plan is kept while every account in it is clear (see the module
        docstring), and given again as it is: the common request pays one lookup and
        a few attribute reads per target."""
        kept = self._kept.get(id(targets))
        if kept is not None and kept.targets is targets and kept.strategy == strategy:
            for account in kept.accounts:  # clear(kept.accounts), inline: every request
                stats = account.stats
                if (stats.cooling_until is not None or stats.terminal_reason is not None
                        or account.breaker_state.opened_at is not None):
                    break
            else:
                if session_id is None:
                    return kept.plan
                return self._sticky_first(kept.ordered, session_id, kept.plan)
        return self.plan_in_full(targets, strategy, session_id)

    def plan_in_full(self, targets: Sequence[Target], strategy: str | None,
                     session_id: str | None) -> Plan:
        """The plan made afresh (and kept when it may be): the strategy's order, then
        each target's rest."""
        name = normalize(strategy)
        if strategy and name is None and strategy not in self._warned:
            self._warned.add(strategy)
            log.warning("unknown strategy %r; using %r", strategy, self.settings.account_strategy)
        name = name or normalize(self.settings.account_strategy) or DEFAULT
        accounts = tuple(map(self.account, targets))
        if len(targets) == 1:  # nothing to order
            ordered: Sequence[Target] = targets
        else:
            ctx = Context(self.rng, self._stats, self._saturated, self.prices.blended,
                          self.rotation, self.settings.round_robin_sticky)
            ordered = STRATEGIES[name](targets, ctx)
        now = self.clock.monotonic()
        usable: list[Target] = []
        skipped: list[tuple[Target, str]] = []
        for target in ordered:
            reason = self.account(target).rest(now)
            if reason is None:
                usable.append(target)
            else:
                skipped.append((target, reason))
        plan = Plan(tuple(usable[: self.settings.max_attempts]), tuple(skipped), name)
        if isinstance(targets, tuple) and self._keeps(name, accounts) and clear(accounts):
            if len(self._kept) >= PLANS_KEPT:
                self._kept.clear()
            self._kept[id(targets)] = Kept(targets, strategy, accounts, tuple(usable), plan)
        if session_id is None:
            return plan
        return self._sticky_first(usable, session_id, plan)

    @staticmethod
    def _keeps(strategy: str, accounts: tuple[Account, ...]) -> bool:
        """Whether ``strategy`` orders these accounts the same way while they are clear
        (the others read load, latency, rotation or chance, which change per request)."""
        return (len(accounts) == 1 or strategy == "priority" or (
            strategy == "fill-first" and all(a.limiter is None for a in accounts)))

    def _sticky_first(self, usable: Sequence[Target], session_id: str, plan: Plan) -> Plan:
        """``plan`` with the target of the session's connection first, when it is usable."""
        bound = self.sessions.get(session_id)
        if bound is None:
            return plan
        for sticky in usable:
            if sticky.connection.id == bound:
                rest = [t for t in usable if t is not sticky]
                return Plan((sticky, *rest)[: self.settings.max_attempts], plan.skipped,
                            plan.strategy, sticky)
        return plan

    def _stats(self, target: Target) -> ConnectionStats:
        return self.account(target).stats

    def _saturated(self, target: Target) -> bool:
        limiter = self.account(target).limiter
        return limiter is not None and limiter.saturated()
