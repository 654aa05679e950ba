"""Resilience end to end: the official openai SDK -> the gateway -> several fake upstreams.

Each fake is its own connection (its own prefix, unless a test needs two accounts
of one provider). Where the gateway only has to *know* the time (cooldowns,
breakers, terminal states) a ``ManualClock`` stands in for it; where the gateway
itself must wait (timeouts, queues, waiting out a cooldown) the waits are real and
short, and the tests assert the elapsed time against the configured bounds.

Requests carry distinct first messages unless a test is about sessions: the
gateway fingerprints a conversation into a sticky session, which would otherwise
pin every request to the first connection that served it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import openai
import pytest
from fakes.openai_upstream import (
    FakeOpenAI,
    drop_mid_stream,
    error,
    hang_before_headers,
    hang_mid_stream,
    mid_stream_error,
    slow,
)

from omniroute.resilience import ManualClock

KEY = "sk-upstream-test"
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1")
MODEL = "gpt-4o-mini"
CONTEXT_TOO_LONG = ("This model's maximum context length is 8192 tokens. However, your "
                    "messages resulted in 9000 tokens. Please reduce the length of the messages.")


def ask(i: int = 0) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i}"}]


@pytest.fixture
async def gw(omniroute: Any, aiohttp_server: Any) -> Any:
    """The gateway, with ``gw.add(name, ...)`` adding a fake upstream as a connection."""

    async def add(name: str, *, prefix: str | None = None, fake: dict[str, Any] | None = None,
                  **connection: Any) -> FakeOpenAI:
        upstream = FakeOpenAI(api_key=KEY, models=MODELS, **(fake or {}))
        server = await aiohttp_server(upstream.app)
        view = await omniroute.add_provider({
            "type": "openai", "name": name, "prefix": prefix or name, "api_key": KEY,
            "base_url": str(server.make_url("/v1")), **connection})
        upstream.conn_id = view["id"]  # type: ignore[attr-defined]
        return upstream

    omniroute.add = add
    omniroute.sdk = openai.AsyncOpenAI(base_url=omniroute.base_url + "/v1", api_key="sk-client",
                                       max_retries=0, timeout=10)
    yield omniroute
    await omniroute.sdk.close()


async def api(gw: Any, method: str, path: str, body: Any = None, status: int = 200) -> Any:
    resp = await gw.client.request(method, path, json=body, headers=gw.admin_headers)
    data = await resp.json()
    assert resp.status == status, data
    return data


async def combo(gw: Any, name: str, steps: list[Any], strategy: str = "priority") -> dict:
    return await api(gw, "POST", "/api/combos",
                     {"name": name, "steps": steps, "strategy": strategy}, 201)


def chats(fake: FakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


async def call(gw: Any, model: str, i: int = 0, *, stream: bool = False, **kw: Any) -> Any:
    """One chat request through the SDK: ``(headers, text)``."""
    raw = await gw.sdk.chat.completions.with_raw_response.create(
        model=model, messages=kw.pop("messages", ask(i)), stream=stream, **kw)
    parsed = raw.parse()
    if stream:
        text = "".join([c.choices[0].delta.content or "" async for c in parsed if c.choices])
    else:
        text = parsed.choices[0].message.content
    return raw.headers, text


async def served_by(gw: Any, model: str, n: int, start: int = 0) -> list[str]:
    """The provider prefix that served each of ``n`` requests with distinct conversations."""
    return [(await call(gw, model, i))[0]["X-OmniRoute-Provider"] for i in range(start, start + n)]


def manual_clock(gw: Any) -> ManualClock:
    """Let the test move the resilience layer's time (before any traffic)."""
    clock = ManualClock()
    resilience = gw.resilience
    resilience.clock = clock
    resilience.sessions.clock = clock
    return clock


async def rate_limits(gw: Any) -> dict[str, dict[str, Any]]:
    data = await api(gw, "GET", "/api/rate-limits")
    return {row["name"]: row for row in data["connections"]}


async def log_records(gw: Any) -> list[dict[str, Any]]:
    return (await api(gw, "GET", "/api/requests"))["requests"]


async def until(predicate: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


# ----------------------------------------------------------------------------- fallback

@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", [500, 503, 429])
async def test_while_one_target_is_healthy_the_client_sees_success(gw, status, stream):
    await gw.set_settings(first_byte_timeout=0.3, total_timeout=0.6)
    failing, hanging, healthy = await gw.add("a"), await gw.add("b"), await gw.add("c")
    failing.script.append(error(status, "a is unwell"))
    hanging.script.append(hang_before_headers(5))
    await combo(gw, "trio", [f"a/{MODEL}", f"b/{MODEL}", f"c/{MODEL}"])
    started = time.monotonic()
    headers, text = await call(gw, "trio", stream=stream)
    # one bounded wait (b), nothing more; a JSON call is bounded by total_timeout only
    # (see test_first_byte_timeout_bounds_a_json_request_too)
    assert time.monotonic() - started < (0.3 if stream else 0.6) + 0.5
    assert text == "Hello! You said: question 0"
    assert headers["X-OmniRoute-Provider"] == "c"
    assert headers["X-OmniRoute-Model"] == MODEL
    assert headers["X-OmniRoute-Fallback-Attempts"] == "2"
    assert headers["X-OmniRoute-Request-Id"]
    assert [len(chats(f)) for f in (failing, hanging, healthy)] == [1, 1, 1]
    await until(hanging.stream_closed.is_set)  # the gateway hung up on the silent one


async def test_first_byte_timeout_bounds_a_json_request_too(gw):
    """A JSON answer that never starts is abandoned after first_byte_timeout, like a stream."""
    await gw.set_settings(first_byte_timeout=0.3)  # total_timeout stays at its default
    hanging = await gw.add("a")
    await gw.add("b")
    hanging.script.append(hang_before_headers(1.5))
    await combo(gw, "duo", [f"a/{MODEL}", f"b/{MODEL}"])
    started = time.monotonic()
    headers, _ = await call(gw, "duo")
    elapsed = time.monotonic() - started
    assert headers["X-OmniRoute-Provider"] == "b", "the hanging upstream answered in the end"
    assert elapsed < 0.3 + 0.5, f"waited {elapsed:.2f}s for the first byte of a JSON answer"


async def test_context_too_long_moves_on_but_a_plain_400_goes_back_unchanged(gw):
    first, second = await gw.add("a"), await gw.add("b")
    await combo(gw, "duo", [f"a/{MODEL}", f"b/{MODEL}"])
    first.script.append(error(400, CONTEXT_TOO_LONG, code="context_length_exceeded",
                              param="messages"))
    headers, _ = await call(gw, "duo")
    assert headers["X-OmniRoute-Provider"] == "b"
    assert headers["X-OmniRoute-Fallback-Attempts"] == "1"
    assert len(chats(second)) == 1

    first.script.append(error(400, "Invalid value for 'temperature': must be <= 2.",
                              code="invalid_value", param="temperature"))
    with pytest.raises(openai.BadRequestError) as info:
        await call(gw, "duo", 1, temperature=1.0)
    err = info.value
    assert err.body == {"message": "Invalid value for 'temperature': must be <= 2.",
                        "type": "invalid_request_error", "param": "temperature",
                        "code": "invalid_value"}
    assert err.response.headers["X-OmniRoute-Request-Id"]
    assert len(chats(first)) == 2 and len(chats(second)) == 1  # no fallback for the client's fault
    # the client's mistake costs the connection nothing
    assert (await rate_limits(gw))["a"]["status"] == "healthy"


async def test_the_client_error_names_the_provider_that_answered(gw):
    """Every /v1 answer says who served it, an upstream's own error included."""
    first = await gw.add("a")
    first.script.append(error(400, "Invalid value for 'temperature'.", code="invalid_value"))
    with pytest.raises(openai.BadRequestError) as info:
        await call(gw, f"a/{MODEL}")
    headers = info.value.response.headers
    assert headers["X-OmniRoute-Provider"] == "a"
    assert headers["X-OmniRoute-Model"] == MODEL
    assert headers["X-OmniRoute-Fallback-Attempts"] == "0"


async def test_every_target_failing_is_a_503_naming_each_and_why(gw):
    a, b, c = await gw.add("a"), await gw.add("b"), await gw.add("c")
    a.script.append(error(500, "a exploded"))
    b.script.append(error(429, "b is rate limited", headers={"Retry-After": "7"}))
    c.script.append(error(404, "The model `gpt-4o-mini` does not exist", code="model_not_found"))
    await combo(gw, "trio", [f"a/{MODEL}", f"b/{MODEL}", f"c/{MODEL}"])
    resp = await gw.client.post("/v1/chat/completions", json={"model": "trio", "messages": ask()})
    body = await resp.json()
    assert resp.status == 503, body
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "all_targets_failed"
    assert body["error"]["type"] == "server_error"
    message = body["error"]["message"]
    assert message.startswith("All 3 targets for 'trio' failed: ")
    assert f"a/{MODEL} (a): 500 a exploded" in message
    assert f"b/{MODEL} (b): 429 b is rate limited" in message
    assert f"c/{MODEL} (c): 404 The model `gpt-4o-mini` does not exist" in message
    assert resp.headers["Retry-After"] == "7"
    assert resp.headers["X-OmniRoute-Request-Id"]

    limits = await api(gw, "GET", "/api/rate-limits")
    rows = {r["name"]: r for r in limits["connections"]}
    assert set(rows) == {"a", "b", "c"}
    assert rows["a"]["failures"] == 1 and rows["a"]["last_error"] == "a exploded"
    assert rows["b"]["cooldown_left"] == pytest.approx(7, abs=0.5)
    assert rows["a"]["status"] == rows["b"]["status"] == "down"  # both rest a while
    assert rows["c"]["status"] == "healthy"  # a missing model says nothing about the account
    for row in rows.values():
        assert {"id", "prefix", "type", "in_flight", "total_requests", "successes",
                "consecutive_failures", "cooldown_left", "terminal_reason", "limits"} <= set(row)
    assert limits["health"]["down"] == 2 and limits["health"]["healthy"] == 1

    # the SDK sees the same thing; resting targets are listed as skipped
    c.script.append(error(502, "c is down too"))
    with pytest.raises(openai.InternalServerError) as info:
        await call(gw, "trio", 1)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "all_targets_failed"
    assert f"a/{MODEL} (a): skipped (cooling)" in info.value.body["message"]
    assert f"c/{MODEL} (c): 502 c is down too" in info.value.body["message"]


# ----------------------------------------------------------------------------- strategies

async def three(gw: Any, strategy: str, steps: list[Any] | None = None, **fakes: Any) -> list:
    upstreams = [await gw.add(name, fake=fakes.get(name)) for name in "abc"]
    await combo(gw, "pool", steps or [f"{n}/{MODEL}" for n in "abc"], strategy)
    gw.resilience.rng = random.Random(1234)
    return upstreams


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


# ----------------------------------------------------------------------------- cooldowns, terminal

async def test_retry_after_cools_the_account_until_it_expires(gw):
    clock = manual_clock(gw)
    a = await gw.add("a")
    await gw.add("b")
    await combo(gw, "duo", [f"a/{MODEL}", f"b/{MODEL}"])
    a.script.append(error(429, "slow down", headers={"Retry-After": "30"}))
    headers, _ = await call(gw, "duo")
    assert (headers["X-OmniRoute-Provider"], headers["X-OmniRoute-Fallback-Attempts"]) == ("b", "1")
    row = (await rate_limits(gw))["a"]
    assert row["status"] == "down" and row["cooldown_left"] == 30
    assert row["cooling_until"] == pytest.approx(clock.time() + 30)

    clock.advance(29)
    assert await served_by(gw, "duo", 3, 10) == ["b", "b", "b"]
    assert len(chats(a)) == 1  # skipped, not tried
    clock.advance(1.5)
    assert await served_by(gw, "duo", 1, 20) == ["a"]
    row = (await rate_limits(gw))["a"]
    assert row["status"] == "healthy" and row["consecutive_failures"] == 0


async def test_a_model_whose_only_account_cools_fails_fast_with_retry_after(gw):
    manual_clock(gw)
    await gw.set_settings(wait_for_cooldown_max=2)
    a = await gw.add("a")
    a.script.append(error(429, "slow down", headers={"x-ratelimit-reset-requests": "6m0s"}))
    with pytest.raises(openai.RateLimitError):
        await call(gw, f"a/{MODEL}")
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as info:
        await call(gw, f"a/{MODEL}", 1)
    assert time.monotonic() - started < 0.3
    assert info.value.code == "all_targets_cooling"
    assert info.value.response.headers["Retry-After"] == "360"
    assert len(chats(a)) == 1


async def test_an_invalid_key_keeps_the_account_out_until_an_operator_resets_it(gw):
    clock = manual_clock(gw)
    a = await gw.add("a")
    await gw.add("b")
    await combo(gw, "duo", [f"a/{MODEL}", f"b/{MODEL}"])
    a.script.append(error(401, "Incorrect API key provided: sk-upst**********test.",
                          code="invalid_api_key"))
    assert await served_by(gw, "duo", 1) == ["b"]
    clock.advance(86_400)  # no amount of waiting brings it back
    assert await served_by(gw, "duo", 2, 10) == ["b", "b"]
    assert len(chats(a)) == 1
    row = (await rate_limits(gw))["a"]
    assert (row["status"], row["terminal_reason"]) == ("down", "credentials_invalid")
    # alone, it answers 503 at once rather than trying a dead key
    resp = await gw.client.post("/v1/chat/completions",
                                json={"model": f"a/{MODEL}", "messages": ask(30)})
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "all_targets_unavailable"

    await api(gw, "POST", "/api/resilience/reset", {"connection_id": "conn_nope"}, 404)
    reset = await api(gw, "POST", "/api/resilience/reset", {"connection_id": a.conn_id})
    assert reset["reset"] == a.conn_id
    assert await served_by(gw, "duo", 1, 40) == ["a"]
    assert (await rate_limits(gw))["a"]["terminal_reason"] is None


# ----------------------------------------------------------------------------- circuit breaker

async def test_breaker_opens_half_opens_and_closes(gw):
    clock = manual_clock(gw)
    await gw.set_settings(breaker_threshold=2, breaker_reset=30, cooldown_base=0.5,
                          cooldown_max=0.5)
    a = await gw.add("a")
    await gw.add("b")
    await combo(gw, "duo", [f"a/{MODEL}", f"b/{MODEL}"])

    async def breaker() -> dict[str, Any]:
        state = await api(gw, "GET", "/api/resilience")
        return next(x for x in state["breakers"] if x["key"] == "a")

    for i in range(2):
        a.script.append(error(500, "a is down"))
        assert await served_by(gw, "duo", 1, i) == ["b"]
        clock.advance(1)  # past the cooldown: only the breaker keeps a out now
    assert (await breaker())["state"] == "open"
    health = await api(gw, "GET", "/api/monitoring/health")
    assert health["status"] == "degraded"
    assert {"key": "a", "state": "open"} in health["providers"]["breakers"]
    assert health["providers"]["health"] == {"healthy": 1, "degraded": 0, "down": 1}
    assert await served_by(gw, "duo", 2, 10) == ["b", "b"]
    assert len(chats(a)) == 2  # open: nothing is sent

    clock.advance(30)
    assert (await breaker())["state"] == "half_open"
    a.script.append(error(503, "still down"))
    assert await served_by(gw, "duo", 1, 20) == ["b"]  # the trial fails: open again
    assert (await breaker())["state"] == "open" and len(chats(a)) == 3
    clock.advance(30)
    assert await served_by(gw, "duo", 1, 30) == ["a"]  # the trial succeeds: closed
    state = await breaker()
    assert state["state"] == "closed" and state["times_opened"] == 2
    health = await api(gw, "GET", "/api/monitoring/health")
    assert health["providers"]["health"]["down"] == 0
    assert {"key": "a", "state": "closed"} in health["providers"]["breakers"]


# ----------------------------------------------------------------------------- limits and queues

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


# ----------------------------------------------------------------------------- sticky sessions

async def test_one_session_stays_on_one_connection_and_sessions_spread(gw):
    await three(gw, "round-robin")
    same = []
    for i in range(4):
        headers, _ = await call(gw, "pool", i, extra_headers={"X-Session-Id": "conv-1"})
        same.append(headers["X-OmniRoute-Provider"])
        assert headers["X-OmniRoute-Session-Id"] == "conv-1"
    assert len(set(same)) == 1
    spread = []
    for n in range(6):
        headers, _ = await call(gw, "pool", extra_headers={"X-Session-Id": f"other-{n}"})
        spread.append(headers["X-OmniRoute-Provider"])
    assert set(spread) == {"a", "b", "c"}
    sessions = await api(gw, "GET", "/api/sessions")
    assert sessions["count"] == 7 and sessions["ttl"] > 0
    bound = {s["session"]: s["connection_id"] for s in sessions["items"]}
    assert set(bound) >= {"conv-1", *(f"other-{n}" for n in range(6))}
    assert all(s["expires_in"] > 0 for s in sessions["items"])


async def test_session_ids_come_from_headers_or_the_body_and_never_go_upstream(gw):
    a = await gw.add("a")
    headers, _ = await call(gw, f"a/{MODEL}", extra_body={"x_session_id": "from-body"})
    assert headers["X-OmniRoute-Session-Id"] == "from-body"
    assert "x_session_id" not in chats(a)[-1].json
    headers, _ = await call(gw, f"a/{MODEL}", stream=True,
                            extra_body={"x_session_id": "from-body-2"})
    assert headers["X-OmniRoute-Session-Id"] == "from-body-2"
    assert "x_session_id" not in chats(a)[-1].json
    headers, _ = await call(gw, f"a/{MODEL}",
                            extra_headers={"x-omniroute-session": "from-header"})
    assert headers["X-OmniRoute-Session-Id"] == "from-header"
    headers, _ = await call(gw, f"a/{MODEL}", extra_headers={"X-Session-Id": "x"})
    for request in chats(a):
        assert not {"x-session-id", "x-omniroute-session"} & set(request.headers)
    # no id given: with one target there is nothing to pin ...
    alone, _ = await call(gw, f"a/{MODEL}", 7)
    assert "X-OmniRoute-Session-Id" not in alone
    # ... with a choice, a fingerprint of the conversation pins it
    await gw.add("b")
    await combo(gw, "duo", [f"a/{MODEL}", f"b/{MODEL}"], "round-robin")
    first, _ = await call(gw, "duo", 7)
    again, _ = await call(gw, "duo", 7)
    other, _ = await call(gw, "duo", 8)
    assert first["X-OmniRoute-Session-Id"].startswith("fp:")
    assert first["X-OmniRoute-Session-Id"] == again["X-OmniRoute-Session-Id"]
    assert first["X-OmniRoute-Session-Id"] != other["X-OmniRoute-Session-Id"]
    assert first["X-OmniRoute-Provider"] == again["X-OmniRoute-Provider"]  # despite round-robin


async def test_a_session_moves_when_its_connection_cools_down(gw):
    clock = manual_clock(gw)
    a, _, _ = await three(gw, "round-robin")
    sid = {"X-Session-Id": "conv-9"}
    home = (await call(gw, "pool", extra_headers=sid))[0]["X-OmniRoute-Provider"]
    assert home == "a"
    a.script.append(error(429, "slow down", headers={"Retry-After": "60"}))
    moved = [(await call(gw, "pool", i, extra_headers=sid))[0]["X-OmniRoute-Provider"]
             for i in range(1, 4)]
    assert len(set(moved)) == 1 and moved[0] != "a"
    clock.advance(61)  # a is back, but the session stays where it is healthy
    assert (await call(gw, "pool", 5, extra_headers=sid))[0]["X-OmniRoute-Provider"] == moved[0]
    bound = {s["session"]: s["connection_id"]
             for s in (await api(gw, "GET", "/api/sessions"))["items"]}
    assert bound["conv-9"] != a.conn_id


# ----------------------------------------------------------------------------- after the first byte

@pytest.mark.parametrize("behaviour", [
    drop_mid_stream(3),
    mid_stream_error(3),
], ids=["dropped", "error_event"])
async def test_a_failure_after_the_first_byte_ends_the_stream_without_fallback(gw, behaviour):
    a, b = await gw.add("a"), await gw.add("b")
    await combo(gw, "duo", [f"a/{MODEL}", f"b/{MODEL}"])
    a.script.append(behaviour)
    stream = await gw.sdk.chat.completions.create(model="duo", messages=ask(), stream=True)
    seen = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            seen.append(chunk)
    assert seen, "the stream had started"
    assert chats(b) == []  # too late to fall back: part of the answer was delivered
    (record,) = await log_records(gw)
    assert record["status"] >= 500 and record["error"]
    row = (await rate_limits(gw))["a"]
    assert row["failures"] == 1 and row["last_error"], row  # the account pays for it


# ----------------------------------------------------------------------------- management API

async def test_combos_crud_with_validation(gw):
    await gw.add("alpha", prefix="a")
    await gw.add("b")
    created = await combo(gw, "pair", [f"a/{MODEL}", {"provider": "b", "model": MODEL,
                                                      "connection": "b", "weight": 2}],
                          "Least_Used")
    assert created["strategy"] == "least-used"
    cid = created["id"]
    assert (await api(gw, "GET", f"/api/combos/{cid}"))["name"] == "pair"
    listed = await api(gw, "GET", "/api/combos")
    assert [c["id"] for c in listed["combos"]] == [cid]

    async def refused(method: str, path: str, body: dict[str, Any], *needles: str) -> None:
        err = (await api(gw, method, path, body, 400))["error"]
        assert err["code"] == "invalid_config"
        for needle in needles:
            assert needle in err["message"], err["message"]

    await refused("POST", "/api/combos", {"name": "x", "steps": [f"a/{MODEL}", "gpt-4o-mni"]},
                  "step 2 ('gpt-4o-mni'): Model 'gpt-4o-mni' is not known.")
    await refused("POST", "/api/combos", {"name": "x", "steps": ["zz/gpt-4o"]},
                  "step 1 ('zz/gpt-4o')", "is not known")
    await refused("POST", "/api/combos", {"name": "x", "steps": ["pari"]},
                  "Did you mean 'pair'?")
    await refused("POST", "/api/combos", {"name": "x", "steps": []}, "non-empty list of steps")
    await refused("POST", "/api/combos", {"name": "x", "steps": [f"a/{MODEL}"],
                                          "strategy": "fastest"},
                  "unknown strategy 'fastest'; expected one of priority, round-robin")
    await refused("POST", "/api/combos", {"name": "x", "steps": [
        {"model": f"a/{MODEL}", "weight": -1}]}, "step 1: weight must be a positive number")
    await refused("POST", "/api/combos", {"name": "x", "steps": [
        {"model": f"a/{MODEL}", "connection": "gamma"}]}, "step 1: no connection 'gamma'")
    await refused("POST", "/api/combos", {"name": "x", "steps": [
        {"model": f"a/{MODEL}", "connection": "b"}]}, "pins connection 'b', which does not serve")
    await refused("POST", "/api/combos", {"name": "pair", "steps": [f"a/{MODEL}"]},
                  "a combo named 'pair' already exists")
    outer = await combo(gw, "outer", ["pair", f"b/{MODEL}"])
    await refused("PUT", f"/api/combos/{cid}", {"steps": ["outer"]},
                  "combo cycle: pair -> outer -> pair")
    await refused("PUT", f"/api/combos/{cid}", {"strategy": "nope"}, "unknown strategy 'nope'")
    await refused("PUT", f"/api/combos/{cid}", {"steps": ["gpt-5"]}, "step 1 ('gpt-5')")

    updated = await api(gw, "PUT", f"/api/combos/{cid}",
                        {"steps": [f"b/{MODEL}", f"a/{MODEL}"], "strategy": "p2c"})
    assert updated["id"] == cid and updated["strategy"] == "p2c"
    assert (await api(gw, "GET", f"/api/combos/{cid}"))["steps"] == [f"b/{MODEL}", f"a/{MODEL}"]
    route = gw.catalog.router.resolve("pair")  # live at once
    assert route.strategy == "p2c" and [t.prefix for t in route.targets] == ["b", "a"]

    await api(gw, "DELETE", f"/api/combos/{outer['id']}")
    assert (await api(gw, "DELETE", f"/api/combos/{cid}")) == {"deleted": cid}
    await api(gw, "GET", f"/api/combos/{cid}", status=404)
    await api(gw, "PUT", f"/api/combos/{cid}", {"strategy": "p2c"}, 404)
    await api(gw, "DELETE", f"/api/combos/{cid}", status=404)
    assert (await api(gw, "GET", "/api/combos"))["combos"] == []
    with pytest.raises(openai.BadRequestError) as info:
        await call(gw, "pair")
    assert info.value.code == "model_not_found"


async def test_resilience_settings_and_state_over_the_api(gw):
    state = await api(gw, "GET", "/api/resilience")
    assert state["settings"]["breaker_threshold"] == 12
    assert state["settings"]["account_strategy"] == "priority"
    assert state["health"] == {"healthy": 0, "degraded": 0, "down": 0,
                               "breakers": {"closed": 0, "open": 0, "half_open": 0}}
    changed = await api(gw, "PATCH", "/api/resilience",
                        {"breaker_threshold": 3, "account_strategy": "Round_Robin",
                         "wait_for_cooldown_max": 0})
    assert changed["settings"]["breaker_threshold"] == 3
    assert changed["settings"]["account_strategy"] == "round-robin"
    assert changed["settings"]["wait_for_cooldown_max"] == 0
    assert gw.resilience.settings.breaker_threshold == 3
    err = (await api(gw, "PATCH", "/api/resilience", {"require_login": False}, 400))["error"]
    assert "not a resilience setting: require_login" in err["message"]
    err = (await api(gw, "PATCH", "/api/resilience", {"account_strategy": "best"}, 400))["error"]
    assert "expected one of" in err["message"]
    await gw.add("a")
    state = await api(gw, "GET", "/api/resilience")
    assert state["health"]["healthy"] == 1
    assert (await api(gw, "POST", "/api/resilience/reset"))["reset"] == "all"
    sessions = await api(gw, "GET", "/api/sessions")
    assert sessions == {"count": 0, "max": 10000, "ttl": 1800.0, "items": []}
