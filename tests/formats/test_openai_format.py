"""The ``openai`` format: golden translations, streams, SDK parsing, known failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers_openai_anthropic import (
    FORMATS,
    aiter,
    collect,
    golden_cases,
    parse_frames,
    request_of,
    run_golden,
)

from omniroute.errors import InvalidRequest, UpstreamError
from omniroute.formats import canonical as c
from omniroute.formats import openai as openai_module
from omniroute.formats.base import ClientRequest
from omniroute.formats.openai import OpenAIFormat
from omniroute.formats.openai.response import decode_usage
from omniroute.plugins import load_plugins
from omniroute.sse import DONE

OA = OpenAIFormat()
HI = [{"role": "user", "content": "Hello"}]


def decode(body: dict[str, Any]) -> c.Request:
    return request_of("openai", body)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                            "created": 1700000000, "model": "gpt-4o"}
    body["choices"] = [] if delta is None else [
        {"index": 0, "delta": delta, "finish_reason": finish}]
    body.update(extra)
    return b"data: " + orjson.dumps(body) + b"\n\n"


def call(index: int, id: str | None = None, name: str | None = None,
         args: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index}
    if id is not None:
        out["id"], out["type"] = id, "function"
    fn: dict[str, Any] = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    out["function"] = fn
    return out


# ---------------------------------------------------------------------------- golden files


@pytest.mark.parametrize("path", golden_cases("openai"), ids=lambda p: p.stem)
async def test_golden(path: Path) -> None:
    actual, expected = await run_golden(path)
    assert actual == expected


def test_registered_as_an_entry_point() -> None:
    plugins = load_plugins()
    assert plugins.formats["openai"] is OpenAIFormat
    assert plugins.info("openai-format").registered == {"formats": ["openai"]}  # type: ignore[union-attr]


def test_module_helpers_keep_working() -> None:
    """The pass-through helpers proxy.py used before the Format class existed."""
    assert openai_module.check_chat_request({"model": "m", "messages": HI}) == ("m", False)
    usage = chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 2})
    assert openai_module.usage_from_event(usage) == (
        {"prompt_tokens": 3, "completion_tokens": 2, "cached_tokens": None,
         "reasoning_tokens": None}, True)
    assert openai_module.error_from_event(b'data: {"error": {"message": "x"}}\n\n') == "x"


# ---------------------------------------------------------------------------- client checks


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": HI}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": HI, "stream": "yes"}, "stream"),
    ({"model": "m", "messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     "messages[0].content[0].type"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "messages[0].content[0]"),
    ({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content[0].image_url.url"),
    ({"model": "m", "messages": [{"role": "assistant", "tool_calls": [{"id": "c"}]}]},
     "messages[0].tool_calls[0].function.name"),
    ({"model": "m", "messages": HI, "tools": [{"type": "function", "function": {}}]},
     "tools[0].function.name"),
    ({"model": "m", "messages": HI, "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "m", "messages": HI, "temperature": "warm"}, "temperature"),
    ({"model": "m", "messages": HI, "max_tokens": 1.5}, "max_tokens"),
    ({"model": "m", "messages": HI, "stop": [1]}, "stop"),
    ({"model": "m", "messages": HI, "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"model": "m", "messages": HI, "response_format": {"type": "yaml"}}, "response_format"),
    ({"model": "m", "messages": HI, "n": 2}, "n"),
    # checked by the decode itself as it reads each message (not by a second full check)
    ({"model": "m", "messages": [*HI, "hello"]}, "messages"),
    ({"model": "m", "messages": [*HI, {"content": "x"}]}, "messages"),
    ({"model": "m", "messages": [{"role": "user", "content": "x", "name": 5}]},
     "messages[0].name"),
    ({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url",
                                                                 "image_url": "u"}]}]},
     "messages[0].content"),
    ({"model": "m", "messages": HI, "seed": True}, "seed"),
    ({"model": "m", "messages": HI, "user": 5}, "user"),
    ({"model": "m", "messages": HI, "metadata": []}, "metadata"),
])
def test_invalid_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        OA.decode_request(ClientRequest(body, "m", False))
    assert info.value.param == param


# ---------------------------------------------------------------------------- decoding


def test_system_developer_and_mid_conversation_system() -> None:
    request = decode({"model": "m", "messages": [
        {"role": "system", "content": "A"}, {"role": "developer", "content": "B"}, *HI,
        {"role": "developer", "content": "later"}, {"role": "user", "content": "again"}]})
    assert request.system == [c.Text("A"), c.Text("B")]
    assert request.messages[1] == c.Message("system", [c.Text("later")],
                                            meta={"openai": {"role": "developer"}})
    messages = OA.encode_request(request)["messages"]
    assert messages[0] == {"role": "system", "content": [
        {"type": "text", "text": "A"}, {"type": "text", "text": "B"}]}
    assert messages[2] == {"role": "developer", "content": "later"}


def test_consecutive_tool_messages_are_one_batch_with_names() -> None:
    request = decode({"model": "m", "messages": [*HI, {"role": "assistant", "tool_calls": [
        {"id": "a", "type": "function", "function": {"name": "fa", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "fb", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "1"},
        {"role": "tool", "tool_call_id": "b", "content": "2"}]})
    assert request.messages[2] == c.Message("tool", [
        c.ToolResult("a", [c.Text("1")], name="fa"), c.ToolResult("b", [c.Text("2")], name="fb")])


def test_reasoning_fields_in_assistant_messages() -> None:
    details = [{"type": "reasoning.text", "text": "t", "signature": "s", "format": "x",
                "index": 0}, {"type": "reasoning.encrypted", "data": "enc", "format": "x"}]
    request = decode({"model": "m", "messages": [
        *HI, {"role": "assistant", "content": "a", "reasoning_details": details,
              "reasoning": "dup"},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c", "reasoning": "plain"}]})
    first = request.messages[1].parts
    assert first[0] == c.Reasoning("t", signature="s", source="openai",
                                   meta={"openai": {"detail": details[0]}})
    assert first[1].encrypted == "enc"  # type: ignore[union-attr]
    assert request.messages[3].parts[0] == c.Reasoning("plain", source="openai")
    encoded = OA.encode_request(request)["messages"]
    assert encoded[1]["reasoning_details"] == details
    assert encoded[3]["reasoning_content"] == "plain"


@pytest.mark.parametrize(("extra", "expected"), [
    ({"reasoning_effort": "low"}, c.ReasoningConfig(effort="low")),
    ({"reasoning_effort": "none"}, c.ReasoningConfig(enabled=False)),
    ({"reasoning_effort": "max"}, c.ReasoningConfig(effort="xhigh")),
    ({"reasoning": {"effort": "high", "exclude": True}},
     c.ReasoningConfig(effort="high", include_thoughts=False)),
    ({"reasoning": {"max_tokens": 2000}}, c.ReasoningConfig(budget_tokens=2000)),
    ({}, None),
])
def test_reasoning_effort(extra: dict[str, Any], expected: Any) -> None:
    assert decode({"model": "m", "messages": HI, **extra}).reasoning == expected


def test_reasoning_from_other_formats() -> None:
    def effort(config: c.ReasoningConfig) -> Any:
        request = c.Request("m", [c.Message("user", [c.Text("x")])], reasoning=config)
        return OA.encode_request(request).get("reasoning_effort")

    assert effort(c.ReasoningConfig(budget_tokens=1024)) == "low"
    assert effort(c.ReasoningConfig(budget_tokens=10000)) == "medium"
    assert effort(c.ReasoningConfig(budget_tokens=31999)) == "high"
    assert effort(c.ReasoningConfig(enabled=False)) is None  # older models reject "none"
    assert effort(c.ReasoningConfig(adaptive=True)) is None
    request = c.Request("m", [c.Message("user", [c.Text("x")])],
                        reasoning=c.ReasoningConfig(effort="high"))
    assert "reasoning_effort" not in OA.encode_request(request, {"reasoning_effort": False})


def test_connection_settings() -> None:
    request = decode({"model": "m", "messages": HI, "max_tokens": 50, "stream": True})
    assert OA.encode_request(request)["max_completion_tokens"] == 50
    body = OA.encode_request(request, {"max_tokens_param": "max_tokens", "stream_usage": False})
    assert body["max_tokens"] == 50 and "stream_options" not in body


def test_cache_control_marks_only_when_the_connection_asks() -> None:
    request = request_of("anthropic", {"model": "m", "max_tokens": 5, "system": [
        {"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}], "messages": HI})
    assert OA.encode_request(request)["messages"][0] == {"role": "system", "content": "S"}
    assert OA.encode_request(request, {"cache_control": True})["messages"][0] == {
        "role": "system", "content": [{"type": "text", "text": "S",
                                       "cache_control": {"type": "ephemeral"}}]}


def test_unmodelled_fields_ride_along_to_openai_only() -> None:
    request = decode({"model": "m", "messages": HI, "logprobs": True, "service_tier": "flex"})
    assert OA.encode_request(request)["service_tier"] == "flex"
    assert "service_tier" not in FORMATS["anthropic"].encode_request(request)


def test_empty_tools_list_is_not_forwarded() -> None:
    request = request_of("anthropic", {"model": "m", "max_tokens": 5, "messages": HI,
                                       "tools": [], "tool_choice": {"type": "any"}})
    body = OA.encode_request(request)
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)


def test_document_by_url_cannot_go_to_openai() -> None:
    request = request_of("anthropic", {"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "document", "source": {
            "type": "url", "url": "https://x/a.pdf"}}]}]})
    with pytest.raises(InvalidRequest, match="document by URL"):
        OA.encode_request(request)


# ---------------------------------------------------------------------------- round trips


REPRESENTATIVE = [
    {"model": "m", "messages": HI},
    {"model": "m", "messages": [
        {"role": "system", "content": "sys"},
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "see"},
            {"type": "image_url",
             "image_url": {"url": "data:image/jpeg;base64,/9j/", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "file", "file": {"file_id": "file-1", "filename": "a.pdf"}},
            {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE",
                                      "filename": "b.pdf"}}]},
        {"role": "assistant", "content": "ok", "reasoning_content": "because"},
        {"role": "system", "content": "mid"},
        {"role": "user", "content": "go"}],
     "temperature": 0.7, "top_p": 0.9, "seed": 7, "presence_penalty": 0.5,
     "frequency_penalty": -0.5, "stop": ["x", "y"], "user": "u", "metadata": {"k": "v"},
     "max_completion_tokens": 99, "reasoning_effort": "high",
     "response_format": {"type": "json_schema", "json_schema": {
         "name": "n", "schema": {"type": "object"}, "strict": True}}},
    {"model": "m", "stream": True, "stream_options": {"include_usage": True},
     "messages": [*HI, {"role": "assistant", "content": None, "tool_calls": [
         {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}},
         {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "r1"},
                  {"role": "tool", "tool_call_id": "c2", "content": [
                      {"type": "text", "text": "r2"}, {"type": "text", "text": "r3"}]}],
     "tools": [{"type": "function", "function": {"name": "f", "description": "d",
                                                 "parameters": {"type": "object"},
                                                 "strict": True}},
               {"type": "function", "function": {"name": "g"}}],
     "tool_choice": "required", "parallel_tool_calls": False,
     "response_format": {"type": "json_object"}, "reasoning_effort": "none"},
]


@pytest.mark.parametrize("body", REPRESENTATIVE, ids=range(len(REPRESENTATIVE)))
def test_request_round_trip(body: dict[str, Any]) -> None:
    """decode(encode(x)) == x, and canonical bodies come back unchanged."""
    request = decode(body)
    encoded = OA.encode_request(request)
    assert encoded == body
    assert decode(encoded) == request


RESPONSES = [
    c.Response("chatcmpl-1", "gpt", [c.Text("Hello")], "end_turn", usage=c.Usage(5, 1),
               created=1),
    c.Response("chatcmpl-2", "gpt", [c.Reasoning("why", source="openai"), c.Text("Calling"),
                                     c.ToolCall("c1", "f", '{"a":1}'), c.ToolCall("c2", "g", "{}")],
               "tool_use", usage=c.Usage(10, 20, cache_read_tokens=4, cache_write_tokens=2,
                                         reasoning_tokens=8), created=2),
    c.Response("chatcmpl-3", "gpt", [c.Text("cut")], "max_tokens", usage=c.Usage(1, 1),
               created=3),
    c.Response("chatcmpl-4", "gpt", [c.Text("no")], "content_filter", usage=c.Usage(1, 1),
               created=4),
]


@pytest.mark.parametrize("response", RESPONSES, ids=range(len(RESPONSES)))
def test_response_round_trip(response: c.Response) -> None:
    body = OA.encode_response(response, decode({"model": "m", "messages": HI}))
    assert OA.decode_response(body) == response


def _events_of(response: c.Response) -> list[c.Event]:
    events: list[c.Event] = [c.Start(response.id, response.model, created=response.created)]
    for index, part in enumerate(response.parts):
        if isinstance(part, c.Text):
            events += [c.PartStart(index, c.Text("")), c.TextDelta(index, part.text)]
        elif isinstance(part, c.Reasoning):
            events += [c.PartStart(index, c.Reasoning(source="openai")),
                       c.ReasoningDelta(index, text=part.text)]
        elif isinstance(part, c.ToolCall):
            events += [c.PartStart(index, c.ToolCall(part.id, part.name)),
                       c.ToolArgsDelta(index, part.arguments)]
        if not isinstance(part, c.ToolCall):
            events.append(c.PartStop(index))
    calls = [i for i, p in enumerate(response.parts) if isinstance(p, c.ToolCall)]
    events += [c.PartStop(i) for i in calls]
    events.append(c.Finish(response.stop_reason, response.usage))
    return events


@pytest.mark.parametrize("response", RESPONSES, ids=range(len(RESPONSES)))
async def test_stream_round_trip(response: c.Response) -> None:
    events = _events_of(response)
    request = decode({"model": "m", "messages": HI, "stream": True,
                      "stream_options": {"include_usage": True}})
    frames = await collect(OA.encode_stream(aiter(events), request))
    assert frames[-1] == DONE
    assert await collect(OA.decode_stream(aiter(frames))) == events


# ---------------------------------------------------------------------------- upstream streams


async def decode_frames(frames: list[bytes]) -> list[c.Event]:
    return await collect(OA.decode_stream(aiter(frames)))


async def test_interleaved_parallel_calls_keep_ids_and_names() -> None:
    events = await decode_frames([
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [call(0, "call_a", "alpha", "")]}),
        chunk({"tool_calls": [call(1, "call_b", "beta", '{"y"')]}),
        chunk({"tool_calls": [call(0, args='{"x":1}'), call(1, args=":2}")]}),
        chunk({"tool_calls": [call(0, name="alpha", args="")]}),  # a repeated name is ignored
        chunk({}, "tool_calls"), DONE])
    assert events[1:] == [
        c.PartStart(0, c.ToolCall("call_a", "alpha")),
        c.PartStart(1, c.ToolCall("call_b", "beta")), c.ToolArgsDelta(1, '{"y"'),
        c.ToolArgsDelta(0, '{"x":1}'), c.ToolArgsDelta(1, ":2}"),
        c.PartStop(0), c.PartStop(1), c.Finish("tool_use", c.Usage()),
    ]


async def test_a_call_starts_once_its_name_is_known() -> None:
    events = await decode_frames([
        chunk({"tool_calls": [call(0, "call_a", None, '{"a"')]}),
        chunk({"tool_calls": [call(0, name="late_name", args=":1}")]}),
        chunk({}, "tool_calls"), DONE])
    assert events[1] == c.PartStart(0, c.ToolCall("call_a", "late_name"))
    assert events[2] == c.ToolArgsDelta(0, '{"a":1}')


async def test_servers_that_reuse_index_zero_or_omit_it() -> None:
    reuse = await decode_frames([
        chunk({"tool_calls": [call(0, "call_1", "f", "{}")]}),
        chunk({"tool_calls": [call(0, "call_2", "g", "{}")]}),
        chunk({}, "tool_calls"), DONE])
    starts = [e.part for e in reuse if isinstance(e, c.PartStart)]
    assert starts == [c.ToolCall("call_1", "f"), c.ToolCall("call_2", "g")]
    no_index = await decode_frames([
        chunk({"tool_calls": [{"id": "x1", "function": {"name": "f", "arguments": "{}"}},
                              {"id": "x2", "function": {"name": "g", "arguments": "{}"}}]}),
        chunk({}, "tool_calls"), DONE])
    assert [e.part.id for e in no_index if isinstance(e, c.PartStart)] == ["x1", "x2"]  # type: ignore[union-attr]


async def test_reasoning_then_text_are_two_parts_and_usage_comes_last() -> None:
    events = await decode_frames([
        b": OPENROUTER PROCESSING\n\n",
        chunk({"role": "assistant", "reasoning_content": "think"}),
        chunk({"reasoning": "more"}),
        chunk({"content": "Hi"}),
        chunk({"content": ""}),
        chunk({}, "stop"),
        chunk(None, usage={"prompt_tokens": 9, "completion_tokens": 3,
                           "completion_tokens_details": {"reasoning_tokens": 2}}),
        DONE])
    assert events == [
        c.Start("chatcmpl-1", "gpt-4o", created=1700000000),
        c.PartStart(0, c.Reasoning(source="openai")), c.ReasoningDelta(0, "think"),
        c.ReasoningDelta(0, "more"), c.PartStop(0),
        c.PartStart(1, c.Text("")), c.TextDelta(1, "Hi"), c.PartStop(1),
        c.Finish("end_turn", c.Usage(9, 3, reasoning_tokens=2)),
    ]


async def test_openrouter_reasoning_details_in_deltas() -> None:
    events = await decode_frames([
        chunk({"reasoning": "a", "reasoning_details": [
            {"type": "reasoning.text", "text": "a", "format": "anthropic-claude-v1"}]}),
        chunk({"reasoning_details": [{"type": "reasoning.text", "signature": "sig"}]}),
        chunk({}, "stop"), DONE])
    assert events[2:4] == [c.ReasoningDelta(0, "a"), c.ReasoningDelta(0, signature="sig")]


async def test_error_and_broken_streams_raise() -> None:
    with pytest.raises(UpstreamError, match="Rate limit reached"):
        await decode_frames([chunk({"content": "x"}),
                             (b'data: {"error": {"message": "Rate limit reached", '
                              b'"type": "requests"}}\n\n')])
    with pytest.raises(UpstreamError, match="ended before"):
        await decode_frames([chunk({"content": "x"})])
    with pytest.raises(UpstreamError, match="not JSON"):
        await decode_frames([b"data: {oops\n\n"])
    with pytest.raises(UpstreamError, match="without a name"):
        await decode_frames([chunk({"tool_calls": [call(0, "c", None, "{}")]}),
                             chunk({}, "tool_calls"), DONE])
    # a finish reason without [DONE] is a complete answer
    events = await decode_frames([chunk({"content": "x"}, "stop")])
    assert events[-1] == c.Finish("end_turn", c.Usage())


def test_decode_response_errors_and_tolerance() -> None:
    with pytest.raises(UpstreamError, match="not JSON"):
        OA.decode_response(b"<html>")
    with pytest.raises(UpstreamError, match="quota"):
        OA.decode_response(b'{"error": {"message": "quota"}}')
    with pytest.raises(UpstreamError, match="no choices"):
        OA.decode_response(b'{"id": "x", "choices": []}')
    body = orjson.dumps({"id": "x", "model": "deepseek", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "hi", "audio": None, "annotations": []},
        "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 1,
                                             "prompt_cache_hit_tokens": 3}})
    response = OA.decode_response(body)
    assert response.parts == [c.Text("hi")] and response.usage == c.Usage(5, 1, 3)


# ---------------------------------------------------------------------------- pass-through lane


@pytest.mark.parametrize("body", [
    # usage last, as OpenAI sends it: read from the tail alone
    b'{"id": "x", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3, '
    b'"prompt_tokens_details": {"cached_tokens": 2}, '
    b'"completion_tokens_details": {"reasoning_tokens": 1}}}\n',
    # usage first: the whole answer is read
    b'{"usage": {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": '
    b'{"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}}, '
    b'"choices": [{"message": {"content": "a \\"usage\\": {} in the text"}}]}',
    # a nested "usage" comes last: not taken for the answer's own
    b'{"usage": {"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": '
    b'{"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}}, '
    b'"meta": {"usage": {"prompt_tokens": 99}}}',
])
def test_usage_from_body_wherever_the_usage_is(body: bytes) -> None:
    assert OA.usage_from_body(body) == c.Usage(7, 3, 2, None, 1)


USAGE = (b'{"prompt_tokens": 7, "completion_tokens": 3, "prompt_tokens_details": '
         b'{"cached_tokens": 2, "audio_tokens": 0}, "completion_tokens_details": '
         b'{"reasoning_tokens": 1}}')


#: an answer's choices long enough that its usage is looked for when it is not last
CHOICES = b'"choices": [{"message": {"content": "' + b"x" * 4096 + b'"}}]'


@pytest.mark.parametrize("body", [
    b'{"id": "x", ' + CHOICES + b', "usage": ' + USAGE + b'}\n',
    # as OpenAI sends it: two members after the usage
    b'{"id": "x", ' + CHOICES + b', "usage": ' + USAGE
    + b', "service_tier": "default", "system_fingerprint": "fp_06"}',
])
def test_the_outer_usage_is_read_from_its_own_text(body: bytes) -> None:
    # the answer's choices are not parsed on the pass-through lane
    assert openai_module._last_usage(body) == orjson.loads(USAGE)
    assert OA.usage_from_body(body) == c.Usage(7, 3, 2, None, 1)


@pytest.mark.parametrize("body", [
    b'{"usage": ' + USAGE + b', "meta": {"usage": {"prompt_tokens": 99}}}',
    b'{"usage": ' + USAGE + b', "meta": {"a": {"usage": {"prompt_tokens": 99}}, "b": 1}}',
    b'{"usage": ' + USAGE + b', "meta": {"usage": {"prompt_tokens": 99}}, "b": 1}',
    b'{"usage": {"note": "}{", "prompt_tokens": 7}, "b": 1}',
    b'{"usage": ' + USAGE + b', "b": }',
    # short: parsed whole, which is cheaper than finding the usage's end
    b'{"id": "x", "usage": ' + USAGE + b', "service_tier": "default"}',
])
@pytest.mark.parametrize("choices", [b"", CHOICES + b", "])
def test_a_usage_that_may_not_be_the_outer_one_is_not_read_alone(
        body: bytes, choices: bytes) -> None:
    body = body[:1] + choices + body[1:] if choices and b'"id"' not in body else body
    assert openai_module._last_usage(body) is openai_module._NOT_LAST
    try:  # read whole: the outer usage, or none from an answer that is not JSON
        usage = orjson.loads(body)["usage"]
    except orjson.JSONDecodeError:
        usage = None
    assert OA.usage_from_body(body) == decode_usage(usage)


def test_usage_from_body_without_usage() -> None:
    assert OA.usage_from_body(b'{"id": "x", "usage": null}') == c.Usage()
    assert OA.usage_from_body(b'{"id": "x"}') == c.Usage()
    assert OA.usage_from_body(b"not json") == c.Usage()


def test_usage_error_and_hidden_frames() -> None:
    usage_only = chunk(None, usage={"prompt_tokens": 4, "completion_tokens": 2,
                                    "prompt_tokens_details": {"cached_tokens": 1}})
    assert OA.usage_from_frame(usage_only) == c.Usage(4, 2, cache_read_tokens=1)
    assert OA.usage_from_frame(chunk({"content": "usage"})) is None
    assert OA.usage_from_body(b'{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}') == \
        c.Usage(1, 1)
    assert OA.error_from_frame(b'data: {"error": {"message": "boom"}}\n\n') == "boom"
    assert OA.error_from_frame(chunk({"content": "error"})) is None
    asked = ClientRequest({"stream_options": {"include_usage": True}}, "m", True)
    assert OA.hidden_frames(asked) is None
    hidden = OA.hidden_frames(ClientRequest({}, "m", True))
    assert hidden is not None and hidden(usage_only)
    assert not hidden(chunk({"content": "x"}, usage={"prompt_tokens": 1}))


def test_error_body_frame_and_keepalive() -> None:
    err = InvalidRequest("bad thing", param="messages")
    assert orjson.loads(OA.error_body(err)) == {"error": {
        "message": "bad thing", "type": "invalid_request_error", "param": "messages",
        "code": "invalid_request"}}
    assert parse_frames([OA.error_frame(err)])[0]["data"]["error"]["message"] == "bad thing"
    assert OA.keepalive_frame() is None


@pytest.mark.parametrize("seed", range(40))
def test_random_requests_round_trip(seed: int) -> None:
    import random

    from helpers_openai_anthropic import random_request

    request = random_request(random.Random(seed), "openai")
    body = OA.encode_request(request)
    assert decode(body) == request
    assert OA.encode_request(decode(body)) == body
