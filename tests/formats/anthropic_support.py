"""What the ``anthropic`` format tests share: the format, a first message, and decoding an
Anthropic request body (and encoding it back), representative responses."""

from __future__ import annotations

from typing import Any

from helpers_openai_anthropic import request_of

from omniroute.formats import canonical as c
from omniroute.formats.anthropic import AnthropicFormat

AN = AnthropicFormat()
HI = [{"role": "user", "content": "Hello"}]
#: representative responses: round-tripped, streamed, and parsed by the SDK
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


def decode(body: dict[str, Any]) -> c.Request:
    return request_of("anthropic", body)


def roundtrip(body: dict[str, Any], client: dict[str, Any] | None = None) -> dict[str, Any]:
    return AN.encode_request(decode(body), client)
