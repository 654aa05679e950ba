"""The Ollama format: golden translations, NDJSON streams, the ollama client, its quirks."""

from __future__ import annotations

from typing import Any

import ollama
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
)

from omniroute.errors import InvalidRequest, UpstreamError, UpstreamStatusError
from omniroute.formats import canonical as c
from omniroute.formats.base import ClientRequest
from omniroute.formats.ollama import OllamaFormat

__all__ = ["fixed_ids"]
FMT = OllamaFormat()


def decode(body: dict[str, Any]) -> c.Request:
    model, stream = FMT.inspect(body)
    return FMT.decode_request(ClientRequest(body, model, stream))


def lines(body: bytes) -> list[bytes]:
    return [line + b"\n" for line in body.splitlines() if line.strip()]


# ---------------------------------------------------------------------- golden files


@pytest.mark.parametrize("name", ["ollama_request_chat", "ollama_request_tools",
                                  "ollama_request_history"])
def test_golden_request(name: str) -> None:
    """Client body -> canonical -> the body an Ollama upstream gets."""
    request = decode(load(name)["input"])
    check(name, "canonical", dump(request))
    check(name, "output", FMT.encode_request(request))


@pytest.mark.parametrize("name", ["ollama_response_chat", "ollama_response_tools",
                                  "ollama_response_length"])
def test_golden_response(name: str, fixed_ids: None) -> None:
    """Upstream JSON -> canonical -> the JSON an Ollama client gets."""
    response = FMT.decode_response(orjson.dumps(load(name)["input"]))
    check(name, "canonical", dump(response))
    request = decode({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    check(name, "output", orjson.loads(FMT.encode_response(response, request)))


def test_chat_response_round_trips_the_docs_example(fixed_ids: None) -> None:
    body = load("ollama_response_chat")["input"]
    request = decode({"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    out = orjson.loads(FMT.encode_response(FMT.decode_response(orjson.dumps(body)), request))
    assert out == {**body, "created_at": "2024-01-01T00:00:00Z", "done_reason": "stop"}


async def test_golden_stream(fixed_ids: None) -> None:
    frames = lines(raw("ollama_stream", "ndjson"))
    events = await collect(FMT.decode_stream(aiter(frames)))
    check("ollama_stream", "events", dump(events))
    request = decode({"model": "qwen3", "messages": [{"role": "user", "content": "hi"}]})
    out = await collect(FMT.encode_stream(aiter(events), request))
    assert all(f.endswith(b"\n") and f.count(b"\n") == 1 for f in out)
    check("ollama_stream", "frames", [orjson.loads(f) for f in out])
    again = await collect(FMT.decode_stream(aiter(out)))
    for event in again:  # the client got each call's id, so it now comes back in the call
        if isinstance(event, c.PartStart) and isinstance(event.part, c.ToolCall):
            assert event.part.meta["ollama"].pop("id") == event.part.id
    assert dump(again)[1:] == dump(events)[1:]


# ---------------------------------------------------------------------- client quirks


def test_stream_defaults_to_true() -> None:
    assert FMT.inspect({"model": "m", "messages": [{"role": "user", "content": "x"}]}) == (
        "m", True)
    assert FMT.inspect({"model": "m", "stream": False,
                        "messages": [{"role": "user", "content": "x"}]}) == ("m", False)
    assert decode(load("ollama_request_chat")["input"]).stream is True
    # ... so the upstream body always says what it wants
    assert FMT.encode_request(c.Request("m", [c.Message("user", [c.Text("x")])]))["stream"] is False


def test_empty_tools_are_not_forwarded() -> None:
    request = decode(load("ollama_request_history")["input"])
    assert request.tools == []
    assert "tools" not in FMT.encode_request(request)


def test_history_details() -> None:
    request = decode(load("ollama_request_history")["input"])
    assert [t.text for t in request.system] == ["You are a helpful assistant."]
    image = request.messages[0].parts[1]
    assert isinstance(image, c.Image) and image.media_type == "image/png"
    thinking, first, second = request.messages[1].parts
    assert isinstance(thinking, c.Reasoning) and thinking.source == "ollama"
    assert isinstance(first, c.ToolCall) and isinstance(second, c.ToolCall)
    assert first.id != second.id and first.arguments == '{"city":"Toronto"}'
    results = request.messages[2].parts
    assert [(r.call_id, r.name) for r in results if isinstance(r, c.ToolResult)] == [
        (first.id, "get_weather"), (second.id, "get_time")]
    assert request.response_format is not None and request.response_format.type == "json_schema"
    assert (request.max_tokens, request.stop, request.seed) == (512, ["</answer>"], 42)
    assert request.reasoning == c.ReasoningConfig()
    assert request.meta["ollama"]["options"] == {"num_ctx": 8192, "repeat_penalty": 1.1}
    # the ids are stable: the same history decodes to the same ids every time
    again = decode(load("ollama_request_history")["input"])
    assert again.messages[1].parts[1].id == first.id  # type: ignore[union-attr]


def test_think_levels_and_json_format() -> None:
    body = {"model": "gpt-oss:20b", "think": "high", "format": "json",
            "messages": [{"role": "user", "content": "x"}]}
    request = decode(body)
    assert request.reasoning == c.ReasoningConfig(effort="high")
    assert request.response_format == c.ResponseFormat("json_object")
    out = FMT.encode_request(request)
    assert (out["think"], out["format"]) == ("high", "json")
    foreign = c.Request("qwen3", [c.Message("user", [c.Text("x")])],
                        reasoning=c.ReasoningConfig(effort="high"))
    assert FMT.encode_request(foreign)["think"] is True
    foreign.reasoning = c.ReasoningConfig(enabled=False)
    assert FMT.encode_request(foreign)["think"] is False


def test_foreign_request_encodes_for_an_ollama_upstream() -> None:
    request = c.Request(
        model="llama3.2", system=[c.Text("one"), c.Text("two")], stream=True,
        messages=[
            c.Message("user", [c.Text("look"), c.Image(media_type="image/png", data="AAA")]),
            c.Message("assistant", [c.Reasoning("hm", signature="s", source="anthropic"),
                                    c.ToolCall("toolu_1", "f", '{"a":1}')]),
            c.Message("tool", [c.ToolResult("toolu_1", [c.Text("done")])]),
        ],
        tools=[c.Tool("f", "d", {"type": "object"}),
               c.Tool("web_search", meta={"responses": {"raw": {"type": "web_search"}}})],
        max_tokens=100, temperature=0.5)
    assert FMT.encode_request(request) == {
        "model": "llama3.2", "stream": True,
        "messages": [
            {"role": "system", "content": "one\n\ntwo"},
            {"role": "user", "content": "look", "images": ["AAA"]},
            {"role": "assistant", "content": "", "thinking": "hm", "tool_calls": [
                {"id": "toolu_1", "function": {"name": "f", "arguments": {"a": 1}}}]},
            {"role": "tool", "content": "done", "tool_name": "f", "tool_call_id": "toolu_1"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                                                    "parameters": {"type": "object"}}}],
        "options": {"temperature": 0.5, "num_predict": 100},
    }


def test_errors_and_inspect() -> None:
    assert FMT.error_body(InvalidRequest("model is required")) == b'{"error":"model is required"}'
    assert FMT.error_frame(UpstreamError("boom")) == b'{"error":"boom"}\n'
    with pytest.raises(InvalidRequest):
        FMT.inspect({"messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(InvalidRequest):
        FMT.inspect({"model": "m", "messages": []})
    with pytest.raises(InvalidRequest):
        decode({"model": "m", "messages": [{"role": "robot", "content": "x"}]})


async def test_decode_stream_raises_on_an_error_line() -> None:
    frames = lines(raw("ollama_stream", "ndjson"))[:2]
    with pytest.raises(UpstreamError, match="model runner crashed"):
        await collect(FMT.decode_stream(aiter([*frames, b'{"error":"model runner crashed"}\n'])))
    with pytest.raises(UpstreamError):  # cut off before done
        await collect(FMT.decode_stream(aiter(frames)))
    with pytest.raises(UpstreamError, match="not found"):
        FMT.decode_response(b'{"error":"model \\"x\\" not found"}')
    assert FMT.error_from_frame(b'{"error":"boom"}\n') == "boom"
    assert FMT.error_from_frame(frames[0]) is None


def test_usage_on_the_side() -> None:
    frames = lines(raw("ollama_stream", "ndjson"))
    assert [u for f in frames if (u := FMT.usage_from_frame(f))] == [c.Usage(26, 282)]
    assert FMT.usage_from_body(orjson.dumps(load("ollama_response_tools")["input"])) == c.Usage(
        122, 33)


# ---------------------------------------------------------------------- the ollama client


async def _serve(aiohttp_server: Any, error: Exception | None = None) -> ollama.AsyncClient:
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model, stream = FMT.inspect(body)
        req = FMT.decode_request(ClientRequest(body, model, stream))
        if isinstance(error, UpstreamStatusError):
            return web.Response(status=error.status, body=FMT.error_body(error),
                                content_type="application/json")
        if not stream:
            parts: list[Any] = [e.part for e in full_answer() if isinstance(e, c.PartStart)]
            parts[0].text, parts[1].text = "Let me think.", "Hello"
            parts[2].arguments = '{"location":"Paris"}'
            resp = c.Response("abc", "m", parts, "tool_use", usage=c.Usage(100, 20))
            return web.Response(body=FMT.encode_response(resp, req),
                                content_type="application/json")
        out = web.StreamResponse(headers={"Content-Type": FMT.stream_content_type})
        await out.prepare(request)
        events = full_answer() if error is None else full_answer()[:8]
        async for frame in FMT.encode_stream(aiter(events), req):
            await out.write(frame)
        if error is not None:
            await out.write(FMT.error_frame(error))  # type: ignore[arg-type]
        return out

    app = web.Application()
    app.router.add_post("/api/chat", handler)
    server = await aiohttp_server(app)
    return ollama.AsyncClient(host=str(server.make_url("")))


async def test_ollama_client_parses_answers(aiohttp_server: Any) -> None:
    client = await _serve(aiohttp_server)
    messages = [{"role": "user", "content": "hi"}]
    answer = await client.chat(model="m", messages=messages, stream=False)
    assert answer.message.content == "Hello" and answer.message.thinking == "Let me think."
    calls = answer.message.tool_calls or []
    assert [(t.function.name, dict(t.function.arguments)) for t in calls] == [
        ("get_weather", {"location": "Paris"}), ("get_time", {})]
    assert (answer.done, answer.done_reason, answer.prompt_eval_count, answer.eval_count) == (
        True, "stop", 100, 20)
    chunks = [ch async for ch in await client.chat(model="m", messages=messages, stream=True)]
    assert "".join(ch.message.content or "" for ch in chunks) == "Hello world"
    assert "".join(ch.message.thinking or "" for ch in chunks) == "Let me think."
    streamed = [t.function.name for ch in chunks for t in ch.message.tool_calls or []]
    assert streamed == ["get_weather", "get_time"]
    assert chunks[-1].done and not any(ch.done for ch in chunks[:-1])


async def test_ollama_client_sees_errors(aiohttp_server: Any) -> None:
    client = await _serve(aiohttp_server, UpstreamStatusError("model not found", status=404))
    with pytest.raises(ollama.ResponseError, match="model not found") as info:
        await client.chat(model="m", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert info.value.status_code == 404
    client = await _serve(aiohttp_server, UpstreamError("upstream died"))
    with pytest.raises(ollama.ResponseError, match="upstream died"):
        async for _ in await client.chat(model="m", messages=[{"role": "user", "content": "x"}],
                                         stream=True):
            pass
