"""Provider type ``ollama`` against FakeOllama, and the fake against the ollama SDK."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from typing import Any

import aiohttp
import ollama
import pytest
from aiohttp import web
from fakes.ollama_upstream import (
    FakeOllama,
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
from omniroute.providers.base import ProviderContext, Timeouts, UpstreamCall, UpstreamResponse
from omniroute.providers.framing import NDJSON, LineSplitter
from omniroute.providers.ollama import OllamaProvider
from omniroute.storage.store import Connection

MODEL = "llama3.2"
HI = [{"role": "user", "content": "hi there"}]
WEATHER = [{"role": "user", "content": "What's the weather in Paris?"}]
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeOllama:
    fake = FakeOllama()
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake


def provider(
    http: aiohttp.ClientSession, base_url: str, *, credentials: dict[str, Any] | None = None,
    first_byte: float = 2.0, idle: float = 2.0, **settings: Any,
) -> OllamaProvider:
    settings, creds = OllamaProvider.configure({"base_url": base_url, **settings},
                                               credentials or {}, None)
    conn = Connection("conn_o", "ollama", "fake-ollama", "ol", settings, creds)
    timeouts = Timeouts(connect=2, first_byte=first_byte, idle=idle, total=20)
    return OllamaProvider(conn, ProviderContext(http, timeouts, "omniroute-test"))


def call(messages: list[dict[str, Any]] = HI, *, stream: bool = False, model: str = MODEL,
         **extra: Any) -> UpstreamCall:
    return UpstreamCall({"model": "ignored", "messages": messages, **extra}, model, stream)


def frames_of(up: UpstreamResponse) -> Any:
    """The answer's stream (it must be one)."""
    assert up.events is not None, "expected a stream"
    return up.events


async def lines(up: Any) -> list[dict[str, Any]]:
    async with aclosing(frames_of(up)) as frames:
        return [json.loads(f) async for f in frames]


# ----------------------------------------------------------------------------- framing

def test_line_splitter_keeps_lines_whole() -> None:
    splitter = LineSplitter()
    got = list(splitter.feed(b'{"a":1}\n{"b"')) + list(splitter.feed(b':2}\n\n  \n{"c":3}'))
    assert got == [b'{"a":1}\n', b'{"b":2}\n']
    assert splitter.tail() == b'{"c":3}' and splitter.tail() == b""
    assert NDJSON.json(b'{"done": true}\n') == {"done": True}
    assert NDJSON.well_formed(b'{"x":1}\n') and not NDJSON.well_formed(b"<html>\n")


# ----------------------------------------------------------------------------- the fake vs the SDK

async def test_fake_speaks_the_ollama_sdk(fake: FakeOllama) -> None:
    client = ollama.AsyncClient(host=fake.base_url)
    r = await client.chat(model=MODEL, messages=HI)
    assert r.message.role == "assistant" and r.message.content == "Hello! You said: hi there"
    assert r.done and r.done_reason == "stop" and r.prompt_eval_count and r.eval_count
    assert r.model == MODEL and r.created_at

    parts = [p async for p in await client.chat(
        model="qwen3:8b", messages=WEATHER, tools=[WEATHER_TOOL], think=True, stream=True)]
    thinking = "".join(p.message.thinking or "" for p in parts)
    assert thinking.startswith("Okay") and parts[-1].done and not any(p.done for p in parts[:-1])
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    assert parts[-1].eval_count and parts[-1].prompt_eval_count

    # the call (arguments as an object) and the tool's answer go back in the next turn
    history: list[dict[str, Any]] = [*WEATHER, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C", "tool_name": "get_weather"}]
    assert (await client.chat(model="qwen3:8b", messages=history, tools=[WEATHER_TOOL])).message

    fake.script.append(mid_stream_error(2, "llama runner process has terminated"))
    with pytest.raises(ollama.ResponseError) as info:
        async for _ in await client.chat(model=MODEL, messages=HI, stream=True):
            pass
    assert info.value.error == "llama runner process has terminated"
    with pytest.raises(ollama.ResponseError) as nf:
        await client.chat(model="mistral", messages=HI)
    assert nf.value.status_code == 404 and "try pulling it first" in nf.value.error
    with pytest.raises(ollama.ResponseError) as think:
        await client.chat(model=MODEL, messages=HI, think=True)
    assert think.value.status_code == 400 and "does not support thinking" in think.value.error
    assert [m.model for m in (await client.list()).models] == [
        "llama3.2:latest", "qwen3:8b", "gpt-oss:20b"]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"messages": HI}, 400, "model is required"),
    ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
     400, "cannot unmarshal array into Go struct field Message.messages.content of type string"),
    ({"model": MODEL, "messages": [*HI, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": "{}"}}]}]}, 400,
     "cannot unmarshal string into Go struct field ToolCallFunction"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "x", "images": [{"url": "x"}]}]},
     400, "illegal base64 data"),
])
async def test_fake_refuses_what_the_real_server_refuses(
    fake: FakeOllama, http: aiohttp.ClientSession, body: dict[str, Any], status: int, message: str
) -> None:
    async with http.post(f"{fake.base_url}/api/chat", json=body) as resp:
        data = await resp.json()
    assert resp.status == status and message in data["error"]


# ----------------------------------------------------------------------------- JSON and streams

async def test_json_reply_says_stream_false(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    up = await provider(http, fake.base_url).chat(call())
    assert up.status == 200 and up.body is not None and up.events is None
    doc = json.loads(up.body)
    assert doc["done"] is True and doc["message"]["content"] == "Hello! You said: hi there"
    rec = fake.requests[-1]
    assert (rec.method, rec.path) == ("POST", "/api/chat")
    assert rec.json["stream"] is False and rec.json["model"] == MODEL  # Ollama streams by default
    assert "authorization" not in rec.headers


async def test_ndjson_stream(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.script.append(reply(text="The quick brown fox", chunks=4, thinking="Hmm."))
    up = await provider(http, fake.base_url).chat(call(stream=True, model="qwen3:8b", think=True))
    got = await lines(up)
    assert fake.requests[-1].json["stream"] is True
    assert fake.requests[-1].headers["accept"] == "application/x-ndjson"
    assert [bool(g["message"].get("thinking")) for g in got[:-1]] == [True] * 4 + [False] * 4
    assert "".join(g["message"]["content"] for g in got) == "The quick brown fox"
    assert [g["done"] for g in got] == [False] * 8 + [True]
    final = got[-1]
    assert final["done_reason"] == "stop" and final["prompt_eval_count"] > 0
    assert final["eval_count"] > 0 and final["total_duration"] > 0


async def test_frames_are_whole_lines(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    up = await provider(http, fake.base_url).chat(call(stream=True))
    async with aclosing(frames_of(up)) as frames:
        raw = [f async for f in frames]
    assert all(f.endswith(b"\n") and f.count(b"\n") == 1 for f in raw)


async def test_tool_call_stream(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.script.append(reply(tool_calls=2))
    got = await lines(await provider(http, fake.base_url).chat(
        call(WEATHER, stream=True, tools=[WEATHER_TOOL])))
    calls = got[-2]["message"]["tool_calls"]
    assert [c["function"]["index"] for c in calls] == [0, 1]
    assert calls[0]["function"] == {"index": 0, "name": "get_weather",
                                    "arguments": {"city": "Paris"}}
    assert got[-1]["done"] is True


# ----------------------------------------------------------------------------- errors

async def test_not_found_error(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call(stream=True, model="mistral"))
    assert info.value.status == 404
    assert info.value.message == 'model "mistral" not found, try pulling it first'


async def test_server_error_keeps_hints(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.script.append(error(503, "server busy, please try again.  maximum pending requests "
                             "exceeded", headers={"Retry-After": "3"}))
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call())
    assert info.value.status == 503 and info.value.retriable
    assert info.value.message.startswith("server busy")
    assert info.value.headers == {"Retry-After": "3"} and info.value.upstream_headers == {
        "retry-after": "3"}


async def test_translation_bug_shows_as_400(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    bad = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call(bad))
    assert info.value.status == 400 and "cannot unmarshal array" in info.value.message


async def test_cloud_key_as_bearer(aiohttp_server: Any, http: aiohttp.ClientSession) -> None:
    fake = FakeOllama(api_key="ollama-cloud-key")
    server = await aiohttp_server(fake.app)
    base = str(server.make_url(""))
    await provider(http, base, credentials={"api_key": "ollama-cloud-key"}).chat(call())
    assert fake.requests[-1].headers["authorization"] == "Bearer ollama-cloud-key"
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, base).chat(call())
    assert info.value.status == 401 and info.value.code == "upstream_auth_failed"


async def test_error_as_first_line(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.script.append(mid_stream_error(0, "llama runner process has terminated"))
    with pytest.raises(UpstreamError) as info:
        await provider(http, fake.base_url).chat(call(stream=True))
    assert info.value.status == 502
    assert info.value.message == "upstream stream error: llama runner process has terminated"


async def test_error_later_in_the_stream_is_relayed(fake: FakeOllama,
                                                    http: aiohttp.ClientSession) -> None:
    fake.script.append(mid_stream_error(2, "boom"))
    got = await lines(await provider(http, fake.base_url).chat(call(stream=True)))
    assert len(got) == 3 and got[-1] == {"error": "boom"}


@pytest.mark.parametrize("stream", [False, True])
async def test_garbage_is_a_bad_gateway(fake: FakeOllama, http: aiohttp.ClientSession,
                                        stream: bool) -> None:
    fake.script.append(garbage())
    with pytest.raises(UpstreamError) as info:
        await provider(http, fake.base_url).chat(call(stream=stream))
    assert info.value.status == 502
    assert ("malformed ndjson stream" if stream else "not JSON") in info.value.message


# ----------------------------------------------------------------------------- time bounds

@pytest.mark.parametrize("behaviour", [hang_before_headers(10), hang_mid_stream(0, 10)],
                         ids=["before_headers", "after_headers"])
async def test_first_line_timeout(fake: FakeOllama, http: aiohttp.ClientSession,
                                  behaviour: Any) -> None:
    fake.script.append(behaviour)
    with pytest.raises(UpstreamTimeout):
        await provider(http, fake.base_url, first_byte=0.3).chat(call(stream=True))
    await asyncio.wait_for(fake.stream_closed.wait(), 2)


async def test_idle_timeout_mid_stream(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.script.append(hang_mid_stream(2, 10))
    up = await provider(http, fake.base_url, idle=0.3).chat(call(stream=True))
    with pytest.raises(UpstreamTimeout) as info:
        await lines(up)
    assert "stalled" in info.value.message
    await asyncio.wait_for(fake.stream_closed.wait(), 2)


async def test_drop_mid_stream(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    fake.script.append(drop_mid_stream(2))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    with pytest.raises(UpstreamError) as info:
        await lines(up)
    assert "broke" in info.value.message and fake.closed_streams == 0


async def test_early_close_closes_the_upstream(
    fake: FakeOllama, http: aiohttp.ClientSession
) -> None:
    fake.script.append(slow(0.2))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    async with aclosing(frames_of(up)) as frames:
        assert json.loads(await anext(frames))["done"] is False
    await asyncio.wait_for(fake.stream_closed.wait(), 2)
    assert fake.closed_streams == 1


# ------------------------------------------------------------------------- models and configuration

async def test_list_models_from_tags(fake: FakeOllama, http: aiohttp.ClientSession) -> None:
    p = provider(http, fake.base_url, models=["qwen3:8b", "extra:1b"])
    assert await p.list_models() == ["qwen3:8b", "extra:1b", "llama3.2:latest", "gpt-oss:20b"]
    assert fake.requests[-1].path == "/api/tags"


async def test_list_models_unreachable_is_an_error(aiohttp_server: Any,
                                                   http: aiohttp.ClientSession) -> None:
    server = await aiohttp_server(web.Application())
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, str(server.make_url(""))).list_models()
    assert info.value.status == 404


def test_configure_and_presets() -> None:
    presets = OllamaProvider.presets
    assert presets["ollama-local"].base_url == "http://127.0.0.1:11434"
    assert not presets["ollama-local"].needs_api_key
    assert presets["ollama-cloud"].base_url == "https://ollama.com"
    settings, creds = OllamaProvider.configure({}, {}, None)  # no key: a local server
    assert settings["base_url"] == "http://127.0.0.1:11434" and creds == {}
    settings, _ = OllamaProvider.configure({"base_url": "http://gpu-box:11434/api/"}, {}, None)
    assert settings["base_url"] == "http://gpu-box:11434"
    with pytest.raises(ValueError, match=r"ollama-cloud|ollama connections need: api_key"):
        OllamaProvider.configure({}, {}, presets["ollama-cloud"])
    with pytest.raises(ValueError, match="OpenAI-compatible"):
        OllamaProvider.configure({"base_url": "http://localhost:11434/v1"}, {}, None)


def test_registered_as_a_builtin_plugin() -> None:
    plugins = load_plugins()
    assert plugins.providers["ollama"] is OllamaProvider
    info = plugins.info("ollama")
    assert info is not None and info.module == "omniroute.providers.ollama"
