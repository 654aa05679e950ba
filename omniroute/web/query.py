"""Query-string values the read APIs share: a point in time and a page size."""

from __future__ import annotations

from aiohttp import web

from omniroute.errors import InvalidRequest
from omniroute.storage.usage import parse_time


def query_time(request: web.Request, name: str, now: float) -> float | None:
    """The time the query parameter ``name`` gives (see
    :func:`~omniroute.storage.usage.parse_time`), or None when it is absent or empty.

    :raises InvalidRequest: 400 naming the parameter: not a time, or out of range.
    """
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        return parse_time(text, now=now)
    except ValueError as exc:
        raise InvalidRequest(f"'{name}': {exc}", param=name, code="invalid_time") from None


def query_limit(request: web.Request, default: int = 50, most: int = 500,
                name: str = "limit") -> int:
    """The page size ``limit`` (or the count parameter ``name``) asks for (1 to ``most``)."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        limit = int(text)
    except ValueError:
        raise InvalidRequest(f"'{name}' must be an integer.", param=name) from None
    if not 1 <= limit <= most:
        raise InvalidRequest(f"'{name}' must be between 1 and {most}.", param=name)
    return limit
