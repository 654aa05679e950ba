"""Helpers for the formats' stream transforms, and the two synchronous halves of a
translated stream.

A format whose stream translation is written as a :class:`StreamDecoder` (the provider
side) or a :class:`StreamEncoder` (the client side) offers it through
``Format.stream_decoder`` / ``Format.stream_encoder``; the translated lane then reads
each block of frames one socket read brought, and translates it into one chunk with
plain calls, without a chain of async generators per frame
(:mod:`omniroute.pipeline.translated`). Its ``decode_stream`` / ``encode_stream`` are
written with the same objects, so the two ways cannot drift apart.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from omniroute.formats import canonical as c


@contextlib.asynccontextmanager
async def closing(events: AsyncIterator[Any]) -> AsyncIterator[AsyncIterator[Any]]:
    """Close ``events`` when the transform ends (a client disconnect closes the upstream)."""
    try:
        yield events
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


class StreamDecoder(Protocol):
    """Upstream frames -> canonical events, one frame at a time."""

    #: the stream's own end came (OpenAI's ``[DONE]``, Anthropic's ``message_stop``):
    #: no later frame is read, and :meth:`close` is called next
    done: bool

    def frame(self, frame: bytes) -> list[c.Event]:
        """The events of one frame (none for a keep-alive); raises a ``GatewayError`` on
        an error frame or a malformed one."""
        ...

    def close(self) -> list[c.Event]:
        """The last events, once :attr:`done` or at the end of the upstream's body;
        raises a ``GatewayError`` when the stream ended before its answer was whole."""
        ...


class StreamEncoder(Protocol):
    """Canonical events -> the client format's frames, one event at a time."""

    def feed(self, event: c.Event) -> list[bytes]:
        """The frames ``event`` completes (none while a part is held back)."""
        ...
