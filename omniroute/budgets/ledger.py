"""The live state of every limited key: windows, reservations, rates, requests in flight.

Everything on the request path is synchronous and in memory: taking a slot,
reserving an estimate, settling the real cost. A background task
(:meth:`Budgets.run`) writes what changed to the :class:`SpendStore` every
``interval`` seconds and reads the totals back (other workers add theirs), so
a restart keeps the window's spend and no request waits for the database.

Overspend is bounded: a request is admitted only while the window's spend
is under the limit, and only when what requests in flight have reserved and
its own estimate (prompt and ``max_tokens``) fit in what is left, or when
nothing else of the key is in flight (so one request can always run while
there is budget left); it reserves its estimate in the same synchronous
step. So in one process the spend passes the limit by at most the cost of
one request admitted alone, plus what requests cost beyond their estimates.
Across processes each one sees the others' settled spend only after their
next sync and then its own (see ``docs/budgets.md``). When the store fails,
keys with a budget are refused with a 503 until a sync succeeds again (fail
closed). About hourly the task also drops windows older than
:data:`KEEP_SPAN` from the store.

Several instances sharing state (``state_url``) are given a :class:`SharedLedger`:
the budgets stage then admits a key's requests there, atomically across every
instance (its concurrency and rate, then its reservation against the windows'
spend), and counts them here only as bookkeeping (``checked=True``). This ledger
still settles every request, persists the spend and is what decides while the
shared one cannot be reached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from omniroute.budgets.limits import Limits
from omniroute.budgets.spend import Delta, SpendStore, Totals
from omniroute.budgets.windows import DAY, iso, window
from omniroute.errors import BudgetExceeded, BudgetUnavailable, RateLimited

if TYPE_CHECKING:
    from omniroute.resilience.clock import Clock
    from omniroute.sharedstate import Pending, RequestBatch

log = logging.getLogger(__name__)

RPM_WINDOW = 60.0
#: the retry hint when only concurrency (or other requests' reservations) stand in the way
BUSY_RETRY_AFTER = 1.0
#: windows read back on a sync: the longest (a month) and a margin
_LOAD_SPAN = 32 * DAY
#: windows kept in the store: those read back, and the longest window again (reports)
KEEP_SPAN = _LOAD_SPAN + 31 * DAY
#: seconds between two prunes of the store's old windows
PRUNE_EVERY = 3600.0


@dataclass(slots=True)
class Window:
    """One key's spend in one budget window: the store's totals plus what is not written yet."""

    period: str
    start: float
    end: float
    reset_minutes: int
    #: as last read from the store (every process's writes)
    base_usd: float = 0.0
    base_tokens: int = 0
    base_requests: int = 0
    #: settled here since the last write
    usd: float = 0.0
    tokens: int = 0
    requests: int = 0
    #: the warning was logged in this window
    warned: bool = False

    @property
    def spent_usd(self) -> float:
        return self.base_usd + self.usd

    @property
    def spent_tokens(self) -> int:
        return self.base_tokens + self.tokens

    @property
    def spent_requests(self) -> int:
        return self.base_requests + self.requests

    @property
    def dirty(self) -> bool:
        return bool(self.usd or self.tokens or self.requests)


@dataclass(slots=True)
class KeyState:
    """What one limited key has running now."""

    key_id: str
    in_flight: int = 0
    #: monotonic times of the requests started in the last minute
    starts: deque[float] = field(default_factory=deque)
    reserved_usd: float = 0.0
    reserved_tokens: int = 0
    #: reservations held now (0: a request may run alone while under the limit)
    held: int = 0
    windows: dict[str, Window] = field(default_factory=dict)


@dataclass(slots=True)
class Reservation:
    """What one request set aside; :meth:`Budgets.settle` replaces it with the real spend."""

    state: KeyState
    limits: Limits
    usd: float
    tokens: int
    #: ``X-OmniRoute-Budget-Warning`` for this answer, when spend is past the threshold
    warning: str | None = None
    #: the :class:`SharedLedger`'s own reservation, when it admitted the request
    handle: object = None


class SharedLedger(Protocol):
    """Per-key admission shared between instances, each step atomic where it is kept."""

    async def enter(self, key_id: str, limits: Limits) -> bool:
        """Take a slot of the key's ``concurrency`` and ``rpm`` across instances.

        :returns: True when taken (:meth:`leave` gives it back); False when the shared
            counters cannot be reached (this instance's ledger decides).
        :raises RateLimited: the key is at one of its limits (nothing was taken).
        """

    async def reserve(self, state: KeyState, limits: Limits, usd: float,
                      tokens: int) -> object | None:
        """Admit a request against the key's windows and reserve its estimate, like
        :meth:`Budgets.reserve` but against every instance's spend and reservations.

        :returns: the reservation's handle (for :meth:`settle`); None when the shared
            counters cannot be reached (this instance's ledger decides).
        :raises BudgetExceeded: a window cannot admit it.
        :raises BudgetUnavailable: unreachable, and ``budget_fail_closed`` is on.
        """

    def prefetch_enter(self, batch: RequestBatch, key_id: str, limits: Limits) -> Pending[bool]:
        """:meth:`enter`, queued on a request's batch (its answer, once sent, is the same)."""

    def prefetch_reserve(self, batch: RequestBatch, state: KeyState, limits: Limits, usd: float,
                         tokens: int) -> Pending[object | None]:
        """:meth:`reserve`, queued on a request's batch after :meth:`prefetch_enter`: it
        runs only when that slot was taken (or the key has no rate limits)."""

    def settle(self, handle: object, usd: float, tokens: int, *,
               leave: str | None = None) -> None:
        """The request is over: its reservation gives way to its spend (queued).

        :param leave: also give back the slot :meth:`enter` took for this key id, in the
            same write (as :meth:`leave` would: the request's writes after its answer are
            one command, not two).
        """

    def leave(self, key_id: str) -> None:
        """Give back a slot :meth:`enter` took (queued)."""


class Budgets:
    """Per-key budgets and limits, in memory, persisted in the background.

    :param store: where spend survives restarts (:class:`SqliteSpendStore`).
    :param clock: wall time for windows, monotonic time for the requests-per-minute count.
    :param interval: seconds between background syncs with the store.
    :param shared: admits requests across instances (None: this ledger decides alone).
    """

    def __init__(self, store: SpendStore, clock: Clock, *, interval: float = 1.0,
                 shared: SharedLedger | None = None) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.shared = shared
        self.keys: dict[str, KeyState] = {}
        #: False while the store fails: keys with a budget are refused (503)
        self.healthy = False
        self._loaded: Totals = {}
        #: windows that ended with spend not written yet
        self._retired: list[tuple[str, Window]] = []
        #: spend given to the store whose write failed, under its batch id: it may have
        #: been stored all the same (the acknowledgement lost), so it is written again as
        #: it was, under the same id (the store adds a batch once), before anything newer
        self._unsent: tuple[str, list[Delta]] | None = None
        self._lock = asyncio.Lock()
        #: monotonic time of the next prune of old windows (the first sync loop prunes)
        self._prune_at = 0.0

    # ------------------------------------------------------------------ the request path

    def state(self, key_id: str) -> KeyState:
        state = self.keys.get(key_id)
        if state is None:
            state = self.keys[key_id] = KeyState(key_id)
        return state

    def enter(self, key_id: str, limits: Limits, *, checked: bool = False) -> KeyState:
        """Take a slot: one more request in flight and started this minute, or raise 429.

        :param checked: the :class:`SharedLedger` admitted it already: only count it.
        """
        state = self.state(key_id)
        if checked:
            if limits.rpm is not None:
                state.starts.append(self.clock.monotonic())
            state.in_flight += 1
            return state
        if limits.concurrency is not None and state.in_flight >= limits.concurrency:
            raise RateLimited(
                f"This API key already has {state.in_flight} requests in flight, its limit "
                f"is {limits.concurrency}; retry when one has finished.",
                retry_after=BUSY_RETRY_AFTER, code="concurrency_limit_exceeded")
        if limits.rpm is not None:
            now = self.clock.monotonic()
            starts = state.starts
            while starts and starts[0] <= now - RPM_WINDOW:
                starts.popleft()
            if len(starts) >= limits.rpm:
                raise RateLimited(
                    f"This API key is limited to {limits.rpm} requests per minute.",
                    retry_after=starts[len(starts) - limits.rpm] + RPM_WINDOW - now,
                    code="rate_limit_exceeded")
            starts.append(now)
        state.in_flight += 1
        return state

    def leave(self, state: KeyState) -> None:
        """The request that :meth:`enter` admitted is over."""
        state.in_flight -= 1

    def reserve(self, state: KeyState, limits: Limits, usd: float, tokens: int, *,
                checked: bool = False) -> Reservation:
        """Admit a request against the key's windows and set its estimate aside, or raise.

        A window admits it when its spend is under the limit and either the
        reservations in flight and this estimate fit in what is left, or no other
        request of the key holds a reservation.

        :param checked: the :class:`SharedLedger` admitted it already: only set the
            estimate aside (the warning still comes from this ledger's numbers).

        :raises BudgetExceeded: a window cannot admit it (429, ``Retry-After`` up to
            the reset, or 1 s when only requests in flight stand in the way).
        :raises BudgetUnavailable: the store is failing (503).
        """
        if not self.healthy and not checked:
            raise BudgetUnavailable(
                "Budgets cannot be checked now (the budget store is failing); requests of "
                "keys with a budget are refused until it recovers.", headers={
                    "Retry-After": str(max(1, round(self.interval)))})
        now = self.clock.time()
        alone = state.held == 0
        refusal: BudgetExceeded | None = None
        refusal_end = 0.0
        warnings: list[str] = []
        for period in limits.periods:
            w = self.window(state, limits, period, now)
            limit = limits.usd.get(period)
            if limit is not None:
                spent = w.spent_usd
                if not _admits(spent, state.reserved_usd, usd, limit, alone):
                    if w.end > refusal_end:
                        refusal, refusal_end = exceeded(
                            w, now, "USD", spent, state.reserved_usd, usd, limit), w.end
                elif spent >= limits.warn_at * limit:
                    warnings.append(f"{period} ${spent:.2f} of ${limit:.2f} "
                                    f"({spent / limit:.0%}), resets {iso(w.end)}"
                                    if limit else f"{period} budget is 0")
            cap = limits.tokens.get(period)
            if cap is not None and w.end > refusal_end and not _admits(
                    w.spent_tokens, state.reserved_tokens, tokens, cap, alone):
                refusal, refusal_end = exceeded(
                    w, now, "tokens", w.spent_tokens, state.reserved_tokens, tokens, cap), w.end
        if refusal is not None and not checked:
            raise refusal
        state.reserved_usd += usd
        state.reserved_tokens += tokens
        state.held += 1
        return Reservation(state, limits, usd, tokens, "; ".join(warnings) or None)

    def settle(self, reservation: Reservation, usd: float, tokens: int) -> None:
        """The request is over: its reservation gives way to what it really spent."""
        state, limits = reservation.state, reservation.limits
        state.reserved_usd = max(0.0, state.reserved_usd - reservation.usd)
        state.reserved_tokens = max(0, state.reserved_tokens - reservation.tokens)
        state.held = max(0, state.held - 1)
        reservation.usd = reservation.tokens = 0
        now = self.clock.time()
        for period in limits.periods:
            w = self.window(state, limits, period, now)
            w.usd += usd
            w.tokens += tokens
            w.requests += 1
            limit = limits.usd.get(period)
            if limit is not None and not w.warned and w.spent_usd >= limits.warn_at * limit:
                w.warned = True
                log.warning("API key %s passed %.0f%% of its %s budget: $%.4f of $%.2f "
                            "(window resets %s)", state.key_id, limits.warn_at * 100, period,
                            w.spent_usd, limit, iso(w.end))

    def window(self, state: KeyState, limits: Limits, period: str, now: float) -> Window:
        """The key's current ``period`` window (a new one once the last has ended)."""
        w = state.windows.get(period)
        if w is not None and w.start <= now < w.end and w.reset_minutes == limits.reset_minutes:
            return w
        if w is not None and w.dirty:
            self._retired.append((state.key_id, w))  # written on the next sync
        start, end = window(period, now, limits.reset_minutes)
        w = Window(period, start, end, limits.reset_minutes)
        base = self._loaded.get((state.key_id, period, start))
        if base is not None:
            w.base_usd, w.base_tokens, w.base_requests = base
        state.windows[period] = w
        return w

    # ------------------------------------------------------------------ persistence

    async def start(self) -> None:
        """Load the current windows' spend (a failure leaves the budgets closed until a sync)."""
        try:
            await self.sync()
        except Exception:
            log.exception("could not load budget spend; keys with a budget are refused "
                          "until the store answers")

    async def run(self) -> None:
        """Sync every ``interval`` seconds until cancelled; about hourly, also drop the
        store's windows older than :data:`KEEP_SPAN`."""
        while True:
            await self.clock.sleep(self.interval)
            try:
                await self.sync()
            except Exception:
                log.exception("budget store sync failed; keys with a budget are refused "
                              "until it succeeds")
                continue
            if self.clock.monotonic() >= self._prune_at:
                await self.prune()

    async def prune(self) -> None:
        """Drop the windows that started more than :data:`KEEP_SPAN` ago (a failure is
        logged and tried again at the next prune)."""
        self._prune_at = self.clock.monotonic() + PRUNE_EVERY
        try:
            await self.store.prune(self.clock.time() - KEEP_SPAN)
        except Exception:
            log.exception("pruning old budget windows failed; trying again in an hour")

    async def close(self) -> None:
        """Write what is left (called after the last request)."""
        with contextlib.suppress(Exception):
            await self.sync()

    async def sync(self) -> None:
        """Write the spend settled since the last sync, then read every window's totals.

        Each write is a batch with an id of its own; one that fails is kept as it is and
        written again first (under its id: stored once, whether or not the failed try
        landed), and the spend settled meanwhile waits in its windows until it has."""
        async with self._lock:
            if self._unsent is not None:
                try:
                    await self.store.add(self._unsent[1], self._unsent[0])
                except BaseException:
                    self.healthy = False
                    raise
                self._unsent = None
            deltas: list[Delta] = []
            retired, self._retired = self._retired, []
            current = [(s.key_id, w) for s in self.keys.values() for w in s.windows.values()]
            for key_id, w in [*retired, *current]:
                if not w.dirty:
                    continue
                deltas.append((key_id, w.period, w.start, w.usd, w.tokens, w.requests))
                w.base_usd += w.usd  # counted as spent meanwhile, whatever the write does
                w.base_tokens += w.tokens
                w.base_requests += w.requests
                w.usd, w.tokens, w.requests = 0.0, 0, 0
            batch = uuid.uuid4().hex
            try:
                await self.store.add(deltas, batch)
            except BaseException:
                if deltas:
                    self._unsent = (batch, deltas)
                self.healthy = False
                raise
            try:  # the deltas are stored: a failed read-back must not add them again
                loaded = await self.store.load(self.clock.time() - _LOAD_SPAN)
            except BaseException:
                self.healthy = False
                raise
            self._loaded = loaded
            for state in self.keys.values():
                for w in state.windows.values():
                    w.base_usd, w.base_tokens, w.base_requests = loaded.get(
                        (state.key_id, w.period, w.start), (0.0, 0, 0))
            self.healthy = True


def _admits(spent: float, reserved: float, estimate: float, limit: float,
            alone: bool) -> bool:
    """Whether a window admits a request: the spend is under the limit, and the
    reservations in flight and this estimate fit in what is left, or the request runs
    alone (an exhausted window admits nothing, not even a request estimated at 0)."""
    return spent < limit and (alone or spent + reserved + estimate <= limit)


def exceeded(w: Window, now: float, unit: str, spent: float, reserved: float,
              estimate: float, limit: float) -> BudgetExceeded:
    """The 429 for a window that cannot admit a request: spend, limit, reset, how long to wait."""
    def amount(value: float) -> str:
        return f"${value:.2f}" if unit == "USD" else f"{int(value)} tokens"

    what = "budget" if unit == "USD" else "token limit"
    details = {"period": w.period, "unit": "usd" if unit == "USD" else "tokens",
               "spent": _figure(spent, unit), "limit": _figure(limit, unit),
               "reserved": _figure(reserved, unit), "resets_at": iso(w.end)}
    if spent >= limit:
        in_flight = (f" (with {amount(reserved)} reserved by requests in flight)"
                     if reserved else "")
        return BudgetExceeded(
            f"Budget exceeded: this API key's {w.period} {what} is used up: spent "
            f"{amount(spent)} of {amount(limit)}{in_flight}; it resets at {iso(w.end)}.",
            retry_after=w.end - now, details=details)
    # spend alone under the limit: requests in flight hold the rest, and may free it soon
    return BudgetExceeded(
        f"Budget exceeded: this API key's {w.period} {what} cannot cover this request now: "
        f"spent {amount(spent)} of {amount(limit)}, with {amount(reserved)} reserved by "
        f"requests in flight, and this request may use up to {amount(estimate)}; retry when "
        f"they have finished (the window resets at {iso(w.end)}).",
        retry_after=min(BUSY_RETRY_AFTER, w.end - now),
        details={**details, "estimate": _figure(estimate, unit)})


def _figure(value: float, unit: str) -> float | int:
    """A refusal's amount as its details give it: USD to the micro-dollar, whole tokens."""
    return round(value, 6) if unit == "USD" else int(value)
