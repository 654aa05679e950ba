"""Upstream streams read socket read by socket read: frames that arrive together stay together.

``UpstreamResponse.reads`` hands the relay the frames each socket read completed as
one block of bytes, so they leave in one write; a lone frame comes alone, at once.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fakes.openai_upstream import direct_provider

from omniroute.providers.base import Timeouts, UpstreamCall
from omniroute.providers.openai import OpenAIProvider
from omniroute.sse import SSESplitter


def chunk(text: str, finish: str | None = None) -> bytes:
    data = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "choices": [
                {"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
BURST = [chunk("a"), chunk("b"), chunk("c")]
LONE = chunk("d", "stop")


USAGE_ONLY = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
              b'"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":3,'
              b'"completion_tokens":4,"total_tokens":7}}\n\n')


class Upstream:
    """An OpenAI upstream that writes a burst of events in one write, then waits for
    ``go`` and sends one more event, then ``[DONE]``; ``dropped`` is set when the
    client went away."""

    def __init__(self, burst: list[bytes] = BURST) -> None:
        self.burst = burst
        self.go = asyncio.Event()
        self.dropped = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"".join(self.burst))
        await self.go.wait()
        try:
            await resp.write(LONE)
            for _ in range(200):  # until the client's socket is gone (bounded: ~2 s)
                await asyncio.sleep(0.01)
                await resp.write(b": keep-alive\n\n")
        except (ConnectionResetError, asyncio.CancelledError):  # cancelled: the test server's way
            self.dropped.set()
            raise
        await resp.write(DONE)
        await resp.write_eof()
        return resp


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Any:
    fake = Upstream()
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1")).rstrip("/")  # type: ignore[attr-defined]
    return fake


@pytest.fixture
async def provider(upstream: Any) -> Any:
    async with aiohttp.ClientSession() as http:
        yield direct_provider(http, upstream.base_url,
                              Timeouts(connect=2, first_byte=2, idle=2, total=10))


CALL = UpstreamCall({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                     "stream": True}, "gpt-4o-mini", True)


async def test_frames_read_together_come_as_one_list_and_a_lone_frame_alone(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    answer = await provider.chat(CALL)
    assert answer.reads is not None
    got: list[bytes] = []
    async with asyncio.timeout(5), aclosing(answer.reads) as reads:
        async for block in reads:
            got.append(block)
            if len(got) == 1:
                upstream.go.set()  # the lone frame is written only once the burst is in
            if LONE in block:
                break
    assert got[0] == b"".join(BURST)  # one socket read, one block
    assert got[-1] == LONE  # alone, as soon as it arrived


async def test_events_give_the_same_frames_one_by_one(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    upstream.go.set()
    answer = await provider.chat(CALL)
    assert answer.events is not None
    async with asyncio.timeout(10), aclosing(answer.events) as events:
        frames = [frame async for frame in events]
    assert frames[:4] == [*BURST, LONE] and frames[-1] == DONE


async def test_reads_closed_early_drop_the_upstream(
    provider: OpenAIProvider, upstream: Upstream
) -> None:
    answer = await provider.chat(CALL)
    assert answer.reads is not None
    async with aclosing(answer.reads) as reads:
        assert await anext(reads) == b"".join(BURST)
    upstream.go.set()
    async with asyncio.timeout(5):
        await upstream.dropped.wait()


@pytest.mark.parametrize("pieces", [
    [b"data: 1\n\ndata: 2\n\n"],
    [b"data: 1\n", b"\ndata: 2\n\n"],
    [b"data: 1\r\n\r\ndata: 2\n\n"],
    [b"data: 1\r\n\r", b"\ndata: 2\n", b"\n"],
])
def test_sse_splitter_finds_each_event_in_any_cut_and_line_ending(pieces: list[bytes]) -> None:
    splitter = SSESplitter()
    events = [event for piece in pieces for event in splitter.feed(piece)]
    assert b"".join(events) == b"".join(pieces)
    assert [e.strip() for e in events] == [b"data: 1", b"data: 2"]
    assert splitter.tail() == b""


@pytest.mark.parametrize("pieces", [
    [b"data: 1\n\ndata: 2\n\n"],
    [b"data: 1\n", b"\ndata: 2\n\n"],
    [b"data: 1\n\ndat", b"a: 2\n", b"\n"],
    [b"data: 1\r\n\r\ndata: 2\n\n"],
    [b"data: 1\r\n\r", b"\ndata: 2\n", b"\n"],
])
def test_sse_splitter_blocks_are_the_events_each_piece_completes(pieces: list[bytes]) -> None:
    by_event, by_block = SSESplitter(), SSESplitter()
    for piece in pieces:
        assert by_block.block(piece) == b"".join(by_event.feed(piece))
    assert by_block.tail() == by_event.tail() == b""


@pytest.mark.parametrize("block", [
    b"data: 1\n\ndata: 2\n\n", b"data: 1\n\n\n\ndata: 2\n\n", b"data: 1\n\ndata: 2",
    b"data: 1\r\n\r\ndata: 2\n\n", b"", b"\n",
])
def test_sse_events_of_a_block_one_at_a_time_are_its_events(block: bytes) -> None:
    splitter = SSESplitter()
    events = splitter.feed(block)
    tail = splitter.tail()
    assert list(SSESplitter.each(block)) == [*events, *([tail] if tail else [])]
    assert SSESplitter.first(block) == next(SSESplitter.each(block), b"")


def test_sse_events_of_any_block_one_at_a_time_are_its_events() -> None:
    """Every block of a few bytes, line ends among them (each finds them one at a time,
    a blank line by the line end after one): its events, as the splitter cuts them."""
    import itertools

    for size in range(7):
        for block in map(bytes, itertools.product(b"a\n:", repeat=size)):
            splitter = SSESplitter()
            events = splitter.feed(block)
            tail = splitter.tail()
            assert list(SSESplitter.each(block)) == [*events, *([tail] if tail else [])]


@pytest.mark.parametrize("event", [
    b'data: {"a":1}\n\n', b'data: {"a":1}', b"data: \n\n", b"data:  x\n\n", b"data:x\n\n",
    b"data: 1\ndata: 2\n\n", b"data: 1\r\n\r\n", b"data: 1\r\n", b"data: a\rb\n\n",
    b"data: 1\n", b"data: 1\n\r", b"event: x\ndata: 1\n\n", b": ping\n\n", b"data: [DONE]\n\n",
    b"id: 3\n\n", b"",
])
def test_sse_event_data_of_a_one_line_event_is_what_the_lines_give(event: bytes) -> None:
    """The one-data-line shortcut gives what reading the event line by line gives."""
    from omniroute.sse import event_data

    parts = [line[5:].removeprefix(b" ") for line in event.splitlines()
             if line.startswith(b"data:")]
    assert event_data(event) == (b"\n".join(parts) if parts else None)


def test_ndjson_lines_of_a_block_one_at_a_time_are_its_lines() -> None:
    from omniroute.providers.framing import LineSplitter

    block = b'{"a":1}\n\n{"b":2}\r\n{"c":3}'
    splitter = LineSplitter()
    assert list(LineSplitter.each(block)) == [*splitter.feed(block), splitter.tail()]
    for part in (block, b"\n" + block, b"", b"\n \n"):
        assert LineSplitter.first(part) == next(LineSplitter.each(part), b"")
    by_block = LineSplitter()
    got = [by_block.block(piece) for piece in (b'{"a":1}\n{"b"', b':2}\n\n \n', b'{"c":3}')]
    assert got == [b'{"a":1}\n', b'{"b":2}\n', b""]  # blank lines dropped
    assert by_block.tail() == b'{"c":3}'


def test_sse_splitter_block_keeps_an_unfinished_event() -> None:
    splitter = SSESplitter()
    assert splitter.block(b"data: 1\n\ndata: 2\n\ndata: 3") == b"data: 1\n\ndata: 2\n\n"
    assert splitter.block(b"\n") == b""
    assert splitter.block(b"\n") == b"data: 3\n\n"
    assert splitter.block(b"data: 4") == b""
    assert splitter.tail() == b"data: 4"


def test_sse_splitter_keeps_an_unfinished_event_for_the_tail() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b"data: 1\n\ndata: 2\r\n\r\ndata: 3") == [
        b"data: 1\n\n", b"data: 2\r\n\r\n"]
    assert splitter.feed(b"\n") == []
    assert splitter.tail() == b"data: 3\n"


# ----------------------------------------------------------------------------- through the gateway

async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 chunk of a chunked body: what the gateway wrote in one write."""
    size = int((await reader.readline()).strip(), 16)
    data = await reader.readexactly(size + 2)
    return data[:-2]


@pytest.mark.parametrize("burst, client_usage, expected", [
    (BURST, False, b"".join(BURST)),
    # the usage-only chunk the gateway asked for on the client's behalf stays hidden
    ([*BURST, USAGE_ONLY], False, b"".join(BURST)),
    ([*BURST, USAGE_ONLY], True, b"".join([*BURST, USAGE_ONLY])),
])
async def test_frames_read_together_leave_together_and_a_lone_frame_at_once(
    omniroute: Any, aiohttp_server: Any, burst: list[bytes], client_usage: bool,
    expected: bytes,
) -> None:
    fake = Upstream(burst)
    server = await aiohttp_server(fake.app)
    await omniroute.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                                  "base_url": str(server.make_url("/v1")), "api_key": "sk-x"})
    body = {"model": "up/gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    if client_usage:
        body["stream_options"] = {"include_usage": True}
    data = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", omniroute.client.port)
    try:
        async with asyncio.timeout(10):
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: "
                         + str(len(data)).encode() + b"\r\n\r\n" + data)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
            assert await read_chunk(reader) == expected  # one read upstream, one write here
            fake.go.set()
            assert await read_chunk(reader) == LONE  # alone, without waiting for more
    finally:
        writer.close()
    async with asyncio.timeout(5):
        await fake.dropped.wait()  # the client left: the gateway dropped the upstream too


def test_only_the_frames_holding_a_side_marker_are_cut_out_of_the_block() -> None:
    from omniroute.formats.ollama import OllamaFormat
    from omniroute.pipeline.chat import _marked

    fmt = openai_format()
    error = b'data: {"error": {"message": "x"}}\n\n'
    frames = [chunk("a"), USAGE_ONLY, chunk("b"), error]
    block = b"".join(frames)
    markers = (b'"usage":{', b'"error"')

    def cut(block: bytes, markers: tuple[bytes, ...]) -> list[bytes]:
        return [block[start:end] for start, end in _marked(fmt, block, markers)]

    assert cut(block, markers) == [USAGE_ONLY, error]
    assert cut(frames[0], markers) == []
    assert cut(USAGE_ONLY, markers) == [USAGE_ONLY]
    assert cut(USAGE_ONLY + b"data: [DONE]", markers) == [USAGE_ONLY]  # the stream's tail
    assert cut(block, ()) == frames  # no markers: every frame
    crlf = [f.replace(b"\n", b"\r\n") for f in frames]
    assert cut(b"".join(crlf), markers) == [crlf[1], crlf[3]]
    lines = [b'{"message":{"content":"a"}}\n', b'{"done":true,"eval_count":3}\n']
    assert [b"".join(lines)[s:e] for s, e in _marked(
        OllamaFormat(), b"".join(lines), (b'"done":true',))] == [lines[1]]


def openai_format() -> Any:
    from omniroute.formats.openai import OpenAIFormat

    return OpenAIFormat()


def spy_writes(monkeypatch: pytest.MonkeyPatch, writes: list[bytes]) -> None:
    """Append to ``writes`` what every aiohttp writer in this process writes, write by
    write (a ``writelines`` is one write)."""
    from aiohttp import http_writer

    write, writelines = http_writer.StreamWriter._write, http_writer.StreamWriter._writelines

    def one(self: Any, chunk: Any) -> None:
        writes.append(bytes(chunk))
        write(self, chunk)

    def lines(self: Any, chunks: Any) -> None:
        chunks = list(chunks)
        writes.append(b"".join(map(bytes, chunks)))
        writelines(self, chunks)

    monkeypatch.setattr(http_writer.StreamWriter, "_write", one)
    monkeypatch.setattr(http_writer.StreamWriter, "_writelines", lines)


async def test_the_headers_leave_with_the_first_chunk_in_one_write(
    omniroute: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first frame is at hand when the answer starts: a write of the headers alone
    would wake the client once more before the first token (time to first byte)."""

    writes: list[bytes] = []  # what every aiohttp writer in this process wrote, write by write
    spy_writes(monkeypatch, writes)
    fake = Upstream()
    fake.go.set()
    server = await aiohttp_server(fake.app)
    await omniroute.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                                  "base_url": str(server.make_url("/v1")), "api_key": "sk-x"})
    resp = await omniroute.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "stream": True,
        "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    assert (await resp.read()).startswith(b"".join(BURST))
    ours = [w for w in writes if b"X-OmniRoute-Request-Id" in w]  # the gateway's answer
    assert len(ours) == 1 and ours[0].startswith(b"HTTP/1.1 200") and BURST[0] in ours[0]


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_stream_that_came_whole_leaves_with_its_end_in_one_write(
    omniroute: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, chunked: bool,
) -> None:
    """An upstream that sends its whole stream at once (with a length, or chunked with
    the end in the same write): the headers, every frame and the end of the chunked
    answer leave in one write, not the end in a write (a client wake-up) of its own."""

    writes: list[bytes] = []
    spy_writes(monkeypatch, writes)
    whole = b"".join([*BURST, LONE, USAGE_ONLY, DONE])

    async def instant(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not chunked:
            return web.Response(body=whole, content_type="text/event-stream")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write_eof(whole)  # the last chunk and the end in one write
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", instant)
    server = await aiohttp_server(app)
    await omniroute.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                                  "base_url": str(server.make_url("/v1")), "api_key": "sk-x"})
    resp = await omniroute.client.post("/v1/chat/completions", json={
        "model": "up/gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status == 200
    assert await resp.read() == whole
    ours = [w for w in writes if b"X-OmniRoute-Request-Id" in w]
    assert len(ours) == 1 and ours[0].endswith(DONE + b"\r\n0\r\n\r\n")
    assert writes[writes.index(ours[0]) + 1:] == []  # nothing after it: the end was in it
