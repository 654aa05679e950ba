"""Codex CLI against every provider type.

Codex streams ``POST /v1/responses`` with ``store: false``, a developer-role item,
``include: ["reasoning.encrypted_content"]``, replayed ``reasoning`` items,
``function_call`` / ``function_call_output`` items, MCP tools grouped in
``namespace`` tools and the hosted ``web_search`` tool. It first tries
``GET /v1/responses`` (a WebSocket) and must be refused at once.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from conformance.clients.responses_api import sdk, streamed
from conformance.conftest import cells, packed_reasoning
from conformance.harness import Cell

SHELL_SCHEMA = {"type": "object", "properties": {
    "command": {"type": "array", "items": {"type": "string"}}}, "required": ["command"]}
READ_SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}},
               "required": ["path"]}
OPENAI_BLOB = "gAAAAABoCodexEncryptedReasoningBlob=="


def codex_body(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "instructions": "You are Codex, a coding agent.",
        "stream": True,
        "store": False,
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "medium", "summary": "auto"},
        "prompt_cache_key": "0199-conversation",
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "input": [
            {"type": "message", "role": "developer", "content": [
                {"type": "input_text",
                 "text": "<permissions>sandbox: workspace-write</permissions>"}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "list the files"}]},
            {"type": "reasoning", "id": "rs_1", "encrypted_content": OPENAI_BLOB,
             "summary": [{"type": "summary_text", "text": "**Listing files**"}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "shell",
             "arguments": json.dumps({"command": ["ls"]})},
            {"type": "function_call_output", "call_id": "call_1", "output": "a.txt\nb.txt"},
        ],
        "tools": [
            {"type": "function", "name": "shell", "description": "Run a command",
             "parameters": SHELL_SCHEMA, "strict": False},
            {"type": "namespace", "name": "mcp__fs__", "description": "File tools",
             "tools": [{"type": "function", "name": "read", "description": "Read a file",
                        "parameters": READ_SCHEMA}]},
            {"type": "web_search"},
        ],
    }


def _openai(body: dict[str, Any]) -> tuple[list[str], str, str]:
    messages = body["messages"]
    call = messages[2]["tool_calls"][0]
    result = messages[3]
    assert result["tool_call_id"] == call["id"]
    return ([m["role"] for m in messages], call["id"],
            json.dumps([t["function"]["name"] for t in body["tools"]]))


def _anthropic(body: dict[str, Any]) -> tuple[list[str], str, str]:
    messages = body["messages"]
    call = next(b for b in messages[1]["content"] if b["type"] == "tool_use")
    result = messages[2]["content"][0]
    assert result["tool_use_id"] == call["id"]
    assert "thinking" not in body, "the last tool turn has no signed thinking: thinking is off"
    return ([m["role"] for m in messages], call["id"],
            json.dumps([t["name"] for t in body["tools"]]))


def _gemini(body: dict[str, Any]) -> tuple[list[str], str, str]:
    contents = body["contents"]
    call = next(p["functionCall"] for p in contents[1]["parts"] if "functionCall" in p)
    result = contents[2]["parts"][0]["functionResponse"]
    assert result["id"] == call["id"] and result["name"] == call["name"]
    names = [d["name"] for t in body["tools"] for d in t.get("functionDeclarations", [])]
    return [x["role"] for x in contents], call["id"], json.dumps(names)


def _ollama(body: dict[str, Any]) -> tuple[list[str], str, str]:
    messages = body["messages"]
    call = messages[2]["tool_calls"][0]
    assert messages[3]["tool_name"] == call["function"]["name"]
    return ([m["role"] for m in messages], call["id"],
            json.dumps([t["function"]["name"] for t in body["tools"]]))


EXPECTED = {
    "openai": (_openai, ["system", "user", "assistant", "tool"]),
    "anthropic": (_anthropic, ["user", "assistant", "user"]),
    "gemini": (_gemini, ["user", "model", "user"]),
    "ollama": (_ollama, ["system", "user", "assistant", "tool"]),
}


@pytest.mark.parametrize("cell", cells(["responses"], list(EXPECTED)), indirect=True)
async def test_codex_translated(cell: Cell) -> None:
    """Namespaces flattened, hosted tools dropped, the call and its output matched, OpenAI's
    encrypted reasoning kept away; the model's call to an MCP tool reaches Codex back in its
    namespace."""
    cell.script(cell.up.call("mcp__fs__read", {"path": "a.txt"}))
    body = codex_body(cell.reasoning_model)
    _, final = await streamed(sdk(cell), **{k: v for k, v in body.items() if k != "stream"})
    calls = [i for i in final.output if i.type == "function_call"]
    assert [(i.name, i.namespace, json.loads(i.arguments)) for i in calls] == [
        ("read", "mcp__fs__", {"path": "a.txt"})]
    upstream = cell.up.shaped(cell.last())
    check, roles = EXPECTED[cell.up.name]
    got_roles, call_id, tool_names = check(upstream)
    assert got_roles == roles
    assert call_id == "call_1"
    assert json.loads(tool_names) == ["shell", "mcp__fs__read"], "web_search is Responses-only"
    flat = json.dumps(upstream)
    assert OPENAI_BLOB not in flat and "encrypted" not in flat
    assert "sandbox: workspace-write" in flat, "the developer message arrives"


@pytest.mark.parametrize("cell", cells(["responses"], ["responses"]), indirect=True)
async def test_codex_reaches_responses_unchanged(cell: Cell) -> None:
    body = codex_body(cell.reasoning_model)
    resp = await cell.gw.client.post("/v1/responses", data=orjson.dumps(body),
                                     headers={"Authorization": "Bearer sk-client",
                                              "Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    await resp.read()
    assert cell.last() == {**body, "model": cell.up.reasoning_model}


@pytest.mark.parametrize("cell", cells(["responses"], ["responses"]), indirect=True)
async def test_foreign_reasoning_left_out_on_the_pass_through_lane(
        cell: Cell, aiohttp_server: Any) -> None:
    """A reasoning item that packs another provider's reasoning (the conversation went
    through Anthropic) is not sent to a Responses upstream, which would refuse it."""
    body = codex_body(cell.reasoning_model)
    packed = await packed_reasoning(cell.gw, aiohttp_server, "responses")
    body["input"].insert(2, {"type": "reasoning", "id": "rs_0", "encrypted_content": packed,
                             "summary": [{"type": "summary_text", "text": "t"}]})
    resp = await cell.gw.client.post("/v1/responses", data=orjson.dumps(body),
                                     headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    await resp.read()
    sent = cell.last()["input"]
    assert [i.get("id") for i in sent if i.get("type") == "reasoning"] == ["rs_1"]


@pytest.mark.parametrize("cell", cells(["responses"], ["openai"]), indirect=True)
async def test_codex_websocket_probe_is_refused_at_once(cell: Cell) -> None:
    resp = await cell.gw.client.get("/v1/responses", headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    err = (await resp.json())["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert cell.bodies() == []
