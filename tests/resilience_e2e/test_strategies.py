"""Every combo strategy end to end, through the official openai SDK."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

import openai
import pytest
from fakes.openai_upstream import (
    error,
    hang_before_headers,
)

from resilience_e2e.support import (
    MODEL,
    api,
    call,
    chats,
    manual_clock,
    served_by,
    three,
    until,
)


async def test_priority_always_starts_with_the_first_step(gw):
    await three(gw, "priority")
    assert await served_by(gw, "pool", 5) == ["a"] * 5


async def test_round_robin_rotates_and_stays_sticky_for_n(gw):
    await three(gw, "Round_Robin")  # the settings' spelling rules apply to combos too
    assert await served_by(gw, "pool", 6) == ["a", "b", "c", "a", "b", "c"]
    await gw.set_settings(round_robin_sticky=2)  # c has had one of its two turns
    assert await served_by(gw, "pool", 6, 10) == ["c", "a", "a", "b", "b", "c"]


async def test_weighted_follows_the_step_weights_and_repeats_under_a_seed(gw):
    steps = [{"model": f"a/{MODEL}", "weight": 6}, {"model": f"b/{MODEL}", "weight": 3},
             {"model": f"c/{MODEL}", "weight": 1}]
    await three(gw, "weighted", steps)
    first = await served_by(gw, "pool", 40)
    counts = Counter(first)
    assert counts["a"] > counts["b"] > counts["c"] > 0, counts
    gw.resilience.rng = random.Random(1234)
    assert await served_by(gw, "pool", 40, 100) == first


async def test_weighted_accounts_of_one_provider_follow_their_weight_setting(gw):
    await gw.set_settings(account_strategy="weighted")
    heavy = await gw.add("heavy", prefix="p", weight=9)
    light = await gw.add("light", prefix="p", settings={"weight": 1})
    gw.resilience.rng = random.Random(5)
    await served_by(gw, f"p/{MODEL}", 30)
    assert len(chats(heavy)) > 3 * len(chats(light)) > 0


async def test_random_is_repeatable_under_a_seed(gw):
    await three(gw, "random")
    first = await served_by(gw, "pool", 15)
    assert set(first) == {"a", "b", "c"}
    gw.resilience.rng = random.Random(1234)
    assert await served_by(gw, "pool", 15, 100) == first


async def test_least_used_goes_to_the_fewest_requests_then_the_longest_idle(gw):
    await three(gw, "least-used")
    await served_by(gw, f"a/{MODEL}", 2)  # a has served two requests already
    assert await served_by(gw, "pool", 7, 10) == ["b", "c", "b", "c", "a", "b", "c"]


async def test_fill_first_fills_one_account_before_spilling(gw):
    await gw.set_settings(queue_timeout=2)
    a, _, _ = await three(gw, "fill-first")
    await api(gw, "PUT", f"/api/providers/{a.conn_id}", {"max_concurrency": 1})
    assert await served_by(gw, "pool", 3) == ["a"] * 3
    a.script.append(hang_before_headers(0.8))
    busy = asyncio.create_task(call(gw, "pool", 10))
    await until(lambda: len(chats(a)) == 4)
    started = time.monotonic()
    assert await served_by(gw, "pool", 2, 20) == ["b", "b"]  # a is full: no queueing on it
    assert time.monotonic() - started < 0.4
    assert (await busy)[0]["X-OmniRoute-Provider"] == "a"
    assert await served_by(gw, "pool", 1, 30) == ["a"]  # room again: back to the first


async def test_cost_optimized_picks_the_cheapest_by_the_pricing_table(gw):
    # list prices: gpt-4o 2.50/10.00, gpt-4o-mini 0.15/0.60, gpt-4.1 2.00/8.00 per 1M tokens
    _, b, _ = await three(gw, "cost-optimized", ["a/gpt-4o", "b/gpt-4o-mini", "c/gpt-4.1"])
    assert await served_by(gw, "pool", 3) == ["b", "b", "b"]
    b.script.append(error(500, "b is down"))
    headers, _ = await call(gw, "pool", 10)
    assert headers["X-OmniRoute-Provider"] == "c"  # the next cheapest, not the first step
    assert headers["X-OmniRoute-Model"] == "gpt-4.1"


async def test_latency_optimized_measures_each_once_then_prefers_the_fastest(gw):
    await three(gw, "latency-optimized", a={"latency": 0.12}, c={"latency": 0.06})
    assert await served_by(gw, "pool", 6) == ["a", "b", "c", "b", "b", "b"]


async def test_p2c_picks_the_less_loaded_of_two_random_choices(gw):
    clock = manual_clock(gw)  # the clock stands still: every latency is equal, errors decide
    _, b, _ = await three(gw, "p2c")
    b.script.append(error(500, "b stumbles"))
    with pytest.raises(openai.InternalServerError):
        await call(gw, f"b/{MODEL}")
    clock.advance(10)  # its cooldown is over; its error rate stays
    gw.resilience.rng = random.Random(1234)
    first = await served_by(gw, "pool", 12)
    # b only ever loses its pairings; a and c each win some (a wins ties: route order)
    assert "b" not in first and set(first) == {"a", "c"}
    gw.resilience.rng = random.Random(1234)
    assert await served_by(gw, "pool", 12, 100) == first
