"""Hedging: when a target is slow to give its first byte, the next one races it.

Without hedging a hung upstream holds a request for ``first_byte_timeout``
before the next target is tried, however healthy that one is. With it (the
``hedge`` setting, on by default) a call that still has no first byte after
its bound keeps running and the next target starts beside it; the first
answer wins. The bound is :meth:`Resilience.hedge_after
<omniroute.resilience.Resilience.hedge_after>`: ``hedge_factor`` times the
p95 of the target's recent first-byte times (its model, on this lane: stream
or JSON), at least ``hedge_floor``, and ``hedge_initial`` while it has too
few of them.

* The losers are cancelled: each closes its upstream connection and releases
  its account slot, and none is charged (slow is not wrong). One that was
  raced counts its wait as a first-byte time, so a target that is always
  slow gets a later bound rather than a second call on every request.
* Only first bytes race (an operation's call returns at the first byte), so
  no part of an answer is ever sent twice.
* A failure moves on as it does without hedging: the next target starts at
  once; a client's own mistake ends the race and goes back to the client.
* Every call counts in ``record.attempts`` (so in
  ``X-OmniRoute-Fallback-Attempts``); the record names the target that won.

The pipeline races only metered operations (chat, embeddings) whose plan has
more than one target; a single target takes the plain path.

What it costs when nothing is slow: the first call runs in the request's own
task, under a timer, exactly as without hedging. Only when the timer fires
does the next call start, as a task of its own; if that one wins, it cancels
the request's task the way :func:`asyncio.timeout` does, which interrupts the
first call where it waits (closing its connection) and is then taken back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass

from omniroute.pipeline.attempts import Failures, tried
from omniroute.pipeline.context import Closable, Reply, RequestContext
from omniroute.pipeline.operation import Operation
from omniroute.resilience import Attempt, Resilience
from omniroute.routing import Target

log = logging.getLogger(__name__)

#: a metered call's outcome: its reply with the attempt still open, or None after a
#: failure worth moving on from (see :func:`~omniroute.pipeline.attempts.try_target`)
Tried = tuple[Reply | None, Attempt] | None


def lane(ctx: RequestContext) -> str:
    """Which first-byte times a request is measured against: ``"stream"`` or ``"json"``."""
    return "stream" if ctx.stream else "json"


@dataclass(eq=False, slots=True)
class _Call:
    """One target's call in a race."""

    target: Target
    #: the resilience clock when it started (its wait, should it lose after being raced)
    started: float
    #: seconds without a first byte after which the next target starts beside it
    bound: float | None
    #: its own task; None for the first call, which runs in the request's task
    task: asyncio.Task[None] | None = None
    #: the timer that starts the next target (None: none, or no longer needed)
    timer: asyncio.TimerHandle | None = None
    #: its deadline passed and the next target was started
    raced: bool = False
    #: it failed in a way worth moving on from (the next target starts at once)
    failed: bool = False
    done: bool = False
    #: its answer and open attempt, once it has one
    answer: tuple[Reply, Attempt] | None = None


class Race:
    """The calls of one request: the next one starts whenever the latest is slow or failed."""

    def __init__(
        self, resilience: Resilience, operation: Operation, ctx: RequestContext,
        targets: Sequence[Target], failures: Failures, one: Callable[[Target], Awaitable[Tried]],
    ) -> None:
        """
        :param failures: why each target failed, added to as they fail.
        :param one: calls one target with its account's accounting, adding to
            ``failures`` (:func:`~omniroute.pipeline.attempts.try_target`).
        """
        self.resilience = resilience
        self.operation = operation
        self.ctx = ctx
        self.failures = failures
        self.one = one
        self.lane = lane(ctx)
        self.calls: list[_Call] = []
        self.winner: _Call | None = None
        #: a client's mistake (or a bug) from a call: the race ends with it
        self.error: BaseException | None = None
        self._targets = targets
        self._next = 0  # the next target to look at
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._inline: _Call | None = None  # the call running in the request's task
        self._interrupted = False  # a winner (or an error) cancelled the request's task
        self._wakeup: asyncio.Future[None] | None = None
        self._handed_over = False
        self._over = False

    async def run(self) -> Reply | None:
        """The winner's reply (its attempt still open), or None when every target failed."""
        try:
            first = self._new_call()
            if first is None:
                return None  # no target can serve this operation
            await self._run_inline(first)
            while True:
                if self.winner is not None:
                    return self._hand_over(self.winner)
                if self.error is not None:
                    raise self.error
                if all(call.done for call in self.calls):
                    return None  # every target failed
                self._wakeup = self._loop.create_future()
                await self._wakeup
        finally:
            await self._settle()

    async def _run_inline(self, call: _Call) -> None:
        """The first call, in the request's own task (no task, no wait: only a timer)."""
        task = self._task
        assert task is not None
        cancelling = task.cancelling()
        self._inline = call
        try:
            await self._attempt(call)
        except asyncio.CancelledError:
            # taken back only when the race cancelled us, and nobody else did
            if not (self._interrupted and task.uncancel() <= cancelling):
                raise
        except BaseException:
            self._name(call.target)  # its error goes back: the record names who gave it
            raise
        finally:
            self._inline = None
            self._finished(call)

    async def _run_task(self, call: _Call) -> None:
        """A call that started because the one before it was slow, or failed."""
        try:
            await self._attempt(call)
        except Exception as exc:  # noqa: BLE001 - the request's task raises it (see run)
            # a client's mistake, or a bug: it ends the race
            if self.winner is None and self.error is None:
                self.error = exc
                self._name(call.target)
                self._cancel_others(call)
            else:
                log.info("%s: %s failed after the race was decided: %s",
                         self.ctx.record.request_id, call.target.label, exc)
        finally:
            self._finished(call)

    async def _attempt(self, call: _Call) -> None:
        """Call the target; the first to answer wins and cancels the others."""
        ctx, target, resilience = self.ctx, call.target, self.resilience
        try:
            tried = await self.one(target)
        except asyncio.CancelledError:
            if call.raced and self.winner is not None:  # outrun: slow, not wrong
                resilience.record_outrun(
                    target, resilience.clock.monotonic() - call.started, self.lane)
            raise
        if tried is None:
            log.warning("%s failed for %s: %s", target.label, ctx.record.request_id,
                        self.failures[-1][1])
            call.failed = True
            return
        reply, attempt = tried
        assert reply is not None  # a metered call answers or raises
        attempt.first_byte(self.lane)
        call.answer = reply, attempt
        if self.winner is None and self.error is None and not self._over:
            # claimed, and the others cancelled, before this task yields: a loser
            # never gets to write into the record (usage) after the winner has
            self.winner = call
            self._cancel_others(call)

    def _new_call(self) -> _Call | None:
        """Start a call to the next target that can serve this operation (None: none left)."""
        while self._next < len(self._targets):
            target = self._targets[self._next]
            self._next += 1
            unusable = self.operation.unusable(target)
            if unusable is not None:  # it cannot do this at all: skipped, not charged
                self.failures.append((target, unusable))
                self.ctx.tries.append(tried(target, unusable))
                continue
            bound = None
            if self._next < len(self._targets):  # only when there is a next one to race
                bound = self.resilience.hedge_after(target, self.lane)
            call = _Call(target, self.resilience.clock.monotonic(), bound)
            if bound is not None:
                call.timer = self._loop.call_later(bound, self._slow, call)
            self.calls.append(call)
            return call
        return None

    def _start_task(self) -> None:
        call = self._new_call()
        if call is not None:
            call.task = self._loop.create_task(self._run_task(call))

    def _slow(self, call: _Call) -> None:
        """The timer: ``call`` is past its bound without a first byte; start the next."""
        call.timer = None
        if self._over or self.winner is not None or call.done or call is not self.calls[-1]:
            return
        call.raced = True
        log.info("%s: no first byte from %s within %.1fs; racing the next target",
                 self.ctx.record.request_id, call.target.label, call.bound)
        self._start_task()

    def _finished(self, call: _Call) -> None:
        """A call is over: a failure moves on to the next target at once."""
        call.done = True
        if call.timer is not None:
            call.timer.cancel()
            call.timer = None
        if (call.failed and call is self.calls[-1] and self.winner is None
                and self.error is None and not self._over):
            self._start_task()
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def _cancel_others(self, call: _Call) -> None:
        for other in self.calls:
            if other is call or other.done:
                continue
            if other.task is not None:
                other.task.cancel()
            elif other is self._inline and self._task is not None:
                self._interrupted = True  # see _run_inline
                self._task.cancel()

    def _hand_over(self, call: _Call) -> Reply:
        assert call.answer is not None
        reply, attempt = call.answer
        reply.target, reply.attempt = call.target, attempt
        self._name(call.target)
        self._handed_over = True
        return reply

    def _name(self, target: Target) -> None:
        """The record names this target (each call named its own when it started)."""
        record = self.ctx.record
        record.provider, record.connection_id, record.model = (
            target.prefix, target.connection.id, target.model)

    async def _settle(self) -> None:
        """Stop the timers, cancel the calls still running and wait for them, and
        release answers nobody takes (the client left, or another call won)."""
        self._over = True
        running = []
        for call in self.calls:
            call.done = True
            if call.timer is not None:
                call.timer.cancel()
                call.timer = None
            if call.task is not None and not call.task.done():
                call.task.cancel()  # closes its upstream connection and frees its slot
                running.append(call.task)
        if running:
            await asyncio.wait(running)
        for call in self.calls:
            if call.answer is not None and not (call is self.winner and self._handed_over):
                answer, call.answer = call.answer, None
                await _discard(*answer)


async def _discard(reply: Reply, attempt: Attempt) -> None:
    """Release an answer that will not be sent: its slot, uncharged, and its connection."""
    attempt.end(asyncio.CancelledError())
    for frames in (reply.frames, reply.source):
        if isinstance(frames, Closable):
            with suppress(Exception):
                await frames.aclose()
    if reply.close is not None:
        reply.close()


async def race(
    resilience: Resilience, operation: Operation, ctx: RequestContext,
    targets: Sequence[Target], failures: Failures, one: Callable[[Target], Awaitable[Tried]],
) -> Reply | None:
    """Call ``targets`` in order, racing the next one against a slow one (see the module)."""
    return await Race(resilience, operation, ctx, targets, failures, one).run()
