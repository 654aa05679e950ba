"""State shared between gateway instances: the plugin type behind ``state_url``.

Without ``state_url`` a gateway keeps its resilience state, its budget
counters and its configuration watch to itself (the embedded default, which
this module does not touch). With it, the backend type registered for the
URL's scheme (``register_state_backends``; ``plugins/omniroute-redis`` for
``redis://``) is created once per gateway and hands the gateway's parts what
they share through it::

    shared = cls(url, clock=clock, settings=lambda: catalog.settings)
    resilience = Resilience(state=shared.resilience_state())   # tables + atomic slot takes
    budgets = Budgets(store, clock, shared=shared.ledger(...))  # atomic reservations
    keys = Idempotency(settings, shared=shared.idempotency_keys())  # one call per key
    refresher = Refresher(store, lock=shared.renewal_lock())  # one renewal per account
    watcher = shared.watcher(db, reload=..., loaded=...) or VersionPoll(...)
    await shared.start() ... await shared.close()

Per request, what the stages need of the shared state before dispatch goes out
in one round trip: the pipeline asks :meth:`SharedState.request_batch` for a
:class:`RequestBatch`, each stage queues its part on it
(:meth:`~omniroute.pipeline.stages.StageRun.prefetch`: a key's slot and
reservation, an idempotency claim, a cache lookup; the pipeline adds the only
target's connection slot), the batch is sent once, and each stage reads its own
:class:`Pending` answer where it used to wait for it. An answer that makes the
later parts moot (a refused slot, a cache hit, a key claimed elsewhere, a
refused reservation) stops them where the state is kept, atomically: those
parts did not run (:attr:`Pending.ran` is False) and their stage does them the
usual way if it still needs them. A part that ran but is not read (the route
changed in between) is undone (:meth:`Pending.release`, :meth:`RequestBatch.release`).

A backend never fails a request because its server is away: each part falls
back to this instance's own numbers, :meth:`SharedState.health` says so
(``/api/monitoring/health``, ``omniroute_state_degraded`` in ``/metrics``), and
the part catches up once the server is back. Only a key's budget may be
refused instead, when the ``budget_fail_closed`` setting says so.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from omniroute.config import backend_for_url, redact_url

if TYPE_CHECKING:
    from omniroute.budgets.ledger import Budgets, SharedLedger
    from omniroute.config import Settings
    from omniroute.credentials import RenewalLock
    from omniroute.idempotency.keys import SharedKeys
    from omniroute.resilience.clock import Clock
    from omniroute.resilience.state import StateStore
    from omniroute.storage import DatabaseBackend
    from omniroute.watch import ConfigWatcher


T_co = TypeVar("T_co", covariant=True)


class Pending(Protocol[T_co]):
    """One part of a request's :class:`RequestBatch`: its answer, once the batch was sent."""

    @property
    def ran(self) -> bool:
        """It was run (False: not sent yet, or an earlier answer in the batch made it moot)."""

    def result(self) -> T_co:
        """Its answer, exactly as the awaited call would have given it (or raised it).
        Only once it :attr:`ran`; reading it makes it the caller's (no :meth:`release`)."""

    def release(self) -> None:
        """It ran and will not be read: undo what it took (queued; must not block or raise)."""


class RequestBatch(Protocol):
    """What one request asks of the shared state before dispatch, sent in one round trip."""

    def take_slot(self, name: str, max_concurrency: int | None, rpm: int | None) -> None:
        """Take a slot of connection ``name``'s limits with the rest: the request's first
        attempt there (:class:`~omniroute.resilience.state.SharedSlots`) then takes it
        without a round trip of its own."""

    def send(self) -> Awaitable[None] | None:
        """Send what was queued, in one round trip: the awaitable of its answer (None:
        nothing was queued, nothing is sent, and nothing is to be awaited). Never
        raises for the server: unreachable, late with its answer, or answering with an
        error, every part then answers as its own call would with the server away (a
        cache lookup a miss), and whatever the server may have taken for the batch is
        given back (blindly: queued until the server answers again)."""

    def release(self) -> None:
        """The request is over: undo every part that ran and was never read (queued)."""


class SharedState:
    """Base class of shared-state backend types; ``state_url`` creates one instance.

    :param url: the configured ``state_url`` (it may hold a password: never log it
        whole, :func:`omniroute.config.redact_url`).
    :param clock: the gateway's clock (monotonic for the local view, wall time on
        the wire: the monotonic clocks of two hosts do not agree).
    :param settings: the live runtime settings (``state_timeout``, ``budget_fail_closed``).
    """

    #: the type's name (``omniroute plugins`` lists it)
    name: ClassVar[str]
    #: the URL schemes it serves (``redis``, ``rediss``, ``unix``)
    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, url: str, *, clock: Clock, settings: Callable[[], Settings]) -> None:
        self.url = url
        self.clock = clock
        self.settings = settings

    def resilience_state(self) -> StateStore:
        """The resilience tables (statistics, cooldowns, breakers, limits, sessions)."""
        raise NotImplementedError

    def ledger(self, budgets: Budgets) -> SharedLedger | None:
        """The per-key budget counters shared with other instances (None: kept here)."""
        return None

    def idempotency_keys(self) -> SharedKeys | None:
        """Idempotency keys claimed across instances (None: each instance's own)."""
        return None

    def request_batch(self) -> RequestBatch | None:
        """A new batch for one request's shared work before dispatch (None: each part
        makes its own round trip)."""
        return None

    def renewal_lock(self) -> RenewalLock | None:
        """One credential renewal per connection across instances (None: per process)."""
        return None

    def watcher(self, db: DatabaseBackend, *, reload: Callable[[], Awaitable[None]],
                loaded: Callable[[], int]) -> ConfigWatcher | None:
        """A config watcher told of changes by the other instances (None: the SQLite poll)."""
        return None

    async def start(self) -> None:
        """Connect; a server that is away is not an error (the backend starts degraded)."""

    async def close(self) -> None:
        """Push what is pending (bounded) and disconnect."""

    def health(self) -> dict[str, Any]:
        """``{"backend": name, "url": redacted, "ok": bool, ...}`` for health and metrics."""
        return {"backend": self.name, "url": redact_url(self.url), "ok": True}


def state_backend(types: dict[str, type[SharedState]], url: str) -> type[SharedState]:
    """The registered backend type serving ``url``'s scheme.

    :raises ConfigError: no loaded plugin serves it (install ``omniroute-redis``).
    """
    found: type[SharedState] = backend_for_url(
        types.values(), url, setting="state_url", kind="state",
        hint="for redis:// install the omniroute-redis plugin")
    return found
