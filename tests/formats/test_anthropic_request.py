"""The ``anthropic`` format's request settings: max_tokens, thinking, response formats,
tool choice, hosted tools, documents."""

from __future__ import annotations

from typing import Any

import pytest
from anthropic_support import AN, HI, decode, roundtrip
from helpers_openai_anthropic import (
    FORMATS,
    request_of,
)

from omniroute.formats.anthropic import DEFAULT_MAX_TOKENS


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
