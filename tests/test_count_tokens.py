"""Anthropic ``POST /v1/messages/count_tokens`` through the gateway, with the anthropic SDK.

Asked of an ``anthropic`` upstream when the model routes to one; otherwise the
local estimate over the request decoded by the Anthropic format.
"""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest
from fakes.anthropic_upstream import FakeAnthropic, error

from omniroute.formats.base import ClientRequest
from omniroute.tokens import estimate_request

ANT_KEY = "sk-ant-upstream-test"
MESSAGES: Any = [{"role": "user", "content": "What is the weather in Paris today?"}]
TOOLS: Any = [{"name": "get_weather", "description": "Get the weather",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def sdk(gw: Any, api_key: str = "sk-client-anything") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.base_url, api_key=api_key, max_retries=0,
                                    timeout=10)


@pytest.fixture
async def ant(gw: Any, aiohttp_server: Any) -> Any:
    """The gateway with an Anthropic upstream (``claude``) next to the OpenAI one (``up``)."""
    fake = FakeAnthropic(api_key=ANT_KEY)
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "anthropic", "name": "fake-anthropic", "prefix": "claude",
                           "base_url": str(server.make_url("")), "api_key": ANT_KEY})
    gw.ant = fake
    return gw


def counts(fake: FakeAnthropic) -> list[Any]:
    return [r for r in fake.requests if r.path == "/v1/messages/count_tokens"]


def estimate(gw: Any, body: dict[str, Any]) -> int:
    fmt = gw.registry.formats["anthropic"]
    return estimate_request(fmt.decode_request(ClientRequest(body, body["model"], False)))


async def test_an_anthropic_upstream_counts(ant: Any) -> None:
    raw = await sdk(ant).messages.with_raw_response.count_tokens(
        model="claude/claude-sonnet-4-6", system="Be brief.", messages=MESSAGES, tools=TOOLS)
    counted = await raw.parse()
    assert raw.headers["X-OmniRoute-Token-Count"] == "upstream"
    assert raw.headers["X-OmniRoute-Provider"] == "claude"
    (sent,) = counts(ant.ant)
    assert sent.json == {"model": "claude-sonnet-4-6", "system": "Be brief.",
                         "messages": MESSAGES, "tools": TOOLS}
    assert sent.headers["x-api-key"] == ANT_KEY and sent.headers["anthropic-version"]
    assert "sk-client-anything" not in str(sent.headers)
    # the fake's own count (about 4 characters a token), passed on unchanged
    quarter = [len("Be brief."), len(MESSAGES[0]["content"]), len(orjson.dumps(TOOLS[0]))]
    assert counted.input_tokens == sum((n + 3) // 4 for n in quarter) + 3
    assert not [r for r in ant.ant.requests if r.path == "/v1/messages"]  # no model call


async def test_a_non_anthropic_target_gets_the_local_estimate(ant: Any) -> None:
    body = {"model": "up/gpt-4o-mini", "system": "Be brief.", "messages": MESSAGES,
            "tools": TOOLS}
    raw = await sdk(ant).messages.with_raw_response.count_tokens(**body)
    assert raw.headers["X-OmniRoute-Token-Count"] == "estimate"
    assert (await raw.parse()).input_tokens == estimate(ant, body) > 20
    assert ant.fake.requests == [] and counts(ant.ant) == []


async def test_an_upstream_that_cannot_count_falls_back_to_the_estimate(ant: Any) -> None:
    ant.ant.count_script += [error(404, "Not found"), error(529)]
    body = {"model": "claude/claude-sonnet-4-6", "messages": MESSAGES}
    for _ in range(2):
        raw = await sdk(ant).messages.with_raw_response.count_tokens(**body)
        assert raw.headers["X-OmniRoute-Token-Count"] == "estimate"
        assert (await raw.parse()).input_tokens == estimate(ant, body)
    assert len(counts(ant.ant)) == 2


async def test_a_combo_counts_with_its_first_anthropic_target(ant: Any) -> None:
    resp = await ant.client.post("/api/combos", headers=ant.admin_headers, json={
        "name": "mixed", "steps": ["up/gpt-4o-mini", "claude/claude-haiku-4-5"]})
    assert resp.status in (200, 201), await resp.text()
    raw = await sdk(ant).messages.with_raw_response.count_tokens(model="mixed",
                                                                 messages=MESSAGES)
    assert raw.headers["X-OmniRoute-Token-Count"] == "upstream"
    assert counts(ant.ant)[-1].json["model"] == "claude-haiku-4-5"


async def test_the_upstreams_400_reaches_the_client_in_anthropic_shape(ant: Any) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await sdk(ant).messages.count_tokens(
            model="claude/claude-sonnet-4-6",
            messages=[{"role": "user", "content": [{"type": "bogus"}]}])  # type: ignore[list-item]
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


async def test_errors_are_anthropic_shaped(ant: Any) -> None:
    client = sdk(ant)
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.count_tokens(model="nowhere/model", messages=MESSAGES)
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    resp = await ant.client.post("/v1/messages/count_tokens", json={"model": "up/gpt-4o-mini"})
    body = await resp.json()
    assert resp.status == 400 and body["type"] == "error"
    assert "messages" in body["error"]["message"]
    resp = await ant.client.post("/v1/messages/count_tokens", json={"messages": MESSAGES})
    assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"


async def test_the_path_without_v1(ant: Any) -> None:
    resp = await ant.client.post("/messages/count_tokens",
                                 json={"model": "up/gpt-4o-mini", "messages": MESSAGES})
    assert resp.status == 200
    assert (await resp.json())["input_tokens"] == estimate(
        ant, {"model": "up/gpt-4o-mini", "messages": MESSAGES})


async def test_keys_are_required_when_the_setting_says_so(ant: Any) -> None:
    await ant.set_settings(require_api_key=True)
    with pytest.raises(anthropic.AuthenticationError):
        await sdk(ant).messages.count_tokens(model="up/gpt-4o-mini", messages=MESSAGES)
    key = await ant.create_key("claude-code")
    counted = await sdk(ant, key).messages.count_tokens(model="up/gpt-4o-mini",
                                                        messages=MESSAGES)
    assert counted.input_tokens > 0


async def test_a_resting_anthropic_account_is_not_asked(ant: Any) -> None:
    from omniroute.errors import UpstreamStatusError

    route = ant.catalog.router.resolve("claude/claude-sonnet-4-6")
    (target,) = route.targets
    ant.resilience.record_failure(target, UpstreamStatusError(
        "Rate limited.", status=429, headers={"Retry-After": "30"}))
    raw = await sdk(ant).messages.with_raw_response.count_tokens(
        model="claude/claude-sonnet-4-6", messages=MESSAGES)
    assert raw.headers["X-OmniRoute-Token-Count"] == "estimate"
    assert counts(ant.ant) == []  # the cooling account was left alone
