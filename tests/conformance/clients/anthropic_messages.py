"""The ``anthropic`` SDK on Messages (``base_url = <gateway root>``).

Streams go through ``client.messages.stream(...)`` and ``get_final_message()``,
which rebuild the message from the events and reject a malformed sequence.
"""

from __future__ import annotations

from typing import Any

import anthropic
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

#: thinking blocks carry a signature the client sends back untouched
CARRIES_OPAQUE = True
TOOL = {"name": TOOL_NAME, "description": TOOL_DESCRIPTION, "input_schema": TOOL_SCHEMA}
HI = [{"role": "user", "content": "hi there"}]


def sdk(cell: Cell) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=cell.base_url, api_key="sk-client", max_retries=0,
                                    timeout=10)


async def streamed(client: anthropic.AsyncAnthropic, **kwargs: Any) -> tuple[list[str], Any]:
    """The event types and the final message of a streamed answer."""
    async with client.messages.stream(**kwargs) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    return kinds, final


def texts(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


async def text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    m = await sdk(cell).messages.create(model=cell.model, max_tokens=256, messages=HI)  # type: ignore[arg-type]
    assert [b.type for b in m.content] == ["text"], m.content
    assert texts(m) == ECHO, m.content
    assert m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=False)


async def stream_text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    kinds, m = await streamed(sdk(cell), model=cell.model, max_tokens=256, messages=HI)
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert [b.type for b in m.content] == ["text"], m.content
    assert texts(m) == ECHO, m.content
    assert m.stop_reason == "end_turn"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=True)


async def tool_round_trip(cell: Cell) -> None:
    cell.script(cell.up.call(TOOL_NAME, TOOL_ARGS), cell.up.say(ANSWER))
    client = sdk(cell)
    question = [{"role": "user", "content": QUESTION}]
    _, m = await streamed(client, model=cell.model, max_tokens=1024, messages=question,
                          tools=[TOOL])
    calls = [b for b in m.content if b.type == "tool_use"]
    assert len(calls) == 1, f"one call, in one block: {m.content}"
    call = calls[0]
    assert (call.name, call.input) == (TOOL_NAME, TOOL_ARGS) and call.id
    assert m.stop_reason == "tool_use"
    history = [*question,
               {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                 for b in m.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                             "content": TOOL_RESULT}]}]
    r = await client.messages.create(model=cell.model, max_tokens=1024, messages=history,  # type: ignore[arg-type]
                                     tools=[TOOL])  # type: ignore[list-item]
    assert texts(r) == ANSWER
    cell.check_tool_turns(call.id, carries_opaque=CARRIES_OPAQUE)


async def image(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.say("A pixel."))
    content = [{"type": "text", "text": IMAGE_PROMPT},
               {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                            "data": PNG}}]
    r = await client.messages.create(model=cell.model, max_tokens=256,  # type: ignore[arg-type]
                                     messages=[{"role": "user", "content": content}])  # type: ignore[list-item]
    assert texts(r) == "A pixel."
    cell.check_images([("data", "image/png", PNG)])

    by_url = [{"type": "text", "text": IMAGE_PROMPT},
              {"type": "image", "source": {"type": "url", "url": IMAGE_URL}}]
    if not cell.up.image_url:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(model=cell.model, max_tokens=256,  # type: ignore[arg-type]
                                         messages=[{"role": "user", "content": by_url}])  # type: ignore[list-item]
        assert "url" in info.value.message.lower()
        return
    cell.script(cell.up.say("A cat."))
    r = await client.messages.create(model=cell.model, max_tokens=256,  # type: ignore[arg-type]
                                     messages=[{"role": "user", "content": by_url}])  # type: ignore[list-item]
    assert texts(r) == "A cat."
    cell.check_images([("url", None, IMAGE_URL)])


async def reasoning(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.think(REASONING, "Hi!"), cell.up.say("Bye!"))
    thinking = {"type": "enabled", "budget_tokens": 2048}
    _, m = await streamed(client, model=cell.reasoning_model, max_tokens=4096, messages=HI,
                          thinking=thinking)
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == REASONING and m.content[0].signature
    assert texts(m) == "Hi!"
    history = [*HI, {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                      for b in m.content]},
               {"role": "user", "content": "bye"}]
    r = await client.messages.create(model=cell.reasoning_model, max_tokens=4096,  # type: ignore[arg-type]
                                     messages=history, thinking=thinking)  # type: ignore[arg-type]
    assert texts(r) == "Bye!"
    cell.check_reasoning_back(carries_opaque=CARRIES_OPAQUE,
                              texts=[REASONING] if cell.up.name != "responses" else None)


async def error(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.fail(400))
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(model=cell.model, max_tokens=256, messages=HI)  # type: ignore[arg-type]
    assert bad.value.status_code == 400 and "Fake upstream error 400" in bad.value.message
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    cell.script(cell.up.fail(500))
    with pytest.raises(anthropic.InternalServerError) as broken:
        await client.messages.create(model=cell.model, max_tokens=256, messages=HI)  # type: ignore[arg-type]
    assert broken.value.status_code == 500
    await cell.check_logged(status=500, usage=False)


async def stream_error(cell: Cell) -> None:
    cell.script(cell.up.break_stream())
    with pytest.raises(anthropic.APIStatusError) as info:
        await streamed(sdk(cell), model=cell.model, max_tokens=256, messages=HI)
    assert info.value.body["type"] == "error"  # type: ignore[index]
    await cell.check_logged(status=502, usage=False)
