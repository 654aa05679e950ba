"""The writes that follow an answer, sent together: one pipelined round trip.

A request that is over gives back its slots and settles its reservation;
neither has to hold its answer. Each is queued here as one atomic command or
script (:meth:`Batch.add`) and the writer sends everything queued since its
last round trip in one pipeline, in the turn of the event loop after the
request's end (several requests that end together share it), or in front of a
request's batch sent before it, in the same write to the socket
(:meth:`Batch.ride`; Redis runs them first, so a slot given back is free for the
take that follows). A write made while its request still runs (a connection's
slot given back as the answer arrives, a session bound) is queued ``later``: it
goes with the writes of the request's end (:meth:`Batch.kick`), so that a
request's writes after its answer are one round trip. The writes are not held
for a later request's batch: the other instances admit against what they free.
While Redis cannot be reached the writes are dropped, and counted:
what they would have freed expires on its own (slot and reservation leases),
and spend is repaired from the instances' own ledgers when Redis is back.

The exception are the **give-backs** of a request's batch whose answer was lost
(late, the connection broke, a script's error partway: :meth:`Batch.give_back`):
what its steps took is unknown, so each step's blind undo (it names only that
request's own slot member, reservation or claim: harmless where the step never
ran) is kept until Redis answers again, then sent with the next writes.

Sending costs the request path little: the writes go out from a callback of the
event loop (no task wakes, nothing awaits them: one future gets all their replies,
which Redis sends in order, and a callback reads them: :meth:`Wire.send_group
<.wire.Wire.send_group>`), bounded by the link's watchdog
(:meth:`Link.bound <.link.Link.bound>`). A task takes over only where an await is
needed: opening the connection, loading scripts Redis forgot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from typing import Any

from omniroute_redis.link import Link, Unreachable
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import Command, NoScript, WireError, Writes

log = logging.getLogger(__name__)

#: writes waiting past this are dropped (counted): Redis is far behind
QUEUE_MAX = 10_000
#: seconds a write queued ``later`` waits at most for the writer (one that is not
#: followed by the end of its request, :meth:`Batch.kick`)
LATER = 0.005

#: one command: ``("ZREM", key, member)``, or a script's (:meth:`Scripts.command`), or
#: one packed already (:meth:`Scripts.packed`: the request path's)
Write = Command


class Batch:
    """Queued writes and the task that sends them (``start`` / ``close``)."""

    def __init__(self, link: Link, scripts: Scripts) -> None:
        self.link = link
        self.scripts = scripts
        self._queue: list[Write] = []
        #: blind undos, kept while Redis cannot be reached (:meth:`give_back`)
        self._undos: list[Write] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: the loop the writer runs on, once started (asking asyncio for the running loop
        #: costs a ``getpid`` system call each time)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the timer that sends writes queued ``later`` that no kick followed (left to
        #: run when a kick came first: it then finds nothing, or the next ones)
        self._later: asyncio.TimerHandle | None = None
        #: a send is due in this turn of the event loop (:meth:`_soon`)
        self._due = False
        #: the replies of the pipelines sent and not answered yet (a future's, for writes
        #: that rode in front of a request's batch)
        self._inflight: set[asyncio.Future[Any] | Writes] = set()
        #: requests whose batch is not released yet (:class:`~.prefetch.Prefetch`): while
        #: one is, a kick follows every write queued :meth:`later`
        self.open = 0
        self.sent = self.dropped = self.round_trips = 0

    def add(self, write: Write, *, later: bool = False) -> None:
        """Queue one command; never blocks, never raises.

        :param later: do not send it at once: it goes with the next write that is, or
            with the next :meth:`kick`, or after :data:`LATER` seconds.
        """
        if not self.link.up or len(self._queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        self._queue.append(write)
        if not later:
            self._soon()
        elif self._later is None and self._loop is not None:
            self._later = self._loop.call_later(LATER, self._timed)

    def later(self, write: Write) -> None:
        """:meth:`add` ``later``, on the request path (a slot given back, a spend settled, an
        answer kept, a cache entry stored): while a request's batch is open its release
        kicks the writer (:meth:`kick`), so no timer is armed, and the bound on the queue
        is kept by :meth:`kick` (a write costs one append)."""
        if self.link.up:
            self._queue.append(write)
            if not self.open and self._later is None and self._loop is not None:
                self._later = self._loop.call_later(LATER, self._timed)
        else:
            self.dropped += 1

    def give_back(self, writes: list[Write]) -> None:
        """Queue blind undos (the answer of what they undo was lost): they go with the
        next writes, or once Redis answers again (:meth:`recovered`); never blocks, never
        raises. Past :data:`QUEUE_MAX` waiting they are dropped (counted): what they
        would have freed expires on its own."""
        if len(self._undos) + len(writes) > QUEUE_MAX:
            self.dropped += len(writes)
            return
        self._undos.extend(writes)
        if self.link.up and self._later is None and self._loop is not None:
            self._later = self._loop.call_later(LATER, self._timed)

    def kick(self) -> None:
        """Send what is queued (a request is over: its writes are all in) in this turn of
        the event loop: what the tasks woken by the request's end queue in it (the
        cache's store) goes along, and so does it in front of a request's batch sent in
        this turn (:meth:`ride`). Not later: the other instances admit against what it
        frees (a slot, a reservation settled)."""
        queue = self._queue
        if queue:
            if len(queue) > QUEUE_MAX:  # (:meth:`later` appends without looking)
                self.dropped += len(queue) - QUEUE_MAX
                del queue[QUEUE_MAX:]
            if not self._due:  # (_soon's, in line: a call fewer a request)
                loop = self._loop
                if loop is None:  # not started: the writer sends it once it is
                    self._wake.set()
                else:
                    self._due = True
                    loop.call_soon(self._send)
        elif self._undos and self.link.up:
            self._soon()

    def ride(self) -> tuple[list[Write], int] | None:
        """The writes queued, taken to go before a request's batch in its write to the
        socket (:meth:`Link.command <.link.Link.command>`), and how many of them are not
        give-backs; None: none."""
        if not self._queue and not self._undos:
            return None
        writes, self._queue = self._queue, []
        count = len(writes)
        if self._undos:
            writes += self._undos
            self._undos = []
        return writes, count

    def rode(self, ride: tuple[list[Write], int], replies: asyncio.Future[list[Any]]) -> None:
        """They were sent: their replies (one group, :meth:`Wire.send_group
        <.wire.Wire.send_group>`) are read as a pipeline's (:meth:`_answered`); the
        request's own reply after them is bounded by the link's watchdog."""
        sent, count = ride
        self._inflight.add(replies)
        replies.add_done_callback(partial(self._answered, sent, count))

    def unride(self, ride: tuple[list[Write], int]) -> None:
        """They were not sent (the connection broke first): queued again, in front."""
        sent, count = ride
        self._queue[:0] = sent[:count]
        self._undos[:0] = sent[count:]

    def _soon(self) -> None:
        if self._loop is None:  # not started: the writer sends it once it is
            self._wake.set()
        elif not self._due:
            self._due = True
            self._loop.call_soon(self._send)

    def _timed(self) -> None:
        self._later = None
        if self._queue or self._undos:  # (nearly always sent already, by a kick)
            self._send()

    def _send(self) -> None:
        """Send what is queued in one pipeline, from a callback: nothing waits for it
        (:meth:`_answered` reads the replies, called by the read that completes them:
        :class:`~.wire.Writes`). One pipeline is on its way at a time: what is queued
        meanwhile goes when its answer is in, together (under load, one pipeline a
        round trip carries the writes of every request that ended in it). Without an
        open connection, the task sends it (:meth:`flush`: it connects)."""
        self._due = False
        if self._inflight:  # _answered sends it
            return
        wire = self.link.ready()
        if wire is None:
            if self._queue or (self._undos and self.link.up):
                self._wake.set()
            return
        sent = self._queue
        count = len(sent)
        self._queue = []
        if self._undos:
            sent += self._undos
            self._undos = []
        if not sent:
            return
        try:
            replies = wire.send_writes(sent, partial(self._answered, sent, count))
        except WireError as exc:  # (broken since ready(): not sent)
            self.link.lost(exc)
            self.dropped += count
            self._undos[:0] = sent[count:]
            return
        self.link.bound(replies)
        self._inflight.add(replies)

    def _answered(self, sent: list[Write], count: int,
                  replies: Writes | asyncio.Future[list[Any]]) -> None:
        """The replies of a pipeline are in (the list of them, an error reply in place of
        its result), or they failed (the connection broke, or they did not come in
        time). ``replies``: its :class:`~.wire.Writes` (:meth:`_send`), or the future of
        writes that rode in front of a request's batch (:meth:`rode`)."""
        self._inflight.discard(replies)
        if type(replies) is Writes and replies.error is None and NoScript not in map(
                type, replies.found):  # (every write answered, as nearly always)
            self.sent += len(sent)
            self.round_trips += 1
            if self._queue or (self._undos and self.link.up):  # queued meanwhile
                self._send()
            return
        if isinstance(replies, Writes):
            failure, results = replies.error, replies.found
        else:
            failure = (replies.exception() if not replies.cancelled()
                       else WireError("cancelled"))
            results = replies.result() if failure is None else []
        if failure is not None:
            self.link.lost(failure)
            self.dropped += count
            self._undos[:0] = sent[count:]  # sent again once Redis answers (harmless twice)
            return
        missing = ([w for w, r in zip(sent, results, strict=True) if isinstance(r, NoScript)]
                   if NoScript in map(type, results) else None)  # (C: no Python per reply)
        self.sent += len(sent) - (len(missing) if missing else 0)
        self.round_trips += 1
        if missing:  # Redis forgot the scripts (it restarted): the task loads them
            self._queue[:0] = missing
            self._wake.set()
        elif self._queue or (self._undos and self.link.up):  # queued meanwhile
            self._send()

    async def recovered(self) -> None:
        """Redis answers again (a :meth:`Link.on_recovery <.link.Link.on_recovery>`
        callback): the give-backs kept meanwhile go now."""
        await self.flush()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="omniroute-redis-writes")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued now, in one pipeline, and wait for the pipelines sent
        before it to be answered."""
        while self._inflight:  # (each is answered, or failed, within the link's bound)
            futures = [f for f in self._inflight if not isinstance(f, Writes)]
            if futures:
                await asyncio.wait(futures)
            else:
                await asyncio.sleep(0.001)
        writes, self._queue = self._queue, []
        undos: list[Write] = []
        if self._undos and self.link.up:
            undos, self._undos = self._undos, []
        if not writes and not undos:
            return

        try:
            missing = writes + undos
            for _ in range(2):  # again, once, for the scripts a restarted Redis forgot
                results = await self.link.commands(missing)
                missing = [w for w, r in zip(missing, results, strict=True)
                           if isinstance(r, NoScript)]
                if not missing:
                    break
                await self.scripts.reload_for(self.link, missing)
        except Unreachable:
            self.dropped += len(writes)
            self._undos[:0] = undos  # sent again once Redis answers (each is harmless twice)
            return
        self.sent += len(writes) + len(undos)
        self.round_trips += 1

    async def close(self) -> None:
        """Send what is left (bounded by the link's timeout), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._loop = None
        if self._later is not None:
            self._later.cancel()
            self._later = None
        await self.flush()

