"""Two calls to the same tool in one turn, and their two results, through every pair.

Each result must reach the call it answers: by id where the formats have ids,
by order where a client has none (Ollama matches results by tool name).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.genai import types

from conformance.clients import anthropic_messages as am
from conformance.clients import gemini_genai as gg
from conformance.clients import ollama_chat as olc
from conformance.clients import openai_chat as oc
from conformance.clients import responses_api as ra
from conformance.conftest import cells
from conformance.harness import TOOL_NAME, Cell

CITIES = ["Paris", "Rome"]
CALLS = [{"name": TOOL_NAME, "arguments": {"location": city}} for city in CITIES]
QUESTION = [{"role": "user", "content": "weather in Paris and Rome?"}]
pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession")


async def _anthropic(cell: Cell) -> str:
    client = am.sdk(cell)
    _, m = await am.streamed(client, model=cell.model, max_tokens=1000, messages=QUESTION,
                             tools=[am.TOOL])
    uses = [b for b in m.content if b.type == "tool_use"]
    assert [u.input["location"] for u in uses] == CITIES
    history = [*QUESTION, {"role": "assistant", "content": [
        b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": u.id,
                                      "content": f"sunny in {u.input['location']}"}
                                     for u in uses]}]
    r = await client.messages.create(model=cell.model, max_tokens=1000, messages=history,  # type: ignore[arg-type]
                                     tools=[am.TOOL])  # type: ignore[list-item]
    return am.texts(r)


async def _openai(cell: Cell) -> str:
    client = oc.sdk(cell)
    chunks = await oc.collect(await client.chat.completions.create(
        model=cell.model, messages=QUESTION, tools=[oc.TOOL], stream=True))  # type: ignore[arg-type, list-item]
    calls = list(oc.tool_calls(chunks).values())
    cities = [json.loads(c["arguments"])["location"] for c in calls]
    assert cities == CITIES
    history = [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": c["id"], "type": "function",
         "function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]},
        *[{"role": "tool", "tool_call_id": c["id"], "content": f"sunny in {city}"}
          for c, city in zip(calls, cities, strict=True)]]
    r = await client.chat.completions.create(model=cell.model, messages=history,  # type: ignore[arg-type]
                                             tools=[oc.TOOL])  # type: ignore[list-item]
    return r.choices[0].message.content or ""


async def _gemini(cell: Cell) -> str:
    client = gg.sdk(cell)
    config = types.GenerateContentConfig(tools=[gg.TOOL], automatic_function_calling=gg.NO_AUTO)
    question = types.Content(role="user", parts=[types.Part(text=QUESTION[0]["content"])])
    chunks = await gg.stream(client, model=cell.model, contents=[question], config=config)
    parts = [p for p in gg.parts_of(chunks) if not p.thought and (p.function_call or p.text)]
    calls = [p.function_call for p in parts if p.function_call]
    assert [c.args["location"] for c in calls] == CITIES  # type: ignore[index]
    results = types.Content(role="user", parts=[types.Part(
        function_response=types.FunctionResponse(
            id=c.id, name=c.name, response={"output": f"sunny in {c.args['location']}"}))  # type: ignore[index]
        for c in calls])
    r = await client.aio.models.generate_content(
        model=cell.model, config=config,
        contents=[question, types.Content(role="model", parts=parts), results])
    return r.text or ""


async def _ollama(cell: Cell) -> str:
    client = olc.sdk(cell)
    parts = await olc.collect(await client.chat(model=cell.model, messages=QUESTION,
                                                tools=[olc.TOOL], stream=True))
    calls = [tc.function for p in parts for tc in p.message.tool_calls or []]
    assert [c.arguments["location"] for c in calls] == CITIES
    history = [*QUESTION, {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": c.name, "arguments": dict(c.arguments)}} for c in calls]},
        *[{"role": "tool", "content": f"sunny in {c.arguments['location']}", "tool_name": c.name}
          for c in calls]]
    r = await client.chat(model=cell.model, messages=history, tools=[olc.TOOL], stream=False)
    return r.message.content or ""


async def _responses(cell: Cell) -> str:
    client = ra.sdk(cell)
    _, r = await ra.streamed(client, model=cell.model, input=QUESTION, tools=[ra.TOOL])
    calls = [i for i in r.output if i.type == "function_call"]
    cities = [json.loads(c.arguments)["location"] for c in calls]
    assert cities == CITIES
    history: list[Any] = [*QUESTION, *ra.replay(r.output), *[
        {"type": "function_call_output", "call_id": c.call_id, "output": f"sunny in {city}"}
        for c, city in zip(calls, cities, strict=True)]]
    again = await client.responses.create(model=cell.model, input=history, tools=[ra.TOOL])  # type: ignore[arg-type, list-item]
    return again.output_text


CLIENTS = {"anthropic": _anthropic, "openai": _openai, "gemini": _gemini, "ollama": _ollama,
           "responses": _responses}


@pytest.mark.parametrize("cell", cells(list(CLIENTS)), indirect=True)
async def test_parallel_tool_round_trip(cell: Cell) -> None:
    cell.script(cell.up.module.reply(tool_calls=CALLS), cell.up.say("Sunny in both."))
    assert await CLIENTS[cell.client](cell) == "Sunny in both."
    turns = cell.up.shaped(cell.last())
    pairs = _pairs(cell.up.name, turns)
    assert [(args["location"], result) for args, result in pairs] == [
        (city, f"sunny in {city}") for city in CITIES], "each result answers its own call"


def _pairs(upstream: str, body: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """``(call arguments, result text)`` for each call, matched as the upstream matches."""

    if upstream in ("openai", "ollama"):
        messages = body["messages"]
        calls = [tc for m in messages if m["role"] == "assistant" for tc in m.get("tool_calls")
                 or []]
        results = [m for m in messages if m["role"] == "tool"]
        if upstream == "ollama" and not any(tc.get("id") for tc in calls):
            return [(tc["function"]["arguments"], r["content"])  # by order
                    for tc, r in zip(calls, results, strict=True)]
        by_id = {r["tool_call_id"]: r["content"] for r in results}
        return [(_args(tc["function"]["arguments"]), by_id[tc["id"]]) for tc in calls]
    if upstream == "anthropic":
        blocks = [b for m in body["messages"] if isinstance(m["content"], list)
                  for b in m["content"]]
        by_id = {b["tool_use_id"]: b["content"] for b in blocks if b["type"] == "tool_result"}
        return [(b["input"], by_id[b["id"]]) for b in blocks if b["type"] == "tool_use"]
    if upstream == "gemini":
        parts = [p for c in body["contents"] for p in c["parts"]]
        calls = [p["functionCall"] for p in parts if "functionCall" in p]
        results = [p["functionResponse"] for p in parts if "functionResponse" in p]
        if all(c.get("id") for c in calls):
            by_id = {r["id"]: r["response"]["output"] for r in results}
            return [(c["args"], by_id[c["id"]]) for c in calls]
        return [(c["args"], r["response"]["output"])  # Gemini matches by order
                for c, r in zip(calls, results, strict=True)]
    items = body["input"]
    by_id = {i["call_id"]: i["output"] for i in items if i.get("type") == "function_call_output"}
    return [(json.loads(i["arguments"]), by_id[i["call_id"]]) for i in items
            if i.get("type") == "function_call"]


def _args(arguments: Any) -> dict[str, Any]:


    return json.loads(arguments) if isinstance(arguments, str) else arguments
