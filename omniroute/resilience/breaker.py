"""A circuit breaker per provider (keyed by a string such as the connection prefix).

* **closed** — requests flow; ``threshold`` consecutive failures that were the
  provider's doing (connection errors, timeouts, 408, 5xx) open it.
* **open** — nothing is sent for ``reset_after`` seconds.
* **half-open** — at most ``half_open_max`` trial requests at once; a success
  closes the breaker, a failure opens it again for another ``reset_after``.

Time comes from the caller (``now``: monotonic seconds), so tests move a
clock instead of sleeping. A trial that ends with no verdict (cancelled, or a
failure that says nothing about the provider) gives its slot back
(:meth:`Breaker.abandon`), so a half-open breaker never gets stuck. The
state itself is a :class:`~omniroute.resilience.state.BreakerState` record,
kept in the resilience state store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from omniroute.resilience.state import BreakerState

State = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    threshold: int = 12
    reset_after: float = 30.0
    half_open_max: int = 1


@dataclass(frozen=True, slots=True)
class Ticket:
    """Proof of a request let through: whether it is a half-open trial, and of which opening."""

    trial: bool
    generation: int


class Breaker:
    """One provider's circuit breaker: its policy, over a :class:`BreakerState` record."""

    def __init__(self, key: str, policy: BreakerPolicy, data: BreakerState | None = None) -> None:
        """
        :param data: the state record (from a :class:`~omniroute.resilience.state.StateStore`;
            a fresh one when omitted). The breaker changes it in place.
        """
        self.key = key
        self.policy = policy
        self.data = data if data is not None else BreakerState()

    @property
    def failures(self) -> int:
        return self.data.failures

    @property
    def opened_at(self) -> float | None:
        return self.data.opened_at

    @property
    def trials(self) -> int:
        return self.data.trials

    @property
    def times_opened(self) -> int:
        return self.data.times_opened

    def state(self, now: float) -> State:
        d = self.data
        if d.opened_at is None:
            return "closed"
        if d.half_open or now >= d.opened_at + self.policy.reset_after:
            return "half_open"
        return "open"

    def available(self, now: float) -> bool:
        """Would a request get through now (without taking a trial slot)?"""
        state = self.state(now)
        if state == "half_open":
            return self.data.trials < self.policy.half_open_max
        return state == "closed"

    def retry_in(self, now: float) -> float:
        """Seconds until a request could get through (0 when it could now)."""
        if self.available(now):
            return 0.0
        opened_at = self.data.opened_at
        assert opened_at is not None
        # half-open with every trial slot taken: a verdict is due soon; say "one reset period"
        return max(0.0, opened_at + self.policy.reset_after - now) or self.policy.reset_after

    def admit(self, now: float) -> Ticket | None:
        """Let a request through (``Ticket``) or refuse it (``None``)."""
        state = self.state(now)
        d = self.data
        if state == "closed":
            return Ticket(False, d.generation)
        if state == "half_open" and d.trials < self.policy.half_open_max:
            d.half_open = True
            d.trials += 1
            return Ticket(True, d.generation)
        return None

    def success(self) -> bool:
        """A success: the streak ends and an open breaker closes. True when that
        changed anything (a transition worth telling other instances about)."""
        d = self.data
        if d.opened_at is not None:
            d.failures = 0
            self._close()
            return True
        if d.failures:
            d.failures = 0
            return True
        return False

    def failure(self, now: float) -> None:
        d = self.data
        d.failures += 1
        state = self.state(now)
        if state == "half_open" or (state == "closed" and d.failures >= self.policy.threshold):
            self._open(now)

    def abandon(self, ticket: Ticket | None) -> bool:
        """A request ended without a verdict on the provider: free its trial slot.
        True when a slot was freed."""
        if ticket is None or not ticket.trial:
            return False
        d = self.data
        if ticket.generation != d.generation or not d.trials:
            return False
        d.trials -= 1
        return True

    def reset(self) -> None:
        self.data.failures = 0
        self._close()

    def _open(self, now: float) -> None:
        d = self.data
        d.opened_at = now
        d.times_opened += 1
        d.half_open = False
        d.trials = 0
        d.generation += 1

    def _close(self) -> None:
        d = self.data
        d.opened_at = None
        d.half_open = False
        d.trials = 0
        d.generation += 1

    def snapshot(self, now: float) -> dict[str, Any]:
        d = self.data
        return {
            "key": self.key,
            "state": self.state(now),
            "consecutive_failures": d.failures,
            "threshold": self.policy.threshold,
            "reset_after": self.policy.reset_after,
            "half_open_max": self.policy.half_open_max,
            "trials_in_flight": d.trials,
            "retry_in": round(self.retry_in(now), 3),
            "times_opened": d.times_opened,
        }
