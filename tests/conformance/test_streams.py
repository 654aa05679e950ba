"""Stream regressions: a tool call is never split, pass-through frames are byte-identical."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from aiohttp import web
from fakes.base import sse

from conformance.clients import anthropic_messages, openai_chat, responses_api
from conformance.conftest import cells
from conformance.harness import Cell

CALLS = [{"name": "get_weather", "arguments": {"location": "Paris", "unit": "c"}},
         {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}]
TOOLS = [{"name": "get_weather", "input_schema": {"type": "object"}},
         {"name": "get_time", "input_schema": {"type": "object"}}]


@pytest.mark.parametrize("cell", cells(["anthropic"]), indirect=True)
async def test_parallel_calls_arrive_whole_in_anthropic_blocks(cell: Cell) -> None:
    """Two calls: two ``tool_use`` blocks, each whole, never three or one merged."""
    cell.script(cell.up.module.reply(tool_calls=CALLS))
    _, m = await anthropic_messages.streamed(
        anthropic_messages.sdk(cell), model=cell.model, max_tokens=1024,
        messages=[{"role": "user", "content": "weather and time?"}], tools=TOOLS)
    calls = [(b.name, b.input) for b in m.content if b.type == "tool_use"]
    assert calls == [(c["name"], c["arguments"]) for c in CALLS]


def interleaved_upstream() -> web.Application:
    """An OpenAI-compatible server that streams two calls with interleaved argument deltas
    (as vLLM and others do), text first."""
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                    "model": "m", "choices": [{"index": 0, "delta": delta,
                                               "finish_reason": finish}]})

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    frames = [
        chunk({"role": "assistant", "content": "Checking."}),
        chunk(call(0, id="call_a", type="function",
                   function={"name": "get_weather", "arguments": ""})),
        chunk(call(1, id="call_b", type="function",
                   function={"name": "get_time", "arguments": '{"tz": '})),
        chunk(call(0, function={"arguments": '{"location": '})),
        chunk(call(1, function={"arguments": '"Europe/Paris"}'})),
        chunk(call(0, function={"arguments": '"Paris", "unit": "c"}'})),
        chunk({}, "tool_calls"),
        b"data: [DONE]\n\n",
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for frame in frames:
            await resp.write(frame)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    return app


@pytest.mark.parametrize("client", ["anthropic", "responses", "openai"])
async def test_interleaved_calls_are_never_split(gateway: Any, aiohttp_server: Any,
                                                 client: str) -> None:
    server = await aiohttp_server(interleaved_upstream())
    await gateway.add_provider({"type": "openai", "name": "vllm", "prefix": "vl",
                                "base_url": str(server.make_url("/v1"))})
    cell = Cell(gateway, None, None, client)  # type: ignore[arg-type]
    question = [{"role": "user", "content": "weather and time?"}]
    if client == "anthropic":
        _, m = await anthropic_messages.streamed(
            anthropic_messages.sdk(cell), model="vl/m", max_tokens=1024, messages=question,
            tools=TOOLS)
        got = [(b.id, b.name, b.input) for b in m.content if b.type == "tool_use"]
        assert [b.type for b in m.content] == ["text", "tool_use", "tool_use"]
    elif client == "responses":
        _, r = await responses_api.streamed(
            responses_api.sdk(cell), model="vl/m", input=question,
            tools=[{"type": "function", "name": t["name"], "parameters": {"type": "object"}}
                   for t in TOOLS])
        got = [(i.call_id, i.name, json.loads(i.arguments)) for i in r.output
               if i.type == "function_call"]
    else:  # the pass-through lane: the client assembles the deltas itself
        chunks = await openai_chat.collect(await openai_chat.sdk(cell).chat.completions.create(
            model="vl/m", messages=question, stream=True))  # type: ignore[arg-type]
        calls = openai_chat.tool_calls(chunks)
        got = [(c["id"], c["name"], json.loads(c["arguments"])) for c in calls.values()]
    assert got == [("call_a", "get_weather", {"location": "Paris", "unit": "c"}),
                   ("call_b", "get_time", {"tz": "Europe/Paris"})]


@pytest.mark.parametrize("cell", cells(["openai"], ["openai"]), indirect=True)
async def test_openai_stream_bytes_pass_unchanged(cell: Cell) -> None:
    sent: list[list[bytes]] = []
    original = cell.fake._chunks

    def recording(*args: Any) -> list[bytes]:
        frames = original(*args)
        sent.append(frames)
        return frames

    cell.fake._chunks = recording
    cell.script(cell.up.module.reply(text="The quick brown fox", chunks=4),
                cell.up.module.reply(tool_calls=[CALLS[0]]))
    body = {"model": cell.model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(2):
        resp = await cell.gw.client.post("/v1/chat/completions", data=orjson.dumps(body),
                                         headers={"Content-Type": "application/json"})
        assert resp.status == 200
        assert await resp.read() == b"".join(sent[-1])
