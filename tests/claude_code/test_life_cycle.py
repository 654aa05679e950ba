"""A Claude subscription's life cycle: renewal with Claude's refresh body, a revoked account,
one renewal for many requests on a lapsed token."""

from __future__ import annotations

import asyncio
import logging

import pytest

from claude_code.support import (
    Claude,
    sent_messages,
)
from omniroute.providers.claude_code import (
    CLAUDE,
    IDENTITY,
)


async def test_an_expired_subscription_token_is_renewed_with_claudes_refresh_body(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue(lifetime=-60)
    view = await claude.gw.add_provider({
        "type": "claude-code", "settings": claude.settings, "credentials": {
            "access_token": pair.access, "refresh_token": pair.refresh,
            "expires_at": pair.expires_at}})
    assert await claude.ask("renew me") == "Hello! You said: renew me"
    refresh = next(r for r in claude.oauth.requests if r.json and
                   r.json.get("grant_type") == "refresh_token")
    assert refresh.json == {"grant_type": "refresh_token", "refresh_token": pair.refresh,
                            "client_id": CLAUDE.client_id}
    stored = await claude.gw.store.get_connection(view["id"])
    assert stored is not None and stored.credentials["access_token"] != pair.access
    assert claude.oauth.refresh_calls == 1


async def test_a_revoked_claude_account_needs_sign_in_and_the_next_one_serves(
    claude: Claude, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = claude.oauth.issue(lifetime=-1)
    claude.oauth.revoke(dead.refresh)
    live = claude.oauth.issue()
    for name, pair, priority in (("dead", dead, 0), ("live", live, 1)):
        await claude.gw.add_provider({
            "type": "claude-code", "name": name, "priority": priority,
            "settings": claude.settings, "credentials": {
                "access_token": pair.access, "refresh_token": pair.refresh,
                "expires_at": pair.expires_at}})
    with caplog.at_level(logging.INFO):
        raw = await claude.sdk.messages.with_raw_response.create(
            model="claude/claude-haiku-4-5", max_tokens=16, system=IDENTITY,
            messages=[{"role": "user", "content": "who serves"}])
    assert raw.headers["X-OmniRoute-Provider"] == "claude"
    assert [r.headers["authorization"] for r in sent_messages(claude.upstream)] == [
        f"Bearer {live.access}"]
    listed = await asyncio.to_thread(claude.cli, "providers", "list")
    dead_line = next(line for line in listed.output.splitlines() if " dead " in line)
    assert "NEEDS SIGN-IN" in dead_line and "invalid_grant" in dead_line
    assert "NEEDS SIGN-IN" not in next(line for line in listed.output.splitlines()
                                       if " live " in line)
    limits = await (await claude.gw.client.get("/api/rate-limits",
                                               headers=claude.gw.admin_headers)).json()
    assert {r["name"]: r["terminal_reason"] for r in limits["connections"]} == {
        "dead": "needs_sign_in", "live": None}
    for secret in (dead.access, dead.refresh, live.access, live.refresh):
        assert str(secret) not in caplog.text and str(secret) not in listed.output
    # signing in again under its name brings it back
    started = await (await claude.gw.client.post(
        "/api/oauth/claude/start", headers=claude.gw.admin_headers,
        json={"name": "dead", "settings": claude.settings})).json()
    pasted = await claude.user_signs_in(started["url"])
    resp = await claude.gw.client.post("/api/oauth/claude/complete",
                                       headers=claude.gw.admin_headers, json={"code": pasted})
    assert resp.status == 200 and (await resp.json())["connection"]["oauth"]["status"] == (
        "active")
    limits = await (await claude.gw.client.get("/api/rate-limits",
                                               headers=claude.gw.admin_headers)).json()
    assert {r["name"]: r["terminal_reason"] for r in limits["connections"]}["dead"] is None
    await claude.ask("back")
    assert sent_messages(claude.upstream)[-1].headers["authorization"] != f"Bearer {live.access}"


async def test_twenty_claude_code_requests_on_a_lapsed_token_make_one_renewal(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue(lifetime=-1)
    await claude.gw.add_provider({"type": "claude-code", "settings": claude.settings,
                                  "credentials": {"access_token": pair.access,
                                                  "refresh_token": pair.refresh,
                                                  "expires_at": pair.expires_at}})
    claude.oauth.refresh_gate = asyncio.Event()
    asked = [asyncio.create_task(claude.ask(f"q{i}")) for i in range(20)]
    for _ in range(300):
        if claude.oauth.refresh_calls:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    claude.oauth.refresh_gate.set()
    assert await asyncio.gather(*asked) == [f"Hello! You said: q{i}" for i in range(20)]
    assert claude.oauth.refresh_calls == 1
    tokens = {r.headers["authorization"] for r in sent_messages(claude.upstream)}
    assert len(tokens) == 1 and f"Bearer {pair.access}" not in tokens
