"""The writes that follow an answer, sent together: one pipelined round trip.

A request that is over gives back its slots and settles its reservation;
neither has to hold its answer. Each is queued here as one atomic command or
script (:meth:`Batch.add`) and the writer sends everything queued since its
last round trip in one pipeline, at once (several requests that end together
share it). A write made while its request still runs (a connection's slot given
back as the answer arrives, a session bound) is queued ``later``: it goes with
the writes of the request's end (its settle, or :meth:`Batch.kick` when the
request is over), so that a request's writes after its answer are one round
trip. While Redis cannot be reached the writes are dropped, and counted:
what they would have freed expires on its own (slot and reservation leases),
and spend is repaired from the instances' own ledgers when Redis is back.

The exception are the **give-backs** of a request's batch whose answer was lost
(late, the connection broke, a script's error partway: :meth:`Batch.give_back`):
what its steps took is unknown, so each step's blind undo (it names only that
request's own slot member, reservation or claim: harmless where the step never
ran) is kept until Redis answers again, then sent with the next writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from omniroute_redis.link import Link, Unreachable
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import NoScript

log = logging.getLogger(__name__)

#: writes waiting past this are dropped (counted): Redis is far behind
QUEUE_MAX = 10_000
#: seconds a write queued ``later`` waits at most for the writer (one that is not
#: followed by the end of its request, :meth:`Batch.kick`)
LATER = 0.005

#: one command: ``("ZREM", key, member)``, or a script's (:meth:`Scripts.command`)
Write = tuple[Any, ...]


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
        self._later: asyncio.TimerHandle | None = None
        self.sent = self.dropped = self.round_trips = 0

    def add(self, write: Write, *, later: bool = False) -> None:
        """Queue one command; never blocks, never raises.

        :param later: do not wake the writer for it: it goes with the next write that
            does, or with the next :meth:`kick`, or after :data:`LATER` seconds.
        """
        if not self.link.up or len(self._queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        self._queue.append(write)
        if not later:
            self._wake.set()
        elif self._later is None and self._task is not None:
            self._later = asyncio.get_running_loop().call_later(LATER, self._wake.set)

    def give_back(self, writes: list[Write]) -> None:
        """Queue blind undos (the answer of what they undo was lost): they go with the
        next writes, or once Redis answers again (:meth:`recovered`); never blocks, never
        raises. Past :data:`QUEUE_MAX` waiting they are dropped (counted): what they
        would have freed expires on its own."""
        if len(self._undos) + len(writes) > QUEUE_MAX:
            self.dropped += len(writes)
            return
        self._undos.extend(writes)
        if self.link.up and self._later is None and self._task is not None:
            self._later = asyncio.get_running_loop().call_later(LATER, self._wake.set)

    def kick(self) -> None:
        """Send what is queued now (a request is over: its writes are all in)."""
        if self._queue or (self._undos and self.link.up):
            self._wake.set()

    async def recovered(self) -> None:
        """Redis answers again (a :meth:`Link.on_recovery <.link.Link.on_recovery>`
        callback): the give-backs kept meanwhile go now."""
        await self.flush()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="omniroute-redis-writes")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._later is not None:
                self._later.cancel()
                self._later = None
            await self.flush()

    async def flush(self) -> None:
        """Send what is queued now, in one pipeline."""
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
        if self._later is not None:
            self._later.cancel()
            self._later = None
        await self.flush()
