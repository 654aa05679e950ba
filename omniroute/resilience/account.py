"""One connection as resilience sees it: its statistics, breaker and limiter in one place.

An :class:`Account` holds what a request needs of one connection (an upstream
account): its statistics record (:class:`~omniroute.resilience.stats.ConnectionStats`,
which also holds its cooldown and terminal state), its provider's
:class:`~omniroute.resilience.breaker.Breaker` and its
:class:`~omniroute.resilience.limits.Limiter` (None without limits). The
:class:`~omniroute.resilience.core.Resilience` builds it the first time it sees the
connection object and again when that object changes (a reload with new settings
makes a new one), so a request finds every handle in one lookup instead of one per
concern, and never re-reads the connection's settings. The records it points to are
the state store's own, changed in place by everyone (a shared store included), so
an account never holds a stale copy.
"""

from __future__ import annotations

from omniroute.resilience.breaker import Breaker
from omniroute.resilience.limits import Limiter
from omniroute.resilience.state import BreakerState
from omniroute.resilience.stats import ConnectionStats
from omniroute.routing import Target

#: why a target is left out of a plan
TERMINAL, COOLING, BREAKER_OPEN = "terminal", "cooling", "breaker_open"


class Account:
    """The resilience handles of one connection (see the module docstring)."""

    __slots__ = ("breaker", "breaker_state", "connection", "id", "limiter", "oauth", "stats")

    def __init__(self, target: Target, stats: ConnectionStats, breaker: Breaker,
                 limiter: Limiter | None) -> None:
        """
        :param target: a target on the connection (its connection object and provider).
        :param stats: the connection's record in the state store.
        :param breaker: its provider prefix's breaker.
        :param limiter: its limiter (None: no limits).
        """
        self.connection = target.connection
        self.id = target.connection.id
        self.stats = stats
        self.breaker = breaker
        self.breaker_state: BreakerState = breaker.data
        self.limiter = limiter
        #: a subscription (OAuth) account: one credential refresh on 401/403
        self.oauth = target.provider.auth_kind == "oauth"

    def rest(self, now: float) -> str | None:
        """Why it cannot be tried now (:data:`TERMINAL`, :data:`COOLING`,
        :data:`BREAKER_OPEN`), or None."""
        stats = self.stats
        if stats.terminal_reason is not None:
            return TERMINAL
        if stats.cooling(now):
            return COOLING
        if not self.breaker.available(now):
            return BREAKER_OPEN
        return None

