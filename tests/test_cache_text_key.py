"""The cache key of a request read as text (``Format.text_request``) is the key of the
decoded request: keyed without a decode, a question still meets its answer from any
client format."""

from __future__ import annotations

from typing import Any

import pytest

from omniroute.cache.key import cache_key, text_key
from omniroute.formats.base import ClientRequest
from omniroute.formats.openai import OpenAIFormat

FMT = OpenAIFormat()
SYSTEM = {"role": "system", "content": "Answer briefly."}
USER = {"role": "user", "content": "Give me one sentence about the sea."}
TEXT_BODIES: list[dict[str, Any]] = [
    {"messages": [USER]},
    {"messages": [SYSTEM, USER], "temperature": 0, "max_tokens": 64},
    {"messages": [SYSTEM, SYSTEM, USER], "max_completion_tokens": 9, "max_tokens": 64},
    {"messages": [{"role": "developer", "content": "Be kind."}, USER], "stream": True,
     "stream_options": {"include_usage": True}, "user": "u1", "metadata": {"a": "b"}},
    {"messages": [{"role": "system", "content": ""}, {"role": "user", "content": ""},
                  {"role": "assistant", "content": "Hello."}, SYSTEM, USER]},
    {"messages": [USER], "stop": "\n", "seed": 7, "top_p": 0.5, "top_k": 3,
     "presence_penalty": 0.1, "frequency_penalty": 0.2, "parallel_tool_calls": False},
    {"messages": [USER], "stop": ["a", "b"], "temperature": 0.0, "max_completion_tokens": 0,
     "max_tokens": 5},
]
NOT_TEXT: list[dict[str, Any]] = [
    {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f"}}]},
    {"messages": [USER], "response_format": {"type": "json_object"}},
    {"messages": [USER], "reasoning_effort": "low"},
    {"messages": [USER], "logprobs": True},
    {"messages": [USER], "n": 2},
    {"messages": [USER], "some_extra": 1},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
    {"messages": [{"role": "user", "content": "hi", "name": "bob"}]},
    {"messages": [USER, {"role": "developer", "content": "later"}]},
    {"messages": [USER, {"role": "tool", "content": "x", "tool_call_id": "c1"}]},
    # malformed: left to the decode, which answers 400
    {"messages": [{"content": "hi", "name": "bob"}]},
    {"messages": [{"content": "hi", "role": ["user"]}]},
]


@pytest.mark.parametrize("body", TEXT_BODIES)
@pytest.mark.parametrize("layers", [False, True])
def test_a_text_request_has_the_key_of_its_decoded_request(body: dict[str, Any],
                                                           layers: bool) -> None:
    body = {"model": "gpt-4o-mini", **body}
    text = FMT.text_request(body)
    assert text is not None
    decoded = FMT.decode_request(ClientRequest(body, body["model"], bool(body.get("stream")),
                                               {}, {}))
    full = cache_key(decoded, "tenant", "up/gpt-4o-mini", layers=layers)
    assert text_key(text, "tenant", "up/gpt-4o-mini") == full.exact
    assert text_key(text, "other", "up/gpt-4o-mini") != full.exact  # scoped by tenant
    assert text_key(text, "tenant", "up/other") != full.exact  # and by the requested model


@pytest.mark.parametrize("body", NOT_TEXT)
def test_a_request_with_more_than_text_is_decoded(body: dict[str, Any]) -> None:
    assert FMT.text_request({"model": "gpt-4o-mini", **body}) is None


def test_values_are_keyed_as_sent() -> None:
    """A value of the wrong type is not checked, but it never takes a valid one's key."""
    body = {"model": "m", "messages": [USER], "max_tokens": 64}
    text, wrong = FMT.text_request(body), FMT.text_request({**body, "max_tokens": "64"})
    assert text is not None and wrong is not None
    assert text_key(text, "", "m") != text_key(wrong, "", "m")
