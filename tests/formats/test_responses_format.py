"""The Responses format: golden translations, streams, the openai SDK, Codex quirks."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from aiohttp import web
from formats.responses_gemini_ollama_support import (
    aiter,
    check,
    collect,
    dump,
    fixed_ids,
    full_answer,
    load,
    raw,
    sse_events,
)

from omniroute.errors import InvalidRequest, UpstreamError, UpstreamStatusError
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.base import ClientRequest
from omniroute.formats.gemini import GeminiFormat
from omniroute.formats.ollama import OllamaFormat
from omniroute.formats.responses import ResponsesFormat
from omniroute.formats.tools import hosted_raw
from omniroute.sse import event_data, event_name

__all__ = ["fixed_ids"]
FMT = ResponsesFormat()


def decode(body: dict[str, Any]) -> c.Request:
    model, stream = FMT.inspect(body)
    return FMT.decode_request(ClientRequest(body, model, stream))


# ---------------------------------------------------------------------- golden files


@pytest.mark.parametrize("name", ["responses_request_text", "responses_request_function",
                                  "responses_request_image", "responses_request_codex"])
def test_golden_request(name: str) -> None:
    """Client body -> canonical -> the body a Responses upstream gets."""
    body = load(name)["input"]
    request = decode(body)
    check(name, "canonical", dump(request))
    check(name, "output", FMT.encode_request(request))


@pytest.mark.parametrize("name", ["responses_response_text", "responses_response_reasoning_tools",
                                  "responses_response_incomplete"])
def test_golden_response(name: str, fixed_ids: None) -> None:
    """Upstream JSON -> canonical -> the JSON a Responses client gets."""
    body = load(name)["input"]
    response = FMT.decode_response(orjson.dumps(body))
    check(name, "canonical", dump(response))
    request = decode({"model": response.model, "input": "hi"})
    check(name, "output", orjson.loads(FMT.encode_response(response, request)))


def test_text_response_round_trips_the_docs_example() -> None:
    body = load("responses_response_text")["input"]
    response = FMT.decode_response(orjson.dumps(body))
    request = decode({"model": "gpt-4.1", "input": "hi"})
    out = orjson.loads(FMT.encode_response(response, request))
    for key in ("id", "created_at", "status", "output", "usage", "model", "tools", "text"):
        assert out[key] == body[key], key


@pytest.mark.parametrize("name", ["responses_stream_text", "responses_stream_tools"])
async def test_golden_stream(name: str, fixed_ids: None) -> None:
    """Frames in -> events (golden) -> frames out (golden) -> the same events again."""
    frames = sse_events(raw(name, "sse"))
    events = await collect(FMT.decode_stream(aiter(frames)))
    check(name, "events", dump(events))
    request = decode({"model": "m", "input": "hi"})
    out = await collect(FMT.encode_stream(aiter(events), request))
    check(name, "frames", [orjson.loads(event_data(f) or b"null") for f in out])
    again = await collect(FMT.decode_stream(aiter(out)))
    assert dump(again)[1:] == dump(events)[1:]


async def test_stream_events_are_in_the_documented_order() -> None:
    request = decode({"model": "m", "input": "hi", "tools": [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]})
    frames = await collect(FMT.encode_stream(aiter(full_answer()), request))
    names = [event_name(f) for f in frames]
    assert names == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    payloads = [orjson.loads(event_data(f) or b"") for f in frames]
    assert [p["sequence_number"] for p in payloads] == list(range(len(frames)))
    assert all(p["type"] == n for p, n in zip(payloads, names, strict=True))
    done = payloads[-1]["response"]
    assert done["usage"] == {
        "input_tokens": 100, "input_tokens_details": {"cached_tokens": 30},
        "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 5},
        "total_tokens": 120}
    calls = [o for o in done["output"] if o["type"] == "function_call"]
    assert [(o["id"], o["call_id"], o["arguments"]) for o in calls] == [
        ("fc_1", "call_1", '{"location":"Paris"}'), ("fc_2", "call_2", "{}")]
    assert done["id"].startswith("resp_") and payloads[0]["response"]["id"] == done["id"]


async def test_max_tokens_ends_with_response_incomplete() -> None:
    events = [c.Start("r", "m"), c.PartStart(0, c.Text("")), c.TextDelta(0, "cut"),
              c.PartStop(0), c.Finish("max_tokens", c.Usage(1, 1))]
    frames = await collect(FMT.encode_stream(aiter(events), decode({"model": "m", "input": "x"})))
    last = orjson.loads(event_data(frames[-1]) or b"")
    assert last["type"] == "response.incomplete"
    assert last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert FMT.decode_response(orjson.dumps(last["response"])).stop_reason == "max_tokens"


# ---------------------------------------------------------------------- Codex quirks


def test_codex_request_decodes_every_item_kind() -> None:
    request = decode(load("responses_request_codex")["input"])
    assert request.system[0].text == "You are Codex, based on GPT-5."
    assert request.system[1].meta == {"responses": {"role": "developer"}}
    roles = [m.role for m in request.messages]
    assert roles == ["user", "user", "assistant", "tool", "assistant", "tool", "assistant", "user"]
    reasoning, call = request.messages[2].parts
    assert isinstance(reasoning, c.Reasoning) and reasoning.encrypted == "gAAAAABoEnc="
    assert reasoning.source == "responses" and reasoning.summary == ["**Listing files**"]
    assert isinstance(call, c.ToolCall) and call.id == "call_abc"
    namespaced = request.messages[4].parts[0]
    assert isinstance(namespaced, c.ToolCall) and namespaced.name == "mcp__docs__search"
    result = request.messages[5].parts[0]
    assert isinstance(result, c.ToolResult) and result.name == "mcp__docs__search"
    assert request.reasoning == c.ReasoningConfig(effort="medium", include_thoughts=True)
    assert request.response_format == c.ResponseFormat(
        "json_schema", load("responses_request_codex")["input"]["text"]["format"]["schema"],
        "answer", True)
    assert request.stream and request.max_tokens == 4096


def test_namespace_tools_are_flattened_and_hosted_tools_kept_aside() -> None:
    request = decode(load("responses_request_codex")["input"])
    names = [(t.name, hosted_raw(t) is not None) for t in request.tools]
    assert names == [("shell_command", False), ("mcp__docs__search", False),
                     ("apply_patch", False), ("web_search", True), ("image_generation", True)]
    # a non-Responses upstream never sees the hosted tools, and sees flat function names
    gemini = GeminiFormat().encode_request(request)
    declared = [d["name"] for d in gemini["tools"][0]["functionDeclarations"]]
    assert declared == ["shell_command", "mcp__docs__search", "apply_patch"]
    assert len(gemini["tools"]) == 1
    ollama = OllamaFormat().encode_request(request)
    assert [t["function"]["name"] for t in ollama["tools"]] == declared
    # a Responses upstream gets the namespace and the hosted tools back as they were
    assert FMT.encode_request(request)["tools"] == load("responses_request_codex")["input"]["tools"]


async def test_namespaced_call_from_another_upstream_goes_back_with_its_namespace() -> None:
    request = decode(load("responses_request_codex")["input"])
    answer = c.Response("r1", "m", [c.ToolCall("toolu_1", "mcp__docs__search", '{"q":"y"}'),
                                    c.ToolCall("toolu_2", "apply_patch",
                                               '{"input":"*** Begin Patch"}')], "tool_use")
    out = orjson.loads(FMT.encode_response(answer, request))["output"]
    assert out[0] | {} == {"id": "fc_1", "type": "function_call", "status": "completed",
                           "arguments": '{"q":"y"}', "call_id": "toolu_1", "name": "search",
                           "namespace": "mcp__docs__"}
    assert out[1]["type"] == "custom_tool_call" and out[1]["input"] == "*** Begin Patch"
    # streamed, the custom call's input arrives whole
    events = [c.Start("r", "m"), c.PartStart(0, c.ToolCall("toolu_2", "apply_patch")),
              c.ToolArgsDelta(0, '{"input":"*** Begin'), c.ToolArgsDelta(0, ' Patch"}'),
              c.PartStop(0), c.Finish("tool_use")]
    frames = await collect(FMT.encode_stream(aiter(events), request))
    data = [orjson.loads(event_data(f) or b"") for f in frames]
    assert [d["type"] for d in data][2:6] == [
        "response.output_item.added", "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done", "response.output_item.done"]
    assert data[4]["input"] == "*** Begin Patch"


def test_another_formats_reasoning_survives_a_trip_through_the_client() -> None:
    """An Anthropic signature rides in encrypted_content and comes back intact."""
    thinking = c.Reasoning("Let me think.", signature="EqQBCkYIBxgCKkB", source="anthropic")
    answer = c.Response("r1", "m", [thinking, c.Text("Hi")])
    request = decode({"model": "m", "input": "hi"})
    output = orjson.loads(FMT.encode_response(answer, request))["output"]
    assert output[0]["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    replay = decode({"model": "m", "input": [{"role": "user", "content": "hi"}, *output,
                                             {"role": "user", "content": "more"}]})
    back = replay.messages[1].parts[0]
    assert isinstance(back, c.Reasoning)
    assert (back.text, back.signature, back.source) == ("Let me think.", "EqQBCkYIBxgCKkB",
                                                        "anthropic")
    # ... and is never sent to a Responses upstream, which could not read it
    items = FMT.encode_request(replay)["input"]
    assert [i["type"] for i in items] == ["message", "message", "message"]


def test_own_reasoning_goes_back_to_a_responses_upstream() -> None:
    request = decode(load("responses_request_codex")["input"])
    items = FMT.encode_request(request)["input"]
    assert items[3] == {"type": "reasoning", "summary": [
        {"type": "summary_text", "text": "**Listing files**"}], "encrypted_content": "gAAAAABoEnc="}
    assert carry.unpack("gAAAAABoEnc=") is None


def test_system_prompt_and_developer_role_round_trip() -> None:
    body = {"model": "m", "instructions": "Be brief.", "input": [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "late system"}]}
    request = decode(body)
    assert [t.text for t in request.system] == ["Be brief.", "Use tools."]
    assert request.messages[1].role == "system"
    out = FMT.encode_request(request)
    assert out["instructions"] == "Be brief."
    assert out["input"][0] == {"type": "message", "role": "developer",
                               "content": [{"type": "input_text", "text": "Use tools."}]}
    assert out["input"][2]["role"] == "system"


def test_tool_choice_forms() -> None:
    def choice(value: Any) -> Any:
        return decode({"model": "m", "input": "x", "tool_choice": value}).tool_choice

    assert choice("required") == c.ToolChoice("required")
    assert choice({"type": "function", "name": "f"}) == c.ToolChoice("tool", "f")
    hosted = decode({"model": "m", "input": "x", "tool_choice": {"type": "web_search"}})
    assert FMT.encode_request(hosted)["tool_choice"] == {"type": "web_search"}


def test_inspect_rejects_bad_requests() -> None:
    with pytest.raises(InvalidRequest):
        FMT.inspect({"input": "x"})
    with pytest.raises(InvalidRequest):
        FMT.inspect({"model": "m"})
    with pytest.raises(InvalidRequest):
        FMT.inspect({"model": "m", "input": 3})
    with pytest.raises(InvalidRequest):
        decode({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]})
    assert FMT.inspect({"model": "m", "input": "x"}) == ("m", False)


def test_foreign_request_encodes_for_a_responses_upstream() -> None:
    request = c.Request(
        model="gpt-5", system=[c.Text("sys")], stream=True, max_tokens=100, stop=["END"],
        messages=[
            c.Message("user", [c.Text("look"), c.Image(media_type="image/png", data="AAA")]),
            c.Message("assistant", [c.Reasoning("hm", signature="s", source="anthropic"),
                                    c.ToolCall("toolu_1", "f", '{"a":1}')]),
            c.Message("tool", [c.ToolResult("toolu_1", [c.Text("oops")], is_error=True)]),
        ],
        tools=[c.Tool("f", "d", {"type": "object"})],
        reasoning=c.ReasoningConfig(budget_tokens=4000))
    body = FMT.encode_request(request)
    assert body["instructions"] == "sys"
    assert body["input"] == [
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "detail": "auto", "image_url": "data:image/png;base64,AAA"}]},
        {"type": "function_call", "arguments": '{"a":1}', "call_id": "toolu_1", "name": "f"},
        {"type": "function_call_output", "call_id": "toolu_1", "output": "oops"},
    ]
    assert body["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert body["include"] == ["reasoning.encrypted_content"] and body["store"] is False
    assert "stop" not in body and body["max_output_tokens"] == 100


# ---------------------------------------------------------------------- upstream streams


async def test_decode_stream_raises_on_error_events() -> None:
    created = sse_events(raw("responses_stream_text", "sse"))[:2]
    failed = b'event: response.failed\ndata: {"type":"response.failed","response":' \
             b'{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","status":"failed",' \
             b'"error":{"code":"server_error","message":"The model crashed"}}}\n\n'
    with pytest.raises(UpstreamError, match="The model crashed"):
        await collect(FMT.decode_stream(aiter([*created, failed])))
    error = b'event: error\ndata: {"type":"error","code":"rate_limit_exceeded",' \
            b'"message":"Slow down","param":null,"sequence_number":2}\n\n'
    with pytest.raises(UpstreamError, match="Slow down"):
        await collect(FMT.decode_stream(aiter([*created, error])))
    assert FMT.error_from_frame(error) == "Slow down"
    assert FMT.error_from_frame(failed) == "The model crashed"
    with pytest.raises(UpstreamError):  # cut off before response.completed
        await collect(FMT.decode_stream(aiter(created)))


def test_usage_on_the_side() -> None:
    frames = sse_events(raw("responses_stream_tools", "sse"))
    usages = [u for f in frames if (u := FMT.usage_from_frame(f)) is not None]
    assert usages == [c.Usage(291, 155, 128, None, 64)]
    body = orjson.dumps(load("responses_response_text")["input"])
    assert FMT.usage_from_body(body) == c.Usage(36, 87, 0, None, 0)
    assert FMT.error_from_frame(frames[3]) is None


# ---------------------------------------------------------------------- the openai SDK


async def _serve(aiohttp_server: Any, events: list[c.Event] | None = None,
                 error: Exception | None = None) -> openai.AsyncOpenAI:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, stream = FMT.inspect(body)
        req = FMT.decode_request(ClientRequest(body, model, stream))
        if isinstance(error, UpstreamStatusError):
            return web.Response(status=error.status, body=FMT.error_body(error),
                                content_type="application/json")
        answer = events or full_answer()
        if not stream:
            parts: list[Any] = [e.part for e in answer if isinstance(e, c.PartStart)]
            for part, text in ((parts[0], "Let me think."), (parts[1], "Hello world")):
                part.text = text
            parts[0].signature = "SIG=="
            parts[2].arguments, parts[3].arguments = '{"location":"Paris"}', "{}"
            resp = c.Response("abc", "m", parts, "tool_use", usage=c.Usage(100, 20, 30, None, 5))
            return web.Response(body=FMT.encode_response(resp, req),
                                content_type="application/json")
        out = web.StreamResponse(headers={"Content-Type": FMT.stream_content_type})
        await out.prepare(request)
        await out.write(FMT.keepalive_frame() or b"")  # clients skip SSE comments
        async for frame in FMT.encode_stream(aiter(answer), req):
            await out.write(frame)
        if error is not None:
            await out.write(FMT.error_frame(error))  # type: ignore[arg-type]
        return out

    app = web.Application()
    app.router.add_post("/v1/responses", handler)
    server = await aiohttp_server(app)
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key="k", max_retries=0)


async def test_openai_sdk_parses_the_stream(aiohttp_server: Any) -> None:
    client = await _serve(aiohttp_server)
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    stream = await client.responses.create(model="m", input="hi", stream=True, tools=tools)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    async with client.responses.stream(model="m", input="hi", tools=tools) as helper:
        async for _ in helper:
            pass
        final = await helper.get_final_response()
    assert final.output_text == "Hello world"
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call",
                                              "function_call"]
    assert final.usage is not None and final.usage.output_tokens_details.reasoning_tokens == 5
    assert final.usage.input_tokens_details.cached_tokens == 30


async def test_openai_sdk_parses_the_json_answer(aiohttp_server: Any) -> None:
    client = await _serve(aiohttp_server)
    answer = await client.responses.create(model="m", input="hi")
    assert answer.output_text == "Hello world"
    assert answer.status == "completed"
    call = answer.output[2]
    assert call.type == "function_call" and call.call_id == "call_1"


async def test_openai_sdk_sees_errors(aiohttp_server: Any) -> None:
    client = await _serve(aiohttp_server, error=UpstreamStatusError("Too many", status=429))
    with pytest.raises(openai.RateLimitError, match="Too many"):
        await client.responses.create(model="m", input="hi")
    events = [c.Start("r", "m"), c.PartStart(0, c.Text("")), c.TextDelta(0, "par")]
    client = await _serve(aiohttp_server, events=events, error=UpstreamError("upstream died"))
    stream = await client.responses.create(model="m", input="hi", stream=True)
    seen = [event async for event in stream]
    assert seen[-1].type == "error" and seen[-1].message == "upstream died"
