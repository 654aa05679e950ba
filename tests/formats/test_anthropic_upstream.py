"""What comes back from Anthropic: upstream streams and bodies, the pass-through lane's usage
and errors, and errors in Anthropic's own types."""

from __future__ import annotations

import orjson
import pytest
from anthropic_support import AN
from helpers_openai_anthropic import (
    aiter,
    collect,
    frames_of,
    parse_frames,
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
