"""The cache key of a request read as text (``Format.text_request``) is the key of the
decoded request: keyed without a decode, a question still meets its answer from any
client format."""

from __future__ import annotations

from typing import Any

import pytest

from omniroute.cache.key import cache_key, text_form, text_key
from omniroute.formats import canonical as c
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
    {"messages": ["hi"]},
    {"messages": [["user", "hi"]]},
    {"messages": [{"role": "user"}]},
    {"messages": [{"role": "user", "text": "hi"}]},
    {"messages": [{"role": {"a": 1}, "content": "hi"}]},
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


def _request(*messages: c.Message, **fields: Any) -> c.Request:
    return c.Request(model="gpt-4o-mini", messages=list(messages), **fields)


def test_a_decoded_request_is_hashed_in_its_text_form_only_when_it_has_one() -> None:
    """``text_form``: what the text form cannot write (a name, an empty text part, two
    parts, a tool) is hashed whole; the key never meets a text form's (five items against
    eighteen), and a key is 32 hex digits (BLAKE2b, 16 bytes)."""
    hello = c.Message("user", [c.Text("Hello.")])
    plain = _request(hello, temperature=0)
    assert text_form(plain) == ([], [("user", "Hello.")], (
        None, None, 0, None, None, [], None, None, None))
    key = cache_key(plain, "t", "m", layers=False).exact
    assert len(key) == 32 and int(key, 16) >= 0
    assert key == text_key(([], [("user", "Hello.")], (
        None, None, 0, None, None, [], None, None, None)), "t", "m")
    others = [
        _request(c.Message("user", [c.Text("Hello.")], name="bob"), temperature=0),
        _request(c.Message("user", [c.Text("Hello.")], meta={"x": 1}), temperature=0),
        _request(c.Message("user", [c.Text("Hello."), c.Text("")]), temperature=0),
        _request(c.Message("user", [c.Text("Hello.", {"type": "ephemeral"})]), temperature=0),
        _request(hello, temperature=0, tools=[c.Tool("f", None, {"type": "object"})]),
        _request(hello, temperature=0, system=[c.Text("Be brief.", {"type": "ephemeral"})]),
        _request(hello, temperature=0, meta={"openai": {"logit_bias": {"1": 2}}}),
    ]
    keys = {key}
    for other in others:
        assert text_form(other) is None
        keys.add(cache_key(other, "t", "m", layers=False).exact)
    # an empty text part is not an empty turn: the text form writes the latter only
    empty, none = _request(c.Message("user", [c.Text("")])), _request(c.Message("user", []))
    assert text_form(empty) is None and text_form(none) == ([], [("user", "")], (
        None, None, None, None, None, [], None, None, None))
    keys.add(cache_key(empty, "t", "m", layers=False).exact)
    keys.add(cache_key(none, "t", "m", layers=False).exact)
    assert len(keys) == len(others) + 3
    # extras that only steer transport still leave a text form
    kept = _request(hello, temperature=0, meta={"openai": {"store": True, "user": "u"}})
    assert cache_key(kept, "t", "m", layers=False).exact == key
