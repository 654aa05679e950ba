"""Accounts (a connection's handles, built once per connection object) and kept plans
(a route's plan given again while every account in it is clear)."""

from __future__ import annotations

import contextlib
import random

import pytest
from test_resilience_core import ids, make, target

from omniroute.config import Settings
from omniroute.errors import CircuitOpen, UpstreamStatusError, UpstreamTimeout
from omniroute.routing import Target


def test_target_label_and_prefix_are_set_when_built() -> None:
    t = target("a", prefix="p", model="gpt-4o")
    assert (t.prefix, t.label) == ("p", "p/gpt-4o (name-a)")
    assert t == Target(t.connection, t.provider, "gpt-4o")  # derived: not compared
    assert "label" not in repr(t)


def test_an_account_is_built_once_per_connection_object() -> None:
    r, _ = make()
    a = target("a")
    account = r.account(a)
    assert r.account(a) is account
    assert r.account(Target(a.connection, a.provider, "other-model")) is account
    # a reload brings a new connection object: new handles over the same records
    reloaded = target("a", max_concurrency=2)
    again = r.account(reloaded)
    assert again is not account and again.stats is account.stats
    assert again.breaker is account.breaker and again.limiter is not None
    assert account.limiter is None
    r.retain(set())
    assert r.account(reloaded) is not again  # forgotten with its connection


async def test_a_healthy_routes_plan_is_kept_and_given_again() -> None:
    r, clock = make()
    route = (target("a"), target("b"))
    plan = r.plan(route)
    assert r.plan(route) is plan and ids(plan.targets) == ["a", "b"]
    assert r.plan(list(route)) is not plan  # a list may change: never kept
    assert r.plan(route, strategy="round-robin") is not plan  # another strategy, another plan
    r.record_failure(route[0], UpstreamStatusError("slow", status=429,
                                                   headers={"Retry-After": "5"}))
    cooling = r.plan(route)
    assert ids(cooling.targets) == ["b"] and ids(t for t, _ in cooling.skipped) == ["a"]
    clock.advance(5)  # its rest is over, but recorded: planned in full until a success
    assert ids(r.plan(route).targets) == ["a", "b"] and r.plan(route) is not plan
    async with r.attempt(route[0]):
        pass
    kept = r.plan(route)
    assert r.plan(route) is kept and ids(kept.targets) == ["a", "b"]


def test_a_rest_written_into_the_records_by_another_instance_is_seen() -> None:
    """A shared store applies other instances' changes to the records in place: a kept
    plan reads them, it does not wait to be told."""
    r, clock = make()
    a, b = target("a", prefix="p1"), target("b", prefix="p2")
    route = (a, b)
    assert ids(r.plan(route).targets) == ["a", "b"]
    r.state.connections["a"].cooling_until = clock.monotonic() + 30
    assert ids(r.plan(route).targets) == ["b"]
    r.state.connections["a"].cooling_until = None
    r.state.breakers["p2"].opened_at = clock.monotonic()
    plan = r.plan(route)
    assert ids(plan.targets) == ["a"] and plan.skipped == ((b, "breaker_open"),)
    r.state.breakers["p2"].opened_at = None
    r.state.connections["a"].terminal_reason = "revoked"
    assert ids(r.plan(route).targets) == ["b"]


def test_kept_plans_follow_new_settings() -> None:
    r, _ = make()
    route = tuple(target(c) for c in "abc")
    assert len(r.plan(route).targets) == 3
    r.configure(Settings(max_attempts=2))
    assert ids(r.plan(route).targets) == ["a", "b"]
    r.configure(Settings(account_strategy="round-robin"))
    firsts = {ids(r.plan(route).targets)[0] for _ in range(3)}
    assert firsts == {"a", "b", "c"}  # the setting's strategy now: nothing kept


@pytest.mark.parametrize("strategy", ["round-robin", "random", "weighted", "least-used",
                                      "latency-optimized", "p2c"])
def test_strategies_that_read_load_or_chance_are_planned_every_time(strategy: str) -> None:
    r, _ = make()
    route = tuple(target(c) for c in "abcd")
    assert r.plan(route, strategy=strategy) is not r.plan(route, strategy=strategy)
    # one target has one order: kept whatever the strategy
    one = (target("z"),)
    assert r.plan(one, strategy=strategy) is r.plan(one, strategy=strategy)


def test_fill_first_is_kept_only_without_limits() -> None:
    r, _ = make()
    free = (target("a"), target("b"))
    assert r.plan(free, strategy="fill-first") is r.plan(free, strategy="fill-first")
    limited = (target("c", max_concurrency=1), target("d"))
    assert r.plan(limited, strategy="fill-first") is not r.plan(limited, strategy="fill-first")


async def test_a_session_goes_first_on_a_kept_plan_too() -> None:
    r, _ = make(max_attempts=2)
    route = tuple(target(c) for c in "abc")
    async with r.attempt(route[2], session_id="s"):
        pass
    kept = r.plan(route)
    assert r.plan(route) is kept
    plan = r.plan(route, session_id="s")  # from past max_attempts, as when planned in full
    assert ids(plan.targets) == ["c", "a"] and plan.sticky is route[2]
    assert r.plan(route, session_id="unknown") is kept


async def test_kept_and_full_plans_agree_through_random_events() -> None:
    """Whatever happens to the accounts, a kept plan is what planning in full gives."""
    rng = random.Random(3)
    r, clock = make(breaker_threshold=2, breaker_reset=20.0, cooldown_base=2.0)
    routes = [tuple(target(c, prefix=p) for c, p in zip("abcd", ["p1", "p1", "p2", "p3"],
                                                          strict=True)),
              (target("a", prefix="p1"),), (target("e", prefix="p3"), target("b", prefix="p1"))]
    for _ in range(400):
        route = rng.choice(routes)
        t = rng.choice(route)
        event = rng.random()
        if event < 0.15:
            r.record_failure(t, rng.choice([
                UpstreamStatusError("busy", status=429), UpstreamStatusError("down", status=502),
                UpstreamTimeout("slow"), UpstreamStatusError("down", status=503),
                UpstreamStatusError("gone", status=402)]))
        elif event < 0.6:
            with contextlib.suppress(CircuitOpen):
                async with r.attempt(t, session_id=rng.choice([None, "s1", "s2"])):
                    pass
        elif event < 0.8:
            clock.advance(rng.choice([0.5, 3.0, 25.0]))
        elif event < 0.9:
            r.reset(rng.choice([None, t.connection.id]))
        elif event < 0.92:
            r.configure(Settings(breaker_threshold=2, breaker_reset=20.0, cooldown_base=2.0,
                                 max_attempts=rng.choice([1, 2, 10])))
        for session in (None, "s1"):
            kept = r.plan(route, session_id=session)
            full = r.planner.plan_in_full(list(route), None, session)
            assert (kept.targets, kept.skipped, kept.sticky) == (
                full.targets, full.skipped, full.sticky)
