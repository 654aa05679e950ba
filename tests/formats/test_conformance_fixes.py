"""Translation fixes found by the conformance matrix (tests/conformance), pinned as units."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from omniroute.errors import InvalidRequest
from omniroute.formats import canonical as c
from omniroute.formats import carry
from omniroute.formats.anthropic import AnthropicFormat
from omniroute.formats.base import ClientRequest
from omniroute.formats.canonical import SYSTEM_REMINDER
from omniroute.formats.gemini import GeminiFormat
from omniroute.formats.gemini.parts import SKIP_SIGNATURE
from omniroute.formats.ollama import OllamaFormat
from omniroute.formats.responses import ResponsesFormat
from omniroute.sse import encode

PACKED = carry.pack(c.Reasoning(text="t", signature="EqQBCkYIBRgC", source="anthropic"))


def gemini_request(body: dict[str, Any], model: str = "gemini-2.5-flash") -> c.Request:
    return GeminiFormat().decode_request(ClientRequest(body, model, False, {}, {}))


def test_gemini_reads_snake_case_fields_as_google_genai_sends_them() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    request = gemini_request({
        "contents": [{"role": "user", "parts": [
            {"inlineData": {"data": png, "mime_type": "image/png"}},
            {"file_data": {"file_uri": "https://x/cat.png", "mime_type": "image/png"}}]}],
        "tools": [{"functionDeclarations": [
            {"name": "f", "parameters_json_schema": {"type": "object", "properties": {
                "my_arg": {"type": "string"}}}},
            {"name": "g", "parameters": {"type": "OBJECT", "property_ordering": ["a_b"],
                                         "properties": {"a_b": {"type": "STRING",
                                                                "max_length": 5},
                                                        "n": {"any_of": [{"type": "INTEGER"}],
                                                              "nullable": True}}}}]}],
        "generationConfig": {"topK": 3.0, "thinkingConfig": {"include_thoughts": True,
                                                             "thinking_budget": 100}},
    })
    assert request.messages[0].parts == [c.Image(media_type="image/png", data=png),
                                         c.Image(media_type="image/png", url="https://x/cat.png")]
    f, g = request.tools
    assert f.parameters == {"type": "object", "properties": {"my_arg": {"type": "string"}}}
    assert g.parameters == {"type": "object", "properties": {
        "a_b": {"type": "string", "maxLength": 5},
        "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}
    assert request.top_k == 3 and isinstance(request.top_k, int)
    assert request.reasoning == c.ReasoningConfig(budget_tokens=100, include_thoughts=True)


def test_gemini_function_arguments_keep_their_keys() -> None:
    request = gemini_request({"contents": [
        {"role": "user", "parts": [{"text": "go"}]},
        {"role": "model", "parts": [{"function_call": {"name": "f", "args": {"dir_path": "."}}}]},
        {"role": "user", "parts": [{"function_response": {"name": "f",
                                                          "response": {"file_names": []}}}]}]})
    call = request.messages[1].parts[0]
    assert isinstance(call, c.ToolCall) and orjson.loads(call.arguments) == {"dir_path": "."}
    result = request.messages[2].parts[0]
    assert isinstance(result, c.ToolResult) and "file_names" in result.content[0].text  # type: ignore[union-attr]


def test_gemini_marks_a_later_system_message() -> None:
    body = GeminiFormat().encode_request(c.Request("gemini-2.5-flash", messages=[
        c.Message("user", [c.Text("hi")]), c.Message("system", [c.Text("be brief")])]))
    assert body["contents"] == [{"role": "user", "parts": [
        {"text": "hi"}, {"text": SYSTEM_REMINDER.format("be brief")}]}]


def test_carry_unpacks_the_url_safe_alphabet() -> None:
    part = c.Reasoning(text="x", signature="~?~>" * 10, source="anthropic")
    packed = carry.pack(part)
    assert "+" in packed and "/" in packed
    again = carry.unpack(packed.replace("+", "-").replace("/", "_").rstrip("="))
    assert again is not None and again.signature == part.signature


def test_anthropic_pass_through_drops_foreign_thinking() -> None:
    body = {"model": "m", "max_tokens": 9, "thinking": {"type": "enabled", "budget_tokens": 2},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "t", "signature": PACKED},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}]}
    out = AnthropicFormat().with_model(body, "claude")
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "t1", "name": "f",
                                              "input": {}}]
    assert "thinking" not in out, "the tool turn lost its signed thinking: thinking goes off"
    assert body["messages"][1]["content"][0]["signature"] == PACKED, "the client's body is kept"
    plain = {**body, "messages": body["messages"][:1]}
    assert AnthropicFormat().with_model(plain, "m") is plain


def test_responses_pass_through_drops_foreign_reasoning() -> None:
    own = {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA", "summary": []}
    body = {"model": "m", "input": [{"type": "reasoning", "encrypted_content": PACKED,
                                     "summary": []}, own]}
    assert ResponsesFormat().with_model(body, "m")["input"] == [own]


def test_gemini_pass_through_drops_foreign_signatures() -> None:
    body = {"contents": [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "", "thought": True, "thoughtSignature": PACKED},
                                    {"functionCall": {"name": "f", "args": {}},
                                     "thought_signature": PACKED}]}]}
    out = GeminiFormat().with_model(body, "gemini-3-pro-preview")
    assert out["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}},
                                            "thoughtSignature": SKIP_SIGNATURE}]
    out = GeminiFormat().with_model(body, "gemini-2.5-flash")
    assert out["contents"][1]["parts"] == [{"functionCall": {"name": "f", "args": {}}}]


def test_ollama_refuses_an_image_by_url() -> None:
    request = c.Request("llava", messages=[c.Message("user", [
        c.Text("what is it?"), c.Image(url="https://x/cat.png")])])
    with pytest.raises(InvalidRequest, match="by value only"):
        OllamaFormat().encode_request(request)


async def _frames(items: list[tuple[str, dict[str, Any]]]) -> AsyncIterator[bytes]:
    for name, data in items:
        yield encode({"type": name, **data}, event=name)


async def test_responses_empty_reasoning_item_is_no_part() -> None:
    """A reasoning model's item without summary or encrypted content says nothing."""
    response = {"id": "resp_1", "model": "gpt-5", "status": "in_progress", "output": []}
    item = {"id": "rs_1", "type": "reasoning", "summary": []}
    frames = [("response.created", {"response": response}),
              ("response.output_item.added", {"output_index": 0, "item": item}),
              ("response.output_item.done", {"output_index": 0, "item": item}),
              ("response.output_item.added", {"output_index": 1, "item": {
                  "id": "msg_1", "type": "message", "role": "assistant", "content": []}}),
              ("response.content_part.added", {"output_index": 1, "content_index": 0,
                                               "part": {"type": "output_text", "text": ""}}),
              ("response.output_text.delta", {"output_index": 1, "content_index": 0,
                                               "delta": "hi"}),
              ("response.content_part.done", {"output_index": 1, "content_index": 0}),
              ("response.completed", {"response": {**response, "status": "completed"}})]
    events = [e async for e in ResponsesFormat().decode_stream(_frames(frames))]
    starts = [e.part for e in events if isinstance(e, c.PartStart)]
    assert starts == [c.Text("", meta={"responses": {"item_id": "msg_1"}})]
    decoded = ResponsesFormat().decode_response(orjson.dumps(
        {**response, "status": "completed", "output": [item]}))
    assert decoded.parts == []
