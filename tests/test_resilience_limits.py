"""Per-connection limits (concurrency, requests per minute, bounded queue) and the breaker."""

from __future__ import annotations

import asyncio

import pytest

from omniroute.errors import ConnectionBusy
from omniroute.resilience.breaker import Breaker, BreakerPolicy
from omniroute.resilience.clock import ManualClock
from omniroute.resilience.limits import Limiter


def limiter(clock: ManualClock, **kw: object) -> Limiter:
    kw.setdefault("queue_size", 4)
    kw.setdefault("queue_timeout", 10.0)
    return Limiter("conn_a", clock=clock, **kw)  # type: ignore[arg-type]


async def settle() -> None:
    """Let every ready task run until things stop moving (no real time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def hold(lim: Limiter, release: asyncio.Event, log: list[str], name: str) -> None:
    async with lim.acquire():
        log.append(name)
        await release.wait()


# ------------------------------------------------------------------ concurrency

async def test_concurrency_cap_fails_fast_without_a_queue() -> None:
    clock = ManualClock()
    lim = limiter(clock, max_concurrency=2, queue_timeout=0.0)
    async with lim.acquire(), lim.acquire():
        assert lim.in_use == 2 and lim.saturated()
        with pytest.raises(ConnectionBusy) as info:
            async with lim.acquire():
                pytest.fail("a third slot was granted")
        assert info.value.status == 429
        assert info.value.retry_after == 1.0 and info.value.headers["Retry-After"] == "1"
        assert info.value.connection_id == "conn_a"
    assert lim.in_use == 0 and not lim.saturated()


async def test_waiter_gets_the_slot_when_released_and_queue_is_bounded() -> None:
    clock = ManualClock()
    lim = limiter(clock, max_concurrency=1, queue_size=1)
    release, log = asyncio.Event(), []
    first = asyncio.create_task(hold(lim, release, log, "first"))
    await settle()
    second = asyncio.create_task(hold(lim, asyncio.Event(), log, "second"))
    await settle()
    assert log == ["first"] and lim.queued == 1
    with pytest.raises(ConnectionBusy, match="already queued"):  # queue full: fail at once
        async with lim.acquire():
            pass
    release.set()
    await first
    await settle()
    assert log == ["first", "second"] and lim.in_use == 1 and lim.queued == 0
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert lim.in_use == 0


async def test_waiters_are_served_in_order() -> None:
    clock = ManualClock()
    lim = limiter(clock, max_concurrency=1)
    gates = [asyncio.Event() for _ in range(4)]
    log: list[str] = []
    tasks = []
    for i, gate in enumerate(gates):
        tasks.append(asyncio.create_task(hold(lim, gate, log, str(i))))
        await settle()
    for gate in gates:
        gate.set()
        await settle()
    await asyncio.gather(*tasks)
    assert log == ["0", "1", "2", "3"] and lim.in_use == 0


async def test_queue_timeout_uses_the_clock() -> None:
    clock = ManualClock()
    lim = limiter(clock, max_concurrency=1, queue_timeout=10.0)
    async with lim.acquire():
        waiter = asyncio.create_task(lim.acquire().__aenter__())
        await settle()
        clock.advance(9.9)
        await settle()
        assert not waiter.done()
        clock.advance(0.2)
        await settle()
        assert waiter.done()
        with pytest.raises(ConnectionBusy, match="no slot within 10s"):
            waiter.result()
    assert lim.in_use == 0 and lim.queued == 0


async def test_cancelled_waiter_leaks_nothing() -> None:
    clock = ManualClock()
    lim = limiter(clock, max_concurrency=1)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(lim, release, [], "holder"))
    await settle()
    waiter = asyncio.create_task(hold(lim, asyncio.Event(), [], "waiter"))
    await settle()
    assert lim.queued == 1
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    assert lim.queued == 0 and clock.sleepers == 0
    release.set()
    await holder
    assert lim.in_use == 0
    async with lim.acquire():  # the slot is free again, at once
        assert lim.in_use == 1


async def test_woken_waiter_cancelled_before_running_passes_its_turn_on() -> None:
    clock = ManualClock()
    lim = limiter(clock, max_concurrency=1)
    release, log = asyncio.Event(), []
    holder = asyncio.create_task(hold(lim, release, log, "holder"))
    await settle()
    b = asyncio.create_task(hold(lim, asyncio.Event(), log, "b"))
    await settle()
    c_gate = asyncio.Event()
    c = asyncio.create_task(hold(lim, c_gate, log, "c"))
    await settle()
    release.set()
    await asyncio.sleep(0)  # the holder leaves and wakes b ...
    await asyncio.sleep(0)
    b.cancel()  # ... which is cancelled before it could take the slot
    await settle()
    await asyncio.gather(holder, b, return_exceptions=True)
    await settle()
    assert log == ["holder", "c"] and lim.in_use == 1
    c_gate.set()
    await c
    assert lim.in_use == 0 and lim.queued == 0


async def test_exception_in_the_block_releases_the_slot() -> None:
    lim = limiter(ManualClock(), max_concurrency=1)
    with pytest.raises(RuntimeError):
        async with lim.acquire():
            raise RuntimeError("boom")
    assert lim.in_use == 0


async def test_cancelled_holder_releases_the_slot() -> None:
    lim = limiter(ManualClock(), max_concurrency=1)
    task = asyncio.create_task(hold(lim, asyncio.Event(), [], "x"))
    await settle()
    assert lim.in_use == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert lim.in_use == 0


async def test_raising_the_limit_wakes_waiters() -> None:
    lim = limiter(ManualClock(), max_concurrency=1)
    log: list[str] = []
    tasks = [asyncio.create_task(hold(lim, asyncio.Event(), log, str(i))) for i in range(3)]
    await settle()
    assert log == ["0"]
    lim.configure(max_concurrency=3, rpm=None, queue_size=4, queue_timeout=10.0)
    await settle()
    assert log == ["0", "1", "2"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert lim.in_use == 0


# ------------------------------------------------------------------ requests per minute

async def test_rpm_fails_fast_with_the_window_retry_after() -> None:
    clock = ManualClock()
    lim = limiter(clock, rpm=2, queue_timeout=0.0)
    for _ in range(2):
        async with lim.acquire():
            pass
        clock.advance(10)
    with pytest.raises(ConnectionBusy) as info:
        async with lim.acquire():
            pass
    assert info.value.retry_after == pytest.approx(40)  # the first start leaves the window
    assert info.value.headers["Retry-After"] == "40"
    clock.advance(40)
    async with lim.acquire():
        assert lim.used_last_minute() == 2


async def test_rpm_fails_fast_when_the_window_outlasts_the_queue_timeout() -> None:
    clock = ManualClock()
    lim = limiter(clock, rpm=1, queue_timeout=5.0)
    async with lim.acquire():
        pass
    with pytest.raises(ConnectionBusy) as info:
        async with lim.acquire():
            pass
    assert info.value.retry_after == pytest.approx(60)
    assert lim.queued == 0


async def test_rpm_waiter_proceeds_when_the_window_frees() -> None:
    clock = ManualClock()
    lim = limiter(clock, rpm=1, queue_timeout=90.0)
    async with lim.acquire():
        pass
    waiter = asyncio.create_task(lim.acquire().__aenter__())
    await settle()
    clock.advance(59)
    await settle()
    assert not waiter.done() and lim.queued == 1
    clock.advance(1)
    await settle()
    assert waiter.done() and waiter.exception() is None
    assert lim.in_use == 1
    waiter.result().release()
    assert lim.in_use == 0


async def test_no_limits_never_waits() -> None:
    lim = limiter(ManualClock())
    slots = [lim.acquire() for _ in range(100)]
    for s in slots:
        await s.__aenter__()
    assert lim.in_use == 100 and not lim.saturated()
    for s in slots:
        s.release()
        s.release()  # idempotent
    assert lim.in_use == 0


# ------------------------------------------------------------------ circuit breaker

def test_breaker_opens_half_opens_closes_and_reopens() -> None:
    b = Breaker("up", BreakerPolicy(threshold=3, reset_after=10.0, half_open_max=1))
    now = 0.0
    b.failure(now)
    b.failure(now)
    assert b.state(now) == "closed" and b.admit(now) is not None
    b.failure(now)
    assert b.state(now) == "open" and b.admit(now) is None
    assert b.retry_in(now + 4) == pytest.approx(6)
    assert b.state(now + 9.9) == "open"
    later = now + 10
    assert b.state(later) == "half_open" and b.available(later)
    trial = b.admit(later)
    assert trial is not None and trial.trial
    assert b.admit(later) is None and not b.available(later)  # one trial at a time
    b.failure(later)  # the trial failed: open again for a whole period
    assert b.state(later + 9) == "open" and b.times_opened == 2
    again = later + 10
    trial = b.admit(again)
    assert trial is not None
    b.success()
    assert b.state(again) == "closed" and b.failures == 0
    assert b.admit(again) is not None and not b.admit(again).trial  # type: ignore[union-attr]


def test_breaker_success_resets_the_streak() -> None:
    b = Breaker("up", BreakerPolicy(threshold=3, reset_after=10.0))
    for _ in range(2):
        b.failure(0)
    b.success()
    for _ in range(2):
        b.failure(0)
    assert b.state(0) == "closed"
    b.failure(0)
    assert b.state(0) == "open"


def test_breaker_abandoned_trial_frees_its_slot_but_a_stale_ticket_does_not() -> None:
    b = Breaker("up", BreakerPolicy(threshold=1, reset_after=5.0, half_open_max=2))
    b.failure(0)
    first, second = b.admit(5), b.admit(5)
    assert first and second and b.admit(5) is None
    b.abandon(first)
    assert b.available(5) and b.trials == 1
    b.failure(5)  # reopens: a new generation
    b.abandon(second)  # from the previous opening: must not touch the new state
    assert b.trials == 0 and b.state(6) == "open"
    b.reset()
    assert b.state(6) == "closed"


def test_breaker_snapshot() -> None:
    b = Breaker("up", BreakerPolicy(threshold=1, reset_after=5.0))
    b.failure(0)
    snap = b.snapshot(1.0)
    assert snap["state"] == "open" and snap["retry_in"] == 4.0 and snap["threshold"] == 1


# ------------------------------------------------------------------ shared across instances

class Counters:
    """A :class:`~omniroute.resilience.state.SharedSlots` over plain numbers, as another
    instance would see them too (``other`` slots held elsewhere); ``None`` while down."""

    def __init__(self, max_slots: int) -> None:
        self.max_slots = max_slots
        self.held = self.other = self.asks = 0
        self.down = False

    async def take(self, name: str, max_concurrency: int | None, rpm: int | None) -> float | None:
        self.asks += 1
        await asyncio.sleep(0)  # a round trip
        if self.down:
            return None
        if self.held + self.other >= self.max_slots:
            return 0.05
        self.held += 1
        return 0.0

    def taken_ahead(self, name: str) -> None:
        return None  # (no request batches here)

    def give(self, name: str) -> None:
        self.held -= 1


async def test_a_shared_limit_counts_the_slots_other_instances_hold() -> None:
    clock = ManualClock()
    shared = Counters(2)
    shared.other = 1  # another instance holds one of the two
    lim = limiter(clock, max_concurrency=2, shared=shared)
    release, log = asyncio.Event(), []
    first = asyncio.ensure_future(hold(lim, release, log, "first"))
    second = asyncio.ensure_future(hold(lim, release, log, "second"))
    await settle()
    assert log == ["first"] and lim.queued == 1 and shared.held == 1
    shared.other = 0  # freed elsewhere: no wake-up here, the head waiter asks again
    clock.advance(0.05)
    await settle()
    assert log == ["first", "second"] and shared.held == 2
    release.set()
    await asyncio.gather(first, second)
    assert shared.held == 0 and lim.in_use == 0


async def test_concurrent_requests_ask_the_shared_counters_at_once_not_in_turn() -> None:
    shared = Counters(10)
    lim = limiter(ManualClock(), max_concurrency=10, shared=shared)
    release, log = asyncio.Event(), []
    tasks = [asyncio.ensure_future(hold(lim, release, log, str(i))) for i in range(8)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert shared.asks == 8 and lim.queued == 0  # all asked in the same turn of the loop
    release.set()
    await asyncio.gather(*tasks)


async def test_unreachable_shared_counters_leave_the_decision_to_this_instance() -> None:
    shared = Counters(1)
    shared.down = True
    lim = limiter(ManualClock(), max_concurrency=1, queue_timeout=0.0, shared=shared)
    async with lim.acquire():
        assert lim.in_use == 1
        with pytest.raises(ConnectionBusy):
            async with lim.acquire():
                pass
