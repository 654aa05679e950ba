"""Fallback end to end: a healthy target serves; what moves on and what goes back to the
client; the 503 when every target fails; a failure after the first byte ends the stream."""

from __future__ import annotations

import time

import openai
import pytest
from fakes.openai_upstream import (
    drop_mid_stream,
    error,
    hang_before_headers,
    mid_stream_error,
)

from resilience_e2e.support import (
    CONTEXT_TOO_LONG,
    MODEL,
    api,
    ask,
    call,
    chats,
    combo,
    log_records,
    rate_limits,
    until,
)


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
