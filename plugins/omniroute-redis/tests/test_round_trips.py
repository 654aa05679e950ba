"""Round trips to Redis per request: one before dispatch, one after the answer.

Every write on the request path's connection (:class:`omniroute_redis.wire.Wire`) is
logged with the commands it carries (a script by its name); the fake upstream notes
where the log stands when the gateway calls it. The background work of the instance
(the resilience sync's ``merge`` scripts, lease renewals) is left out of the counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from omniroute import Stage, StageRun, hookimpl
from omniroute.budgets.stage import BudgetRun
from omniroute.plugins import load_plugins
from redis_testkit import (
    FakeUpstream,
    Instances,
    Write,
    connection_id,
    count,
    limited_key,
    parsed_limits,
    priced_instance,
    requests_part,
    until,
)

#: the requests here ask Redis themselves (a lease would take their steps out of the batch)
pytestmark = pytest.mark.usefixtures("no_leases")


@pytest.fixture
async def one(aiohttp_client: Any, tmp_path: Any, redis_url: str,
              upstream: FakeUpstream) -> AsyncIterator[Instances]:
    """One instance with the shared ``redis`` cache, and its connection limited."""
    async with priced_instance(aiohttp_client, tmp_path / "omniroute", redis_url, upstream,
                               cache_backends="redis", cache_mode="on") as made:
        yield made


async def test_a_request_with_every_concern_waits_for_one_round_trip_before_dispatch(
        one: Instances, upstream: FakeUpstream, writes: list[Write],
        client: aioredis.Redis) -> None:
    _, secret = await limited_key(one, rpm=100, concurrency=10, daily_usd=1.0)
    shared = one[0].gateway.shared
    called: list[int] = []
    upstream.on_call = lambda: called.append(len(writes))
    flushed = shared.batch.round_trips
    start = len(writes)
    status, body, headers = await one.chat("all at once", key=secret, max_tokens=10,
                                           headers={"Idempotency-Key": "rt-1"})
    assert status == 200, body
    assert headers["X-OmniRoute-Cache"] == "MISS"
    # before dispatch: the key's slot, the cache lookup, the claim, the reservation and
    # the connection's slot, in one script: one write, one round trip
    assert requests_part(writes[start:called[0]]) == [
        [("admit", "take", "cache_get", "idem_claim", "reserve", "take")]]
    # after the answer: the slots given back, the spend settled, the answer kept for the
    # key, the cache's entry stored, all in one pipeline
    await until(lambda: shared.batch.round_trips > flushed, timeout=2.0)
    await one[0].cache.settled()
    await asyncio.sleep(0.05)  # nothing else follows
    after = requests_part(writes[called[0]:])
    assert len(after) == 1 and shared.batch.round_trips == flushed + 1, after
    # (the key's slot is given back by its settle: one command; the connection's by ZREM)
    assert sorted(after[0]) == sorted([("ZREM",), ("settle",), ("idem_settle",),
                                       ("cache_set",)])
    key_id = next(iter(one[0].gateway.budgets.keys))
    assert await count(client, shared.link.key("key", key_id, "slots")) == 0
    assert await count(client, shared.link.key("key", key_id, "held")) == 0
    assert await count(client, shared.link.key("conn", "*", "slots")) == 0
    # and the store is there for every instance
    assert await count(client, shared.link.key("cache", "index")) == 1


async def test_a_request_is_priced_once(one: Instances, monkeypatch: Any) -> None:
    """The budget's estimate made for the batch is the one ``routed`` reserves: the route
    and the estimate did not change, so the request is not priced a second time."""
    _, secret = await limited_key(one, rpm=100, concurrency=10, daily_usd=1.0)
    prices = one[0].gateway.prices
    priced: list[object] = []
    estimate = prices.estimate_usd

    def counted(*args: Any, **kwargs: Any) -> float | None:
        priced.append(args[0])
        return estimate(*args, **kwargs)

    monkeypatch.setattr(prices, "estimate_usd", counted)
    estimated: list[object] = []
    tokens = BudgetRun.estimate

    def estimate_counted(run: BudgetRun, ctx: Any) -> tuple[int, int]:
        estimated.append(ctx)
        return tokens(run, ctx)

    monkeypatch.setattr(BudgetRun, "estimate", estimate_counted)
    status, body, _ = await one.chat("priced once", key=secret, max_tokens=10)
    assert status == 200, body
    assert len(priced) == 1
    assert len(estimated) == 1  # and its tokens estimated once: the body is the same one


async def test_a_claim_nobody_waits_for_leaves_nothing_to_be_told(one: Instances) -> None:
    """A key claimed by its request (nearly all of them) is published to nobody: its claim
    keeps no event to be told by (one a request, never taken out, grew without bound)."""
    shared = one[0].gateway.shared
    for n in range(3):
        status, body, _ = await one.chat(f"told {n}", headers={"Idempotency-Key": f"t-{n}"})
        assert status == 200, body
    assert shared.keys._heard == {}


async def test_a_lone_concern_is_its_own_script(one: Instances, upstream: FakeUpstream,
                                                 writes: list[Write]) -> None:
    called: list[int] = []
    upstream.on_call = lambda: called.append(len(writes))
    start = len(writes)
    # the admin key has no limits, the cache is bypassed: only the connection's slot
    status, body, headers = await one.chat("only the slot",
                                           headers={"X-OmniRoute-No-Cache": "true"})
    assert status == 200 and headers["X-OmniRoute-Cache"] == "BYPASS", body
    assert requests_part(writes[start:called[0]]) == [[("take",)]]


async def test_a_cache_hit_takes_no_claim_no_reservation_and_no_connection_slot(
        one: Instances, upstream: FakeUpstream, writes: list[Write],
        client: aioredis.Redis) -> None:
    key_id, secret = await limited_key(one, rpm=100, concurrency=10, daily_usd=1.0)
    status, _, headers = await one.chat("cached", key=secret, max_tokens=10,
                                        headers={"Idempotency-Key": "hit-1"})
    assert status == 200 and headers["X-OmniRoute-Cache"] == "MISS"
    await one[0].cache.settled()
    start = len(writes)
    status, _, headers = await one.chat("cached", key=secret, max_tokens=10,
                                        headers={"Idempotency-Key": "hit-2"})
    assert status == 200 and headers["X-OmniRoute-Cache"] == "HIT"
    assert upstream.calls == 1
    assert [("admit", "take", "cache_get", "idem_claim", "reserve", "take")] in \
        requests_part(writes[start:])
    shared = one[0].gateway.shared
    # the key's slot was taken (a hit counts against rpm); nothing after the lookup ran
    assert await count(client, shared.link.key("key", key_id, "starts")) == 2
    assert await count(client, shared.link.key("conn", "*", "starts")) == 1
    assert await count(client, shared.link.key("key", key_id, "held")) == 0
    assert await client.exists(shared.keys.key((key_id, "hit-2"))) == 0
    assert await client.exists(shared.keys.key((key_id, "hit-1"))) == 1
    spend = shared.link.key("key", key_id, "spend", "*")
    requests = [int(await client.hget(name, "requests") or 0)
                async for name in client.scan_iter(match=spend)]
    assert requests == [1]  # the hit reserved nothing and settled nothing


async def test_a_refused_key_slot_stops_everything_after_it(
        one: Instances, upstream: FakeUpstream, client: aioredis.Redis) -> None:
    key_id, secret = await limited_key(one, rpm=1, daily_usd=1.0)
    status, _, _ = await one.chat("first", key=secret, max_tokens=10,
                                  headers={"Idempotency-Key": "slot-1"})
    assert status == 200
    status, body, headers = await one.chat("second", key=secret, max_tokens=10,
                                           headers={"Idempotency-Key": "slot-2"})
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded", body
    assert float(headers["Retry-After"]) > 0
    assert upstream.calls == 1
    shared = one[0].gateway.shared
    assert await client.exists(shared.keys.key((key_id, "slot-2"))) == 0
    assert await count(client, shared.link.key("conn", "*", "starts")) == 1
    assert await count(client, shared.link.key("key", key_id, "held")) == 0


async def test_a_refused_reservation_takes_no_connection_slot(
        one: Instances, upstream: FakeUpstream, client: aioredis.Redis) -> None:
    # $0.005 a request; the first is admitted alone, then the window is spent
    key_id, secret = await limited_key(one, daily_usd=0.004)
    status, _, _ = await one.chat("first", key=secret, max_tokens=10)
    assert status == 200
    shared = one[0].gateway.shared
    await until(lambda: not shared.batch._queue, timeout=2.0)
    status, body, _ = await one.chat("second", key=secret, max_tokens=10)
    assert status == 429 and body["error"]["code"] == "budget_exceeded", body
    assert upstream.calls == 1
    assert await count(client, shared.link.key("conn", "*", "starts")) == 1
    assert await count(client, shared.link.key("key", key_id, "held")) == 0


async def test_what_a_batch_took_and_nobody_read_is_given_back(
        one: Instances, client: aioredis.Redis) -> None:
    key_id, _ = await limited_key(one, rpm=100, concurrency=10, daily_usd=1.0)
    gateway = one[0].gateway
    shared, budgets = gateway.shared, gateway.budgets
    limits = parsed_limits({"rpm": 100, "concurrency": 10, "daily_usd": 1.0})
    connection = connection_id(one)

    async def held() -> dict[str, int]:
        return {"key slots": await count(client, shared.link.key("key", key_id, "slots")),
                "key starts": await count(client, shared.link.key("key", key_id, "starts")),
                "reserved": await count(client, shared.link.key("key", key_id, "held")),
                "claims": await client.exists(shared.keys.key((key_id, "unread"))),
                "conn slots": await count(client, shared.link.key("conn", "*", "slots")),
                "conn starts": await count(client, shared.link.key("conn", "*", "starts"))}

    batch = shared.request_batch()
    slot = budgets.shared.prefetch_enter(batch, key_id, limits)
    claim = shared.keys.prefetch_claim(batch, (key_id, "unread"), b"fp", "rid-unread",
                                       False)
    reservation = budgets.shared.prefetch_reserve(batch, budgets.state(key_id), limits,
                                                  0.01, 100)
    batch.take_slot(connection, 50, 1000)
    await batch.send()
    assert slot.ran and claim.ran and reservation.ran
    assert await held() == {"key slots": 1, "key starts": 1, "reserved": 1, "claims": 1,
                            "conn slots": 1, "conn starts": 1}
    assert shared.state.slots.ahead == {connection: [batch.steps[-1]]}
    batch.release()  # the request ended without reading any of them
    assert shared.state.slots.ahead == {}
    await until(lambda: not shared.batch._queue, timeout=2.0)
    await shared.batch.flush()
    assert await held() == {"key slots": 0, "key starts": 0, "reserved": 0, "claims": 0,
                            "conn slots": 0, "conn starts": 0}

    # a request cancelled (its client left) while its batch is on the way: what Redis
    # took is given back once the answer is in
    batch = shared.request_batch()
    budgets.shared.prefetch_enter(batch, key_id, limits)
    shared.keys.prefetch_claim(batch, (key_id, "unread"), b"fp", "rid-gone", False)
    budgets.shared.prefetch_reserve(batch, budgets.state(key_id), limits, 0.01, 100)
    batch.take_slot(connection, 50, 1000)
    wire = shared.link._wire
    written = wire.writes
    sending = asyncio.ensure_future(batch.send())
    await until(lambda: wire.writes > written, timeout=1.0, step=0)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    await until(lambda: all(step.ran for step in batch.steps), timeout=2.0)
    await until(lambda: not shared.batch._queue, timeout=2.0)
    await shared.batch.flush()
    assert await held() == {"key slots": 0, "key starts": 0, "reserved": 0, "claims": 0,
                            "conn slots": 0, "conn starts": 0}
    assert shared.state.slots.ahead == {}

    # read ones are the reader's: the release leaves them alone
    batch = shared.request_batch()
    slot = budgets.shared.prefetch_enter(batch, key_id, limits)
    batch.take_slot(connection, 50, 1000)
    await batch.send()
    assert slot.result() is True
    assert await shared.state.slots.take(connection, 50, 1000) == 0.0  # no round trip
    batch.release()
    await shared.batch.flush()
    found = await held()
    assert (found["key slots"], found["conn slots"]) == (1, 1)


async def test_without_redis_every_prefetched_part_answers_as_its_own_call_would(
        one: Instances, upstream: FakeUpstream) -> None:
    _, secret = await limited_key(one, rpm=100, concurrency=10, daily_usd=1.0)
    shared = one[0].gateway.shared
    shared.link.lost(ConnectionError("test: redis went away"))
    status, body, headers = await one.chat("alone", key=secret, max_tokens=10,
                                           headers={"Idempotency-Key": "alone-1"})
    assert status == 200, body
    assert headers["X-OmniRoute-Cache"] == "MISS" and upstream.calls == 1


class LongerAnswers(Stage):
    """A stage after the built-in ones that asks for longer answers in ``before``: the
    budget's estimate in ``routed`` is then not the one its prefetch reserved."""

    name = "t-longer-answers"

    def enter(self, ctx: Any, operation: Any) -> StageRun:
        return LongerRun()


class LongerRun(StageRun):
    async def before(self, ctx: Any) -> None:
        ctx.body = {**ctx.body, "max_tokens": 4 * int(ctx.body.get("max_tokens") or 16)}


class LongerPlugin:
    @hookimpl
    def register_stages(self, register: Any, app: Any) -> None:
        register(LongerAnswers())


async def test_a_reservation_for_another_estimate_is_dropped_and_made_again(
        aiohttp_client: Any, tmp_path: Any, redis_url: str, upstream: FakeUpstream,
        writes: list[Write], client: aioredis.Redis) -> None:
    plugins = load_plugins(extra=[("t-longer", LongerPlugin())])
    async with priced_instance(aiohttp_client, tmp_path / "omniroute", redis_url, upstream,
                               plugins=plugins) as made:
        key_id, secret = await limited_key(made, concurrency=10, daily_usd=1.0)
        shared = made[0].gateway.shared
        called: list[int] = []
        upstream.on_call = lambda: called.append(len(writes))
        start = len(writes)
        status, body, _ = await made.chat("longer", key=secret, max_tokens=10)
        assert status == 200, body
        # the prefetched reservation ran, was for another estimate: made again, its own
        # trip; the old one's drop is queued with the writes nobody waits for (it may go
        # out before the upstream is called, LATER after it was queued)
        before = requests_part(writes[start:called[0]])
        assert [w for w in before if w != [("HDEL",)]] == [
            [("admit", "take", "reserve", "take")], [("reserve",)]]
        await until(lambda: not shared.batch._queue, timeout=2.0)
        await shared.batch.flush()
        await asyncio.sleep(0.05)
        after = [c for w in requests_part(writes[start:]) for c in w]
        assert after.count(("HDEL",)) == 1 and after.count(("settle",)) == 1, after
        assert await count(client, shared.link.key("key", key_id, "held")) == 0
        spend = shared.link.key("key", key_id, "spend", "*")
        requests = [int(await client.hget(name, "requests") or 0)
                    async for name in client.scan_iter(match=spend)]
        assert requests == [1]


async def test_a_hit_in_memory_after_a_miss_in_redis_gives_back_what_the_batch_took(
        aiohttp_client: Any, tmp_path: Any, redis_url: str, upstream: FakeUpstream,
        client: aioredis.Redis) -> None:
    async with priced_instance(aiohttp_client, tmp_path / "omniroute", redis_url, upstream,
                               cache_backends="memory,redis", cache_mode="on") as made:
        key_id, secret = await limited_key(made, rpm=100, concurrency=10, daily_usd=1.0)
        shared = made[0].gateway.shared
        status, _, headers = await made.chat("remembered", key=secret, max_tokens=10,
                                             headers={"Idempotency-Key": "mem-1"})
        assert status == 200 and headers["X-OmniRoute-Cache"] == "MISS"
        await made[0].cache.settled()
        redis_cache = next(b for b in made[0].cache.backends if b.name == "redis")
        async for name in client.scan_iter(match=redis_cache._entry + "*"):
            await client.delete(name)  # gone from Redis, still in this instance's memory
        status, _, headers = await made.chat("remembered", key=secret, max_tokens=10,
                                             headers={"Idempotency-Key": "mem-2"})
        assert status == 200 and headers["X-OmniRoute-Cache"] == "HIT"
        assert upstream.calls == 1
        # Redis missed, so the batch claimed, reserved and took the connection's slot; the
        # memory answered: all of it is given back
        await until(lambda: not shared.batch._queue, timeout=2.0)
        await shared.batch.flush()
        assert await client.exists(shared.keys.key((key_id, "mem-2"))) == 0
        assert await count(client, shared.link.key("key", key_id, "held")) == 0
        assert await count(client, shared.link.key("conn", "*", "slots")) == 0
        assert await count(client, shared.link.key("conn", "*", "starts")) == 1
        assert await count(client, shared.link.key("key", key_id, "slots")) == 0
        assert shared.state.slots.ahead == {}


async def test_a_reservation_alone_is_its_own_script(
        one: Instances, client: aioredis.Redis) -> None:
    # a key with a budget only, on a connection without limits: its batch is the one
    # reservation, sent as the reserve script itself (its counts read from its key's
    # fixed part), then settled
    key_id, _ = await limited_key(one, daily_usd=1.0)
    gateway = one[0].gateway
    shared, budgets = gateway.shared, gateway.budgets
    limits = parsed_limits({"daily_usd": 1.0})
    batch = shared.request_batch()
    step = budgets.shared.prefetch_reserve(batch, budgets.state(key_id), limits, 0.01, 100)
    assert (step.nkeys, step.nargs) == (2, 6)  # the held hash, one window; 3 + 3 a window
    await batch.send()
    handle = step.result()
    assert handle is step
    assert await count(client, shared.link.key("key", key_id, "held")) == 1
    budgets.shared.settle(handle, 0.002, 50)
    batch.release()
    await shared.batch.flush()
    assert await count(client, shared.link.key("key", key_id, "held")) == 0


async def test_a_reservation_of_two_windows_reads_the_floors_of_both(
        one: Instances, client: aioredis.Redis) -> None:
    # the request's own numbers (its estimate, each window's spend counted here) go as one
    # argument: each window takes its own floor, and the estimate is held as sent
    key_id, _ = await limited_key(one, daily_usd=1.0, monthly_tokens=100_000)
    gateway = one[0].gateway
    shared, budgets = gateway.shared, gateway.budgets
    limits = parsed_limits({"daily_usd": 1.0, "monthly_tokens": 100_000})
    state = budgets.state(key_id)
    now = budgets.clock.time()
    daily, monthly = (budgets.window(state, limits, p, now) for p in ("daily", "monthly"))
    daily.usd, daily.tokens = 0.25, 300  # spent here, not in Redis (it lost it)
    monthly.usd, monthly.tokens = 0.5, 7_000
    batch = shared.request_batch()
    step = budgets.shared.prefetch_reserve(batch, state, limits, 0.01, 100)
    assert (step.nkeys, step.nargs) == (3, 9)
    await batch.send()
    assert step.result() is step
    spend = [await client.hgetall(shared.link.key("key", key_id, "spend", w.period,
                                                  f"{w.start:.0f}")) for w in (daily, monthly)]
    assert [(s[b"musd"], s[b"tokens"]) for s in spend] == [
        (b"250000", b"300"), (b"500000", b"7000")]
    held = await client.hgetall(shared.link.key("key", key_id, "held"))
    assert [v.split()[:2] for v in held.values()] == [[b"10000", b"100"]]
    # a second one, over the monthly tokens with the floor: refused by that window
    monthly.tokens = 99_950
    batch = shared.request_batch()
    step = budgets.shared.prefetch_reserve(batch, state, limits, 0.01, 100)
    await batch.send()
    with pytest.raises(Exception, match="tokens"):
        step.result()
    batch.release()
    await shared.batch.flush()


async def test_a_reservation_takes_the_windows_of_the_last_until_one_ends(
        one: Instances, client: aioredis.Redis, monkeypatch: Any) -> None:
    # within the windows' span a reservation takes the key's windows (and their packed
    # parts) as the last one found them; past the day's end it is the next day's window
    key_id, _ = await limited_key(one, daily_usd=1.0)
    gateway = one[0].gateway
    shared, budgets = gateway.shared, gateway.budgets
    limits = parsed_limits({"daily_usd": 1.0})
    state = budgets.state(key_id)

    async def reserved() -> Any:
        batch = shared.request_batch()
        step = budgets.shared.prefetch_reserve(batch, state, limits, 0.01, 100)
        await batch.send()
        handle = step.result()
        budgets.shared.settle(handle, 0.002, 50)
        batch.release()
        await shared.batch.flush()
        return step

    first, second = await reserved(), await reserved()
    assert second.windows is first.windows and second.fixed is first.fixed
    today = first.windows[0]
    now = today.end + 5.0  # the day is over
    monkeypatch.setattr(budgets.clock, "time", lambda: now)
    third = await reserved()
    tomorrow = third.windows[0]
    assert tomorrow is not today and tomorrow.start == today.end
    assert state.windows["daily"] is tomorrow
    spend = shared.link.key("key", key_id, "spend", "daily")
    assert [int(await client.hget(f"{spend}:{w.start:.0f}", "requests") or 0)
            for w in (today, tomorrow)] == [2, 1]


async def test_a_stores_ttl_is_its_own_or_the_caches(
        one: Instances, client: aioredis.Redis) -> None:
    # a store's TTL is packed once per TTL asked for (the cache's own when none is)
    _, secret = await limited_key(one, rpm=100)
    status, _, _ = await one.chat("kept", key=secret, max_tokens=10)
    assert status == 200
    await one[0].cache.settled()
    shared = one[0].gateway.shared
    cache = next(b for b in one[0].cache.backends if b.name == "redis")
    for key, ttl in (("a", 5.0), ("b", None), ("c", 5.0), ("d", 0.0001)):
        assert cache.put(key, b"{}", ttl)
    shared.batch.kick()
    await until(lambda: not shared.batch._queue, timeout=2.0)
    await shared.batch.flush()
    ttls = [await client.pttl(cache._entry + key) for key in "abcd"]
    assert 4000 < ttls[0] <= 5000 and 4000 < ttls[2] <= 5000
    assert cache.ttl * 1000 - 1000 < ttls[1] <= cache.ttl * 1000
    assert ttls[3] in (-2, 0, 1)  # a millisecond at least: gone, or nearly


async def test_a_members_bulk_string_says_its_length(one: Instances) -> None:
    # every member of an instance is as long (its header packed once): the numbers start
    # at the first with 16 digits
    leases = one[0].gateway.shared.leases
    for member in (leases.packed_member(), leases.member().encode()):
        if member.startswith(b"$"):
            size, _, raw = member[1:-2].partition(b"\r\n")
            assert int(size) == len(raw), member
            member = raw
        assert len(member) == len(leases.instance_bytes) + 1 + 16


async def test_a_claim_and_a_lookup_made_with_the_batch_read_as_their_own_calls(
        one: Instances, client: aioredis.Redis) -> None:
    """The claim's fingerprint packed in line (a SHA-256's 64 digits) is the one
    ``claim()`` sends, and its answer read without ``_decide`` is the same; a cache
    lookup read in line counts its miss, and its hit, as ``get`` does."""
    import hashlib

    from omniroute.errors import IdempotencyConflict
    from omniroute.idempotency.answer import SharedAnswer
    from omniroute.idempotency.keys import Finished

    shared = one[0].gateway.shared
    cache = next(b for b in one[0].cache.backends if b.name == "redis")
    marks = hashlib.sha256(b"the question").digest()
    scope = ("key-x", "inline-1")
    batch = shared.request_batch()
    claim = shared.keys.prefetch_claim(batch, scope, marks, "rid-inline", False)
    lookup = cache.prefetch_get("inline-entry", batch)
    assert lookup is not None
    misses, hits = cache.misses, cache.hits
    await batch.send()
    assert shared.keys.claimed(scope, claim) is True and claim.done
    assert lookup.result() is None and lookup.done and cache.misses == misses + 1
    batch.release()
    # the fingerprint Redis holds is the one a claim by its own call sends: another body
    # conflicts, the same body waits for the answer, which the settle kept
    with pytest.raises(IdempotencyConflict):
        await shared.keys.claim(scope, hashlib.sha256(b"another").digest(), "rid-2", False)
    answer = SharedAnswer(marks, "rid-inline", False, 1 << 20, lambda _: None)
    answer.complete(200, {"X-Test": "1"}, b'{"ok": true}')
    shared.keys.settled(scope, answer)
    assert cache.put("inline-entry", b"stored", None)
    shared.batch.kick()
    await until(lambda: not shared.batch._queue, timeout=2.0)
    await shared.batch.flush()
    found = await shared.keys.claim(scope, marks, "rid-3", False)
    assert isinstance(found, Finished)
    assert (found.request_id, found.status, found.headers, found.body) == (
        "rid-inline", 200, {"X-Test": "1"}, b'{"ok": true}')
    assert await client.pttl(shared.keys.key(scope)) > 0
    # the store went with the writes, and the next lookup made with a batch finds it
    batch = shared.request_batch()
    lookup = cache.prefetch_get("inline-entry", batch)
    assert lookup is not None
    await batch.send()
    assert lookup.result() == b"stored" and cache.hits == hits + 1
    batch.release()


async def test_a_miss_told_by_the_batch_is_not_looked_up_again(
        one: Instances, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    # the lookup that went with the request's batch found nothing: the cache is told so
    # at once (RedisCacheBackend.absent), and its lookup is not awaited
    cache = one[0].cache
    backend = cache.backends[0]
    looked: list[object] = []
    lookup = cache.lookup

    async def counted(*args: Any, **kwargs: Any) -> Any:
        looked.append(args[0])
        return await lookup(*args, **kwargs)

    monkeypatch.setattr(cache, "lookup", counted)
    misses = backend.misses
    status, _, headers = await one.chat("never asked before", max_tokens=10)
    assert status == 200 and headers["X-OmniRoute-Cache"] == "MISS"
    assert looked == [] and backend.misses == misses + 1
    assert backend._ahead == {}  # (told, and forgotten)
    await cache.settled()
    status, _, headers = await one.chat("never asked before", max_tokens=10)
    assert status == 200 and headers["X-OmniRoute-Cache"] == "HIT"  # a hit is read as before
    assert len(looked) == 1 and upstream.calls == 1


async def test_a_lookup_never_read_is_not_told_to_a_later_request(one: Instances) -> None:
    # a request whose batch looked its key up and ended before reading it (refused by a
    # stage before the cache's, its client gone) leaves nothing a later request of the
    # same key could read as its own miss
    backend = one[0].cache.backends[0]
    batch = one[0].gateway.shared.request_batch()
    step = backend.prefetch_get("a-key-nobody-reads", batch)
    assert step is not None and backend._ahead == {"a-key-nobody-reads": step}
    sending = batch.send()
    assert sending is not None
    await sending
    assert step.ran and step.raw is None  # a miss, answered
    batch.release()
    assert backend._ahead == {}
    assert not backend.absent("a-key-nobody-reads")
