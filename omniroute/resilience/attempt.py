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
from omniroute.resilience.breaker import Ticket
from omniroute.resilience.classify import Classification
from omniroute.resilience.limits import Slot
from omniroute.resilience.strategies import DEFAULT
from omniroute.routing import Target

if TYPE_CHECKING:
    from omniroute.resilience.account import Account
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

    It works on its connection's :class:`~omniroute.resilience.account.Account`
    (statistics, breaker, limiter), which the resilience found in one lookup; a state
    store updates their records in place. A closed breaker is passed without a ticket
    and an account without limits without a slot: the common case reads two fields.
    """

    __slots__ = ("_account", "_done", "_resilience", "_slot", "_ticket",
                 "decision", "refreshed", "session_id", "started", "target", "ttft")

    def __init__(
        self, resilience: Resilience, account: Account, target: Target,
        session_id: str | None, refreshed: bool,
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
        self._account = account
        #: a half-open trial's, until the breaker has this attempt's verdict (a closed
        #: breaker gives none): one left at the end gives its trial slot back
        self._ticket: Ticket | None = None
        self._slot: Slot | None = None
        self._done = False

    async def __aenter__(self) -> Self:
        r, account = self._resilience, self._account
        now = r.clock.monotonic()
        if account.breaker_state.opened_at is not None:  # open, or half-open: a trial?
            self._admit(now)
        limiter = account.limiter
        if limiter is not None:
            slot = limiter.acquire()
            try:
                await slot.__aenter__()
            except BaseException:
                self._abandon()
                raise
            self._slot = slot
            now = r.clock.monotonic()  # after the wait for a slot
        self.started = now
        account.stats.started(now)
        return self

    def enter(self) -> bool:
        """Enter without waiting, when nothing can make it wait: the account has no
        limits (True; the breaker may still refuse, with ``CircuitOpen``). False: it has,
        and nothing was done: ``await attempt.__aenter__()`` instead (the slot may take a
        wait). Leave it the same way either way."""
        account = self._account
        if account.limiter is not None:
            return False
        now = self._resilience.clock.monotonic()
        if account.breaker_state.opened_at is not None:
            self._admit(now)
        self.started = now
        account.stats.started(now)
        return True

    def _admit(self, now: float) -> None:
        """Through a breaker that is not closed: a half-open trial slot, or ``CircuitOpen``."""
        breaker = self._account.breaker
        ticket = breaker.admit(now)
        if ticket is None:
            wait = breaker.retry_in(now)
            raise CircuitOpen(f"Provider {breaker.key!r} is resting after repeated failures; "
                              f"retry in {wait:.0f}s.", key=breaker.key, retry_after=wait)
        if ticket.trial:  # a half-open trial slot is taken: other instances must count it
            self._resilience.state.changed("breakers", breaker.key)
        self._ticket = ticket

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(exc)

    def end(self, exc: BaseException | None = None) -> None:
        """Leave the attempt (what ``__aexit__`` does, callable without awaiting): a
        success when ``exc`` is None, an upstream error's verdict, or nothing (another
        exception: a cancellation, a bug of ours); the slot and a trial are released."""
        account = self._account
        try:
            if not self._done:
                if exc is None:  # self.succeeded(), inline: every request
                    self._done, self._ticket = True, None
                    self._resilience.succeeded(account, self.ttft, self.session_id)
                elif isinstance(exc, (UpstreamError, UpstreamStatusError)):
                    self.failed(exc)
        finally:
            account.stats.finished()
            if self._slot is not None:
                self._slot.release()
            if self._ticket is not None:
                self._abandon()

    def _abandon(self) -> None:
        """No verdict on the provider: a half-open trial slot goes back."""
        breaker = self._account.breaker
        if breaker.abandon(self._ticket):
            self._resilience.state.changed("breakers", breaker.key)

    def first_byte(self, lane: str = "stream") -> None:
        """The first byte (or event) arrived: record the time to first token.

        :param lane: ``"stream"``, or ``"json"`` when the first byte is a whole JSON
            answer; each lane of each model keeps its own recent times (hedging).
        """
        if self.ttft is None and self.started is not None:
            ttft = self.ttft = self._resilience.clock.monotonic() - self.started
            self._account.stats.first_byte(self.target.model, lane, ttft)

    def succeeded(self) -> None:
        """Record a success now (leaving the block normally does it too)."""
        if self._done:
            return
        self._done, self._ticket = True, None
        self._resilience.succeeded(self._account, self.ttft, self.session_id)

    def failed(self, error: BaseException) -> Decision:
        """Record a failure now (e.g. a stream that broke after its first event)."""
        if self.decision is not None:
            return self.decision
        if self._done:
            raise RuntimeError("this attempt already recorded a success")
        self._done = True
        self.decision = self._resilience.record_failure(
            self.target, error, refreshed=self.refreshed)
        if self.decision.classification.breaker:
            self._ticket = None
        return self.decision
