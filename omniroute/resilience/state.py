"""Where resilience state lives: the :class:`StateStore` protocol and its in-memory default.

The resilience modules keep their state as plain records (numbers, strings and
times, no behaviour that a store must know about) in tables that a store owns:

* ``connections`` — connection id -> :class:`~omniroute.resilience.stats.ConnectionStats`:
  statistics, the cooldown (``cooling_until``) and the terminal state;
* ``breakers`` — breaker key (the connection prefix) -> :class:`BreakerState`;
* ``limits`` — connection id -> :class:`LimitState`: slots in use and recent starts;
* ``sessions`` — session id -> ``(connection id, expiry)``, least recently used first.

Times are the injected clock's monotonic seconds (:data:`TIME_FIELDS` says
which fields hold them). A store shared between processes converts them at its
boundary: ``wall = t + clock.time() - clock.monotonic()`` on the way out, the
reverse on the way in, since monotonic clocks of two hosts do not agree.

Why a synchronous local view and not an async API: every request reads and
writes this state several times (a plan, a breaker admission, a slot, the
statistics, the verdict). An ``await`` per access would cost every request,
including on the default, which has nothing to wait for. So the tables are
ordinary mappings the modules read and change in place, exactly as fast as
before the seam; the default (:class:`MemoryState`) is nothing but those
mappings. A store that shares state (Redis, a later issue) keeps the same local
view and, in its own background task, pushes local changes and applies remote
ones to the records *in place* (a record object handed out is never replaced:
the modules hold on to it). To make that prompt for the changes other
instances must not miss, the modules call :meth:`StateStore.changed` on every
**transition**: a failure charged to a connection (its streak, cooldown or
terminal state), a success that ends a streak or a cooldown, a breaker's
failure, opening or closing, a half-open trial slot taken or given back, an
operator reset, a connection forgotten. The default leaves it a no-op.
Per-request counters (statistics, limit slots and starts) and sessions (their
bindings and last use) are not announced, so a plain success on a healthy
connection makes no call at all; a sharing store pushes those on its own
schedule (it owns the tables, so it can read them when it syncs). Limits shared
this way would be approximate by that lag, so a sharing store also offers
:attr:`StateStore.slots` (:class:`SharedSlots`): an atomic take of a slot of a
connection's ``max_concurrency`` and ``rpm`` where the counters are shared, which
the limiter awaits instead of deciding alone (the default has none: ``None``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from omniroute.resilience.stats import ConnectionStats

if TYPE_CHECKING:
    from omniroute.sharedstate import Pending

Table = Literal["connections", "breakers", "limits", "sessions"]

#: the fields of each table's records that hold monotonic times (``limits.starts``
#: is a sequence of them; a session's expiry is the second item of its pair)
TIME_FIELDS: dict[Table, tuple[str, ...]] = {
    "connections": ("last_error_at", "last_used_at", "cooling_until"),
    "breakers": ("opened_at",),
    "limits": ("starts",),
    "sessions": ("expires",),
}


@dataclass(slots=True)
class BreakerState:
    """One circuit breaker's state (its policy is configuration, kept by the breaker)."""

    #: consecutive failures that were the provider's doing
    failures: int = 0
    #: when it last opened (None: closed)
    opened_at: float | None = None
    #: half-open trial requests in flight
    trials: int = 0
    times_opened: int = 0
    #: a trial was let through since the last opening
    half_open: bool = False
    #: bumped on every opening and closing: a ticket from before frees no trial slot
    generation: int = 0


@dataclass(slots=True)
class LimitState:
    """One connection's limit counters (the queue of waiters is local, not state)."""

    #: requests holding a slot now
    in_use: int = 0
    #: start times of the requests of the last minute, oldest first (kept only with an rpm)
    starts: deque[float] = field(default_factory=deque)


class SharedSlots(Protocol):
    """Exact per-connection limits across instances: slots taken atomically where shared."""

    async def take(self, name: str, max_concurrency: int | None, rpm: int | None) -> float | None:
        """Take a slot of connection ``name`` under both limits, in one atomic step.

        :returns: ``0.0`` when taken (:meth:`give` hands it back); seconds until one may
            be free when none is now (nothing was taken); None when the shared
            counters cannot be reached (bounded by a timeout), so the limiter decides
            with this instance's own counters.
        """

    def taken_ahead(self, name: str) -> Pending[float | None] | None:
        """A take of connection ``name``'s slot made ahead, with a request's batch
        (:meth:`~omniroute.sharedstate.RequestBatch.take_slot`), answered and not asked
        for yet: its :meth:`~omniroute.sharedstate.Pending.result` is what :meth:`take`
        would have returned, and reading it makes it the caller's. None: there is none
        (:meth:`take` asks)."""

    def give(self, name: str) -> None:
        """Hand back a slot :meth:`take` granted (queued; must not block or raise; a
        connection with none held here is left alone)."""


class StateStore(Protocol):
    """The tables resilience state lives in, and the hook for changes that must travel."""

    @property
    def connections(self) -> MutableMapping[str, ConnectionStats]: ...

    @property
    def breakers(self) -> MutableMapping[str, BreakerState]: ...

    @property
    def limits(self) -> MutableMapping[str, LimitState]: ...

    @property
    def sessions(self) -> OrderedDict[str, tuple[str, float]]:
        """In last-use order, oldest first (the LRU bound needs ``move_to_end``, ``popitem``)."""

    def changed(self, table: Table, key: str) -> None:
        """The record ``table[key]`` went through a transition (or was deleted): a
        store shared with other instances pushes it now. Must not block or raise."""

    @property
    def slots(self) -> SharedSlots | None:
        """Atomic slot takes shared with other instances (None: the limits are this
        instance's own, decided synchronously on ``limits``)."""


class MemoryState:
    """The default store: plain dictionaries in this process, nothing shared."""

    __slots__ = ("breakers", "connections", "limits", "sessions")

    #: nothing shared: every limit is decided here
    slots: SharedSlots | None = None

    def __init__(self) -> None:
        self.connections: dict[str, ConnectionStats] = {}
        self.breakers: dict[str, BreakerState] = {}
        self.limits: dict[str, LimitState] = {}
        self.sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def changed(self, table: Table, key: str) -> None:
        """Nothing to tell: no other instance shares these tables."""
