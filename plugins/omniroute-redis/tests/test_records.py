"""Two instances' resilience records merged in Redis: nobody's change is lost or counted twice."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from omniroute.config import Settings
from omniroute.resilience import BreakerState, ConnectionStats, ManualClock

from omniroute_redis.batch import Batch
from omniroute_redis.leases import Leases
from omniroute_redis.link import Link
from omniroute_redis.resilience import RedisState
from omniroute_redis.scripts import Scripts


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[RedisState, RedisState]]:
    """Two stores on one Redis whose monotonic clocks disagree (their wall clocks agree)."""
    made = []
    for start in (1000.0, 50.0):
        link = Link(redis_url, timeout=lambda: 1.0)
        scripts = Scripts()
        batch = Batch(link, scripts)
        leases = Leases(link, scripts, batch, f"i{start:.0f}")
        made.append(RedisState(link, scripts, batch, leases,
                               ManualClock(start=start, wall=1_700_000_000.0), Settings))
    yield made[0], made[1]
    for state in made:
        await state.link.close()


async def test_counters_add_up_and_latest_times_win(pair: tuple[RedisState, RedisState]) -> None:
    a, b = pair
    sa, sb = ConnectionStats("c"), ConnectionStats("c")
    a.connections["c"], b.connections["c"] = sa, sb
    for _ in range(5):
        sa.started(a.clock.monotonic())
        sa.succeeded(0.2)
    for _ in range(3):
        sb.started(b.clock.monotonic() + 1)
        sb.succeeded(0.4)
    await a.sync(everything=True)
    await b.sync(everything=True)
    await a.sync(everything=True)  # a gets b's share back
    for state, stats in ((a, sa), (b, sb)):
        assert stats.total_requests == 8 and stats.successes == 8, state
        assert stats.last_used_at == pytest.approx(state.clock.monotonic() + 1, abs=1e-3)
    # nothing new: syncing again changes no count
    await a.sync(everything=True)
    await b.sync(everything=True)
    assert sa.total_requests == sb.total_requests == 8


async def test_a_streak_grows_across_instances_and_a_success_anywhere_ends_it(
        pair: tuple[RedisState, RedisState]) -> None:
    a, b = pair
    sa, sb = ConnectionStats("c"), ConnectionStats("c")
    a.connections["c"], b.connections["c"] = sa, sb
    sa.failed(a.clock.monotonic(), "boom", counted=True)
    sa.cool(a.clock.monotonic() + 30)
    a.changed("connections", "c")
    await a.sync()
    sb.failed(b.clock.monotonic(), "boom", counted=True)
    sb.cool(b.clock.monotonic() + 60)
    b.changed("connections", "c")
    await b.sync()
    assert sb.consecutive_failures == 2  # a's failure and its own
    assert sb.cooling_until == pytest.approx(b.clock.monotonic() + 60, abs=1e-3)
    sa.succeeded(0.1)  # a success on a ends the streak and the rest for everyone
    a.changed("connections", "c")
    await a.sync()
    await b.sync(everything=True)
    assert sb.consecutive_failures == 0 and sb.cooling_until is None


async def test_a_breaker_opened_elsewhere_invalidates_local_trial_tickets(
        pair: tuple[RedisState, RedisState]) -> None:
    a, b = pair
    ba, bb = BreakerState(), BreakerState()
    a.breakers["p"], b.breakers["p"] = ba, bb
    await b.sync(everything=True)
    ba.failures, ba.opened_at, ba.times_opened, ba.generation = 3, a.clock.monotonic(), 1, 1
    a.changed("breakers", "p")
    await a.sync()
    before = bb.generation
    await b.sync(everything=True)
    assert bb.opened_at == pytest.approx(b.clock.monotonic(), abs=1e-3)
    assert bb.failures == 3 and bb.times_opened == 1 and bb.generation == before + 1
    bb.trials, bb.half_open = 1, True  # b lets a half-open trial through
    b.changed("breakers", "p")
    await b.sync()
    await a.sync(everything=True)
    assert ba.trials == 1 and ba.half_open  # a counts it: its own trial waits
