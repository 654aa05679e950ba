"""Self-test: the official openai SDK accepts everything FakeOpenAI emits."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from .openai_upstream import (
    FakeOpenAI,
    drop_mid_stream,
    error,
    garbage,
    hang_before_headers,
    hang_mid_stream,
    mid_stream_error,
    reply,
    slow,
)

KEY = "sk-upstream-test"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["location"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}}}}
HI = [{"role": "user", "content": "hi there"}]


async def _setup(aiohttp_server: Any, **kw: Any) -> tuple[FakeOpenAI, AsyncOpenAI, str]:
    fake = FakeOpenAI(**kw)
    server = await aiohttp_server(fake.app)
    base = str(server.make_url("/v1"))
    return fake, AsyncOpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=5), base


async def _raw(base: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as s, s.post(
        f"{base}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        return r.status, dict(r.headers), await r.read()


def _sse(raw: bytes) -> list[Any]:
    assert raw.endswith(b"data: [DONE]\n\n")
    events = raw.decode().split("\n\n")
    assert all(e.startswith("data: ") for e in events if e)
    return [json.loads(e[6:]) for e in events if e and e != "data: [DONE]"]


async def test_plain(aiohttp_server: Any) -> None:
    fake, client, base = await _setup(aiohttp_server)
    r = await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "gpt-4o-mini" and r.system_fingerprint and r.service_tier == "default"
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content == "Hello! You said: hi there"
    assert c.message.refusal is None and c.finish_reason == "stop" and c.logprobs is None
    assert r.usage and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details.reasoning_tokens == 0  # type: ignore[union-attr]
    rec = fake.requests[-1]
    assert (rec.method, rec.path) == ("POST", "/v1/chat/completions")
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.json["messages"] == HI and json.loads(rec.body) == rec.json

    status, _, raw = await _raw(base, {"model": "gpt-4o", "messages": HI})
    doc = json.loads(raw)
    assert status == 200 and set(doc) == {
        "id", "object", "created", "model", "choices", "usage", "service_tier", "system_fingerprint"
    }
    assert set(doc["choices"][0]) == {"index", "message", "logprobs", "finish_reason"}
    assert set(doc["usage"]["completion_tokens_details"]) == {
        "reasoning_tokens", "audio_tokens", "accepted_prediction_tokens",
        "rejected_prediction_tokens",
    }
    await client.close()


async def test_stream(aiohttp_server: Any) -> None:
    fake, client, base = await _setup(aiohttp_server)
    fake.script.append(reply(text="The quick brown fox jumps", chunks=5))
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    chunks = [c async for c in stream]
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first, last = chunks[0].choices[0], chunks[-1].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert last.finish_reason == "stop" and last.delta.content is None
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(pieces) == 5 and "".join(map(str, pieces)) == "The quick brown fox jumps"
    assert all(c.usage is None for c in chunks)

    status, headers, raw = await _raw(base, {"model": "gpt-4o", "messages": HI, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = _sse(raw)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert events[-1]["choices"][0]["delta"] == {} and "usage" not in events[0]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == (
        "Hello! You said: hi there"
    )
    await client.close()


async def test_stream_include_usage(aiohttp_server: Any) -> None:
    _, client, base = await _setup(aiohttp_server)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=HI, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.total_tokens > 0
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])

    body = {"model": "gpt-4o", "messages": HI, "stream": True,
            "stream_options": {"include_usage": True, "include_obfuscation": False}}
    events = _sse((await _raw(base, body))[2])
    assert all("usage" in e and "obfuscation" not in e for e in events)
    assert [e["usage"] is None for e in events] == [True] * (len(events) - 1) + [False]
    await client.close()


async def test_tool_call_plain_and_stream(aiohttp_server: Any) -> None:
    _, client, base = await _setup(aiohttp_server)
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    r = await client.chat.completions.create(model="gpt-4o", messages=msgs, tools=[WEATHER_TOOL])
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    call = msg.tool_calls[0]  # type: ignore[index]
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    args = call.function.arguments  # type: ignore[union-attr]
    assert json.loads(args) == {"location": "Paris", "unit": "c"}

    stream = await client.chat.completions.create(
        model="gpt-4o", messages=msgs, tools=[WEATHER_TOOL], stream=True
    )
    chunks = [c async for c in stream]
    head = chunks[0].choices[0].delta
    assert head.role == "assistant" and head.tool_calls and head.tool_calls[0].index == 0
    assert head.tool_calls[0].id
    assert head.tool_calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    arg_deltas = [c.choices[0].delta.tool_calls[0] for c in chunks[1:-1]]  # type: ignore[index]
    assert len(arg_deltas) >= 3 and all(d.id is None and d.type is None for d in arg_deltas)
    args = "".join(d.function.arguments for d in arg_deltas)  # type: ignore[union-attr, misc]
    assert json.loads(args) == {"location": "Paris", "unit": "c"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    events = _sse((await _raw(base, {"model": "gpt-4o", "messages": msgs, "tools": [WEATHER_TOOL],
                                     "stream": True}))[2])
    head_delta = events[0]["choices"][0]["delta"]
    assert head_delta["content"] is None and head_delta["refusal"] is None
    assert head_delta["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}
    assert events[1]["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": arg_deltas[0].function.arguments}}]
    }
    # no tools -> plain text even when asking about the weather
    r = await client.chat.completions.create(model="gpt-4o", messages=msgs)
    assert r.choices[0].message.content and not r.choices[0].message.tool_calls
    await client.close()


async def test_parallel_tool_calls(aiohttp_server: Any) -> None:
    fake, client, _ = await _setup(aiohttp_server)
    fake.script += [reply(tool_calls=2), reply(tool_calls=2)]
    tools = [WEATHER_TOOL, TIME_TOOL]
    r = await client.chat.completions.create(model="gpt-4o", messages=HI, tools=tools)
    calls = r.choices[0].message.tool_calls or []
    names = [c.function.name for c in calls]  # type: ignore[union-attr]
    assert names == ["get_weather", "get_time"]
    assert calls[0].id != calls[1].id

    stream = await client.chat.completions.create(model="gpt-4o", messages=HI, tools=tools,
                                                  stream=True)
    acc: dict[int, dict[str, str]] = {}
    async for chunk in stream:
        for d in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            slot = acc.setdefault(d.index, {"name": "", "arguments": ""})
            if d.function and d.function.name:
                slot["name"] = d.function.name
            slot["arguments"] += (d.function.arguments or "") if d.function else ""
    assert sorted(acc) == [0, 1] and acc[1]["name"] == "get_time"
    assert json.loads(acc[1]["arguments"]) == {"tz": "test"}
    await client.close()


@pytest.mark.parametrize(
    ("behaviour", "exc", "code"),
    [
        (error(400, "Invalid 'messages'.", param="messages"), openai.BadRequestError, None),
        (error(429, "Rate limit reached", headers={"Retry-After": "1"}), openai.RateLimitError,
         "rate_limit_exceeded"),
        (error(500, "The server had an error"), openai.InternalServerError, None),
        (error(503, "Overloaded", code="overloaded"), openai.InternalServerError, "overloaded"),
    ],
)
async def test_scripted_errors(
    aiohttp_server: Any, behaviour: Any, exc: type[openai.APIStatusError], code: str | None
) -> None:
    fake, client, _ = await _setup(aiohttp_server)
    fake.script.append(behaviour)
    with pytest.raises(exc) as info:
        await client.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    assert info.value.code == code and info.value.message.endswith(behaviour.error["message"])
    assert info.value.body == behaviour.error
    if info.value.status_code == 429:
        assert info.value.response.headers["retry-after"] == "1"
        assert info.value.type == "requests"
    await client.close()


async def test_auth_and_model_errors(aiohttp_server: Any) -> None:
    _, client, base = await _setup(aiohttp_server)
    bad = AsyncOpenAI(base_url=base, api_key="sk-wrong-key-123456", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth:
        await bad.chat.completions.create(model="gpt-4o", messages=HI)
    assert auth.value.code == "invalid_api_key" and auth.value.type == "invalid_request_error"
    assert "Incorrect API key provided: sk-wrong" in auth.value.message
    with pytest.raises(openai.NotFoundError) as nf:
        await client.chat.completions.create(model="gpt-9", messages=HI)
    assert nf.value.code == "model_not_found"
    assert nf.value.message.endswith(
        "The model `gpt-9` does not exist or you do not have access to it."
    )
    status, _, raw = await _raw(base, {"model": "gpt-4o"})
    assert status == 400 and json.loads(raw)["error"]["param"] == "messages"
    models = [m.id async for m in client.models.list()]
    assert models == ["gpt-4o-mini", "gpt-4o"]
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    _open_fake, open_client, _ = await _setup(aiohttp_server, api_key=None)
    assert (await open_client.chat.completions.create(model="gpt-4o", messages=HI)).choices
    await bad.close(), await client.close(), await open_client.close()


async def test_mid_stream_error(aiohttp_server: Any) -> None:
    fake, client, _ = await _setup(aiohttp_server)
    fake.script.append(mid_stream_error(2, "boom"))
    stream = await client.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    got = []
    with pytest.raises(openai.APIError) as info:
        async for c in stream:
            got.append(c)
    assert len(got) == 2 and info.value.message == "boom"
    assert info.value.body == {
        "message": "boom", "type": "server_error", "param": None, "code": None
    }
    await client.close()


async def test_drop_mid_stream(aiohttp_server: Any) -> None:
    fake, client, _ = await _setup(aiohttp_server)
    fake.script += [drop_mid_stream(3), drop_mid_stream(0)]
    stream = await client.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    got = []
    with pytest.raises(openai.APIConnectionError):
        async for c in stream:
            got.append(c)
    assert len(got) == 3
    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o", messages=HI)
    assert fake.closed_streams == 0  # the fake hung up, not the client
    await client.close()


async def test_client_gone_is_detected(aiohttp_server: Any) -> None:
    fake, client, _ = await _setup(aiohttp_server)
    fake.script += [hang_before_headers(30), hang_mid_stream(2, 30)]
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="gpt-4o", messages=HI, timeout=0.2)
    await asyncio.wait_for(fake.stream_closed.wait(), 2)
    assert fake.closed_streams == 1
    fake.stream_closed.clear()

    stream = await client.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    it = stream.__aiter__()
    await it.__anext__(), await it.__anext__()
    await stream.close()
    await asyncio.wait_for(fake.stream_closed.wait(), 2)
    assert fake.closed_streams == 2
    await client.close()


async def test_hang_mid_stream_then_resume_and_slow(aiohttp_server: Any) -> None:
    fake, client, _ = await _setup(aiohttp_server)
    fake.script += [hang_mid_stream(1, 0.3), slow(0.05)]
    for _ in range(2):
        t0 = time.monotonic()
        stream = await client.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "Hello! You said: hi there" and time.monotonic() - t0 >= 0.25
    assert fake.closed_streams == 0
    await client.close()


async def test_garbage(aiohttp_server: Any) -> None:
    fake, client, _ = await _setup(aiohttp_server)
    fake.script += [garbage(), garbage()]
    with pytest.raises(ValueError):  # the SDK surfaces the raw json.JSONDecodeError
        await client.chat.completions.create(model="gpt-4o", messages=HI)
    stream = await client.chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    assert [c async for c in stream] == []  # nothing parseable as SSE data
    await client.close()
