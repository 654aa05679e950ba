"""Server-sent events: splitting a byte stream into whole events, and building them.

Events are kept as the exact bytes the upstream sent (terminator included), so
a pass-through stream reaches the client byte for byte.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"
_FIELD_STARTS = (b"data:", b"event:", b"id:", b"retry:", b":")
#: a carriage return, as the int ``CR in chunk`` looks for: ``b"\r" in chunk`` first tries
#: its operand as an int, and CPython 3.11 builds and drops a TypeError for that (some
#: 1,900 instructions, on every socket read of a stream)
CR = ord("\r")
LF = ord("\n")


class SSESplitter:
    """Feed it bytes as they arrive; it hands back each complete event."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The events ``chunk`` completes, in order (none when it completes none)."""
        buf = self._buf + chunk if self._buf else chunk
        if CR not in buf:  # the usual case: one split does it
            events = buf.split(b"\n\n")
            self._buf = events.pop()
            return [event + b"\n\n" for event in events]
        # CRLF somewhere: each time the earliest of either terminator (each searched again
        # only once it has been passed, so a long buffer is not scanned once per event)
        events = []
        start = 0
        lf, crlf = buf.find(b"\n\n"), buf.find(b"\r\n\r\n")
        while lf >= 0 or crlf >= 0:
            end = crlf + 4 if crlf >= 0 and (lf < 0 or crlf < lf) else lf + 2
            events.append(buf[start:end])
            start = end
            if 0 <= lf < start:
                lf = buf.find(b"\n\n", start)
            if 0 <= crlf < start:
                crlf = buf.find(b"\r\n\r\n", start)
        self._buf = buf[start:]
        return events

    def block(self, chunk: bytes) -> bytes:
        """The events ``chunk`` completes, as one contiguous block (empty when it
        completes none): the same bytes as ``b"".join(self.feed(chunk))``, found with
        one reverse search for the last event boundary instead of a split."""
        buf = self._buf + chunk if self._buf else chunk
        if CR in buf:  # CRLF somewhere: the events one by one (rare)
            self._buf = b""
            return b"".join(self.feed(buf))
        end = buf.rfind(b"\n\n") + 2
        if end == 1:  # no boundary yet
            self._buf = buf
            return b""
        if end == len(buf):
            self._buf = b""
            return buf
        self._buf = buf[end:]
        return buf[:end]

    @staticmethod
    def each(block: bytes) -> Iterator[bytes]:
        """The events of a block of whole events one at a time, cut only as far as they
        are read (a stream's last event may lack its blank line)."""
        if CR in block:  # CRLF somewhere: split it all (rare)
            yield from events_of(block)
            return
        # each line end found with memchr (``find(b"\n\n")`` compares at every byte:
        # some 1,000 instructions an event): an event's one data line ends at its end
        start, last = 0, len(block) - 1
        end = block.find(LF)
        while 0 <= end < last:
            if block[end + 1] == LF:
                yield block[start:end + 2]
                start = end + 2
                end = block.find(LF, start)
            else:
                end = block.find(LF, end + 1)
        if block[start:].strip():
            yield block[start:]

    @staticmethod
    def first(block: bytes) -> bytes:
        """The first event of a block of whole events (b"" when it has none): the first of
        :meth:`each`, without a generator to close."""
        if CR in block:  # CRLF somewhere (rare)
            events = events_of(block)
            return events[0] if events else b""
        end = block.find(b"\n\n")
        if end >= 0:
            return block[:end + 2]
        return block if block.strip() else b""

    def tail(self) -> bytes:
        """What is left when the stream ends (an event without its blank line)."""
        rest, self._buf = self._buf, b""
        return rest if rest.strip() else b""


def events_of(block: bytes) -> list[bytes]:
    """The events of a block of whole events (a stream's last may lack its blank line)."""
    splitter = SSESplitter()
    events = splitter.feed(block)
    tail = splitter.tail()
    if tail:
        events.append(tail)
    return events


def looks_like_sse(event: bytes) -> bool:
    """True when ``event`` starts with an SSE field (or a comment)."""
    return event.lstrip(b"\r\n").startswith(_FIELD_STARTS)


def event_data(event: bytes) -> bytes | None:
    """The joined ``data:`` lines of one event, or None when it has none."""
    if event.startswith(b"data: "):  # the usual event: one data line, then its blank line
        end = event.find(b"\n")  # (memchr: no split of the event into lines)
        if end < 0:
            data = event[6:]
        elif end == len(event) - 2 and event[end + 1] == LF:
            data = event[6:end]
        else:
            data = None
        if data is not None and CR not in data:
            return data
    parts = [
        line[5:].removeprefix(b" ")
        for line in event.splitlines()
        if line.startswith(b"data:")
    ]
    return b"\n".join(parts) if parts else None


def event_name(event: bytes) -> str | None:
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip().decode()
    return None


def encode(data: Any, *, event: str | None = None) -> bytes:
    """One SSE event whose data is ``data`` as JSON (or as-is when it is bytes)."""
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"
