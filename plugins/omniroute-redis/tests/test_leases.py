"""An API key far from its limits is leased to each instance (``omniroute_redis.keylease``):
its requests are admitted there with no round trip, and the limits hold across the three
as they do without leases."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from omniroute.budgets import Limits
from redis_testkit import FakeUpstream, Instances, add_connection, until_routable
from test_multi import until_settled

pytestmark = pytest.mark.multi


async def priced_key(trio: Instances, upstream: FakeUpstream, limits: dict[str, Any]) -> str:
    await add_connection(trio, upstream)
    # 20 tokens a request at $250 per 1M: $0.005 a request
    resp = await trio[0].client.put("/api/pricing", headers=trio[0].admin_headers,
                                    json={"model": "up/m1", "input": 250, "output": 250})
    assert resp.status == 200, await resp.text()
    _, secret = await trio[0].store.create_key("team", set(), limits=Limits.parse(limits))
    await trio[0].gateway.reload()  # announced: the others reload and know the key
    await asyncio.sleep(0.2)
    return secret


async def leased_key(trio: Instances, upstream: FakeUpstream) -> tuple[Any, Any, str, Any]:
    """A key far from its limits, used three times through the first instance: that
    instance's gateway, its shared ledger, and the key's id and live lease there."""
    secret = await priced_key(trio, upstream,
                              {"rpm": 10_000, "concurrency": 1_000, "daily_usd": 100.0})
    gw = trio[0]
    for i in range(3):
        assert (await trio.chat(f"q{i}", key=secret, via=gw, max_tokens=10))[0] == 200
    ledger = gw.gateway.budgets.shared
    key_id, lease = next(iter(ledger.keyleases.live.items()))
    return gw, ledger, key_id, lease


def leased_request(gw: Any, ledger: Any, key_id: str, lease: Any) -> tuple[Any, Any, Any]:
    """A request's batch admitted from ``lease``: the batch, its slot and its estimate held."""
    batch = gw.gateway.shared.request_batch()
    slot = ledger.prefetch_enter(batch, key_id, lease.limits)
    held = ledger.prefetch_reserve(batch, gw.gateway.budgets.state(key_id), lease.limits,
                                   0.01, 100)
    return batch, slot, held


def granted(trio: Instances) -> int:
    return sum(gw.gateway.shared.health()["leases_granted"] for gw in trio.gateways)


async def test_a_key_far_from_its_limits_is_served_from_leases_and_settled_exactly(
        trio: Instances, upstream: FakeUpstream, redis_url: str) -> None:
    secret = await priced_key(trio, upstream,
                              {"rpm": 10_000, "concurrency": 1_000, "daily_usd": 100.0})
    statuses = [(await trio.chat(f"q{i}", key=secret, max_tokens=10))[0] for i in range(30)]
    assert statuses == [200] * 30
    assert granted(trio) >= 3  # each instance leased the key
    await asyncio.sleep(1.3)  # every lease closed, and ended
    # the spend of every request reached Redis: leased or not, once each
    assert await until_settled(trio, 30) == pytest.approx(30 * 0.005)
    shared = trio[0].gateway.shared
    client = aioredis.Redis.from_url(redis_url)
    try:
        names = [n async for n in client.scan_iter(match=shared.link.key("key", "*"))]
        starts = next(n for n in names if n.endswith(b":starts"))
        assert await client.zcard(starts) == 30  # every request a start, no unused one
        assert not [n for n in names if n.endswith(b":slots")] or all(
            await client.zcard(n) == 0 for n in names if n.endswith(b":slots"))
        held = [n for n in names if n.endswith(b":held")]
        assert not held or await client.hlen(held[0]) == 0  # no lease's reservation left
    finally:
        await client.aclose()


async def test_a_leased_rpm_limit_stays_global(trio: Instances,
                                                upstream: FakeUpstream) -> None:
    secret = await priced_key(trio, upstream, {"rpm": 40})
    statuses = [(await trio.chat(f"q{i}", key=secret, max_tokens=10))[0] for i in range(60)]
    assert granted(trio) >= 3
    assert 39 <= statuses.count(200) <= 41, statuses
    assert statuses.count(200) + statuses.count(429) == 60


async def test_a_leased_budget_is_not_overspent(trio: Instances,
                                                upstream: FakeUpstream) -> None:
    # $0.50 at $0.005 a request: 100 requests' worth, leased in shares of at most an eighth
    # of what is left; 150 requests at once over the three spend no more than the budget
    # and what is in flight beyond the estimates
    secret = await priced_key(trio, upstream, {"daily_usd": 0.5})
    for i in range(3):  # each instance asks for its lease
        assert (await trio.chat(f"w{i}", key=secret, max_tokens=10))[0] == 200
    await asyncio.sleep(0.1)
    upstream.delay = 0.01
    results = await asyncio.gather(*(trio.chat(f"q{i}", key=secret, max_tokens=10)
                                     for i in range(150)))
    served = 3 + sum(1 for status, _, _ in results if status == 200)
    assert granted(trio) >= 3
    assert served <= 100 + 1, served
    assert {r[1]["error"]["code"] for r in results if r[0] != 200} <= {"budget_exceeded"}
    await asyncio.sleep(1.3)
    assert await until_settled(trio, served) == pytest.approx(served * 0.005)


async def test_a_leased_connection_rpm_limit_stays_global(trio: Instances,
                                                           upstream: FakeUpstream) -> None:
    await add_connection(trio, upstream, rpm=40)
    await until_routable(trio, "up/m1")
    statuses = [(await trio.chat(f"q{i}"))[0] for i in range(60)]
    leased = sum(gw.gateway.shared.state.slots.keyleases.granted for gw in trio.gateways)
    assert leased >= 3  # each instance leased the connection
    assert 39 <= statuses.count(200) <= 41, statuses
    assert upstream.calls == statuses.count(200)
    assert set(statuses) == {200, 429}


async def test_what_a_batch_took_from_a_lease_and_nobody_read_goes_back_to_it(
        trio: Instances, upstream: FakeUpstream) -> None:
    # a request admitted from its key's lease that ends before reading it (a cache hit, a
    # client gone) gives its slot, its start and its estimate back to the lease: one kept
    # would keep the lease from ending, and its slots renewed in Redis for ever
    from omniroute_redis.keylease import Granted, Held

    gw, ledger, key_id, lease = await leased_key(trio, upstream)
    before = (lease.busy, lease.pending, lease.left, lease.left_musd)
    batch, slot, held = leased_request(gw, ledger, key_id, lease)
    assert isinstance(slot, Granted) and isinstance(held, Held)
    assert batch.send() is None  # nothing to ask Redis
    assert (lease.busy, lease.pending, lease.left) == (before[0] + 1, before[1] + 1,
                                                        before[2] - 1)
    batch.release()
    assert (lease.busy, lease.pending, lease.left, lease.left_musd) == before


async def test_a_leased_request_settles_its_spend_and_its_slot_with_its_lease(
        trio: Instances, upstream: FakeUpstream) -> None:
    # a request admitted from its key's lease gives its slot back to that lease with its
    # settle (one call), and its spend counts as not yet sent to Redis (left out of the
    # floor a reservation sends) until the lease ends, and no longer then
    gw, ledger, key_id, lease = await leased_key(trio, upstream)
    spent = ledger.keyleases.unsent(key_id)
    assert spent == (lease.spent_musd, lease.spent_tokens) and spent[0] > 0
    busy, pending = lease.busy, lease.pending
    batch, slot, held = leased_request(gw, ledger, key_id, lease)
    assert slot.result() is True and held.result() is held
    assert (lease.busy, lease.pending) == (busy + 1, pending + 1)
    ledger.settle(held, 0.002, 40, leave=key_id)
    batch.release()
    assert (lease.busy, lease.pending) == (busy, pending)  # its slot back to its lease
    assert ledger.keyleases.unsent(key_id) == (spent[0] + 2_000, spent[1] + 40)
    await asyncio.sleep(1.3)  # the lease closed, and ended: its spend went with its end
    assert ledger.keyleases.unsent(key_id) is None
