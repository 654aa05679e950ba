"""Reading request bodies: size limit, content type, JSON; multipart forms."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import istr

from omniroute.errors import GatewayError, InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from omniroute.formats.forms import Form, Upload

_JSON_TYPES = frozenset({"application/json", "text/json"})
_CONTENT_TYPE = istr("Content-Type")  # (looked up without case-folding the name)
#: present on a request whose body is to be kept (an audited management call): the body
#: read lands here, for the audit entry, so it is read once and only by the handler
KEPT_BODY = web.RequestKey[bytes | None]("kept_body")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    if declared is not None:
        try:  # the transport enforces Content-Length; read it in one go
            raw = await request.content.readexactly(declared) if declared else b""
        except asyncio.IncompleteReadError:
            raise InvalidRequest("Request body ended before its Content-Length.") from None
    else:
        parts: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            parts.append(chunk)
        raw = b"".join(parts)
    if _keeps_body(request):
        request[KEPT_BODY] = raw
    return raw


def _keeps_body(request: web.Request) -> bool:
    """Whether the body read is to be kept (``KEPT_BODY`` is in the request's state).
    Asked of the state's dict itself: ``KEPT_BODY in request`` is ``Mapping.__contains__``,
    which looks the key up and catches the ``KeyError`` when it is absent, as it is on
    every data-path request (some 3,000 instructions)."""
    return KEPT_BODY in request._state


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")


async def read_json(request: web.Request, limit: int) -> Any:
    """The body parsed as JSON; 415 for another content type, 400 for bad JSON."""
    return (await _read_sized_json(request, limit))[0]


async def read_object(request: web.Request, limit: int) -> dict[str, Any]:
    return (await read_sized_object(request, limit))[0]


async def read_sized_object(request: web.Request, limit: int) -> tuple[dict[str, Any], bytes]:
    """The body as a JSON object, and the bytes it was read from (their size is what a
    token estimate starts from; the response cache knows a repeated body by them)."""
    _check_json_type(request)
    raw = _arrived(request, limit)
    if raw is None:
        try:  # (its read is awaited here, no coroutine in between)
            raw = await _bytes(request, limit)
        except asyncio.IncompleteReadError:
            raise InvalidRequest("Request body ended before its Content-Length.") from None
    body = _parsed(raw)
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return body, raw


async def _read_sized_json(request: web.Request, limit: int) -> tuple[Any, bytes]:
    try:
        raw = await _json_bytes(request, limit)
    except asyncio.IncompleteReadError:
        raise InvalidRequest("Request body ended before its Content-Length.") from None
    return _parsed(raw), raw


def _arrived(request: web.Request, limit: int) -> bytes | None:
    """A JSON body that came whole with the request's head (the common case: all of it is
    in the buffer, its end seen), taken without a read to await (``readexactly`` and the
    ``read`` under it are two coroutines); None: not in yet, or not the common case
    (:func:`_bytes` reads it)."""
    content, declared = request.content, request.content_length
    if (declared is None or not 0 < declared <= limit or not content.is_eof()
            or content.exception() is not None or _keeps_body(request)):
        return None
    raw = content.read_nowait(declared)
    if len(raw) != declared:  # it ended before its Content-Length (as readexactly says)
        raise InvalidRequest("Request body ended before its Content-Length.")
    return raw


def _json_bytes(request: web.Request, limit: int) -> Awaitable[bytes]:
    """The read of a JSON body (415 for another content type; the caller awaits it, and
    answers a body shorter than its Content-Length, ``IncompleteReadError``, with 400)."""
    _check_json_type(request)
    return _bytes(request, limit)


def _bytes(request: web.Request, limit: int) -> Awaitable[bytes]:
    """The read of a body whose type was checked (see :func:`_json_bytes`)."""
    declared = request.content_length
    if declared is not None and 0 < declared <= limit and not _keeps_body(request):
        # the common case, read in one go (as read_body would, one coroutine less)
        return request.content.readexactly(declared)
    return read_body(request, limit)


def _check_json_type(request: web.Request) -> None:
    # the header as sent first: a plain ``application/json`` (what SDKs send) is taken
    # without ``request.content_type``, whose parse sets three attributes on the request;
    # when the request type's shared attribute keys are used up by then (how many
    # requests came before the first such parse), every request's attributes became a
    # dict of their own (~1,900 instructions, in one process and not in another)
    sent = request.headers.get(_CONTENT_TYPE)
    if sent is None or sent in _JSON_TYPES:
        return
    ctype = request.content_type
    # an absent Content-Type (aiohttp reports application/octet-stream) is accepted
    if ctype not in _JSON_TYPES and not ctype.endswith("+json") and (
        "Content-Type" in request.headers
    ):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.headers['Content-Type']!r}.")


def _parsed(raw: bytes) -> Any:
    if not raw.strip():
        raise InvalidRequest("Request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.") from None


#: bytes read from a multipart part at a time
_PART_CHUNK = 64 * 1024


async def read_form(request: web.Request, limit: int, timeout: float) -> Form:
    """A ``multipart/form-data`` body: 415 for another content type, 413 as soon as its
    parts pass ``limit`` bytes, 408 when reading it takes more than ``timeout`` seconds,
    400 when it is not a well-formed form."""
    if request.content_type != "multipart/form-data":
        got = request.headers.get("Content-Type", "none")
        raise UnsupportedMediaType(f"Content-Type must be multipart/form-data, got {got!r}.")
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    form = Form()
    try:
        async with asyncio.timeout(timeout):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, aiohttp.BodyPartReader):
                    raise InvalidRequest("Nested multipart bodies are not accepted.")
                chunks: list[bytes] = []
                while chunk := await part.read_chunk(_PART_CHUNK):
                    form.size += len(chunk)
                    if form.size > limit:
                        raise _too_large(limit)
                    chunks.append(chunk)
                data, name = b"".join(chunks), part.name or ""
                if part.filename is not None:
                    form.files[name] = Upload(part.filename, part.headers.get(
                        "Content-Type", "application/octet-stream"), data)
                else:
                    text = data.decode(part.get_charset("utf-8"), errors="replace")
                    form.fields.setdefault(name, []).append(text)
    except TimeoutError:
        raise GatewayError(f"The request body was not received within {timeout:g}s.",
                           status=408, type="invalid_request_error",
                           code="request_timeout") from None
    except (ValueError, LookupError, EOFError, aiohttp.ClientPayloadError) as exc:
        raise InvalidRequest(f"The multipart body is malformed: {exc}.") from None
    return form
