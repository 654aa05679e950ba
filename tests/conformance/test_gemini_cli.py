"""Gemini CLI against every provider type.

Gemini CLI streams ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``
with its key in ``x-goog-api-key`` (or ``?key=``), tools declared with
``parametersJsonSchema`` (``$schema`` included) or the OpenAPI subset with
upper-case types, ``thinkingConfig.includeThoughts``, history whose
``functionCall`` parts carry a ``thoughtSignature`` (the documented
``skip_thought_signature_validator`` dummy included) and ``functionResponse``
parts with the call's ``id``.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from conformance.clients import ollama_chat, openai_chat
from conformance.conftest import cells
from conformance.harness import ANSWER, TOOL_ARGS, TOOL_NAME, TOOL_RESULT, Cell
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.gemini.parts import SKIP_SIGNATURE
from omniroute.sse import SSESplitter, event_data

LIST_SCHEMA = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
               "properties": {"dir_path": {"type": "string"}}, "required": ["dir_path"]}
READ_OPENAPI = {"type": "OBJECT", "properties": {"file_path": {"type": "STRING"},
                                                  "limit": {"type": "INTEGER",
                                                            "nullable": True}},
                "required": ["file_path"]}
READ_SCHEMA = {"type": "object", "properties": {"file_path": {"type": "string"},
                                                "limit": {"type": ["integer", "null"]}},
               "required": ["file_path"]}


def gemini_cli_body(signature: str = SKIP_SIGNATURE) -> dict[str, Any]:
    return {
        "contents": [
            {"role": "user", "parts": [{"text": "list the files"}]},
            {"role": "model", "parts": [
                {"text": "I will list the directory.", "thought": True},
                {"functionCall": {"id": "gc-1", "name": "list_directory",
                                  "args": {"dir_path": "."}},
                 "thoughtSignature": signature}]},
            {"role": "user", "parts": [{"functionResponse": {
                "id": "gc-1", "name": "list_directory",
                "response": {"output": "a.txt\nb.txt"}}}]},
        ],
        "systemInstruction": {"role": "user", "parts": [{"text": "You are Gemini CLI."}]},
        "tools": [{"functionDeclarations": [
            {"name": "list_directory", "description": "List a directory",
             "parametersJsonSchema": LIST_SCHEMA},
            {"name": "read_file", "description": "Read a file", "parameters": READ_OPENAPI},
        ]}],
        "generationConfig": {"temperature": 0, "topP": 1, "thinkingConfig": {
            "includeThoughts": True, "thinkingBudget": 8192}},
    }


def chunks(raw: bytes) -> list[dict[str, Any]]:
    splitter = SSESplitter()
    frames = [*splitter.feed(raw), splitter.tail()]
    assert all(f.startswith(b"data: ") for f in frames if f.strip())
    return [orjson.loads(event_data(f) or b"{}") for f in frames if f.strip()]


async def post(cell: Cell, body: dict[str, Any], *, stream: bool = True,
               key_in: str = "header", key: str = "AIza-client") -> Any:
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    url = f"/v1beta/models/{cell.reasoning_model}:{method}"
    headers = {"Content-Type": "application/json"}
    if key_in == "header":
        headers["x-goog-api-key"] = key
    elif key_in == "query":
        url += ("&" if "?" in url else "?") + f"key={key}"
    return await cell.gw.client.post(url, data=orjson.dumps(body), headers=headers)


def _tools(cell: Cell, body: dict[str, Any]) -> dict[str, Any]:
    return {name: schema for name, _, schema in cell.up.tools(body)}


@pytest.mark.parametrize("cell", cells(["gemini"], ["openai", "anthropic", "responses",
                                                    "ollama"]), indirect=True)
async def test_gemini_cli_translated(cell: Cell) -> None:
    cell.script(cell.up.say("Two files."))
    resp = await post(cell, gemini_cli_body())
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    got = chunks(await resp.read())
    text = "".join(p.get("text", "") for ch in got for p in ch["candidates"][0]["content"]["parts"]
                   if not p.get("thought"))
    assert text == "Two files." and got[-1]["candidates"][0]["finishReason"] == "STOP"
    assert got[-1]["usageMetadata"]["promptTokenCount"] == 11
    upstream = cell.last()
    schemas = _tools(cell, upstream)
    assert schemas["read_file"] == READ_SCHEMA, "the OpenAPI subset arrives as JSON Schema"
    assert {k: v for k, v in schemas["list_directory"].items() if k != "$schema"} == {
        k: v for k, v in LIST_SCHEMA.items() if k != "$schema"}
    turns = cell.up.tool_turns(upstream)
    assert (turns.call_id, turns.result_id) == ("gc-1", "gc-1")
    assert (turns.name, turns.args, turns.result_text) == (
        "list_directory", {"dir_path": "."}, "a.txt\nb.txt")
    assert SKIP_SIGNATURE not in json.dumps(upstream), "Gemini's dummy stays with Gemini"
    assert cell.up.thinking_asked(upstream) or cell.up.name == "anthropic", \
        "thinking is asked for (Anthropic: left off, the tool turn has no signed thinking)"
    if cell.up.name == "anthropic":
        assert "thinking" not in upstream


@pytest.mark.parametrize("cell", cells(["gemini"], ["gemini"]), indirect=True)
async def test_gemini_cli_reaches_gemini_unchanged(cell: Cell) -> None:
    body = gemini_cli_body()
    resp = await post(cell, body, key_in="query")
    assert resp.status == 200, await resp.text()
    chunks(await resp.read())
    got = cell.fake.requests[-1]
    assert got.json == body and got.query["alt"] == "sse"
    assert got.path == f"/v1beta/models/{cell.up.reasoning_model}:streamGenerateContent"
    assert got.headers["x-goog-api-key"] == cell.up.key, "the gateway's key, not the client's"
    assert "key" not in got.query


@pytest.mark.parametrize("cell", cells(["gemini"], ["gemini"]), indirect=True)
async def test_foreign_signatures_left_out_on_the_pass_through_lane(cell: Cell) -> None:
    """A history that went through Anthropic holds packed thought signatures; a Gemini 3
    upstream gets its own dummy instead on the call, and no foreign thought part."""
    packed = carry.pack(c.Reasoning(text="t", signature="EqQBCkYIBRgC", source="anthropic"))
    body = gemini_cli_body(packed)
    body["contents"][1]["parts"][0]["thoughtSignature"] = packed
    url = "/v1beta/models/ge/gemini-3-pro-preview:generateContent"
    resp = await cell.gw.client.post(url, data=orjson.dumps(body),
                                     headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    model_turn = cell.last()["contents"][1]["parts"]
    assert model_turn == [{"functionCall": {"id": "gc-1", "name": "list_directory",
                                            "args": {"dir_path": "."}},
                           "thoughtSignature": SKIP_SIGNATURE}]


@pytest.mark.parametrize("cell", cells(["gemini"], ["openai"]), indirect=True)
async def test_gemini_key_in_header_or_query(cell: Cell) -> None:
    secret = await cell.gw.create_key("gemini-cli")
    await cell.gw.set_settings(require_api_key=True)
    for where in ("header", "query"):
        cell.script(cell.up.say(None))
        resp = await post(cell, gemini_cli_body(), key_in=where, key=secret)
        assert resp.status == 200, (where, await resp.text())
        await resp.read()
    resp = await post(cell, gemini_cli_body(), key_in="none")
    assert resp.status == 401
    err = (await resp.json())["error"]
    assert err["code"] == 401 and err["status"] == "UNAUTHENTICATED" and err["message"]


@pytest.mark.parametrize("cell", cells(["openai", "ollama"], ["gemini"]), indirect=True)
async def test_gemini3_tool_loop_from_clients_without_signatures(cell: Cell) -> None:
    """Gemini 3 refuses a call sent back without its thought signature; a client that
    cannot carry one (Chat Completions, Ollama) gets the documented dummy on the call."""
    cell.script(cell.up.call(TOOL_NAME, TOOL_ARGS), cell.up.say(ANSWER))
    model = "ge/gemini-3-pro-preview"
    question = [{"role": "user", "content": "weather?"}]
    if cell.client == "openai":
        client = openai_chat.sdk(cell)
        first = await client.chat.completions.create(model=model, messages=question,  # type: ignore[arg-type]
                                                     tools=[openai_chat.TOOL])  # type: ignore[list-item]
        call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
        history = [*question, first.choices[0].message.model_dump(exclude_none=True),
                   {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT}]
        second = await client.chat.completions.create(model=model, messages=history,  # type: ignore[arg-type]
                                                      tools=[openai_chat.TOOL])  # type: ignore[list-item]
        assert second.choices[0].message.content == ANSWER
    else:
        ollama = ollama_chat.sdk(cell)
        first = await ollama.chat(model=model, messages=question, tools=[ollama_chat.TOOL],
                                  stream=False)
        history = [*question, first.message.model_dump(exclude_none=True),
                   {"role": "tool", "content": TOOL_RESULT, "tool_name": TOOL_NAME}]
        second = await ollama.chat(model=model, messages=history, tools=[ollama_chat.TOOL],
                                   stream=False)
        assert second.message.content == ANSWER
    call_part = next(p for c_ in cell.last()["contents"] for p in c_["parts"]
                     if "functionCall" in p)
    assert call_part["thoughtSignature"] == SKIP_SIGNATURE


async def test_gemini_count_tokens_and_model_info(gateway: Any) -> None:
    gw = gateway
    from google import genai

    ge = await gw.add_provider({"type": "openai", "name": "g", "prefix": "cg",
                                "base_url": "http://127.0.0.1:9/v1", "models": ["m1"]})
    assert ge["prefix"] == "cg"
    client = genai.Client(api_key="k", http_options={"base_url": gw.base_url,
                                                     "api_version": "v1beta"})
    counted = await client.aio.models.count_tokens(model="cg/m1",
                                                   contents="The quick brown fox jumps")
    assert 5 <= counted.total_tokens <= 9
    info = await client.aio.models.get(model="cg/m1")
    assert info.name == "models/cg/m1"
    resp = await gw.client.get("/v1beta/models/cg/nope")
    assert resp.status == 404
    # google-genai's default api_version v1 shares /v1/models with OpenAI clients
    v1 = genai.Client(api_key="k", http_options={"base_url": gw.base_url})
    assert (await v1.aio.models.get(model="cg/m1")).name == "models/cg/m1"
    listed = [m.name async for m in await v1.aio.models.list()]
    assert "models/cg/m1" in listed
    openai_view = await gw.client.get("/v1/models/cg/m1")
    assert (await openai_view.json())["id"] == "cg/m1"
