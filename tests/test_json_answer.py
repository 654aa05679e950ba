"""A JSON answer as ``HTTPProvider.post_json`` hands it on: its body checked to start as
JSON does (after any whitespace), and the upstream's headers as they came."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from fakes.openai_upstream import direct_provider

from omniroute.errors import UpstreamError
from omniroute.providers.base import Timeouts, UpstreamCall

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def answering(aiohttp_server: Any, body: bytes, headers: dict[str, str]) -> Any:
    async def chat(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json", headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    http = aiohttp.ClientSession()
    return http, direct_provider(http, str(server.make_url("/v1")),
                                 Timeouts(connect=2, first_byte=5, idle=5, total=10))


@pytest.mark.parametrize("body", [b'{"id": "a"}', b' \r\n\t[1]', b"\n{}"])
async def test_a_json_body_passes_after_any_whitespace(aiohttp_server: Any, body: bytes) -> None:
    http, provider = await answering(aiohttp_server, body, {"X-Request-Id": "req_1"})
    async with http:
        answer = await provider.chat(UpstreamCall(BODY, "gpt-4o-mini", False))
    assert answer.body == body
    # the headers as they came, looked up by any case
    assert answer.headers["x-request-id"] == answer.headers["X-REQUEST-ID"] == "req_1"
    assert answer.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("body", [b"<html>", b"  oops {}", b"", b"   "])
async def test_a_body_that_is_not_json_is_the_upstreams_failure(aiohttp_server: Any,
                                                                 body: bytes) -> None:
    http, provider = await answering(aiohttp_server, body, {})
    async with http:
        with pytest.raises(UpstreamError, match="not JSON"):
            await provider.chat(UpstreamCall(BODY, "gpt-4o-mini", False))


async def test_each_json_call_gives_its_connection_back_to_the_pool(aiohttp_server: Any) -> None:
    peers: list[Any] = []

    async def chat(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport
                     else None)
        return web.Response(body=b'{"id": "a"}', content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)
    async with aiohttp.ClientSession() as http:
        provider = direct_provider(http, str(server.make_url("/v1")),
                                   Timeouts(connect=2, first_byte=5, idle=5, total=10))
        for _ in range(3):
            await provider.chat(UpstreamCall(BODY, "gpt-4o-mini", False))
    assert len(peers) == 3 and len(set(peers)) == 1  # one connection, kept alive


async def test_an_answer_the_provider_refuses_to_read_closes_its_connection(
        aiohttp_server: Any) -> None:
    """``answered`` raising (a subscription's quota header says no) before the body came
    leaves no half-read connection in the pool."""
    async def chat(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"id": ')  # the rest never comes
        await asyncio.sleep(10)
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    server = await aiohttp_server(app)

    def refuse(status: int, headers: Any) -> None:
        raise UpstreamError("out of quota")

    async with aiohttp.ClientSession() as http:
        provider = direct_provider(http, str(server.make_url("/v1")),
                                   Timeouts(connect=2, first_byte=5, idle=5, total=10))
        provider.answered = refuse
        with pytest.raises(UpstreamError, match="out of quota"):
            await provider.chat(UpstreamCall(BODY, "gpt-4o-mini", False))
        connector = http.connector
        assert connector is not None
        # closed: neither pooled nor still held
        assert not any(connector._conns.values()) and not connector._acquired
