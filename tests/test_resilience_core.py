"""The Resilience facade: plans, attempts, cooldowns, terminal states, breakers,
limits, waiting for the soonest target, resets, snapshots and settings."""

from __future__ import annotations

import asyncio
import random
from email.utils import formatdate
from typing import Any

import orjson
import pytest

from omniroute.config import ConfigError, Settings, settings_from_env
from omniroute.errors import (
    CircuitOpen,
    ConnectionBusy,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from omniroute.providers.base import Provider
from omniroute.resilience import ManualClock, Resilience
from omniroute.routing import Target
from omniroute.storage.store import Connection


class FakeProvider(Provider):
    type = "fake"


class OAuthProvider(FakeProvider):
    auth_kind = "oauth"


class AnthropicLike(FakeProvider):
    format = "anthropic"


def target(cid: str, prefix: str = "up", model: str = "m", provider: type[Provider] = FakeProvider,
           **settings: Any) -> Target:
    conn = Connection(id=cid, type="fake", name=f"name-{cid}", prefix=prefix, settings=settings)
    return Target(conn, provider(conn, None), model)  # type: ignore[arg-type]


def ids(targets: Any) -> list[str]:
    return [t.connection.id for t in targets]


def make(**settings: Any) -> tuple[Resilience, ManualClock]:
    clock = ManualClock()
    return Resilience(Settings(**settings), clock=clock, rng=random.Random(1)), clock


def status(
    code: int, headers: dict[str, str] | None = None, body: bytes = b""
) -> UpstreamStatusError:
    return UpstreamStatusError(f"HTTP {code}", status=code, headers=headers, body=body)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def stats_of(r: Resilience, cid: str) -> dict[str, Any]:
    return next(c for c in r.snapshot()["connections"] if c["id"] == cid)


# ------------------------------------------------------------------ cooldowns

@pytest.mark.parametrize(("headers", "body", "seconds"), [
    ({"Retry-After": "7"}, b"", 7.0),
    ({"Retry-After": formatdate(1_700_000_000 + 40, usegmt=True)}, b"", 40.0),
    ({"x-ratelimit-reset-requests": "1m30s", "x-ratelimit-remaining-requests": "0"}, b"", 90.0),
    ({"x-ratelimit-reset-tokens": "20ms"}, b"", 0.02),
    ({"anthropic-ratelimit-tokens-reset": "2023-11-14T22:13:45Z"}, b"", 25.0),
    ({}, orjson.dumps({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}]}}), 12.0),
])
def test_cooldown_from_each_hint_expires_and_restores(
    headers: dict[str, str], body: bytes, seconds: float
) -> None:
    r, clock = make()
    a, b = target("a"), target("b")
    decision = r.record_failure(a, status(429, headers, body))
    assert decision.move_on and decision.cooldown == pytest.approx(seconds)
    plan = r.plan([a, b])
    assert ids(plan.targets) == ["b"] and [(ids([t])[0], w) for t, w in plan.skipped] == [
        ("a", "cooling")]
    clock.advance(seconds * 0.99)
    assert ids(r.plan([a, b]).targets) == ["b"]
    clock.advance(seconds * 0.02)
    assert ids(r.plan([a, b]).targets) == ["a", "b"]


def test_backoff_without_hints_grows_and_success_resets_it() -> None:
    r, clock = make(cooldown_base=2.0, cooldown_factor=3.0, cooldown_max=50.0)
    a = target("a")
    got = []
    for _ in range(5):
        got.append(r.record_failure(a, UpstreamTimeout("slow")).cooldown)
        clock.advance(100)
    assert got == [2.0, 6.0, 18.0, 50.0, 50.0]
    assert stats_of(r, "a")["consecutive_failures"] == 5
    r.record_success(a)
    assert stats_of(r, "a")["consecutive_failures"] == 0
    assert r.record_failure(a, UpstreamError("unreachable")).cooldown == 2.0


def test_success_clears_an_active_cooldown() -> None:
    r, _ = make()
    a = target("a")
    r.record_failure(a, status(503))
    assert r.plan([a]).targets == ()
    r.record_success(a)
    assert ids(r.plan([a]).targets) == ["a"]


def test_failures_that_are_not_the_accounts_fault_cost_nothing() -> None:
    r, _ = make()
    a = target("a")
    too_long = status(400, body=b'{"error": {"code": "context_length_exceeded", "message": "x"}}')
    d = r.record_failure(a, too_long)
    assert d.move_on and d.cooldown is None and d.kind == "context_too_long"
    assert r.record_failure(a, status(404)).cooldown is None
    snap = stats_of(r, "a")
    assert snap["consecutive_failures"] == 0 and snap["failures"] == 2
    assert ids(r.plan([a]).targets) == ["a"]
    client = r.record_failure(a, status(400, body=b'{"error": {"message": "bad temperature"}}'))
    assert not client.move_on and stats_of(r, "a")["failures"] == 2


# ------------------------------------------------------------------ terminal states

@pytest.mark.parametrize(("error", "reason"), [
    (status(401, body=b'{"error": {"code": "invalid_api_key", "message": "Incorrect API key"}}'),
     "credentials_invalid"),
    (status(402), "billing"),
    (status(429, body=b'{"error": {"code": "insufficient_quota", "message": "quota"}}'), "billing"),
    (status(403, body=b'{"error": {"message": "Your account has been banned"}}'),
     "account_deactivated"),
])
def test_terminal_states_last_until_reset(error: Exception, reason: str) -> None:
    r, clock = make()
    a, b = target("a"), target("b")
    d = r.record_failure(a, error)
    assert d.move_on and d.terminal_reason == reason and d.cooldown is None
    clock.advance(10 ** 7)
    r.record_success(a)  # a stray success does not bring it back either
    assert ids(r.plan([a, b]).targets) == ["b"]
    snap = stats_of(r, "a")
    assert snap["terminal_reason"] == reason and snap["status"] == "down"
    assert r.soonest_available([a]) is None
    r.reset("b")
    assert ids(r.plan([a, b]).targets) == ["b"]
    r.reset("a")
    assert ids(r.plan([a, b]).targets) == ["a", "b"]
    assert stats_of(r, "a")["terminal_reason"] is None


def test_reset_all_clears_cooldowns_terminals_and_breakers() -> None:
    r, _ = make(breaker_threshold=1)
    a, b, c = target("a", prefix="p1"), target("b", prefix="p2"), target("c", prefix="p3")
    r.record_failure(a, status(402))
    r.record_failure(b, status(429, {"Retry-After": "600"}))
    r.record_failure(c, status(500))
    assert r.plan([a, b, c]).targets == ()
    r.reset()
    assert ids(r.plan([a, b, c]).targets) == ["a", "b", "c"]
    assert {b["state"] for b in r.snapshot()["breakers"]} == {"closed"}


# ------------------------------------------------------------------ refresh

async def test_oauth_401_asks_for_one_refresh_then_counts() -> None:
    r, _ = make()
    t = target("a", provider=OAuthProvider)
    with pytest.raises(UpstreamStatusError):
        async with r.attempt(t) as attempt:
            raise status(401)
    assert attempt.decision is not None and attempt.decision.refresh
    assert attempt.decision.cooldown is None and ids(r.plan([t]).targets) == ["a"]
    with pytest.raises(UpstreamStatusError):
        async with r.attempt(t, refreshed=True) as attempt:
            raise status(401)
    assert attempt.decision is not None and not attempt.decision.refresh
    assert attempt.decision.cooldown is not None and r.plan([t]).targets == ()


def test_api_key_provider_never_asks_for_a_refresh() -> None:
    r, _ = make()
    assert not r.record_failure(target("a"), status(401)).refresh


def test_provider_format_picks_the_patterns() -> None:
    r, _ = make()
    body = b'{"type": "error", "error": {"type": "invalid_request_error", "message": "model: x"}}'
    assert r.record_failure(target("a", provider=AnthropicLike), status(400, body=body)).move_on
    assert not r.record_failure(target("b"), status(400, body=body)).move_on


# ------------------------------------------------------------------ attempts

async def test_attempt_counts_in_flight_and_records_ttft() -> None:
    r, clock = make()
    a = target("a")
    async with r.attempt(a, session_id="s") as attempt:
        assert stats_of(r, "a")["in_flight"] == 1
        clock.advance(0.25)
        attempt.first_byte()
        clock.advance(5)
        attempt.first_byte()  # only the first counts
    snap = stats_of(r, "a")
    assert snap["in_flight"] == 0 and snap["successes"] == 1 and snap["total_requests"] == 1
    assert snap["ttft_ms"] == 250.0
    assert r.sessions.get("s") == "a"


async def test_attempt_records_an_upstream_error_leaving_the_block() -> None:
    r, _ = make()
    a = target("a")
    with pytest.raises(UpstreamStatusError):
        async with r.attempt(a) as attempt:
            raise status(503, {"Retry-After": "3"})
    assert attempt.decision is not None and attempt.decision.cooldown == 3.0
    snap = stats_of(r, "a")
    assert snap["failures"] == 1 and snap["successes"] == 0 and snap["in_flight"] == 0
    assert snap["last_error"] == "HTTP 503" and snap["cooldown_left"] == 3.0


async def test_client_error_is_passed_back_and_costs_nothing() -> None:
    r, _ = make()
    a = target("a")
    with pytest.raises(UpstreamStatusError):
        async with r.attempt(a) as attempt:
            raise status(422)
    assert attempt.decision is not None and not attempt.decision.move_on
    assert stats_of(r, "a")["failures"] == 0


async def test_mid_stream_failure_is_a_failure_not_a_success() -> None:
    r, _ = make()
    a = target("a")
    async with r.attempt(a) as attempt:
        attempt.first_byte()
        decision = attempt.failed(UpstreamError("upstream stream broke"))
    assert decision.kind == "connection" and attempt.failed(UpstreamError("again")) is decision
    snap = stats_of(r, "a")
    assert (snap["successes"], snap["failures"]) == (0, 1)


async def test_cancelled_and_foreign_exceptions_record_no_verdict() -> None:
    r, _ = make(breaker_threshold=1, breaker_half_open_max=1)
    a = target("a", max_concurrency=1)
    gate = asyncio.Event()

    async def hold() -> None:
        async with r.attempt(a):
            await gate.wait()

    task = asyncio.create_task(hold())
    await settle()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(KeyError):
        async with r.attempt(a):
            raise KeyError("a bug of ours")
    snap = stats_of(r, "a")
    assert (snap["successes"], snap["failures"], snap["in_flight"]) == (0, 0, 0)
    assert snap["limits"]["in_use"] == 0


async def test_attempt_busy_connection_raises_connection_busy() -> None:
    r, _ = make(queue_timeout=0.0)
    a = target("a", max_concurrency=1)
    async with r.attempt(a):
        with pytest.raises(ConnectionBusy) as info:
            async with r.attempt(a):
                pytest.fail("two requests on a one-slot connection")
        assert info.value.connection_id == "a" and info.value.headers["Retry-After"] == "1"
    async with r.attempt(a):
        pass
    assert stats_of(r, "a")["total_requests"] == 2


async def test_attempt_waits_in_the_queue_with_the_configured_bound() -> None:
    r, clock = make(queue_timeout=5.0, queue_size=1)
    a = target("a", max_concurrency=1)
    gate = asyncio.Event()

    async def hold() -> str:
        async with r.attempt(a):
            await gate.wait()
        return "done"

    first = asyncio.create_task(hold())
    await settle()
    second = asyncio.create_task(hold())
    await settle()
    assert stats_of(r, "a")["limits"]["queued"] == 1
    gate.set()
    assert await first == "done" and await second == "done"
    gate.clear()
    holder = asyncio.create_task(hold())
    await settle()
    waiter = asyncio.create_task(hold())
    await settle()
    clock.advance(5.1)
    with pytest.raises(ConnectionBusy):
        await waiter
    gate.set()
    await holder


async def test_limits_follow_connection_settings_changes() -> None:
    """A reload brings a new connection object with the new settings: the account is
    built again on it, and its limiter (with the slots in use) follows them."""
    r, _ = make(queue_timeout=0.0)
    a = target("a", max_concurrency=1)
    async with r.attempt(a):
        with pytest.raises(ConnectionBusy):
            async with r.attempt(a):
                pass
        reloaded = target("a", max_concurrency=2)
        async with r.attempt(reloaded):
            assert stats_of(r, "a")["limits"]["in_use"] == 2
            unlimited = target("a", rpm=0)  # not positive: no limit
            async with r.attempt(unlimited), r.attempt(unlimited):
                limits = stats_of(r, "a")["limits"]
                assert (limits["max_concurrency"], limits["in_use"]) == (None, 4)


# ------------------------------------------------------------------ breakers

async def test_breaker_per_provider_with_oauth_thresholds() -> None:
    r, clock = make(breaker_threshold=3, breaker_reset=30.0, breaker_threshold_oauth=2,
                    breaker_reset_oauth=60.0, cooldown_max=1.0)
    keyed = [target("k1", prefix="key"), target("k2", prefix="key")]
    oauth = [target("o1", prefix="sub", provider=OAuthProvider)]
    for t in keyed[:2]:  # two failures on two accounts of one provider
        r.record_failure(t, status(502))
    for _ in range(2):
        r.record_failure(oauth[0], UpstreamTimeout("slow"))
        clock.advance(2)
    states = {b["key"]: b["state"] for b in r.snapshot()["breakers"]}
    assert states == {"key": "closed", "sub": "open"}
    r.record_failure(keyed[0], status(500))
    clock.advance(2)  # cooldowns over; breakers still open
    assert r.plan(keyed + oauth).targets == ()
    with pytest.raises(CircuitOpen) as info:
        async with r.attempt(keyed[1]):
            pass
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "28"
    assert r.soonest_available(keyed + oauth) == pytest.approx(28)
    clock.advance(28)
    plan = r.plan(keyed + oauth)
    assert ids(plan.targets) == ["k1", "k2"]  # half-open
    async with r.attempt(keyed[1]):
        pass  # the trial succeeded
    assert {b["key"]: b["state"] for b in r.snapshot()["breakers"]}["key"] == "closed"


async def test_half_open_trial_that_fails_reopens_and_rate_limits_do_not_count() -> None:
    r, clock = make(breaker_threshold=2, breaker_reset=10.0, cooldown_max=1.0)
    a = target("a")
    for _ in range(5):
        r.record_failure(a, status(429, {"Retry-After": "0"}))
    assert r.snapshot()["breakers"][0]["state"] == "closed"
    r.record_failure(a, status(500))
    r.record_failure(a, status(500))
    clock.advance(10)
    with pytest.raises(UpstreamStatusError):
        async with r.attempt(a):
            with pytest.raises(CircuitOpen):  # one trial at a time
                async with r.attempt(a):
                    pass
            raise status(503)
    snap = r.snapshot()["breakers"][0]
    assert snap["state"] == "open" and snap["times_opened"] == 2


async def test_trial_without_a_verdict_frees_the_half_open_slot() -> None:
    r, clock = make(breaker_threshold=1, breaker_reset=10.0)
    a = target("a")
    r.record_failure(a, status(500))
    clock.advance(10)
    with pytest.raises(UpstreamStatusError):
        async with r.attempt(a):
            raise status(400, body=b'{"error": {"message": "prompt is too long"}}')
    async with r.attempt(a):  # the slot came back; this trial closes the breaker
        pass
    assert r.snapshot()["breakers"][0]["state"] == "closed"


# ------------------------------------------------------------------ planning

def test_plan_caps_attempts() -> None:
    r, _ = make(max_attempts=2)
    route = [target(c) for c in "abcde"]
    assert ids(r.plan(route).targets) == ["a", "b"]


def test_soonest_available() -> None:
    r, _ = make()
    a, b, c = target("a"), target("b"), target("c")
    assert r.soonest_available([a, b]) == 0.0
    r.record_failure(a, status(429, {"Retry-After": "20"}))
    r.record_failure(b, status(429, {"Retry-After": "8"}))
    r.record_failure(c, status(402))
    assert r.soonest_available([a, b, c]) == 8.0
    assert r.soonest_available([c]) is None
    assert r.soonest_available([]) is None


async def test_wait_for_available_waits_within_the_bound() -> None:
    r, clock = make(wait_for_cooldown_max=5.0)
    a = target("a")
    r.record_failure(a, status(429, {"Retry-After": "3"}))
    waiter = asyncio.create_task(r.wait_for_available([a]))
    await settle()
    clock.advance(2.9)
    await settle()
    assert not waiter.done()
    clock.advance(0.1)
    await settle()
    assert waiter.done() and waiter.exception() is None
    assert ids(r.plan([a]).targets) == ["a"]


async def test_wait_for_available_fails_fast_beyond_the_bound() -> None:
    r, _ = make(wait_for_cooldown_max=5.0)
    a, b = target("a"), target("b")
    r.record_failure(a, status(429, {"Retry-After": "30"}))
    r.record_failure(b, status(429, {"Retry-After": "12.2"}))
    with pytest.raises(RateLimited) as info:
        await r.wait_for_available([a, b])
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "13"
    assert info.value.code == "all_targets_cooling"
    r2, _ = make(wait_for_cooldown_max=0.0)
    r2.record_failure(a, status(429, {"Retry-After": "1"}))
    with pytest.raises(RateLimited):
        await r2.wait_for_available([a])


async def test_wait_for_available_when_all_are_terminal() -> None:
    r, _ = make()
    a = target("a")
    r.record_failure(a, status(402))
    with pytest.raises(ServiceUnavailable) as info:
        await r.wait_for_available([a])
    assert info.value.code == "all_targets_unavailable"


# ------------------------------------------------------------------ snapshot, settings, state

def test_snapshot_is_plain_json_with_health_counts() -> None:
    r, clock = make()
    ok, flaky = target("ok"), target("flaky", prefix="p2", rpm=10)
    down = target("down", prefix="p3")
    unseen = Connection(id="unseen", type="fake", name="never used", prefix="p4")
    r.record_success(ok, ttft=0.1)
    r.record_failure(flaky, status(500))
    clock.advance(10)
    r.record_failure(down, status(402))
    snap = r.snapshot([ok.connection, unseen])
    orjson.dumps(snap)  # plain data only
    by_id = {c["id"]: c for c in snap["connections"]}
    assert {k: v["status"] for k, v in by_id.items()} == {
        "ok": "healthy", "flaky": "degraded", "down": "down", "unseen": "healthy"}
    assert snap["health"] == {"healthy": 2, "degraded": 1, "down": 1,
                              "breakers": {"closed": 3, "open": 0, "half_open": 0}}
    assert by_id["ok"]["ttft_ms"] == 100.0 and by_id["ok"]["name"] == "name-ok"
    assert by_id["flaky"]["limits"] == {"max_concurrency": None, "rpm": 10, "in_use": 0,
                                        "queued": 0, "used_last_minute": 0}
    assert by_id["down"]["terminal_reason"] == "billing"
    assert by_id["flaky"]["last_error_at"] == pytest.approx(1_700_000_000.0)
    assert snap["sessions"]["count"] == 0


def test_snapshot_reports_cooling_until_as_wall_time() -> None:
    r, _ = make()
    a = target("a")
    r.record_failure(a, status(429, {"Retry-After": "60"}))
    row = stats_of(r, "a")
    assert row["cooling_until"] == pytest.approx(1_700_000_060.0) and row["status"] == "down"


def test_configure_applies_new_settings_and_keeps_state() -> None:
    r, _ = make(breaker_threshold=5)
    a = target("a")
    r.record_failure(a, status(500))
    r.configure(Settings(breaker_threshold=2, session_ttl=5.0, cooldown_base=9.0))
    assert r.snapshot()["breakers"][0]["threshold"] == 2
    assert r.sessions.ttl == 5.0
    r.clock.advance(100)  # type: ignore[attr-defined]
    assert r.record_failure(a, status(500)).cooldown == 18.0  # the streak survived
    assert r.snapshot()["breakers"][0]["state"] == "open"


async def test_retain_forgets_removed_connections() -> None:
    r, _ = make()
    a, b = target("a"), target("b", max_concurrency=2)
    async with r.attempt(a, session_id="sa"), r.attempt(b, session_id="sb"):
        pass
    r.retain({"a"})
    assert [c["id"] for c in r.snapshot()["connections"]] == ["a"]
    assert r.sessions.get("sb") is None and r.sessions.get("sa") == "a"


def test_settings_defaults_and_validation() -> None:
    s = Settings()
    assert (s.max_attempts, s.breaker_threshold, s.breaker_reset, s.breaker_threshold_oauth,
            s.breaker_reset_oauth, s.account_strategy) == (10, 12, 30.0, 8, 60.0, "priority")
    assert Settings.coerce("account_strategy", "Round_Robin") == "round-robin"
    assert Settings.coerce("queue_size", "0") == 0
    assert Settings.coerce("wait_for_cooldown_max", 0) == 0.0
    assert Settings.coerce("cooldown_factor", "1") == 1.0
    assert Settings.coerce("session_max", "500") == 500
    for name, bad in [("account_strategy", "fastest"), ("account_strategy", 3),
                      ("queue_size", -1), ("queue_timeout", "-0.5"), ("cooldown_factor", 0.5),
                      ("max_attempts", 0), ("breaker_half_open_max", 1.5),
                      ("round_robin_sticky", True), ("session_ttl", "soon")]:
        with pytest.raises(ValueError, match=name):
            Settings.coerce(name, bad)
    assert settings_from_env({"OMNIROUTE_ACCOUNT_STRATEGY": "p2c"}) == {"account_strategy": "p2c"}
    with pytest.raises(ConfigError):
        settings_from_env({"OMNIROUTE_ACCOUNT_STRATEGY": "nope"})


async def test_cancelled_trial_gives_its_half_open_slot_back() -> None:
    r, clock = make(breaker_threshold=1, breaker_reset=10.0)
    a = target("a")
    r.record_failure(a, status(500))
    clock.advance(10)
    gate = asyncio.Event()

    async def trial() -> None:
        async with r.attempt(a):
            await gate.wait()

    task = asyncio.create_task(trial())
    await settle()
    assert r.plan([a]).targets == ()  # the one trial slot is taken
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert ids(r.plan([a]).targets) == ["a"]


async def test_one_verdict_per_attempt() -> None:
    r, _ = make()
    async with r.attempt(target("a")) as attempt:
        attempt.succeeded()
        with pytest.raises(RuntimeError):
            attempt.failed(UpstreamError("late"))
    assert stats_of(r, "a")["successes"] == 1 and stats_of(r, "a")["failures"] == 0
