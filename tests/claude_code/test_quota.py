"""A Claude subscription's quota: the unified headers become windows, a rejection rests the
account, the next one serves."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import anthropic
import pytest
from fakes.anthropic_upstream import error
from fakes.claude_code_upstream import usage_limit
from test_cli import Cli, ok

from claude_code.support import (
    Claude,
    sent_messages,
)
from omniroute.providers.claude_code import (
    IDENTITY,
    claude_usage,
)


def test_the_unified_headers_become_windows_and_a_verdict() -> None:
    usage = claude_usage({
        "Anthropic-Ratelimit-Unified-Status": "allowed_warning",
        "anthropic-ratelimit-unified-reset": "1785518400",
        "anthropic-ratelimit-unified-representative-claim": "seven_day",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": "0.21",
        "anthropic-ratelimit-unified-5h-reset": "1785000000",
        "anthropic-ratelimit-unified-7d_sonnet-utilization": "1.01",  # can pass 1
        "anthropic-ratelimit-unified-5h-surpassed-threshold": "0.75",  # not a window field
        "anthropic-ratelimit-unified-fallback-percentage": "0.5",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
        "anthropic-ratelimit-requests-remaining": "10",  # the API-key family: not ours
    })
    assert usage is not None
    windows = {w.name: w for w in usage.windows}
    assert set(windows) == {"5h", "7d_sonnet", "overage"}
    assert windows["5h"].used_percent == 21.0 and windows["5h"].window_minutes == 300
    assert windows["5h"].resets_at == 1785000000.0 and windows["5h"].status == "allowed"
    assert windows["7d_sonnet"].used_percent == 101.0
    assert windows["7d_sonnet"].window_minutes == 10080
    assert (usage.status, usage.binding, usage.resets_at) == (
        "allowed_warning", "7d", 1785518400.0)
    assert usage.notes == {"fallback-percentage": "0.5",
                           "overage-disabled-reason": "org_level_disabled"}
    assert not usage.spent(200)  # the service said: allowed
    assert usage.spent(429)  # a 429 with these headers is the subscription's limit
    assert claude_usage({"retry-after": "3"}) is None  # without them: a mere rate limit


def test_a_refusal_is_read_from_the_status_or_the_rejected_window() -> None:
    said = claude_usage({"anthropic-ratelimit-unified-status": "rejected",
                         "anthropic-ratelimit-unified-representative-claim": "five_hour",
                         "anthropic-ratelimit-unified-5h-reset": "2026-01-01T05:00:00Z"})
    assert said is not None and said.spent(200) and said.binding == "5h"
    assert said.reset() == 1767243600.0  # the binding window's (no overall reset said)
    assert said.reason() == "the 5-hour limit was reached"
    # no overall status: a 429 is the quota; the latest reset of its rejected windows
    bare = claude_usage({"anthropic-ratelimit-unified-5h-status": "rejected",
                         "anthropic-ratelimit-unified-5h-reset": "100",
                         "anthropic-ratelimit-unified-7d-status": "rejected",
                         "anthropic-ratelimit-unified-7d-reset": "900"})
    assert bare is not None and bare.spent(429) and not bare.spent(200)
    assert bare.reset() == 900.0 and bare.reason() == "the 5-hour limit was reached"


async def test_the_subscriptions_quota_is_read_and_a_rejection_rests_the_account(
    claude: Claude,
) -> None:
    first, second = claude.oauth.issue(), claude.oauth.issue()
    views = [await claude.gw.add_provider({
        "type": "claude-code", "name": name, "priority": priority,
        "settings": claude.settings, "credentials": {"access_token": pair.access}})
        for name, pair, priority in (("first", first, 0), ("second", second, 1))]
    gw = claude.gw

    def by_whom() -> list[str]:
        who = {f"Bearer {first.access}": "first", f"Bearer {second.access}": "second"}
        return [who[r.headers["authorization"]] for r in sent_messages(claude.upstream)]

    async def quota_of(conn_id: str) -> dict[str, Any]:
        limits = await (await gw.client.get("/api/rate-limits",
                                            headers=gw.admin_headers)).json()
        row = next(r for r in limits["connections"] if r["id"] == conn_id)
        return {**row["quota"], "cooldown_left": row["cooldown_left"]}

    assert await claude.ask("one") == "Hello! You said: one"
    quota = await quota_of(views[0]["id"])
    windows = {w["name"]: w for w in quota["windows"]}
    assert windows["5h"]["used_percent"] == 21.0 and windows["7d"]["used_percent"] == 5.0
    assert windows["5h"]["resets_at"] == pytest.approx(time.time() + 3 * 3600, abs=5)
    assert (quota["status"], quota["binding"], quota["exhausted"]) == ("allowed", "5h", False)
    assert quota["notes"]["overage-disabled-reason"] == "org_level_disabled"

    # the 5-hour window is spent until 3 s from now (its retry-after says only 1 s)
    claude.upstream.script.append(usage_limit("5h", resets_in=3))
    assert await claude.ask("two") == "Hello! You said: two"
    assert by_whom() == ["first", "first", "second"]  # the next target, no retry
    quota = await quota_of(views[0]["id"])
    assert quota["exhausted"] is True and quota["status"] == "rejected"
    assert quota["reason"] == "the 5-hour limit was reached"
    assert quota["resets_at"] == pytest.approx(time.time() + 3, abs=1.5)
    assert quota["cooldown_left"] > 1.5  # the rest is the window's, not retry-after's
    live = ok(await Cli(claude.data_dir).in_thread(
        "rate-limits", "--url", gw.base_url, "--admin-key", gw.admin_key)).output
    assert re.search(r"quota: 5h 100% used rejected resets in \d s \(binding\); 7d 30% "
                     r"used resets in 4\.0 days; overage rejected; RESTING \d s \(the "
                     r"5-hour limit was reached\)", live), live

    # not asked again before the reset: not after an operator's reset of the cooldowns,
    # nor after an edit of the connection rebuilt its provider
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    assert await claude.ask("three") == "Hello! You said: three"
    old = gw.catalog.providers[views[0]["id"]]
    resp = await gw.client.put(f"/api/providers/{views[0]['id']}", json={"rpm": 1000},
                               headers=gw.admin_headers)
    assert resp.status == 200 and gw.catalog.providers[views[0]["id"]] is not old
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    assert await claude.ask("four") == "Hello! You said: four"
    assert by_whom() == ["first", "first", "second", "second", "second"]
    # (the refusals' cooldowns end with the rest, their Retry-After rounded up a second)
    await asyncio.sleep(max(0.0, quota["resets_at"] - time.time()) + 1.2)
    assert await claude.ask("five") == "Hello! You said: five"  # the reset passed
    assert by_whom()[-1] == "first"
    assert (await quota_of(views[0]["id"]))["exhausted"] is False


async def test_a_streamed_request_moves_on_when_the_week_is_spent(claude: Claude) -> None:
    first, second = claude.oauth.issue(), claude.oauth.issue()
    ids = [(await claude.gw.add_provider({
        "type": "claude-code", "name": name, "priority": priority,
        "settings": claude.settings, "credentials": {"access_token": pair.access}}))["id"]
        for name, pair, priority in (("first", first, 0), ("second", second, 1))]
    claude.upstream.script.append(usage_limit("7d", resets_in=600))
    async with claude.sdk.messages.stream(
            model="claude/claude-haiku-4-5", max_tokens=64, system=IDENTITY,
            messages=[{"role": "user", "content": "streamed"}]) as stream:
        text = await stream.get_final_text()
    assert text == "Hello! You said: streamed"
    assert [r.headers["authorization"] for r in sent_messages(claude.upstream)] == [
        f"Bearer {first.access}", f"Bearer {second.access}"]
    quota = claude.gw.catalog.providers[ids[0]].quota_view()
    assert quota is not None and quota["exhausted"] and quota["binding"] == "7d"
    assert quota["reason"] == "the weekly limit was reached"
    assert quota["resets_at"] == pytest.approx(time.time() + 600, abs=5)
    rows = {r["id"]: r for r in claude.gw.resilience.snapshot(
        claude.gw.catalog.connections.values())["connections"]}
    assert 590 <= rows[ids[0]]["cooldown_left"] <= 601


async def test_a_429_without_a_reset_rests_its_retry_after_and_without_headers_is_a_throttle(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue()
    view = await claude.gw.add_provider({"type": "claude-code", "settings": claude.settings,
                                         "credentials": {"access_token": pair.access}})
    provider = claude.gw.catalog.providers[view["id"]]
    claude.upstream.send_usage = False
    claude.upstream.script.append(error(429, "Rate limited", "rate_limit_error",
                                        headers={"retry-after": "7"}))  # no unified headers
    with pytest.raises(anthropic.RateLimitError):
        await claude.ask("throttled")
    assert provider.quota.resting() is None  # a rate limit: the cooldown is enough
    await claude.gw.client.post("/api/resilience/reset", headers=claude.gw.admin_headers)
    claude.upstream.script.append(error(429, "Usage limit", "rate_limit_error", headers={
        "retry-after": "120", "anthropic-ratelimit-unified-5h-utilization": "1.0"}))
    with pytest.raises(anthropic.RateLimitError) as caught:
        await claude.ask("spent")
    assert provider.quota.resting() == pytest.approx(120, abs=3)
    assert int(caught.value.response.headers["retry-after"]) == pytest.approx(120, abs=3)
