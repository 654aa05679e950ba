"""One request's view of resilience: its plan, one attempt of a target, a failure's verdict.

:class:`Attempt` is what :meth:`Resilience.attempt
<omniroute.resilience.core.Resilience.attempt>` returns: an async context manager
around one try of one target (breaker admission, a slot of the account's limits,
statistics, and the success or failure recorded on leaving).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Self

from omniroute.errors import CircuitOpen, UpstreamError, UpstreamStatusError
from omniroute.resilience.breaker import Breaker, Ticket
from omniroute.resilience.classify import Classification
from omniroute.resilience.limits import Slot
from omniroute.resilience.stats import ConnectionStats
from omniroute.resilience.strategies import DEFAULT
from omniroute.routing import Target

if TYPE_CHECKING:
    from omniroute.resilience.core import Resilience


@dataclass(frozen=True, slots=True)
class Plan:
    """The targets to try for one request, in order."""

    targets: tuple[Target, ...]
    #: targets left out, with why (``"terminal"``, ``"cooling"``, ``"breaker_open"``)
    skipped: tuple[tuple[Target, str], ...] = ()
    strategy: str = DEFAULT
    #: the target put first because the session was bound to its connection
    sticky: Target | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """What a failure means for this request and for the connection."""

    #: try the next target (False: hand the error back to the client)
    move_on: bool
    classification: Classification
    #: refresh the credentials and retry this target once (``attempt(..., refreshed=True)``)
    refresh: bool = False
    #: seconds the connection now rests (None: no cooldown)
    cooldown: float | None = None
    terminal_reason: str | None = None

    @property
    def kind(self) -> str:
        return self.classification.kind


class Attempt:
    """One try of one target; see :meth:`Resilience.attempt`.

    Its connection's statistics and its provider's breaker are looked up once, on
    entering, and kept to the end (a state store updates both in place).
    """

    def __init__(
        self, resilience: Resilience, target: Target, session_id: str | None, refreshed: bool
    ) -> None:
        self.target = target
        self.session_id = session_id
        self.refreshed = refreshed
        self.started: float | None = None
        #: seconds from the start to the first byte (``first_byte()``), if recorded
        self.ttft: float | None = None
        #: the verdict on a failure (set by ``failed()`` or by leaving with an upstream error)
        self.decision: Decision | None = None
        self._resilience = resilience
        self._ticket: Ticket | None = None
        self._slot: Slot | None = None
        self._stats: ConnectionStats | None = None
        self._breaker: Breaker | None = None
        self._done = False
        self._breaker_verdict = False

    async def __aenter__(self) -> Self:
        r, target = self._resilience, self.target
        now = r.clock.monotonic()
        breaker = self._breaker = r._breaker(target)
        ticket = breaker.admit(now)
        if ticket is None:
            wait = breaker.retry_in(now)
            raise CircuitOpen(f"Provider {breaker.key!r} is resting after repeated failures; "
                              f"retry in {wait:.0f}s.", key=breaker.key, retry_after=wait)
        if ticket.trial:  # a half-open trial slot is taken: other instances must count it
            r.state.changed("breakers", breaker.key)
        limiter = r._limiter(target)
        if limiter is not None:
            slot = limiter.acquire()
            try:
                await slot.__aenter__()
            except BaseException:
                if breaker.abandon(ticket):
                    r.state.changed("breakers", breaker.key)
                raise
            self._slot = slot
            now = r.clock.monotonic()  # after the wait for a slot
        self._ticket = ticket
        self.started = now
        stats = self._stats = r._stats(target)
        stats.started(now)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        r = self._resilience
        try:
            if not self._done:
                if exc is None:
                    self.succeeded()
                elif isinstance(exc, (UpstreamError, UpstreamStatusError)):
                    self.failed(exc)
        finally:
            (self._stats or r._stats(self.target)).finished()
            if self._slot is not None:
                self._slot.release()
            if not self._breaker_verdict:
                breaker = self._breaker or r._breaker(self.target)
                if breaker.abandon(self._ticket):
                    r.state.changed("breakers", breaker.key)

    def first_byte(self, lane: str = "stream") -> None:
        """The first byte (or event) arrived: record the time to first token.

        :param lane: ``"stream"``, or ``"json"`` when the first byte is a whole JSON
            answer; each lane of each model keeps its own recent times (hedging).
        """
        if self.ttft is None and self.started is not None:
            r = self._resilience
            self.ttft = r.clock.monotonic() - self.started
            (self._stats or r._stats(self.target)).first_byte(self.target.model, lane, self.ttft)

    def succeeded(self) -> None:
        """Record a success now (leaving the block normally does it too)."""
        if self._done:
            return
        self._done = self._breaker_verdict = True
        r, stats, breaker = self._resilience, self._stats, self._breaker
        if stats is None or breaker is None:  # not entered
            r.record_success(self.target, ttft=self.ttft, session_id=self.session_id)
        else:
            r.succeeded(self.target, stats, breaker, self.ttft, self.session_id)

    def failed(self, error: BaseException) -> Decision:
        """Record a failure now (e.g. a stream that broke after its first event)."""
        if self.decision is not None:
            return self.decision
        if self._done:
            raise RuntimeError("this attempt already recorded a success")
        self._done = True
        self.decision = self._resilience.record_failure(
            self.target, error, refreshed=self.refreshed)
        self._breaker_verdict = self.decision.classification.breaker
        return self.decision
