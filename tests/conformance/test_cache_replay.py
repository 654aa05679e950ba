"""Cache hits replayed to every official SDK: its streaming helper assembles the same
message from the replay as from the original stream (text, and tool calls), on the
pass-through lane (client and upstream speak the same format) and a translated one.
A streamed answer stored from its frames is also served as JSON, and the reverse."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import ollama
import openai
import pytest
from google import genai
from google.genai import types

from conformance.conftest import cells
from conformance.harness import QUESTION, TOOL_ARGS, TOOL_DESCRIPTION, TOOL_NAME, TOOL_SCHEMA, Cell
from omniroute.appkeys import CACHE

#: what a client's helper assembled: text, tool calls (name, arguments), and the stop
Message = tuple[str, list[tuple[str, Any]], str]
Ask = Callable[[Cell, bool, bool], Awaitable[Message]]

OPENAI_TOOL = {"type": "function", "function": {
    "name": TOOL_NAME, "description": TOOL_DESCRIPTION, "parameters": TOOL_SCHEMA}}
USER = [{"role": "user", "content": QUESTION}]


def _openai(cell: Cell) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=cell.base_url + "/v1", api_key="sk-client",
                              max_retries=0, timeout=10)


async def openai_chat(cell: Cell, tools: bool, stream: bool) -> Message:
    kwargs: dict[str, Any] = {"model": cell.model, "messages": USER, "temperature": 0,
                              "max_tokens": 200}
    if tools:
        kwargs["tools"] = [OPENAI_TOOL]
    client = _openai(cell)
    if stream:
        async with client.chat.completions.stream(**kwargs) as events:
            async for _ in events:
                pass
            final = await events.get_final_completion()
    else:
        final = await client.chat.completions.create(**kwargs)
    message = final.choices[0].message
    calls = [(c.function.name, json.loads(c.function.arguments))
             for c in message.tool_calls or []]
    return message.content or "", calls, final.choices[0].finish_reason


async def responses(cell: Cell, tools: bool, stream: bool) -> Message:
    kwargs: dict[str, Any] = {"model": cell.model, "input": QUESTION, "temperature": 0,
                              "max_output_tokens": 200, "store": False}
    if tools:
        kwargs["tools"] = [{"type": "function", "name": TOOL_NAME,
                            "description": TOOL_DESCRIPTION, "parameters": TOOL_SCHEMA}]
    client = _openai(cell)
    if stream:
        async with client.responses.stream(**kwargs) as events:
            async for _ in events:
                pass
            final = await events.get_final_response()
    else:
        final = await client.responses.create(**kwargs)
    calls = [(i.name, json.loads(i.arguments)) for i in final.output if i.type == "function_call"]
    return final.output_text, calls, final.status or ""


async def anthropic_messages(cell: Cell, tools: bool, stream: bool) -> Message:
    client = anthropic.AsyncAnthropic(base_url=cell.base_url, api_key="sk-client",
                                      max_retries=0, timeout=10)
    # this SDK's messages.stream() takes no temperature argument: it goes in the body
    kwargs: dict[str, Any] = {"model": cell.model, "messages": USER, "max_tokens": 200,
                              "extra_body": {"temperature": 0}}
    if tools:
        kwargs["tools"] = [{"name": TOOL_NAME, "description": TOOL_DESCRIPTION,
                            "input_schema": TOOL_SCHEMA}]
    if stream:
        async with client.messages.stream(**kwargs) as events:
            async for _ in events:
                pass
            final = await events.get_final_message()
    else:
        final = await client.messages.create(**kwargs)
    text = "".join(b.text for b in final.content if b.type == "text")
    calls = [(b.name, b.input) for b in final.content if b.type == "tool_use"]
    return text, calls, final.stop_reason or ""


async def gemini(cell: Cell, tools: bool, stream: bool) -> Message:
    client = genai.Client(api_key="AIza-client", http_options={  # type: ignore[arg-type]
        "base_url": cell.base_url, "api_version": "v1beta"})
    config = types.GenerateContentConfig(temperature=0, max_output_tokens=200)
    if tools:
        config.tools = [types.Tool(function_declarations=[types.FunctionDeclaration(
            name=TOOL_NAME, description=TOOL_DESCRIPTION, parameters_json_schema=TOOL_SCHEMA)])]
        config.automatic_function_calling = types.AutomaticFunctionCallingConfig(disable=True)
    if stream:
        chunks = [c async for c in await client.aio.models.generate_content_stream(
            model=cell.model, contents=QUESTION, config=config)]
    else:
        chunks = [await client.aio.models.generate_content(model=cell.model, contents=QUESTION,
                                                           config=config)]
    text = "".join(c.text or "" for c in chunks)
    calls = [(f.name, f.args) for c in chunks for f in c.function_calls or []]
    reasons = [c.candidates[0].finish_reason for c in chunks
               if c.candidates and c.candidates[0].finish_reason]
    return text, calls, str(reasons[-1])


async def ollama_chat(cell: Cell, tools: bool, stream: bool) -> Message:
    client = ollama.AsyncClient(host=cell.base_url, timeout=10)
    kwargs: dict[str, Any] = {"model": cell.model, "messages": USER,
                              "options": {"temperature": 0, "num_predict": 200}}
    if tools:
        kwargs["tools"] = [OPENAI_TOOL]
    if stream:
        parts = [p async for p in await client.chat(stream=True, **kwargs)]
    else:
        parts = [await client.chat(**kwargs)]
    text = "".join(p.message.content or "" for p in parts)
    calls = [(c.function.name, dict(c.function.arguments)) for p in parts
             for c in p.message.tool_calls or []]
    return text, calls, str(parts[-1].done_reason)


CLIENTS: dict[str, tuple[Ask, str]] = {  # the client, and its pass-through upstream
    "openai": (openai_chat, "openai"), "responses": (responses, "responses"),
    "anthropic": (anthropic_messages, "anthropic"), "gemini": (gemini, "gemini"),
    "ollama": (ollama_chat, "ollama"),
}
MATRIX = [p for client, (_, same) in CLIENTS.items()
          for p in cells([client], [same, "anthropic" if same == "openai" else "openai"])]


async def twice(cell: Cell, ask: Ask, tools: bool, first: bool, second: bool) -> None:
    """Ask twice (streamed or not): the second is a hit and assembles the same message."""
    cell.script(cell.up.call(TOOL_NAME, TOOL_ARGS) if tools else cell.up.say(
        "Paris is sunny today, 18 degrees."))
    cache = cell.gw.client.app[CACHE]
    hits = cache.hits
    original = await ask(cell, tools, first)
    await cache.settled()
    replayed = await ask(cell, tools, second)
    assert cache.hits == hits + 1, "the second request is a hit"
    assert len(cell.bodies()) == 1, "one upstream call"
    assert replayed == original
    if tools:
        assert original[1] == [(TOOL_NAME, TOOL_ARGS)]
    else:
        assert original[0] == "Paris is sunny today, 18 degrees."


@pytest.mark.parametrize("cell", MATRIX, indirect=True)
@pytest.mark.parametrize("tools", [False, True], ids=["text", "tools"])
async def test_a_streamed_answer_replays_to_the_sdk_stream_helper(cell: Cell, tools: bool
                                                                  ) -> None:
    await twice(cell, CLIENTS[cell.client][0], tools, True, True)


@pytest.mark.parametrize("cell", MATRIX, indirect=True)
async def test_a_streamed_answer_is_served_as_json_and_the_reverse(cell: Cell) -> None:
    ask = CLIENTS[cell.client][0]
    await twice(cell, ask, True, True, False)
    await cell.gw.client.app[CACHE].clear()
    cell.fake.requests.clear()
    await twice(cell, ask, True, False, True)
