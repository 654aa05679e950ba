"""The ``openai`` SDK on Chat Completions (``base_url = <gateway>/v1``)."""

from __future__ import annotations

import json
from typing import Any

import openai
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
)
from conformance.upstreams import IMAGE_URL, INPUT_TOKENS, OUTPUT_TOKENS, PNG

#: Chat Completions has no field for opaque reasoning: signatures cannot come back
CARRIES_OPAQUE = False
TOOL = {"type": "function", "function": {"name": TOOL_NAME, "description": TOOL_DESCRIPTION,
                                         "parameters": TOOL_SCHEMA}}
HI = [{"role": "user", "content": "hi there"}]


def sdk(cell: Cell) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=cell.base_url + "/v1", api_key="sk-client",
                              max_retries=0, timeout=10)


async def collect(stream: Any) -> list[Any]:
    return [chunk async for chunk in stream]


def tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    """The calls an SDK user assembles from streamed deltas, by index."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                if tc.id:
                    assert not call["id"] or call["id"] == tc.id, "a call's id never changes"
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    assert not call["name"], "a call's name comes once"
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    call["arguments"] += tc.function.arguments
    return calls


async def text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    r = await sdk(cell).chat.completions.create(model=cell.model, messages=HI)  # type: ignore[arg-type]
    assert r.choices[0].message.content == ECHO
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=False)


async def stream_text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    chunks = await collect(await sdk(cell).chat.completions.create(
        model=cell.model, messages=HI, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ECHO
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices
                and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert (usage.prompt_tokens, usage.completion_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=True)


async def tool_round_trip(cell: Cell) -> None:
    cell.script(cell.up.call(TOOL_NAME, TOOL_ARGS), cell.up.say(ANSWER))
    client = sdk(cell)
    question = [{"role": "user", "content": QUESTION}]
    chunks = await collect(await client.chat.completions.create(
        model=cell.model, messages=question, tools=[TOOL], stream=True))  # type: ignore[arg-type, list-item]
    calls = tool_calls(chunks)
    assert list(calls) == [0], f"one call, in one piece: {calls}"
    call = calls[0]
    assert call["name"] == TOOL_NAME and json.loads(call["arguments"]) == TOOL_ARGS
    assert call["id"]
    assert [c.choices[0].finish_reason for c in chunks if c.choices
            and c.choices[0].finish_reason] == ["tool_calls"]
    history = [*question,
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": call["id"], "type": "function",
                    "function": {"name": call["name"], "arguments": call["arguments"]}}]},
               {"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT}]
    r = await client.chat.completions.create(model=cell.model, messages=history, tools=[TOOL])  # type: ignore[arg-type, list-item]
    assert r.choices[0].message.content == ANSWER
    cell.check_tool_turns(call["id"], carries_opaque=CARRIES_OPAQUE)


async def image(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.say("A pixel."))
    content = [{"type": "text", "text": IMAGE_PROMPT},
               {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    r = await client.chat.completions.create(
        model=cell.model, messages=[{"role": "user", "content": content}])  # type: ignore[arg-type, misc]
    assert r.choices[0].message.content == "A pixel."
    cell.check_images([("data", "image/png", PNG)])

    by_url = [{"type": "text", "text": IMAGE_PROMPT},
              {"type": "image_url", "image_url": {"url": IMAGE_URL}}]
    if not cell.up.image_url:  # the provider takes images by value only: a clear 400
        with pytest.raises(openai.BadRequestError) as info:
            await client.chat.completions.create(
                model=cell.model, messages=[{"role": "user", "content": by_url}])  # type: ignore[arg-type, misc]
        assert "url" in info.value.message.lower()
        return
    cell.script(cell.up.say("A cat."))
    r = await client.chat.completions.create(
        model=cell.model, messages=[{"role": "user", "content": by_url}])  # type: ignore[arg-type, misc]
    assert r.choices[0].message.content == "A cat."
    cell.check_images([("url", None, IMAGE_URL)])


async def reasoning(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.think(REASONING, "Hi!"), cell.up.say("Bye!"))
    chunks = await collect(await client.chat.completions.create(
        model=cell.reasoning_model, messages=HI, reasoning_effort="high", stream=True))  # type: ignore[arg-type]
    thought = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                      for c in chunks if c.choices)
    said = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (thought, said) == (REASONING, "Hi!")
    history = [*HI, {"role": "assistant", "content": said, "reasoning_content": thought},
               {"role": "user", "content": "bye"}]
    r = await client.chat.completions.create(model=cell.reasoning_model, messages=history,  # type: ignore[arg-type]
                                             reasoning_effort="high")
    assert r.choices[0].message.content == "Bye!"
    cell.check_reasoning_back(carries_opaque=CARRIES_OPAQUE,
                              texts=[REASONING] if cell.up.name == "openai" else None)


async def error(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.fail(400))
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model=cell.model, messages=HI)  # type: ignore[arg-type]
    assert bad.value.status_code == 400 and "Fake upstream error 400" in bad.value.message
    cell.script(cell.up.fail(500))
    with pytest.raises(openai.InternalServerError) as broken:
        await client.chat.completions.create(model=cell.model, messages=HI)  # type: ignore[arg-type]
    assert broken.value.status_code == 500
    await cell.check_logged(status=500, usage=False)


async def stream_error(cell: Cell) -> None:
    cell.script(cell.up.break_stream())
    stream = await sdk(cell).chat.completions.create(model=cell.model, messages=HI, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError) as info:
        await collect(stream)
    assert info.value.message
    await cell.check_logged(status=502, usage=False)
