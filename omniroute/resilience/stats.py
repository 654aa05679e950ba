"""What the gateway knows about one connection: load, errors, latency, rest.

The strategies read these numbers to order targets; ``/api/rate-limits``
shows them (:meth:`ConnectionStats.snapshot`). All times are the injected
clock's monotonic seconds; snapshots convert them to wall-clock times.

Besides the moving average of the time to first token, a connection keeps
its last :data:`RECENT` first-byte times per model and lane (``"stream"``,
or ``"json"`` where the first byte is the whole answer), for a percentile:
hedging races the next target once a call is well past its own p95
(:meth:`ConnectionStats.ttft_p95`). They are plain lists of seconds, like
every other field a plain value a state store can copy.

The updates every request makes (:meth:`~ConnectionStats.started`,
:meth:`~ConnectionStats.first_byte`, :meth:`~ConnectionStats.succeeded`,
:meth:`~ConnectionStats.finished`) clamp at zero with a comparison, not ``max()``: the
same value (for NaN too), without the builtin's call, about 1.2k instructions each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import ceil
from typing import Any

#: the terminal reason of an OAuth account whose renewal was refused for good: only a
#: new sign-in clears it (an operator reset does not, it cannot revive the tokens)
NEEDS_SIGN_IN = "needs_sign_in"
#: weight of the newest sample in the moving averages
EWMA_ALPHA = 0.2
#: first-byte times kept per model and lane, and the fewest that make a percentile
RECENT, RECENT_MIN = 64, 8
#: models and lanes with times of their own, per connection (the oldest goes first)
RECENT_KEYS = 32


def ewma(previous: float | None, sample: float, alpha: float = EWMA_ALPHA) -> float:
    return sample if previous is None else previous + alpha * (sample - previous)


def percentile(samples: list[float], p: float) -> float | None:
    """The nearest-rank ``p`` percentile (0..100); None below :data:`RECENT_MIN` samples."""
    if len(samples) < RECENT_MIN:
        return None
    ordered = sorted(samples)
    return ordered[max(0, ceil(p / 100 * len(ordered)) - 1)]


@dataclass(slots=True)
class ConnectionStats:
    """Counters and state of one connection (an upstream account)."""

    connection_id: str
    in_flight: int = 0
    total_requests: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    #: moving average of failures that were the upstream's doing (0..1)
    error_rate: float = 0.0
    #: moving average of the time to first token, seconds (None: never measured)
    ttft: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    last_used_at: float | None = None
    cooling_until: float | None = None
    terminal_reason: str | None = None
    #: times another target answered first while this one was past its hedge bound
    outrun: int = 0
    #: the last :data:`RECENT` first-byte times, oldest first, by ``"<lane> <model>"``
    first_bytes: dict[str, list[float]] = field(default_factory=dict)

    def started(self, now: float) -> None:
        self.in_flight += 1
        self.total_requests += 1
        self.last_used_at = now

    def finished(self) -> None:
        in_flight = self.in_flight - 1  # max(0, in_flight - 1): see the module docstring
        self.in_flight = in_flight if in_flight > 0 else 0

    def succeeded(self, ttft: float | None) -> None:
        """A success clears the failure streak and any cooldown (not a terminal state)."""
        self.successes += 1
        self.consecutive_failures = 0
        self.cooling_until = None
        rate = self.error_rate
        if rate:  # ewma(rate, 0.0), inline: once per request
            self.error_rate = rate + EWMA_ALPHA * (0.0 - rate)
        if ttft is not None:
            sample, previous = ttft if ttft > 0.0 else 0.0, self.ttft
            self.ttft = sample if previous is None else previous + EWMA_ALPHA * (sample - previous)

    def first_byte(self, model: str, lane: str, seconds: float) -> None:
        """A first byte of ``model`` on ``lane`` came ``seconds`` after the call started."""
        key = f"{lane} {model}"
        times = self.first_bytes.get(key)
        if times is None:
            if len(self.first_bytes) >= RECENT_KEYS:
                del self.first_bytes[next(iter(self.first_bytes))]
            times = self.first_bytes[key] = []
        elif len(times) >= RECENT:
            del times[0]  # a short list: bounded work per request
        times.append(seconds if seconds > 0.0 else 0.0)

    def outran(self, model: str, lane: str, seconds: float) -> None:
        """Raced past its hedge bound, it lost: no first byte after ``seconds``.

        Not a failure, but a first-byte time of at least ``seconds`` for the p95
        and for the moving average, so the latency strategies see it too.
        """
        self.outrun += 1
        self.first_byte(model, lane, seconds)
        self.ttft = ewma(self.ttft, max(0.0, seconds))

    def ttft_p95(self, model: str, lane: str) -> float | None:
        """The p95 of the recent first-byte times of ``model`` on ``lane`` (None: too few)."""
        times = self.first_bytes.get(f"{lane} {model}")
        return None if times is None else percentile(times, 95)

    def failed(self, now: float, message: str, *, counted: bool) -> None:
        """Record a failure; ``counted`` ones were the connection's fault and add to the streak."""
        self.failures += 1
        self.last_error = message[:500]
        self.last_error_at = now
        if counted:
            self.consecutive_failures += 1
            self.error_rate = ewma(self.error_rate, 1.0)

    def cool(self, until: float) -> None:
        self.cooling_until = max(until, self.cooling_until or until)

    def cooling(self, now: float) -> bool:
        return self.cooling_until is not None and self.cooling_until > now

    def cooldown_left(self, now: float) -> float:
        return max(0.0, (self.cooling_until or now) - now)

    def reset(self) -> None:
        """Operator reset: the rest and the terminal state go (but "needs sign-in", which
        only a new sign-in ends); the history stays."""
        self.consecutive_failures = 0
        self.cooling_until = None
        if self.terminal_reason != NEEDS_SIGN_IN:
            self.terminal_reason = None
        self.error_rate = 0.0

    def snapshot(self, now: float, wall_offset: float) -> dict[str, Any]:
        """Plain JSON-able numbers; times as wall-clock epoch seconds."""

        def wall(t: float | None) -> float | None:
            return None if t is None else round(t + wall_offset, 3)

        cooling = self.cooling(now)
        return {
            "id": self.connection_id,
            "in_flight": self.in_flight,
            "total_requests": self.total_requests,
            "successes": self.successes,
            "failures": self.failures,
            "consecutive_failures": self.consecutive_failures,
            "error_rate": round(self.error_rate, 4),
            "ttft_ms": None if self.ttft is None else round(self.ttft * 1000, 1),
            "last_error": self.last_error,
            "last_error_at": wall(self.last_error_at),
            "last_used_at": wall(self.last_used_at),
            "cooling_until": wall(self.cooling_until) if cooling else None,
            "cooldown_left": round(self.cooldown_left(now), 3),
            "terminal_reason": self.terminal_reason,
            "outrun": self.outrun,
        }
