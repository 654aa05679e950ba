"""The text form (``Format.text_request``) of Anthropic Messages, Responses and Gemini
requests: keyed without a decode, each has the key of its decoded request, and the same
question asked in two formats has one key (tests/test_cache_text_key.py: OpenAI chat)."""

from __future__ import annotations

from typing import Any

import pytest

from omniroute.cache.key import cache_key, text_key
from omniroute.formats.anthropic import AnthropicFormat
from omniroute.formats.base import ClientRequest, Format
from omniroute.formats.gemini import GeminiFormat
from omniroute.formats.openai import OpenAIFormat
from omniroute.formats.responses import ResponsesFormat

ANTHROPIC, RESPONSES, GEMINI = AnthropicFormat(), ResponsesFormat(), GeminiFormat()
ASK = "Give me one sentence about the sea."
USER = {"role": "user", "content": ASK}
BRIEF = "Answer briefly."

TEXT_BODIES: list[tuple[Format, dict[str, Any]]] = [
    (ANTHROPIC, {"messages": [USER], "max_tokens": 64}),
    (ANTHROPIC, {"system": BRIEF, "messages": [USER], "max_tokens": 64, "temperature": 0,
                 "stream": True, "metadata": {"user_id": "u1"}}),
    (ANTHROPIC, {"system": [{"type": "text", "text": BRIEF}, {"type": "text", "text": ""}],
                 "messages": [USER, {"role": "assistant", "content": "The sea is wide."},
                              {"role": "system", "content": "Be kind."},
                              {"role": "user", "content": ""}],
                 "max_tokens": 9, "top_p": 0.5, "top_k": 3, "stop_sequences": ["\n"]}),
    (ANTHROPIC, {"system": "", "messages": [USER], "max_tokens": 5, "temperature": 0.0}),
    (RESPONSES, {"input": ASK, "store": False}),
    (RESPONSES, {"instructions": BRIEF, "input": [USER], "store": False, "temperature": 0,
                 "max_output_tokens": 64, "top_p": 0.5, "parallel_tool_calls": False,
                 "stream": True, "user": "u1", "metadata": {"a": "b"},
                 "prompt_cache_key": "p", "service_tier": "auto"}),
    (RESPONSES, {"instructions": "", "store": False, "input": [
        {"type": "message", "role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi."}, USER]}),
    (GEMINI, {"contents": [{"role": "user", "parts": [{"text": ASK}]}]}),
    (GEMINI, {"systemInstruction": {"parts": [{"text": BRIEF}]},
              "contents": [{"parts": [{"text": "Hello."}]},
                           {"role": "model", "parts": [{"text": "Hi."}]},
                           {"role": "user", "parts": [{"text": ASK}]}],
              "generationConfig": {"temperature": 0, "topP": 0.5, "topK": 3.0, "seed": 7,
                                   "maxOutputTokens": 64, "stopSequences": ["\n"],
                                   "presencePenalty": 0.1, "frequencyPenalty": 0.2}}),
    (GEMINI, {"system_instruction": BRIEF, "contents": [{"parts": [{"text": ASK}]}],
              "generation_config": {"max_output_tokens": 64, "temperature": 0,
                                    "stop_sequences": "not a list"}}),
    (GEMINI, {"systemInstruction": "", "contents": [{"parts": [{"text": ASK}]}],
              "generationConfig": None}),
]

NOT_TEXT: list[tuple[Format, dict[str, Any]]] = [
    (ANTHROPIC, {"messages": [USER], "max_tokens": 8,
                 "tools": [{"name": "f", "input_schema": {"type": "object"}}]}),
    (ANTHROPIC, {"messages": [USER], "max_tokens": 8, "thinking": {"type": "adaptive"}}),
    (ANTHROPIC, {"messages": [USER], "max_tokens": 8, "some_extra": 1}),
    (ANTHROPIC, {"messages": [{"role": "user", "content": [{"type": "text", "text": ASK}]}],
                 "max_tokens": 8}),
    (ANTHROPIC, {"system": [{"type": "text", "text": BRIEF,
                             "cache_control": {"type": "ephemeral"}}],
                 "messages": [USER], "max_tokens": 8}),
    (ANTHROPIC, {"messages": [USER], "max_tokens": 8, "stop_sequences": "\n"}),
    (RESPONSES, {"input": "", "instructions": BRIEF, "store": False}),
    (RESPONSES, {"input": ASK, "store": False, "reasoning": {"effort": "low"}}),
    (RESPONSES, {"input": ASK, "store": False, "text": {"format": {"type": "text"}}}),
    (RESPONSES, {"input": ASK, "store": False, "include": ["reasoning.encrypted_content"]}),
    (RESPONSES, {"input": [{"role": "developer", "content": BRIEF}, USER], "store": False}),
    (RESPONSES, {"input": [USER, {"role": "assistant", "content": "a"},
                           {"role": "assistant", "content": "b"}], "store": False}),
    (RESPONSES, {"input": [{"id": "msg_1", "role": "user", "content": ASK}], "store": False}),
    (RESPONSES, {"input": [{"role": "user", "content": ""}], "store": False}),
    (GEMINI, {"contents": [{"parts": [{"text": "a"}, {"text": "b"}]}]}),
    (GEMINI, {"contents": [{"parts": [{"text": ""}]}]}),
    (GEMINI, {"contents": [{"role": "model", "parts": [{"text": "a", "thought": True}]}]}),
    (GEMINI, {"contents": [{"parts": [{"text": ASK}]}], "tools": [{"googleSearch": {}}]}),
    (GEMINI, {"contents": [{"parts": [{"text": ASK}]}], "safetySettings": []}),
    (GEMINI, {"contents": [{"parts": [{"text": ASK}]}],
              "generationConfig": {"candidateCount": 2}}),
    (GEMINI, {"contents": [{"parts": [{"text": ASK}]}],
              "generationConfig": {"responseMimeType": "text/plain"}}),
    (GEMINI, {"contents": [{"parts": [{"text": ASK}]}], "systemInstruction": "a",
              "system_instruction": "b"}),
]


def _decoded(fmt: Format, body: dict[str, Any]) -> Any:
    return fmt.decode_request(ClientRequest(body, body.get("model", "m"),
                                            bool(body.get("stream")), {}, {}))


def _ids(case: tuple[Format, dict[str, Any]]) -> str:
    return case[0].name


@pytest.mark.parametrize("case", TEXT_BODIES, ids=_ids)
@pytest.mark.parametrize("layers", [False, True])
def test_a_text_request_has_the_key_of_its_decoded_request(
        case: tuple[Format, dict[str, Any]], layers: bool) -> None:
    fmt, body = case
    if fmt is not GEMINI:
        body = {"model": "m", **body}
    text = fmt.text_request(body)
    assert text is not None
    full = cache_key(_decoded(fmt, body), "tenant", "up/m", layers=layers)
    assert text_key(text, "tenant", "up/m") == full.exact
    assert text_key(text, "other", "up/m") != full.exact  # scoped by tenant


@pytest.mark.parametrize("case", NOT_TEXT, ids=_ids)
def test_a_request_with_more_than_text_is_decoded(case: tuple[Format, dict[str, Any]]) -> None:
    fmt, body = case
    assert fmt.text_request(body if fmt is GEMINI else {"model": "m", **body}) is None


def test_the_same_question_in_each_format_has_one_key() -> None:
    """What the cache shares across client formats: one question, one key, each keyed
    from its text form."""
    asked = [
        (OpenAIFormat(), {"model": "m", "messages": [{"role": "system", "content": BRIEF},
                                                     USER], "max_tokens": 64}),
        (ANTHROPIC, {"model": "m", "system": BRIEF, "messages": [USER], "max_tokens": 64}),
        (RESPONSES, {"model": "m", "instructions": BRIEF, "input": ASK,
                     "max_output_tokens": 64, "store": False}),
        (GEMINI, {"systemInstruction": {"parts": [{"text": BRIEF}]},
                  "contents": [{"role": "user", "parts": [{"text": ASK}]}],
                  "generationConfig": {"maxOutputTokens": 64}}),
    ]
    keys = set()
    for fmt, body in asked:
        text = fmt.text_request(body)
        assert text is not None, fmt.name
        keys.add(text_key(text, "t", "up/m"))
    assert len(keys) == 1
