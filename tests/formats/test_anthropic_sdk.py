"""The official anthropic SDK judges what the ``anthropic`` format writes, directly and
through the gateway."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic_support import AN, HI, RESPONSES, decode
from helpers_openai_anthropic import (
    FORMATS,
    aiter,
    collect,
    frames_of,
    sse_app,
)

from omniroute.errors import (
    ServiceUnavailable,
)
from omniroute.formats import canonical as c


def _sdk(server: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="sk-test",
                                    max_retries=0)


async def _stream_from_openai_upstream() -> tuple[list[bytes], c.Request]:
    path = Path(__file__).parent / "golden" / "openai_to_anthropic_stream_parallel_tool_calls.json"
    case = json.loads(path.read_text())
    request = decode(case["request"])
    events = FORMATS["openai"].decode_stream(aiter(frames_of(case["input"])))
    frames = await collect(AN.encode_stream(events, request))
    return [AN.keepalive_frame(), *frames], request  # type: ignore[list-item]


async def test_sdk_stream_helper_accepts_translated_stream(aiohttp_server: Any) -> None:
    frames, _ = await _stream_from_openai_upstream()
    server = await aiohttp_server(sse_app("/v1/messages", frames))
    seen: list[str] = []
    async with _sdk(server).messages.stream(model="m", max_tokens=100, messages=HI) as stream:
        async for event in stream:
            seen.append(event.type)
        message = await stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "Two cities."  # type: ignore[union-attr]
    assert [b.input for b in message.content[2:]] == [  # type: ignore[union-attr]
        {"location": "Boston, MA"}, {"location": "Paris, France"}]
    assert [b.id for b in message.content[2:]] == ["call_boston", "call_paris"]  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.output_tokens) == (18, 64, 51)
    assert "input_json" in seen and "thinking" in seen


async def test_sdk_parses_a_translated_json_answer(aiohttp_server: Any) -> None:
    body = AN.encode_response(RESPONSES[1], decode({"model": "m", "messages": HI}))
    server = await aiohttp_server(sse_app("/v1/messages", [], json_body=body))
    message = await _sdk(server).messages.create(model="m", max_tokens=10, messages=HI)
    assert [b.type for b in message.content] == ["thinking", "redacted_thinking", "text",
                                                 "tool_use"]
    assert message.content[0].signature == "sig"  # type: ignore[union-attr]
    assert message.content[3].input == {"a": 1}  # type: ignore[union-attr]
    assert message.usage.output_tokens == 7


async def test_sdk_sees_an_error_frame_mid_stream(aiohttp_server: Any) -> None:
    events = [c.Start("m1", "m"), c.PartStart(0, c.Text("")), c.TextDelta(0, "par")]
    frames = await collect(AN.encode_stream(aiter(events), decode({"model": "m", "messages": HI})))
    frames.append(AN.error_frame(ServiceUnavailable("upstream overloaded")))
    server = await aiohttp_server(sse_app("/v1/messages", frames))
    with pytest.raises(anthropic.APIStatusError) as info:
        async with _sdk(server).messages.stream(model="m", max_tokens=5, messages=HI) as stream:
            async for _ in stream:
                pass
    assert "upstream overloaded" in str(info.value)


async def test_sdk_stream_of_a_cross_format_round_trip(aiohttp_server: Any) -> None:
    """Anthropic upstream frames -> canonical -> Anthropic client frames, judged by the SDK."""
    path = Path(__file__).parent / "golden" / "anthropic_to_openai_stream_thinking_tool.json"
    upstream = frames_of(json.loads(path.read_text())["input"])
    events = await collect(AN.decode_stream(aiter(upstream)))
    frames = await collect(AN.encode_stream(aiter(copy.deepcopy(events)),
                                            decode({"model": "m", "messages": HI})))
    server = await aiohttp_server(sse_app("/v1/messages", frames))
    async with _sdk(server).messages.stream(model="m", max_tokens=100, messages=HI) as stream:
        message = await stream.get_final_message()
    assert message.content[0].signature == \
        "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."  # type: ignore[union-attr]
    assert message.content[2].input == {"location": "San Francisco, CA"}  # type: ignore[union-attr]
    assert message.usage.output_tokens == 89


# ---------------------------------------------------------------------------- through the gateway


async def test_anthropic_sdk_through_the_gateway_to_an_openai_upstream(gw: Any) -> None:
    """Claude-Code style: the Anthropic SDK -> /v1/messages -> an OpenAI-compatible upstream."""
    from fakes.openai_upstream import reply

    gw.fake.script.append(reply(tool_calls=2, chunks=3))
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="sk-client", max_retries=0)
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {
        "location": {"type": "string"}}}}, {"name": "get_time", "input_schema": {
            "type": "object", "properties": {"tz": {"type": "string"}}}}]
    async with client.messages.stream(model="up/gpt-4o-mini", max_tokens=256, tools=tools,
                                      system=[{"type": "text", "text": "be brief",
                                               "cache_control": {"type": "ephemeral"}}],
                                      messages=[{"role": "user", "content": "weather?"}]) as s:
        message = await s.get_final_message()
    assert [b.type for b in message.content if b.type == "tool_use"] == ["tool_use", "tool_use"]
    assert {b.name for b in message.content if b.type == "tool_use"} == {  # type: ignore[union-attr]
        "get_weather", "get_time"}
    assert message.stop_reason == "tool_use"
    sent = gw.fake.requests[-1].json
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["max_completion_tokens"] == 256
    answer = await client.messages.create(model="up/gpt-4o-mini", max_tokens=64,
                                          messages=[{"role": "user", "content": "hi there"}])
    assert answer.content[0].text.startswith("Hello")  # type: ignore[union-attr]
    assert answer.usage.input_tokens > 0
