"""Hedging: a target slow to give its first byte races the next one.

The bound itself is tested on the resilience facade with a ``ManualClock``;
the race end to end: the official openai SDK -> the gateway -> two fake
upstreams, one of which hangs before its headers.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import anthropic
import openai
import pytest
from fakes.openai_upstream import Behaviour, FakeOpenAI, error, hang_before_headers

from omniroute.config import Settings
from omniroute.pipeline import relay
from omniroute.providers.base import Provider
from omniroute.resilience import ManualClock, Resilience
from omniroute.routing import Target
from omniroute.storage.store import Connection

KEY = "sk-upstream-test"
MODEL = "gpt-4o-mini"
ANSWER = "Hello! You said: question 0"


# ----------------------------------------------------------------------------- the bound

class FakeProvider(Provider):
    type = "fake"


def target(cid: str, model: str = "m") -> Target:
    conn = Connection(id=cid, type="fake", name=cid, prefix=cid, settings={})
    return Target(conn, FakeProvider(conn, None), model)  # type: ignore[arg-type]


def resilience(**settings: Any) -> tuple[Resilience, ManualClock]:
    clock = ManualClock()
    return Resilience(Settings(**settings), clock=clock, rng=random.Random(1)), clock


async def first_bytes(
    r: Resilience, clock: ManualClock, t: Target, seconds: float, n: int = 1, lane: str = "stream"
) -> None:
    """``n`` successful calls to ``t`` whose first byte came after ``seconds``."""
    for _ in range(n):
        async with r.attempt(t) as attempt:
            clock.advance(seconds)
            attempt.first_byte(lane)


async def test_the_bound_follows_the_targets_own_p95():
    r, clock = resilience(hedge_factor=3.0, hedge_floor=2.0, hedge_initial=10.0)
    a = target("a")
    assert r.hedge_after(a) == 10.0  # nothing known yet
    await first_bytes(r, clock, a, 0.5, 7)
    assert r.hedge_after(a) == 10.0  # seven times are too few for a p95
    await first_bytes(r, clock, a, 0.5)
    assert r.hedge_after(a) == 2.0  # 3 × 0.5 s is under the floor
    await first_bytes(r, clock, a, 1.0, 64)  # the ring holds the last 64
    assert r.hedge_after(a) == 3.0
    await first_bytes(r, clock, a, 5.0, 3)  # 3 slow ones in 64 are under the top 5 %
    assert r.hedge_after(a) == 3.0
    await first_bytes(r, clock, a, 5.0)  # the 4th is the p95
    assert r.hedge_after(a) == 15.0
    await first_bytes(r, clock, a, 0.2, 64)  # the slow ones age out
    assert r.hedge_after(a) == 2.0


async def test_each_model_and_lane_has_its_own_times_and_the_setting_turns_it_off():
    r, clock = resilience(hedge_factor=3.0, hedge_floor=0.5, hedge_initial=10.0)
    a, a_other = target("a"), target("a", model="other")
    await first_bytes(r, clock, a, 1.0, 8, lane="stream")
    await first_bytes(r, clock, a, 4.0, 8, lane="json")  # a JSON first byte is the whole answer
    assert r.hedge_after(a, "stream") == 3.0
    assert r.hedge_after(a, "json") == 12.0
    assert r.hedge_after(a_other, "stream") == 10.0
    assert r.hedge_after(target("b")) == 10.0
    r.configure(Settings(hedge=False))
    assert r.hedge_after(a) is None


async def test_a_lost_race_counts_as_a_slow_first_byte_not_a_failure():
    r, clock = resilience(hedge_factor=3.0, hedge_floor=2.0, hedge_initial=10.0)
    a = target("a")
    await first_bytes(r, clock, a, 0.1, 60)
    assert r.hedge_after(a) == 2.0
    for _ in range(4):  # raced four times and outrun: a is slow, and its bound grows
        r.record_outrun(a, 2.5)
    assert r.hedge_after(a) == 7.5
    row = next(c for c in r.snapshot()["connections"] if c["id"] == "a")
    assert row["outrun"] == 4
    assert row["ttft_ms"] > 1000  # the latency strategies see it as slow too
    assert (row["failures"], row["consecutive_failures"], row["status"]) == (0, 0, "healthy")


def test_the_settings_are_checked():
    assert Settings.coerce("hedge", "off") is False
    assert Settings.coerce("hedge_factor", "1") == 1.0
    assert Settings.coerce("hedge_floor", 0.25) == 0.25
    for name, value in (("hedge_factor", 0.5), ("hedge_floor", 0), ("hedge_initial", -1)):
        with pytest.raises(ValueError, match=name):
            Settings.coerce(name, value)


# ----------------------------------------------------------------------------- end to end

@pytest.fixture
async def gw(omniroute: Any, aiohttp_server: Any) -> Any:
    """The gateway, with ``gw.add(name)`` adding a fake upstream as a connection."""

    async def add(name: str, **connection: Any) -> FakeOpenAI:
        upstream = FakeOpenAI(api_key=KEY)
        server = await aiohttp_server(upstream.app)
        view = await omniroute.add_provider({
            "type": "openai", "name": name, "prefix": name, "api_key": KEY,
            "base_url": str(server.make_url("/v1")), **connection})
        upstream.conn_id = view["id"]  # type: ignore[attr-defined]
        return upstream

    async def api(method: str, path: str, body: Any = None, status: int = 200) -> Any:
        resp = await omniroute.client.request(method, path, json=body,
                                              headers=omniroute.admin_headers)
        data = await resp.json()
        assert resp.status == status, data
        return data

    omniroute.add, omniroute.api = add, api
    omniroute.sdk = openai.AsyncOpenAI(base_url=omniroute.base_url + "/v1", api_key="sk-client",
                                       max_retries=0, timeout=15)
    yield omniroute
    await omniroute.sdk.close()


async def duo(gw: Any, **connection: Any) -> tuple[FakeOpenAI, FakeOpenAI]:
    """Two upstreams, ``a`` then ``b``, behind the combo ``duo`` (priority order)."""
    a, b = await gw.add("a", **connection), await gw.add("b")
    await gw.api("POST", "/api/combos", {"name": "duo", "strategy": "priority",
                                         "steps": [f"a/{MODEL}", f"b/{MODEL}"]}, 201)
    return a, b


async def call(gw: Any, model: str, i: int = 0, *, stream: bool = False) -> Any:
    """One chat request through the SDK: ``(headers, text, chunks)``."""
    raw = await gw.sdk.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": f"question {i}"}], stream=stream)
    parsed = raw.parse()
    if not stream:
        return raw.headers, parsed.choices[0].message.content, None
    chunks = [c async for c in parsed]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return raw.headers, text, chunks


def chats(fake: FakeOpenAI) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/chat/completions"))


async def rows(gw: Any) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in (await gw.api("GET", "/api/rate-limits"))["connections"]}


def racing() -> list[asyncio.Task[Any]]:
    """Tasks of a race still running (each raced call has one)."""
    return [t for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "").startswith("Race.")]


async def until(predicate: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_hung_target_is_raced_and_the_healthy_one_answers(gw, stream):
    await gw.set_settings(hedge_floor=0.3, hedge_initial=0.3)  # first_byte_timeout stays 120 s
    a, b = await duo(gw, max_concurrency=1)
    a.script.append(hang_before_headers(30))
    started = time.monotonic()
    headers, text, chunks = await call(gw, "duo", stream=stream)
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.3 + 0.5, elapsed
    assert text == ANSWER  # the winner's answer, whole
    if stream:
        assert chunks[-1].choices[0].finish_reason == "stop"
    assert headers["X-OmniRoute-Provider"] == "b"
    assert headers["X-OmniRoute-Fallback-Attempts"] == "1"
    assert (chats(a), chats(b)) == (1, 1)
    await until(lambda: a.closed_streams == 1)  # the loser's connection is closed
    assert not racing()  # and no task of the race is left behind
    (record,) = (await gw.api("GET", "/api/requests"))["requests"]
    assert (record["provider"], record["model"], record["attempts"]) == ("b", MODEL, 2)
    assert record["status"] == 200
    state = await rows(gw)
    # slow is not wrong: a is not charged, its slot is free, and the lost race is counted
    assert state["a"]["status"] == "healthy" and state["a"]["failures"] == 0
    assert state["a"]["outrun"] == 1 and state["a"]["in_flight"] == 0
    assert state["a"]["limits"]["in_use"] == 0
    assert state["b"]["successes"] == 1 and state["b"]["outrun"] == 0
    headers, text, _ = await call(gw, f"a/{MODEL}", 1, stream=stream)  # a serves again at once
    assert headers["X-OmniRoute-Provider"] == "a" and text == "Hello! You said: question 1"


async def test_with_the_default_bound_a_hang_costs_the_floor_not_the_first_byte_timeout(gw):
    a, _ = await duo(gw)
    for i in range(8):  # a streams fast: its p95 is far under the 2 s floor
        assert (await call(gw, "duo", 10 + i, stream=True))[0]["X-OmniRoute-Provider"] == "a"
    a.script.append(hang_before_headers(30))
    started = time.monotonic()
    headers, text, _ = await call(gw, "duo", stream=True)
    elapsed = time.monotonic() - started
    assert Settings().hedge_floor == 2.0 and Settings().first_byte_timeout == 120.0
    assert 2.0 <= elapsed < 2.0 + 0.6, elapsed
    assert headers["X-OmniRoute-Provider"] == "b" and text == ANSWER
    await until(lambda: a.closed_streams == 1)


async def test_the_first_target_still_wins_when_it_answers_before_the_racer(gw):
    await gw.set_settings(hedge_floor=0.2, hedge_initial=0.2)
    a, b = await duo(gw)
    a.script.append(hang_before_headers(0.5))  # slow, then a normal answer
    b.script.append(hang_before_headers(30))
    headers, text, _ = await call(gw, "duo", stream=True)
    assert headers["X-OmniRoute-Provider"] == "a" and text == ANSWER
    assert headers["X-OmniRoute-Fallback-Attempts"] == "1"  # b was tried too
    await until(lambda: b.closed_streams == 1)
    (record,) = (await gw.api("GET", "/api/requests"))["requests"]
    assert (record["provider"], record["attempts"]) == ("a", 2)
    state = await rows(gw)
    assert state["a"]["successes"] == 1 and state["a"]["outrun"] == 0
    # b started late and lost without reaching its own bound: nothing is recorded for it
    assert state["b"]["outrun"] == state["b"]["failures"] == state["b"]["successes"] == 0
    assert state["b"]["in_flight"] == 0


async def test_the_clients_own_mistake_from_the_racer_ends_the_race(gw):
    await gw.set_settings(hedge_floor=0.2, hedge_initial=0.2)
    a, b = await duo(gw)
    a.script.append(hang_before_headers(30))
    b.script.append(error(400, "Invalid value for 'temperature'.", code="invalid_value"))
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as info:
        await call(gw, "duo")
    assert time.monotonic() - started < 0.2 + 0.5
    assert info.value.code == "invalid_value"
    assert info.value.response.headers["X-OmniRoute-Provider"] == "b"
    await until(lambda: a.closed_streams == 1)
    state = await rows(gw)
    assert state["a"]["failures"] == state["b"]["failures"] == 0
    assert state["a"]["in_flight"] == state["b"]["in_flight"] == 0


async def test_the_first_targets_own_error_after_the_race_started_goes_back_naming_it(gw):
    await gw.set_settings(hedge_floor=0.2, hedge_initial=0.2)
    a, b = await duo(gw)
    slow_400 = error(400, "Invalid value for 'temperature'.", code="invalid_value")
    a.script.append(Behaviour(hang_before_headers=0.5, status=400, error=slow_400.error))
    b.script.append(hang_before_headers(30))
    with pytest.raises(openai.BadRequestError) as info:
        await call(gw, "duo")
    headers = info.value.response.headers
    assert headers["X-OmniRoute-Provider"] == "a"  # not b, which started last
    assert headers["X-OmniRoute-Fallback-Attempts"] == "1"
    await until(lambda: b.closed_streams == 1)


async def test_each_slow_target_in_turn_is_raced(gw):
    await gw.set_settings(hedge_floor=0.2, hedge_initial=0.2)
    a, b, _ = await gw.add("a"), await gw.add("b"), await gw.add("c")
    await gw.api("POST", "/api/combos", {"name": "trio", "strategy": "priority",
                                         "steps": [f"{n}/{MODEL}" for n in "abc"]}, 201)
    a.script.append(hang_before_headers(30))
    b.script.append(hang_before_headers(30))
    started = time.monotonic()
    headers, text, _ = await call(gw, "trio", stream=True)
    assert 0.4 <= time.monotonic() - started < 0.4 + 0.5
    assert headers["X-OmniRoute-Provider"] == "c" and text == ANSWER
    assert headers["X-OmniRoute-Fallback-Attempts"] == "2"
    await until(lambda: a.closed_streams == b.closed_streams == 1)
    state = await rows(gw)
    assert state["a"]["outrun"] == state["b"]["outrun"] == 1
    assert all(state[n]["in_flight"] == state[n]["failures"] == 0 for n in "abc")


async def test_a_failure_after_the_race_started_leaves_the_slow_one_running(gw):
    """The racer fails: the raced call is not abandoned, and answers in the end."""
    await gw.set_settings(hedge_floor=0.2, hedge_initial=0.2)
    a, b = await duo(gw)
    a.script.append(hang_before_headers(0.6))
    b.script.append(error(500, "b is down"))
    started = time.monotonic()
    headers, text, _ = await call(gw, "duo")
    assert 0.6 <= time.monotonic() - started < 0.6 + 0.5
    assert headers["X-OmniRoute-Provider"] == "a" and text == ANSWER
    assert headers["X-OmniRoute-Fallback-Attempts"] == "1"
    assert a.closed_streams == 0
    assert (await rows(gw))["b"]["failures"] == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_with_hedging_off_a_hung_target_holds_the_request_until_its_timeout(gw, stream):
    await gw.set_settings(hedge=False, hedge_floor=0.1, hedge_initial=0.1,
                          first_byte_timeout=0.8)
    a, _ = await duo(gw)
    a.script.append(hang_before_headers(30))
    started = time.monotonic()
    headers, text, _ = await call(gw, "duo", stream=stream)
    assert 0.8 <= time.monotonic() - started < 0.8 + 0.6
    assert headers["X-OmniRoute-Provider"] == "b" and text == ANSWER
    assert headers["X-OmniRoute-Fallback-Attempts"] == "1"
    state = await rows(gw)
    assert state["a"]["failures"] == 1 and state["a"]["outrun"] == 0  # a timeout is charged


async def test_a_client_that_leaves_mid_race_stops_both_calls(gw):
    await gw.set_settings(hedge_floor=0.2, hedge_initial=0.2)
    a, b = await duo(gw)
    a.script.append(hang_before_headers(30))
    b.script.append(hang_before_headers(30))
    task = asyncio.create_task(gw.client.post(
        "/v1/chat/completions",
        json={"model": "duo", "messages": [{"role": "user", "content": "question 0"}]}))
    await until(lambda: chats(b) == 1)  # the race is on: b runs in a task of its own
    assert len(racing()) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: a.closed_streams == 1 and b.closed_streams == 1)
    assert not racing()
    (record,) = (await gw.api("GET", "/api/requests"))["requests"]
    assert record["status"] == 499
    state = await rows(gw)
    for name in "ab":  # leaving costs neither anything, and no call is left in flight
        assert state[name]["in_flight"] == state[name]["failures"] == state[name]["outrun"] == 0


async def test_an_anthropic_stream_with_keepalives_is_raced_too(gw, monkeypatch):
    """The race runs inside the keep-alive task of an Anthropic stream."""
    monkeypatch.setattr(relay, "KEEPALIVE_AFTER", 0.1)
    monkeypatch.setattr(relay, "KEEPALIVE_EVERY", 0.1)
    await gw.set_settings(hedge_floor=0.3, hedge_initial=0.3)
    a, _ = await duo(gw)
    a.script.append(hang_before_headers(30))
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="sk-client", max_retries=0)
    async with client.messages.stream(model="duo", max_tokens=64, messages=[
            {"role": "user", "content": "question 0"}]) as stream:
        message = await stream.get_final_message()
    assert message.content[0].text == ANSWER  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    await until(lambda: a.closed_streams == 1)
    assert not racing()
    (record,) = (await gw.api("GET", "/api/requests"))["requests"]
    assert (record["provider"], record["status"], record["attempts"]) == ("b", 200, 2)

    a.script.append(hang_before_headers(30))
    resp = await gw.client.post("/v1/messages", json={
        "model": "duo", "max_tokens": 64, "stream": True,
        "messages": [{"role": "user", "content": "question 1"}]})
    assert resp.status == 200
    names = [line[7:] for line in (await resp.read()).decode().splitlines()
             if line.startswith("event: ")]
    start = names.index("message_start")
    assert start >= 1 and set(names[:start]) == {"ping"}  # pings went out while racing
    assert names[-1] == "message_stop"
    await until(lambda: a.closed_streams == 2)
