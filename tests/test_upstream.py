"""The lean upstream POST (``omniroute/providers/upstream.py``) against real servers.

What it sends is what ``ClientSession.post`` sends, byte for byte; keep-alive, an
abandoned answer's connection, the three bounds, decompression, chunked and error
answers and refused connections behave as through aiohttp; what it does not handle goes
through ``ClientSession.post``. The last tests fail loudly when aiohttp's internals the
lean path relies on change shape.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_proto import ResponseHandler
from aiohttp.connector import BaseConnector, Connection

from omniroute.providers import upstream as upstream_module
from omniroute.providers.upstream import LeanResponse, Upstream

BOUNDS = aiohttp.ClientTimeout(total=5, connect=2, sock_read=2)
JSON = {"Content-Type": "application/json", "Authorization": "Bearer sk-x"}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, headers={"User-Agent": "omni/1"},
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


class Recorder:
    """A server that notes each request's peer (which connection it came on)."""

    def __init__(self) -> None:
        self.peers: list[Any] = []
        self.bodies: list[bytes] = []
        self.gone = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_post("/echo", self.echo)
        self.app.router.add_post("/gzip", self.gzipped)
        self.app.router.add_post("/chunked", self.chunked)
        self.app.router.add_post("/slow", self.slow)
        self.app.router.add_post("/hang", self.hang)
        self.app.router.add_post("/trickle", self.trickle)
        self.app.router.add_post("/refuse", self.refuse)
        self.app.router.add_post("/moved", self.moved)
        self.app.router.add_post("/cookie", self.cookie)

    def note(self, request: web.Request) -> None:
        assert request.transport is not None
        self.peers.append(request.transport.get_extra_info("peername"))

    async def echo(self, request: web.Request) -> web.Response:
        self.note(request)
        self.bodies.append(await request.read())
        return web.json_response({"ok": True, "cookie": request.headers.get("Cookie")},
                                 headers={"X-Request-Id": "r1"})

    async def gzipped(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.Response(body=gzip.compress(b'{"zipped": true}' * 50),
                            headers={"Content-Encoding": "gzip",
                                     "Content-Type": "application/json"})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self.note(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(3):
            await resp.write(b"data: %d\n\n" % i)
            await asyncio.sleep(0.01)
        await resp.write_eof()
        return resp

    async def slow(self, request: web.Request) -> web.StreamResponse:
        """A stream that goes on until the client leaves."""
        self.note(request)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b"data: tick\n\n")
                await asyncio.sleep(0.02)
        except (ConnectionResetError, asyncio.CancelledError):
            self.gone.set()
            raise

    async def hang(self, request: web.Request) -> web.Response:
        self.note(request)
        await asyncio.sleep(30)
        return web.Response()

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        """A byte every 0.05 s: never idle for long, never done."""
        self.note(request)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.content_length = 1000
        await resp.prepare(request)
        for _ in range(1000):
            await resp.write(b" ")
            await asyncio.sleep(0.05)
        return resp

    async def refuse(self, request: web.Request) -> web.Response:
        self.note(request)
        return web.json_response({"error": {"message": "slow down"}}, status=429,
                                 headers={"Retry-After": "3"})

    async def moved(self, request: web.Request) -> web.Response:
        self.note(request)
        raise web.HTTPTemporaryRedirect("/echo")

    async def cookie(self, request: web.Request) -> web.Response:
        self.note(request)
        resp = web.json_response({})
        resp.set_cookie("k", "v")
        return resp


@pytest.fixture
async def server(aiohttp_server: Any) -> Any:
    recorder = Recorder()
    srv = await aiohttp_server(recorder.app)
    srv.recorder = recorder
    srv.base = str(srv.make_url("")).rstrip("/")
    return srv


async def post(up: Upstream, url: str, body: bytes = b'{"a": 1}', *, headers: Any = JSON,
               timeout: aiohttp.ClientTimeout = BOUNDS) -> Any:
    return await up.post(url, data=body, headers=headers, timeout=timeout)


# ----------------------------------------------------------------------------- the request

class RawHeads:
    """A bare TCP server that keeps each request's bytes and answers 200 with no body."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            self.requests.append(head + await reader.readexactly(length))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()


@pytest.mark.parametrize("headers", [
    JSON,
    {"authorization": "Bearer k", "Accept": "text/event-stream", "User-Agent": "mine"},
    {"X-Goog-Api-Key": "g", "Host": "example.test"},
])
async def test_the_request_is_byte_for_byte_what_client_session_post_sends(http, headers):
    raw = RawHeads()
    srv = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/models/gemini:generateContent?alt=sse"
    body = b'{"contents": []}'
    async with srv:
        async with http.post(url, data=body, headers=headers, timeout=BOUNDS) as resp:
            assert resp.status == 200
        answer = await post(Upstream(http), url, body, headers=headers)
        assert isinstance(answer, LeanResponse) and await answer.read() == b""
    generic, lean = raw.requests
    if "Content-Type" in headers:
        assert lean == generic
    else:  # the same lines; aiohttp adds the bytes payload's type after the length
        assert sorted(lean.split(b"\r\n")) == sorted(generic.split(b"\r\n"))
        assert b"\r\nContent-Type: application/octet-stream\r\n" in lean


async def test_a_header_value_with_a_line_break_is_refused_as_aiohttp_refuses_it(http, server):
    bad = {**JSON, "X-Bad": "a\r\nInjected: yes"}
    with pytest.raises(ValueError):
        await http.post(f"{server.base}/echo", data=b"{}", headers=bad)
    with pytest.raises(ValueError):
        await post(Upstream(http), f"{server.base}/echo", headers=bad)
    assert len(server.recorder.peers) == 0


async def test_a_value_new_on_every_call_is_sent_as_client_session_post_sends_it(http):
    """A request id made anew per call (Copilot, Qwen, Codex): each head is aiohttp's,
    and the head is prepared once for the names, not once per value."""
    raw = RawHeads()
    srv = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/v1/chat/completions"
    up = Upstream(http)
    calls = [{**JSON, "X-Request-Id": f"id-{i}", "Accept": "text/event-stream"}
             for i in range(3)]
    calls.append({**calls[0], "X-Request-Id": "ünïcode-id"})  # aiohttp's UTF-8 bytes
    async with srv:
        for headers in calls:
            async with http.post(url, data=b"{}", headers=headers, timeout=BOUNDS) as resp:
                assert resp.status == 200
            answer = await post(up, url, b"{}", headers=headers)
            assert isinstance(answer, LeanResponse) and await answer.read() == b""
    assert len(up._heads) == 1
    for generic, lean in zip(raw.requests[0::2], raw.requests[1::2], strict=True):
        assert lean == generic
    assert b"\r\nX-Request-Id: id-2\r\n" in raw.requests[5]


async def test_the_requests_of_one_turn_of_the_loop_are_written_after_it(http, monkeypatch):
    """As aiohttp's body-writer task: calls made in one turn of the event loop write
    their requests once the turn is over, together (one wake-up of the upstream)."""
    raw = RawHeads()
    srv = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/x"
    up = Upstream(http)
    events: list[str] = []
    send = upstream_module._send

    def noted(transport: Any, request: bytes) -> None:
        events.append("written")
        send(transport, request)

    async def call() -> None:
        events.append("called")
        answer = await post(up, url, b"{}")
        await answer.read()

    async with srv:
        await asyncio.gather(call(), call())  # two pooled connections
        monkeypatch.setattr(upstream_module, "_send", noted)
        events.clear()
        await asyncio.gather(call(), call())
    assert events == ["called", "called", "written", "written"]
    assert len(raw.requests) == 4


async def test_a_later_value_with_a_line_break_is_refused_before_anything_is_sent(
        http, server):
    up = Upstream(http)
    good = {**JSON, "X-Request-Id": "a"}
    async with await post(up, f"{server.base}/echo", headers=good) as answer:
        assert answer.status == 200
    for bad in ("b\r\nInjected: yes", "b\nInjected: yes", "b\x00"):
        with pytest.raises(ValueError):
            await post(up, f"{server.base}/echo", headers={**JSON, "X-Request-Id": bad})
    async with await post(up, f"{server.base}/echo", headers=good) as answer:
        assert answer.status == 200
    assert len(server.recorder.peers) == 2


async def test_heads_whose_names_alone_do_not_decide_them_are_still_aiohttps(http):
    """Two names one header (the second replaces the first, as aiohttp merges them); a
    session header holding the gap mark: no gap can be trusted, the call goes through
    ClientSession.post."""
    raw = RawHeads()
    srv = await asyncio.start_server(raw.serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/x"
    twice = {"X-A": "1", "x-a": "2", "Content-Type": "application/json"}
    mark = "\U000f00000\U000f0000"
    async with aiohttp.ClientSession(headers={"X-Mark": mark},
                                     cookie_jar=aiohttp.DummyCookieJar()) as marked, srv:
        for session, headers in ((http, twice), (marked, JSON)):
            async with session.post(url, data=b"{}", headers=headers, timeout=BOUNDS) as resp:
                assert resp.status == 200
            up = Upstream(session)
            answer = await post(up, url, b"{}", headers=headers)
            await answer.read()
            assert isinstance(answer, LeanResponse) == (session is http)
    assert raw.requests[1] == raw.requests[0] and raw.requests[3] == raw.requests[2]
    assert mark.encode() in raw.requests[3]


# ----------------------------------------------------------------------------- connections

async def test_a_connection_is_kept_alive_and_reused_after_a_whole_answer(http, server):
    up = Upstream(http)
    for _ in range(3):
        answer = await post(up, f"{server.base}/echo")
        assert isinstance(answer, LeanResponse)
        assert await answer.read() == b'{"ok": true, "cookie": null}'
        assert answer.headers["X-Request-Id"] == "r1"
    peers = server.recorder.peers
    assert len(peers) == 3 and len(set(peers)) == 1
    assert server.recorder.bodies == [b'{"a": 1}'] * 3
    # and shared with ClientSession.post (one pool)
    async with http.post(f"{server.base}/echo", data=b"{}", headers=JSON) as resp:
        await resp.read()
    assert len(set(peers)) == 1


async def test_a_stream_closed_early_closes_its_connection(http, server):
    up = Upstream(http)
    answer = await post(up, f"{server.base}/slow")
    assert answer.status == 200
    assert (await answer.content.readany()).startswith(b"data: tick")
    answer.close()
    await asyncio.wait_for(server.recorder.gone.wait(), 2)  # the upstream saw it go
    await (await post(up, f"{server.base}/echo")).read()
    assert len(set(server.recorder.peers)) == 2  # a new connection


async def test_an_answer_closed_after_its_whole_body_came_is_pooled(http, server):
    """A translating reader stops at the stream's last event and closes the answer: its
    body had all come, so the connection is reused (as aiohttp's close does)."""
    up = Upstream(http)
    for _ in range(3):
        answer = await post(up, f"{server.base}/echo")
        await answer.content.read()
        assert answer.content.is_eof()
        answer.close()
    assert len(set(server.recorder.peers)) == 1


async def test_a_call_given_up_before_its_answer_came_never_pools_the_connection(
        http, server):
    """Cancelled while waiting for the head (a client that left, a first-byte bound):
    that answer is still on its way on this connection, so the next call gets another
    one, and its own answer."""
    up = Upstream(http)
    waiting = asyncio.create_task(post(up, f"{server.base}/hang"))
    while not server.recorder.peers:
        await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    answer = await post(up, f"{server.base}/echo")
    assert await answer.read() == b'{"ok": true, "cookie": null}'
    assert len(set(server.recorder.peers)) == 2


async def test_an_answer_released_half_read_is_not_pooled(http, server):
    up = Upstream(http)
    answer = await post(up, f"{server.base}/slow")
    await answer.content.readany()
    answer.release()
    await asyncio.wait_for(server.recorder.gone.wait(), 2)
    await (await post(up, f"{server.base}/echo")).read()
    assert len(set(server.recorder.peers)) == 2
    with pytest.raises(aiohttp.ClientConnectionError):
        await answer.content.readany()  # read after the end: as aiohttp's


async def test_a_refused_connection_is_aiohttps_connector_error(http):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(aiohttp.ClientConnectorError) as caught:
            await post(Upstream(http), f"http://127.0.0.1:{port}/v1/chat")
    assert f"127.0.0.1:{port}" in str(caught.value)


# ----------------------------------------------------------------------------- bounds

async def test_no_first_byte_within_sock_read_is_a_timeout_and_drops_the_connection(
        http, server):
    up = Upstream(http)
    bounds = aiohttp.ClientTimeout(total=5, connect=2, sock_read=0.2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(asyncio.TimeoutError):
        await post(up, f"{server.base}/hang", timeout=bounds)
    assert loop.time() - start < 1.5
    await (await post(up, f"{server.base}/echo")).read()
    assert len(set(server.recorder.peers)) == 2


async def test_a_trickle_is_cut_at_the_total_bound(http, server):
    up = Upstream(http)
    bounds = aiohttp.ClientTimeout(total=0.4, connect=2, sock_read=2)
    loop = asyncio.get_running_loop()
    start = loop.time()
    answer = await post(up, f"{server.base}/trickle", timeout=bounds)
    assert answer.status == 200
    with pytest.raises(asyncio.TimeoutError):
        await answer.read()
    assert 0.3 < loop.time() - start < 1.5
    await (await post(up, f"{server.base}/echo")).read()
    assert len(set(server.recorder.peers)) == 2


async def test_the_total_bound_of_a_finished_call_never_touches_its_pooled_connection(
        http, server):
    up = Upstream(http)
    bounds = aiohttp.ClientTimeout(total=0.2, connect=2, sock_read=2)
    await (await post(up, f"{server.base}/echo", timeout=bounds)).read()
    await asyncio.sleep(0.3)  # past the first call's total
    answer = await post(up, f"{server.base}/echo")
    assert await answer.read() == b'{"ok": true, "cookie": null}'
    assert len(set(server.recorder.peers)) == 1


async def test_a_tls_handshake_that_never_ends_is_a_connect_timeout(http):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)
        writer.close()

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    bounds = aiohttp.ClientTimeout(total=5, connect=0.2, sock_read=2)
    async with srv:
        with pytest.raises(aiohttp.ConnectionTimeoutError):
            await post(Upstream(http), f"https://127.0.0.1:{port}/v1/chat", timeout=bounds)


# ----------------------------------------------------------------------------- answers

async def test_a_gzip_answer_is_decompressed(http, server):
    answer = await post(Upstream(http), f"{server.base}/gzip")
    assert answer.headers["Content-Encoding"] == "gzip"
    assert await answer.read() == b'{"zipped": true}' * 50


async def test_a_chunked_answer_is_read_whole_and_its_connection_kept(http, server):
    up = Upstream(http)
    answer = await post(up, f"{server.base}/chunked")
    assert answer.headers["Transfer-Encoding"] == "chunked"
    assert await answer.read() == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    await (await post(up, f"{server.base}/echo")).read()
    assert len(set(server.recorder.peers)) == 1


async def test_informational_answers_before_the_answer_are_skipped(http):
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                     b"Link: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    raw = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = raw.sockets[0].getsockname()[1]
    async with raw:
        answer = await post(Upstream(http), f"http://127.0.0.1:{port}/v1/chat")
        assert (answer.status, await answer.read()) == (200, b"ok")
        assert "Link" not in answer.headers


async def test_an_error_answer_keeps_its_status_headers_and_body(http, server):
    async with await post(Upstream(http), f"{server.base}/refuse") as answer:
        assert (answer.status, answer.reason) == (429, "Too Many Requests")
        assert answer.headers["Retry-After"] == "3"
        assert await answer.read() == b'{"error": {"message": "slow down"}}'


async def test_a_redirect_is_followed_as_client_session_post_follows_it(http, server):
    answer = await post(Upstream(http), f"{server.base}/moved")
    assert isinstance(answer, aiohttp.ClientResponse)  # asked of ClientSession.post
    async with answer:
        assert answer.status == 200
        assert await answer.json() == {"ok": True, "cookie": None}
    assert server.recorder.bodies == [b'{"a": 1}']  # 307: the body went again


# ----------------------------------------------------------------------------- the generic way

async def test_a_form_goes_through_client_session_post(http, server):
    form = aiohttp.FormData()
    form.add_field("file", b"abc", filename="a.wav")
    answer = await Upstream(http).post(f"{server.base}/echo", data=form, headers={},
                                       timeout=BOUNDS)
    assert isinstance(answer, aiohttp.ClientResponse)
    async with answer:
        assert answer.status == 200
    assert server.recorder.bodies[0].startswith(b"--")


async def test_cookies_are_kept_and_sent_as_by_client_session_post(server):
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        up = Upstream(session)
        first = await post(up, f"{server.base}/cookie")
        assert isinstance(first, LeanResponse)
        await first.read()  # its Set-Cookie is kept
        second = await post(up, f"{server.base}/echo")
        assert isinstance(second, aiohttp.ClientResponse)  # the jar has one: aiohttp's way
        async with second:
            assert (await second.json())["cookie"] == "k=v"


async def test_a_session_with_tracing_goes_through_client_session_post(server):
    async with aiohttp.ClientSession(trace_configs=[aiohttp.TraceConfig()]) as session:
        answer = await post(Upstream(session), f"{server.base}/echo")
        assert isinstance(answer, aiohttp.ClientResponse)
        async with answer:
            assert answer.status == 200


async def test_headers_that_frame_the_body_go_through_client_session_post(http, server):
    answer = await post(Upstream(http), f"{server.base}/echo",
                        headers={**JSON, "Content-Length": "8"})
    assert isinstance(answer, aiohttp.ClientResponse)
    async with answer:
        assert answer.status == 200


# ----------------------------------------------------------------------------- aiohttp's shape

def test_aiohttp_is_a_version_the_lean_path_was_checked_against():
    assert aiohttp.__version__.startswith(upstream_module.VERIFIED), (
        f"aiohttp {aiohttp.__version__}: check omniroute/providers/upstream.py against its "
        "client.py, client_reqrep.py, connector.py and client_proto.py, then add the "
        "version to VERIFIED (or the lean path stays off)")


def test_the_aiohttp_internals_the_lean_path_uses_have_not_changed_shape():
    assert list(inspect.signature(BaseConnector._get).parameters) == ["self", "key", "traces"]
    assert inspect.iscoroutinefunction(BaseConnector._get)
    assert list(inspect.signature(BaseConnector.connect).parameters) == [
        "self", "req", "traces", "timeout"]
    params = inspect.signature(ResponseHandler.set_response_params).parameters
    assert {"timer", "skip_payload", "read_until_eof", "auto_decompress", "read_timeout",
            "read_bufsize", "timeout_ceil_threshold", "max_line_size", "max_field_size",
            "max_headers"} == set(params) - {"self"}
    for name in ("read", "start_timeout", "set_exception", "is_connected"):
        assert callable(getattr(ResponseHandler, name)), name
    for name in ("release", "close"):
        assert callable(getattr(Connection, name)), name
    assert isinstance(Connection.protocol, property)
    assert isinstance(aiohttp.ClientRequest.connection_key, property)
    assert aiohttp.ClientRequest.DEFAULT_HEADERS.keys() == {"Accept", "Accept-Encoding"}
    from aiohttp.http_writer import _serialize_headers
    assert _serialize_headers("POST / HTTP/1.1", {"A": "b"}) == b"POST / HTTP/1.1\r\nA: b\r\n\r\n"


async def test_the_session_attributes_the_lean_path_reads_are_there(http):
    for name in ("_middlewares", "_default_proxy", "_base_url", "_read_bufsize",
                 "_max_line_size", "_max_field_size", "_max_headers", "_request_class",
                 "_response_class"):
        assert hasattr(http, name), name
    assert isinstance(http.connector._timeout_ceil_threshold, (int, float))
    assert Upstream(http)._session_is_plain()


async def test_the_gateways_session_keeps_no_cookie_so_its_posts_stay_lean(omniroute, server):
    base = server.base.replace("127.0.0.1", "localhost")  # (a jar keeps no IP's cookies)
    up = Upstream(omniroute.gateway.http)
    await (await post(up, f"{base}/cookie")).read()
    answer = await post(up, f"{base}/echo")
    assert isinstance(answer, LeanResponse)
    assert await answer.read() == b'{"ok": true, "cookie": null}'  # not sent back
