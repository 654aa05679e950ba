"""How an upstream stream is cut into frames: server-sent events (:data:`SSE`, the
default), one JSON object per line (:data:`NDJSON`, Ollama's) or a binary body
(:data:`RAW`, such as speech audio: each socket read is a frame).

A :class:`Framing` names a stream's :class:`Splitter` (which keeps every frame byte for
byte, terminator included, so a pass-through stream reaches the client unchanged), a
cheap shape check for garbage, and how to read a frame's JSON payload.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from omniroute.sse import SSESplitter, event_data, looks_like_sse


class Splitter(Protocol):
    """Cuts a byte stream into whole frames (kept byte for byte, terminator included)."""

    def feed(self, chunk: bytes) -> list[bytes]: ...

    def block(self, chunk: bytes) -> bytes:
        """The frames ``chunk`` completes as one block (the bytes between them kept)."""
        ...

    def each(self, block: bytes) -> Iterator[bytes]:
        """The frames of a block of whole frames, one at a time, cut as they are read."""
        ...

    def first(self, block: bytes) -> bytes:
        """The first frame of a block of whole frames (b"" when it has none): the first
        of :meth:`each`, without a generator left suspended (closing one throws
        ``GeneratorExit`` into it: a stream's opening reads only its first frame)."""
        ...

    def tail(self) -> bytes: ...


class LineSplitter:
    """Newline-delimited JSON: each non-blank line (with its ``\\n``) is one frame."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The lines ``chunk`` completes (blank lines dropped)."""
        buf = self._buf + chunk if self._buf else chunk
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        return [line + b"\n" for line in lines if line.strip()]

    def block(self, chunk: bytes) -> bytes:
        """The lines ``chunk`` completes, as one block (blank lines dropped, as a client's
        NDJSON reader may choke on them)."""
        return b"".join(self.feed(chunk))

    @staticmethod
    def each(block: bytes) -> Iterator[bytes]:
        start = 0
        while (end := block.find(b"\n", start)) >= 0:
            if block[start:end].strip():
                yield block[start:end + 1]
            start = end + 1
        if block[start:].strip():
            yield block[start:]

    @staticmethod
    def first(block: bytes) -> bytes:
        start = 0
        while (end := block.find(b"\n", start)) >= 0:
            if block[start:end].strip():
                return block[start:end + 1]
            start = end + 1
        return block[start:] if block[start:].strip() else b""

    def tail(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest if rest.strip() else b""


def _json_line(frame: bytes) -> bool:
    return frame.lstrip().startswith(b"{")


def _line_payload(frame: bytes) -> bytes | None:
    return frame.strip() or None


@dataclass(frozen=True, slots=True)
class Framing:
    """How a stream is cut into frames, and how to read one."""

    name: str
    #: a fresh splitter for one stream
    splitter: Callable[[], Splitter]
    #: cheap check that a frame has the expected shape (garbage detection)
    well_formed: Callable[[bytes], bool]
    #: the JSON payload of a frame (SSE ``data:``; the line itself for NDJSON)
    payload: Callable[[bytes], bytes | None]

    def json(self, frame: bytes) -> Any:
        """The frame's payload parsed as JSON (None when it is not JSON)."""
        data = self.payload(frame)
        try:
            return orjson.loads(data) if data else None
        except orjson.JSONDecodeError:
            return None


class ChunkSplitter:
    """A binary body: every chunk the socket gives is a frame, as it came."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[bytes]:
        return [chunk]

    def block(self, chunk: bytes) -> bytes:
        return chunk

    @staticmethod
    def each(block: bytes) -> Iterator[bytes]:
        if block:
            yield block

    @staticmethod
    def first(block: bytes) -> bytes:
        return block

    def tail(self) -> bytes:
        return b""


def _any_bytes(frame: bytes) -> bool:
    return True


def _no_payload(frame: bytes) -> bytes | None:
    return None


SSE = Framing("sse", SSESplitter, looks_like_sse, event_data)
NDJSON = Framing("ndjson", LineSplitter, _json_line, _line_payload)
RAW = Framing("raw", ChunkSplitter, _any_bytes, _no_payload)
