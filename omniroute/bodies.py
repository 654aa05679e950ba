"""Reading request bodies: size limit, content type, JSON."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from omniroute.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType

_JSON_TYPES = frozenset({"application/json", "text/json"})
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
    if KEPT_BODY in request:
        request[KEPT_BODY] = raw
    return raw


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than the limit of {limit} bytes.")


async def read_json(request: web.Request, limit: int) -> Any:
    """The body parsed as JSON; 415 for another content type, 400 for bad JSON."""
    return (await _read_sized_json(request, limit))[0]


async def read_object(request: web.Request, limit: int) -> dict[str, Any]:
    return (await read_sized_object(request, limit))[0]


async def read_sized_object(request: web.Request, limit: int) -> tuple[dict[str, Any], int]:
    """The body as a JSON object, and its size in bytes (what a token estimate starts from)."""
    body, size = await _read_sized_json(request, limit)
    if not isinstance(body, dict):
        raise InvalidRequest("Request body must be a JSON object.")
    return body, size


async def _read_sized_json(request: web.Request, limit: int) -> tuple[Any, int]:
    ctype = request.content_type
    # an absent Content-Type (aiohttp reports application/octet-stream) is accepted
    if ctype not in _JSON_TYPES and not ctype.endswith("+json") and (
        "Content-Type" in request.headers
    ):
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {request.headers['Content-Type']!r}.")
    raw = await read_body(request, limit)
    if not raw.strip():
        raise InvalidRequest("Request body is empty; send a JSON object.")
    try:
        return orjson.loads(raw), len(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"Request body is not valid JSON: {exc}.") from None
