"""The ``google-genai`` SDK (``genai.Client``), on ``/v1beta`` and on its default ``/v1``.

The model name holds the connection prefix (``oa/gpt-4o-mini``); the SDK puts
it in the URL (``models/oa/gpt-4o-mini:generateContent``). History is built
the way Gemini CLI builds it: the parts of every streamed chunk, thoughts left
out in tool loops (function calls keep their ``thoughtSignature``).
"""

from __future__ import annotations

from typing import Any

import pytest
from google import genai
from google.genai import errors, types

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
from conformance.upstreams import IMAGE_URL, INPUT_TOKENS, OUTPUT_TOKENS, PNG

#: thought signatures are opaque bytes the client sends back on the same parts
CARRIES_OPAQUE = True
TOOL = types.Tool(function_declarations=[types.FunctionDeclaration(
    name=TOOL_NAME, description=TOOL_DESCRIPTION, parameters_json_schema=TOOL_SCHEMA)])
NO_AUTO = types.AutomaticFunctionCallingConfig(disable=True)


def sdk(cell: Cell, api_version: str | None = "v1beta") -> genai.Client:
    options: dict[str, Any] = {"base_url": cell.base_url}
    if api_version is not None:
        options["api_version"] = api_version
    return genai.Client(api_key="AIza-client", http_options=options)  # type: ignore[arg-type]


def usage_pair(response: Any) -> tuple[int, int]:
    usage = response.usage_metadata
    return usage.prompt_token_count, (usage.candidates_token_count or 0) + (
        usage.thoughts_token_count or 0)


def parts_of(chunks: list[Any]) -> list[types.Part]:
    return [p for c in chunks if c.candidates and c.candidates[0].content
            for p in c.candidates[0].content.parts or []]


async def stream(client: genai.Client, **kwargs: Any) -> list[Any]:
    return [c async for c in await client.aio.models.generate_content_stream(**kwargs)]


async def text(cell: Cell) -> None:
    for version in ("v1beta", None):  # the gateway serves /v1beta/models/... and /v1/models/...
        cell.script(cell.up.say(None))
        r = await sdk(cell, version).aio.models.generate_content(model=cell.model,
                                                                 contents="hi there")
        assert r.text == ECHO
        assert r.candidates and r.candidates[0].finish_reason == types.FinishReason.STOP
        assert usage_pair(r) == (INPUT_TOKENS, OUTPUT_TOKENS)
        await cell.check_logged(stream=False)


async def stream_text(cell: Cell) -> None:
    cell.script(cell.up.say(None))
    chunks = await stream(sdk(cell, None), model=cell.model, contents="hi there")
    assert "".join(p.text or "" for p in parts_of(chunks) if not p.thought) == ECHO
    finishes = [c.candidates[0].finish_reason for c in chunks if c.candidates
                and c.candidates[0].finish_reason]
    assert finishes == [types.FinishReason.STOP]
    assert usage_pair(chunks[-1]) == (INPUT_TOKENS, OUTPUT_TOKENS)
    await cell.check_logged(stream=True)


async def tool_round_trip(cell: Cell) -> None:
    cell.script(cell.up.call(TOOL_NAME, TOOL_ARGS), cell.up.say(ANSWER))
    client = sdk(cell)
    config = types.GenerateContentConfig(tools=[TOOL], automatic_function_calling=NO_AUTO)
    question = types.Content(role="user", parts=[types.Part(text=QUESTION)])
    chunks = await stream(client, model=cell.model, contents=[question], config=config)
    calls = [p.function_call for p in parts_of(chunks) if p.function_call]
    assert len(calls) == 1, f"one call, whole: {calls}"
    call = calls[0]
    assert (call.name, call.args) == (TOOL_NAME, TOOL_ARGS)
    model_turn = types.Content(role="model", parts=[
        p for p in parts_of(chunks) if not p.thought and (p.function_call or p.text)])
    result = types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
        id=call.id, name=call.name, response={"output": TOOL_RESULT}))])
    r = await client.aio.models.generate_content(
        model=cell.model, contents=[question, model_turn, result], config=config)
    assert r.text == ANSWER
    cell.check_tool_turns(call.id, carries_opaque=CARRIES_OPAQUE)


async def image(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.say("A pixel."))
    r = await client.aio.models.generate_content(model=cell.model, contents=[types.Content(
        role="user", parts=[types.Part(text=IMAGE_PROMPT),
                            types.Part.from_bytes(data=png_bytes(), mime_type="image/png")])])
    assert r.text == "A pixel."
    cell.check_images([("data", "image/png", PNG)])

    by_url = [types.Content(role="user", parts=[
        types.Part(text=IMAGE_PROMPT), types.Part.from_uri(file_uri=IMAGE_URL,
                                                           mime_type="image/png")])]
    if not cell.up.image_url:
        with pytest.raises(errors.ClientError) as info:
            await client.aio.models.generate_content(model=cell.model, contents=by_url)
        assert info.value.code == 400 and "url" in (info.value.message or "").lower()
        return
    cell.script(cell.up.say("A cat."))
    r = await client.aio.models.generate_content(model=cell.model, contents=by_url)
    assert r.text == "A cat."
    cell.check_images([("url", None, IMAGE_URL)])


async def reasoning(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.think(REASONING, "Hi!"), cell.up.say("Bye!"))
    config = types.GenerateContentConfig(
        thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=4096))
    chunks = await stream(client, model=cell.reasoning_model, contents="hi there", config=config)
    parts = parts_of(chunks)
    assert "".join(p.text or "" for p in parts if p.thought) == REASONING
    assert "".join(p.text or "" for p in parts if not p.thought) == "Hi!"
    history = [types.Content(role="user", parts=[types.Part(text="hi there")]),
               types.Content(role="model", parts=parts),
               types.Content(role="user", parts=[types.Part(text="bye")])]
    r = await client.aio.models.generate_content(model=cell.reasoning_model, contents=history,
                                                 config=config)
    assert r.text == "Bye!"
    cell.check_reasoning_back(carries_opaque=CARRIES_OPAQUE)


async def error(cell: Cell) -> None:
    client = sdk(cell)
    cell.script(cell.up.fail(400))
    with pytest.raises(errors.ClientError) as bad:
        await client.aio.models.generate_content(model=cell.model, contents="hi there")
    assert bad.value.code == 400 and bad.value.status == "INVALID_ARGUMENT"
    assert "Fake upstream error 400" in (bad.value.message or "")
    cell.script(cell.up.fail(500))
    with pytest.raises(errors.ServerError) as broken:
        await client.aio.models.generate_content(model=cell.model, contents="hi there")
    assert broken.value.code == 500
    await cell.check_logged(status=500, usage=False)


async def stream_error(cell: Cell) -> None:
    cell.script(cell.up.break_stream())
    with pytest.raises(errors.APIError) as info:
        await stream(sdk(cell), model=cell.model, contents="hi there")
    assert info.value.message
    await cell.check_logged(status=502, usage=False)
