"""Anthropic-format streams send ``ping`` keep-alives while no target has answered yet."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import anthropic
import pytest
from fakes.openai_upstream import error, hang_before_headers

from omniroute.pipeline import relay as proxy

HI = [{"role": "user", "content": "hi there"}]
BODY = {"model": "up/gpt-4o-mini", "max_tokens": 64, "stream": True, "messages": HI}


@pytest.fixture(autouse=True)
def quick_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy, "KEEPALIVE_AFTER", 0.1)
    monkeypatch.setattr(proxy, "KEEPALIVE_EVERY", 0.1)


def events(raw: bytes) -> list[str]:
    return [line[7:] for line in raw.decode().splitlines() if line.startswith("event: ")]


async def test_a_slow_upstream_gets_pings_first_and_the_sdk_still_parses_the_stream(gw):
    gw.fake.script.append(hang_before_headers(0.45))
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="x", max_retries=0)
    async with client.messages.stream(model="up/gpt-4o-mini", max_tokens=64,
                                      messages=HI) as stream:  # type: ignore[arg-type]
        message = await stream.get_final_message()
    assert message.content[0].text.startswith("Hello! You said: hi there")

    gw.fake.script.append(hang_before_headers(0.45))
    resp = await gw.client.post("/v1/messages", json=BODY)
    assert resp.status == 200
    names = events(await resp.read())
    pings = names.index("message_start")
    assert pings >= 2 and set(names[:pings]) == {"ping"}  # about every 0.1 s while waiting
    assert names[-1] == "message_stop"
    assert resp.headers["X-OmniRoute-Request-Id"]


async def test_a_quick_upstream_sends_no_ping_and_keeps_its_headers(gw):
    resp = await gw.client.post("/v1/messages", json=BODY)
    names = events(await resp.read())
    assert names[0] == "message_start" and "ping" not in names
    assert resp.headers["X-OmniRoute-Provider"] == "up"


async def test_failing_after_pings_ends_the_stream_with_an_anthropic_error_event(gw):
    gw.fake.script += [hang_before_headers(0.35)]
    await gw.set_settings(first_byte_timeout=0.25)  # the only target times out
    resp = await gw.client.post("/v1/messages", json=BODY)
    assert resp.status == 200  # the stream had started with pings
    raw = (await resp.read()).decode()
    names = events(raw.encode())
    assert names[0] == "ping" and names[-1] == "error"
    assert '"type":"error"' in raw.replace(" ", "") and "timeout" in raw.lower()


async def test_a_client_leaving_during_pings_stops_the_upstream(gw):
    gw.fake.script.append(hang_before_headers(30))
    async with (aiohttp.ClientSession() as http,
                http.post(gw.base_url + "/v1/messages", json=BODY) as resp):
        first = await resp.content.readuntil(b"\n\n")
        assert first.startswith(b"event: ping")
    async with asyncio.timeout(3):
        while gw.fake.closed_streams < 1:
            await asyncio.sleep(0.02)


async def test_an_upstream_error_before_any_ping_keeps_its_status(gw):
    gw.fake.script.append(error(400, "Bad thing in the request."))
    resp = await gw.client.post("/v1/messages", json=BODY)
    assert resp.status == 400
    body: dict[str, Any] = await resp.json()
    assert body["type"] == "error"
    assert body["error"]["message"].endswith("Bad thing in the request.")


async def test_a_shutdown_ends_a_stream_still_waiting_with_pings_with_an_error_event(gw):
    from omniroute.appkeys import PIPELINE

    gw.fake.script.append(hang_before_headers(5))
    resp = await gw.client.post("/v1/messages", json=BODY)
    assert resp.status == 200  # pings started the stream
    first = await resp.content.readuntil(b"\n\n")
    assert first.startswith(b"event: ping")
    await gw.client.app[PIPELINE].drain(0.05)  # past the grace: streams are ended
    raw = (await asyncio.wait_for(resp.read(), 5)).decode()
    names = events(raw.encode())
    assert names[-1] == "error" and "message_start" not in names
    assert "shutting down" in raw
    await gw.log.flush()
    (row,) = await gw.log.recent(1)
    assert (row["status"], row["error_class"]) == (503, "ShuttingDown")
