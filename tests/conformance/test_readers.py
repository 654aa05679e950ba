"""The oracle's own readers (``conformance.readers``) against the specs' examples."""

from __future__ import annotations

from conformance.readers import camel_keys, data_url, json_schema, sse_events


def test_sse_events_as_the_html_spec_parses_them() -> None:
    raw = (b": a comment\r\nevent: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
           b"data:first\ndata: second\n\n"
           b"event: ping\n\n"  # no data: not dispatched
           b"id: 7\rdata: cr\r\r"
           b"data: cut off at the end")
    assert sse_events(raw) == [("message_start", '{"a": 1}'), (None, "first\nsecond"),
                               (None, "cr")]


def test_camel_keys_leaves_the_callers_data_alone() -> None:
    body = {"generation_config": {"thinking_config": {"include_thoughts": True}},
            "contents": [{"parts": [{"function_call": {"name": "f", "args": {"dir_path": "."}}},
                                    {"inline_data": {"mime_type": "image/png"}}]}]}
    assert camel_keys(body) == {
        "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
        "contents": [{"parts": [{"functionCall": {"name": "f", "args": {"dir_path": "."}}},
                                {"inlineData": {"mimeType": "image/png"}}]}]}


def test_json_schema_from_the_openapi_subset() -> None:
    schema = {"type": "OBJECT", "properties": {
        "limit": {"type": "INTEGER", "nullable": True},
        "tags": {"type": "ARRAY", "items": {"type": "STRING"}},
        "any": {"any_of": [{"type": "NUMBER"}]}}, "required": ["limit"]}
    assert json_schema(schema) == {"type": "object", "properties": {
        "limit": {"type": ["integer", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "any": {"anyOf": [{"type": "number"}]}}, "required": ["limit"]}


def test_data_url() -> None:
    assert data_url("data:image/png;base64,iVBOR") == ("image/png", "iVBOR")
    assert data_url("data:;base64,AAAA") == (None, "AAAA")
    assert data_url("data:text/plain;charset=utf-8;base64,aGk=") == ("text/plain", "aGk=")
    assert data_url("data:text/plain,hi") is None
    assert data_url("https://example.com/cat.png") is None
