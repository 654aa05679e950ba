"""Claude Code against every provider type, and the Anthropic regressions.

Claude Code posts to ``/v1/messages?beta=true`` with ``anthropic-beta`` and an
``anthropic-version`` the gateway may not know, ``system`` blocks with
``cache_control``, ``role: "system"`` messages mid-conversation (the
``mid-conversation-system`` beta), adaptive thinking, ``output_config``,
``context_management``, ``metadata.user_id`` holding JSON text, and tool
schemas with ``$schema``.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import orjson
import pytest

from conformance.clients.anthropic_messages import sdk, streamed, texts
from conformance.conftest import add_cell, cells
from conformance.harness import REASONING, TOOL_ARGS, TOOL_RESULT, Cell
from conformance.upstreams import UPSTREAMS
from omniroute.formats.canonical import SYSTEM_REMINDER
from omniroute.sse import SSESplitter, event_data, event_name

BETAS = ("claude-code-20250219,interleaved-thinking-2025-05-14,"
         "mid-conversation-system-2026-04-07,context-management-2025-06-27")
HEADERS = {"anthropic-beta": BETAS, "anthropic-version": "2026-10-21",
           "x-api-key": "sk-client", "content-type": "application/json"}
USER_ID = json.dumps({"device_id": "d0e1", "account_uuid": "a-1", "session_id": "s-1"})
BASH_SCHEMA = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
               "properties": {"command": {"type": "string", "description": "The command"}},
               "required": ["command"], "additionalProperties": False}
PLAN_MODE = "Plan mode is active: do not edit files."


def claude_code_body(model: str, *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 32000,
        "stream": stream,
        "system": [
            {"type": "text", "text": "You are Claude Code, Anthropic's official CLI for Claude.",
             "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Working directory: /repo",
             "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "<system-reminder>\nAs you answer...\n</system-reminder>"},
                {"type": "text", "text": "list the files", "cache_control": {"type": "ephemeral"}},
            ]},
            {"role": "system", "content": PLAN_MODE},
        ],
        "tools": [{"name": "Bash", "description": "Run a shell command",
                   "input_schema": BASH_SCHEMA, "cache_control": {"type": "ephemeral"}}],
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "metadata": {"user_id": USER_ID},
    }


def sse_events(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    splitter = SSESplitter()
    frames = [*splitter.feed(raw), splitter.tail()]
    return [(event_name(f), orjson.loads(event_data(f) or b"{}")) for f in frames if f.strip()]


def check_message_stream(events: list[tuple[str | None, dict[str, Any]]]) -> None:
    """The documented sequence: start, whole blocks one after another, delta, stop."""
    names = [n for n, _ in events if n != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    live = None
    for name, data in events:
        if name == "content_block_start":
            assert live is None, "a block starts only after the previous one stopped"
            live = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == live
        elif name == "content_block_stop":
            assert data["index"] == live
            live = None


# ---------------------------------------------------------------------------- pass-through


@pytest.mark.parametrize("cell", cells(["anthropic"], ["anthropic"]), indirect=True)
async def test_claude_code_reaches_anthropic_unchanged(cell: Cell) -> None:
    """Pass-through: body as sent except the model; Claude Code's headers go along."""
    body = claude_code_body(cell.model)
    resp = await cell.gw.client.post("/v1/messages?beta=true", data=orjson.dumps(body),
                                     headers=HEADERS)
    assert resp.status == 200, await resp.text()
    check_message_stream(sse_events(await resp.read()))
    got = cell.fake.requests[-1]
    assert got.json == {**body, "model": cell.up.model}
    assert got.headers["anthropic-beta"] == BETAS
    assert got.headers["anthropic-version"] == "2026-10-21"


@pytest.mark.parametrize("cell", cells(["anthropic"], ["anthropic"]), indirect=True)
async def test_cache_control_kept_on_the_pass_through_lane(cell: Cell) -> None:
    """Every ``cache_control`` mark (system, tools, text, tool_use, tool_result) arrives."""
    mark = {"type": "ephemeral", "ttl": "1h"}
    body = {
        "model": cell.model, "max_tokens": 1024,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": mark}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"},
                   "cache_control": mark}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "weather?",
                                          "cache_control": mark}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A",
                                               "name": "get_weather", "input": TOOL_ARGS,
                                               "cache_control": mark}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A",
                                          "content": TOOL_RESULT, "cache_control": mark}]},
        ],
    }
    resp = await cell.gw.client.post("/v1/messages", data=orjson.dumps(body), headers=HEADERS)
    assert resp.status == 200, await resp.text()
    assert cell.fake.requests[-1].json == {**body, "model": cell.up.model}


@pytest.mark.parametrize("cell", cells(["anthropic"], ["anthropic"]), indirect=True)
async def test_anthropic_stream_bytes_pass_unchanged(cell: Cell) -> None:
    sent = record_frames(cell.fake)
    cell.script(cell.up.think(REASONING, "Hello there, friend."))
    body = {"model": cell.model, "max_tokens": 4096, "stream": True,
            "thinking": {"type": "enabled", "budget_tokens": 2048},
            "messages": [{"role": "user", "content": "hi"}]}
    resp = await cell.gw.client.post("/v1/messages", data=orjson.dumps(body), headers=HEADERS)
    assert resp.status == 200
    assert await resp.read() == b"".join(sent[0])


def record_frames(fake: Any) -> list[list[bytes]]:
    """The exact SSE frames the Anthropic fake writes, per stream."""
    sent: list[list[bytes]] = []
    original = fake._events

    def recording(*args: Any) -> list[bytes]:
        frames = original(*args)
        sent.append(frames)
        return frames

    fake._events = recording
    return sent


# ---------------------------------------------------------------------------- translated


def _openai(body: dict[str, Any]) -> None:
    messages = body["messages"]
    assert messages[0]["role"] == "system" and "Claude Code" in json.dumps(messages[0])
    assert [m["role"] for m in messages] == ["system", "user", "system"]
    assert messages[2]["content"] == PLAN_MODE
    assert body["reasoning_effort"] == "high"
    assert body["tools"][0]["function"]["name"] == "Bash"


def _gemini(body: dict[str, Any]) -> None:
    system = [p["text"] for p in body["systemInstruction"]["parts"]]
    assert system[0].startswith("You are Claude Code") and system[1] == "Working directory: /repo"
    user = [p["text"] for c in body["contents"] for p in c["parts"]]
    assert user[-1] == SYSTEM_REMINDER.format(PLAN_MODE), "a later system message stays marked"
    decl = body["tools"][0]["functionDeclarations"][0]
    assert decl["parametersJsonSchema"] == {k: v for k, v in BASH_SCHEMA.items()
                                            if k != "$schema"}
    thinking = body["generationConfig"]["thinkingConfig"]
    assert thinking["includeThoughts"] is True and thinking["thinkingBudget"] > 0


def _responses(body: dict[str, Any]) -> None:
    assert body["instructions"].startswith("You are Claude Code")
    roles = [i.get("role") for i in body["input"]]
    assert roles == ["user", "developer"], "a later system message stays in place"
    assert body["reasoning"]["effort"] == "high"
    assert body["tools"][0]["name"] == "Bash"
    assert body["store"] is False


def _ollama(body: dict[str, Any]) -> None:
    assert [m["role"] for m in body["messages"]] == ["system", "user", "system"]
    assert body["think"] is True and body["tools"][0]["function"]["name"] == "Bash"


@pytest.mark.parametrize("cell", cells(["anthropic"], ["openai", "gemini", "responses",
                                                       "ollama"]), indirect=True)
async def test_claude_code_translated(cell: Cell) -> None:
    """Each provider gets Claude Code's request in its own terms, and Claude Code a stream
    its SDK accepts; Anthropic-only fields (context_management…) stay behind."""
    cell.script(cell.up.say("Here they are."))
    body = claude_code_body(cell.reasoning_model)
    resp = await cell.gw.client.post("/v1/messages?beta=true", data=orjson.dumps(body),
                                     headers=HEADERS)
    assert resp.status == 200, await resp.text()
    events = sse_events(await resp.read())
    check_message_stream(events)
    said = "".join(d["delta"].get("text", "") for n, d in events if n == "content_block_delta")
    assert said == "Here they are."
    upstream = cell.up.shaped(cell.last())
    flat = json.dumps(upstream)
    for anthropic_only in ("context_management", "cache_control", "output_config"):
        assert anthropic_only not in flat, anthropic_only
    {"openai": _openai, "gemini": _gemini, "responses": _responses,
     "ollama": _ollama}[cell.up.name](upstream)


# ---------------------------------------------------------------------------- thinking


WEATHER_TOOL = {"name": "get_weather", "description": "Weather", "input_schema": {
    "type": "object", "properties": {"location": {"type": "string"},
                                     "unit": {"type": "string"}}}}
THINKING = {"type": "enabled", "budget_tokens": 2048}


async def thinking_tool_turn(client: anthropic.AsyncAnthropic, model: str) -> tuple[Any, Any]:
    question = [{"role": "user", "content": "weather in Paris?"}]
    _, m = await streamed(client, model=model, max_tokens=4096, messages=question,
                          tools=[WEATHER_TOOL], thinking=THINKING)
    assert [b.type for b in m.content] == ["thinking", "tool_use"]
    history = [*question,
               {"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                 for b in m.content]},
               {"role": "user", "content": [{"type": "tool_result",
                                             "tool_use_id": m.content[1].id,
                                             "content": TOOL_RESULT}]}]
    return m, history


@pytest.mark.parametrize("cell", cells(["anthropic"], ["anthropic"]), indirect=True)
async def test_thinking_signature_survives_the_tool_loop(cell: Cell) -> None:
    cell.script(cell.up.module.reply(thinking=REASONING,
                                     tool_calls=[{"name": "get_weather", "arguments": TOOL_ARGS}]),
                cell.up.say("Sunny."))
    client = sdk(cell)
    m, history = await thinking_tool_turn(client, cell.model)
    r = await client.messages.create(model=cell.model, max_tokens=4096, messages=history,  # type: ignore[arg-type]
                                     tools=[WEATHER_TOOL], thinking=THINKING)  # type: ignore[list-item, arg-type]
    assert texts(r) == "Sunny."
    second = cell.last()
    assert second["thinking"] == THINKING
    blocks = second["messages"][1]["content"]
    assert [b["type"] for b in blocks] == ["thinking", "tool_use"]
    assert blocks[0]["signature"] == m.content[0].signature == cell.up.issued(cell.sent[0])[1]


@pytest.mark.parametrize("cell", cells(["anthropic"], ["anthropic"]), indirect=True)
async def test_thinking_signature_survives_a_detour_through_openai(
        cell: Cell, aiohttp_server: Any) -> None:
    """Turn 1 on Anthropic (signed thinking + a call), turn 2 on an OpenAI upstream (which
    sees no signature), turn 3 back on Anthropic: the turn-1 signature arrives unchanged."""
    detour = await add_cell(cell.gw, aiohttp_server, "anthropic", "openai")
    cell.script(cell.up.module.reply(thinking=REASONING,
                                     tool_calls=[{"name": "get_weather", "arguments": TOOL_ARGS}]),
                cell.up.say("Still sunny."))
    detour.script(detour.up.think("Reading the tool result.", "It is sunny."))
    client = sdk(cell)
    m, history = await thinking_tool_turn(client, cell.model)
    _, r = await streamed(client, model=detour.model, max_tokens=4096, messages=history,
                          tools=[WEATHER_TOOL], thinking=THINKING)
    assert [b.type for b in r.content] == ["thinking", "text"]
    to_openai = detour.last()
    assert "signature" not in json.dumps(to_openai) and "reasoning" not in json.dumps(
        to_openai["messages"]), "another provider's signature never reaches OpenAI"
    assert to_openai["reasoning_effort"] == "low"
    history += [{"role": "assistant", "content": [b.model_dump(exclude_none=True)
                                                  for b in r.content]},
                {"role": "user", "content": "and tomorrow?"}]
    back = await client.messages.create(model=cell.model, max_tokens=4096, messages=history,  # type: ignore[arg-type]
                                        tools=[WEATHER_TOOL], thinking=THINKING)  # type: ignore[list-item, arg-type]
    assert texts(back) == "Still sunny."
    third = cell.last()
    turn1 = third["messages"][1]["content"]
    assert turn1[0] == {"type": "thinking", "thinking": REASONING,
                        "signature": m.content[0].signature}
    assert third["messages"][3]["content"] == [{"type": "text", "text": "It is sunny."}] or \
        third["messages"][3]["content"] == "It is sunny.", "OpenAI's thinking is not signed"
    assert third["thinking"] == THINKING


# ---------------------------------------------------------------------------- names


ODD_NAME = "mcp__fs__read-file.v2"


@pytest.mark.parametrize("cell", cells(["anthropic"]), indirect=True)
async def test_tool_names_are_never_changed(cell: Cell) -> None:
    tools = [{"name": ODD_NAME, "description": "Read a file", "input_schema": {
        "type": "object", "properties": {"path": {"type": "string"}}}},
        {**WEATHER_TOOL}]
    cell.script(cell.up.call(ODD_NAME, {"path": "/etc/hosts"}), cell.up.say("Done."))
    client = sdk(cell)
    question = [{"role": "user", "content": "read /etc/hosts"}]
    _, m = await streamed(client, model=cell.model, max_tokens=1024, messages=question,
                          tools=tools)
    call = next(b for b in m.content if b.type == "tool_use")
    assert call.name == ODD_NAME and call.input == {"path": "/etc/hosts"}
    history = [*question, {"role": "assistant", "content": [
        b.model_dump(exclude_none=True) for b in m.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                      "content": "127.0.0.1 localhost"}]}]
    await client.messages.create(model=cell.model, max_tokens=1024, messages=history,  # type: ignore[arg-type]
                                 tools=tools)  # type: ignore[arg-type]
    first, second = cell.bodies()
    assert [t[0] for t in cell.up.tools(first)] == [ODD_NAME, "get_weather"]
    assert cell.up.tool_turns(second).name == ODD_NAME


def test_upstreams_cover_every_provider_type() -> None:
    assert sorted(u.type for u in UPSTREAMS.values()) == [
        "anthropic", "gemini", "ollama", "openai", "openai-responses"]

