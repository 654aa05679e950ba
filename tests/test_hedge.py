"""Hedging: a target slow to give its first byte races the next one.

The bound itself is tested on the resilience facade with a ``ManualClock``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from omniroute.config import Settings
from omniroute.providers.base import Provider
from omniroute.resilience import ManualClock, Resilience
from omniroute.routing import Target
from omniroute.storage.store import Connection

# ----------------------------------------------------------------------------- the bound

class FakeProvider(Provider):
    type = "fake"


def target(cid: str, model: str = "m") -> Target:
    conn = Connection(id=cid, type="fake", name=cid, prefix=cid, settings={})
    return Target(conn, FakeProvider(conn, None), model)  # type: ignore[arg-type]


def resilience(**settings: Any) -> tuple[Resilience, ManualClock]:
    clock = ManualClock()
    return Resilience(Settings(**settings), clock=clock, rng=random.Random(1)), clock


async def first_bytes(
    r: Resilience, clock: ManualClock, t: Target, seconds: float, n: int = 1, lane: str = "stream"
) -> None:
    """``n`` successful calls to ``t`` whose first byte came after ``seconds``."""
    for _ in range(n):
        async with r.attempt(t) as attempt:
            clock.advance(seconds)
            attempt.first_byte(lane)


async def test_the_bound_follows_the_targets_own_p95():
    r, clock = resilience(hedge_factor=3.0, hedge_floor=2.0, hedge_initial=10.0)
    a = target("a")
    assert r.hedge_after(a) == 10.0  # nothing known yet
    await first_bytes(r, clock, a, 0.5, 7)
    assert r.hedge_after(a) == 10.0  # seven times are too few for a p95
    await first_bytes(r, clock, a, 0.5)
    assert r.hedge_after(a) == 2.0  # 3 × 0.5 s is under the floor
    await first_bytes(r, clock, a, 1.0, 64)  # the ring holds the last 64
    assert r.hedge_after(a) == 3.0
    await first_bytes(r, clock, a, 5.0, 3)  # 3 slow ones in 64 are under the top 5 %
    assert r.hedge_after(a) == 3.0
    await first_bytes(r, clock, a, 5.0)  # the 4th is the p95
    assert r.hedge_after(a) == 15.0
    await first_bytes(r, clock, a, 0.2, 64)  # the slow ones age out
    assert r.hedge_after(a) == 2.0


async def test_each_model_and_lane_has_its_own_times_and_the_setting_turns_it_off():
    r, clock = resilience(hedge_factor=3.0, hedge_floor=0.5, hedge_initial=10.0)
    a, a_other = target("a"), target("a", model="other")
    await first_bytes(r, clock, a, 1.0, 8, lane="stream")
    await first_bytes(r, clock, a, 4.0, 8, lane="json")  # a JSON first byte is the whole answer
    assert r.hedge_after(a, "stream") == 3.0
    assert r.hedge_after(a, "json") == 12.0
    assert r.hedge_after(a_other, "stream") == 10.0
    assert r.hedge_after(target("b")) == 10.0
    r.configure(Settings(hedge=False))
    assert r.hedge_after(a) is None


async def test_a_lost_race_counts_as_a_slow_first_byte_not_a_failure():
    r, clock = resilience(hedge_factor=3.0, hedge_floor=2.0, hedge_initial=10.0)
    a = target("a")
    await first_bytes(r, clock, a, 0.1, 60)
    assert r.hedge_after(a) == 2.0
    for _ in range(4):  # raced four times and outrun: a is slow, and its bound grows
        r.record_outrun(a, 2.5)
    assert r.hedge_after(a) == 7.5
    row = next(c for c in r.snapshot()["connections"] if c["id"] == "a")
    assert row["outrun"] == 4
    assert row["ttft_ms"] > 1000  # the latency strategies see it as slow too
    assert (row["failures"], row["consecutive_failures"], row["status"]) == (0, 0, "healthy")


def test_the_settings_are_checked():
    assert Settings.coerce("hedge", "off") is False
    assert Settings.coerce("hedge_factor", "1") == 1.0
    assert Settings.coerce("hedge_floor", 0.25) == 0.25
    for name, value in (("hedge_factor", 0.5), ("hedge_floor", 0), ("hedge_initial", -1)):
        with pytest.raises(ValueError, match=name):
            Settings.coerce(name, value)
