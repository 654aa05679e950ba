"""The thin network layer shared by HTTP provider types.

Every wait is bounded (connect, first event, idle between chunks, total), every
aiohttp failure becomes a typed gateway error, and a stream that is closed
early closes its upstream connection at once.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from omniroute.errors import UpstreamError, UpstreamStatusError, UpstreamTimeout
from omniroute.providers.base import Provider, UpstreamResponse
from omniroute.sse import SSESplitter, event_data, looks_like_sse

_KEEP_HEADERS = ("content-type", "x-request-id", "openai-processing-ms", "retry-after")


class HTTPProvider(Provider):
    """A provider that talks HTTP with JSON bodies and SSE streams."""

    def error_from(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamStatusError:
        """Turn an upstream error answer into a typed error (override per format)."""
        message, type_, code, param = _error_fields(body)
        message = message or f"upstream answered HTTP {status}"
        if status in (401, 403):
            # The upstream refused *our* credentials, not the client's: say so, and never
            # echo any part of the provider key (upstreams quote it back half-masked).
            message = (f"The upstream rejected the gateway's credentials for connection "
                       f"{self.connection.name!r}: {redact_secrets(message)}")
            code = "upstream_auth_failed" if status == 401 else "upstream_forbidden"
        keep = {"Retry-After": headers["Retry-After"]} if "Retry-After" in headers else {}
        return UpstreamStatusError(
            message, status=status, type=type_, code=code, param=param, body=body, headers=keep,
        )

    def stream_error(self, data: Any) -> UpstreamError | None:
        """An error carried inside the first stream event, if any (override per format)."""
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            err = data["error"]
            return UpstreamError(f"upstream stream error: {err.get('message', err)}")
        return None

    async def get_json(self, url: str, headers: Mapping[str, str]) -> Any:
        timeouts = self.context.timeouts
        try:
            async with self.context.http.get(url, headers=headers, timeout=timeouts.json) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise self.error_from(resp.status, body, resp.headers)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"upstream did not answer within {timeouts.total:g}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {_describe(exc)}") from None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream sent a response that is not JSON") from None

    async def post_json(self, url: str, headers: Mapping[str, str], data: bytes) -> UpstreamResponse:
        timeouts = self.context.timeouts
        try:
            async with self.context.http.post(
                url, data=data, headers=headers, timeout=timeouts.json
            ) as resp:
                body = await resp.read()
                if resp.status >= 400:
                    raise self.error_from(resp.status, body, resp.headers)
                kept = _kept_headers(resp.headers)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"upstream did not answer within {timeouts.total:g}s") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"upstream unreachable: {_describe(exc)}") from None
        if not body.lstrip().startswith((b"{", b"[")):
            raise UpstreamError("upstream sent a response that is not JSON")
        return UpstreamResponse(resp.status, kept, body=body)

    async def post_stream(self, url: str, headers: Mapping[str, str], data: bytes) -> UpstreamResponse:
        """Open a stream and wait (bounded) for its first event before returning.

        Waiting for the first event means a failure is still visible before
        anything reaches the client, so the caller can try elsewhere.
        """
        timeouts = self.context.timeouts
        resp: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(timeouts.first_byte):
                resp = await self.context.http.post(
                    url, data=data, headers=headers, timeout=timeouts.stream)
                if resp.status >= 400:
                    raise self.error_from(resp.status, await resp.read(), resp.headers)
                splitter = SSESplitter()
                events = _read_events(resp, splitter, timeouts)
                first = await anext(events, None)
        except asyncio.TimeoutError:
            _close(resp)
            raise UpstreamTimeout(
                f"upstream sent no event within {timeouts.first_byte:g}s") from None
        except aiohttp.ClientError as exc:
            _close(resp)
            raise UpstreamError(f"upstream unreachable: {_describe(exc)}") from None
        except BaseException:
            _close(resp)
            raise
        if first is None or not looks_like_sse(first):
            _close(resp)
            raise UpstreamError("upstream sent an empty or malformed event stream")
        if b'"error"' in first:
            error = self.stream_error(_first_data(first))
            if error is not None:
                _close(resp)
                raise error
        return UpstreamResponse(
            resp.status, _kept_headers(resp.headers), events=_chain(first, events, resp))


async def _read_events(
    resp: aiohttp.ClientResponse, splitter: SSESplitter, timeouts: Any
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeouts.total
    try:
        while True:
            chunk = await resp.content.readany()  # bounded by sock_read (idle timeout)
            if not chunk:
                break
            for event in splitter.feed(chunk):
                yield event
            if loop.time() > deadline:
                raise UpstreamTimeout(f"upstream stream exceeded {timeouts.total:g}s in total")
        tail = splitter.tail()
        if tail:
            yield tail
    except asyncio.TimeoutError:
        raise UpstreamTimeout(f"upstream stream stalled: no data for {timeouts.idle:g}s") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"upstream stream broke: {_describe(exc)}") from None


async def _chain(
    first: bytes, rest: AsyncIterator[bytes], resp: aiohttp.ClientResponse
) -> AsyncIterator[bytes]:
    finished = False
    try:
        yield first
        async for event in rest:
            yield event
        finished = True
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
        if finished:
            resp.release()  # fully read: the connection goes back to the pool
        else:
            resp.close()  # abandoned: drop the connection so the upstream stops


def _close(resp: aiohttp.ClientResponse | None) -> None:
    if resp is not None:
        resp.close()


def _first_data(event: bytes) -> Any:
    data = event_data(event)
    try:
        return orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None


def _kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: headers[k] for k in _KEEP_HEADERS if k in headers}


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
