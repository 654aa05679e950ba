"""Claude's signed thinking through a tool loop, from clients that carry it packed.

A Codex (Responses) or Gemini CLI client gets Anthropic's signature packed in
``encrypted_content`` / ``thoughtSignature`` (Gemini CLI keeps it on the call,
having dropped the thought parts); on the next turn Anthropic must get the
thinking block back first in the tool turn, signature unchanged, thinking on.
"""

from __future__ import annotations

import pytest
from google.genai import types

from conformance.clients import gemini_genai as gg
from conformance.clients import responses_api as ra
from conformance.conftest import cells
from conformance.harness import TOOL_ARGS, TOOL_NAME, TOOL_RESULT, Cell

pytestmark = pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession")
QUESTION = "weather in Paris?"


async def _codex(cell: Cell) -> str:
    client = ra.sdk(cell)
    options = {"reasoning": {"effort": "high", "summary": "auto"}, "store": False,
               "include": ["reasoning.encrypted_content"]}
    question = [{"role": "user", "content": QUESTION}]
    _, r = await ra.streamed(client, model=cell.model, input=question, tools=[ra.TOOL],
                             **options)
    assert [i.type for i in r.output] == ["reasoning", "function_call"]
    call = r.output[1]
    history = [*question, *ra.replay(r.output),
               {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}]
    again = await client.responses.create(model=cell.model, input=history, tools=[ra.TOOL],  # type: ignore[arg-type, list-item]
                                          **options)  # type: ignore[arg-type]
    return again.output_text


async def _gemini_cli(cell: Cell) -> str:
    client = gg.sdk(cell)
    config = types.GenerateContentConfig(
        tools=[gg.TOOL], automatic_function_calling=gg.NO_AUTO,
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=4096))
    question = types.Content(role="user", parts=[types.Part(text=QUESTION)])
    chunks = await gg.stream(client, model=cell.model, contents=[question], config=config)
    kept = [p for p in gg.parts_of(chunks) if not p.thought and (p.function_call or p.text)]
    call = next(p.function_call for p in kept if p.function_call)
    result = types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
        id=call.id, name=call.name, response={"output": TOOL_RESULT}))])
    r = await client.aio.models.generate_content(
        model=cell.model, config=config,
        contents=[question, types.Content(role="model", parts=kept), result])
    return r.text or ""


@pytest.mark.parametrize("cell", cells(["responses", "gemini"], ["anthropic"]), indirect=True)
async def test_signed_thinking_survives_a_translated_tool_loop(cell: Cell) -> None:
    cell.script(cell.up.module.reply(thinking="Let me check.", tool_calls=[
        {"name": TOOL_NAME, "arguments": TOOL_ARGS}]), cell.up.say("Sunny."))
    said = await (_codex if cell.client == "responses" else _gemini_cli)(cell)
    assert said == "Sunny."
    second = cell.last()
    blocks = second["messages"][1]["content"]
    assert [b["type"] for b in blocks] == ["thinking", "tool_use"]
    assert blocks[0] == {"type": "thinking", "thinking": "Let me check.",
                         "signature": cell.up.issued(cell.sent[0])[1]}
    assert second["thinking"]["type"] in ("enabled", "adaptive"), "thinking stays on"
