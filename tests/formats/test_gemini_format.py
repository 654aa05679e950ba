"""The Gemini format: golden translations, streams, google-genai, Gemini CLI quirks."""

from __future__ import annotations

from typing import Any

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
from google import genai
from google.genai import errors as genai_errors

from omniroute.errors import InvalidRequest, UpstreamError, UpstreamStatusError
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.base import ClientRequest
from omniroute.formats.gemini import GeminiFormat, status_name
from omniroute.formats.gemini.schema import for_json_schema_field, to_json_schema, to_openapi
from omniroute.sse import event_data

__all__ = ["fixed_ids"]
pytestmark = pytest.mark.filterwarnings(
    "ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
FMT = GeminiFormat()


def decode(body: dict[str, Any], model: str = "gemini-2.5-flash",
           stream: bool = False) -> c.Request:
    model, stream = FMT.inspect(body, path_model=model, path_stream=stream)
    return FMT.decode_request(ClientRequest(body, model, stream))


# ---------------------------------------------------------------------- golden files


@pytest.mark.parametrize("name", ["gemini_request_text", "gemini_request_function",
                                  "gemini_request_structured", "gemini_request_cli"])
def test_golden_request(name: str) -> None:
    """Client body -> canonical -> the body a Gemini upstream gets."""
    case = load(name)
    request = decode(case["input"], case["model"], case["stream"])
    check(name, "canonical", dump(request))
    check(name, "output", FMT.encode_request(request))


@pytest.mark.parametrize("name", ["gemini_response_text", "gemini_response_function",
                                  "gemini_response_safety"])
def test_golden_response(name: str) -> None:
    """Upstream JSON -> canonical -> the JSON a Gemini client gets."""
    response = FMT.decode_response(orjson.dumps(load(name)["input"]))
    check(name, "canonical", dump(response))
    check(name, "output", orjson.loads(FMT.encode_response(response, decode(
        {"contents": [{"parts": [{"text": "hi"}]}]}))))


def test_text_response_round_trips_the_docs_example() -> None:
    body = load("gemini_response_text")["input"]
    out = orjson.loads(FMT.encode_response(FMT.decode_response(orjson.dumps(body)),
                                           decode({"contents": [{"parts": [{"text": "x"}]}]})))
    assert out["candidates"] == body["candidates"]
    usage = {k: v for k, v in body["usageMetadata"].items() if k != "promptTokensDetails"}
    assert out["usageMetadata"] == usage
    assert (out["modelVersion"], out["responseId"]) == (body["modelVersion"], body["responseId"])


async def test_golden_stream(fixed_ids: None) -> None:
    frames = sse_events(raw("gemini_stream", "sse"))
    events = await collect(FMT.decode_stream(aiter(frames)))
    check("gemini_stream", "events", dump(events))
    out = await collect(FMT.encode_stream(aiter(events), decode(
        {"contents": [{"parts": [{"text": "hi"}]}]})))
    check("gemini_stream", "frames", [orjson.loads(event_data(f) or b"") for f in out])
    again = await collect(FMT.decode_stream(aiter(out)))
    for event in again:  # the client got each call's id, so it now comes back in the call
        if isinstance(event, c.PartStart) and isinstance(event.part, c.ToolCall):
            assert event.part.meta["gemini"].pop("id") == event.part.id
    assert dump(again)[1:] == dump(events)[1:]


# ---------------------------------------------------------------------- Gemini CLI quirks


def test_cli_request_details() -> None:
    case = load("gemini_request_cli")
    request = decode(case["input"], "models/gemini-2.5-pro", True)
    assert request.model == "gemini-2.5-pro" and request.stream
    assert [t.text for t in request.system] == ["You are an interactive CLI agent.", "Be concise."]
    thought, read_sig, read, listing_sig, listing = request.messages[1].parts
    assert isinstance(thought, c.Reasoning) and thought.source == "gemini"
    # a call's thought signature is the reasoning part just before it
    assert read_sig == c.Reasoning(signature="CiQBjz1rX2Vy", source="gemini")
    assert listing_sig == c.Reasoning(signature="skip_thought_signature_validator",
                                      source="gemini")
    assert isinstance(read, c.ToolCall) and isinstance(listing, c.ToolCall)
    assert read.id == "read-1" and read.meta == {"gemini": {"id": "read-1"}}
    assert listing.id.startswith("call_") and listing.meta == {"gemini": {}}
    results = request.messages[2].parts
    assert [(r.call_id, r.name, r.is_error) for r in results if isinstance(r, c.ToolResult)] == [
        ("read-1", "read_file", False), (listing.id, "list_directory", True)]
    # upper-case OpenAPI types are normalised, $schema kept out of the canonical? no: kept as sent
    tools = {t.name: t for t in request.tools}
    assert tools["list_directory"].parameters == {
        "type": "object", "required": ["path"], "properties": {
            "path": {"type": "string", "description": "Directory"},
            "ignore": {"type": ["array", "null"], "items": {"type": "string"}}}}
    assert tools["googleSearch"].meta == {"gemini": {"raw": {"googleSearch": {}}}}
    assert request.tool_choice == c.ToolChoice("tool", "read_file")
    assert request.reasoning == c.ReasoningConfig(budget_tokens=8192, include_thoughts=True)
    assert (request.temperature, request.top_k, request.stop, request.seed) == (0, 64, ["<END>"], 7)


def test_upstream_body_keeps_signatures_and_strips_schema_keywords() -> None:
    case = load("gemini_request_cli")
    body = FMT.encode_request(decode(case["input"], "gemini-2.5-pro", True))
    model_parts = body["contents"][1]["parts"]
    assert model_parts[1]["thoughtSignature"] == "CiQBjz1rX2Vy"
    assert model_parts[2]["thoughtSignature"] == "skip_thought_signature_validator"
    decl = body["tools"][0]["functionDeclarations"][0]
    assert "$schema" not in decl["parametersJsonSchema"]
    assert decl["parametersJsonSchema"]["additionalProperties"] is False
    assert body["tools"][1] == {"googleSearch": {}}
    assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 8192,
                                                          "includeThoughts": True}
    # the OpenAPI dialect, for endpoints that only take ``parameters``
    openapi = FMT.encode_request(decode(case["input"], "gemini-2.5-pro"),
                                 {"gemini_schema": "openapi"})
    params = openapi["tools"][0]["functionDeclarations"][0]["parameters"]
    assert params == {"type": "object", "properties": {"absolute_path": {"type": "string"}},
                      "required": ["absolute_path"]}


def test_foreign_calls_get_the_dummy_signature_on_gemini_3() -> None:
    request = c.Request(model="gemini-3-pro-preview", messages=[
        c.Message("user", [c.Text("hi")]),
        c.Message("assistant", [c.Reasoning("hm", signature="anthropic-sig", source="anthropic"),
                                c.ToolCall("toolu_1", "f", '{"a": 1}'),
                                c.ToolCall("toolu_2", "f", "{}")]),
        c.Message("tool", [c.ToolResult("toolu_1", [c.Text("one")]),
                           c.ToolResult("toolu_2", [c.Text("bad")], is_error=True)]),
        c.Message("user", [c.Text("and?")]),
    ])
    body = FMT.encode_request(request)
    assert body["contents"][1] == {"role": "model", "parts": [
        {"functionCall": {"id": "toolu_1", "name": "f", "args": {"a": 1}},
         "thoughtSignature": "skip_thought_signature_validator"},
        {"functionCall": {"id": "toolu_2", "name": "f", "args": {}}}]}
    assert body["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"name": "f", "response": {"output": "one"}, "id": "toolu_1"}},
        {"functionResponse": {"name": "f", "response": {"error": "bad"}, "id": "toolu_2"}},
        {"text": "and?"}]}
    request.model = "gemini-2.5-flash"
    assert "thoughtSignature" not in FMT.encode_request(request)["contents"][1]["parts"][0]


def test_another_formats_reasoning_survives_a_trip_through_the_client() -> None:
    answer = c.Response("r", "m", [c.Reasoning("Think.", signature="EqQB", source="anthropic"),
                                   c.ToolCall("toolu_1", "f", "{}")], "tool_use")
    out = orjson.loads(FMT.encode_response(answer, decode({"contents": [{"parts": [
        {"text": "x"}]}]})))
    parts = out["candidates"][0]["content"]["parts"]
    assert parts[0] == {"text": "Think.", "thought": True}
    assert carry.unpack(parts[1]["thoughtSignature"]) is not None
    # Gemini CLI drops thought parts from its history but keeps call signatures
    replay = decode({"contents": [{"role": "user", "parts": [{"text": "x"}]},
                                  {"role": "model", "parts": [parts[1]]}]})
    thinking, call = replay.messages[1].parts
    assert isinstance(thinking, c.Reasoning) and isinstance(call, c.ToolCall)
    assert (thinking.text, thinking.signature, thinking.source) == ("Think.", "EqQB", "anthropic")
    assert call.meta == {"gemini": {"id": "toolu_1"}}
    assert FMT.encode_request(replay)["contents"][1]["parts"] == [
        {"functionCall": {"id": "toolu_1", "name": "f", "args": {}}}]


def test_reasoning_settings_by_model_family() -> None:
    request = c.Request(model="gemini-3-flash-preview", messages=[c.Message("user", [c.Text("x")])],
                        reasoning=c.ReasoningConfig(effort="high"))
    assert FMT.encode_request(request)["generationConfig"]["thinkingConfig"] == {
        "thinkingLevel": "high", "includeThoughts": True}
    request.model = "gemini-2.5-flash"
    assert FMT.encode_request(request)["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 24576, "includeThoughts": True}
    request.reasoning = c.ReasoningConfig(enabled=False)
    assert FMT.encode_request(request)["generationConfig"]["thinkingConfig"] == {
        "thinkingBudget": 0}
    body = {"contents": [{"parts": [{"text": "x"}]}],
            "generationConfig": {"thinkingConfig": {"thinkingLevel": "LOW"}}}
    assert decode(body).reasoning == c.ReasoningConfig(effort="low", include_thoughts=False)


def test_schema_dialects() -> None:
    gemini = {"type": "OBJECT", "nullable": True, "propertyOrdering": ["a"],
              "properties": {"a": {"type": "STRING", "format": "enum", "enum": ["x"]},
                             "propertyOrdering": {"type": "INTEGER"}}}
    assert to_json_schema(gemini) == {
        "type": ["object", "null"],
        "properties": {"a": {"type": "string", "enum": ["x"]},
                       "propertyOrdering": {"type": "integer"}}}
    schema = {"$schema": "x", "type": "object", "additionalProperties": False,
              "$defs": {"P": {"type": "object", "properties": {"n": {"const": "v"}}}},
              "properties": {"p": {"$ref": "#/$defs/P"},
                             "q": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                             "$schema": {"type": "string"}}}
    assert for_json_schema_field(schema)["properties"]["$schema"] == {"type": "string"}
    assert "$schema" not in for_json_schema_field(schema)
    assert to_openapi(schema) == {"type": "object", "properties": {
        "p": {"type": "object", "properties": {"n": {"enum": ["v"], "type": "string"}}},
        "q": {"type": "string", "nullable": True},
        "$schema": {"type": "string"}}}


def test_errors_and_inspect() -> None:
    assert orjson.loads(FMT.error_body(InvalidRequest("bad"))) == {
        "error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}
    assert [status_name(s) for s in (401, 403, 404, 429, 500, 503, 504)] == [
        "UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND", "RESOURCE_EXHAUSTED", "INTERNAL",
        "UNAVAILABLE", "DEADLINE_EXCEEDED"]
    with pytest.raises(InvalidRequest):
        FMT.inspect({"contents": []}, path_model="m")
    with pytest.raises(InvalidRequest):
        FMT.inspect({"contents": [{"parts": [{"text": "x"}]}]})
    assert FMT.inspect({"contents": [{"parts": [{"text": "x"}]}]}, path_model="m",
                       path_stream=True) == ("m", True)
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    assert FMT.with_model(body, "other") is body


async def test_decode_stream_raises_on_an_error_frame() -> None:
    frames = sse_events(raw("gemini_stream", "sse"))[:1]
    error = b'data: {"error": {"code": 503, "message": "The model is overloaded.", ' \
            b'"status": "UNAVAILABLE"}}\r\n\r\n'
    with pytest.raises(UpstreamError, match="overloaded"):
        await collect(FMT.decode_stream(aiter([*frames, error])))
    assert FMT.error_from_frame(error) == "The model is overloaded."
    assert FMT.error_from_frame(frames[0]) is None
    with pytest.raises(UpstreamError):
        FMT.decode_response(orjson.dumps({"error": {"code": 400, "message": "no"}}))


def test_usage_on_the_side() -> None:
    frames = sse_events(raw("gemini_stream", "sse"))
    usages = [u for f in frames if (u := FMT.usage_from_frame(f)) is not None]
    assert usages[-1] == c.Usage(9, 35, None, None, 15)
    body = orjson.dumps(load("gemini_response_function")["input"])
    assert FMT.usage_from_body(body) == c.Usage(70, 120, 32, None, 80)


# ---------------------------------------------------------------------- google-genai


async def _serve(aiohttp_server: Any, error: UpstreamStatusError | None = None) -> genai.Client:
    async def handler(request: web.Request) -> web.StreamResponse:
        model, _, action = request.match_info["target"].partition(":")
        body = await request.json()
        stream = action == "streamGenerateContent"
        req = FMT.decode_request(ClientRequest(body, model, stream, query=request.query))
        if error is not None:
            return web.Response(status=error.status, body=FMT.error_body(error),
                                content_type="application/json")
        if not stream:
            parts: list[Any] = [e.part for e in full_answer() if isinstance(e, c.PartStart)]
            parts[0].text, parts[0].signature, parts[1].text = "Let me think.", "SIG==", "Hello"
            parts[2].arguments = '{"location":"Paris"}'
            resp = c.Response("abc", "m", parts, "tool_use", usage=c.Usage(100, 20, 30, None, 5))
            return web.Response(body=FMT.encode_response(resp, req),
                                content_type="application/json")
        out = web.StreamResponse(headers={"Content-Type": FMT.stream_content_type})
        await out.prepare(request)
        async for frame in FMT.encode_stream(aiter(full_answer()), req):
            await out.write(frame)
        return out

    app = web.Application()
    app.router.add_post("/v1beta/models/{target}", handler)
    server = await aiohttp_server(app)
    return genai.Client(api_key="k", http_options={"base_url": str(server.make_url("")),
                                                   "api_version": "v1beta"})


async def test_google_genai_parses_answers(aiohttp_server: Any) -> None:
    client = await _serve(aiohttp_server)
    answer = await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert answer.text == "Hello"
    assert [(f.id, f.name, f.args) for f in answer.function_calls or []] == [
        ("call_1", "get_weather", {"location": "Paris"}), ("call_2", "get_time", {})]
    assert answer.usage_metadata is not None
    assert answer.usage_metadata.thoughts_token_count == 5
    assert answer.usage_metadata.candidates_token_count == 15
    chunks = [ch async for ch in await client.aio.models.generate_content_stream(
        model="gemini-2.5-flash", contents="hi")]
    text = "".join(p.text or "" for ch in chunks for p in ch.candidates[0].content.parts
                   if not p.thought)
    assert text == "Hello world"
    calls = [p.function_call for ch in chunks for p in ch.candidates[0].content.parts
             if p.function_call]
    assert [(f.name, f.args) for f in calls] == [("get_weather", {"location": "Paris"}),
                                                 ("get_time", {})]
    assert chunks[-1].candidates[0].finish_reason == "STOP"
    assert chunks[-1].usage_metadata.prompt_token_count == 100
    # the packed signature survives the SDK's base64 round trip
    signed = next(p for ch in chunks for p in ch.candidates[0].content.parts if p.thought_signature)
    back = decode({"contents": [{"role": "model", "parts": [signed.model_dump(
        mode="json", by_alias=True, exclude_none=True)]}]})
    assert isinstance(back.messages[0].parts[0], c.Reasoning)
    assert back.messages[0].parts[0].signature == "SIG=="


async def test_google_genai_sees_errors(aiohttp_server: Any) -> None:
    client = await _serve(aiohttp_server, UpstreamStatusError("Quota exceeded", status=429))
    with pytest.raises(genai_errors.ClientError) as info:
        await client.aio.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert info.value.code == 429 and info.value.status == "RESOURCE_EXHAUSTED"
    assert "Quota exceeded" in str(info.value)


def test_call_signatures_survive_a_trip_through_a_responses_client() -> None:
    """Gemini 3 answer -> Codex (Responses) -> next turn -> Gemini: the signature is back."""
    from omniroute.formats.responses import ResponsesFormat

    responses = ResponsesFormat()
    answer = FMT.decode_response(orjson.dumps(load("gemini_response_function")["input"]))
    first = responses.decode_request(ClientRequest({"model": "g", "input": "weather?"}, "g", False))
    output = orjson.loads(responses.encode_response(answer, first))["output"]
    assert [o["type"] for o in output] == ["reasoning", "reasoning", "function_call",
                                           "function_call"]
    replay = [{"role": "user", "content": "weather?"}, *output,
              *({"type": "function_call_output", "call_id": o["call_id"], "output": "20C"}
                for o in output if o["type"] == "function_call")]
    second = responses.decode_request(ClientRequest({"model": "gemini-3-pro-preview",
                                                     "input": replay}, "gemini-3-pro-preview",
                                                    False))
    parts = FMT.encode_request(second)["contents"][1]["parts"]
    # the unsigned thought summary is not needed back; the call's signature is
    assert parts[0]["thoughtSignature"] == "CiIBcsjafE2a"
    assert "thoughtSignature" not in parts[1]
    assert [p["functionCall"]["name"] for p in parts] == ["get_current_temperature"] * 2


async def test_google_genai_sees_a_mid_stream_error(aiohttp_server: Any) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": FMT.stream_content_type})
        await out.prepare(request)
        events = [c.Start("r", "m"), c.PartStart(0, c.Text("")), c.TextDelta(0, "par")]
        async for frame in FMT.encode_stream(aiter(events), decode(await request.json())):
            await out.write(frame)
        await out.write(FMT.error_frame(UpstreamError("upstream died")))
        return out

    app = web.Application()
    app.router.add_post("/v1beta/models/{target}", handler)
    server = await aiohttp_server(app)
    client = genai.Client(api_key="k", http_options={"base_url": str(server.make_url("")),
                                                     "api_version": "v1beta"})
    seen: list[str] = []
    with pytest.raises(genai_errors.ServerError, match="upstream died"):
        async for chunk in await client.aio.models.generate_content_stream(
                model="gemini-2.5-flash", contents="hi"):
            seen.append(chunk.text or "")
    assert seen == ["par"]
