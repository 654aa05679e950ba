"""Provider type ``gemini`` against FakeGemini, and the fake against the google-genai SDK."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from typing import Any

import aiohttp
import pytest
from fakes.gemini_upstream import (
    FakeGemini,
    drop_mid_stream,
    error,
    garbage,
    hang_before_headers,
    hang_mid_stream,
    mid_stream_error,
    reply,
    slow,
)
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from omniroute.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from omniroute.plugins import load_plugins
from omniroute.providers.base import ProviderContext, Timeouts, UpstreamCall, UpstreamResponse
from omniroute.providers.gemini import GeminiProvider
from omniroute.sse import event_data
from omniroute.storage.store import Connection

KEY = "AIza-upstream-test"
MODEL = "gemini-2.5-flash"
HI = {"contents": [{"role": "user", "parts": [{"text": "hi there"}]}]}
WEATHER_DECL = {"name": "get_weather", "description": "Get the weather", "parameters": {
    "type": "OBJECT", "properties": {"location": {"type": "STRING"},
                                     "unit": {"type": "STRING", "enum": ["c", "f"]}}}}
WEATHER = {"contents": [{"role": "user", "parts": [{"text": "What's the weather in Paris?"}]}],
           "tools": [{"functionDeclarations": [WEATHER_DECL]}]}


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeGemini:
    fake = FakeGemini(api_key=KEY)
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake


def provider(http: aiohttp.ClientSession, base_url: str, *, key: str = KEY,
             first_byte: float = 2.0, idle: float = 2.0, **settings: Any) -> GeminiProvider:
    settings, creds = GeminiProvider.configure({"base_url": base_url, **settings},
                                               {"api_key": key}, None)
    conn = Connection("conn_g", "gemini", "fake-gemini", "gem", settings, creds)
    timeouts = Timeouts(connect=2, first_byte=first_byte, idle=idle, total=20)
    return GeminiProvider(conn, ProviderContext(http, timeouts, "omniroute-test"))


def call(body: dict[str, Any] = HI, *, stream: bool = False, model: str = MODEL) -> UpstreamCall:
    return UpstreamCall(dict(body), model, stream)


def frames_of(up: UpstreamResponse) -> Any:
    """The answer's stream (it must be one)."""
    assert up.events is not None, "expected a stream"
    return up.events


async def chunks(up: Any) -> list[dict[str, Any]]:
    async with aclosing(frames_of(up)) as events:
        return [json.loads(event_data(e) or b"null") async for e in events]


def sdk(fake: FakeGemini, key: str = KEY) -> genai.Client:
    options = types.HttpOptions(base_url=fake.base_url, api_version="v1beta")
    return genai.Client(api_key=key, http_options=options)


# ----------------------------------------------------------------------------- the fake vs the SDK

async def test_fake_speaks_the_genai_sdk(fake: FakeGemini) -> None:
    client = sdk(fake)
    r = await client.aio.models.generate_content(model=MODEL, contents="hi there")
    assert r.text == "Hello! You said: hi there" and r.response_id and r.model_version == MODEL
    assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.STOP
    usage = r.usage_metadata
    assert usage and usage.prompt_token_count and usage.candidates_token_count
    assert usage.total_token_count == usage.prompt_token_count + usage.candidates_token_count
    assert fake.requests[-1].headers["x-goog-api-key"] == KEY

    fake.script.append(reply(usage={"cachedContentTokenCount": 7}))
    tool = types.Tool(function_declarations=[types.FunctionDeclaration(
        name="get_weather", description="Get the weather",
        parameters=types.Schema(type=types.Type.OBJECT,
                                properties={"location": types.Schema(type=types.Type.STRING)}))])
    config = types.GenerateContentConfig(
        tools=[tool], thinking_config=types.ThinkingConfig(include_thoughts=True),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True))
    question = "What's the weather in Paris?"
    stream = await client.aio.models.generate_content_stream(
        model="gemini-3-pro-preview", contents=question, config=config)
    got = [c async for c in stream]
    thoughts = [p.text for c in got for p in c.candidates[0].content.parts if p.thought]  # type: ignore[index, union-attr]
    assert "".join(thoughts).startswith("**Considering")  # type: ignore[arg-type]
    last = got[-1]
    assert last.function_calls and last.function_calls[0].name == "get_weather"
    assert last.function_calls[0].args == {"location": "Paris"}
    call_part = last.candidates[0].content.parts[0]  # type: ignore[index, union-attr]
    assert call_part.thought_signature  # bytes: the SDK checked it is base64
    assert last.usage_metadata.thoughts_token_count > 0  # type: ignore[operator, union-attr]
    assert last.usage_metadata.cached_content_token_count == 7  # type: ignore[union-attr]
    assert all(c.candidates[0].finish_reason is None for c in got[:-1])  # type: ignore[index]

    # the call, with its signature, and the function's answer go back in the next turn
    history = [types.Content(role="user", parts=[types.Part(text=question)]),
               last.candidates[0].content,  # type: ignore[index]
               types.Content(role="user", parts=[types.Part.from_function_response(
                   name="get_weather", response={"temp": 18})])]
    again = await client.aio.models.generate_content(
        model="gemini-3-pro-preview", contents=history, config=config)
    assert again.text and again.text.startswith("Hello!")

    fake.script.append(error(429))
    with pytest.raises(genai_errors.ClientError) as info:
        await client.aio.models.generate_content(model=MODEL, contents="hi")
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    with pytest.raises(genai_errors.ClientError) as nf:
        await client.aio.models.generate_content(model="gemini-9", contents="hi")
    assert nf.value.code == 404
    with pytest.raises(genai_errors.ClientError) as bad:
        await sdk(fake, "AIza-wrong").aio.models.generate_content(model=MODEL, contents="hi")
    assert bad.value.code == 400 and "API key not valid" in (bad.value.message or "")

    fake.script.append(mid_stream_error(2))
    with pytest.raises(genai_errors.APIError):
        async for _ in await client.aio.models.generate_content_stream(model=MODEL, contents="hi"):
            pass
    names = [m.name async for m in await client.aio.models.list()]
    assert names[:3] == ["models/gemini-2.5-flash", "models/gemini-2.5-pro",
                         "models/gemini-3-pro-preview"]


@pytest.mark.parametrize(("body", "message"), [
    ({**HI, "model": MODEL}, 'Unknown name "model": Cannot find field.'),
    ({"messages": [{"role": "user", "content": "hi"}]}, 'Unknown name "messages"'),
    ({"contents": []}, "contents is not specified"),
    ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]},
     "Please use a valid role: user, model."),
    ({"contents": [{"role": "user", "parts": [{"type": "text", "text": "x"}]}]},
     "Unknown name \"type\" at 'contents[0].parts[0]'"),
    ({"contents": [{"role": "user", "parts": []}]}, "contents.parts must not be empty"),
    ({"contents": [*HI["contents"], {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": "{}"}}]}]}, "function_call.args"),
    ({"contents": [*HI["contents"],
                   {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}},
                                                "thoughtSignature": "c2lnbmF0dXJl"},
                                               {"functionCall": {"name": "g", "args": {}}}]},
                   {"role": "user", "parts": [{"functionResponse": {"name": "f",
                                                                    "response": {}}}]}]},
     "number of function response parts is equal to the number of function call parts"),
    ({"contents": [*HI["contents"], {"role": "model", "parts": [
        {"functionCall": {"name": "f", "args": {}}}]}]}, "missing a thought_signature"),
    ({**HI, "systemInstruction": "be brief"}, "Invalid value at 'system_instruction'"),
    ({**HI, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "Unknown name \"type\" at 'tools[0]'"),
])
async def test_fake_refuses_what_the_real_api_refuses(
    fake: FakeGemini, http: aiohttp.ClientSession, body: dict[str, Any], message: str
) -> None:
    url = f"{fake.base_url}/v1beta/models/gemini-3-pro-preview:generateContent"
    async with http.post(url, json=body, headers={"x-goog-api-key": KEY}) as resp:
        data = await resp.json()
    assert resp.status == 400 and data["error"]["status"] == "INVALID_ARGUMENT"
    assert data["error"]["code"] == 400 and message in data["error"]["message"]


# ----------------------------------------------------------------------------- JSON and streams

async def test_json_reply_model_in_the_url(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    up = await provider(http, fake.base_url).chat(call({**HI, "model": "x"}))
    assert up.status == 200 and up.body is not None and up.events is None
    doc = json.loads(up.body)
    assert doc["candidates"][0]["content"]["parts"] == [{"text": "Hello! You said: hi there"}]
    rec = fake.requests[-1]
    assert rec.path == "/v1beta/models/gemini-2.5-flash:generateContent" and rec.query == {}
    assert rec.headers["x-goog-api-key"] == KEY and "model" not in rec.json
    assert "authorization" not in rec.headers


async def test_stream_reply(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    fake.script.append(reply(text="The quick brown fox", chunks=4, thinking="Hmm, foxes."))
    up = await provider(http, fake.base_url).chat(call(stream=True, model="models/" + MODEL))
    got = await chunks(up)
    rec = fake.requests[-1]
    assert rec.path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    assert rec.query == {"alt": "sse"} and rec.headers["accept"] == "text/event-stream"
    parts = [c["candidates"][0]["content"]["parts"][0] for c in got]
    assert [p.get("thought", False) for p in parts] == [True] * 4 + [False] * 4
    assert "".join(p["text"] for p in parts[4:]) == "The quick brown fox"
    assert got[-1]["candidates"][0]["finishReason"] == "STOP"
    assert all("finishReason" not in c["candidates"][0] for c in got[:-1])
    usage = got[-1]["usageMetadata"]
    assert usage["thoughtsTokenCount"] > 0 and usage["totalTokenCount"] == (
        usage["promptTokenCount"] + usage["candidatesTokenCount"] + usage["thoughtsTokenCount"])
    assert len({c["responseId"] for c in got}) == 1


async def test_tool_call_stream(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    fake.script.append(reply(tool_calls=2))
    got = await chunks(await provider(http, fake.base_url).chat(call(WEATHER, stream=True)))
    assert len(got) == 1  # function calls come whole, in one chunk
    parts = got[0]["candidates"][0]["content"]["parts"]
    assert [p["functionCall"]["name"] for p in parts] == ["get_weather", "get_weather"]
    assert parts[0]["functionCall"]["args"] == {"location": "Paris", "unit": "c"}
    assert all(p["thoughtSignature"] for p in parts)


# ----------------------------------------------------------------------------- errors

async def test_rate_limit_error_keeps_the_retry_hint(fake: FakeGemini,
                                                     http: aiohttp.ClientSession) -> None:
    fake.script.append(error(429, retry_delay="31.2s", headers={"x-ratelimit-remaining": "0"}))
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call(stream=True))
    err = info.value
    assert err.status == 429 and err.code == "RESOURCE_EXHAUSTED" and err.retriable
    assert err.type == "rate_limit_error" and err.message.startswith("You exceeded your current")
    assert err.headers == {"Retry-After": "32"}  # from RetryInfo, rounded up
    assert err.upstream_headers == {"retry-after": "32", "x-ratelimit-remaining": "0"}


async def test_upstream_retry_after_header_wins(fake: FakeGemini,
                                                http: aiohttp.ClientSession) -> None:
    fake.script.append(error(429, retry_delay="31s", headers={"Retry-After": "5"}))
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call())
    assert info.value.headers == {"Retry-After": "5"}


@pytest.mark.parametrize(("behaviour", "status", "code"), [
    (error(503, "The model is overloaded. Please try again later."), 503, "UNAVAILABLE"),
    (error(500, "An internal error has occurred."), 500, "INTERNAL"),
    (error(400, "Request contains an invalid argument."), 400, "INVALID_ARGUMENT"),
])
async def test_status_errors(fake: FakeGemini, http: aiohttp.ClientSession, behaviour: Any,
                             status: int, code: str) -> None:
    fake.script.append(behaviour)
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call())
    assert (info.value.status, info.value.code) == (status, code)
    assert info.value.message == behaviour.error["message"] and info.value.upstream_headers == {}


async def test_unknown_body_field_shows_as_400(fake: FakeGemini,
                                              http: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call({**HI, "stream": True}))
    assert info.value.status == 400 and 'Unknown name "stream"' in info.value.message


async def test_bad_key_is_the_gateways_problem(
    fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url, key="AIzaSyD-secret-key-123").chat(call())
    assert info.value.status == 401 and info.value.code == "upstream_auth_failed"
    assert "API key not valid" in info.value.message and "secret" not in info.value.message


async def test_unknown_model_is_404(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call(model="gemini-9"))
    assert info.value.status == 404 and info.value.code == "NOT_FOUND"


async def test_error_as_first_chunk_is_a_status_error(fake: FakeGemini,
                                                      http: aiohttp.ClientSession) -> None:
    fake.script.append(mid_stream_error(0, "The model is overloaded.", 503, "UNAVAILABLE"))
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url).chat(call(stream=True))
    assert info.value.status == 503 and info.value.code == "UNAVAILABLE"
    assert "The model is overloaded." in info.value.message


async def test_error_later_in_the_stream_is_relayed(fake: FakeGemini,
                                                    http: aiohttp.ClientSession) -> None:
    fake.script.append(mid_stream_error(2))
    got = await chunks(await provider(http, fake.base_url).chat(call(stream=True)))
    assert len(got) == 3 and got[-1]["error"]["status"] == "INTERNAL"


@pytest.mark.parametrize("stream", [False, True])
async def test_garbage_is_a_bad_gateway(fake: FakeGemini, http: aiohttp.ClientSession,
                                        stream: bool) -> None:
    fake.script.append(garbage())
    with pytest.raises(UpstreamError) as info:
        await provider(http, fake.base_url).chat(call(stream=stream))
    assert info.value.status == 502


# ----------------------------------------------------------------------------- time bounds

@pytest.mark.parametrize("behaviour", [hang_before_headers(10), hang_mid_stream(0, 10)],
                         ids=["before_headers", "after_headers"])
async def test_first_event_timeout(fake: FakeGemini, http: aiohttp.ClientSession,
                                   behaviour: Any) -> None:
    fake.script.append(behaviour)
    with pytest.raises(UpstreamTimeout):
        await provider(http, fake.base_url, first_byte=0.3).chat(call(stream=True))
    await asyncio.wait_for(fake.stream_closed.wait(), 2)


async def test_idle_timeout_mid_stream(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    fake.script.append(hang_mid_stream(2, 10))
    up = await provider(http, fake.base_url, idle=0.3).chat(call(stream=True))
    with pytest.raises(UpstreamTimeout) as info:
        await chunks(up)
    assert "stalled" in info.value.message
    await asyncio.wait_for(fake.stream_closed.wait(), 2)


async def test_drop_mid_stream(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    fake.script.append(drop_mid_stream(2))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    with pytest.raises(UpstreamError) as info:
        await chunks(up)
    assert "broke" in info.value.message and fake.closed_streams == 0


async def test_early_close_closes_the_upstream(
    fake: FakeGemini, http: aiohttp.ClientSession
) -> None:
    fake.script.append(slow(0.2))
    up = await provider(http, fake.base_url).chat(call(stream=True))
    async with aclosing(frames_of(up)) as events:
        await anext(events)
    await asyncio.wait_for(fake.stream_closed.wait(), 2)
    assert fake.closed_streams == 1


# ------------------------------------------------------------------------- models and configuration

async def test_list_models_pages_and_keeps_generative_ones(aiohttp_server: Any,
                                                           http: aiohttp.ClientSession) -> None:
    fake = FakeGemini(api_key=KEY, models=["g1", "g2", "g3"], other_models=["embed-1"],
                      image_models=["imagen-3.0-generate-002"], max_page=2)
    server = await aiohttp_server(fake.app)
    p = provider(http, str(server.make_url("")), models=["tuned-1"])
    # Imagen is listed for its ``predict`` method (image generation), an embedding model for
    # ``embedContent``, each typed as such
    assert await p.list_models() == ["tuned-1", "g1", "g2", "g3", "embed-1",
                                     "imagen-3.0-generate-002"]
    assert p.model_type("imagen-3.0-generate-002") == "image" and p.model_type("g1") == "chat"
    assert p.model_type("embed-1") == "embedding"
    assert [r.query.get("pageToken") for r in fake.requests] == [None, "2", "4"]
    assert all(r.headers["x-goog-api-key"] == KEY for r in fake.requests)


async def test_list_models_auth_failure_is_raised(fake: FakeGemini,
                                                  http: aiohttp.ClientSession) -> None:
    with pytest.raises(UpstreamStatusError) as info:
        await provider(http, fake.base_url, key="wrong").list_models()
    assert info.value.status == 401


async def test_base_url_with_version(fake: FakeGemini, http: aiohttp.ClientSession) -> None:
    p = provider(http, fake.base_url + "/v1")
    await p.chat(call())
    assert fake.requests[-1].path == f"/v1/models/{MODEL}:generateContent"


def test_configure_and_presets() -> None:
    preset = GeminiProvider.presets["gemini"]
    assert preset.base_url == "https://generativelanguage.googleapis.com"
    settings, _ = GeminiProvider.configure({}, {"api_key": "k"}, preset)
    assert settings["base_url"] == preset.base_url
    settings, _ = GeminiProvider.configure({}, {"api_key": "k"}, None)
    assert settings["base_url"] == preset.base_url
    with pytest.raises(ValueError, match="gemini connections need: api_key"):
        GeminiProvider.configure({}, {}, None)
    with pytest.raises(ValueError, match="base_url must be an http"):
        GeminiProvider.configure({"base_url": "generativelanguage"}, {"api_key": "k"}, None)


def test_registered_as_a_builtin_plugin() -> None:
    plugins = load_plugins()
    assert plugins.providers["gemini"] is GeminiProvider
    info = plugins.info("gemini")
    assert info is not None and info.distribution == "omniroute"
