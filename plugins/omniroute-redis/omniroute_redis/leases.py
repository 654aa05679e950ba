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

from omniroute.budgets import Limits
from omniroute.resilience.limits import SHARED_POLL

from omniroute_redis.batch import Batch, Write
from omniroute_redis.keylease import KeyLeases, Lease
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
#: digits of a member's number: every member of an instance is as long, so its bulk
#: string's header is packed once (:attr:`Leases.head`) and a member is one format. The
#: numbers start at the first with as many digits (:data:`FIRST_ID`), so that a plain
#: ``%d`` formats them (``%016d`` takes CPython's slow path: 430 instructions more)
MEMBER_DIGITS = 16
FIRST_ID = 10 ** (MEMBER_DIGITS - 1)

T = TypeVar("T")

#: what of a limit's commands is packed once (:meth:`Leases.packing`): its slots' key; its
#: two keys; the ``ZREM`` of a member of its slots, and of its starts (the member to
#: follow); the ``take`` script's arguments after the member
Packing = tuple[str, bytes, bytes, bytes, bytes]

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
        #: the members' numbers (a step makes its member in line: :class:`Take`)
        self.ids = itertools.count(FIRST_ID)
        #: a limit's key names (its slots and starts), by its prefix (never changed: the
        #: steps share them)
        self._names: dict[str, list[str]] = {}
        #: what of a limit's commands is packed once, by its prefix and limits
        #: (:meth:`packing`), and the ``ZREM`` of a member of its slots (the member to
        #: follow), by its prefix
        self._packed: dict[tuple[str, int | None, int | None], Packing] = {}
        self._zrem: dict[str, bytes] = {}
        #: a limit's prefix -> the members of its slots this gateway holds, each as a bulk
        #: string (:func:`~omniroute_redis.wire.bulk`: given back as it is)
        self.held: defaultdict[str, list[bytes]] = defaultdict(list)
        #: a limit's prefix -> the members of its slots leased here (:mod:`.keylease`),
        #: renewed with the held ones
        self.leased: dict[str, list[bytes]] = {}
        self.instance_bytes = instance.encode()
        #: a member's bulk string up to its number (``$<length>\r\n<instance>:``): a member
        #: is ``head``, its number in :data:`MEMBER_DIGITS` digits and ``\r\n`` (one format)
        self.head = b"$%d\r\n%b:" % (len(self.instance_bytes) + 1 + MEMBER_DIGITS,
                                      self.instance_bytes)

    def member(self) -> str:
        """A name no other request of any instance uses."""
        return f"{self.instance}:{next(self.ids)}"

    def packed_member(self) -> bytes:
        """:meth:`member` as a bulk string."""
        return b"%b%d\r\n" % (self.head, next(self.ids))

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

    def packing(self, name: str, concurrency: int | None, rpm: int | None) -> Packing:
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

    def slots_key(self, name: str) -> str:
        """Limit ``name``'s slots (a key)."""
        return self._keys(name)[0]

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
        members = self.held.get(name)
        if not members:
            return
        zrem = self._zrem.get(name)  # (an emptied list stays: the next take refills it)
        if zrem is None:
            zrem = b"*3\r\n" + bulks(("ZREM", f"{name}:slots"))
        self.batch.later(zrem + members.pop())

    async def renew(self) -> None:
        """Extend the leases of every slot held here (one pipelined round trip).

        :raises Unreachable: Redis cannot be reached.
        """
        held = self.held
        for name in [n for n, members in held.items() if not members]:
            del held[name]  # (emptied by give(), which leaves them for the next take)
        renewals = [self.scripts.command("renew", [self._keys(name)[0]],
                                         [LEASE, *(m[m.index(b"\n") + 1:-2] for m in members)])
                    for held_here in (self.held, self.leased)
                    for name, members in held_here.items() if members]
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
    tells = True
    __slots__ = ("concurrency", "leases", "limit", "packed_member", "packing")

    def __init__(self, leases: Leases, packing: Packing, limit: str,
                 concurrency: int | None, phase: int = BEFORE) -> None:
        """
        :param packing: limit ``limit``'s :meth:`Leases.packing`, kept by the caller.
        """
        # (packed_member's, in line)
        member = self.packed_member = b"%b%d\r\n" % (leases.head, next(leases.ids))
        # (Step.__init__'s, in line: a call fewer per step)
        self.keys, self.args, self.phase = packing[1], member + packing[4], phase
        self.raw, self.ran, self.done = None, False, False
        self.leases, self.limit, self.concurrency = leases, limit, concurrency
        self.packing = packing

    def read(self, raw: object) -> T:
        return cast(T, None if raw is UNREACHABLE else slot_answer(raw))

    def took(self) -> None:
        if self.concurrency is not None and self.raw == b"0":
            self.leases.held[self.limit].append(self.packed_member)

    def undo(self, raw: object) -> None:
        if raw == b"0":
            if self.concurrency is not None:  # one held here (slots of one limit are
                self.leases.give(self.limit)  # interchangeable)
            self.leases.batch.later(self.packing[3] + self.packed_member)

    def forget(self) -> list[Write]:  # its start stays: the request goes on, and counts
        return [self.packing[2] + self.packed_member]


class Ahead(Take[float | None]):
    """A connection's slot taken with a request's batch: once taken, it waits in
    :attr:`ConnectionSlots.ahead` for the request's first attempt there (only a slot
    taken does)."""

    __slots__ = ("connection", "owner")

    def __init__(self, owner: ConnectionSlots, connection: str, limit: str,
                 max_concurrency: int | None, packing: Packing) -> None:
        leases = owner.leases
        # (Take.__init__'s)
        member = self.packed_member = b"%b%d\r\n" % (leases.head, next(leases.ids))
        self.keys, self.args, self.phase = packing[1], member + packing[4], CALL
        self.raw, self.ran, self.done = None, False, False
        self.leases, self.limit, self.concurrency = leases, limit, max_concurrency
        self.packing, self.owner, self.connection = packing, owner, connection

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
    it; the batch gives it back when the request ends with it unused).

    A connection far from its limits is leased to this instance as a key is
    (:mod:`.keylease`, without a budget): its slots are then taken from the lease, with
    no step in the request's batch."""

    def __init__(self, leases: Leases) -> None:
        self.leases = leases
        self.prefix = leases.link.key("conn")
        #: connection id -> slots taken ahead, not asked for yet (a list may be empty)
        self.ahead: dict[str, list[Ahead | LeasedSlot]] = {}
        #: connection id -> its limits, its limit's name and packing (:meth:`prefetch`),
        #: and its limits as a lease reads them
        self._packings: dict[str, tuple[int | None, int | None, str, Packing, Limits]] = {}
        self.keyleases = KeyLeases(leases, self._limit)

    def _limit(self, name: str) -> str:
        return f"{self.prefix}:{name}"

    def prefetch(self, batch: Prefetch, name: str, max_concurrency: int | None,
                 rpm: int | None) -> None:
        """Queue a take of ``name``'s slot on ``batch`` (after every other step)."""
        lease = self.keyleases.live.get(name)
        if (lease is not None and lease.left and lease.limits.concurrency == max_concurrency
                and lease.limits.rpm == rpm
                and (max_concurrency is None or lease.busy < lease.slots)):
            # taken from the connection's lease (the limits it was granted for): no step
            lease.take()
            slot = LeasedSlot(self, name, lease)
            waiting = self.ahead.get(name)
            if waiting is None:
                self.ahead[name] = [slot]
            else:
                waiting.append(slot)
            batch.granted.append(slot)
            return
        known = self._packings.get(name)
        if known is None or known[0] != max_concurrency or known[1] != rpm:
            if len(self._packings) >= NAMES_KEPT:
                self._packings.clear()
            limit = f"{self.prefix}:{name}"
            known = self._packings[name] = (max_concurrency, rpm, limit, self.leases.packing(
                limit, max_concurrency, rpm), Limits(concurrency=max_concurrency, rpm=rpm))
        if lease is not None and not lease.left:  # used up: closed, and another asked for
            self.keyleases.used_up(name, lease)
            lease = None
        batch.steps.append(Ahead(self, name, known[2], max_concurrency, known[3]))
        if lease is None:
            self.keyleases.ask(name, known[4], None, 0.0, 0)

    def taken_ahead(self, name: str) -> Ahead | LeasedSlot | None:
        waiting = self.ahead.get(name)
        # (an emptied list is left for the next slot taken ahead: one per connection)
        return waiting.pop() if waiting else None

    async def take(self, name: str, max_concurrency: int | None, rpm: int | None) -> float | None:
        step = self.taken_ahead(name)
        if step is not None:  # taken ahead: no round trip
            return step.result()
        lease = self.keyleases.live.get(name)
        if (lease is not None and lease.left and lease.limits.concurrency == max_concurrency
                and lease.limits.rpm == rpm
                and (max_concurrency is None or lease.busy < lease.slots)):
            lease.take()  # taken from its lease: no round trip
            return TAKEN
        try:
            found = await self.leases.take(f"{self.prefix}:{name}", max_concurrency, rpm)
        except Unreachable:
            return None
        return SHARED_POLL if found == FULL else found

    def give(self, name: str) -> None:
        if self.keyleases.leave(name):  # a slot of its lease (any will do)
            return
        known = self._packings.get(name)
        self.leases.give(known[2] if known is not None else f"{self.prefix}:{name}")


class LeasedSlot:
    """A connection's slot taken from its lease with a request's batch: it waits in
    :attr:`ConnectionSlots.ahead` as a slot taken ahead does, and goes back to the lease
    when the request ends with it unused (:meth:`Prefetch.release
    <.prefetch.Prefetch.release>`)."""

    __slots__ = ("done", "lease", "name", "owner")
    ran = True

    def __init__(self, owner: ConnectionSlots, name: str, lease: Lease) -> None:
        self.owner, self.name, self.lease, self.done = owner, name, lease, False

    def result(self) -> float:
        self.done = True
        return TAKEN

    def release(self) -> None:
        if self.done:
            return
        self.done = True
        ahead = self.owner.ahead
        waiting = ahead.get(self.name)
        if waiting is not None and self in waiting:
            waiting.remove(self)
            if not waiting:
                del ahead[self.name]
        self.lease.unused()


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

