"""Per-connection limits: at most ``max_concurrency`` requests at once and
``rpm`` started per rolling minute, with a bounded queue and a bounded wait.

``async with limiter.acquire():`` either

* takes a slot at once (nobody queued and both limits have room),
* waits in a FIFO queue (at most ``queue_size`` waiters, at most
  ``queue_timeout`` seconds), or
* raises :class:`~omniroute.errors.ConnectionBusy` carrying a ``retry_after``
  at once: the queue is full, waiting is off (``queue_timeout == 0``), or the
  rolling minute frees a slot only after the wait would have ended.

A slot is taken synchronously, with no ``await`` between the check and the
grant, and the context manager gives it back on any exit; a waiter that is
cancelled never held one and hands its turn to the next waiter. So neither
exceptions nor cancellations leak slots. The counters (slots in use, recent
starts) are a :class:`~omniroute.resilience.state.LimitState` record kept in
the resilience state store; the queue of waiters is this process's own.

With a :class:`~omniroute.resilience.state.SharedSlots` (several instances sharing
a state store), a request takes its slot there instead, atomically across every
instance (one awaited call, or none when the slot was taken ahead with the request's
batch; the calls of concurrent requests go out together).
When none is free it queues here as above, and the waiter at the head asks again
when the shared counters say one may be free: at once for ``rpm``, after
:data:`SHARED_POLL` seconds for ``max_concurrency`` (a slot freed elsewhere sends no
wake-up here), within the same bounds. When the shared counters cannot be
reached, this instance's own counters decide, as without sharing. The local
counters count this instance's own requests either way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType
from typing import Any, Self

from omniroute.errors import ConnectionBusy
from omniroute.resilience.clock import Clock
from omniroute.resilience.state import LimitState, SharedSlots

WINDOW = 60.0
#: the retry hint when only concurrency is full (no way to know when a slot frees)
BUSY_RETRY_AFTER = 1.0
#: seconds between two asks of the shared counters while a waiter waits for a slot
SHARED_POLL = 0.05


class Limiter:
    """The limits of one connection. ``None`` means "no such limit"."""

    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        max_concurrency: int | None = None,
        rpm: int | None = None,
        queue_size: int = 0,
        queue_timeout: float = 0.0,
        data: LimitState | None = None,
        shared: SharedSlots | None = None,
    ) -> None:
        """
        :param data: the counters (from a :class:`~omniroute.resilience.state.StateStore`;
            fresh ones when omitted). The limiter changes them in place.
        :param shared: takes slots across instances (the store's ``slots``; None: here).
        """
        self.name = name
        self.clock = clock
        self.max_concurrency = max_concurrency
        self.rpm = rpm
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.data = data if data is not None else LimitState()
        self.shared = shared
        self._waiters: deque[asyncio.Event] = deque()

    def configure(
        self, *, max_concurrency: int | None, rpm: int | None, queue_size: int,
        queue_timeout: float,
    ) -> None:
        """Change the limits in place (slots in use and waiters stay)."""
        self.max_concurrency, self.rpm = max_concurrency, rpm
        self.queue_size, self.queue_timeout = queue_size, queue_timeout
        self._wake_head()

    @property
    def in_use(self) -> int:
        """Requests holding a slot now."""
        return self.data.in_use

    @property
    def limited(self) -> bool:
        return self.max_concurrency is not None or self.rpm is not None

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def used_last_minute(self) -> int:
        self._prune(self.clock.monotonic())
        return len(self.data.starts)

    def saturated(self) -> bool:
        """No slot is free right now (a new request would queue or fail)."""
        return bool(self._waiters) or not self._free(self.clock.monotonic())

    def retry_after(self) -> float:
        """Seconds until a slot is likely to be free (0 when one is free now)."""
        now = self.clock.monotonic()
        waits = [self._rpm_wait(now)]
        if self.max_concurrency is not None and self.data.in_use >= self.max_concurrency:
            waits.append(BUSY_RETRY_AFTER)
        wait = max(waits)
        return wait if wait > 0 or not self._waiters else BUSY_RETRY_AFTER

    def acquire(self) -> Slot:
        """An async context manager holding one slot (see the module docstring)."""
        return Slot(self)

    # ------------------------------------------------------------------ internals

    def _prune(self, now: float) -> None:
        starts = self.data.starts
        while starts and starts[0] <= now - WINDOW:
            starts.popleft()

    def _rpm_wait(self, now: float) -> float:
        if self.rpm is None:
            return 0.0
        self._prune(now)
        if len(self.data.starts) < self.rpm:
            return 0.0
        return max(0.0, self.data.starts[-self.rpm] + WINDOW - now)

    def _free(self, now: float) -> bool:
        if self.max_concurrency is not None and self.data.in_use >= self.max_concurrency:
            return False
        return self._rpm_wait(now) == 0.0

    def _grant(self, now: float) -> None:
        self.data.in_use += 1
        if self.rpm is not None:
            self.data.starts.append(now)

    def _busy(self, why: str, retry: float | None = None) -> ConnectionBusy:
        if retry is None:
            retry = self.retry_after()
        return ConnectionBusy(f"Connection {self.name!r} is busy ({why}); retry in {retry:.0f}s.",
                              connection_id=self.name, retry_after=retry)

    def _wake_head(self) -> None:
        if self._waiters:
            self._waiters[0].set()

    async def _take(self) -> None:
        shared = self.shared
        if shared is not None:  # (see the module docstring)
            if not self._waiters:  # nobody waits here: ask at once (concurrent asks pipeline)
                ahead = shared.taken_ahead(self.name)  # taken with the request's batch
                asked = (ahead.result() if ahead is not None
                         else await shared.take(self.name, self.max_concurrency, self.rpm))
                now = self.clock.monotonic()
                if (asked is not None and asked <= 0) or (asked is None and self._free(now)):
                    self._grant(now)
                    return
            await self._take_shared(shared)
            return
        now = self.clock.monotonic()
        if not self._waiters and self._free(now):
            self._grant(now)
            return
        if self.queue_timeout <= 0 or self.queue_size <= 0:
            raise self._busy("limit reached, queueing is off")
        if len(self._waiters) >= self.queue_size:
            raise self._busy(f"{len(self._waiters)} requests already queued")
        if self._rpm_wait(now) > self.queue_timeout:
            raise self._busy(f"{self.rpm} requests per minute used")
        deadline = now + self.queue_timeout
        me = asyncio.Event()
        self._waiters.append(me)
        try:
            while True:
                now = self.clock.monotonic()
                head = self._waiters[0] is me
                if head and self._free(now):
                    self._waiters.popleft()
                    self._grant(now)
                    return
                left = deadline - now
                if left <= 0:
                    raise self._busy(f"no slot within {self.queue_timeout:g}s")
                rpm_wait = self._rpm_wait(now) if head else 0.0
                me.clear()
                await self._park(me, min(left, rpm_wait) if rpm_wait > 0 else left)
        finally:
            if me in self._waiters:
                was_head = self._waiters[0] is me
                self._waiters.remove(me)
                if was_head:
                    self._wake_head()  # our turn passes on
            elif self._waiters:
                self._wake_head()  # granted: the next one may fit too

    async def _take_shared(self, shared: SharedSlots) -> None:
        """Wait in line for a slot where the counters are shared (the first ask, made
        by :meth:`_take`, found none free, or others wait here already)."""
        now = self.clock.monotonic()
        if self.queue_timeout <= 0 or self.queue_size <= 0:
            raise self._busy("limit reached, queueing is off")
        if len(self._waiters) >= self.queue_size:
            raise self._busy(f"{len(self._waiters)} requests already queued")
        deadline = now + self.queue_timeout
        me = asyncio.Event()
        self._waiters.append(me)
        try:
            while True:
                wait = SHARED_POLL
                if self._waiters[0] is me:
                    asked = await shared.take(self.name, self.max_concurrency, self.rpm)
                    now = self.clock.monotonic()
                    if asked is None:  # unreachable: this instance's own counters decide
                        if self._free(now):
                            self._waiters.popleft()
                            self._grant(now)
                            return
                        wait = self._rpm_wait(now) or SHARED_POLL
                    elif asked <= 0:
                        self._waiters.popleft()
                        self._grant(now)
                        return
                    else:
                        wait = asked
                now = self.clock.monotonic()
                left = deadline - now
                if left <= 0:
                    raise self._busy(f"no slot within {self.queue_timeout:g}s",
                                     max(wait, BUSY_RETRY_AFTER))
                if self.rpm is not None and wait > left and wait > BUSY_RETRY_AFTER:
                    raise self._busy(f"{self.rpm} requests per minute used", wait)
                me.clear()
                await self._park(me, min(left, wait))
        finally:
            if me in self._waiters:
                was_head = self._waiters[0] is me
                self._waiters.remove(me)
                if was_head:
                    self._wake_head()
            elif self._waiters:
                self._wake_head()

    async def _park(self, event: asyncio.Event, seconds: float) -> None:
        """Wait until woken or ``seconds`` of the clock's time pass (cancellable)."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        woken = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()

    def _release(self) -> None:
        data = self.data
        data.in_use = max(0, data.in_use - 1)
        if self.shared is not None:
            self.shared.give(self.name)
        self._wake_head()

    def snapshot(self) -> dict[str, Any]:
        return {
            "max_concurrency": self.max_concurrency,
            "rpm": self.rpm,
            "in_use": self.data.in_use,
            "queued": self.queued,
            "used_last_minute": self.used_last_minute(),
        }


class Slot:
    """One slot of a :class:`Limiter`, held for the ``async with`` block."""

    __slots__ = ("_held", "_limiter")

    def __init__(self, limiter: Limiter) -> None:
        self._limiter = limiter
        self._held = False

    async def __aenter__(self) -> Self:
        await self._limiter._take()
        self._held = True  # no await since the grant: a cancellation cannot fall in between
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def release(self) -> None:
        """Give the slot back early (idempotent)."""
        if self._held:
            self._held = False
            self._limiter._release()
