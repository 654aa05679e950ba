"""One shared answer: what the first request with an idempotency key gives its duplicates.

A :class:`SharedAnswer` goes ``calling`` -> (``streaming`` ->) ``done`` or ``failed``:

* a JSON answer arrives whole (:meth:`SharedAnswer.complete`);
* a stream is read from the upstream by one *pump* task (:meth:`SharedAnswer.pump`)
  that appends each chunk to the shared buffer; every client, the first one
  included, reads that buffer through its own :class:`Reader`, from the start,
  then follows it as chunks arrive. The pump, not a client, holds the upstream:
  a client that leaves only detaches its reader, and the upstream is closed when
  the last reader (and waiter) is gone.

Memory is bounded by ``max_bytes`` per answer. While the buffer is under it every
chunk is kept (a duplicate arriving later, in the window, gets the whole frame
sequence). Past it the answer stops being replayable: chunks every reader has passed
are dropped, and if that is not enough the slowest readers are cut off (their stream
ends with an ``IdempotencyUnavailable`` error frame) so that the buffer stays under the
bound; the others go on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, suppress
from enum import Enum

from omniroute.errors import (
    GatewayError,
    IdempotencyTimeout,
    IdempotencyUnavailable,
)
from omniroute.pipeline.context import Reply

log = logging.getLogger(__name__)


class State(Enum):
    CALLING = "calling"  # the first request is calling its targets
    STREAMING = "streaming"  # its stream is being read into the buffer
    DONE = "done"
    FAILED = "failed"


class SharedAnswer:
    """The answer of one idempotency key's first request, shared with its duplicates."""

    def __init__(self, fingerprint: bytes, request_id: str, stream: bool, max_bytes: int,
                 settled: Callable[[SharedAnswer], None]) -> None:
        """
        :param fingerprint: what identifies the request (body, format, path).
        :param request_id: the first request's id (``X-OmniRoute-Idempotent-Of``).
        :param stream: whether the first request streams.
        :param settled: called once the answer is final (done or failed).
        """
        self.fingerprint = fingerprint
        self.request_id = request_id
        self.stream = stream
        self.max_bytes = max_bytes
        self._settled = settled
        self.state = State.CALLING
        self.status = 200
        self.headers: dict[str, str] = {}
        self.body: bytes | None = None  # a JSON answer
        self.error: GatewayError | None = None
        #: the stream's chunks from index ``base`` on; ``whole`` while none was dropped
        self.chunks: list[bytes] = []
        self.base = 0
        self.size = 0
        self.whole = True
        #: the answer could not be given as it was (an upstream error frame, a cut
        #: stream): served to those waiting, never replayed after
        self.flawed = False
        self.readers: list[Reader] = []
        #: duplicates waiting for the answer (not yet reading it)
        self.waiting = 0
        self.task: asyncio.Task[None] | None = None  # the pump
        self._changed = asyncio.Event()

    # ------------------------------------------------------------------ writing

    def wanted(self, besides: Reader | None = None) -> bool:
        """Whether a client (other than ``besides``) still waits for or reads this answer."""
        return self.waiting > 0 or any(r is not besides for r in self.readers)

    def complete(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """A JSON answer."""
        if self.state is not State.CALLING:
            return
        self.status, self.headers, self.body = status, headers, body
        self.size = len(body)
        self.flawed = status >= 400
        self._settle(State.DONE)

    def replay(self, request_id: str, stream: bool, status: int, headers: dict[str, str],
               body: bytes | None, chunks: tuple[bytes, ...] = ()) -> None:
        """Another instance's finished answer: a JSON ``body``, or a stream's ``chunks``."""
        if self.state is not State.CALLING:
            return
        self.request_id, self.stream = request_id, stream
        if body is not None:
            self.complete(status, headers, body)
            return
        self.status, self.headers = status, headers
        self.chunks = list(chunks)
        self.size = sum(len(c) for c in chunks)
        self._settle(State.DONE)

    def fail(self, error: GatewayError) -> None:
        """The first request failed: those waiting get ``error`` (in their own format)."""
        if self.state in (State.DONE, State.FAILED):
            return
        self.error = error
        self._settle(State.FAILED)

    def start(self, reply: Reply, headers: dict[str, str], *, owns: bool,
              finish: Callable[[Reply, BaseException | None], Awaitable[None]]) -> None:
        """Read ``reply``'s stream into the buffer from a task of its own.

        Takes ``reply.frames``, ``source`` and ``close``. With ``owns`` (the first
        client left before it could relay the answer) the pump also ends the answer
        itself: ``finish`` and ``on_end``, as the pipeline does when it relays it.
        """
        self.state = State.STREAMING
        self.status, self.headers = reply.status, headers
        frames, source, close = reply.frames, reply.source, reply.close
        assert frames is not None
        reply.source = reply.close = None
        self.task = asyncio.get_running_loop().create_task(
            self._pump(reply, frames, source, close, finish if owns else None))

    async def _pump(
        self, reply: Reply, frames: AsyncIterator[bytes], source: AsyncIterator[object] | None,
        close: Callable[[], None] | None,
        finish: Callable[[Reply, BaseException | None], Awaitable[None]] | None,
    ) -> None:
        failure: BaseException | None = None
        try:
            async with aclosing(frames):  # type: ignore[type-var]
                async for chunk in frames:
                    self._append(chunk)
            self.flawed = self.flawed or reply.failure is not None  # an upstream error frame
            self._settle(State.DONE)
        except GatewayError as err:
            failure = reply.failure = err
            self.fail(err)
        except asyncio.CancelledError as exc:  # nobody wants it any more
            failure = exc
            self.fail(GatewayError("Every client of this idempotency key left.", status=499,
                                   code="client_closed"))
            if close is not None:
                close()
            raise
        except Exception as exc:  # a bug: the stream still ends well-formed for everyone
            log.exception("the shared stream of request %s failed", self.request_id)
            failure = reply.failure = exc
            self.fail(GatewayError(f"Internal error while relaying the stream: "
                                   f"{type(exc).__name__}"))
        finally:
            if source is not None:
                with suppress(Exception):
                    await source.aclose()  # type: ignore[attr-defined]
            if finish is not None:  # the answer is ours to end (its first client left)
                await finish(reply, failure or reply.failure or ConnectionResetError(
                    "the first client left"))
                if reply.on_end is not None:
                    with suppress(Exception):
                        await reply.on_end()

    def _append(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self._trim()
        self._notify()

    def _trim(self) -> None:
        """Keep the buffer under ``max_bytes``: drop what every reader passed, then cut
        the slowest readers. The answer is no longer whole (never replayed after)."""
        self.whole = False
        while self.size > self.max_bytes and self.chunks:
            end = self.base + len(self.chunks)
            floor = min((r.position for r in self.readers), default=end)
            if floor > self.base:
                drop = floor - self.base
                self.size -= sum(len(c) for c in self.chunks[:drop])
                del self.chunks[:drop]
                self.base = floor
                continue
            for reader in self.readers:
                if reader.position == floor:  # the slowest: it would need what must go
                    reader.cut = True
            self.readers = [r for r in self.readers if not r.cut]

    def _settle(self, state: State) -> None:
        self.state = state
        self._notify()
        self._settled(self)

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ------------------------------------------------------------------ reading

    async def settled(self, within: float, started: bool = False) -> None:
        """Wait until the answer is final (or, with ``started``, until its stream started).

        :raises IdempotencyTimeout: after ``within`` seconds.
        """
        self.waiting += 1
        try:
            async with asyncio.timeout(within):
                while self.state is State.CALLING or (
                        not started and self.state is State.STREAMING):
                    await self._changed.wait()
        except TimeoutError:
            raise IdempotencyTimeout(
                f"The first request with this idempotency key ({self.request_id}) is still "
                f"running after {within:g}s; retry later.") from None
        finally:
            self.waiting -= 1

    def reader(self, idle: float, *, first: bool = False) -> Reader:
        """A reader of the stream from its start (``first``: the first request's own)."""
        if not self.whole:
            raise IdempotencyUnavailable(
                "The first answer with this idempotency key is too large to share; send the "
                "request again with a new key.")
        reader = Reader(self, idle, first)
        if self.state in (State.CALLING, State.STREAMING):  # chunks may still come
            self.readers.append(reader)
        return reader

    def error_copy(self) -> GatewayError:
        """The first request's error, for one duplicate (its headers are its own)."""
        error = self.error
        assert error is not None
        err = type(error).__new__(type(error))  # a copy: its constructor's arguments vary
        err.args = error.args
        err.__dict__.update(error.__dict__)
        err.headers = {k: v for k, v in error.headers.items()
                       if not k.startswith("X-OmniRoute-")}
        return err


class Reader:
    """One client's view of a shared stream (an async iterator of its chunks)."""

    def __init__(self, answer: SharedAnswer, idle: float, first: bool) -> None:
        self.answer = answer
        self.idle = idle
        self.first = first
        self.position = 0
        self.cut = False
        self.closed = False

    def __aiter__(self) -> Reader:
        return self

    async def __anext__(self) -> bytes:
        answer = self.answer
        while True:
            at = self.position - answer.base
            if self.cut or at < 0:
                raise IdempotencyUnavailable(
                    "This client fell too far behind the shared stream of its idempotency "
                    "key; send the request again with a new key.")
            if at < len(answer.chunks):
                self.position += 1
                return answer.chunks[at]
            if answer.state is State.DONE:
                await self.aclose()
                raise StopAsyncIteration
            if answer.state is State.FAILED:
                assert answer.error is not None
                await self.aclose()
                raise answer.error_copy()
            changed = answer._changed
            try:
                async with asyncio.timeout(self.idle):
                    await changed.wait()
            except TimeoutError:
                raise IdempotencyTimeout(
                    f"The shared stream of this idempotency key sent nothing for "
                    f"{self.idle:g}s.") from None

    async def aclose(self) -> None:
        """Detach. The first client's reader then waits for the pump while others still
        read, so that its request ends (and is recorded) with the upstream call; the last
        reader to leave an unfinished stream stops the upstream."""
        if self.closed:
            return
        self.closed = True
        answer = self.answer
        with suppress(ValueError):
            answer.readers.remove(self)
        task = answer.task
        if task is None or task.done():
            return
        if not answer.wanted():
            task.cancel()
        if self.first or task.cancelling():
            await asyncio.wait({task})  # bounded by the upstream's own timeouts
