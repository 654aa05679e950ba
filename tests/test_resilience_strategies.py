"""Strategies: each orders targets as named, and repeatably under a seeded RNG."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from typing import Any

import pytest

from omniroute.config import ACCOUNT_STRATEGIES, Settings
from omniroute.errors import UpstreamStatusError
from omniroute.pricing import Override, PriceBook
from omniroute.providers.base import Provider
from omniroute.resilience import ManualClock, Resilience
from omniroute.resilience.strategies import STRATEGIES, normalize
from omniroute.routing import Target
from omniroute.storage.store import Connection


class FakeProvider(Provider):
    type = "fake"


def target(cid: str, model: str = "m", prefix: str = "up", **settings: Any) -> Target:
    conn = Connection(id=cid, type="fake", name=cid, prefix=prefix, settings=settings)
    return Target(conn, FakeProvider(conn, None), model)  # type: ignore[arg-type]


def ids(targets: Any) -> list[str]:
    return [t.connection.id for t in targets]


def make(seed: int = 1, **settings: Any) -> Resilience:
    return Resilience(Settings(**settings), clock=ManualClock(), rng=random.Random(seed))


ABC = [target("a"), target("b"), target("c")]


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_returns_every_target_once(name: str) -> None:
    r = make()
    for _ in range(5):
        assert sorted(ids(r.plan(ABC, strategy=name).targets)) == ["a", "b", "c"]
    assert r.plan([], strategy=name).targets == ()


@pytest.mark.parametrize("name", list(STRATEGIES))
async def test_every_strategy_is_repeatable_under_a_seed(name: str) -> None:
    async def run(seed: int) -> list[list[str]]:
        r = make(seed)
        clock: ManualClock = r.clock  # type: ignore[assignment]
        out = []
        for i in range(30):  # feed the stats so least-used, latency and p2c have data
            plan = r.plan(ABC, strategy=name)
            out.append(ids(plan.targets))
            async with r.attempt(plan.targets[0]) as attempt:
                clock.advance(0.1 * (i % 3 + 1))
                attempt.first_byte()
        return out

    assert await run(42) == await run(42)


@pytest.mark.parametrize("name", ["weighted", "random", "p2c"])
def test_random_strategies_depend_on_the_seed(name: str) -> None:
    def firsts(seed: int) -> list[str]:
        r = make(seed)
        return [ids(r.plan(ABC, strategy=name).targets)[0] for _ in range(40)]

    assert firsts(1) == firsts(1)
    assert firsts(1) != firsts(2)


def test_names_match_the_setting_choices() -> None:
    assert tuple(STRATEGIES) == ACCOUNT_STRATEGIES
    assert normalize("Round_Robin") == "round-robin"
    assert normalize("fastest") is None and normalize(None) is None


def test_unknown_strategy_falls_back_to_the_configured_default() -> None:
    r = make(account_strategy="round-robin")
    first = r.plan(ABC, strategy="no-such-thing")
    second = r.plan(ABC)
    assert first.strategy == second.strategy == "round-robin"
    assert ids(first.targets)[0] == "a" and ids(second.targets)[0] == "b"


def test_priority_keeps_the_route_order() -> None:
    r = make()
    for _ in range(3):
        assert ids(r.plan(ABC).targets) == ["a", "b", "c"]
    assert r.plan(ABC).strategy == "priority"


def test_round_robin_rotates_and_keeps_the_rest_as_fallbacks() -> None:
    r = make()
    plans = [ids(r.plan(ABC, strategy="round-robin").targets) for _ in range(4)]
    assert plans == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_round_robin_is_sticky_for_n_requests() -> None:
    r = make(round_robin_sticky=2)
    firsts = [ids(r.plan(ABC, strategy="round-robin").targets)[0] for _ in range(6)]
    assert firsts == ["a", "a", "b", "b", "c", "c"]


def test_round_robin_state_is_per_target_list() -> None:
    r = make()
    other = [target("x"), target("y")]
    assert ids(r.plan(ABC, strategy="round-robin").targets)[0] == "a"
    assert ids(r.plan(other, strategy="round-robin").targets)[0] == "x"
    assert ids(r.plan(ABC, strategy="round-robin").targets)[0] == "b"
    assert ids(r.plan(other, strategy="round-robin").targets)[0] == "y"


def test_weighted_follows_the_weights() -> None:
    r = make(7)
    heavy, light, off = target("heavy", weight=3), target("light"), target("off", weight=0)
    firsts = Counter(ids(r.plan([light, off, heavy], strategy="weighted").targets)[0]
                     for _ in range(4000))
    assert firsts["off"] == 0
    assert 0.72 < firsts["heavy"] / 4000 < 0.78
    for _ in range(50):
        assert ids(r.plan([off, light, heavy], strategy="weighted").targets)[-1] == "off"


def test_random_is_uniform_enough() -> None:
    r = make(3)
    orders = Counter(tuple(ids(r.plan(ABC, strategy="random").targets)) for _ in range(3000))
    assert set(orders) == set(itertools.permutations("abc"))
    assert all(350 < n < 650 for n in orders.values())


async def test_least_used_prefers_fewest_requests_then_longest_idle() -> None:
    r = make()
    clock: ManualClock = r.clock  # type: ignore[assignment]
    a, b, c = ABC
    for t in (a, a, b, c):
        clock.advance(1)
        async with r.attempt(t):
            pass
    assert ids(r.plan(ABC, strategy="least-used").targets) == ["b", "c", "a"]
    clock.advance(1)
    async with r.attempt(b):
        pass
    assert ids(r.plan(ABC, strategy="least-used").targets) == ["c", "a", "b"]


async def test_fill_first_spills_over_only_when_the_first_is_full() -> None:
    r = make(queue_timeout=0.0)
    a, b, c = target("a", max_concurrency=1), target("b", max_concurrency=2), target("c")
    assert ids(r.plan([a, b, c], strategy="fill-first").targets) == ["a", "b", "c"]
    assert ids(r.plan([a, b, c], strategy="priority").targets) == ["a", "b", "c"]
    async with r.attempt(a):
        assert ids(r.plan([a, b, c], strategy="fill-first").targets) == ["b", "c", "a"]
        # priority does not look at load
        assert ids(r.plan([a, b, c], strategy="priority").targets) == ["a", "b", "c"]
        async with r.attempt(b), r.attempt(b):
            assert ids(r.plan([a, b, c], strategy="fill-first").targets) == ["c", "a", "b"]
    assert ids(r.plan([a, b, c], strategy="fill-first").targets) == ["a", "b", "c"]


def test_cost_optimized_cheapest_first_unknown_last() -> None:
    r = make()
    route = [target("p1", "mystery-model"), target("p2", "gpt-4o"),
             target("p3", "gpt-4o-mini-2024-07-18"), target("p4", "claude-opus-4-1")]
    assert ids(r.plan(route, strategy="cost-optimized").targets) == ["p3", "p2", "p4", "p1"]
    cheap = Resilience(Settings(), clock=ManualClock(),
                       prices=PriceBook([Override("up/mystery-model", 0.01, 0.02)]))
    assert ids(cheap.plan(route, strategy="cost-optimized").targets) == ["p1", "p3", "p2", "p4"]


def test_latency_optimized_measures_unknown_targets_then_prefers_the_fastest() -> None:
    r = make()
    a, b, c = ABC
    r.record_success(a, ttft=0.5)
    r.record_success(b, ttft=0.1)
    assert ids(r.plan(ABC, strategy="latency-optimized").targets) == ["c", "b", "a"]
    r.record_success(c, ttft=0.3)
    assert ids(r.plan(ABC, strategy="latency-optimized").targets) == ["b", "c", "a"]
    for _ in range(20):  # the moving average follows b getting slow
        r.record_success(b, ttft=2.0)
    assert ids(r.plan(ABC, strategy="latency-optimized").targets) == ["c", "a", "b"]


async def test_p2c_prefers_the_less_loaded_of_two() -> None:
    r = make(5)
    busy, idle = target("busy"), target("idle")
    gate = asyncio.Event()

    async def hold() -> None:
        async with r.attempt(busy):
            await gate.wait()

    holders = [asyncio.create_task(hold()) for _ in range(3)]
    await asyncio.sleep(0)
    for _ in range(20):  # with two targets both are always sampled: the idle one wins
        assert ids(r.plan([busy, idle], strategy="p2c").targets) == ["idle", "busy"]
    gate.set()
    await asyncio.gather(*holders)
    assert r.snapshot()["connections"][0]["in_flight"] == 0


def test_p2c_weighs_latency_and_errors() -> None:
    r = make(5)
    slow, fast = target("slow"), target("fast")
    r.record_success(slow, ttft=2.0)
    r.record_success(fast, ttft=0.2)
    assert ids(r.plan([slow, fast], strategy="p2c").targets) == ["fast", "slow"]
    flaky = target("flaky")
    r.record_success(flaky, ttft=0.2)
    for _ in range(5):  # 5xx raise the error rate; let the cooldown pass each time
        r.record_failure(flaky, UpstreamStatusError("x", status=500))
        r.clock.advance(400)  # type: ignore[attr-defined]
    assert ids(r.plan([flaky, fast], strategy="p2c").targets) == ["fast", "flaky"]


def test_p2c_spreads_load_among_equals() -> None:
    r = make(11)
    many = [target(f"t{i}") for i in range(6)]
    firsts = Counter(ids(r.plan(many, strategy="p2c").targets)[0] for _ in range(600))
    # equal scores: the tie goes to the earlier of the two sampled, so all but the last get some
    assert set(firsts) == {f"t{i}" for i in range(5)}
    assert firsts["t0"] > firsts["t2"] > firsts["t4"]
