"""End to end: the official openai SDK -> the gateway -> a fake OpenAI upstream."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from fakes.openai_upstream import FakeOpenAI, error, reply

UPSTREAM_KEY = "sk-upstream-test"
HI = [{"role": "user", "content": "hi there"}]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
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


def sdk(gw: Any, api_key: str = "sk-client-anything", path: str = "/v1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + path, api_key=api_key, max_retries=0,
                              timeout=10)


async def add_fake(gw: Any, aiohttp_server: Any, prefix: str, **kw: Any) -> FakeOpenAI:
    """Another fake upstream behind its own connection ``prefix``."""
    fake = FakeOpenAI(api_key=UPSTREAM_KEY, **kw)
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "openai", "name": f"fake-{prefix}", "prefix": prefix,
                           "base_url": str(server.make_url("/v1")), "api_key": UPSTREAM_KEY})
    return fake


def record_events(fake: FakeOpenAI) -> list[list[bytes]]:
    """Capture the exact SSE events the fake writes for each stream it serves."""
    sent: list[list[bytes]] = []
    original = fake._chunks

    def recording(body: dict[str, Any], behaviour: Any) -> list[bytes]:
        events = original(body, behaviour)
        sent.append(events)
        return events

    fake._chunks = recording  # type: ignore[method-assign]
    return sent


def is_usage_only(event: bytes) -> bool:
    if not event.startswith(b"data: {"):
        return False
    chunk = orjson.loads(event[len(b"data: "):])
    return chunk.get("choices") == [] and isinstance(chunk.get("usage"), dict)


async def chat_chunks(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def joined_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def accumulate_tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    """What an SDK user assembles from streamed tool-call deltas, by index."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                if tc.id:
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    call["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
    return calls


def upstream_tool_calls(events: list[bytes]) -> dict[int, dict[str, str]]:
    """The tool calls as the fake sent them (the ground truth)."""
    calls: dict[int, dict[str, str]] = {}
    for event in events:
        if not event.startswith(b"data: {"):
            continue
        for choice in orjson.loads(event[6:])["choices"]:
            for tc in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] = tc.get("id") or call["id"]
                call["name"] += tc.get("function", {}).get("name") or ""
                call["arguments"] += tc.get("function", {}).get("arguments") or ""
    return calls


def chat_requests(fake: FakeOpenAI) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/chat/completions")]


# ----------------------------------------------------------------------------- plain chat

async def test_plain_chat(gw):
    resp = await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert resp.choices[0].message.content == "Hello! You said: hi there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == "gpt-4o-mini"
    assert resp.usage is not None and resp.usage.total_tokens > 0


async def test_plain_chat_body_is_the_upstream_body(gw):
    """A non-stream answer reaches the client byte for byte."""
    sent: list[bytes] = []
    original = gw.fake._complete

    async def recording(request, body, behaviour):
        response = await original(request, body, behaviour)
        sent.append(response.body)
        return response

    gw.fake._complete = recording
    resp = await gw.client.post("/v1/chat/completions",
                                json={"model": "up/gpt-4o-mini", "messages": HI})
    assert resp.status == 200
    assert await resp.read() == sent[0]


# ----------------------------------------------------------------------------- streaming

async def test_streaming_text_joined_deltas_equal_the_reply(gw):
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=HI, stream=True)
    chunks = await chat_chunks(stream)
    assert joined_text(chunks) == "Hello! You said: hi there"
    assert chunks[-1].choices[0].finish_reason == "stop"
    # the usage chunk the gateway asked for on its own behalf is not shown
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


async def test_stream_bytes_reach_the_client_unchanged(gw):
    sent = record_events(gw.fake)
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "messages": HI, "stream": True})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    received = await resp.read()
    (events,) = sent
    withheld = [e for e in events if is_usage_only(e)]
    assert len(withheld) == 1  # the gateway asked for usage; the client did not
    assert received == b"".join(e for e in events if not is_usage_only(e))
    assert received.endswith(b"data: [DONE]\n\n")


async def test_stream_bytes_unchanged_with_include_usage(gw):
    sent = record_events(gw.fake)
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "messages": HI, "stream": True,
        "stream_options": {"include_usage": True}})
    received = await resp.read()
    (events,) = sent
    assert any(is_usage_only(e) for e in events)
    assert received == b"".join(events)


async def test_include_usage_gives_the_sdk_the_usage_chunk(gw):
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=HI, stream=True,
        stream_options={"include_usage": True})
    chunks = await chat_chunks(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens > 0 and last.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert joined_text(chunks) == "Hello! You said: hi there"


async def test_streamed_tool_call(gw):
    sent = record_events(gw.fake)
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=WEATHER, tools=[WEATHER_TOOL], stream=True)
    chunks = await chat_chunks(stream)
    calls = accumulate_tool_calls(chunks)
    assert list(calls) == [0]
    call = calls[0]
    assert call["name"] == "get_weather"
    assert call["id"].startswith("call_") and call["id"] == upstream_tool_calls(sent[0])[0]["id"]
    assert orjson.loads(call["arguments"]) == {"location": "Paris", "unit": "c"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the arguments arrived in several pieces and were not merged by the gateway
    pieces = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls
              and c.choices[0].delta.tool_calls[0].function.arguments]
    assert len(pieces) >= 3


async def test_two_parallel_streamed_tool_calls(gw):
    gw.fake.script.append(reply(tool_calls=2))
    sent = record_events(gw.fake)
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=WEATHER, tools=[WEATHER_TOOL, TIME_TOOL],
        stream=True)
    chunks = await chat_chunks(stream)
    calls = accumulate_tool_calls(chunks)
    assert sorted(calls) == [0, 1]
    assert calls == upstream_tool_calls(sent[0])
    assert calls[0]["name"] == "get_weather" and calls[1]["name"] == "get_time"
    assert calls[0]["id"] != calls[1]["id"]
    assert orjson.loads(calls[0]["arguments"]) == {"location": "Paris", "unit": "c"}
    assert orjson.loads(calls[1]["arguments"]) == {"tz": "test"}


async def test_non_stream_tool_call(gw):
    resp = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=WEATHER, tools=[WEATHER_TOOL])
    (call,) = resp.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert orjson.loads(call.function.arguments) == {"location": "Paris", "unit": "c"}


# ----------------------------------------------------------------------------- what goes upstream

BODY_EXTRAS = {
    "temperature": 0.3,
    "top_p": 0.9,
    "max_tokens": 50,
    "seed": 7,
    "user": "u-123",
    "metadata": {"k": "v", "nested": [1, 2, {"x": None}]},
    "x_vendor_field": {"anything": True},
    "tools": [WEATHER_TOOL],
    "tool_choice": "auto",
}


async def test_upstream_gets_the_body_unchanged_except_model(gw):
    body = {"model": "up/gpt-4o-mini", "messages": HI, **BODY_EXTRAS}
    resp = await gw.client.post("/v1/chat/completions", json=body)
    assert resp.status == 200, await resp.text()
    (seen,) = chat_requests(gw.fake)
    assert seen.json == {**body, "model": "gpt-4o-mini"}
    assert list(seen.json) == list(body)  # key order kept too


async def test_upstream_gets_the_stream_body_with_include_usage_added(gw):
    body = {"model": "up/gpt-4o-mini", "messages": HI, "stream": True, **BODY_EXTRAS}
    resp = await gw.client.post("/v1/chat/completions", json=body)
    await resp.read()
    (seen,) = chat_requests(gw.fake)
    assert seen.json == {**body, "model": "gpt-4o-mini",
                         "stream_options": {"include_usage": True}}


async def test_upstream_stream_options_of_the_client_are_kept(gw):
    body = {"model": "up/gpt-4o-mini", "messages": HI, "stream": True,
            "stream_options": {"include_obfuscation": False}}
    resp = await gw.client.post("/v1/chat/completions", json=body)
    received = await resp.read()
    (seen,) = chat_requests(gw.fake)
    assert seen.json["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert b"obfuscation" not in received


async def test_upstream_stream_body_unchanged_when_client_asks_for_usage(gw):
    body = {"model": "up/gpt-4o-mini", "messages": HI, "stream": True,
            "stream_options": {"include_usage": True}}
    resp = await gw.client.post("/v1/chat/completions", json=body)
    await resp.read()
    (seen,) = chat_requests(gw.fake)
    assert seen.json == {**body, "model": "gpt-4o-mini"}


@pytest.mark.parametrize("stream", [False, True])
async def test_client_credentials_never_go_upstream(gw, stream):
    client_secret = "sk-client-secret-must-not-leak"
    resp = await gw.client.post(
        "/v1/chat/completions",
        json={"model": "up/gpt-4o-mini", "messages": HI, "stream": stream},
        headers={"Authorization": f"Bearer {client_secret}", "x-api-key": client_secret},
    )
    assert resp.status == 200
    await resp.read()
    (seen,) = chat_requests(gw.fake)
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert "x-api-key" not in seen.headers
    assert not any(client_secret in v for v in seen.headers.values())


async def test_gateway_key_is_not_forwarded_when_keys_are_required(gw):
    await gw.set_settings(require_api_key=True)
    key = await gw.create_key("client")
    resp = await sdk(gw, key).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert resp.choices[0].message.content
    (seen,) = chat_requests(gw.fake)
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert not any(key in v for v in seen.headers.values())


# ----------------------------------------------------------------------------- response headers

@pytest.mark.parametrize("stream", [False, True])
async def test_response_headers(gw, stream):
    raw = await sdk(gw).chat.completions.with_raw_response.create(
        model="up/gpt-4o-mini", messages=HI, stream=stream)
    assert raw.headers["X-OmniRoute-Provider"] == "up"
    assert raw.headers["X-OmniRoute-Model"] == "gpt-4o-mini"
    request_id = raw.headers["X-OmniRoute-Request-Id"]
    assert len(request_id) >= 16
    parsed = raw.parse()
    if stream:
        assert joined_text(await chat_chunks(parsed)) == "Hello! You said: hi there"
    else:
        assert parsed.choices[0].message.content == "Hello! You said: hi there"
    other = await sdk(gw).chat.completions.with_raw_response.create(
        model="up/gpt-4o-mini", messages=HI)
    assert other.headers["X-OmniRoute-Request-Id"] != request_id


# ----------------------------------------------------------------------------- provider-pinned path

async def test_provider_path_adds_the_prefix(gw):
    client = sdk(gw, path="/v1/providers/up")
    resp = await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert resp.choices[0].message.content == "Hello! You said: hi there"
    resp = await client.chat.completions.create(model="up/gpt-4o", messages=HI)
    assert resp.model == "gpt-4o"
    assert [r.json["model"] for r in chat_requests(gw.fake)] == ["gpt-4o-mini", "gpt-4o"]


async def test_provider_path_streams(gw):
    client = sdk(gw, path="/v1/providers/up")
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True)
    assert joined_text(await chat_chunks(stream)) == "Hello! You said: hi there"


async def test_provider_path_refuses_another_known_prefix(gw, aiohttp_server):
    other = await add_fake(gw, aiohttp_server, "other")
    client = sdk(gw, path="/v1/providers/up")
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="other/gpt-4o-mini", messages=HI)
    assert info.value.status_code == 400
    assert info.value.code == "model_provider_mismatch"
    assert not chat_requests(gw.fake) and not chat_requests(other)


async def test_provider_path_unknown_provider(gw):
    client = sdk(gw, path="/v1/providers/nope")
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="gpt-4o-mini", messages=HI)
    assert info.value.code == "model_not_found"


# -------------------------------------------------------------------------- models, aliases, combos

async def test_models_list_via_sdk(gw):
    resp = await gw.client.post("/api/models/alias", headers=gw.admin_headers,
                                json={"alias": "fast", "target": "up/gpt-4o-mini"})
    assert resp.status == 200, await resp.text()
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers,
                                json={"name": "best", "steps": ["up/gpt-4o", "up/gpt-4o-mini"]})
    assert resp.status == 201, await resp.text()
    page = await sdk(gw).models.list()
    by_id = {m.id: m for m in page.data}
    assert {"up/gpt-4o-mini", "up/gpt-4o", "fast", "best"} <= set(by_id)
    assert by_id["fast"].owned_by == "alias"
    assert by_id["best"].owned_by == "combo"
    assert by_id["up/gpt-4o-mini"].owned_by == "up"
    assert all(m.object == "model" for m in page.data)


async def test_alias_routes(gw):
    resp = await gw.client.post("/api/models/alias", headers=gw.admin_headers,
                                json={"alias": "fast", "target": "up/gpt-4o"})
    assert resp.status == 200
    raw = await sdk(gw).chat.completions.with_raw_response.create(model="fast", messages=HI)
    assert raw.headers["X-OmniRoute-Model"] == "gpt-4o"
    assert (raw.parse()).model == "gpt-4o"
    assert chat_requests(gw.fake)[-1].json["model"] == "gpt-4o"


async def test_combo_routes(gw):
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers,
                                json={"name": "best", "steps": ["up/gpt-4o", "up/gpt-4o-mini"]})
    assert resp.status == 201
    stream = await sdk(gw).chat.completions.create(model="best", messages=HI, stream=True)
    assert joined_text(await chat_chunks(stream)) == "Hello! You said: hi there"
    assert [r.json["model"] for r in chat_requests(gw.fake)] == ["gpt-4o"]


async def test_model_with_slashes_after_the_prefix(gw, aiohttp_server):
    name = "meta-llama/llama-3.3-70b-instruct"
    fake = await add_fake(gw, aiohttp_server, "or", models=[name])
    resp = await sdk(gw).chat.completions.create(model=f"or/{name}", messages=HI)
    assert resp.model == name
    assert chat_requests(fake)[-1].json["model"] == name
    stream = await sdk(gw).chat.completions.create(model=f"or/{name}", messages=HI, stream=True)
    assert joined_text(await chat_chunks(stream)) == "Hello! You said: hi there"
    assert chat_requests(fake)[-1].json["model"] == name
    assert not chat_requests(gw.fake)


# ----------------------------------------------------------------------------- fallback

async def _two_step_combo(gw, aiohttp_server) -> FakeOpenAI:
    second = await add_fake(gw, aiohttp_server, "b")
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers,
                                json={"name": "duo", "steps": ["up/gpt-4o-mini", "b/gpt-4o"]})
    assert resp.status == 201, await resp.text()
    return second


@pytest.mark.parametrize("status", [429, 500, 503])
@pytest.mark.parametrize("stream", [False, True])
async def test_fallback_to_the_second_connection(gw, aiohttp_server, status, stream):
    second = await _two_step_combo(gw, aiohttp_server)
    gw.fake.script.append(error(status, "first one is down"))
    raw = await sdk(gw).chat.completions.with_raw_response.create(
        model="duo", messages=HI, stream=stream)
    assert raw.headers["X-OmniRoute-Provider"] == "b"
    assert raw.headers["X-OmniRoute-Model"] == "gpt-4o"
    assert raw.headers["X-OmniRoute-Fallback-Attempts"] == "1"
    parsed = raw.parse()
    text = joined_text(await chat_chunks(parsed)) if stream else parsed.choices[0].message.content
    assert text == "Hello! You said: hi there"
    assert len(chat_requests(gw.fake)) == 1
    assert chat_requests(second)[0].json["model"] == "gpt-4o"


async def test_client_error_from_the_first_is_returned_without_fallback(gw, aiohttp_server):
    second = await _two_step_combo(gw, aiohttp_server)
    gw.fake.script.append(error(400, "Invalid value for 'temperature'.",
                                code="invalid_value", param="temperature"))
    with pytest.raises(openai.BadRequestError) as info:
        await sdk(gw).chat.completions.create(model="duo", messages=HI)
    err = info.value
    assert err.status_code == 400
    assert err.message.endswith("Invalid value for 'temperature'.")
    assert err.body["message"] == "Invalid value for 'temperature'."
    assert err.body["type"] == "invalid_request_error"
    assert err.code == "invalid_value"
    assert err.param == "temperature"
    assert not chat_requests(second)


async def test_all_targets_failing_gives_503_naming_each(gw, aiohttp_server):
    second = await _two_step_combo(gw, aiohttp_server)
    gw.fake.script.append(error(500, "first broke"))
    second.script.append(error(429, "second is busy", headers={"Retry-After": "3"}))
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(gw).chat.completions.create(model="duo", messages=HI)
    err = info.value
    assert err.status_code == 503
    assert err.code == "all_targets_failed"
    assert "first broke" in err.message and "second is busy" in err.message
    assert err.response.headers["Retry-After"] == "3"


# ----------------------------------------------------------------------------- request log

async def test_request_log_records_each_request(gw):
    client = sdk(gw)
    plain = await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    stream = await client.chat.completions.create(
        model="up/gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True})
    usage = next(c.usage for c in await chat_chunks(stream) if c.usage)
    hidden = await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                                  stream=True)
    await chat_chunks(hidden)
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="nope/x", messages=HI)

    resp = await gw.client.get("/api/requests", headers=gw.admin_headers)
    assert resp.status == 200
    records = (await resp.json())["requests"]
    assert len(records) == 4
    failed, streamed_hidden, streamed, first = records  # newest first
    assert first["status"] == 200 and not first["stream"]
    assert first["model_requested"] == "up/gpt-4o-mini"
    assert first["model"] == "gpt-4o-mini" and first["provider"] == "up"
    assert first["connection_id"] == gw.connection["id"]
    assert first["prompt_tokens"] == plain.usage.prompt_tokens
    assert first["completion_tokens"] == plain.usage.completion_tokens
    assert first["latency_ms"] > 0 and first["error"] is None
    assert first["endpoint"] == "chat.completions"
    assert first["attempts"] == 1

    assert streamed["status"] == 200 and streamed["stream"]
    assert streamed["model"] == "gpt-4o" and streamed["provider"] == "up"
    assert streamed["prompt_tokens"] == usage.prompt_tokens
    assert streamed["completion_tokens"] == usage.completion_tokens
    assert streamed["latency_ms"] >= streamed["ttfb_ms"] > 0

    # usage the gateway asked for on the client's behalf is still recorded
    assert streamed_hidden["stream"] and streamed_hidden["status"] == 200
    assert streamed_hidden["completion_tokens"] and streamed_hidden["prompt_tokens"]

    assert failed["status"] == 400 and failed["error"]
    assert failed["model_requested"] == "nope/x"
    assert all(len(r["request_id"]) >= 16 for r in records)


async def test_request_log_records_the_key_and_the_fallback(gw, aiohttp_server):
    await _two_step_combo(gw, aiohttp_server)
    key = await gw.create_key("client")
    gw.fake.script.append(error(429))
    await sdk(gw, key).chat.completions.create(model="duo", messages=HI)
    records = (await (await gw.client.get("/api/requests", headers=gw.admin_headers)).json())
    (record,) = records["requests"]
    assert record["attempts"] == 2 and record["provider"] == "b" and record["status"] == 200
    keys = (await (await gw.client.get("/api/keys", headers=gw.admin_headers)).json())["keys"]
    client_key = next(k for k in keys if k["name"] == "client")
    assert record["api_key_id"] == client_key["id"]
