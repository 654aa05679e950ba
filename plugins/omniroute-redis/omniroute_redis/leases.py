"""Slots under a concurrency and a requests-per-minute limit, taken atomically in Redis.

One :class:`Leases` per gateway serves both kinds of limit that must hold across
instances: a connection's (``max_concurrency``, ``rpm``: the limiter's
:class:`~omniroute.resilience.state.SharedSlots`, :class:`ConnectionSlots`) and an
API key's (``concurrency``, ``rpm``: the budgets' shared ledger).

A slot is a member of a sorted set scored by the end of its **lease**: a
gateway that dies without giving its slots back loses them after
:data:`LEASE` seconds, while a living one renews the leases of the slots it
holds (:meth:`Leases.renew`, from the state's periodic sync). A request start
is a member of another sorted set scored by its time, trimmed to the rolling
minute, so the count is exact across instances. Taking is the ``take`` script:
one round trip, atomic; giving back is queued with the other writes that
follow an answer (:class:`~omniroute_redis.batch.Batch`).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import TypeVar, cast

from omniroute.resilience.limits import SHARED_POLL

from omniroute_redis.batch import Batch, Write
from omniroute_redis.link import Link, Unanswered, Unreachable
from omniroute_redis.prefetch import BEFORE, CALL, UNREACHABLE, Prefetch, Step
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import NoScript, bulk, bulks

#: seconds a slot is held without a renewal (a gateway that died frees its slots then)
LEASE = 30.0

#: the lease as the ``take`` script's argument (packed once, not per request)
_LEASE = repr(LEASE)
#: the limits whose key names are kept (:meth:`Leases._take_command`)
NAMES_KEPT = 4096

T = TypeVar("T")

#: what :meth:`Leases.take` found: taken, the concurrency is full, or seconds until
#: the rolling minute frees a start
TAKEN, FULL = 0.0, -1.0


class Leases:
    """Slots and starts in Redis, and the slots this gateway holds (to renew and give back)."""

    def __init__(self, link: Link, scripts: Scripts, batch: Batch, instance: str) -> None:
        self.link = link
        self.scripts = scripts
        self.batch = batch
        self.instance = instance
        self._ids = itertools.count(1)
        #: a limit's key names (its slots and starts), by its prefix (never changed: the
        #: steps share them)
        self._names: dict[str, list[str]] = {}
        #: what of a limit's commands is packed once, by its prefix and limits
        #: (:meth:`packing`), and the ``ZREM`` of a member of its slots (the member to
        #: follow), by its prefix
        self._packed: dict[tuple[str, int | None, int | None],
                           tuple[str, bytes, bytes, bytes, bytes]] = {}
        self._zrem: dict[str, bytes] = {}
        #: a limit's prefix -> the members of its slots this gateway holds, each as a bulk
        #: string (:func:`~omniroute_redis.wire.bulk`: given back as it is)
        self.held: defaultdict[str, list[bytes]] = defaultdict(list)
        self._instance = instance.encode()

    def member(self) -> str:
        """A name no other request of any instance uses."""
        return f"{self.instance}:{next(self._ids)}"

    def packed_member(self) -> bytes:
        """:meth:`member` as a bulk string."""
        raw = b"%b:%d" % (self._instance, next(self._ids))
        return b"$%d\r\n%b\r\n" % (len(raw), raw)

    async def take(self, name: str, concurrency: int | None, rpm: int | None) -> float:
        """Take a slot of limit ``name`` (a key prefix): :data:`TAKEN`, :data:`FULL`, or the
        seconds until the minute frees a start.

        :raises Unreachable: Redis cannot be reached (bounded by the link's timeout); when
            its answer was lost, the slot it may have taken is given back once Redis answers.
        """
        member = self.member()
        keys, args = self._take_command(name, member, concurrency, rpm)
        try:
            found = await self.scripts.call(self.link, "take", keys, args)
        except Unanswered:
            self.batch.give_back([("ZREM", keys[0], member)])
            raise
        return self._taken(found, name, member, concurrency)

    def packing(self, name: str, concurrency: int | None, rpm: int | None
                ) -> tuple[str, bytes, bytes, bytes, bytes]:
        """What of limit ``name``'s commands is packed once: its slots' key; its two keys;
        the ``ZREM`` of a member of its slots, and of its starts (the member to follow);
        the ``take`` script's arguments after the member."""
        known = self._packed.get((name, concurrency, rpm))
        if known is None:
            if len(self._packed) >= NAMES_KEPT:
                self._packed.clear()
                self._zrem.clear()
            slots, starts = self._keys(name)
            zrem = self._zrem[name] = b"*3\r\n" + bulks(("ZREM", slots))
            known = self._packed[name, concurrency, rpm] = (
                slots, bulks((slots, starts)), zrem,
                b"*3\r\n" + bulks(("ZREM", starts)),
                bulks(("" if concurrency is None else concurrency, "" if rpm is None else rpm,
                       _LEASE)))
        return known

    def _take_command(self, name: str, member: str, concurrency: int | None,
                      rpm: int | None) -> tuple[list[str], list[object]]:
        return (self._keys(name), [member, "" if concurrency is None else concurrency,
                                   "" if rpm is None else rpm, _LEASE])

    def _keys(self, name: str) -> list[str]:
        """Limit ``name``'s keys: its slots and its starts (kept, and packed once)."""
        keys = self._names.get(name)
        if keys is None:
            if len(self._names) >= NAMES_KEPT:
                self._names.clear()
            keys = self._names[name] = [f"{name}:slots", f"{name}:starts"]
        return keys

    def _taken(self, found: object, name: str, member: str, concurrency: int | None) -> float:
        taken = slot_answer(found)
        if taken == TAKEN and concurrency is not None:
            self.held[name].append(bulk(member.encode()))
        return taken

    def give(self, name: str) -> None:
        """Give back one slot of limit ``name`` held here (queued to go with the writes of
        the request's end: one round trip for all of them); none held: nothing.

        Slots of one limit are interchangeable, so any held member will do.
        """
        held = self.held
        members = held.get(name)
        if not members:
            return
        member = members.pop()
        if not members:
            del held[name]
        zrem = self._zrem.get(name)
        if zrem is None:
            zrem = b"*3\r\n" + bulks(("ZREM", f"{name}:slots"))
        self.batch.later(zrem + member)

    async def renew(self) -> None:
        """Extend the leases of every slot held here (one pipelined round trip).

        :raises Unreachable: Redis cannot be reached.
        """
        renewals = [self.scripts.command("renew", [self._keys(name)[0]],
                                         [LEASE, *(m[m.index(b"\n") + 1:-2] for m in members)])
                    for name, members in self.held.items() if members]
        if renewals:
            results = await self.link.commands(renewals)
            if any(isinstance(r, NoScript) for r in results):
                await self.scripts.reload_for(self.link, renewals)


class Take(Step[T]):
    """:meth:`Leases.take` as a step of a request's batch; :meth:`read` answers what
    :meth:`Leases.take` returns (None: Redis cannot be reached). A slot taken is held
    here from its answer on (its lease renewed, even before it is read); one never read
    is given back, its start too; one whose answer was lost is given back blindly (its
    start stays: the request goes on with its own decision, and counts in the rolling
    minute)."""

    name, nkeys, nargs, head = "take", 2, 4, "take 2 4"
    __slots__ = ("concurrency", "leases", "limit", "packed_member", "zrem_slots",
                 "zrem_starts")

    def __init__(self, leases: Leases, name: str, concurrency: int | None, rpm: int | None,
                 phase: int = BEFORE) -> None:
        packed_member = self.packed_member = leases.packed_member()
        _, keys, self.zrem_slots, self.zrem_starts, tail = leases.packing(
            name, concurrency, rpm)
        # (Step.__init__'s, in line: a call fewer per step)
        self.keys, self.args, self.phase = keys, packed_member + tail, phase
        self.raw, self.ran, self.done = None, False, False
        self.leases, self.limit, self.concurrency = leases, name, concurrency

    def read(self, raw: object) -> T:
        return cast(T, None if raw is UNREACHABLE else slot_answer(raw))

    def took(self) -> None:
        if self.concurrency is not None and self.raw == b"0":
            self.leases.held[self.limit].append(self.packed_member)

    def undo(self, raw: object) -> None:
        if raw == b"0":
            if self.concurrency is not None:  # one held here (slots of one limit are
                self.leases.give(self.limit)  # interchangeable)
            self.leases.batch.later(self.zrem_starts + self.packed_member)

    def forget(self) -> list[Write]:  # its start stays: the request goes on, and counts
        return [self.zrem_slots + self.packed_member]


class Ahead(Take[float | None]):
    """A connection's slot taken with a request's batch: once taken, it waits in
    :attr:`ConnectionSlots.ahead` for the request's first attempt there (only a slot
    taken does)."""

    __slots__ = ("connection", "owner")

    def __init__(self, owner: ConnectionSlots, connection: str, max_concurrency: int | None,
                 rpm: int | None) -> None:
        super().__init__(owner.leases, f"{owner.prefix}:{connection}", max_concurrency, rpm,
                         CALL)
        self.owner, self.connection = owner, connection

    def took(self) -> None:
        if self.raw == b"0":  # (Take.took's, in line)
            if self.concurrency is not None:
                self.leases.held[self.limit].append(self.packed_member)
            self.owner.ahead.setdefault(self.connection, []).append(self)

    def undo(self, raw: object) -> None:
        ahead = self.owner.ahead
        waiting = ahead.get(self.connection)
        if waiting is not None and self in waiting:
            waiting.remove(self)
            if not waiting:
                del ahead[self.connection]
        super().undo(raw)


class ConnectionSlots:
    """A connection's limits across instances: the resilience store's ``slots``
    (:class:`~omniroute.resilience.state.SharedSlots`).

    A slot taken ahead with a request's batch (:meth:`prefetch`) waits here until a
    request asks for one of that connection: slots of one limit are interchangeable,
    so the first to ask takes it without a round trip (normally the request that took
    it; the batch gives it back when the request ends with it unused)."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.prefix = leases.link.key("conn")
        #: connection id -> slots taken ahead, not asked for yet
        self.ahead: dict[str, list[Ahead]] = {}

    def prefetch(self, batch: Prefetch, name: str, max_concurrency: int | None,
                 rpm: int | None) -> None:
        """Queue a take of ``name``'s slot on ``batch`` (after every other step)."""
        batch.add(Ahead(self, name, max_concurrency, rpm))

    def taken_ahead(self, name: str) -> Ahead | None:
        waiting = self.ahead.get(name)
        if not waiting:
            return None
        step = waiting.pop()
        if not waiting:
            del self.ahead[name]
        return step

    async def take(self, name: str, max_concurrency: int | None, rpm: int | None) -> float | None:
        step = self.taken_ahead(name)
        if step is not None:  # taken ahead: no round trip
            return step.result()
        try:
            found = await self.leases.take(f"{self.prefix}:{name}", max_concurrency, rpm)
        except Unreachable:
            return None
        return SHARED_POLL if found == FULL else found

    def give(self, name: str) -> None:
        self.leases.give(f"{self.prefix}:{name}")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def slot_answer(found: object) -> float:
    """The ``take`` script's answer: :data:`TAKEN`, :data:`FULL` or seconds to wait."""
    if found == b"0":  # (the reply, as the request path's connection reads it)
        return TAKEN
    text = _text(found)
    if text == "0":
        return TAKEN
    if text == "c":
        return FULL
    return float(text)

