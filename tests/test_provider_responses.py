"""Provider type ``openai-responses`` against FakeResponses, and the fake against the openai SDK."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from fakes.responses_upstream import (
    FakeResponses,
    drop_mid_stream,
    error,
    garbage,
    hang_before_headers,
    hang_mid_stream,
    mid_stream_error,
    reply,
    response_failed,
    slow,
)
from openai.types.responses import ResponseFunctionToolCall, ResponseReasoningItem

from omniroute.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from omniroute.plugins import load_plugins
from omniroute.providers.base import ProviderContext, Timeouts, UpstreamCall, UpstreamResponse
from omniroute.providers.responses import ResponsesProvider
from omniroute.sse import event_data, event_name
from omniroute.storage.store import Connection

KEY = "sk-upstream-test"
MODEL = "gpt-4.1-mini"
WEATHER_TOOL: Any = {"type": "function", "name": "get_weather", "description": "Get the weather",
                "parameters": {"type": "object", "properties": {
                    "location": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
                    "required": ["location"]}}
WEATHER = "What's the weather in Paris?"


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeResponses:
    fake = FakeResponses(api_key=KEY)
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1"))
    return fake


def provider(http: aiohttp.ClientSession, base_url: str, *, key: str = KEY,
             first_byte: float = 2.0, idle: float = 2.0, **settings: Any) -> ResponsesProvider:
    settings, creds = ResponsesProvider.configure({"base_url": base_url, **settings},
                                                  {"api_key": key}, None)
    conn = Connection("conn_r", "openai-responses", "fake-responses", "resp", settings, creds)
    timeouts = Timeouts(connect=2, first_byte=first_byte, idle=idle, total=20)
    return ResponsesProvider(conn, ProviderContext(http, timeouts, "omniroute-test"))


def call(input_: Any = "hi there", *, stream: bool = False, model: str = MODEL,
         **extra: Any) -> UpstreamCall:
    return UpstreamCall({"model": "ignored", "input": input_, **extra}, model, stream)


def frames_of(up: UpstreamResponse) -> Any:
    """The answer's stream (it must be one)."""
    assert up.events is not None, "expected a stream"
    return up.events


async def events(up: Any) -> list[tuple[str | None, Any]]:
    async with aclosing(frames_of(up)) as frames:
        return [(event_name(e), json.loads(event_data(e) or b"null")) async for e in frames]


# ----------------------------------------------------------------------------- the fake vs the SDK

async def test_fake_speaks_the_openai_sdk(fake: FakeResponses) -> None:
    client = openai.AsyncOpenAI(base_url=fake.base_url, api_key=KEY, max_retries=0)
    r = await client.responses.create(model=MODEL, input="hi there")
    assert r.id.startswith("resp_") and r.status == "completed"
    assert r.output_text == "Hello! You said: hi there" and str(r.output[0].id).startswith("msg_")
    assert r.usage and r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens

    fake.script.append(reply(usage={"cached_tokens": 4}))
    async with client.responses.stream(
        model="gpt-5-mini", input=WEATHER, tools=[WEATHER_TOOL],
        reasoning={"effort": "low", "summary": "auto"}, include=["reasoning.encrypted_content"],
        store=False,
    ) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_response()
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.reasoning_summary_text.delta" in kinds and kinds[-1] == "response.completed"
    reasoning, fc = final.output
    assert isinstance(reasoning, ResponseReasoningItem) and reasoning.id.startswith("rs_")
    assert reasoning.summary[0].text.startswith("**Answering") and reasoning.encrypted_content
    assert isinstance(fc, ResponseFunctionToolCall) and str(fc.id).startswith("fc_")
    assert fc.call_id.startswith("call_")
    assert json.loads(fc.arguments) == {"location": "Paris", "unit": "c"}
    assert final.usage and final.usage.output_tokens_details.reasoning_tokens > 0
    assert final.usage.input_tokens_details.cached_tokens == 4

    # reasoning (encrypted) and the call go back with the output, stateless
    turn2: Any = [{"role": "user", "content": WEATHER},
             *[o.model_dump(exclude_none=True) for o in final.output],
             {"type": "function_call_output", "call_id": fc.call_id, "output": "18C"}]
    again = await client.responses.create(model="gpt-5-mini", input=turn2, tools=[WEATHER_TOOL],
                                          store=False)
    assert again.output_text.startswith("Hello!")

    fake.script.append(mid_stream_error(3, "boom"))
    got = [e async for e in await client.responses.create(model=MODEL, input="x", stream=True)]
    assert got[-1].type == "error" and got[-1].message == "boom"
    fake.script.append(response_failed(2, "it failed"))
    got = [e async for e in await client.responses.create(model=MODEL, input="x", stream=True)]
    assert got[-1].type == "response.failed"
    assert got[-1].response.error.message == "it failed"  # type: ignore[union-attr]

    fake.script.append(error(429, "Rate limit reached", headers={"retry-after": "2"}))
    with pytest.raises(openai.RateLimitError) as info:
        await client.responses.create(model=MODEL, input="x")
    assert info.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(model="gpt-9", input="x")
    assert bad.value.code == "model_not_found" and bad.value.param == "model"
    assert [m.id async for m in client.models.list()] == ["gpt-5-mini", "gpt-4.1-mini", "o4-mini"]
    await client.close()


@pytest.mark.parametrize(("body", "status", "code", "message"), [
    ({"model": MODEL, "messages": []}, 400, "unknown_parameter", "Unknown parameter: 'messages'."),
    ({"input": "x"}, 400, "missing_required_parameter", "Missing required parameter: 'model'."),
    ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     400, "invalid_value", "Invalid value: 'text'."),
    ({"model": MODEL, "input": [{"role": "tool", "content": "x"}]}, 400, "invalid_value",
     "Invalid value: 'tool'."),
    ({"model": MODEL, "input": "x", "tools": [{"type": "function", "function": {"name": "f"}}]},
     400, "missing_required_parameter", "'tools[0].name'"),
    ({"model": MODEL, "input": [{"type": "function_call", "call_id": "c1", "name": "f",
                                 "arguments": {}}]}, 400, "invalid_type", "expected a string"),
    ({"model": MODEL, "input": [{"type": "function_call_output", "call_id": "c9", "output": "x"}]},
     400, None, "No tool call found for function call output with call_id c9."),
    ({"model": "gpt-5-mini", "store": False, "input": [
        {"type": "reasoning", "id": "rs_1", "summary": []}]}, 404, None,
     "Items are not persisted when `store` is set to false."),
    ({"model": MODEL, "input": "x", "reasoning": {"effort": "high"}}, 400,
     "unsupported_parameter", "'reasoning.effort' is not supported with this model."),
    ({"model": MODEL, "input": "x", "max_output_tokens": 5}, 400, "integer_below_min_value",
     "Expected a value >= 16"),
])
async def test_fake_refuses_what_the_real_api_refuses(
    fake: FakeResponses, http: aiohttp.ClientSession, body: dict[str, Any], status: int,
    code: str | None, message: str,
) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    async with http.post(f"{fake.base_url}/responses", json=body, headers=headers) as resp:
        data = await resp.json()
    assert resp.status == status and data["error"]["type"] == "invalid_request_error"
    assert data["error"]["code"] == code and message in data["error"]["message"]


# ----------------------------------------------------------------------------- JSON and streams

async def test_json_reply(fake: FakeResponses, http: aiohttp.ClientSession) -> None:
    up = await provider(http, fake.base_url).chat(call(stream=False))
    assert up.status == 200 and up.body is not None and up.events is None
    doc = json.loads(up.body)
    assert doc["object"] == "response"
    assert doc["output"][0]["content"][0]["text"].startswith("Hello")
    rec = fake.requests[-1]
    assert (rec.method, rec.path) == ("POST", "/v1/responses")
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.json["model"] == MODEL and "stream" not in rec.json


async def test_stream_reply_with_named_events(
    fake: FakeResponses, http: aiohttp.ClientSession
) -> None:
    fake.script.append(reply(text="The quick brown fox", chunks=4))
    got = await events(await provider(http, fake.base_url).chat(call(stream=True)))
    names = [n for n, _ in got]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added"] + ["response.output_text.delta"] * 4 + [
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    assert all(d["type"] == n for n, d in got)
    assert [d["sequence_number"] for _, d in got] == list(range(len(got)))
    assert "".join(d["delta"] for n, d in got if n.endswith("text.delta")) == "The quick brown fox"  # type: ignore[union-attr]
    usage = got[-1][1]["response"]["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens_details"]["reasoning_tokens"] == 0
    assert fake.requests[-1].json["stream"] is True


async def test_tool_call_stream(fake: FakeResponses, http: aiohttp.ClientSession) -> None:
    got = await events(await provider(http, fake.base_url).chat(
        call(WEATHER, stream=True, tools=[WEATHER_TOOL])))
    added = next(d for n, d in got if n == "response.output_item.added")["item"]
    assert added["type"] == "function_call" and added["arguments"] == ""
    pieces = [d["delta"] for n, d in got if n == "response.function_call_arguments.delta"]
    assert len(pieces) >= 3 and json.loads("".join(pieces)) == {"location": "Paris", "unit": "c"}
    done = next(d for n, d in got if n == "response.function_call_arguments.done")
    assert done["arguments"] == "".join(pieces) and done["item_id"] == added["id"]


# ----------------------------------------------------------------------------- errors

async def test_rate_limit_error_keeps_the_hints(
    fake: FakeResponses, http: aiohttp.ClientSession
) -> None:
    fake.script.append(error(429, "Rate limit reached for gpt-4.1-mini", headers={
        "retry-after": "2", "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1.5s"}))
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call(stream=True))
    err = info.value
    assert err.status == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert err.message == "Rate limit reached for gpt-4.1-mini"
    assert err.headers == {"Retry-After": "2"}
    assert err.upstream_headers == {"retry-after": "2", "x-ratelimit-remaining-requests": "0",
                                    "x-ratelimit-reset-requests": "1.5s"}


async def test_translation_bug_shows_as_400(
    fake: FakeResponses, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(UpstreamCall(
            {"messages": [{"role": "user", "content": "x"}]}, MODEL, False))
    assert info.value.status == 400 and info.value.code == "unknown_parameter"
    assert info.value.param == "messages"


async def test_wrong_key_is_the_gateways_problem(fake: FakeResponses,
                                                 http: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url, key="sk-proj-abcdefghijklmnop").chat(call())
    assert info.value.status == 401 and info.value.code == "upstream_auth_failed"
    assert "abcdefgh" not in info.value.message


@pytest.mark.parametrize("behaviour", [mid_stream_error(0, "Overloaded", "server_error"),
                                       response_failed(0, "Overloaded", "server_error")],
                         ids=["error", "response.failed"])
async def test_failure_as_first_event(fake: FakeResponses, http: aiohttp.ClientSession,
                                      behaviour: Any) -> None:
    fake.script.append(behaviour)
    with pytest.raises(UpstreamError) as info:
        await provider(http, fake.base_url).chat(call(stream=True))
    assert info.value.status == 502 and "Overloaded" in info.value.message
    assert info.value.code == "server_error"


async def test_failure_later_in_the_stream_is_relayed(fake: FakeResponses,
                                                      http: aiohttp.ClientSession) -> None:
    fake.script.append(response_failed(3, "it failed"))
    got = await events(await provider(http, fake.base_url).chat(call(stream=True)))
    assert got[-1][0] == "response.failed" and got[-1][1]["response"]["status"] == "failed"


@pytest.mark.parametrize("stream", [False, True])
async def test_garbage_is_a_bad_gateway(fake: FakeResponses, http: aiohttp.ClientSession,
                                        stream: bool) -> None:
    fake.script.append(garbage())
    with pytest.raises(UpstreamError) as info:
        await provider(http, fake.base_url).chat(call(stream=stream))
    assert info.value.status == 502


# ----------------------------------------------------------------------------- time bounds

@pytest.mark.parametrize("behaviour", [hang_before_headers(10), hang_mid_stream(0, 10)],
                         ids=["before_headers", "after_headers"])
async def test_first_event_timeout(fake: FakeResponses, http: aiohttp.ClientSession,
                                   behaviour: Any) -> None:
    fake.script.append(behaviour)
    with pytest.raises(UpstreamTimeout):
        await provider(http, fake.base_url, first_byte=0.3).chat(call(stream=True))
    await asyncio.wait_for(fake.stream_closed.wait(), 2)


async def test_idle_timeout_mid_stream(fake: FakeResponses, http: aiohttp.ClientSession) -> None:
    fake.script.append(hang_mid_stream(3, 10))
    up = await provider(http, fake.base_url, idle=0.3).chat(call(stream=True))
    with pytest.raises(UpstreamTimeout):
        await events(up)
    await asyncio.wait_for(fake.stream_closed.wait(), 2)


async def test_drop_mid_stream(fake: FakeResponses, http: aiohttp.ClientSession) -> None:
    fake.script.append(drop_mid_stream(3))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    with pytest.raises(UpstreamError) as info:
        await events(up)
    assert "broke" in info.value.message and fake.closed_streams == 0


async def test_early_close_closes_the_upstream(fake: FakeResponses,
                                               http: aiohttp.ClientSession) -> None:
    fake.script.append(slow(0.2))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    async with aclosing(frames_of(up)) as frames:
        assert event_name(await anext(frames)) == "response.created"
    await asyncio.wait_for(fake.stream_closed.wait(), 2)
    assert fake.closed_streams == 1


# ------------------------------------------------------------------------- models and configuration

async def test_list_models(fake: FakeResponses, http: aiohttp.ClientSession) -> None:
    p = provider(http, fake.base_url, models=["gpt-5"])
    assert await p.list_models() == ["gpt-5", "gpt-5-mini", "gpt-4.1-mini", "o4-mini"]
    assert fake.requests[-1].path == "/v1/models"


async def test_list_models_falls_back_to_configured(aiohttp_server: Any,
                                                   http: aiohttp.ClientSession) -> None:
    server = await aiohttp_server(web.Application())
    p = provider(http, str(server.make_url("/v1")), models=["grok-4"])
    assert await p.list_models() == ["grok-4"]


def test_configure_and_presets() -> None:
    presets = ResponsesProvider.presets
    assert presets["openai-responses"].base_url == "https://api.openai.com/v1"
    assert presets["openrouter-responses"].base_url == "https://openrouter.ai/api/v1"
    assert presets["xai-responses"].base_url == "https://api.x.ai/v1"
    settings, _ = ResponsesProvider.configure({}, {"api_key": "k"}, presets["xai-responses"])
    assert settings["base_url"] == "https://api.x.ai/v1"
    settings, _ = ResponsesProvider.configure({}, {"api_key": "k"}, None)
    assert settings["base_url"] == "https://api.openai.com/v1"
    with pytest.raises(ValueError, match="openai-responses connections need: api_key"):
        ResponsesProvider.configure({}, {}, None)


def test_registered_as_a_builtin_plugin() -> None:
    plugins = load_plugins()
    assert plugins.providers["openai-responses"] is ResponsesProvider
    info = plugins.info("openai-responses")
    assert info is not None and info.module == "omniroute.providers.responses"
