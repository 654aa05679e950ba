"""Cooldowns, terminal states and the circuit breaker end to end (a ManualClock moves time)."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
from fakes.openai_upstream import (
    error,
)

from resilience_e2e.support import (
    MODEL,
    api,
    ask,
    call,
    chats,
    combo,
    manual_clock,
    rate_limits,
    served_by,
)


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
