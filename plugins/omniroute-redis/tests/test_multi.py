"""Three gateway instances, one Redis: they behave as one gateway.

Each test starts three real gateways (one data directory, each on its own port,
``state_url`` pointing at the machine's Redis, database 13, flushed) in front of
one fake upstream, and spreads requests over them round robin.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from omniroute.budgets import Limits
from redis_testkit import FakeUpstream, Instances, add_connection, until, until_routable

pytestmark = pytest.mark.multi


async def until_settled(trio: Instances, served: int) -> float:
    """Every instance's spend of today's window, as Redis holds it, once ``served``
    requests are settled there."""
    import redis.asyncio as aioredis

    shared = trio[0].gateway.shared
    client = aioredis.Redis.from_url(trio[0].gateway.config.state_url)
    try:
        async def total() -> float:
            found = 0.0
            async for name in client.scan_iter(match=shared.link.key("key", "*", "spend", "*")):
                found += int(await client.hget(name, "musd") or 0) / 1_000_000  # (µUSD)
            return found

        async def done() -> bool:
            requests = 0
            async for name in client.scan_iter(match=shared.link.key("key", "*", "spend", "*")):
                requests += int(await client.hget(name, "requests") or 0)
            return requests >= served

        await until(done, timeout=2.0)
        return await total()
    finally:
        await client.aclose()


async def test_a_config_change_through_one_instance_is_live_on_all_within_a_second(
        trio: Instances, upstream: FakeUpstream) -> None:
    await add_connection(trio, upstream)
    started = time.monotonic()
    resp = await trio[0].client.post("/api/models/alias", headers=trio[0].admin_headers,
                                     json={"alias": "fast", "target": "up/m1"})
    assert resp.status in (200, 201)
    for gw in trio.gateways[1:]:
        await until(lambda gw=gw: "fast" in gw.catalog.aliases, timeout=1.0)
    assert time.monotonic() - started < 1.0
    for gw in trio.gateways:  # and it answers through every one
        status, body, _ = await trio.chat(model="fast", via=gw)
        assert status == 200, body


async def test_a_price_set_through_one_instance_is_charged_by_all_and_never_read_per_request(
        trio: Instances, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Prices are read-mostly: each instance keeps them in memory (its ``PriceBook``) and
    reloads them when a change is announced over pub/sub, never per request."""
    await add_connection(trio, upstream)
    reads = 0
    for gw in trio.gateways:
        original = gw.store.list_price_overrides

        async def counted(original: Any = original) -> Any:
            nonlocal reads
            reads += 1
            return await original()

        monkeypatch.setattr(gw.store, "list_price_overrides", counted)
    started = time.monotonic()
    resp = await trio[0].client.put("/api/pricing", headers=trio[0].admin_headers,
                                    json={"model": "up/m1", "input": 250, "output": 250})
    assert resp.status == 200, await resp.text()
    for gw in trio.gateways[1:]:
        await until(lambda gw=gw: any(o.input == 250 for o in gw.gateway.prices.overrides),
                    timeout=1.0)
    assert time.monotonic() - started < 1.0
    await until(lambda: reads >= 3, timeout=1.0)  # each instance read them once
    await asyncio.sleep(0.1)
    reads = 0
    for gw in trio.gateways:
        status, body, _ = await trio.chat("priced", via=gw, max_tokens=10)
        assert status == 200, body
    assert reads == 0
    for gw in trio.gateways:  # (one data directory: one request log for the three)
        await gw.log.flush()
    rows = await trio[0].store.db.fetchall(
        "SELECT cost_usd, prompt_tokens, completion_tokens FROM request_log "
        "WHERE status = 200 ORDER BY id DESC LIMIT 3")
    assert len(rows) == 3
    for cost, prompt, completion in rows:
        assert cost == pytest.approx((prompt + completion) * 250 / 1e6)


async def test_a_connections_rpm_limit_is_global(trio: Instances,
                                                 upstream: FakeUpstream) -> None:
    await add_connection(trio, upstream, rpm=6)
    await until_routable(trio, "up/m1")
    statuses = [status for status, _, _ in
                await asyncio.gather(*(trio.chat(f"q{i}") for i in range(15)))]
    assert statuses.count(200) == 6 and upstream.calls == 6, statuses
    assert set(statuses) == {200, 429}


async def test_a_cooldown_one_instance_sets_is_respected_by_the_others_within_100ms(
        trio: Instances, upstream: FakeUpstream) -> None:
    conn = await add_connection(trio, upstream)
    await until_routable(trio, "up/m1")
    for gw in trio.gateways:  # each instance has used it: a record of its own to update
        assert (await trio.chat(via=gw))[0] == 200
    upstream.fail_next = 1
    status, _, _ = await trio.chat(via=trio[0])
    assert status == 429  # the only account rests 30 s: the client is told to come back
    told = time.monotonic()

    def cooling(gw: Any) -> bool:
        stats = gw.resilience._stats_by_id.get(conn["id"])
        return stats is not None and stats.cooling(gw.resilience.clock.monotonic())

    for gw in trio.gateways[1:]:
        await until(lambda gw=gw: cooling(gw), timeout=0.1, step=0.001)
    assert time.monotonic() - told < 0.1
    calls = upstream.calls
    for gw in trio.gateways[1:]:
        status, body, headers = await trio.chat(via=gw)
        assert status == 429 and body["error"]["code"] == "all_targets_cooling"
        assert 20 < float(headers["Retry-After"]) <= 30
    assert upstream.calls == calls  # nobody called the resting account


async def test_a_cache_entry_written_by_one_is_served_by_another(
        aiohttp_client: Any, tmp_path: Any, redis_url: str, upstream: FakeUpstream) -> None:
    from redis_testkit import start_instances

    trio = await start_instances(aiohttp_client, tmp_path / "omniroute", redis_url,
                                 cache_backends="redis", cache_mode="on")
    try:
        await add_connection(trio, upstream)
        await until_routable(trio, "up/m1")
        key = trio[0].admin_key  # one tenant: entries are kept per API key
        status, first, headers = await trio.chat("what is 2+2", via=trio[0], key=key)
        assert status == 200 and headers["X-OmniRoute-Cache"] == "MISS"
        await trio[0].cache.settled()  # the store is queued with the writes after answers
        await trio[0].gateway.shared.batch.flush()  # (sent within a few ms; now, here)
        for gw in trio.gateways[1:]:
            status, body, headers = await trio.chat("what is 2+2", via=gw, key=key)
            assert status == 200 and headers["X-OmniRoute-Cache"] == "HIT"
            assert body["choices"][0]["message"] == first["choices"][0]["message"]
        assert upstream.calls == 1
        stats = await trio[2].cache.stats()
        assert stats["backends"]["redis"]["entries"] == 1
    finally:
        await trio.close()


async def test_a_keys_budget_is_enforced_globally(trio: Instances,
                                                  upstream: FakeUpstream) -> None:
    await add_connection(trio, upstream)
    # 20 tokens a request at $250 per 1M: $0.005 a request; a $0.02 daily budget
    resp = await trio[0].client.put("/api/pricing", headers=trio[0].admin_headers,
                                    json={"model": "up/m1", "input": 250, "output": 250})
    assert resp.status == 200, await resp.text()
    _, secret = await trio[0].store.create_key(
        "team", set(), limits=Limits.parse({"daily_usd": 0.02}))
    await trio[0].gateway.reload()  # announced: the others reload and know the key
    await asyncio.sleep(0.2)
    statuses = []
    for i in range(9):  # one at a time, round robin: each instance sees a third of them
        status, body, _ = await trio.chat(f"q{i}", key=secret, max_tokens=10)
        statuses.append(status)
        if status != 200:
            assert body["error"]["code"] == "budget_exceeded", body
    assert statuses == [200] * 4 + [429] * 5, statuses
    assert upstream.calls == 4


async def test_a_client_one_request_at_a_time_over_the_three_is_never_refused_a_slot(
        trio: Instances, upstream: FakeUpstream) -> None:
    # a key allowed one request in flight, used by one client that waits for each answer
    # before it asks again, through whichever instance is next: each request's slot is
    # given back in Redis before its answer reaches the client (a give-back held for a
    # later request's batch, even for 2 ms, made the next instance refuse nearly every one)
    await add_connection(trio, upstream)
    _, secret = await trio[0].store.create_key(
        "team", set(), limits=Limits.parse({"concurrency": 1}))
    await trio[0].gateway.reload()
    await asyncio.sleep(0.2)
    statuses = [(await trio.chat(f"q{i}", key=secret, max_tokens=10))[0] for i in range(12)]
    assert statuses == [200] * 12, statuses
    assert upstream.calls == 12


async def test_concurrent_requests_overspend_by_at_most_what_is_in_flight(
        trio: Instances, upstream: FakeUpstream) -> None:
    await add_connection(trio, upstream)
    resp = await trio[0].client.put("/api/pricing", headers=trio[0].admin_headers,
                                    json={"model": "up/m1", "input": 250, "output": 250})
    assert resp.status == 200
    _, secret = await trio[0].store.create_key(
        "team", set(), limits=Limits.parse({"daily_usd": 0.02}))
    await trio[0].gateway.reload()
    await asyncio.sleep(0.2)
    upstream.delay = 0.05
    results = await asyncio.gather(*(trio.chat(f"q{i}", key=secret, max_tokens=10)
                                     for i in range(30)))
    served = sum(1 for status, _, _ in results if status == 200)
    # a request reserves its estimate (about 35 tokens: $0.00875) atomically across the
    # three, so at most two run at once within $0.02, and none starts once $0.02 is spent:
    # 4 at most (alone, each instance would admit two at once, six in all)
    assert 2 <= served <= 4 and upstream.calls == served, [r[0] for r in results]
    assert {r[1]["error"]["code"] for r in results if r[0] != 200} == {"budget_exceeded"}
    spent = await until_settled(trio, served)
    assert spent == pytest.approx(served * 0.005)


async def test_a_sticky_session_bound_on_one_instance_holds_on_the_others(
        trio: Instances, upstream: FakeUpstream) -> None:
    for prefix in ("a", "b"):
        await trio[0].add_provider({"type": "openai", "name": prefix, "prefix": prefix,
                                    "base_url": upstream.base_url, "api_key": "sk-x"})
    resp = await trio[0].client.post(
        "/api/combos", headers=trio[0].admin_headers,
        json={"name": "both", "steps": ["a/m1", "b/m1"], "strategy": "round-robin"})
    assert resp.status in (200, 201), await resp.text()
    await until_routable(trio, "a/m1", "b/m1", "both")
    await asyncio.sleep(0.2)
    # instances 1 and 2 rotate once without a session: alone, each would now pick "b"
    for gw in trio.gateways[1:]:
        assert (await trio.chat("warm", model="both", via=gw))[2]["X-OmniRoute-Provider"] == "a"
    served = []
    for i in range(9):  # round robin over the instances: 0 binds the session, 1 and 2 follow
        status, _, headers = await trio.chat(f"turn {i}", model="both",
                                             headers={"X-Session-Id": "conversation-1"},
                                             via=trio[i % 3])
        assert status == 200
        served.append(headers["X-OmniRoute-Provider"])
        await asyncio.sleep(0.02)  # the binding travels with the writes after the answer
    assert served == ["a"] * 9, served  # round robin alone would alternate
    others = [(await trio.chat(f"other {i}", model="both"))[2]["X-OmniRoute-Provider"]
              for i in range(6)]
    assert set(others) == {"a", "b"}  # without a session the combo does rotate


async def test_an_operator_reset_on_one_instance_clears_the_rest_everywhere(
        trio: Instances, upstream: FakeUpstream) -> None:
    conn = await add_connection(trio, upstream)
    await until_routable(trio, "up/m1")
    upstream.fail_next = 1
    assert (await trio.chat(via=trio[0]))[0] == 429

    def cooling(gw: Any) -> bool:
        stats = gw.resilience._stats_by_id.get(conn["id"])
        return stats is not None and stats.cooling(gw.resilience.clock.monotonic())

    await until(lambda: all(cooling(gw) for gw in trio.gateways), timeout=0.5)
    resp = await trio[2].client.post("/api/resilience/reset", headers=trio[2].admin_headers,
                                     json={"connection_id": conn["id"]})
    assert resp.status == 200
    await until(lambda: not any(cooling(gw) for gw in trio.gateways), timeout=0.5)
    for gw in trio.gateways:
        assert (await trio.chat(via=gw))[0] == 200


async def test_identical_idempotent_requests_over_the_three_make_one_upstream_call(
        trio: Instances, upstream: FakeUpstream) -> None:
    await add_connection(trio, upstream)
    await until_routable(trio, "up/m1")
    upstream.delay = 0.2  # the duplicates arrive while the first call is under way
    key = trio[0].admin_key  # one API key: idempotency keys are scoped by it
    results = await asyncio.gather(*(
        trio.chat("exactly once", key=key, headers={"Idempotency-Key": "order-42"})
        for _ in range(30)))
    assert upstream.calls == 1
    assert {status for status, _, _ in results} == {200}
    contents = {body["choices"][0]["message"]["content"] for _, body, _ in results}
    assert contents == {"echo: exactly once"}
    replayed = [h for _, _, h in results if h.get("X-OmniRoute-Idempotent") == "true"]
    assert len(replayed) == 29
    # within the window a late duplicate on another instance is answered from Redis too
    status, body, headers = await trio.chat("exactly once", key=key, via=trio[2],
                                            headers={"Idempotency-Key": "order-42"})
    assert status == 200 and headers["X-OmniRoute-Idempotent"] == "true"
    assert upstream.calls == 1
    # the same key with another body is a conflict on any instance
    status, body, _ = await trio.chat("something else", key=key, via=trio[1],
                                      headers={"Idempotency-Key": "order-42"})
    assert status == 409 and body["error"]["code"] == "idempotency_key_reused"


async def test_a_streamed_first_answer_is_replayed_as_a_stream_on_another_instance(
        trio: Instances, upstream: FakeUpstream) -> None:
    await add_connection(trio, upstream)
    await until_routable(trio, "up/m1")
    key = trio[0].admin_key
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "stream-7"}
    body = {"model": "up/m1", "stream": True,
            "messages": [{"role": "user", "content": "stream me"}]}
    texts = []
    for gw in trio.gateways:
        async with trio.session.post(gw.base_url + "/v1/chat/completions", headers=headers,
                                     json=body) as resp:
            assert resp.status == 200
            texts.append(await resp.text())
    assert upstream.calls == 1
    assert all("data: [DONE]" in t for t in texts)
    assert texts[1] == texts[0] == texts[2]
    # and as JSON: the stream turned into the JSON answer through the canonical model
    status, answer, _ = await trio.chat("stream me", key=key, via=trio[1],
                                        headers={"Idempotency-Key": "stream-7"})
    assert status == 200 and answer["choices"][0]["message"]["content"] == "echo: stream me"
    assert upstream.calls == 1
