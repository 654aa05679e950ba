"""The ``ollama`` SDK (``ollama.AsyncClient(host=<gateway root>)``) on ``/api/chat``.

Ollama has no tool-call ids (results name their tool in ``tool_name``), no
images by URL and no opaque reasoning: those capabilities are asserted as the
documented behaviour instead.
"""

from __future__ import annotations

from typing import Any

import ollama
import pytest

from conformance.harness import (
    ANSWER,
    ECHO,
    IMAGE_PROMPT,
    QUESTION,
    REASONING,
    TOOL_ARGS,
    TOOL_DESCRIPTION,
    TOOL_NAME,
    TOOL_RESULT,
    TOOL_SCHEMA,
    Cell,
    png_bytes,
)
from conformance.upstreams import INPUT_TOKENS, OUTPUT_TOKENS, PNG

#: ``thinking`` is plain text: signatures and encrypted reasoning cannot come back
CARRIES_OPAQUE = False
TOOL = {"type": "function", "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION,
                                         "parameters": TOOL_SCHEMA}}
HI = [{"role": "user", "content": "hi there"}]


def sdk(cell: Cell) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=cell.base_url, timeout=10)


async def collect(stream: Any) -> list[Any]:
    return [part async for part in stream]


async def text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    r = await sdk(cell).chat(model=cell.model, messages=HI, stream=False)
    assert r.message.content == ECHO and r.done and r.done_reason == "stop"
    assert (r.prompt_eval_count, r.eval_count) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=False)


async def stream_text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    parts = await collect(await sdk(cell).chat(model=cell.model, messages=HI, stream=True))
    assert "".join(p.message.content or "" for p in parts) == ECHO
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == "stop"
    assert (parts[-1].prompt_eval_count, parts[-1].eval_count) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=True)


async def tool_round_trip(cell: Cell) -> None:
    cell.script(cell.up.call(TOOL_NAME, TOOL_ARGS), cell.up.say(ANSWER))
    client = sdk(cell)
    question = [{"role": "user", "content": QUESTION}]
    parts = await collect(await client.chat(model=cell.model, messages=question, tools=[TOOL],
                                            stream=True))
    calls = [tc for p in parts for tc in p.message.tool_calls or []]
    assert len(calls) == 1, f"one call, whole: {calls}"
    call = calls[0].function
    assert (call.name, dict(call.arguments)) == (TOOL_NAME, TOOL_ARGS)
    history = [*question,
               {"role": "assistant", "content": "", "tool_calls": [
                   {"function": {"name": call.name, "arguments": dict(call.arguments)}}]},
               {"role": "tool", "content": TOOL_RESULT, "tool_name": call.name}]
    r = await client.chat(model=cell.model, messages=history, tools=[TOOL], stream=False)
    assert r.message.content == ANSWER
    cell.check_tool_turns(None, carries_opaque=CARRIES_OPAQUE)


async def image(cell: Cell) -> None:
    """Images by value only: Ollama has no image URLs, so there is no URL case to send."""
    cell.script(cell.up.say("A pixel."))
    r = await sdk(cell).chat(model=cell.model, stream=False, messages=[
        {"role": "user", "content": IMAGE_PROMPT, "images": [png_bytes()]}])
    assert r.message.content == "A pixel."
    cell.check_images([("data", "image/png", PNG)])


async def reasoning(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.think(REASONING, "Hi!"), cell.up.say("Bye!"))
    parts = await collect(await client.chat(model=cell.reasoning_model, messages=HI, think=True,
                                            stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == REASONING
    assert "".join(p.message.content or "" for p in parts) == "Hi!"
    history = [*HI, {"role": "assistant", "content": "Hi!", "thinking": REASONING},
               {"role": "user", "content": "bye"}]
    r = await client.chat(model=cell.reasoning_model, messages=history, think=True, stream=False)
    assert r.message.content == "Bye!"
    # ``think: true`` names no effort: an OpenAI-compatible upstream keeps its default
    cell.check_reasoning_back(carries_opaque=CARRIES_OPAQUE, asked=cell.up.name != "openai",
                              texts=[REASONING] if cell.up.name == "ollama" else None)


async def error(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.fail(400))
    with pytest.raises(ollama.ResponseError) as bad:
        await client.chat(model=cell.model, messages=HI, stream=False)
    assert bad.value.status_code == 400 and "Fake upstream error 400" in bad.value.error
    cell.script(cell.up.fail(500))
    with pytest.raises(ollama.ResponseError) as broken:
        await client.chat(model=cell.model, messages=HI, stream=False)
    assert broken.value.status_code == 500
    await cell.check_logged(status=500, usage=False)


async def stream_error(cell: Cell) -> None:
    cell.script(cell.up.break_stream())
    with pytest.raises(ollama.ResponseError) as info:
        await collect(await sdk(cell).chat(model=cell.model, messages=HI, stream=True))
    assert info.value.error
    await cell.check_logged(status=502, usage=False)
