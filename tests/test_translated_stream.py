"""The translated lane read block by block (:mod:`omniroute.pipeline.translated`): the
frames one upstream read brought are translated into one chunk, the same bytes the
chain of async generators gives frame by frame, and they leave in one write."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from test_stream_reads import spy_writes

from omniroute.errors import GatewayError
from omniroute.formats import canonical as c
from omniroute.formats.anthropic import AnthropicFormat
from omniroute.formats.base import ClientRequest, Format
from omniroute.formats.openai import OpenAIFormat
from omniroute.formats.responses import ResponsesFormat
from omniroute.pipeline.translated import Translated
from omniroute.pipeline.usage import StreamOutput
from omniroute.sse import SSESplitter, events_of
from omniroute.storage import RequestRecord

#: the client addresses the fake upstream saw, one a request
PEERS = web.AppKey("peers", list)
ANTHROPIC_BODY = {"model": "up/gpt-4o-mini", "max_tokens": 100, "stream": True,
                  "messages": [{"role": "user", "content": "hi"}]}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


USAGE = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
         b'"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,'
         b'"completion_tokens":4,"total_tokens":7}}\n\n')
DONE = b"data: [DONE]\n\n"
TEXT = [chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}),
        chunk({"content": "lo"}), chunk({}, "stop"), USAGE, DONE]
CALL = {"index": 0, "id": "call_1", "type": "function",
        "function": {"name": "f", "arguments": ""}}
MIXED = [chunk({"reasoning_content": "think"}), chunk({"content": "a"}),
         chunk({"tool_calls": [CALL]}),
         chunk({"tool_calls": [{**CALL, "index": 1, "id": "call_2", "function": {
             "name": "g", "arguments": '{"x"'}}]}),
         chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"y":1}'}}]}),
         chunk({"tool_calls": [{"index": 1, "function": {"arguments": ":2}"}}]}),
         chunk({}, "tool_calls"), b": keep-alive\n\n", USAGE,
         b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\r\n\r\n', DONE]
ERROR = [chunk({"content": "a"}), b'data: {"error":{"message":"overloaded"}}\n\n', DONE]
CUT = [chunk({"content": "a"}), chunk({"content": "b"})]  # no finish, no [DONE]
UNFINISHED_ENDS = [chunk({"content": "a"}), chunk({}, "length"), USAGE]  # no [DONE]


RESPONSES_BODY = {"model": "up/gpt-4o-mini", "stream": True, "input": "hi"}
#: the ids a Responses stream makes for its items (new each time)
ITEM_IDS = re.compile(rb'"(msg|rs|fc)_[0-9A-Za-z]+"')


def request(client: type[Format] = AnthropicFormat) -> c.Request:
    body = ANTHROPIC_BODY if client is AnthropicFormat else RESPONSES_BODY
    return client().decode_request(ClientRequest(body, "gpt-4o-mini", True))


class Reads:
    """An upstream's reads: the blocks given, one per read."""

    def __init__(self, blocks: list[bytes]) -> None:
        self.blocks, self.closed = list(blocks), False

    def __aiter__(self) -> Reads:
        return self

    async def __anext__(self) -> bytes:
        if not self.blocks:
            raise StopAsyncIteration
        return self.blocks.pop(0)

    async def aclose(self) -> None:
        self.closed = True


async def chained(frames: list[bytes], client: type[Format] = AnthropicFormat
                  ) -> tuple[list[bytes], BaseException | None]:
    """The chain's frames (decode_stream -> StreamOutput.events -> encode_stream)."""
    async def upstream() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    output = StreamOutput(RequestRecord("r", 0.0, ""), 0.0, client(), request=request(client))
    out: list[bytes] = []
    try:
        async for frame in client().encode_stream(
                output.events(OpenAIFormat().decode_stream(upstream())), request(client)):
            out.append(frame)
    except GatewayError as err:
        return out, err
    return out, None


async def translated(blocks: list[bytes], client: type[Format] = AnthropicFormat
                     ) -> tuple[list[bytes], BaseException | None, StreamOutput, list[bool]]:
    output = StreamOutput(RequestRecord("r", 0.0, ""), 0.0, client(), request=request(client))
    decoder, encoder = OpenAIFormat().stream_decoder(), client().stream_encoder(
        request(client))
    assert decoder is not None and encoder is not None
    stream = Translated(Reads(blocks), SSESplitter.each, decoder, encoder, output)
    chunks, ended = [], []
    try:
        async for piece in stream:
            chunks.append(piece)
            ended.append(stream.ended())
    except GatewayError as err:
        return chunks, err, output, ended
    return chunks, None, output, ended


@pytest.mark.parametrize("client", [AnthropicFormat, ResponsesFormat])
@pytest.mark.parametrize("frames", [TEXT, MIXED, ERROR, CUT, UNFINISHED_ENDS])
@pytest.mark.parametrize("cut", [1, 2, 100])
async def test_blocks_translate_to_the_bytes_the_chain_gives_frame_by_frame(
    frames: list[bytes], cut: int, client: type[Format]
) -> None:
    blocks = [b"".join(frames[i:i + cut]) for i in range(0, len(frames), cut)]
    expected, failure = await chained(frames, client)
    chunks, error, output, ended = await translated(blocks, client)
    assert ITEM_IDS.sub(b"ID", b"".join(chunks)) == ITEM_IDS.sub(b"ID", b"".join(expected))
    assert (type(error), str(error)) == (type(failure), str(failure))
    assert len(chunks) <= len(blocks) + 1
    # only a stream that ended well says its last chunk was its last
    assert ended == [False] * (len(chunks) - 1) + [failure is None] if chunks else True
    if failure is None and frames is TEXT and client is AnthropicFormat:
        assert output.texts == ["Hel", "lo"]
        assert (output.record.prompt_tokens, output.record.completion_tokens) == (3, 4)
        if cut == 100:  # a stream that came in one read leaves in one chunk
            assert len(chunks) == 1


async def test_the_frames_before_an_error_frame_of_the_same_read_are_sent_first() -> None:
    chunks, error, _, _ = await translated([b"".join(ERROR)])
    assert len(chunks) == 1 and b'"text":"a"' in chunks[0]
    assert isinstance(error, GatewayError) and "overloaded" in str(error)


async def test_closing_the_stream_closes_the_upstream_reads() -> None:
    output = StreamOutput(RequestRecord("r", 0.0, ""), 0.0, AnthropicFormat(),
                          request=request())
    reads = Reads([TEXT[0], TEXT[1]])
    stream = Translated(reads, SSESplitter.each, OpenAIFormat().stream_decoder(),
                        AnthropicFormat().stream_encoder(request()), output)
    assert b"message_start" in await anext(stream)
    await stream.aclose()
    assert reads.closed


@pytest.mark.parametrize("after, closed", [([], False), ([b": more\n\n"], True)])
async def test_after_done_one_more_read_keeps_the_connection_if_the_body_ended_there(
    after: list[bytes], closed: bool
) -> None:
    """The upstream's body read to its end goes back to the pool; more bytes after
    ``[DONE]`` drop it (closed), as the chain always did."""
    output = StreamOutput(RequestRecord("r", 0.0, ""), 0.0, AnthropicFormat(),
                          request=request())
    reads = Reads([b"".join(TEXT), *after])
    stream = Translated(reads, SSESplitter.each, OpenAIFormat().stream_decoder(),
                        AnthropicFormat().stream_encoder(request()), output)
    assert b"message_stop" in await anext(stream) and stream.ended()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)
    assert reads.blocks == [] and reads.closed is closed


@pytest.fixture
def whole_upstream() -> web.Application:
    async def instant(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write_eof(b"".join(TEXT))  # the whole stream and its end in one write
        return resp

    async def then_end(request: web.Request) -> web.StreamResponse:
        await request.read()
        peers.append(request.transport.get_extra_info("peername")
                     if request.transport is not None else None)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"".join(TEXT))
        await asyncio.sleep(0.01)
        await resp.write_eof()  # the body's end after [DONE], in a read of its own
        return resp

    peers: list[Any] = []
    app = web.Application()
    app[PEERS] = peers
    app.router.add_post("/v2/chat/completions", then_end)
    app.router.add_post("/v1/chat/completions", instant)
    return app


async def _translated(omniroute: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
                      upstream: web.Application, path: str, body: dict[str, Any],
                      ) -> tuple[list[bytes], list[dict[str, Any]]]:
    """``body`` posted to ``path`` through a gateway on ``upstream``'s ``/v1``: the
    gateway's socket writes and the answer's events."""
    writes: list[bytes] = []
    spy_writes(monkeypatch, writes)
    server = await aiohttp_server(upstream)
    await omniroute.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                                  "base_url": str(server.make_url("/v1")), "api_key": "sk-x"})
    resp = await omniroute.client.post(path, json=body)
    assert resp.status == 200
    events = [orjson.loads(e.split(b"data: ", 1)[1]) for e in events_of(await resp.read())]
    return writes, events


async def test_an_anthropic_stream_translated_from_one_read_leaves_in_one_write(
    omniroute: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
    whole_upstream: web.Application,
) -> None:
    """Claude Code on an OpenAI upstream: the headers, every Anthropic event and the
    end of the chunked answer in one write (the chain wrote each event on its own)."""
    writes, events = await _translated(omniroute, aiohttp_server, monkeypatch,
                                       whole_upstream, "/v1/messages", ANTHROPIC_BODY)
    assert [e["type"] for e in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    assert events[-2]["usage"]["output_tokens"] == 4
    ours = [w for w in writes if b"X-OmniRoute-Request-Id" in w]
    assert len(ours) == 1 and ours[0].endswith(b'{"type":"message_stop"}\n\n\r\n0\r\n\r\n')
    assert writes[writes.index(ours[0]) + 1:] == []


async def test_the_upstream_connection_is_reused_after_a_translated_stream(
    omniroute: Any, aiohttp_server: Any, whole_upstream: web.Application,
) -> None:
    """The body's end that follows ``[DONE]`` is read: the connection goes back to the
    pool (the chain stopped at ``[DONE]`` and dropped it: a new connection a stream)."""
    server = await aiohttp_server(whole_upstream)
    await omniroute.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                                  "base_url": str(server.make_url("/v2")), "api_key": "sk-x"})
    for _ in range(3):
        resp = await omniroute.client.post("/v1/messages", json=ANTHROPIC_BODY)
        assert resp.status == 200 and (await resp.read()).endswith(
            b'{"type":"message_stop"}\n\n')
    peers = whole_upstream[PEERS]
    assert len(peers) == 3 and len(set(peers)) == 1


async def test_a_responses_stream_translated_from_one_read_leaves_in_one_write(
    omniroute: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
    whole_upstream: web.Application,
) -> None:
    """Codex on an OpenAI chat upstream: the same one write, ``response.completed`` last."""
    writes, events = await _translated(omniroute, aiohttp_server, monkeypatch,
                                       whole_upstream, "/v1/responses", RESPONSES_BODY)
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == "Hello"
    ours = [w for w in writes if b"X-OmniRoute-Request-Id" in w]
    assert len(ours) == 1 and ours[0].endswith(b"}\n\n\r\n0\r\n\r\n")
    assert writes[writes.index(ours[0]) + 1:] == []


TEXTS = ["a", 'q"uote\\', "é ✓ \u2028", "\n\t"]


def test_the_text_delta_frames_are_the_events_json_whole() -> None:
    """Anthropic's and Responses' text deltas are written from a head made once per
    part and the text serialised alone: the same bytes as the whole event's JSON."""
    from omniroute.sse import encode

    anthropic = AnthropicFormat().stream_encoder(request())
    anthropic.feed(c.Start("msg_1", "m"))
    anthropic.feed(c.PartStart(0, c.Text("")))
    for text in TEXTS:
        assert anthropic.feed(c.TextDelta(0, text)) == [encode(
            {"type": "content_block_delta", "index": 0,
             "delta": {"type": "text_delta", "text": text}}, event="content_block_delta")]
    responses = ResponsesFormat().stream_encoder(request(ResponsesFormat))
    responses.feed(c.Start("resp_1", "m", created=1))
    started = responses.feed(c.PartStart(0, c.Text("")))
    item = orjson.loads(started[0].split(b"data: ", 1)[1])
    seq = item["sequence_number"] + len(started)
    for text in TEXTS:
        kind = "response.output_text.delta"
        assert responses.feed(c.TextDelta(0, text)) == [encode(
            {"type": kind, "item_id": item["item"]["id"], "output_index": 0,
             "content_index": 0, "delta": text, "logprobs": [], "sequence_number": seq},
            event=kind)]
        seq += 1


@pytest.mark.parametrize("delta", [5, ["content"], "content", None])
def test_a_chunk_whose_delta_is_not_an_object_is_skipped_not_a_crash(delta: Any) -> None:
    """The text-alone fast path reads a one-member delta object; anything else an
    upstream sends as ``delta`` is ignored, as before it (a list of one "content"
    raised a TypeError there)."""
    decoder = OpenAIFormat().stream_decoder()
    first = b'data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    odd = b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": delta}]}) + b"\n\n"
    events = decoder.frame(first) + decoder.frame(odd)
    assert [type(e).__name__ for e in events] == ["Start", "PartStart", "TextDelta"]
    assert decoder.frame(b"data: [DONE]\n\n") == [] and decoder.done
    assert isinstance(decoder.close()[-1], c.Finish)
