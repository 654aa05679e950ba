"""The ``anthropic`` format: golden translations, streams, SDK parsing, known failures."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from helpers_openai_anthropic import (
    FORMATS,
    aiter,
    check_anthropic_sequence,
    collect,
    frames_of,
    golden_cases,
    parse_frames,
    request_of,
    run_golden,
    sse_app,
)

from omniroute.errors import (
    AuthenticationFailed,
    GatewayError,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from omniroute.formats import canonical as c
from omniroute.formats.anthropic import DEFAULT_MAX_TOKENS, AnthropicFormat
from omniroute.formats.base import ClientRequest
from omniroute.plugins import load_plugins

AN = AnthropicFormat()
HI = [{"role": "user", "content": "Hello"}]


def decode(body: dict[str, Any]) -> c.Request:
    return request_of("anthropic", body)


def roundtrip(body: dict[str, Any], client: dict[str, Any] | None = None) -> dict[str, Any]:
    return AN.encode_request(decode(body), client)


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


# ---------------------------------------------------------------------------- request settings


def test_max_tokens_default_and_connection_setting() -> None:
    request = request_of("openai", {"model": "m", "messages": HI})
    assert AN.encode_request(request)["max_tokens"] == DEFAULT_MAX_TOKENS == 8192
    assert AN.encode_request(request, {"max_tokens_default": 1000})["max_tokens"] == 1000


@pytest.mark.parametrize(("openai_extra", "client", "expected"), [
    ({"reasoning_effort": "low"}, None,
     {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}),
    ({"reasoning_effort": "minimal"}, None,
     {"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}}),
    ({"reasoning_effort": "max"}, None,
     {"thinking": {"type": "adaptive"}, "output_config": {"effort": "xhigh"}}),
    ({"reasoning_effort": "medium"}, {"thinking": "budget"},
     {"thinking": {"type": "enabled", "budget_tokens": 8192}, "max_tokens": 16384}),
    ({"reasoning_effort": "none"}, None, {"thinking": {"type": "disabled"}}),
    ({"reasoning": {"max_tokens": 3000}}, None,
     {"thinking": {"type": "enabled", "budget_tokens": 3000}}),
    ({"reasoning_effort": "high", "tool_choice": "required",
      "tools": [{"type": "function", "function": {"name": "f"}}]}, None,
     {"thinking": None, "output_config": {"effort": "high"}}),
    ({"reasoning_effort": "high", "max_tokens": 900}, {"thinking": "budget"},
     {"thinking": None}),
])
def test_reasoning_effort_to_thinking(openai_extra: dict[str, Any], client: Any,
                                      expected: dict[str, Any]) -> None:
    out = AN.encode_request(request_of("openai", {"model": "m", "messages": HI, **openai_extra}),
                            client)
    for key, value in expected.items():
        assert out.get(key) == value, key


def test_thinking_drops_what_the_api_rejects_with_it() -> None:
    out = AN.encode_request(request_of("openai", {
        "model": "m", "messages": HI, "reasoning_effort": "high", "temperature": 0.3,
        "top_p": 0.5, "top_k": 3}))
    assert out["thinking"] == {"type": "adaptive"}
    assert not {"temperature", "top_p", "top_k"} & set(out)
    kept = AN.encode_request(request_of("openai", {
        "model": "m", "messages": HI, "temperature": 0.3, "top_p": 0.5, "top_k": 3}))
    assert (kept["temperature"], kept["top_p"], kept["top_k"]) == (0.3, 0.5, 3)


def test_thinking_is_left_out_after_an_unsigned_tool_turn() -> None:
    request = request_of("openai", {"model": "m", "reasoning_effort": "high", "messages": [
        *HI, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "r"}]})
    assert "thinking" not in AN.encode_request(request)


def test_json_object_has_no_anthropic_form_so_it_becomes_an_instruction() -> None:
    out = AN.encode_request(request_of("openai", {
        "model": "m", "messages": [{"role": "system", "content": "S"}, *HI],
        "response_format": {"type": "json_object"}}))
    assert out["system"][-1]["text"].startswith("Respond with a single valid JSON object")
    assert "output_config" not in out


@pytest.mark.parametrize(("choice", "parallel", "expected"), [
    ("auto", None, {"type": "auto"}),
    ("required", None, {"type": "any"}),
    ("none", False, {"type": "none"}),
    ({"type": "function", "function": {"name": "f"}}, False,
     {"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
    (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    (None, None, None),
])
def test_tool_choice_mapping(choice: Any, parallel: Any, expected: Any) -> None:
    body: dict[str, Any] = {"model": "m", "messages": HI,
                            "tools": [{"type": "function", "function": {"name": "f"}}]}
    if choice is not None:
        body["tool_choice"] = choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert AN.encode_request(request_of("openai", body)).get("tool_choice") == expected


def test_hosted_tools_stay_anthropic_only() -> None:
    search = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    request = decode({"model": "m", "max_tokens": 9, "messages": HI, "tools": [search]})
    assert AN.encode_request(request)["tools"] == [search]
    assert "tools" not in FORMATS["openai"].encode_request(request)


def test_documents_text_and_file_sources_and_extras() -> None:
    doc_text = {"type": "document", "source": {"type": "text", "media_type": "text/plain",
                                               "data": "Grass is green."},
                "title": "facts", "context": "ctx", "citations": {"enabled": True}}
    doc_file = {"type": "document", "source": {"type": "file", "file_id": "file_011"}}
    body = {"model": "m", "max_tokens": 9,
            "messages": [{"role": "user", "content": [doc_text, doc_file]}]}
    assert roundtrip(body) == body
    oa = FORMATS["openai"].encode_request(decode(body))
    assert oa["messages"][0]["content"][0] == {"type": "text", "text": "facts\n\nGrass is green."}
    assert oa["messages"][0]["content"][1] == {"type": "file", "file": {"file_id": "file_011"}}


# ---------------------------------------------------------------------------- round trips


REPRESENTATIVE = [
    {"model": "m", "max_tokens": 100, "messages": HI},
    {"model": "m", "max_tokens": 100, "system": "sys", "temperature": 0.2, "top_k": 4,
     "stop_sequences": ["END"], "metadata": {"user_id": "u"}, "stream": True,
     "messages": [*HI, {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": [
         {"type": "text", "text": "look"},
         {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}]},
    {"model": "m", "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000,
                                                   "display": "omitted"},
     "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"},
                "strict": True, "input_examples": [{"a": 1}]}],
     "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
     "messages": [*HI, {"role": "assistant", "content": [
         {"type": "thinking", "thinking": "t", "signature": "s"},
         {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": [1, 2]}},
         {"type": "tool_use", "id": "t2", "name": "f", "input": {}}]},
                  {"role": "user", "content": [
                      {"type": "tool_result", "tool_use_id": "t1", "is_error": True,
                       "content": [{"type": "text", "text": "boom"}, {"type": "image", "source": {
                           "type": "base64", "media_type": "image/gif", "data": "R0lG"}}]},
                      {"type": "tool_result", "tool_use_id": "t2"},
                      {"type": "text", "text": "continue"}]}]},
    {"model": "m", "max_tokens": 10, "output_config": {"effort": "medium"}, "messages": HI,
     "service_tier": "auto", "context_management": {"edits": []}},
]


@pytest.mark.parametrize("body", REPRESENTATIVE, ids=range(len(REPRESENTATIVE)))
def test_request_round_trip(body: dict[str, Any]) -> None:
    """decode(encode(x)) == x, and canonical bodies come back unchanged."""
    request = decode(body)
    encoded = AN.encode_request(request)
    assert encoded == body
    assert decode(encoded) == request


RESPONSES = [
    c.Response("msg_1", "claude", [c.Text("Hello")], "end_turn",
               usage=c.Usage(10, 2, cache_read_tokens=4, cache_write_tokens=1)),
    c.Response("msg_2", "claude", [c.Reasoning("hm", signature="sig", source="anthropic"),
                                   c.Reasoning(redacted="xx", source="anthropic"),
                                   c.Text("Calling"), c.ToolCall("t1", "f", '{"a":1}')],
               "tool_use", usage=c.Usage(5, 7, reasoning_tokens=3)),
    c.Response("msg_3", "claude", [c.Text("stop here")], "stop_sequence", "###",
               usage=c.Usage(1, 1)),
    c.Response("msg_4", "claude", [], "refusal", usage=c.Usage(1, 0)),
]


@pytest.mark.parametrize("response", RESPONSES, ids=range(len(RESPONSES)))
def test_response_round_trip(response: c.Response) -> None:
    body = AN.encode_response(response, decode({"model": "m", "messages": HI}))
    assert AN.decode_response(body) == response


def _events_of(response: c.Response) -> list[c.Event]:
    events: list[c.Event] = [c.Start(response.id, response.model, c.Usage(
        response.usage.input_tokens, None, response.usage.cache_read_tokens,
        response.usage.cache_write_tokens))]
    for i, part in enumerate(response.parts):
        if isinstance(part, c.Text):
            events += [c.PartStart(i, c.Text("")), c.TextDelta(i, part.text)]
        elif isinstance(part, c.ToolCall):
            events += [c.PartStart(i, c.ToolCall(part.id, part.name)),
                       c.ToolArgsDelta(i, part.arguments)]
        elif isinstance(part, c.Reasoning) and part.redacted:
            events += [c.PartStart(i, part)]
        elif isinstance(part, c.Reasoning):
            events += [c.PartStart(i, c.Reasoning(source=part.source)),
                       c.ReasoningDelta(i, text=part.text),
                       c.ReasoningDelta(i, signature=part.signature)]
        events.append(c.PartStop(i))
    events.append(c.Finish(response.stop_reason, response.usage, response.stop_sequence))
    return events


@pytest.mark.parametrize("response", RESPONSES, ids=range(len(RESPONSES)))
async def test_stream_round_trip(response: c.Response) -> None:
    events = _events_of(response)
    frames = await collect(AN.encode_stream(aiter(events), decode({"model": "m", "messages": HI})))
    check_anthropic_sequence(frames)
    assert await collect(AN.decode_stream(aiter(frames))) == events


# ---------------------------------------------------------------------------- upstream streams


async def test_decode_stream_skips_pings_server_tools_and_unknown_events() -> None:
    text = (
        'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"c",'
        '"usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
        'event: ping\ndata: {"type": "ping"}\n\n'
        'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        '"content_block":{"type":"server_tool_use","id":"srvtoolu_1","name":"web_search",'
        '"input":{}}}\n\n'
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        '"delta":{"type":"input_json_delta","partial_json":"{\\"q\\":1}"}}\n\n'
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
        '"content_block":{"type":"text","text":""}}\n\n'
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
        '"delta":{"type":"citations_delta","citation":{}}}\n\n'
        'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
        '"delta":{"type":"text_delta","text":"Hi"}}\n\n'
        'event: future_event\ndata: {"type":"future_event"}\n\n'
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n'
        'event: content_block_start\ndata: {"type":"content_block_start","index":2,'
        '"content_block":{"type":"tool_use","id":"toolu_9","name":"noargs","input":{}}}\n\n'
        'event: content_block_stop\ndata: {"type":"content_block_stop","index":2}\n\n'
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use",'
        '"stop_sequence":null},"usage":{"output_tokens":7,"input_tokens":10,'
        '"cache_read_input_tokens":5,"cache_creation_input_tokens":0}}\n\n'
        'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    events = await collect(AN.decode_stream(aiter(frames_of(text))))
    assert events == [
        c.Start("msg_1", "c", c.Usage(10)),
        c.PartStart(0, c.Text("")), c.TextDelta(0, "Hi"), c.PartStop(0),
        c.PartStart(1, c.ToolCall("toolu_9", "noargs")), c.ToolArgsDelta(1, "{}"), c.PartStop(1),
        c.Finish("tool_use", c.Usage(15, 7, cache_read_tokens=5, cache_write_tokens=0)),
    ]


async def test_decode_stream_raises_on_an_error_event() -> None:
    text = ('event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c",'
            '"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
            'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
            '"message": "Overloaded"}}\n\n')
    with pytest.raises(UpstreamError) as info:
        await collect(AN.decode_stream(aiter(frames_of(text))))
    assert "Overloaded" in info.value.message and info.value.code == "overloaded_error"


async def test_decode_stream_raises_when_the_stream_is_cut() -> None:
    text = ('event: message_start\ndata: {"type":"message_start","message":{"id":"m","model":"c",'
            '"usage":{"input_tokens":1,"output_tokens":1}}}\n\n')
    with pytest.raises(UpstreamError, match="before message_stop"):
        await collect(AN.decode_stream(aiter(frames_of(text))))


def test_decode_response_raises_on_an_error_body() -> None:
    body = b'{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}'
    with pytest.raises(UpstreamError, match="bad"):
        AN.decode_response(body)
    with pytest.raises(UpstreamError):
        AN.decode_response(b"<html>")


def test_decode_response_tolerates_unknown_fields_and_blocks() -> None:
    body = orjson.dumps({"id": "msg", "type": "message", "role": "assistant", "model": "c",
                         "container": None, "content": [
                             {"type": "web_search_tool_result", "tool_use_id": "s", "content": []},
                             {"type": "text", "text": "ok", "citations": None}],
                         "stop_reason": "model_context_window_exceeded",
                         "usage": {"input_tokens": 3, "output_tokens": 4, "service_tier": "x"}})
    response = AN.decode_response(body)
    assert response.parts == [c.Text("ok")] and response.stop_reason == "max_tokens"
    assert response.usage == c.Usage(3, 4)


# ---------------------------------------------------------------------------- pass-through lane


def test_usage_from_frames_and_body() -> None:
    start = (b'event: message_start\ndata: {"type": "message_start", "message": {"id": "m", '
             b'"usage": {"input_tokens": 100, "cache_read_input_tokens": 50, '
             b'"cache_creation_input_tokens": 25, "output_tokens": 1}}}\n\n')
    delta = (b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
             b'"end_turn"},"usage":{"output_tokens":42}}\n\n')
    text = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"usage error"}}\n\n')
    assert AN.usage_from_frame(start) == c.Usage(175, None, 50, 25)
    assert AN.usage_from_frame(delta) == c.Usage(None, 42)
    assert AN.usage_from_frame(text) is None
    assert AN.usage_from_frame(b'event: ping\ndata: {"type": "ping"}\n\n') is None
    body = b'{"usage": {"input_tokens": 3, "output_tokens": 4, "cache_read_input_tokens": 2}}'
    assert AN.usage_from_body(body) == c.Usage(5, 4, cache_read_tokens=2)
    assert AN.usage_from_body(b"nope") == c.Usage()


def test_error_from_frame() -> None:
    frame = (b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
             b'"message": "Overloaded"}}\n\n')
    assert AN.error_from_frame(frame) == "Overloaded"
    text = (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":"an error occurred"}}\n\n')
    assert AN.error_from_frame(text) is None


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("err", "kind"), [
    (InvalidRequest("bad"), "invalid_request_error"),
    (AuthenticationFailed("no"), "authentication_error"),
    (UpstreamStatusError("pay", status=402), "billing_error"),
    (PermissionDenied("no"), "permission_error"),
    (NotFound("none"), "not_found_error"),
    (PayloadTooLarge("big"), "request_too_large"),
    (UpstreamStatusError("slow down", status=429), "rate_limit_error"),
    (GatewayError("bug"), "api_error"),
    (UpstreamError("bad gateway"), "api_error"),
    (ServiceUnavailable("busy"), "overloaded_error"),
    (UpstreamTimeout("late"), "timeout_error"),
    (UpstreamStatusError("Overloaded", status=529), "overloaded_error"),
    (UpstreamStatusError("teapot", status=418), "invalid_request_error"),
])
def test_error_body_uses_anthropic_types(err: GatewayError, kind: str) -> None:
    assert orjson.loads(AN.error_body(err)) == {
        "type": "error", "error": {"type": kind, "message": err.message}}


def test_error_body_carries_the_request_id_and_frame_is_an_error_event() -> None:
    err = InvalidRequest("bad", headers={"X-OmniRoute-Request-Id": "req_1"})
    assert orjson.loads(AN.error_body(err))["request_id"] == "req_1"
    frame = AN.error_frame(UpstreamError("gone"))
    assert parse_frames([frame]) == [{"event": "error", "data": {
        "type": "error", "error": {"type": "api_error", "message": "gone"}}}]
    assert AN.keepalive_frame() == b'event: ping\ndata: {"type": "ping"}\n\n'


# ---------------------------------------------------------------------------- the SDK judges


def _sdk(server: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key="sk-test",
                                    max_retries=0)


async def _stream_from_openai_upstream() -> tuple[list[bytes], c.Request]:
    path = Path(__file__).parent / "golden" / "openai_to_anthropic_stream_parallel_tool_calls.json"
    case = json.loads(path.read_text())
    request = decode(case["request"])
    events = FORMATS["openai"].decode_stream(aiter(frames_of(case["input"])))
    frames = await collect(AN.encode_stream(events, request))
    return [AN.keepalive_frame(), *frames], request  # type: ignore[list-item]


async def test_sdk_stream_helper_accepts_translated_stream(aiohttp_server: Any) -> None:
    frames, _ = await _stream_from_openai_upstream()
    server = await aiohttp_server(sse_app("/v1/messages", frames))
    seen: list[str] = []
    async with _sdk(server).messages.stream(model="m", max_tokens=100, messages=HI) as stream:
        async for event in stream:
            seen.append(event.type)
        message = await stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "Two cities."  # type: ignore[union-attr]
    assert [b.input for b in message.content[2:]] == [  # type: ignore[union-attr]
        {"location": "Boston, MA"}, {"location": "Paris, France"}]
    assert [b.id for b in message.content[2:]] == ["call_boston", "call_paris"]  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens,
            message.usage.output_tokens) == (18, 64, 51)
    assert "input_json" in seen and "thinking" in seen


async def test_sdk_parses_a_translated_json_answer(aiohttp_server: Any) -> None:
    body = AN.encode_response(RESPONSES[1], decode({"model": "m", "messages": HI}))
    server = await aiohttp_server(sse_app("/v1/messages", [], json_body=body))
    message = await _sdk(server).messages.create(model="m", max_tokens=10, messages=HI)
    assert [b.type for b in message.content] == ["thinking", "redacted_thinking", "text",
                                                 "tool_use"]
    assert message.content[0].signature == "sig"  # type: ignore[union-attr]
    assert message.content[3].input == {"a": 1}  # type: ignore[union-attr]
    assert message.usage.output_tokens == 7


async def test_sdk_sees_an_error_frame_mid_stream(aiohttp_server: Any) -> None:
    events = [c.Start("m1", "m"), c.PartStart(0, c.Text("")), c.TextDelta(0, "par")]
    frames = await collect(AN.encode_stream(aiter(events), decode({"model": "m", "messages": HI})))
    frames.append(AN.error_frame(ServiceUnavailable("upstream overloaded")))
    server = await aiohttp_server(sse_app("/v1/messages", frames))
    with pytest.raises(anthropic.APIStatusError) as info:
        async with _sdk(server).messages.stream(model="m", max_tokens=5, messages=HI) as stream:
            async for _ in stream:
                pass
    assert "upstream overloaded" in str(info.value)


async def test_sdk_stream_of_a_cross_format_round_trip(aiohttp_server: Any) -> None:
    """Anthropic upstream frames -> canonical -> Anthropic client frames, judged by the SDK."""
    path = Path(__file__).parent / "golden" / "anthropic_to_openai_stream_thinking_tool.json"
    upstream = frames_of(json.loads(path.read_text())["input"])
    events = await collect(AN.decode_stream(aiter(upstream)))
    frames = await collect(AN.encode_stream(aiter(copy.deepcopy(events)),
                                            decode({"model": "m", "messages": HI})))
    server = await aiohttp_server(sse_app("/v1/messages", frames))
    async with _sdk(server).messages.stream(model="m", max_tokens=100, messages=HI) as stream:
        message = await stream.get_final_message()
    assert message.content[0].signature == \
        "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds..."  # type: ignore[union-attr]
    assert message.content[2].input == {"location": "San Francisco, CA"}  # type: ignore[union-attr]
    assert message.usage.output_tokens == 89


# ---------------------------------------------------------------------------- through the gateway


async def test_anthropic_sdk_through_the_gateway_to_an_openai_upstream(gw: Any) -> None:
    """Claude-Code style: the Anthropic SDK -> /v1/messages -> an OpenAI-compatible upstream."""
    from fakes.openai_upstream import reply

    gw.fake.script.append(reply(tool_calls=2, chunks=3))
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="sk-client", max_retries=0)
    tools = [{"name": "get_weather", "input_schema": {"type": "object", "properties": {
        "location": {"type": "string"}}}}, {"name": "get_time", "input_schema": {
            "type": "object", "properties": {"tz": {"type": "string"}}}}]
    async with client.messages.stream(model="up/gpt-4o-mini", max_tokens=256, tools=tools,
                                      system=[{"type": "text", "text": "be brief",
                                               "cache_control": {"type": "ephemeral"}}],
                                      messages=[{"role": "user", "content": "weather?"}]) as s:
        message = await s.get_final_message()
    assert [b.type for b in message.content if b.type == "tool_use"] == ["tool_use", "tool_use"]
    assert {b.name for b in message.content if b.type == "tool_use"} == {  # type: ignore[union-attr]
        "get_weather", "get_time"}
    assert message.stop_reason == "tool_use"
    sent = gw.fake.requests[-1].json
    assert sent["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["max_completion_tokens"] == 256
    answer = await client.messages.create(model="up/gpt-4o-mini", max_tokens=64,
                                          messages=[{"role": "user", "content": "hi there"}])
    assert answer.content[0].text.startswith("Hello")  # type: ignore[union-attr]
    assert answer.usage.input_tokens > 0


@pytest.mark.parametrize("seed", range(40))
def test_random_requests_round_trip(seed: int) -> None:
    import random

    from helpers_openai_anthropic import random_request

    request = random_request(random.Random(seed), "anthropic")
    body = AN.encode_request(request)
    assert decode(body) == request
    assert AN.encode_request(decode(body)) == body


def _calls_and_results(request: c.Request) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for m in request.messages:
        for p in m.parts:
            if isinstance(p, c.ToolCall):
                out.append(("call", p.id, p.name, orjson.dumps(orjson.loads(p.arguments)).decode()))
            elif isinstance(p, c.ToolResult):
                out.append(("result", p.call_id, str(p.name),
                            "".join(t.text for t in p.content if isinstance(t, c.Text))))
    return out


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize(("source", "target"), [("openai", "anthropic"), ("anthropic", "openai")])
def test_random_cross_format_keeps_tool_calls_exactly(seed: int, source: str, target: str) -> None:
    import random

    from helpers_openai_anthropic import random_request

    request = random_request(random.Random(seed), source)
    body = FORMATS[target].encode_request(request)
    again = request_of(target, body)
    assert _calls_and_results(again) == _calls_and_results(request)
    assert [t.name for t in again.tools] == [t.name for t in request.tools]
