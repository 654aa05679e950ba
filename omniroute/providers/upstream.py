"""Lean upstream POSTs: aiohttp's own connections, parser and streams, without the
per-request generality of ``ClientSession.post``.

A provider's calls go to a few fixed URLs with a few fixed header sets, so what
``ClientSession._request`` works out on every call (header merging, URL building,
cookies, auth, proxy, payload objects, tracing, a body-writer task, timer contexts)
is worked out here once per URL and header names: the request line and every
header but ``Content-Length`` become one block of bytes, serialized by aiohttp's
own header writer (its checks against header injection included), with a gap for
each of the call's header values. The values are filled in when they differ from
the last call's (a request id made anew per call: Copilot, Qwen, Codex), again
through aiohttp's writer and its checks. A call then takes a
connection from the session's ``TCPConnector`` (its pool, keep-alive, DNS cache and
TLS), sends the head, the length and the body in one ``transport.write`` once the
event loop's turn is over (as aiohttp's body-writer task does: the requests made in
one turn leave together, and wake the upstream once), and reads the answer through
the connection's ``ResponseHandler`` (aiohttp's C parser, decompression and read
timeout) and its ``StreamReader`` payload.

What the lean path does not do, and why that is safe:

- cookies: it runs only while the session's cookie jar holds none (the gateway's
  session keeps none: ``DummyCookieJar``); a ``Set-Cookie`` answer is still stored;
- redirects: a redirect answer (with a ``Location``) is dropped and the call made
  again through ``ClientSession.post``, which follows it as before;
- tracing, middlewares, session auth, proxies, ``raise_for_status``, a base URL,
  skipped auto headers, other HTTP versions, ``force_close``, custom request or
  response classes: a session with any of them sends every call through
  ``ClientSession.post``, and so does a body that is not ``bytes`` (a form), one over
  :data:`LEAN_BODY_MAX` (aiohttp waits for a big upload to drain before the read
  bound starts), headers that set ``Content-Length``, ``Transfer-Encoding`` or
  ``Expect``, and a URL with credentials or another scheme than http(s);
- the ``total`` bound is a timer that fails the pending read with ``TimeoutError``
  (aiohttp cancels the task: the caller sees the same ``TimeoutError``); ``connect``
  and ``sock_read`` are aiohttp's own, given the same ``ClientTimeout``;
- a POST is never retried on a dropped keep-alive connection, by aiohttp either.

Only the aiohttp versions whose internals this was checked against take the lean
path (:data:`VERIFIED`); ``tests/test_upstream.py`` fails loudly when they change.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any, Union

import aiohttp
from aiohttp import hdrs
from aiohttp.client_exceptions import ClientConnectionResetError, ConnectionTimeoutError
from aiohttp.connector import Connection
from aiohttp.helpers import TimerNoop
from aiohttp.http import SERVER_SOFTWARE, HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import _serialize_headers
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

#: aiohttp minor versions whose internals the lean path was checked against
VERIFIED = ("3.14.",)
#: larger bodies go through ``ClientSession.post``
LEAN_BODY_MAX = 1 << 20
#: prepared heads kept per :class:`Upstream` (URL and header names; then cleared)
HEADS_MAX = 256
#: where a call's header value goes in a prepared head: its index between two of
#: these (a private-use character no real header holds; a head where one shows up
#: anyway is checked and sent through ``ClientSession.post``)
_GAP = "\U000f0000"
_GAPS = re.compile(re.escape(_GAP.encode()) + rb"(\d+)" + re.escape(_GAP.encode()))

_NO_TRACES: list[Any] = []
_NO_TIMER = TimerNoop()
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GENERIC = None  # a prepared head meaning "this call goes through ClientSession.post"
#: request headers that make aiohttp send the body otherwise than as one counted block
_BODY_HEADERS = (hdrs.CONTENT_LENGTH, hdrs.TRANSFER_ENCODING, hdrs.EXPECT)
_CLOSED = aiohttp.ClientConnectionError("Connection closed")

Answer = Union["LeanResponse", aiohttp.ClientResponse]


class LeanResponse:
    """An answer read by the lean path: the part of ``aiohttp.ClientResponse`` the data
    path uses (``status``, ``headers``, ``content``, ``read``, ``release``, ``close``,
    ``async with``). Released after its body was read to the end, its connection goes
    back to the pool; released or closed before, the connection is closed."""

    __slots__ = ("_conn", "_expiry", "content", "headers", "reason", "status")

    def __init__(self, conn: Connection) -> None:
        self._conn: Connection | None = conn
        self._expiry: asyncio.TimerHandle | None = None
        self.content: aiohttp.StreamReader = EMPTY_PAYLOAD
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self.status = 0
        self.reason: str | None = None

    async def read(self) -> bytes:
        """The whole body (decompressed); the connection is released after it."""
        content = self.content
        try:
            if content.is_eof() and content.exception() is None:
                # all of it came with the head (its end seen): taken as it is, without
                # read(), and the readany() it awaits twice
                body = content.read_nowait()
            else:
                body = await content.read()
        except BaseException:
            self.close()
            raise
        self.release()
        return body

    def release(self) -> None:
        """Done with the answer: the pool keeps the connection only if the body was read
        to the end (aiohttp's pool closes one whose answer is unfinished)."""
        self._end()
        if (conn := self._conn) is not None:
            self._conn = None
            conn.release()

    def close(self) -> None:
        """Done early, or after a failure: the connection is dropped, so the upstream
        stops; but an answer whose body had all come (a reader that stopped at a
        stream's last event, with the end already in) gives it back to the pool, as
        aiohttp's ``ClientResponse.close`` does."""
        content = self.content
        # (EMPTY_PAYLOAD until the head came: a call given up while waiting for its answer
        # leaves that answer on the way, on this connection; it must never be pooled)
        whole = (content is not EMPTY_PAYLOAD and content.is_eof()
                 and content.exception() is None)
        self._end()
        if (conn := self._conn) is not None:
            self._conn = None
            if whole:
                conn.release()  # the pool still drops it if the protocol says so
            else:
                conn.close()

    async def __aenter__(self) -> LeanResponse:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def _end(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        content = self.content
        if not content.is_eof() and content.exception() is None:
            content.set_exception(_CLOSED)  # a read of the unfinished rest fails, as aiohttp's

    def _expire(self) -> None:
        """The ``total`` bound is up: fail whatever read is pending."""
        self._expiry = None
        error = TimeoutError()
        if self._conn is not None and (protocol := self._conn.protocol) is not None:
            protocol.set_exception(error)  # the wait for the head (and no reuse)
        self.content.set_exception(error)  # a read of the body (EMPTY_PAYLOAD: none yet)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class _Origin:
    """One scheme, host and port: its pool key, and a request aiohttp's connector can
    open a connection for (never sent)."""

    __slots__ = ("connector", "key", "loop", "request")

    def __init__(self, session: aiohttp.ClientSession, url: URL) -> None:
        self.loop = asyncio.get_running_loop()
        # the request ClientSession.post would make for this origin (ssl as it merges it)
        self.request = aiohttp.ClientRequest(
            hdrs.METH_POST, url.origin(), loop=self.loop, session=session, ssl=True,
            trust_env=session.trust_env)
        self.key = self.request.connection_key
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        self.connector = connector


class _Head:
    """A prepared head for one URL and one list of header names: the bytes between the
    gaps for the values, which gap takes which value, and the last values filled in."""

    __slots__ = ("gaps", "head", "origin", "parts", "skips", "values")

    def __init__(self, origin: _Origin, template: bytes, headers: Mapping[str, str]) -> None:
        self.origin = origin
        pieces = _GAPS.split(template)
        self.parts: list[bytes] = pieces[0::2]
        self.gaps = [int(i) for i in pieces[1::2]]
        # a value's place in aiohttp's serialization of the call's headers: after its
        # line's name and ": " (the name's bytes as aiohttp's writer makes them)
        self.skips = [len(_serialize_headers("", CIMultiDict({name: ""}))) - 6
                      for name in headers]
        self.values: tuple[Any, ...] | None = None
        self.head = b""

    def fill(self, values: tuple[Any, ...], headers: Mapping[str, str]) -> bytes:
        """The head with ``values`` (``headers``' own) in their gaps, each serialized by
        aiohttp's writer, which refuses control characters as it does for any header.

        :raises ValueError: a value with a line break (header injection)."""
        # one line per header, in order: values hold no CR or LF (the writer refuses them)
        # (aiohttp's writer reads any mapping's ``items()``; it is typed for its own)
        lines = _serialize_headers("", headers).split(b"\r\n")  # type: ignore[arg-type]
        skips, parts = self.skips, self.parts
        out = [parts[0]]
        for n, i in enumerate(self.gaps):
            out.append(lines[i + 1][skips[i]:])
            out.append(parts[n + 1])
        self.head = head = b"".join(out)
        self.values = values
        return head


class Upstream:
    """POSTs through one ``ClientSession``: lean where that is exactly equivalent,
    ``ClientSession.post`` otherwise. Keep one per provider (its URLs and headers are
    prepared once)."""

    __slots__ = ("_heads", "_jar", "_lean", "_origins", "_params", "_session")

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self._lean: bool | None = None  # decided on the first call
        self._heads: dict[tuple[Any, ...], _Head | None] = {}
        self._origins: dict[tuple[str, str, int | None], _Origin] = {}
        self._params: dict[str, Any] = {}
        self._jar: aiohttp.abc.AbstractCookieJar | None = None

    async def post(self, url: str, *, data: Any, headers: Mapping[str, str],
                   timeout: aiohttp.ClientTimeout) -> Answer:
        """POST ``data`` and read the answer's head: what ``await session.post(url, data=,
        headers=, timeout=)`` returns, as far as the data path reads it. The caller
        releases (or closes) the answer."""
        prepared: _Head | None = _GENERIC
        if type(data) is bytes and len(data) <= LEAN_BODY_MAX:
            key = (url, *headers)
            try:
                prepared = self._heads[key]
            except KeyError:
                prepared = self._prepare(key, url, headers)
        if prepared is _GENERIC or (self._jar is not None and len(self._jar)):
            return await self._session.post(url, data=data, headers=headers, timeout=timeout)
        origin = prepared.origin
        values = tuple(headers.values())
        head = prepared.head if values == prepared.values else prepared.fill(values, headers)
        connector = origin.connector
        if connector.closed:  # (ClientSession.post says so its way)
            return await self._session.post(url, data=data, headers=headers, timeout=timeout)
        total = timeout.total
        deadline = origin.loop.time() + total if total else None
        conn = await connector._get(origin.key, _NO_TRACES)
        if conn is None:
            conn = await _connect(origin, url, timeout, deadline)
        answer = LeanResponse(conn)
        try:
            protocol = conn.protocol
            assert protocol is not None
            protocol.set_response_params(read_timeout=timeout.sock_read, **self._params)
            transport = protocol.transport
            if transport is None or transport.is_closing():
                raise ClientConnectionResetError("Cannot write to closing transport")
            # the head ends with "Content-Length: "
            # written when this turn of the event loop is over, with the requests of the
            # other calls made in it (as aiohttp's body-writer task does): one wake-up of
            # the upstream's reader for all of them, not one each
            origin.loop.call_soon(_send, transport,
                                  b"".join((head, b"%d\r\n\r\n" % len(data), data)))
            protocol.start_timeout()  # sock_read: the first byte, then every read
            if deadline is not None:
                answer._expiry = origin.loop.call_at(deadline, answer._expire)
            message, payload = await protocol.read()
            while 100 <= message.code <= 199 and message.code != 101:  # informational
                message, payload = await protocol.read()
        except HttpProcessingError as exc:
            answer.close()
            raise aiohttp.ClientResponseError(
                _request_info(url, headers), (), status=exc.code, message=exc.message,
                headers=exc.headers) from exc
        except BaseException as exc:
            answer.close()
            if isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError) and not (
                    exc.errno is None and isinstance(exc, TimeoutError)):
                raise aiohttp.ClientOSError(*exc.args) from exc  # as ClientSession._request
            raise
        answer.status = status = message.code
        answer.reason = message.reason
        answer.headers = answer_headers = message.headers
        answer.content = payload
        if hdrs.SET_COOKIE in answer_headers:
            self._session.cookie_jar.update_cookies_from_headers(
                tuple(answer_headers.getall(hdrs.SET_COOKIE)), URL(url))
        if status in _REDIRECTS and (hdrs.LOCATION in answer_headers
                                     or hdrs.URI in answer_headers):
            answer.close()  # ClientSession.post follows redirects: ask it
            return await self._session.post(url, data=data, headers=headers, timeout=timeout)
        return answer

    def _prepare(self, key: tuple[Any, ...], url: str,
                 headers: Mapping[str, str]) -> _Head | None:
        """The head (up to ``Content-Length: ``) of POSTs to ``url`` with headers of these
        names, as ``ClientSession.post`` would write them; None: not lean."""
        if self._lean is None:
            self._lean = self._session_is_plain()
        prepared = _GENERIC
        if self._lean:
            gaps = {name: f"{_GAP}{i}{_GAP}" for i, name in enumerate(headers)}
            template, whole = self._head(url, gaps), self._head(url, headers)
            if template is not _GENERIC and whole is not _GENERIC:
                prepared = _Head(template[0], template[1], headers)
                # what the names alone decide must give this call's own head (a value
                # that moves or drops a header, a gap mark already in the session's
                # headers or the URL: every call of these names goes the generic way)
                if prepared.fill(tuple(headers.values()), headers) != whole[1]:
                    prepared = _GENERIC
        if len(self._heads) >= HEADS_MAX:
            self._heads.clear()
        self._heads[key] = prepared
        return prepared

    def _session_is_plain(self) -> bool:
        """True when nothing in the session changes what a POST sends or how its answer
        is read beyond what the lean path does (and aiohttp is a verified version)."""
        session = self._session
        connector = session.connector
        if not (aiohttp.__version__.startswith(VERIFIED)
                and type(session) is aiohttp.ClientSession
                and type(connector) is aiohttp.TCPConnector
                and not connector.force_close
                and not session.trace_configs
                and not session._middlewares
                and session.auth is None
                and session._default_proxy is None
                and not session.trust_env
                and not session.raise_for_status
                and session._base_url is None
                and session.version == HttpVersion11
                and not session.skip_auto_headers
                and session._request_class is aiohttp.ClientRequest
                and session._response_class is aiohttp.ClientResponse):
            return False
        jar = session.cookie_jar
        self._jar = None if isinstance(jar, aiohttp.DummyCookieJar) else jar
        # what ClientSession._request gives the protocol (the read bound aside)
        self._params = dict(
            timer=_NO_TIMER, skip_payload=False, read_until_eof=True,
            auto_decompress=session.auto_decompress, read_bufsize=session._read_bufsize,
            timeout_ceil_threshold=connector._timeout_ceil_threshold,
            max_line_size=session._max_line_size, max_field_size=session._max_field_size,
            max_headers=session._max_headers)
        return True

    def _head(self, url_text: str,
              call_headers: Mapping[str, str]) -> tuple[_Origin, bytes] | None:
        url = URL(url_text)  # as ClientSession._build_url
        if (url.scheme not in ("http", "https") or not url.raw_host or url.raw_user
                or url.raw_password):
            return _GENERIC
        # ClientSession._prepare_headers: the session's headers, then the call's
        merged = CIMultiDict(self._session.headers)
        added: set[str] = set()
        for name, value in call_headers.items():
            if name in added:
                merged.add(name, value)
            else:
                merged[name] = value
                added.add(name)
        if any(name in merged for name in _BODY_HEADERS):
            return _GENERIC
        # ClientRequest.update_headers, update_auto_headers and the bytes payload's type
        head: CIMultiDict[str] = CIMultiDict()
        head[hdrs.HOST] = url.host_port_subcomponent or ""
        for name, value in merged.items():
            if name in hdrs.HOST_ALL:
                head[name] = value
            else:
                head.add(name, value)
        for name, value in aiohttp.ClientRequest.DEFAULT_HEADERS.items():
            if name not in head:
                head[name] = value
        if hdrs.USER_AGENT not in head:
            head[hdrs.USER_AGENT] = SERVER_SOFTWARE
        if hdrs.CONTENT_TYPE not in head:
            head[hdrs.CONTENT_TYPE] = "application/octet-stream"
        head[hdrs.CONTENT_LENGTH] = ""  # the value is each call's
        block = _serialize_headers(f"POST {url.raw_path_qs} HTTP/1.1", head)
        origin_key = (url.scheme, url.raw_host, url.port)
        origin = self._origins.get(origin_key)
        if origin is None:
            origin = self._origins[origin_key] = _Origin(self._session, url)
        return origin, block[:-4]  # without the empty value's "\r\n" and the end "\r\n"


def _send(transport: asyncio.Transport, request: bytes) -> None:
    """Write a call's request, unless its connection was closed meanwhile (the call was
    given up, or the upstream left: its read fails with that)."""
    if not transport.is_closing():
        transport.write(request)


async def _connect(origin: _Origin, url: str, timeout: aiohttp.ClientTimeout,
                   deadline: float | None) -> Connection:
    """A new connection from the connector (bounded by ``connect``, and by ``total`` as
    the whole call is), as ``ClientSession._request`` gets one."""
    async with asyncio.timeout_at(deadline):
        try:
            return await origin.connector.connect(origin.request, _NO_TRACES, timeout)
        except TimeoutError as exc:
            raise ConnectionTimeoutError(f"Connection timeout to host {url}") from exc


def _request_info(url: str, headers: Mapping[str, str]) -> aiohttp.RequestInfo:
    target = URL(url)
    return aiohttp.RequestInfo(target, hdrs.METH_POST, CIMultiDictProxy(CIMultiDict(headers)),
                               target)
