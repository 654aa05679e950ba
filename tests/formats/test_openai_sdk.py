"""The ``openai`` format judged by the official SDK: translated streams, JSON answers,
its stream and parse helpers, and an error frame mid-stream."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from helpers_openai_anthropic import FORMATS, aiter, collect, frames_of, request_of, sse_app
from pydantic import BaseModel

from omniroute.errors import UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats.openai import OpenAIFormat

OA = OpenAIFormat()
HI = [{"role": "user", "content": "Hello"}]


def decode(body: dict[str, Any]) -> c.Request:
    return request_of("openai", body)


def _sdk(server: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="sk-test",
                              max_retries=0)


async def _translated_frames(include_usage: bool) -> tuple[list[bytes], c.Request]:
    path = Path(__file__).parent / "golden" / "anthropic_to_openai_stream_thinking_tool.json"
    case = json.loads(path.read_text())
    body = {"model": "m", "messages": HI, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    request = decode(body)
    events = FORMATS["anthropic"].decode_stream(aiter(frames_of(case["input"])))
    frames = await collect(OA.encode_stream(events, request))
    return [b": keep-alive\n\n", *frames], request  # comments as OpenRouter sends them


async def test_sdk_parses_a_translated_stream(aiohttp_server: Any) -> None:
    frames, _ = await _translated_frames(include_usage=True)
    server = await aiohttp_server(sse_app("/v1/chat/completions", frames))
    stream = await _sdk(server).chat.completions.create(
        model="m", messages=HI, stream=True, stream_options={"include_usage": True})
    chunks = [ch async for ch in stream]
    assert len({ch.id for ch in chunks}) == 1
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 572
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == 100  # type: ignore[union-attr]
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"


async def test_sdk_stream_helper_accumulates_tool_calls(aiohttp_server: Any) -> None:
    frames, _ = await _translated_frames(include_usage=False)
    server = await aiohttp_server(sse_app("/v1/chat/completions", frames))
    client = _sdk(server)
    helper = getattr(client.chat.completions, "stream", None) or \
        client.beta.chat.completions.stream  # type: ignore[attr-defined]
    async with helper(model="m", messages=HI) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    message = final.choices[0].message
    assert message.tool_calls is not None and len(message.tool_calls) == 1
    tool_call = message.tool_calls[0]
    assert tool_call.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert tool_call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(tool_call.function.arguments) == {  # type: ignore[union-attr]
        "location": "San Francisco, CA"}
    assert final.choices[0].finish_reason == "tool_calls"


async def test_sdk_parses_a_translated_json_answer(aiohttp_server: Any) -> None:
    path = Path(__file__).parent / "golden" / "anthropic_to_openai_response_tool_use.json"
    upstream = json.loads(path.read_text())["input"]
    response = FORMATS["anthropic"].decode_response(orjson.dumps(upstream))
    body = OA.encode_response(response, decode({"model": "m", "messages": HI}))
    server = await aiohttp_server(sse_app("/v1/chat/completions", [], json_body=body))
    answer = await _sdk(server).chat.completions.create(model="m", messages=HI)
    assert answer.choices[0].finish_reason == "tool_calls"
    assert answer.choices[0].message.tool_calls[0].function.arguments == \
        '{"location":"San Francisco, CA"}'  # type: ignore[union-attr, index]
    assert answer.usage is not None and answer.usage.prompt_tokens == 5146


async def test_sdk_parse_helper_with_structured_output(aiohttp_server: Any) -> None:
    class Person(BaseModel):
        name: str
        age: int

    response = c.Response("msg_1", "claude", [c.Text('{"name": "Jane", "age": 54}')],
                          "end_turn", usage=c.Usage(3, 4))
    body = OA.encode_response(response, decode({"model": "m", "messages": HI}))
    server = await aiohttp_server(sse_app("/v1/chat/completions", [], json_body=body))
    client = _sdk(server)
    parse = getattr(client.chat.completions, "parse", None) or \
        client.beta.chat.completions.parse  # type: ignore[attr-defined]
    answer = await parse(model="m", messages=HI, response_format=Person)
    assert answer.choices[0].message.parsed == Person(name="Jane", age=54)


async def test_sdk_sees_an_error_frame_mid_stream(aiohttp_server: Any) -> None:
    events = [c.Start("x", "m"), c.PartStart(0, c.Text("")), c.TextDelta(0, "par")]
    frames = await collect(OA.encode_stream(aiter(events), decode({"model": "m", "messages": HI})))
    frames.append(OA.error_frame(UpstreamError("upstream went away")))
    server = await aiohttp_server(sse_app("/v1/chat/completions", frames))
    stream = await _sdk(server).chat.completions.create(model="m", messages=HI, stream=True)
    with pytest.raises(openai.APIError, match="upstream went away"):
        async for _ in stream:
            pass
