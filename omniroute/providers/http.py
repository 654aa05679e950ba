"""The thin network layer shared by HTTP provider types.

Every wait is bounded (connect, first event, idle between chunks, total), every
aiohttp failure becomes a typed gateway error, and a stream that is closed
early closes its upstream connection at once.

Streams are cut into *frames* by a :class:`~omniroute.providers.framing.Framing`
(:mod:`omniroute.providers.framing`: SSE, the default, NDJSON or RAW).
A provider picks one with its ``framing`` class attribute, says which frames
are only keep-alives (:meth:`HTTPProvider.skips_frame`) and how to spot an
error in the first meaningful frame (:meth:`HTTPProvider.first_frame_error`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from functools import cached_property
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import aiohttp
import orjson
from multidict import istr

from omniroute.errors import GatewayError, UpstreamError, UpstreamStatusError, UpstreamTimeout
from omniroute.providers.base import Preset, Provider, UpstreamResponse
from omniroute.providers.framing import SSE, Framing, Splitter
from omniroute.providers.upstream import Answer, Upstream

T = TypeVar("T")

#: the upstream answer headers a stream's ``UpstreamResponse`` keeps, each with its ``istr``
#: (a multidict looks an ``istr`` up without case-folding it first)
_KEEP_HEADERS = tuple((name, istr(name)) for name in (
    "content-type", "x-request-id", "request-id", "openai-processing-ms", "retry-after"))
#: how a JSON answer's body starts (after any whitespace)
_JSON_STARTS = (b"{", b"[")
#: upstream answer headers the resilience layer reads (names lower-cased)
_HINT_PREFIXES = ("retry-after", "x-ratelimit-", "anthropic-ratelimit-")


# ----------------------------------------------------------------------------- the provider base

class HTTPProvider(Provider):
    """A provider that talks HTTP with JSON bodies and streamed frames (SSE by default)."""

    #: how this provider's streams are framed
    framing: ClassVar[Framing] = SSE

    @cached_property
    def upstream(self) -> Upstream:
        """The POSTs of :meth:`post_body` and :meth:`post_stream`: through the shared
        session's connections, each URL and header set prepared once."""
        return Upstream(self.context.http)

    def error_from(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamStatusError:
        """Turn an upstream error answer into a typed error (override per format)."""
        message, type_, code, param = _error_fields(body)
        return self.status_error(status, body, headers, message, type=type_, code=code,
                                 param=param)

    def status_error(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str],
        message: str | None,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        hints: Mapping[str, str] | None = None,
    ) -> UpstreamStatusError:
        """The error for an upstream HTTP error, once its body is parsed.

        Shared by every format's :meth:`error_from`: a refusal of the gateway's own
        credentials is reworded (and any key in it redacted), the client sees only
        ``Retry-After``, and the rate-limit hints are kept on ``upstream_headers``.

        :param hints: extra hints found in the body (e.g. Google's ``RetryInfo``),
            lower-case names; upstream headers win over them.
        """
        message = message or f"upstream answered HTTP {status}"
        if status in (401, 403):
            # The upstream refused *our* credentials, not the client's: say so, and never
            # echo any part of the provider key (upstreams quote it back half-masked).
            message = (f"The upstream rejected the gateway's credentials for connection "
                       f"{self.connection.name!r}: {redact_secrets(message)}")
            code = "upstream_auth_failed" if status == 401 else "upstream_forbidden"
        upstream_headers = {**(hints or {}), **rate_limit_headers(headers)}
        retry_after = upstream_headers.get("retry-after")
        keep = {"Retry-After": retry_after} if retry_after is not None else {}
        return UpstreamStatusError(
            message, status=status, type=type, code=code, param=param, body=body, headers=keep,
            upstream_headers=upstream_headers,
        )

    def stream_error(self, data: Any) -> GatewayError | None:
        """An error carried inside the first stream event's JSON, if any (override per format)."""
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            err = data["error"]
            return UpstreamError(f"upstream stream error: {err.get('message', err)}")
        return None

    def first_frame_error(self, frame: bytes) -> GatewayError | None:
        """An error in the stream's first meaningful frame, if any (override per format).

        The default looks at frames that mention ``"error"`` and asks :meth:`stream_error`.
        """
        if frame.find(b'"error"') < 0:  # (``in`` costs CPython 3.11 a TypeError first)
            return None
        return self.stream_error(self.framing.json(frame))

    def _refused(self, status: int, body: bytes, headers: Mapping[str, str],
                 sent_with: int) -> UpstreamStatusError:
        """:meth:`error_from`, noting which credentials the refused call carried."""
        error = self.error_from(status, body, headers)
        error.credentials_generation = sent_with
        return error

    def answered(self, status: int, headers: Mapping[str, str]) -> None:
        """Told the status and headers of every upstream answer, success or error, before
        its body is read (override: a subscription reads its quota headers here)."""

    def skips_frame(self, frame: bytes) -> bool:
        """True for frames that do not count as the stream's first event (keep-alives).

        They are still relayed; only the first-event wait goes on past them.
        """
        return False

    async def get_json(self, url: str, headers: Mapping[str, str], *,
                       timeout: aiohttp.ClientTimeout | None = None) -> Any:
        """GET a JSON answer, bounded by ``timeout`` (default: the JSON call bounds)."""
        body, _ = await self.get_bytes(url, headers, timeout=timeout)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream sent a response that is not JSON") from None

    async def get_bytes(self, url: str, headers: Mapping[str, str], *,
                        timeout: aiohttp.ClientTimeout | None = None) -> tuple[bytes, str]:
        """GET a body and its content type, bounded by ``timeout`` (default: the JSON call
        bounds); an HTTP error becomes the provider's typed error."""
        bound = timeout or self.context.timeouts.json
        sent_with = self.credentials_generation
        try:
            async with self.context.http.get(url, headers=headers, timeout=bound) as resp:
                self.answered(resp.status, resp.headers)
                body = await resp.read()
                if resp.status >= 400:
                    raise self._refused(resp.status, body, resp.headers, sent_with)
                return body, resp.content_type
        except TimeoutError:
            raise UpstreamTimeout(f"upstream did not answer within {bound.total:g}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {_describe(exc)}") from None

    def post_json(
        self, url: str, headers: Mapping[str, str], data: bytes | aiohttp.FormData, *,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Coroutine[Any, Any, UpstreamResponse]:
        """POST for a JSON answer (``UpstreamError`` if it is not JSON). ``timeout``: other
        bounds than the JSON call's (an image generation's
        :attr:`~omniroute.providers.base.Timeouts.images`).

        :meth:`post_body`'s own coroutine, not one around it: every JSON call comes this
        way, and a coroutine that only awaits another costs a frame and an await."""
        return self.post_body(url, headers, data, timeout=timeout, json=True)

    async def post_body(
        self, url: str, headers: Mapping[str, str], data: bytes | aiohttp.FormData, *,
        timeout: aiohttp.ClientTimeout | None = None, json: bool = False,
    ) -> UpstreamResponse:
        """POST (a body, or a multipart form) and read the whole answer, of any type
        (``json``: a JSON one, else ``UpstreamError``)."""
        timeouts = self.context.timeouts
        sent_with = self.credentials_generation
        try:
            # timeouts.json: the answer must start within first_byte (and no read may
            # stall longer), so a hung upstream does not stall failover; the whole
            # exchange is bounded by total
            resp = await self.upstream.post(url, data=data, headers=headers,
                                            timeout=timeout or timeouts.json)
            try:
                self.answered(resp.status, resp.headers)
            except BaseException:
                resp.close()
                raise
            # read() gives the connection back (or closes it, when the read fails): no
            # ``async with`` around it, whose two coroutines would only release it again
            body = await resp.read()
            if resp.status >= 400:
                raise self._refused(resp.status, body, resp.headers, sent_with)
        except TimeoutError:
            if timeout is not None:
                raise UpstreamTimeout(
                    f"upstream did not answer within {timeout.total:g}s") from None
            raise UpstreamTimeout(
                f"upstream did not answer: nothing for {timeouts.first_byte:g}s, "
                f"or over {timeouts.total:g}s in total") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {_describe(exc)}") from None
        # (the lstrip, a copy of the body, only for one that does not start as JSON does)
        if json and not (body.startswith(_JSON_STARTS) or body.lstrip().startswith(_JSON_STARTS)):
            raise UpstreamError("upstream sent a response that is not JSON")
        # the answer's headers as they came: read-only, and short-lived (a stream, which
        # lives long, keeps the few of :data:`_KEEP_HEADERS` instead)
        return UpstreamResponse(resp.status, resp.headers, body)  # (no keywords: no dict)

    async def post_stream(
        self,
        url: str,
        headers: Mapping[str, str],
        data: bytes,
        *,
        framing: Framing | None = None,
    ) -> UpstreamResponse:
        """Open a stream and wait (bounded) for its first meaningful frame before returning.

        Waiting for it means a failure is still visible before anything reaches the
        client, so the caller can try elsewhere. ``first_byte`` bounds the whole wait:
        keep-alive frames (:meth:`skips_frame`) arriving meanwhile do not end it.

        The answer offers the stream two ways, to be read one way only: ``events``,
        frame by frame, and ``reads``, the frames each socket read completed, as one
        block of bytes (the frames read while waiting come first, as one block).

        :param framing: overrides the provider's :attr:`framing` for this call.
        """
        framing = framing or self.framing
        timeouts = self.context.timeouts
        resp: Answer | None = None
        reader: _FrameReader | None = None
        head: list[bytes] = []  # the blocks read while waiting
        last = b""  # the last frame looked at (they are cut up to the first meaningful one)
        first = malformed = False
        sent_with = self.credentials_generation
        # ``first_byte`` bounds the whole wait: one timer cancels this task when it fires
        # (what ``asyncio.timeout`` does, without its ~145 bytecodes per stream)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            task.cancel()

        cancelling = task.cancelling()
        expiry = loop.call_at(loop.time() + timeouts.first_byte, expire)
        try:
            try:
                resp = await self.upstream.post(
                    url, data=data, headers=headers, timeout=timeouts.stream)
                self.answered(resp.status, resp.headers)
                if resp.status >= 400:
                    raise self._refused(resp.status, await resp.read(), resp.headers,
                                        sent_with)
                splitter = framing.splitter()
                reader = _FrameReader(resp, splitter, timeouts, loop)
                while not first and (block := await reader.read_block()):
                    head.append(block)
                    last = splitter.first(block)  # the usual case: it is the one
                    if last and framing.well_formed(last) and not self.skips_frame(last):
                        first = True
                        break
                    for last in splitter.each(block):
                        if not framing.well_formed(last):
                            first = malformed = True
                            break
                        if not self.skips_frame(last):
                            first = True
                            break
            finally:
                expiry.cancel()
        except asyncio.CancelledError:
            _abandon(resp)
            if expired and task.uncancel() <= cancelling:  # ours, not the caller's
                raise UpstreamTimeout(
                    f"upstream sent no event within {timeouts.first_byte:g}s") from None
            raise
        except TimeoutError:  # aiohttp's connect or read bound
            _abandon(resp)
            raise UpstreamTimeout(
                f"upstream sent no event within {timeouts.first_byte:g}s") from None
        except aiohttp.ClientError as exc:
            _abandon(resp)
            raise UpstreamError(f"upstream unreachable: {_describe(exc)}") from None
        except BaseException:
            _abandon(resp)
            raise
        assert resp is not None and reader is not None
        if not first or malformed:
            _abandon(resp)
            kind = "event stream" if framing is SSE else f"{framing.name} stream"
            raise UpstreamError(f"upstream sent an empty or malformed {kind}")
        error = self.first_frame_error(last)
        if error is not None:
            _abandon(resp)
            raise error
        return UpstreamResponse(  # (no keywords: no dict per call)
            resp.status, _kept_headers(resp.headers), None, reader.frames(head),
            reader.reads(head), resp.close, splitter.each)


# ----------------------------------------------------------------------------- settings helpers

def http_settings(
    settings: dict[str, Any], preset: Preset | None, *, default_base_url: str | None = None,
    type_name: str = "this",
) -> dict[str, Any]:
    """Complete and check the settings every HTTP provider shares.

    Fills ``base_url`` from the preset (or ``default_base_url``), merges the preset's
    headers under the connection's own, and checks ``base_url`` and ``headers``.
    Raises ``ValueError`` with a readable message.
    """
    settings = dict(settings)
    if preset is not None:
        settings.setdefault("base_url", preset.base_url)
        settings["headers"] = {**preset.headers, **(settings.get("headers") or {})}
    if default_base_url and not settings.get("base_url"):
        settings["base_url"] = default_base_url
    base_url = settings.get("base_url")
    if not base_url:
        raise ValueError(f"{type_name} connection needs a base_url (or a preset)")
    parts = urlsplit(str(base_url))
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    settings["base_url"] = str(base_url).rstrip("/")
    headers = settings.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ValueError("headers must map header names to strings")
    return settings


def rate_limit_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The rate-limit hints among upstream headers, names lower-cased.

    ``retry-after`` (and ``retry-after-ms``), ``x-ratelimit-*`` and
    ``anthropic-ratelimit-*``.
    """
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith(_HINT_PREFIXES)}


# ----------------------------------------------------------------------------- stream plumbing

class _FrameReader:
    """One upstream stream: socket reads cut into whole frames, every wait bounded.

    Read it through one of :meth:`frames` or :meth:`reads`; either releases the
    connection to the pool when the stream ends, and drops it when the stream is
    closed early, so the upstream stops.
    """

    __slots__ = ("_deadline", "_done", "_loop", "_resp", "_rest", "_splitter", "_timeouts")

    def __init__(self, resp: Answer, splitter: Splitter, timeouts: Any,
                 loop: asyncio.AbstractEventLoop) -> None:
        """:param loop: the running loop (each ``asyncio.get_running_loop()`` costs a
        ``getpid`` system call: CPython checks the loop was not inherited by a fork)."""
        self._resp, self._splitter, self._timeouts = resp, splitter, timeouts
        self._loop = loop
        self._deadline = loop.time() + timeouts.total
        self._done = False
        self._rest = b""  # the splitter's tail, taken out by :meth:`ended`

    def ended(self) -> bool:
        """True when the upstream's answer has all come and nothing of it is left to
        read: the next read returns the end without waiting."""
        if not self._done:
            if not self._resp.content.at_eof():
                return False
            self._done = True
            self._rest = self._splitter.tail()  # (a partial last frame) read next
        return not self._rest

    def _taken(self) -> bytes:
        rest, self._rest = self._rest, b""
        return rest

    async def read(self) -> list[bytes]:
        """The frames the next socket read completes (never empty), or [] at the end."""
        if self._done:
            rest = self._taken()
            return [rest] if rest else []
        frames = await self._pull(self._splitter.feed)
        if frames is None:
            tail = self._splitter.tail()
            return [tail] if tail else []
        return frames

    async def read_block(self) -> bytes:
        """The frames the next socket read completes, as one block of bytes (never
        empty), or b"" at the end: no frame is cut out of it."""
        if self._done:
            return self._taken()
        block = await self._pull(self._splitter.block)
        return self._splitter.tail() if block is None else block

    async def _pull(self, cut: Callable[[bytes], T]) -> T | None:
        """``cut`` of the next socket read that completes a frame; None at the end (the
        splitter's tail is then the caller's). Every wait bounded: idle and total."""
        timeouts = self._timeouts
        try:
            while True:
                chunk = await self._resp.content.readany()  # bounded by sock_read (idle)
                if not chunk:
                    self._done = True
                    return None
                if self._loop.time() > self._deadline:
                    raise UpstreamTimeout(
                        f"upstream stream exceeded {timeouts.total:g}s in total")
                got = cut(chunk)
                if got:
                    return got
        except TimeoutError:
            raise UpstreamTimeout(
                f"upstream stream stalled: no data for {timeouts.idle:g}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream stream broke: {_describe(exc)}") from None

    def reads(self, head: list[bytes]) -> AsyncIterator[bytes]:
        """The blocks of ``head`` as one, then the frames of each socket read as one."""
        return _Blocks(self, head)

    async def frames(self, head: list[bytes]) -> AsyncIterator[bytes]:
        """The frames of the blocks of ``head``, then every frame, one by one."""
        finished = False
        try:
            for block in head:
                for frame in self._splitter.each(block):
                    yield frame
            while batch := await self.read():
                for frame in batch:
                    yield frame
            finished = True
        finally:
            self._end(finished)

    def _end(self, finished: bool) -> None:
        if finished:
            self._resp.release()  # fully read: the connection goes back to the pool
        else:
            self._resp.close()  # abandoned: drop the connection so the upstream stops


class _Blocks:
    """:meth:`_FrameReader.reads`: an async iterator written as a class, not an async
    generator (the event loop's hooks keep every async generator in a ``WeakSet`` as it
    starts and take it out as it goes: some 5k instructions a stream). Ending as the
    generator did: read to the end, the connection goes back to the pool; failed or
    closed early (:meth:`aclose`), it is dropped."""

    __slots__ = ("_head", "_reader")

    def __init__(self, reader: _FrameReader, head: list[bytes]) -> None:
        self._reader: _FrameReader | None = reader
        self._head: list[bytes] | None = head

    def __aiter__(self) -> _Blocks:
        return self

    async def __anext__(self) -> bytes:
        head, reader = self._head, self._reader
        if head is not None:
            self._head = None
            return head[0] if len(head) == 1 else b"".join(head)
        if reader is None:
            raise StopAsyncIteration
        if reader._done and not reader._rest:  # :meth:`ended` said so: nothing to wait for
            self._reader = None
            reader._end(True)
            raise StopAsyncIteration
        try:
            block = await reader.read_block()
        except BaseException:
            self._reader = None
            reader._end(False)
            raise
        if block:
            return block
        self._reader = None
        reader._end(True)
        raise StopAsyncIteration

    def ended(self) -> bool:
        """True when the block handed out last was the stream's last (the next
        ``__anext__`` ends the iteration without waiting)."""
        reader = self._reader
        return reader is None or (self._head is None and reader.ended())

    async def aclose(self) -> None:
        reader, self._reader, self._head = self._reader, None, None
        if reader is not None:
            reader._end(False)


def _abandon(resp: Answer | None) -> None:
    if resp is not None:
        resp.close()


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers of :data:`_KEEP_HEADERS` ``headers`` holds (plain ``str`` names)."""
    get = headers.get
    kept = {}
    for name, key in _KEEP_HEADERS:
        value = get(key)
        if value is not None:
            kept[name] = value
    return kept


def _error_fields(body: bytes) -> tuple[str | None, str | None, str | None, str | None]:
    """Message, type, code and param from an error body in any of the common shapes."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode(errors="replace").strip()
        return (text[:500] or None), None, None, None
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, str):
        return err, None, None, None
    if isinstance(err, dict):
        code = err.get("code")
        return (
            err.get("message") or (data.get("message") if isinstance(data, dict) else None),
            err.get("type") if isinstance(err.get("type"), str) else None,
            str(code) if code is not None else None,
            err.get("param") if isinstance(err.get("param"), str) else None,
        )
    return None, None, None, None


_SECRET_LIKE = re.compile(
    r"(?:sk|gsk|xai|nvapi|pk|rk|key)[-_][A-Za-z0-9_*\-]{6,}|[A-Za-z0-9_\-]{2,}\*{3,}[A-Za-z0-9_\-]*")


def redact_secrets(text: str) -> str:
    """Replace anything that looks like an API key, whole or half-masked."""
    return _SECRET_LIKE.sub("[redacted]", text)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
