"""Streams under stress: disconnects, broken and stalled upstreams, timeouts, pooling."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import anthropic
import openai
import pytest
from fakes.openai_upstream import (
    FakeOpenAI,
    drop_mid_stream,
    garbage,
    hang_before_headers,
    hang_mid_stream,
    mid_stream_error,
    slow,
)

UPSTREAM_KEY = "sk-upstream-test"
HI = [{"role": "user", "content": "hi there"}]
STREAM_BODY = {"model": "up/gpt-4o-mini", "messages": HI, "stream": True}


def sdk(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-client", max_retries=0,
                              timeout=10)


async def log_records(gw: Any) -> list[dict[str, Any]]:
    resp = await gw.client.get("/api/requests", headers=gw.admin_headers)
    assert resp.status == 200
    return (await resp.json())["requests"]


async def consume(stream: Any) -> str:
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_request(fake: FakeOpenAI, count: int = 1) -> None:
    async with asyncio.timeout(2):
        while len([r for r in fake.requests if r.path.endswith("/chat/completions")]) < count:
            await asyncio.sleep(0.01)


# ----------------------------------------------------------------------------- client disconnects

@pytest.mark.parametrize("behaviour", [slow(0.2), hang_mid_stream(2, 30)],
                         ids=["slow", "hang_mid_stream"])
async def test_client_disconnect_mid_stream_closes_the_upstream(gw, behaviour):
    gw.fake.script.append(behaviour)
    resp = await gw.client.post("/v1/chat/completions", json=STREAM_BODY)
    assert resp.status == 200
    first = await resp.content.readany()
    assert first.startswith(b"data: {")
    assert not gw.fake.stream_closed.is_set()
    started = time.monotonic()
    resp.close()
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 2)
    assert time.monotonic() - started < 2
    assert gw.fake.closed_streams == 1
    await asyncio.sleep(0.05)  # let the cancelled handler log its record
    (record,) = await log_records(gw)
    assert record["status"] == 499 and record["stream"]


async def test_client_disconnect_before_the_first_byte_closes_the_upstream(gw):
    """The gateway is still waiting for the upstream's headers when the client leaves."""
    gw.fake.script.append(hang_before_headers(30))
    host, port = gw.client.server.host, gw.client.server.port
    _reader, writer = await asyncio.open_connection(host, port)
    body = b'{"model": "up/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],' \
           b' "stream": true}'
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    await wait_for_request(gw.fake)
    await asyncio.sleep(0.1)
    assert not gw.fake.stream_closed.is_set()
    writer.close()
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 2)
    assert gw.fake.closed_streams == 1


async def test_client_disconnect_before_the_first_byte_non_stream(gw):
    gw.fake.script.append(hang_before_headers(30))
    task = asyncio.create_task(gw.client.post(
        "/v1/chat/completions", json={"model": "up/gpt-4o-mini", "messages": HI}))
    await wait_for_request(gw.fake)
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 2)


async def test_gateway_serves_again_after_a_disconnect(gw):
    gw.fake.script.append(slow(0.2))
    resp = await gw.client.post("/v1/chat/completions", json=STREAM_BODY)
    await resp.content.readany()
    resp.close()
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 2)
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=HI, stream=True)
    assert await consume(stream) == "Hello! You said: hi there"


# -------------------------------------------------------------------------- broken upstream streams

async def test_mid_stream_error_reaches_the_sdk_and_the_log(gw):
    gw.fake.script.append(mid_stream_error(3, message="The model crashed halfway."))
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=HI, stream=True)
    seen: list[str] = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert info.value.message == "The model crashed halfway."
    assert len(seen) == 3  # the chunks before the error were delivered
    (record,) = await log_records(gw)
    assert record["status"] >= 500
    assert "The model crashed halfway." in record["error"]


async def test_upstream_drop_mid_stream_gives_an_error_event(gw):
    gw.fake.script.append(drop_mid_stream(3))
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=HI, stream=True)
    chunks = 0
    async with asyncio.timeout(5):  # an error, not a hang
        with pytest.raises(openai.APIError) as info:
            async for _ in stream:
                chunks += 1
    assert chunks == 3
    assert "upstream stream broke" in info.value.message
    assert info.value.body["type"] == "upstream_error"
    (record,) = await log_records(gw)
    assert record["status"] == 502 and "broke" in record["error"]


async def test_upstream_drop_mid_stream_raw_event(gw):
    gw.fake.script.append(drop_mid_stream(2))
    resp = await gw.client.post("/v1/chat/completions", json=STREAM_BODY)
    raw = await asyncio.wait_for(resp.read(), 5)
    events = raw.split(b"\n\n")
    assert events[-1] == b""
    assert events[-2].startswith(b'data: {"error":')
    assert b"[DONE]" not in raw


async def test_upstream_idle_stall_gives_an_error_event(gw):
    await gw.set_settings(idle_timeout=0.5)
    gw.fake.script.append(hang_mid_stream(2, 10))
    stream = await sdk(gw).chat.completions.create(
        model="up/gpt-4o-mini", messages=HI, stream=True)
    started = time.monotonic()
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert time.monotonic() - started < 3
    assert "stalled" in info.value.message
    assert info.value.body["code"] == "upstream_timeout"
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 2)  # the upstream was let go
    (record,) = await log_records(gw)
    assert record["status"] == 504


async def test_upstream_error_as_first_event_is_a_status_error(gw):
    gw.fake.script.append(mid_stream_error(0, message="Overloaded right now."))
    with pytest.raises(openai.APIStatusError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI, stream=True)
    assert info.value.status_code == 502
    assert "Overloaded right now." in info.value.message


# ---------------------------------------------------------------------------- timeouts and failures

async def test_first_byte_timeout_gives_504(gw):
    await gw.set_settings(first_byte_timeout=0.5)
    gw.fake.script.append(hang_before_headers(10))
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI, stream=True)
    assert time.monotonic() - started < 3
    assert info.value.status_code == 504
    assert info.value.code == "upstream_timeout"
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 2)


async def test_first_byte_timeout_counts_until_the_first_event(gw):
    """Headers alone do not count: the first event must arrive in time."""
    await gw.set_settings(first_byte_timeout=0.5)
    gw.fake.script.append(hang_mid_stream(0, 10))
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI, stream=True)
    assert info.value.status_code == 504


async def test_total_timeout_bounds_a_json_call(gw):
    await gw.set_settings(total_timeout=0.5)
    gw.fake.script.append(hang_before_headers(10))
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert info.value.status_code == 504
    await asyncio.wait_for(gw.fake.stream_closed.wait(), 2)


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_unreachable_gives_502(gw, stream):
    await gw.add_provider({"type": "openai", "prefix": "dead", "api_key": "x",
                           "base_url": f"http://127.0.0.1:{closed_port()}/v1"})
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(gw).chat.completions.create(model="dead/gpt-4o-mini", messages=HI,
                                              stream=stream)
    assert info.value.status_code == 502
    assert info.value.code == "bad_gateway"
    assert "unreachable" in info.value.message


@pytest.mark.parametrize("stream", [False, True])
async def test_upstream_garbage_gives_502(gw, stream):
    gw.fake.script.append(garbage())
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                              stream=stream)
    assert info.value.status_code == 502
    assert info.value.code == "bad_gateway"


async def test_upstream_drop_in_a_json_body_gives_502(gw):
    gw.fake.script.append(drop_mid_stream(0))
    with pytest.raises(openai.InternalServerError) as info:
        await sdk(gw).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert info.value.status_code == 502


# ----------------------------------------------------------------------------- connection reuse

async def test_one_client_session_and_pooled_connections(gw):
    peers: list[Any] = []
    original = gw.fake._record

    async def recording(request):
        peers.append(request.transport.get_extra_info("peername"))
        return await original(request)

    gw.fake._record = recording
    session = gw.gateway.http
    client = sdk(gw)
    for _ in range(3):
        resp = await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
        assert resp.choices[0].message.content
        stream = await client.chat.completions.create(
            model="up/gpt-4o", messages=HI, stream=True)
        assert await consume(stream) == "Hello! You said: hi there"
    assert gw.gateway.http is session
    assert all(p.context.http is session for p in gw.catalog.providers.values())
    assert len(peers) == 6
    assert len(set(peers)) == 1  # one TCP connection, reused for every request
    # a translated stream too: its reader stops at the last event, after the end came
    claude = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="unused", max_retries=0)
    for _ in range(2):
        async with claude.messages.stream(model="up/gpt-4o", max_tokens=64,
                                          messages=HI) as events:
            assert await events.get_final_text() == "Hello! You said: hi there"
    assert len(peers) == 8 and len(set(peers)) == 1
    assert not session.closed


async def test_a_client_that_stops_reading_releases_its_account(gw):
    """Its unread backlog fills up; the write then waits at most idle_timeout."""
    from fakes.openai_upstream import reply

    await gw.set_settings(idle_timeout=0.5)
    gw.fake.script.append(reply(text="x" * 8_000_000, chunks=400))  # ~8 MB, 20 KB a chunk
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.client.port)
    body = (b'{"model": "up/gpt-4o-mini", "stream": true,'
            b' "messages": [{"role": "user", "content": "hi"}]}')
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    await writer.drain()
    await reader.readexactly(1024)  # the stream started; now the client stops reading
    try:
        async with asyncio.timeout(10):
            while True:
                await gw.log.flush()
                rows = await log_records(gw)
                if rows and rows[0]["error"] == "client stopped reading":
                    break
                await asyncio.sleep(0.2)
        assert rows[0]["status"] == 499
        state = await (await gw.client.get("/api/rate-limits", headers=gw.admin_headers)).json()
        (conn,) = state["connections"]
        assert conn["in_flight"] == 0 and conn["failures"] == 0  # released, not charged
    finally:
        writer.close()
