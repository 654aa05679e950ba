"""The translated lane's stream when both formats offer synchronous halves
(:mod:`omniroute.formats.streams`): each block of whole frames one upstream socket read
brought is decoded into canonical events, noted for the record, and encoded in the
client's format, with plain calls, into one chunk: what was read together leaves
together, in one write.

The same steps as the lane's chain of async generators (the provider format's
``decode_stream``, :meth:`StreamOutput.events`, the client format's ``encode_stream``),
one per frame and per event; this lane is taken only when nothing else must see the
events (no response-cache tap) and the upstream says how to cut its blocks.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator

from omniroute.formats.streams import StreamDecoder, StreamEncoder
from omniroute.pipeline.context import KnowsItsEnd
from omniroute.pipeline.usage import StreamOutput

log = logging.getLogger(__name__)


class Translated(KnowsItsEnd):
    """An async iterator of chunks, each the client-format frames of one upstream block.

    A failure (an upstream error frame, a stream cut short) is raised after the chunk
    of the frames before it, as the chain raised it after writing them. Its last chunk
    carries the frames of the stream's end: :meth:`ended` says so, and the relay writes
    it with the end of the answer, in one write."""

    __slots__ = ("_decoder", "_drain", "_encoder", "_failed", "_last", "_output", "_reads",
                 "_split")

    def __init__(self, reads: AsyncIterator[bytes], split: Callable[[bytes], Iterator[bytes]],
                 decoder: StreamDecoder, encoder: StreamEncoder, output: StreamOutput) -> None:
        self._reads: AsyncIterator[bytes] | None = reads
        self._split, self._decoder, self._encoder, self._output = split, decoder, encoder, output
        self._failed: BaseException | None = None  # raised after the chunk before it
        self._last = False
        #: the reads, once the stream's own end came before the upstream's body ended
        self._drain: AsyncIterator[bytes] | None = None

    def ended(self) -> bool:
        """True when the chunk handed out last was the stream's last."""
        return self._last

    def __aiter__(self) -> Translated:
        return self

    async def __anext__(self) -> bytes:
        reads = self._reads
        if reads is None:
            drain, self._drain = self._drain, None
            if drain is not None:
                await _drained(drain)
            failed, self._failed = self._failed, None
            if failed is not None:
                raise failed
            raise StopAsyncIteration
        decoder, feed, see = self._decoder, self._encoder.feed, self._output.see
        out: list[bytes] = []
        while not out:
            try:
                block = await reads.__anext__()
            except StopAsyncIteration:
                block = None
            try:
                if block is not None:
                    for frame in self._split(block):
                        for event in decoder.frame(frame):
                            see(event)
                            out += feed(event)
                        if decoder.done:
                            break
                if block is None or decoder.done:
                    self._reads = None
                    for event in decoder.close():
                        see(event)
                        out += feed(event)
                    self._last = True
                    if block is not None:
                        self._drain = reads
            except Exception as exc:
                self._reads = None
                if not out:
                    raise
                self._failed = exc
                return b"".join(out)
            if self._reads is None and not out:
                raise StopAsyncIteration
        return out[0] if len(out) == 1 else b"".join(out)

    async def aclose(self) -> None:
        reads, self._reads = self._reads or self._drain, None
        self._drain = None
        if reads is not None:
            await reads.aclose()  # type: ignore[attr-defined]


async def _drained(reads: AsyncIterator[bytes]) -> None:
    """After the stream's own end (``[DONE]``), once its last chunk is out: one more read,
    which finds the end of the upstream's body when the upstream ended it there, and its
    connection goes back to the pool (as a pass-through stream's does) rather than being
    dropped; anything else (more bytes, an error) drops it, as before. The wait is the
    reads' own, bounded by the idle timeout, as a pass-through stream waits for the
    upstream's end."""
    try:
        await reads.__anext__()
    except StopAsyncIteration:
        return  # read to its end: released
    except Exception as exc:  # noqa: BLE001 - the answer is whole: only the upstream is dropped
        log.debug("after the stream's end: %s", exc)
    await reads.aclose()  # type: ignore[attr-defined]
