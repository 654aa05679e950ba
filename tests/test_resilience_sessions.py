"""Sticky sessions: ids, fingerprints, TTL and LRU bounds, and stickiness in plans."""

from __future__ import annotations

import random
from typing import Any

from omniroute.config import Settings
from omniroute.errors import UpstreamStatusError
from omniroute.providers.base import Provider
from omniroute.resilience import ManualClock, Resilience, SessionStore, fingerprint, session_id
from omniroute.routing import Target
from omniroute.storage.store import Connection


class FakeProvider(Provider):
    type = "fake"


def target(cid: str, prefix: str = "up") -> Target:
    conn = Connection(id=cid, type="fake", name=cid, prefix=prefix)
    return Target(conn, FakeProvider(conn, None), "m")  # type: ignore[arg-type]


def ids(targets: Any) -> list[str]:
    return [t.connection.id for t in targets]


# ------------------------------------------------------------------ ids

def test_fingerprint_is_stable_and_tells_conversations_apart() -> None:
    base = fingerprint("gpt-4o", "You are terse.", "Hello")
    assert base == fingerprint("gpt-4o", "You are terse.", "Hello")
    assert base is not None and base.startswith("fp:") and len(base) == 35
    assert base != fingerprint("gpt-4o-mini", "You are terse.", "Hello")
    assert base != fingerprint("gpt-4o", "You are verbose.", "Hello")
    assert base != fingerprint("gpt-4o", "You are terse.", "Hello!")
    assert base != fingerprint("gpt-4o", None, "Hello")
    # no ambiguity where one part ends and the next begins
    assert fingerprint("m", "ab", "c") != fingerprint("m", "a", "bc")
    assert fingerprint("gpt-4o", "system only", None) is None
    assert fingerprint("gpt-4o", "system only", "") is None


def test_session_id_sources_in_order() -> None:
    fp = fingerprint("m", "s", "u")
    assert session_id({"X-Session-Id": " abc "}, {"x_session_id": "body"}, model="m",
                      system="s", first_user="u") == "abc"
    assert session_id({"x-session-id": "lower"}) == "lower"
    assert session_id({"X-OmniRoute-Session": "omni"}) == "omni"
    assert session_id({"X-Session-Id": "first", "x-omniroute-session": "second"}) == "first"
    assert session_id({"X-Session-Id": "  "}, {"x_session_id": "body"}) == "body"
    assert session_id({}, {"x_session_id": 42}) == "42"
    assert session_id({}, {"x_session_id": True}, model="m", system="s", first_user="u") == fp
    assert session_id({"Other": "x"}, {}, model="m", system="s", first_user="u") == fp
    assert session_id(None, None) is None
    long = session_id({"X-Session-Id": "x" * 1000})
    assert long is not None and long.startswith("h:") and len(long) < 40
    assert long == session_id({"X-Session-Id": "x" * 1000})


# ------------------------------------------------------------------ store

def test_ttl_slides_with_use_and_expires() -> None:
    clock = ManualClock()
    store = SessionStore(ttl=100.0, max_size=10, clock=clock)
    store.bind("s1", "conn_a")
    clock.advance(99)
    assert store.get("s1") == "conn_a"  # a use renews the TTL
    clock.advance(99)
    assert store.get("s1") == "conn_a"
    clock.advance(100)
    assert store.get("s1") is None
    assert len(store) == 0


def test_lru_bound_evicts_the_least_recently_used() -> None:
    clock = ManualClock()
    store = SessionStore(ttl=100.0, max_size=2, clock=clock)
    store.bind("a", "c1")
    store.bind("b", "c2")
    assert store.get("a") == "c1"  # now b is the least recently used
    store.bind("c", "c3")
    assert store.get("b") is None
    assert (store.get("a"), store.get("c")) == ("c1", "c3")
    assert len(store) == 2
    store.configure(ttl=100.0, max_size=1)
    assert len(store) == 1 and store.get("c") == "c3"


def test_expired_entries_are_dropped_on_bind() -> None:
    clock = ManualClock()
    store = SessionStore(ttl=10.0, max_size=100, clock=clock)
    for i in range(50):
        store.bind(f"s{i}", "c")
    clock.advance(11)
    store.bind("new", "c")
    assert len(store._items) == 1


def test_forget_and_snapshot() -> None:
    clock = ManualClock()
    store = SessionStore(ttl=10.0, max_size=100, clock=clock)
    store.bind("a", "c1")
    store.bind("b", "c2")
    store.bind("c", "c1")
    snap = store.snapshot(limit=2)
    assert snap["count"] == 3 and [i["session"] for i in snap["items"]] == ["c", "b"]
    assert snap["items"][0] == {"session": "c", "connection_id": "c1", "expires_in": 10.0}
    store.forget(connection_id="c1")
    assert store.get("a") is None and store.get("b") == "c2"
    store.forget(session="b")
    assert len(store) == 0


# ------------------------------------------------------------------ in plans

def make(**settings: Any) -> Resilience:
    return Resilience(Settings(**settings), clock=ManualClock(), rng=random.Random(1))


async def test_sticky_connection_goes_first_while_healthy() -> None:
    r = make()
    a, b, c = target("a"), target("b"), target("c")
    route = [a, b, c]
    assert r.plan(route, session_id="s1").sticky is None
    async with r.attempt(b, session_id="s1"):
        pass
    plan = r.plan(route, session_id="s1")
    assert ids(plan.targets) == ["b", "a", "c"] and plan.sticky is b
    assert ids(r.plan(route, session_id="other").targets) == ["a", "b", "c"]
    # sticky beats the strategy's own first choice
    assert ids(r.plan(route, strategy="round-robin", session_id="s1").targets)[0] == "b"
    # cooling: not preferred (and skipped) until it recovers
    r.record_failure(b, UpstreamStatusError("slow down", status=429, headers={"Retry-After": "5"}))
    plan = r.plan(route, session_id="s1")
    assert ids(plan.targets) == ["a", "c"] and plan.sticky is None
    r.clock.advance(5)  # type: ignore[attr-defined]
    assert ids(r.plan(route, session_id="s1").targets) == ["b", "a", "c"]


async def test_session_moves_to_the_connection_that_served_it() -> None:
    r = make()
    a, b = target("a"), target("b")
    async with r.attempt(a, session_id="s"):
        pass
    async with r.attempt(b, session_id="s"):
        pass
    assert ids(r.plan([a, b], session_id="s").targets) == ["b", "a"]


async def test_sticky_is_not_preferred_behind_an_open_breaker() -> None:
    r = make(breaker_threshold=1, breaker_reset=30.0, cooldown_base=1.0)
    a, b = target("a", prefix="p1"), target("b", prefix="p2")
    async with r.attempt(b, session_id="s"):
        pass
    r.record_failure(b, UpstreamStatusError("down", status=502))
    r.clock.advance(2)  # type: ignore[attr-defined]  # the 1 s cooldown is over, the breaker not
    plan = r.plan([a, b], session_id="s")
    assert ids(plan.targets) == ["a"] and plan.sticky is None
    assert [(t.connection.id, why) for t, why in plan.skipped] == [("b", "breaker_open")]
    r.clock.advance(28)  # type: ignore[attr-defined]  # half-open: a trial may go
    assert ids(r.plan([a, b], session_id="s").targets) == ["b", "a"]


async def test_failed_attempt_does_not_bind_the_session() -> None:
    r = make()
    b = target("b")
    try:
        async with r.attempt(b, session_id="s"):
            raise UpstreamStatusError("bad", status=500)
    except UpstreamStatusError:
        pass
    assert r.sessions.get("s") is None
