"""The ``anthropic`` format's round trips: representative and random requests, responses and
streams, and tool calls kept exactly across formats."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from anthropic_support import AN, HI, RESPONSES, decode
from helpers_openai_anthropic import (
    FORMATS,
    aiter,
    check_anthropic_sequence,
    collect,
    request_of,
)

from omniroute.formats import canonical as c

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
