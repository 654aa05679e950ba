"""The ``claude-code`` provider's requests: the Claude Code system line, pass-through with
``cache_control`` intact, a subscription's cost."""

from __future__ import annotations

import openai
import pytest
from fakes.claude_code_upstream import IDENTITY_START
from test_pricing import subscription_charges

from claude_code.support import (
    Claude,
    sent_messages,
)
from omniroute.providers.claude_code import (
    IDENTITY,
    OAUTH_BETA,
    merged_betas,
    with_identity,
)


def test_the_identity_is_prepended_only_when_missing() -> None:
    cached = {"type": "text", "text": "Project rules.", "cache_control": {"type": "ephemeral"}}
    mark = {"type": "text", "text": IDENTITY}
    assert with_identity({"m": 1}) == {"m": 1, "system": [mark]}
    assert with_identity({"system": ""}) == {"system": [mark]}
    assert with_identity({"system": "Be brief."}) == {
        "system": [mark, {"type": "text", "text": "Be brief."}]}
    assert with_identity({"system": [cached]}) == {"system": [mark, cached]}
    for present in ({"system": IDENTITY + "\nMore."},
                    {"system": [{"type": "text", "text": IDENTITY}, cached]},
                    {"system": [{"type": "text", "text": "x-anthropic-billing-header: v=1"},
                                {"type": "text", "text": IDENTITY[:-1] + ", running within "
                                 "the Claude Agent SDK."}]}):
        assert with_identity(present) is present  # untouched: the same object
    assert merged_betas(None) == OAUTH_BETA
    assert merged_betas("a, oauth-2025-04-20,b,a") == "oauth-2025-04-20,a,b"


async def test_a_claude_code_client_passes_through_with_cache_control_intact(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue()
    await claude.gw.add_provider({"type": "claude-code", "name": "max", "settings":
                                  claude.settings, "credentials": {
                                      "access_token": pair.access,
                                      "refresh_token": pair.refresh,
                                      "expires_at": pair.expires_at}})
    system = [{"type": "text", "text": IDENTITY, "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "Long project instructions. " * 40,
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Read this file.", "cache_control": {"type": "ephemeral"}}]}]
    betas = "claude-code-20250219,interleaved-thinking-2025-05-14"
    msg = await claude.sdk.messages.create(
        model="claude/claude-haiku-4-5", max_tokens=64, system=system,  # type: ignore[arg-type]
        messages=messages, extra_headers={"anthropic-beta": betas})  # type: ignore[arg-type]
    assert msg.content[0].text == "Hello! You said: Read this file."  # type: ignore[union-attr]
    up = sent_messages(claude.upstream)[-1]
    assert up.json == {"model": "claude-haiku-4-5", "max_tokens": 64, "system": system,
                       "messages": messages}  # as the client sent it
    assert up.headers["authorization"] == f"Bearer {pair.access}"
    assert "x-api-key" not in up.headers  # the client's gateway key never goes up
    assert up.headers["anthropic-beta"] == f"{OAUTH_BETA},{betas}"

    # a stream too: the upstream's events reach the client as they were
    async with claude.sdk.messages.stream(
            model="claude/claude-haiku-4-5", max_tokens=64, system=system,  # type: ignore[arg-type]
            messages=messages) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "Hello! You said: Read this file."
    assert sent_messages(claude.upstream)[-1].json["system"] == system


async def test_other_clients_get_the_identity_line_added(claude: Claude) -> None:
    pair = claude.oauth.issue()
    await claude.gw.add_provider({"type": "claude-code", "settings": claude.settings,
                                  "credentials": {"access_token": pair.access}})
    msg = await claude.sdk.messages.create(
        model="claude/claude-haiku-4-5", max_tokens=32, system="Be brief.",
        messages=[{"role": "user", "content": "hello"}])
    assert msg.content[0].text == "Hello! You said: hello"  # type: ignore[union-attr]
    assert sent_messages(claude.upstream)[-1].json["system"] == [
        {"type": "text", "text": IDENTITY}, {"type": "text", "text": "Be brief."}]
    async with openai.AsyncOpenAI(base_url=claude.gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        reply = await oai.chat.completions.create(model="claude/claude-haiku-4-5", messages=[
            {"role": "user", "content": "from openai"}])
    assert reply.choices[0].message.content == "Hello! You said: from openai"
    system = sent_messages(claude.upstream)[-1].json["system"]
    assert system[0] == {"type": "text", "text": IDENTITY}
    counted = await claude.sdk.messages.count_tokens(
        model="claude/claude-haiku-4-5", messages=[{"role": "user", "content": "count me"}])
    assert counted.input_tokens > 0
    count_call = [r for r in claude.upstream.requests if r.path.endswith("count_tokens")][-1]
    assert count_call.json["system"][0]["text"].startswith(IDENTITY_START)


async def test_a_subscription_request_costs_nothing_and_records_its_list_price(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue()
    view = await claude.gw.add_provider({"type": "claude-code", "settings": claude.settings,
                                         "credentials": {"access_token": pair.access}})
    raw = await claude.sdk.messages.with_raw_response.create(
        model="claude/claude-haiku-4-5", max_tokens=32, system=IDENTITY,
        messages=[{"role": "user", "content": "price me"}])
    assert float(raw.headers["X-OmniRoute-Response-Cost"]) == 0.0
    row, usage = await subscription_charges(claude.gw, view["id"])
    assert row["cost_usd"] == 0.0 and row["list_cost_usd"] > 0
    assert usage["saved_usd"] == pytest.approx(row["list_cost_usd"])
