"""A request's batch whose answer is lost or an error: what Redis took is given back.

The ``admit`` script may run in Redis while its answer never reaches the request: it
comes after ``state_timeout`` (a proxy in front of Redis holds the replies back), or
the script fails partway (a key of the wrong type), leaving the steps before it done.
Each step's blind undo then goes to Redis (logged on the request path's connection,
the ``writes`` fixture), and the request goes on with this instance's own decisions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_testkit import (
    FakeUpstream,
    Instances,
    SlowProxy,
    Write,
    connection_id,
    count,
    limited_key,
    parsed_limits,
    priced_instance,
    requests_part,
    until,
)

#: seconds the proxy holds a reply: longer than ``state_timeout`` (0.25 s)
LATE = 0.6
LIMITS = {"rpm": 100, "concurrency": 10, "daily_usd": 1.0}

#: the requests here ask Redis themselves (a lease would take their steps out of the batch)
pytestmark = pytest.mark.usefixtures("no_leases")


@pytest.fixture
async def behind_proxy(slow_redis: SlowProxy, aiohttp_client: Any, tmp_path: Any,
                       upstream: FakeUpstream) -> AsyncIterator[Instances]:
    # (the proxy first: it closes after the gateway)
    async with priced_instance(aiohttp_client, tmp_path / "omniroute", slow_redis.url,
                               upstream, cache_backends="redis", cache_mode="on") as made:
        try:
            yield made
        finally:
            slow_redis.delay = 0


@pytest.fixture
async def direct(aiohttp_client: Any, tmp_path: Any, redis_url: str,
                 upstream: FakeUpstream) -> AsyncIterator[Instances]:
    async with priced_instance(aiohttp_client, tmp_path / "omniroute", redis_url, upstream,
                               cache_backends="redis", cache_mode="on") as made:
        yield made


def holdings(made: Instances, client: aioredis.Redis, key_id: str,
             scope: str) -> Callable[[], Awaitable[dict[str, int]]]:
    """What the key, its claim on ``scope`` and the connection hold in Redis."""
    shared = made[0].gateway.shared

    async def held() -> dict[str, int]:
        return {"key slots": await count(client, shared.link.key("key", key_id, "slots")),
                "reserved": await count(client, shared.link.key("key", key_id, "held")),
                "claims": await client.exists(shared.keys.key((key_id, scope))),
                "conn slots": await count(client, shared.link.key("conn", "*", "slots"))}

    return held


NOTHING = {"key slots": 0, "reserved": 0, "claims": 0, "conn slots": 0}


async def settled(held: Callable[[], Awaitable[dict[str, int]]], expected: dict[str, int],
                  timeout: float = 2.0) -> dict[str, int]:
    """What ``held`` finds once it is ``expected``, or when ``timeout`` is up."""
    deadline = time.monotonic() + timeout
    found = await held()
    while found != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        found = await held()
    return found


async def test_a_late_answer_gives_back_what_the_batch_took_once_redis_answers(
        behind_proxy: Instances, slow_redis: SlowProxy, upstream: FakeUpstream,
        client: aioredis.Redis, writes: list[Write]) -> None:
    made = behind_proxy
    key_id, secret = await limited_key(made, **LIMITS)
    shared = made[0].gateway.shared
    held = holdings(made, client, key_id, "late-1")
    start = len(writes)
    slow_redis.delay = LATE  # Redis runs the batch; its answer comes after state_timeout
    status, body, headers = await made.chat("late", key=secret, max_tokens=10,
                                            headers={"Idempotency-Key": "late-1"})
    assert status == 200 and headers["X-OmniRoute-Cache"] == "MISS", body
    assert upstream.calls == 1
    assert requests_part(writes[start:start + 1]) == [
        [("admit", "take", "cache_get", "idem_claim", "reserve", "take")]]
    assert not shared.link.up
    # Redis did take them all
    assert await held() == {"key slots": 1, "reserved": 1, "claims": 1, "conn slots": 1}
    slow_redis.delay = 0
    await until(lambda: shared.link.up, timeout=5.0)
    assert await settled(held, NOTHING) == NOTHING
    undos = [c for w in requests_part(writes[start + 1:]) for c in w]
    for undo in [("ZREM",), ("HDEL",), ("idem_release",)]:
        assert undo in undos, undos
    # the starts stay: the request went on, it counts in the rolling minute
    assert await count(client, shared.link.key("key", key_id, "starts")) == 1


async def test_a_script_error_partway_gives_back_the_steps_before_it(
        direct: Instances, upstream: FakeUpstream, client: aioredis.Redis,
        writes: list[Write]) -> None:
    made = direct
    key_id, secret = await limited_key(made, **LIMITS)
    shared = made[0].gateway.shared

    async def held() -> dict[str, int]:  # (the reservations are not a hash: not counted)
        return {"key slots": await count(client, shared.link.key("key", key_id, "slots")),
                "claims": await client.exists(shared.keys.key((key_id, "error-1")))}

    # the reservations are a string: the ``reserve`` step fails (WRONGTYPE) after the
    # key's slot was taken and the key claimed
    await client.set(shared.link.key("key", key_id, "held"), "not a hash")
    start = len(writes)
    status, body, headers = await made.chat("error", key=secret, max_tokens=10,
                                            headers={"Idempotency-Key": "error-1"})
    assert status == 200 and headers["X-OmniRoute-Cache"] == "MISS", body
    assert upstream.calls == 1
    assert requests_part(writes[start:start + 1]) == [
        [("admit", "take", "cache_get", "idem_claim", "reserve", "take")]]
    await until(lambda: not shared.batch._queue and not shared.batch._undos, timeout=2.0)
    await shared.batch.flush()
    assert await held() == {"key slots": 0, "claims": 0}
    undos = [c for w in requests_part(writes[start + 1:]) for c in w]
    assert ("idem_release",) in undos and ("HDEL",) in undos, undos
    assert shared.link.up and shared.link.errors == 1
    assert "WRONGTYPE" in (shared.link.last_reply_error or "")


async def test_an_error_of_the_cache_lookup_is_a_miss(
        direct: Instances, upstream: FakeUpstream, client: aioredis.Redis) -> None:
    made = direct
    status, _, headers = await made.chat("cached")
    assert status == 200 and headers["X-OmniRoute-Cache"] == "MISS"
    await made[0].cache.settled()
    status, _, headers = await made.chat("cached")
    assert status == 200 and headers["X-OmniRoute-Cache"] == "HIT"
    redis_cache = next(b for b in made[0].cache.backends if b.name == "redis")
    await client.delete(redis_cache._hits)
    await client.set(redis_cache._hits, "not a hash")  # a hit's count fails: WRONGTYPE
    status, body, headers = await made.chat("cached")
    assert status == 200 and headers["X-OmniRoute-Cache"] == "MISS", body
    assert upstream.calls == 2


async def test_a_batch_abandoned_on_a_hung_redis_is_still_bounded(
        behind_proxy: Instances, slow_redis: SlowProxy, client: aioredis.Redis) -> None:
    made = behind_proxy
    key_id, _ = await limited_key(made, **LIMITS)
    gateway = made[0].gateway
    shared, budgets = gateway.shared, gateway.budgets
    limits = parsed_limits(LIMITS)
    connection = connection_id(made)
    held = holdings(made, client, key_id, "hung")
    await asyncio.sleep(0.3)  # the reload's notice is out (a publish, on redis-py)
    batch = shared.request_batch()
    budgets.shared.prefetch_enter(batch, key_id, limits)
    shared.keys.prefetch_claim(batch, (key_id, "hung"), b"fp", "rid-hung", False)
    budgets.shared.prefetch_reserve(batch, budgets.state(key_id), limits, 0.01, 100)
    batch.take_slot(connection, 50, 1000)
    slow_redis.delay = 3600.0  # Redis runs it, and its answer never comes
    wire = shared.link._wire
    assert wire is not None
    written = wire.writes
    sending = asyncio.ensure_future(batch.send())
    await until(lambda: wire.writes > written, timeout=1.0, step=0)
    sending.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await sending
    # the answer's bound (state_timeout) still holds: the link goes down and what the
    # batch may have taken is queued to be given back
    waited = await until(lambda: not shared.link.up, timeout=1.0)
    assert waited < 0.25 + 0.15
    assert len(shared.batch._undos) == 4
    assert await held() == {"key slots": 1, "reserved": 1, "claims": 1, "conn slots": 1}
    slow_redis.delay = 0
    await until(lambda: shared.link.up, timeout=5.0)
    assert await settled(held, NOTHING) == NOTHING


async def test_a_slot_taken_ahead_is_renewed_before_it_is_read(
        direct: Instances, client: aioredis.Redis) -> None:
    made = direct
    shared = made[0].gateway.shared
    connection = connection_id(made)
    slots = shared.link.key("conn", connection, "slots")
    batch = shared.request_batch()
    batch.take_slot(connection, 50, 1000)
    await batch.send()
    (member, _), = await client.zrange(slots, 0, -1, withscores=True)
    soon = time.time() + 1.0
    await client.zadd(slots, {member: soon}, xx=True)  # its lease nearly over
    await shared.state.leases.renew()  # what the periodic sync does
    (_, lease_end), = await client.zrange(slots, 0, -1, withscores=True)
    assert lease_end > soon + 20, "a slot taken ahead and not read yet was not renewed"
    # read, it is held once; given back, it is held no more
    assert await shared.state.slots.take(connection, 50, 1000) == 0.0
    assert sum(len(m) for m in shared.state.leases.held.values()) == 1
    shared.state.slots.give(connection)
    batch.release()
    assert sum(len(m) for m in shared.state.leases.held.values()) == 0
    await shared.batch.flush()
    assert await count(client, slots) == 0

    # one never read is given back once, and held no more
    batch = shared.request_batch()
    batch.take_slot(connection, 50, 1000)
    await batch.send()
    assert sum(len(m) for m in shared.state.leases.held.values()) == 1
    batch.release()
    assert sum(len(m) for m in shared.state.leases.held.values()) == 0
    await shared.batch.flush()
    assert await count(client, slots) == 0


async def test_a_late_answer_to_a_part_s_own_call_is_given_back_too(
        behind_proxy: Instances, slow_redis: SlowProxy, client: aioredis.Redis) -> None:
    made = behind_proxy
    key_id, _ = await limited_key(made, **LIMITS)
    gateway = made[0].gateway
    shared, budgets = gateway.shared, gateway.budgets
    limits = parsed_limits(LIMITS)
    connection = connection_id(made)
    held = holdings(made, client, key_id, "own")
    await asyncio.sleep(0.3)  # the reload's notice is out (a publish, on redis-py)

    async def late(call: Callable[[], Awaitable[Any]]) -> Any:
        """``call`` with Redis's answer held past state_timeout; then Redis answers again."""
        await shared.link.command("PING")  # the connection is open (its SELECT answered)
        slow_redis.delay = LATE
        try:
            return await call()
        finally:
            slow_redis.delay = 0
            await until(lambda: shared.link.up, timeout=5.0)

    # a connection's slot taken on an attempt (a fallback's), a reservation made again in
    # ``routed``, an idempotency key claimed again: each decides locally, and what Redis
    # took is given back once it answers
    failures = shared.link.failures
    assert await late(lambda: shared.state.slots.take(connection, 50, 1000)) is None
    assert await late(lambda: budgets.shared.reserve(budgets.state(key_id), limits,
                                                     0.01, 100)) is None
    assert await late(lambda: shared.keys.claim((key_id, "own"), b"fp", "rid-own",
                                                False)) is None
    assert shared.link.failures >= failures + 3  # each was sent, and its answer late
    assert await settled(held, NOTHING) == NOTHING
