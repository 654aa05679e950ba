"""The ``anthropic`` format: golden translations, client checks, known failures, system
messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from anthropic_support import AN, HI, decode, roundtrip
from helpers_openai_anthropic import (
    aiter,
    check_anthropic_sequence,
    collect,
    golden_cases,
    request_of,
    run_golden,
)

from omniroute.errors import (
    InvalidRequest,
)
from omniroute.formats import canonical as c
from omniroute.formats.anthropic import AnthropicFormat
from omniroute.formats.base import ClientRequest
from omniroute.plugins import load_plugins

# ---------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("path", golden_cases("anthropic"), ids=lambda p: p.stem)
async def test_golden(path: Path) -> None:
    actual, expected = await run_golden(path)
    assert actual == expected


def test_golden_same_format_request_is_the_input_minus_empty_tools() -> None:
    case = json.loads((Path(__file__).parent / "golden" /
                       "anthropic_to_anthropic_request_cache_and_signatures.json").read_text())
    expected = {k: v for k, v in case["input"].items() if k != "tools"}
    assert case["expected"] == expected


def test_registered_as_an_entry_point() -> None:
    plugins = load_plugins()
    assert plugins.formats["anthropic"] is AnthropicFormat
    assert plugins.info("anthropic-format").registered == {"formats": ["anthropic"]}  # type: ignore[union-attr]


# ---------------------------------------------------------------------------- client checks


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": HI}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"model": "m", "messages": HI, "max_tokens": 0}, "max_tokens"),
    ({"model": "m", "messages": HI, "stream": "yes"}, "stream"),
    ({"model": "m", "messages": HI, "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": HI, "tools": [{"name": "f"}]}, "tools.0.input_schema"),
    ({"model": "m", "messages": HI, "tool_choice": {"type": "tool"}}, "tool_choice"),
    ({"model": "m", "messages": HI, "thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
    ({"model": "m", "messages": HI, "output_config": {"effort": "huge"}}, "output_config.effort"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
     "messages.0.content.0.tool_use_id"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image"}]}]},
     "messages.0.content.0.source"),
    ({"model": "m", "messages": [{"role": "assistant", "content": [{"type": "tool_use"}]}]},
     "messages.0.content.0"),
])
def test_invalid_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        AN.decode_request(ClientRequest(body, "m", False))
    assert info.value.param == param
    assert info.value.message.startswith(param)


def test_inspect() -> None:
    assert AN.inspect({"model": "claude", "messages": HI, "stream": True}) == ("claude", True)
    assert AN.inspect({"model": "claude", "messages": HI}) == ("claude", False)


# ---------------------------------------------------------------------------- known failures


def test_thinking_signature_survives_the_second_turn() -> None:
    """Anthropic -> canonical -> Anthropic keeps thinking and redacted thinking exactly."""
    turn = [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig+/==abc"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3p"},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    body = {"model": "m", "max_tokens": 2048,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "messages": [*HI, {"role": "assistant", "content": turn},
                         {"role": "user", "content": [
                             {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sun"}]}]}
    out = roundtrip(body)
    assert out["messages"][1]["content"] == turn
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 1024}


def test_reasoning_of_another_source_is_never_sent_to_anthropic() -> None:
    request = decode({"model": "m", "max_tokens": 100, "messages": HI})
    request.messages.append(c.Message("assistant", [
        c.Reasoning("deepseek thoughts", source="openai"),
        c.Reasoning("gemini thoughts", signature="gem-sig", source="gemini"),
        c.Reasoning("unsigned", source="anthropic"),
        c.Text("Answer"),
    ]))
    out = AN.encode_request(request)
    assert out["messages"][1] == {"role": "assistant", "content": "Answer"}


def test_foreign_reasoning_comes_back_from_an_anthropic_client_with_its_source() -> None:
    """A thinking block we gave a client for DeepSeek reasoning decodes to source openai."""
    response = c.Response("r", "m", [c.Reasoning("why", source="openai"),
                                     c.Reasoning("g", signature="gsig", source="gemini"),
                                     c.Text("hi")])
    blocks = orjson.loads(AN.encode_response(response, decode({"model": "m", "messages": HI})))
    assert blocks["content"][0]["thinking"] == "why"
    again = decode({"model": "m", "messages": [*HI, {"role": "assistant",
                                                     "content": blocks["content"]}]})
    parts = again.messages[1].parts
    assert parts[0] == c.Reasoning("why", source="openai")
    assert parts[1] == c.Reasoning("g", signature="gsig", source="gemini")


def test_cache_control_survives_on_system_messages_tools_and_results() -> None:
    eph = {"type": "ephemeral"}
    body = {
        "model": "m", "max_tokens": 100,
        "system": [{"type": "text", "text": "sys", "cache_control": eph}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": eph}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": eph},
                                         {"type": "image", "cache_control": eph, "source": {
                                             "type": "base64", "media_type": "image/png",
                                             "data": "iVBOR"}}]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                               "input": {}, "cache_control": eph}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                          "content": "ok", "cache_control": eph}]},
        ],
    }
    assert roundtrip(body) == body


def test_an_empty_tools_list_is_not_forwarded() -> None:
    out = roundtrip({"model": "m", "max_tokens": 5, "messages": HI, "tools": [],
                     "tool_choice": {"type": "auto"}})
    assert "tools" not in out and "tool_choice" not in out
    from_openai = request_of("openai", {"model": "m", "messages": HI, "tools": [],
                                        "tool_choice": "auto"})
    out = AN.encode_request(from_openai)
    assert "tools" not in out and "tool_choice" not in out


def test_tool_names_and_ids_are_never_changed() -> None:
    name = "mcp__github__create-pull_request.v2"
    request = request_of("openai", {
        "model": "m",
        "messages": [*HI, {"role": "assistant", "tool_calls": [
            {"id": "call_ÄBC:1", "type": "function",
             "function": {"name": name, "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "call_ÄBC:1", "content": "done"}],
        "tools": [{"type": "function", "function": {"name": name, "parameters": {}}}],
        "tool_choice": {"type": "function", "function": {"name": name}},
    })
    out = AN.encode_request(request)
    assert out["tools"][0]["name"] == name and out["tool_choice"]["name"] == name
    assert out["messages"][1]["content"][0]["name"] == name
    assert out["messages"][1]["content"][0]["id"] == "call_ÄBC:1"
    assert out["messages"][2]["content"][0]["tool_use_id"] == "call_ÄBC:1"


async def test_a_tool_call_is_never_split_across_blocks_nor_merged() -> None:
    """Interleaved argument deltas of parallel calls: one sequential block per call."""
    events = [
        c.Start("msg_1", "m"),
        c.PartStart(0, c.ToolCall("call_a", "alpha")),
        c.PartStart(1, c.ToolCall("call_b", "beta")),
        c.ToolArgsDelta(0, '{"x":'),
        c.ToolArgsDelta(1, '{"y":'),
        c.PartStart(2, c.Text("")),
        c.TextDelta(2, "and text"),
        c.ToolArgsDelta(1, "2}"),
        c.ToolArgsDelta(0, "1}"),
        c.PartStop(1),
        c.PartStop(2),
        c.PartStop(0),
        c.Finish("tool_use", c.Usage(10, 5)),
    ]
    frames = await collect(AN.encode_stream(aiter(events), decode({"model": "m", "messages": HI})))
    parsed = check_anthropic_sequence(frames)
    starts = [e["data"]["content_block"] for e in parsed if e["event"] == "content_block_start"]
    assert [(b["type"], b.get("name")) for b in starts] == [
        ("tool_use", "alpha"), ("tool_use", "beta"), ("text", None)]
    args: dict[int, str] = {}
    for e in parsed:
        if e["event"] == "content_block_delta" and e["data"]["delta"]["type"] == "input_json_delta":
            args[e["data"]["index"]] = args.get(e["data"]["index"], "") + \
                e["data"]["delta"]["partial_json"]
    assert args == {0: '{"x":1}', 1: '{"y":2}'}


# ---------------------------------------------------------------------------- system messages


def test_mid_conversation_system_message_is_kept_in_place_and_folded_for_anthropic() -> None:
    body = {"model": "m", "max_tokens": 10, "messages": [
        {"role": "system", "content": "first"},
        *HI,
        {"role": "assistant", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "plan mode",
                                        "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "go"},
    ]}
    request = decode(body)
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "system", "user"]
    out = AN.encode_request(request)
    assert out["system"] == "first"
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "text", "text": "<system-reminder>\nplan mode\n</system-reminder>",
         "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "go"}]}


def test_trailing_system_message_joins_the_last_user_turn() -> None:
    out = AN.encode_request(request_of("openai", {"model": "m", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
        {"role": "user", "content": "q2"}, {"role": "system", "content": "be short"}]}))
    assert out["messages"][-1]["content"][-1]["text"].endswith("be short\n</system-reminder>")
