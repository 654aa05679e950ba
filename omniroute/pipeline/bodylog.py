"""Request and response bodies in the usage record: off by default, capped, credentials redacted.

With the ``log_bodies`` setting on, a record carries the client's request body
and the answer (a JSON body, or a stream's bytes as the client got them), each
cut to ``log_body_max_bytes``. Before anything is stored, credentials are
replaced with ``[REDACTED]`` by :mod:`omniroute.redact`: a JSON body (and each
``data:`` line of a stream) is parsed and walked, credential-named fields masked
and credential-shaped strings replaced; other text is scanned for credential
shapes only. Both are linear in the body's size.

A request body is redacted as the client's parsed body, before it is written
out and cut; an answer's bytes are redacted over at most :data:`MARGIN` bytes
past the cap (all of them when it is one JSON document, which must parse
whole), so a secret that straddles the cut is still found.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import orjson

from omniroute.redact import REDACTED, redact, redact_text

__all__ = ["MARGIN", "REDACTED", "TRUNCATED", "BodyLog"]

#: bytes read past the cap so a secret cut by it is still recognised
MARGIN = 4096
TRUNCATED = "...[truncated]"


class BodyLog:
    """Renders bodies for the record under one cap (built per request from the settings)."""

    __slots__ = ("cap",)

    def __init__(self, cap: int) -> None:
        self.cap = cap

    def text(self, raw: bytes) -> str:
        """Raw bytes as stored text: redacted, then cut to the cap."""
        try:  # one JSON document: redacted whole (a cut one would not parse)
            text = orjson.dumps(redact(orjson.loads(raw))).decode()
            return self._cut(text, len(text))
        except orjson.JSONDecodeError:
            pass
        return self._cut(redact_text(raw[:self.cap + MARGIN].decode("utf-8", "replace")),
                         len(raw))

    def request(self, body: object) -> str:
        """The client's parsed request body as stored text."""
        text = orjson.dumps(redact(body)).decode()
        return self._cut(text, len(text))

    def _cut(self, text: str, size: int) -> str:
        if size > self.cap or len(text) > self.cap:
            return text[:self.cap] + TRUNCATED
        return text

    async def tee(self, frames: AsyncIterator[bytes], into: list[bytes]) -> AsyncIterator[bytes]:
        """Pass a stream's chunks on, keeping the first ``cap`` (and the margin) bytes."""
        room = self.cap + MARGIN
        async with aclosing(frames):  # type: ignore[type-var]
            async for chunk in frames:
                if room > 0:
                    into.append(chunk)
                    room -= len(chunk)
                yield chunk
