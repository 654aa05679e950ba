"""Provider type ``anthropic`` against FakeAnthropic, and the fake against the official SDK."""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import aclosing
from typing import Any

import aiohttp
import anthropic
import pytest
from aiohttp import web
from fakes.anthropic_upstream import (
    FakeAnthropic,
    drop_mid_stream,
    error,
    garbage,
    hang_before_headers,
    hang_mid_stream,
    mid_stream_error,
    reply,
    slow,
)

from omniroute.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from omniroute.plugins import load_plugins
from omniroute.providers.anthropic import AnthropicProvider
from omniroute.providers.base import ProviderContext, Timeouts, UpstreamCall, UpstreamResponse
from omniroute.sse import event_data, event_name
from omniroute.storage.store import Connection

KEY = "sk-ant-upstream-test"
MODEL = "claude-sonnet-4-6"
HI = [{"role": "user", "content": "hi there"}]
WEATHER = [{"role": "user", "content": "What's the weather in Paris?"}]
WEATHER_TOOL = {"name": "get_weather", "description": "Get the weather", "input_schema": {
    "type": "object", "properties": {"location": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["location"]}}


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeAnthropic:
    fake = FakeAnthropic(api_key=KEY, models=[MODEL, "claude-haiku-4-5", "claude-opus-4-6"])
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake


def provider(
    http: aiohttp.ClientSession, base_url: str, *, credentials: dict[str, Any] | None = None,
    first_byte: float = 2.0, idle: float = 2.0, **settings: Any,
) -> AnthropicProvider:
    creds = {"api_key": KEY} if credentials is None else credentials
    settings, creds = AnthropicProvider.configure({"base_url": base_url, **settings}, creds, None)
    conn = Connection("conn_a", "anthropic", "fake-anthropic", "ant", settings, creds)
    timeouts = Timeouts(connect=2, first_byte=first_byte, idle=idle, total=20)
    return AnthropicProvider(conn, ProviderContext(http, timeouts, "omniroute-test"))


def call(
    messages: list[dict[str, Any]] = HI, *, stream: bool = False, **extra: Any
) -> UpstreamCall:
    body = {"model": "ignored", "max_tokens": 1024, "messages": messages, **extra}
    return UpstreamCall(body, MODEL, stream)


def frames_of(up: UpstreamResponse) -> Any:
    """The answer's stream (it must be one)."""
    assert up.events is not None, "expected a stream"
    return up.events


async def frames(up: Any) -> list[bytes]:
    async with aclosing(frames_of(up)) as events:
        return [e async for e in events]


def decoded(events: list[bytes]) -> list[tuple[str | None, Any]]:
    return [(event_name(e), json.loads(event_data(e) or b"null")) for e in events]


# ----------------------------------------------------------------------------- the fake vs the SDK

async def test_fake_speaks_the_anthropic_sdk(fake: FakeAnthropic) -> None:
    client = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key=KEY, max_retries=0)
    msg = await client.messages.create(model=MODEL, max_tokens=100, messages=HI)  # type: ignore[arg-type]
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert msg.content[0].type == "text" and msg.content[0].text == "Hello! You said: hi there"
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens > 0
    assert msg.usage.cache_read_input_tokens == 0 and msg.usage.cache_creation_input_tokens == 0
    assert fake.requests[-1].headers["anthropic-version"]  # the SDK's own

    fake.script.append(reply(thinking="First, the city.", redacted_thinking=True,
                             usage={"cache_read_input_tokens": 900}))
    async with client.messages.stream(
        model=MODEL, max_tokens=4096, messages=WEATHER, tools=[WEATHER_TOOL],  # type: ignore[arg-type, list-item]
        thinking={"type": "enabled", "budget_tokens": 2048},
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert [b.type for b in final.content] == ["thinking", "redacted_thinking", "tool_use"]
    thinking, _, tool = final.content
    assert thinking.thinking == "First, the city." and thinking.signature  # type: ignore[union-attr]
    assert tool.id.startswith("toolu_") and tool.name == "get_weather"  # type: ignore[union-attr]
    assert tool.input == {"location": "Paris", "unit": "c"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use" and final.usage.cache_read_input_tokens == 900

    # the signed thinking block and the tool result go back in the next turn
    turn2 = [*WEATHER, {"role": "assistant", "content": [b.model_dump() for b in final.content]},
             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool.id,  # type: ignore[union-attr]
                                           "content": "18C"}]}]
    again = await client.messages.create(model=MODEL, max_tokens=100, messages=turn2,  # type: ignore[arg-type]
                                         tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert again.content[0].type == "text"

    fake.script.append(error(429, "Number of requests has exceeded your rate limit"))
    with pytest.raises(anthropic.RateLimitError) as info:
        await client.messages.create(model=MODEL, max_tokens=10, messages=HI)  # type: ignore[arg-type]
    assert info.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert info.value.response.headers["retry-after"] == "1" and info.value.request_id
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.create(model="claude-9", max_tokens=10, messages=HI)  # type: ignore[arg-type]

    fake.script.append(mid_stream_error(4, "Overloaded"))
    with pytest.raises(anthropic.APIStatusError) as err:
        async with client.messages.stream(model=MODEL, max_tokens=10, messages=HI) as stream:  # type: ignore[arg-type]
            async for _ in stream:
                pass
    assert err.value.body == {"type": "error", "error": {"type": "overloaded_error",
                                                          "message": "Overloaded"}}

    assert [m.id async for m in client.models.list()] == [MODEL, "claude-haiku-4-5",
                                                          "claude-opus-4-6"]
    bad = anthropic.AsyncAnthropic(base_url=fake.base_url, api_key="sk-ant-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await bad.messages.create(model=MODEL, max_tokens=10, messages=HI)  # type: ignore[arg-type]
    await client.close()
    await bad.close()


@pytest.mark.parametrize(("body", "message"), [
    ({"model": MODEL, "messages": HI}, "max_tokens: Field required"),
    ({"model": MODEL, "max_tokens": 5}, "messages: Field required"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}, *HI]},
     'Unexpected role "system"'),
    ({"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hm"}]}, *HI]},
     "messages.1.content.0.thinking.signature: Field required"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": "{}"}]}]},
     "messages.1.content.0.tool_use.input: Input should be a valid dictionary"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]}, *HI]},
     "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_9", "content": "x"}]}]},
     "unexpected `tool_use_id` found in `tool_result` blocks: toolu_9"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "input_text", "text": "x"}]}]}, "Input tag 'input_text' found"),
    ({"model": MODEL, "max_tokens": 2000, "messages": HI,
      "thinking": {"type": "enabled", "budget_tokens": 2000}}, "must be greater than"),
])
async def test_fake_refuses_what_the_real_api_refuses(
    fake: FakeAnthropic, http: aiohttp.ClientSession, body: dict[str, Any], message: str
) -> None:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with http.post(f"{fake.base_url}/v1/messages", json=body, headers=headers) as resp:
        data = await resp.json()
    assert resp.status == 400 and data["type"] == "error"
    assert data["error"]["type"] == "invalid_request_error" and message in data["error"]["message"]


# ----------------------------------------------------------------------------- JSON and streams

async def test_json_reply(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    up = await provider(http, fake.base_url).chat(call())
    assert up.status == 200 and up.events is None and up.body is not None
    doc = json.loads(up.body)
    assert doc["content"] == [{"type": "text", "text": "Hello! You said: hi there"}]
    rec = fake.requests[-1]
    assert (rec.method, rec.path) == ("POST", "/v1/messages")
    assert rec.headers["x-api-key"] == KEY and rec.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in rec.headers and rec.headers["accept"] == "application/json"
    assert rec.json["model"] == MODEL and "stream" not in rec.json


async def test_stream_reply_passes_every_event(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script.append(reply(text="The quick brown fox", chunks=4, thinking="Hmm."))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    assert up.events is not None and up.body is None
    events = decoded(await frames(up))
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)  # the name repeats the type
    deltas = [d["delta"] for n, d in events if n == "content_block_delta"]
    assert [d["type"] for d in deltas] == (["thinking_delta"] * 4 + ["signature_delta"]
                                            + ["text_delta"] * 4)
    assert "".join(d.get("text", "") for d in deltas) == "The quick brown fox"
    start, end = events[0][1]["message"], events[-2][1]
    assert start["id"].startswith("msg_") and start["usage"]["input_tokens"] > 0
    assert end["usage"]["output_tokens"] > 1 and end["delta"]["stop_reason"] == "end_turn"
    assert fake.requests[-1].json["stream"] is True
    assert fake.requests[-1].headers["accept"] == "text/event-stream"


async def test_tool_call_stream(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    up = await provider(http, fake.base_url).chat(call(WEATHER, stream=True, tools=[WEATHER_TOOL]))
    events = decoded(await frames(up))
    start = next(d for n, d in events if n == "content_block_start")
    assert start["content_block"]["type"] == "tool_use" and start["content_block"]["input"] == {}
    pieces = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert len(pieces) >= 3 and json.loads("".join(pieces)) == {"location": "Paris", "unit": "c"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_client_headers_and_auth_token(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    p = provider(http, fake.base_url, credentials={"auth_token": KEY})
    c = call()
    c.client_headers = {"Anthropic-Version": "2024-01-01", "anthropic-beta": "beta-1,beta-2",
                        "x-other": "not passed"}
    await p.chat(c)
    rec = fake.requests[-1]
    assert rec.headers["authorization"] == f"Bearer {KEY}" and "x-api-key" not in rec.headers
    assert rec.headers["anthropic-version"] == "2024-01-01"
    assert rec.headers["anthropic-beta"] == "beta-1,beta-2" and "x-other" not in rec.headers


# ----------------------------------------------------------------------------- errors

async def test_rate_limit_error_keeps_the_hints(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script.append(error(
        429, "Number of request tokens has exceeded your per-minute rate limit",
        headers={"anthropic-ratelimit-tokens-remaining": "0"}))
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call(stream=True))
    err = info.value
    assert err.status == 429 and err.type == "rate_limit_error" and err.retriable
    assert err.message == "Number of request tokens has exceeded your per-minute rate limit"
    assert err.headers == {"Retry-After": "1"}
    assert err.upstream_headers["retry-after"] == "1"
    assert err.upstream_headers["anthropic-ratelimit-tokens-remaining"] == "0"
    assert err.upstream_headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert "request-id" not in err.upstream_headers


@pytest.mark.parametrize(("behaviour", "status", "type_"), [
    (error(529, "Overloaded"), 529, "overloaded_error"),
    (error(500, "Internal server error"), 500, "api_error"),
    (error(400, "messages.0.content: bad"), 400, "invalid_request_error"),
])
async def test_status_errors(fake: FakeAnthropic, http: aiohttp.ClientSession, behaviour: Any,
                             status: int, type_: str) -> None:
    fake.script.append(behaviour)
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call())
    assert (info.value.status, info.value.type) == (status, type_)
    assert info.value.message == behaviour.error["message"] and info.value.headers == {}


async def test_translation_bug_shows_as_400(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(UpstreamCall({"messages": HI}, MODEL, False))
    assert info.value.status == 400 and info.value.message == "max_tokens: Field required"


async def test_wrong_key_is_the_gateways_problem(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        secret = {"api_key": "sk-ant-api03-secretsecret"}
        await provider(http, fake.base_url, credentials=secret).chat(call())
    assert info.value.status == 401 and info.value.code == "upstream_auth_failed"
    assert "invalid x-api-key" in info.value.message and "secretsecret" not in info.value.message


async def test_error_as_first_event_is_a_status_error(fake: FakeAnthropic,
                                                      http: aiohttp.ClientSession) -> None:
    fake.script.append(mid_stream_error(0, "Overloaded"))
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call(stream=True))
    assert info.value.status == 529 and info.value.type == "overloaded_error"
    assert "Overloaded" in info.value.message and info.value.retriable


async def test_error_later_in_the_stream_is_relayed(fake: FakeAnthropic,
                                                    http: aiohttp.ClientSession) -> None:
    fake.script.append(mid_stream_error(3, "Overloaded"))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    events = decoded(await frames(up))
    assert [n for n, _ in events] == ["message_start", "ping", "content_block_start", "error"]
    assert events[-1][1]["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_garbage_is_a_bad_gateway(fake: FakeAnthropic, http: aiohttp.ClientSession,
                                        stream: bool) -> None:
    fake.script.append(garbage())
    with pytest.raises(UpstreamError) as info:
        await provider(http, fake.base_url).chat(call(stream=stream))
    assert info.value.status == 502
    assert ("malformed" if stream else "not JSON") in info.value.message


# ----------------------------------------------------------------------------- time bounds

@pytest.mark.parametrize("behaviour", [hang_before_headers(10), hang_mid_stream(0, 10)],
                         ids=["before_headers", "after_headers"])
async def test_first_event_timeout(fake: FakeAnthropic, http: aiohttp.ClientSession,
                                   behaviour: Any) -> None:
    fake.script.append(behaviour)
    with pytest.raises(UpstreamTimeout) as info:
        await provider(http, fake.base_url, first_byte=0.3).chat(call(stream=True))
    assert info.value.status == 504 and "no event within 0.3s" in info.value.message
    await asyncio.wait_for(fake.stream_closed.wait(), 2)


async def test_ping_is_not_a_first_event(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    """Only keep-alive pings and then silence: the first-event bound still applies."""
    closed = asyncio.Event()

    async def pings_only(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'event: ping\ndata: {"type": "ping"}\n\n')
        try:
            await asyncio.sleep(10)
        finally:
            closed.set()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", pings_only)
    server = await aiohttp_server(app)
    with pytest.raises(UpstreamTimeout):
        await provider(http, str(server.make_url("")), first_byte=0.3, idle=5).chat(
            call(stream=True))
    await asyncio.wait_for(closed.wait(), 2)


async def test_idle_timeout_mid_stream(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.script.append(hang_mid_stream(3, 10))
    up = await provider(http, fake.base_url, idle=0.3).chat(call(stream=True))
    got: list[bytes] = []
    with pytest.raises(UpstreamTimeout) as info:
        async with aclosing(frames_of(up)) as events:
            async for event in events:
                got.append(event)
    assert len(got) == 3 and "stalled" in info.value.message
    await asyncio.wait_for(fake.stream_closed.wait(), 2)


async def test_drop_mid_stream(fake: FakeAnthropic, http: aiohttp.ClientSession) -> None:
    fake.script.append(drop_mid_stream(4))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    with pytest.raises(UpstreamError) as info:
        await frames(up)
    assert info.value.status == 502 and "broke" in info.value.message
    assert fake.closed_streams == 0  # the fake hung up, not the gateway


async def test_early_close_closes_the_upstream(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    fake.script.append(slow(0.2))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    async with aclosing(frames_of(up)) as events:
        assert event_name(await anext(events)) == "message_start"
    await asyncio.wait_for(fake.stream_closed.wait(), 2)
    assert fake.closed_streams == 1


# ------------------------------------------------------------------------- models and configuration

async def test_list_models_pages_through(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeAnthropic(api_key=KEY, models=["m1", "m2", "m3", "m4", "m5"], max_page=2)
    server = await aiohttp_server(fake.app)
    p = provider(http, str(server.make_url("")), models=["m9", "m2"])
    assert await p.list_models() == ["m9", "m2", "m1", "m3", "m4", "m5"]
    assert [r.query.get("after_id") for r in fake.requests] == [None, "m2", "m4"]


async def test_list_models_falls_back_to_configured(aiohttp_server: Any,
                                                   http: aiohttp.ClientSession) -> None:
    server = await aiohttp_server(web.Application())  # an endpoint without /v1/models
    p = provider(http, str(server.make_url("")), models=["MiniMax-M2"])
    assert await p.list_models() == ["MiniMax-M2"]


async def test_list_models_auth_failure_is_raised(fake: FakeAnthropic,
                                                  http: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url, credentials={"api_key": "nope"}).list_models()
    assert info.value.status == 401


def test_configure_and_presets() -> None:
    presets = AnthropicProvider.presets
    assert presets["anthropic"].base_url == "https://api.anthropic.com"
    assert presets["deepseek-anthropic"].base_url == "https://api.deepseek.com/anthropic"
    assert presets["minimax"].base_url == "https://api.minimax.io/anthropic"
    assert {"kimi", "glm", "glm-cn", "minimax-cn"} <= set(presets)
    settings, creds = AnthropicProvider.configure({}, {"api_key": "k"}, presets["kimi"])
    assert settings["base_url"] == "https://api.moonshot.ai/anthropic" and creds == {"api_key": "k"}
    settings, _ = AnthropicProvider.configure({}, {"auth_token": "t"}, None)
    assert settings["base_url"] == "https://api.anthropic.com"
    cases: list[tuple[dict[str, Any], dict[str, Any], str]] = [
        ({}, {}, "anthropic connections need: api_key, auth_token"),
        ({"base_url": "ftp://x"}, {"api_key": "k"}, "base_url must be an http(s) URL"),
        ({"anthropic_version": ""}, {"api_key": "k"}, "anthropic_version must be"),
        ({"headers": {"X": 1}}, {"api_key": "k"}, "headers must map"),
        ({}, {"token": "k"}, "unknown credential field(s): token"),
    ]
    for bad, creds, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            AnthropicProvider.configure(bad, creds, None)


async def test_base_url_with_v1_and_version_setting(fake: FakeAnthropic,
                                                   http: aiohttp.ClientSession) -> None:
    p = provider(http, fake.base_url + "/v1/", anthropic_version="2023-01-01")
    assert p.messages_url == fake.base_url + "/v1/messages"
    await p.chat(call())
    assert fake.requests[-1].headers["anthropic-version"] == "2023-01-01"


def test_registered_as_a_builtin_plugin() -> None:
    plugins = load_plugins()
    assert plugins.providers["anthropic"] is AnthropicProvider
    info = plugins.info("anthropic")
    assert info is not None and info.distribution == "omniroute"
    assert info.module == "omniroute.providers.anthropic"
