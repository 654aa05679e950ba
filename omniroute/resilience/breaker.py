"""A circuit breaker per provider (keyed by a string such as the connection prefix).

* **closed** — requests flow; ``threshold`` consecutive failures that were the
  provider's doing (connection errors, timeouts, 408, 5xx) open it.
* **open** — nothing is sent for ``reset_after`` seconds.
* **half-open** — at most ``half_open_max`` trial requests at once; a success
  closes the breaker, a failure opens it again for another ``reset_after``.

Time comes from the caller (``now``: monotonic seconds), so tests move a
clock instead of sleeping. A trial that ends with no verdict (cancelled, or a
failure that says nothing about the provider) gives its slot back
(:meth:`Breaker.abandon`), so a half-open breaker never gets stuck.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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
    """One provider's circuit breaker."""

    def __init__(self, key: str, policy: BreakerPolicy) -> None:
        self.key = key
        self.policy = policy
        self.failures = 0
        self.opened_at: float | None = None
        self.trials = 0
        self.times_opened = 0
        self._half_open = False
        self._generation = 0

    def state(self, now: float) -> State:
        if self.opened_at is None:
            return "closed"
        if self._half_open or now >= self.opened_at + self.policy.reset_after:
            return "half_open"
        return "open"

    def available(self, now: float) -> bool:
        """Would a request get through now (without taking a trial slot)?"""
        state = self.state(now)
        if state == "half_open":
            return self.trials < self.policy.half_open_max
        return state == "closed"

    def retry_in(self, now: float) -> float:
        """Seconds until a request could get through (0 when it could now)."""
        if self.available(now):
            return 0.0
        assert self.opened_at is not None
        # half-open with every trial slot taken: a verdict is due soon; say "one reset period"
        return max(0.0, self.opened_at + self.policy.reset_after - now) or self.policy.reset_after

    def admit(self, now: float) -> Ticket | None:
        """Let a request through (``Ticket``) or refuse it (``None``)."""
        state = self.state(now)
        if state == "closed":
            return Ticket(False, self._generation)
        if state == "half_open" and self.trials < self.policy.half_open_max:
            self._half_open = True
            self.trials += 1
            return Ticket(True, self._generation)
        return None

    def success(self) -> None:
        self.failures = 0
        if self.opened_at is not None:
            self._close()

    def failure(self, now: float) -> None:
        self.failures += 1
        state = self.state(now)
        if state == "half_open" or (state == "closed" and self.failures >= self.policy.threshold):
            self._open(now)

    def abandon(self, ticket: Ticket | None) -> None:
        """A request ended without a verdict on the provider: free its trial slot."""
        if ticket is not None and ticket.trial and ticket.generation == self._generation:
            self.trials = max(0, self.trials - 1)

    def reset(self) -> None:
        self.failures = 0
        self._close()

    def _open(self, now: float) -> None:
        self.opened_at = now
        self.times_opened += 1
        self._half_open = False
        self.trials = 0
        self._generation += 1

    def _close(self) -> None:
        self.opened_at = None
        self._half_open = False
        self.trials = 0
        self._generation += 1

    def snapshot(self, now: float) -> dict[str, Any]:
        return {
            "key": self.key,
            "state": self.state(now),
            "consecutive_failures": self.failures,
            "threshold": self.policy.threshold,
            "reset_after": self.policy.reset_after,
            "half_open_max": self.policy.half_open_max,
            "trials_in_flight": self.trials,
            "retry_in": round(self.retry_in(now), 3),
            "times_opened": self.times_opened,
        }
