"""Concurrency and rate limits, queues, and every wait bounded, end to end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import pytest
from fakes.openai_upstream import (
    error,
    hang_before_headers,
    hang_mid_stream,
    slow,
)

from resilience_e2e.support import (
    MODEL,
    ask,
    call,
    chats,
    combo,
    log_records,
    rate_limits,
    served_by,
    until,
)


def queued(gw: Any, name: str) -> int:
    rows = gw.resilience.snapshot(gw.catalog.connections.values())["connections"]
    limits = next(r for r in rows if r["name"] == name)["limits"]
    return limits["queued"] if limits else 0


@pytest.mark.parametrize("queue_size", [0, 4], ids=["no_queue", "queue"])
async def test_a_full_account_hands_the_request_to_the_next_one(gw, queue_size):
    await gw.set_settings(queue_size=queue_size, queue_timeout=0.4)
    first = await gw.add("first", prefix="p", max_concurrency=1)
    second = await gw.add("second", prefix="p", priority=1)
    first.script.append(hang_before_headers(1.0))
    busy = asyncio.create_task(call(gw, f"p/{MODEL}"))
    await until(lambda: len(chats(first)) == 1)
    started = time.monotonic()
    headers, _ = await call(gw, f"p/{MODEL}", 1)
    elapsed = time.monotonic() - started
    if queue_size:  # queued on the first account for at most queue_timeout, then moved on
        assert 0.35 < elapsed < 0.4 + 0.4, elapsed
    else:  # no queue: moved on at once
        assert elapsed < 0.3, elapsed
    assert len(chats(second)) == 1 and len(chats(first)) == 1
    assert headers["X-OmniRoute-Fallback-Attempts"] == "0"  # a full account is not an attempt
    await busy
    limits = (await rate_limits(gw))["first"]["limits"]
    assert limits["max_concurrency"] == 1 and limits["in_use"] == 0 and limits["queued"] == 0


async def test_a_streaming_request_holds_its_concurrency_slot(gw):
    """max_concurrency counts requests in flight, streams until their last chunk included."""
    await gw.set_settings(queue_size=0)
    first = await gw.add("first", prefix="p", max_concurrency=1)
    second = await gw.add("second", prefix="p", priority=1)
    first.script.append(slow(0.1))
    stream = await gw.sdk.chat.completions.create(model=f"p/{MODEL}", messages=ask(), stream=True)
    try:
        await stream.__anext__()  # the stream is under way on the first account
        await call(gw, f"p/{MODEL}", 1)
        assert len(chats(second)) == 1, "a second request ran on an account limited to one"
    finally:
        await stream.close()


async def test_a_single_full_account_queues_within_bounds_then_fails_with_429(gw):
    await gw.set_settings(queue_size=1, queue_timeout=0.5)
    a = await gw.add("a", max_concurrency=1)
    a.script.append(hang_before_headers(1.0))
    busy = asyncio.create_task(call(gw, f"a/{MODEL}"))
    await until(lambda: len(chats(a)) == 1)
    started = time.monotonic()
    waiting = asyncio.create_task(call(gw, f"a/{MODEL}", 1))
    await until(lambda: queued(gw, "a") == 1)
    full_at = time.monotonic()
    with pytest.raises(openai.RateLimitError) as full:  # the queue is full: at once
        await call(gw, f"a/{MODEL}", 2)
    assert time.monotonic() - full_at < 0.3
    assert full.value.code == "all_accounts_busy"
    assert int(full.value.response.headers["Retry-After"]) >= 1
    with pytest.raises(openai.RateLimitError) as waited:  # queued, then out of patience
        await waiting
    elapsed = time.monotonic() - started
    assert 0.45 < elapsed < 0.5 + 0.4, elapsed
    assert waited.value.response.headers["Retry-After"]
    assert len(chats(a)) == 1  # neither reached the upstream
    await busy


async def test_rpm_is_enforced_per_account_with_retry_after(gw):
    a = await gw.add("a", rpm=2)
    await served_by(gw, f"a/{MODEL}", 2)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        await call(gw, f"a/{MODEL}", 5)
    assert time.monotonic() - started < 0.3  # a minute away: no point queueing
    assert 55 <= int(info.value.response.headers["Retry-After"]) <= 60
    assert len(chats(a)) == 2
    row = (await rate_limits(gw))["a"]["limits"]
    assert (row["rpm"], row["used_last_minute"]) == (2, 2)
    # a second account takes over when the first has used its minute
    b = await gw.add("b", prefix="a", priority=1)
    await call(gw, f"a/{MODEL}", 6)
    assert len(chats(b)) == 1


# ----------------------------------------------------------------------------- bounded waits

async def test_every_wait_is_bounded(gw):
    await gw.set_settings(first_byte_timeout=0.3, idle_timeout=0.3, total_timeout=0.6)
    a = await gw.add("a")
    model = f"a/{MODEL}"
    a.script.append(hang_before_headers(5))  # nothing at all
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        await call(gw, model, stream=True)
    assert info.value.status_code == 504
    assert time.monotonic() - started < 0.3 + 0.4

    gw.resilience.reset()
    a.script.append(hang_mid_stream(2, 5))  # silence after two events
    started = time.monotonic()
    with pytest.raises(openai.APIError, match="stalled"):
        await call(gw, model, 1, stream=True)
    assert time.monotonic() - started < 0.3 + 0.4

    gw.resilience.reset()
    a.script.append(slow(0.15))  # never silent for long, but too long in total
    a.chunks = 12
    started = time.monotonic()
    with pytest.raises(openai.APIError, match="in total"):
        await call(gw, model, 2, stream=True)
    assert time.monotonic() - started < 0.6 + 0.4


async def test_when_every_target_rests_the_gateway_waits_a_bounded_time(gw):
    await gw.set_settings(wait_for_cooldown_max=1)
    a, b = await gw.add("a"), await gw.add("b")
    await combo(gw, "duo", [f"a/{MODEL}", f"b/{MODEL}"])
    a.script.append(error(429, "a: slow down", headers={"x-ratelimit-reset-requests": "400ms"}))
    b.script.append(error(429, "b: slow down", headers={"x-ratelimit-reset-requests": "700ms"}))
    with pytest.raises(openai.APIStatusError):
        await call(gw, "duo")
    started = time.monotonic()
    headers, _ = await call(gw, "duo", 1)  # a rests 0.4s: worth waiting for
    elapsed = time.monotonic() - started
    assert headers["X-OmniRoute-Provider"] == "a"
    assert 0.25 < elapsed < 0.4 + 0.4, elapsed

    await gw.set_settings(wait_for_cooldown_max=0.2)
    gw.resilience.reset()  # b may still rest from the first round
    a.script.append(error(429, "a: slow down", headers={"Retry-After": "30"}))
    b.script.append(error(429, "b: slow down", headers={"Retry-After": "20"}))
    with pytest.raises(openai.APIStatusError):
        await call(gw, "duo", 2)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        await call(gw, "duo", 3)
    assert time.monotonic() - started < 0.2 + 0.5  # 20s away: no waiting at all
    assert info.value.response.headers["Retry-After"] == "20"
    assert "resting" in info.value.message


async def test_a_client_that_leaves_during_fallback_stops_all_upstream_work(gw):
    await gw.set_settings(first_byte_timeout=5)
    a, b, c = await gw.add("a"), await gw.add("b"), await gw.add("c")
    await combo(gw, "trio", [f"a/{MODEL}", f"b/{MODEL}", f"c/{MODEL}"])
    a.script.append(error(500, "a is down"))
    b.script.append(hang_before_headers(5))
    task = asyncio.create_task(gw.client.post(
        "/v1/chat/completions", json={"model": "trio", "messages": ask()}))
    await until(lambda: len(chats(b)) == 1)  # fallback reached b, which hangs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(b.stream_closed.wait(), 1)
    await asyncio.sleep(0.2)
    assert chats(c) == []  # nobody went on to the next target
    (record,) = await log_records(gw)
    assert record["status"] == 499
    # the abandoned attempt costs b nothing and leaves no request in flight
    rows = await rate_limits(gw)
    assert rows["b"]["in_flight"] == 0 and rows["b"]["status"] == "healthy"
