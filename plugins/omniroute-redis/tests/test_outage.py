"""Redis away under load: no client error, degraded, then back in step.

These tests run their own redis-server on a free port (the machine's shared one
is never stopped), kill or pause it while three instances serve a steady stream
of requests, and bring it back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from omniroute.budgets import Limits
from redis_testkit import (
    FakeUpstream,
    Instances,
    RedisServer,
    add_connection,
    until,
    until_routable,
)

pytestmark = pytest.mark.multi


async def load(trio: Instances, key: str, stop: asyncio.Event, statuses: list[int],
               workers: int = 4) -> None:
    """Requests over the three instances, ``workers`` at a time, until ``stop``; each
    answer's status goes to ``statuses``."""

    async def worker(n: int) -> None:
        i = 0
        while not stop.is_set():
            status, body, _ = await trio.chat(f"w{n} q{i}", key=key, max_tokens=10)
            statuses.append(status)
            if status != 200:
                print("unexpected", status, body)
            i += 1

    await asyncio.gather(*(worker(n) for n in range(workers)))


def degraded(gw: Any) -> bool:
    return not gw.gateway.shared.health()["ok"]


async def test_redis_killed_and_restarted_under_load_fails_no_request(
        aiohttp_client: Any, tmp_path: Any, own_redis: RedisServer,
        upstream: FakeUpstream) -> None:
    from redis_testkit import start_instances

    trio = await start_instances(aiohttp_client, tmp_path / "omniroute", own_redis.url)
    try:
        conn = await add_connection(trio, upstream, max_concurrency=50, rpm=100_000)
        await trio[0].client.put("/api/pricing", headers=trio[0].admin_headers,
                                 json={"model": "up/m1", "input": 1, "output": 1})
        _, key = await trio[0].store.create_key(
            "team", set(), limits=Limits.parse({"daily_usd": 100, "rpm": 100_000,
                                                "concurrency": 50}))
        await trio[0].gateway.reload()
        await until_routable(trio, "up/m1")
        await asyncio.sleep(0.2)
        stop = asyncio.Event()
        statuses: list[int] = []
        running = asyncio.ensure_future(load(trio, key, stop, statuses))
        await asyncio.sleep(0.5)
        await own_redis.stop()
        await until(lambda: all(degraded(gw) for gw in trio.gateways), timeout=2.0)
        health = await (await trio[1].client.get("/api/monitoring/health")).json()
        assert health["status"] == "degraded" and health["shared_state"]["ok"] is False
        metrics = await (await trio[1].client.get(
            "/metrics", headers=trio[1].admin_headers)).text()
        assert "omniroute_state_degraded 1.0" in metrics
        before = len(statuses)
        await asyncio.sleep(0.5)  # serving, degraded
        served_while_down = len(statuses) - before
        await own_redis.start()  # empty: nothing was saved
        await until(lambda: not any(degraded(gw) for gw in trio.gateways), timeout=5.0)
        await asyncio.sleep(0.5)
        stop.set()
        await running
        assert set(statuses) == {200}, sorted(set(statuses))
        assert served_while_down > 10 and len(statuses) > served_while_down
        # back in step: a cooldown one instance learns reaches the others again
        upstream.fail_next = 1
        assert (await trio.chat(via=trio[0], key=key))[0] == 429
        told = time.monotonic()
        for gw in trio.gateways[1:]:
            await until(lambda gw=gw: gw.resilience._stats_by_id[conn["id"]].cooling(
                gw.resilience.clock.monotonic()), timeout=1.0, step=0.001)
        assert time.monotonic() - told < 1.0
        health = await (await trio[1].client.get("/api/monitoring/health")).json()
        assert health["shared_state"]["ok"] is True and health["shared_state"]["outages"] == 1
    finally:
        await trio.close()


async def test_a_paused_redis_costs_a_request_at_most_the_state_timeout(
        aiohttp_client: Any, tmp_path: Any, own_redis: RedisServer,
        upstream: FakeUpstream, no_leases: None) -> None:
    # (no lease: a request admitted from one would not ask the paused Redis at all)
    from redis_testkit import start_instances

    trio = await start_instances(aiohttp_client, tmp_path / "omniroute", own_redis.url,
                                 count=2, state_timeout=1.0)
    try:
        await add_connection(trio, upstream, rpm=1000)
        await until_routable(trio, "up/m1")
        assert (await trio.chat(via=trio[0]))[0] == 200
        own_redis.pause()  # it accepts nothing and answers nothing: only timeouts tell
        started = time.monotonic()
        status, body, _ = await trio.chat(via=trio[0])
        took = time.monotonic() - started
        assert status == 200, body
        assert took < 1.0 + 1.0  # at most one bounded wait (state_timeout), then local counters
        assert degraded(trio[0])
        started = time.monotonic()
        assert (await trio.chat(via=trio[0]))[0] == 200
        assert time.monotonic() - started < 0.5  # degraded: no wait on Redis at all
        own_redis.resume()
        await until(lambda: not degraded(trio[0]), timeout=5.0)
        assert (await trio.chat(via=trio[0]))[0] == 200
    finally:
        await trio.close()


async def test_budgets_fail_closed_when_the_setting_says_so(
        aiohttp_client: Any, tmp_path: Any, own_redis: RedisServer,
        upstream: FakeUpstream) -> None:
    from redis_testkit import start_instances

    trio = await start_instances(aiohttp_client, tmp_path / "omniroute", own_redis.url,
                                 count=1, budget_fail_closed=True)
    try:
        await add_connection(trio, upstream)
        await trio[0].client.put("/api/pricing", headers=trio[0].admin_headers,
                                 json={"model": "up/m1", "input": 1, "output": 1})
        _, budgeted = await trio[0].store.create_key(
            "budgeted", set(), limits=Limits.parse({"daily_usd": 10}))
        _, limited = await trio[0].store.create_key(
            "limited", set(), limits=Limits.parse({"rpm": 100}))
        await trio[0].gateway.reload()
        assert (await trio.chat(key=budgeted))[0] == 200
        await own_redis.stop()
        status, body, _ = await trio.chat(key=budgeted)
        assert status == 503 and "budget_fail_closed" in body["error"]["message"]
        # a key with only a rate limit, and a key with none, are still served
        assert (await trio.chat(key=limited))[0] == 200
        assert (await trio.chat())[0] == 200
    finally:
        await trio.close()


async def test_a_change_announced_while_the_link_was_down_is_heard_once_it_is_back(
        trio: Instances, upstream: FakeUpstream) -> None:
    """An instance whose link is down drops its config notice (publishing is skipped while
    down); once its probe finds Redis again it says which version it holds, so the others
    reload long before their 30 s safety poll (the flaky CI failure of session 7: a start-up
    call timed out under load and the new connection was never heard of)."""
    await add_connection(trio, upstream)
    await until_routable(trio, "up/m1")
    link = trio[0].gateway.shared.link
    link.lost(TimeoutError("simulated: a call outlived state_timeout"))
    assert degraded(trio[0])
    resp = await trio[0].client.post("/api/models/alias", headers=trio[0].admin_headers,
                                     json={"alias": "heard-late", "target": "up/m1"})
    assert resp.status in (200, 201)
    await until(lambda: not degraded(trio[0]), timeout=2.0)  # the probe pings Redis again
    for gw in trio.gateways[1:]:
        await until(lambda gw=gw: "heard-late" in gw.catalog.aliases, timeout=1.0)
