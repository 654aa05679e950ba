"""The ``openai`` SDK on the Responses API (``client.responses.create`` / ``.stream``).

``responses.stream(...)`` rebuilds the response from the events and checks
their identities (an item added twice, a completed response with unfinished
items, ids that change) before ``get_final_response()`` hands it over.
"""

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

#: reasoning items carry ``encrypted_content`` the client replays untouched
CARRIES_OPAQUE = True
TOOL = {"type": "function", "name": TOOL_NAME, "description": TOOL_DESCRIPTION,
        "parameters": TOOL_SCHEMA}


def sdk(cell: Cell) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=cell.base_url + "/v1", api_key="sk-client",
                              max_retries=0, timeout=10)


async def streamed(client: openai.AsyncOpenAI, **kwargs: Any) -> tuple[list[Any], Any]:
    async with client.responses.stream(**kwargs) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    return events, final


def output_kinds(cell: Cell, response: Any) -> list[str]:
    """The item types of an answer; a Responses upstream's own (empty) reasoning items, which
    the pass-through lane relays unchanged, left out."""
    return [item.type for item in response.output
            if not (item.type == "reasoning" and cell.up.name == "responses")]


def replay(items: list[Any]) -> list[dict[str, Any]]:
    """Output items as a client sends them back in ``input``."""
    return [item.model_dump(exclude_none=True) for item in items]


async def text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    r = await sdk(cell).responses.create(model=cell.model, input="hi there")
    assert r.status == "completed" and r.output_text == ECHO
    assert output_kinds(cell, r) == ["message"]
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=False)


async def stream_text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    events, r = await streamed(sdk(cell), model=cell.model, input="hi there")
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ECHO
    assert r.output_text == ECHO and output_kinds(cell, r) == ["message"]
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=True)


async def tool_round_trip(cell: Cell) -> None:
    cell.script(cell.up.call(TOOL_NAME, TOOL_ARGS), cell.up.say(ANSWER))
    client = sdk(cell)
    question = [{"role": "user", "content": QUESTION}]
    events, r = await streamed(client, model=cell.model, input=question, tools=[TOOL])
    calls = [item for item in r.output if item.type == "function_call"]
    assert len(calls) == 1, f"one call, in one item: {r.output}"
    call = calls[0]
    assert call.name == TOOL_NAME and json.loads(call.arguments) == TOOL_ARGS and call.call_id
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(deltas) == TOOL_ARGS
    history = [*question, *replay(r.output),
               {"type": "function_call_output", "call_id": call.call_id, "output": TOOL_RESULT}]
    again = await client.responses.create(model=cell.model, input=history, tools=[TOOL])  # type: ignore[arg-type, list-item]
    assert again.output_text == ANSWER
    cell.check_tool_turns(call.call_id, carries_opaque=CARRIES_OPAQUE)


async def image(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.say("A pixel."))
    content = [{"type": "input_text", "text": IMAGE_PROMPT},
               {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}",
                "detail": "auto"}]
    r = await client.responses.create(model=cell.model,
                                      input=[{"role": "user", "content": content}])  # type: ignore[list-item, misc]
    assert r.output_text == "A pixel."
    cell.check_images([("data", "image/png", PNG)])

    by_url = [{"type": "input_text", "text": IMAGE_PROMPT},
              {"type": "input_image", "image_url": IMAGE_URL, "detail": "auto"}]
    if not cell.up.image_url:
        with pytest.raises(openai.BadRequestError) as info:
            await client.responses.create(model=cell.model,
                                          input=[{"role": "user", "content": by_url}])  # type: ignore[list-item, misc]
        assert "url" in info.value.message.lower()
        return
    cell.script(cell.up.say("A cat."))
    r = await client.responses.create(model=cell.model,
                                      input=[{"role": "user", "content": by_url}])  # type: ignore[list-item, misc]
    assert r.output_text == "A cat."
    cell.check_images([("url", None, IMAGE_URL)])


async def reasoning(cell: Cell) -> None:
    """Codex's way: store false, encrypted reasoning asked for and replayed."""
    client = sdk(cell)
    cell.script(cell.up.think(REASONING, "Hi!"), cell.up.say("Bye!"))
    options: dict[str, Any] = {"reasoning": {"effort": "low", "summary": "auto"}, "store": False,
                               "include": ["reasoning.encrypted_content"]}
    _, r = await streamed(client, model=cell.reasoning_model, input="hi there", **options)
    assert [item.type for item in r.output] == ["reasoning", "message"]
    thought = r.output[0]
    assert [s.text for s in thought.summary] == [REASONING] and r.output_text == "Hi!"
    history = [{"role": "user", "content": "hi there"}, *replay(r.output),
               {"role": "user", "content": "bye"}]
    again = await client.responses.create(model=cell.reasoning_model, input=history, **options)  # type: ignore[arg-type]
    assert again.output_text == "Bye!"
    cell.check_reasoning_back(carries_opaque=CARRIES_OPAQUE)


async def error(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.fail(400))
    with pytest.raises(openai.BadRequestError) as bad:
        await client.responses.create(model=cell.model, input="hi there")
    assert bad.value.status_code == 400 and "Fake upstream error 400" in bad.value.message
    cell.script(cell.up.fail(500))
    with pytest.raises(openai.InternalServerError) as broken:
        await client.responses.create(model=cell.model, input="hi there")
    assert broken.value.status_code == 500
    await cell.check_logged(status=500, usage=False)


async def stream_error(cell: Cell) -> None:
    cell.script(cell.up.break_stream())
    async with sdk(cell).responses.stream(model=cell.model, input="hi there") as stream:
        events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "error", kinds
    assert "response.completed" not in kinds and events[-1].message
    await cell.check_logged(status=502, usage=False)
