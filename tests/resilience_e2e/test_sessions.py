"""Sticky sessions end to end: one conversation stays on one connection."""

from __future__ import annotations

from fakes.openai_upstream import (
    error,
)

from resilience_e2e.support import (
    MODEL,
    api,
    call,
    chats,
    combo,
    manual_clock,
    three,
)


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
