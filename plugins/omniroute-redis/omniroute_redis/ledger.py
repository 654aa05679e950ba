"""Per-key budgets and limits across instances (a :class:`~omniroute.budgets.ledger.SharedLedger`).

The budgets stage asks this ledger first; each answer is one atomic script:

* ``enter`` — a slot of the key's ``concurrency`` and ``rpm`` (:mod:`.leases`);
* ``reserve`` — the key's windows admit the request against every instance's
  spend and reservations in flight, and its estimate is reserved in the same
  step (the ``reserve`` script). A window's spend in Redis never drops below
  what this instance's own ledger counts (its spend store holds every
  instance's settled spend), so a Redis that lost its data, or missed writes
  while it was away, is repaired on the next reservation;
* ``settle`` and ``leave`` — queued with the writes that follow an answer.

``prefetch_enter`` and ``prefetch_reserve`` are the same two scripts as steps of the
request's batch (:mod:`.prefetch`): the slot and the reservation then run in the
request's one round trip before dispatch, the reservation only when the slot was
taken (and nothing in between made it moot).

Money is whole micro-dollars (µUSD, :data:`MICRO`) in Redis and on the wire: the
reservations (``<prefix>:key:<id>:held``) and each window's ``musd`` field; the
estimate is rounded up, the spend to the nearest µUSD, this ledger's floor down. (The
names are not those of the earlier USD fields, ``reserved`` and ``usd``: an instance of
an earlier version, during a rolling upgrade, does not read the other unit; the floor
of each instance's own ledger carries the spend over.)

So across instances the spend passes a limit by at most what the requests in
flight cost beyond their estimates (and one request admitted alone), as in
one process. A reservation is a lease too (``total_timeout`` and a minute): one
whose gateway died is dropped by the next admission.

When Redis cannot be reached the gateway's own ledger decides (approximate
across instances, as with several workers), unless ``budget_fail_closed`` is
on: then requests of keys with a budget get a 503.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import ceil

from omniroute.budgets import Budgets, Limits
from omniroute.budgets.ledger import BUSY_RETRY_AFTER, KeyState, Window, exceeded
from omniroute.config import Settings
from omniroute.errors import BudgetUnavailable, RateLimited
from omniroute.sharedstate import RequestBatch

from omniroute_redis.batch import Batch, Write
from omniroute_redis.keylease import Granted, Held, KeyLeases
from omniroute_redis.leases import FULL, TAKEN, Leases, Packing, Take, slot_answer
from omniroute_redis.link import Link, Unanswered, Unreachable
from omniroute_redis.prefetch import BEFORE, ROUTED, UNREACHABLE, Prefetch, Step
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import bulks

#: seconds a reservation outlives the longest a request may take (``total_timeout``)
RESERVATION_SLACK = 60.0
#: the API keys whose name prefix is kept (:meth:`RedisLedger._key`)
BASES_KEPT = 4096
#: micro-dollars a dollar: money is whole µUSD in Redis and on the wire (the ``reserve``
#: and ``settle`` scripts), USD everywhere else
MICRO = 1_000_000


class RedisLedger:
    """The shared half of the budgets (see the module docstring)."""

    def __init__(self, link: Link, scripts: Scripts, batch: Batch, leases: Leases,
                 budgets: Budgets, settings: Callable[[], Settings]) -> None:
        """
        :param budgets: the gateway's own ledger: its windows, and its numbers as a floor.
        """
        self.link = link
        self.scripts = scripts
        self.batch = batch
        self.leases = leases
        self.budgets = budgets
        self.settings = settings
        #: an API key's prefix of names, by its id
        self._bases: dict[str, str] = {}
        #: what of a reservation's commands is packed once, by the key, its limits, its
        #: windows (the first one's start) and the lease (:meth:`_pack_fixed`)
        self._fixed: dict[tuple[str, Limits, float, float], _Fixed] = {}
        #: a key's state, limits, the span its windows share (from their latest start to
        #: their earliest end), the lease, its windows and their :class:`_Fixed`, as its
        #: last reservation found them (:meth:`_reservation`: the next one in that span
        #: takes them as they are)
        self._current: dict[str, tuple[KeyState, Limits, float, float, float, list[Window],
                                       _Fixed]] = {}
        #: a key's limits (the object: a reload makes new ones), the name of its slots'
        #: limit and their packing (:meth:`Leases.packing <.leases.Leases.packing>`)
        self._entries: dict[str, tuple[Limits, str, Packing]] = {}
        #: the keys' leases held here (:mod:`.keylease`): asked first
        self.keyleases = KeyLeases(leases, self._key, self)

    def _key(self, key_id: str, *parts: str) -> str:
        base = self._bases.get(key_id)
        if base is None:
            if len(self._bases) >= BASES_KEPT:
                self._bases.clear()
            base = self._bases[key_id] = self.link.key("key", key_id)
        return ":".join((base, *parts)) if parts else base

    async def enter(self, key_id: str, limits: Limits) -> bool:
        try:
            found = await self.leases.take(self._key(key_id), limits.concurrency, limits.rpm)
        except Unreachable:
            return False
        return _entered(found, limits)

    def prefetch_enter(self, batch: RequestBatch, key_id: str,
                       limits: Limits) -> Step[bool] | Granted:
        lease = self.keyleases.live.get(key_id)
        if (lease is not None and lease.limits is limits and lease.left
                and (lease.busy < lease.slots or limits.concurrency is None)):
            # admitted from the key's lease: no step (the slot and the start are its)
            lease.take()
            granted = Granted(lease)
            assert isinstance(batch, Prefetch)
            batch.granted.append(granted)  # (released with it, when never read)
            return granted
        if lease is not None and not lease.left:  # used up: closed, and another asked for
            self.keyleases.used_up(key_id, lease)
        assert isinstance(batch, Prefetch)
        known = self._entries.get(key_id)
        if known is None or known[0] is not limits:
            if len(self._entries) >= BASES_KEPT:
                self._entries.clear()
            name = self._key(key_id)
            known = self._entries[key_id] = (limits, name, self.leases.packing(
                name, limits.concurrency, limits.rpm))
        step = _Entry(self.leases, known[2], known[1], limits)
        batch.steps.append(step)
        if not limits.periods:
            self.keyleases.ask(key_id, limits, None, 0.0, 0)
        return step

    def leave(self, key_id: str) -> None:
        if self.keyleases.leave(key_id):  # a slot of its lease (any will do)
            return
        known = self._entries.get(key_id)
        if known is None:
            self.leases.give(self._key(key_id))
            return
        # (Leases.give's, in line, with the ZREM the key's packing holds)
        members = self.leases.held.get(known[1])
        if members:
            self.batch.later(known[2][2] + members.pop())

    async def reserve(self, state: KeyState, limits: Limits, usd: float,
                      tokens: int) -> _Reserve | None:
        ask = self._reservation(state, limits, usd, tokens)
        fixed = ask.fixed
        try:
            answer = await self.scripts.send(self.link, "reserve", self.scripts.packed(
                "reserve", fixed.keys, fixed.nkeys, ask.args, fixed.nargs))
        except Unanswered:  # it may have been made: dropped once Redis answers
            self.batch.give_back([fixed.hdel + ask.reservation])
            answer = UNREACHABLE
        except Unreachable:
            answer = UNREACHABLE
        return ask.read(answer)

    def prefetch_reserve(self, batch: RequestBatch, state: KeyState, limits: Limits, usd: float,
                         tokens: int) -> Step[object | None] | Held:
        key_id = state.key_id
        lease = self.keyleases.live.get(key_id)
        if lease is not None and lease.limits is limits and lease.fixed is not None:
            musd = ceil(usd * MICRO)
            if (musd <= lease.left_musd and tokens <= lease.left_tokens
                    and (lease.left or limits.rpm is not None
                         or limits.concurrency is not None)):
                # admitted from the key's lease: its estimate comes off the lease's
                lease.left_musd -= musd
                lease.left_tokens -= tokens
                lease.pending += 1
                if limits.rpm is None and limits.concurrency is None:
                    lease.left -= 1  # (a key with limits: its enter counted it)
                held = Held(lease, musd, tokens)
                assert isinstance(batch, Prefetch)
                batch.granted.append(held)  # (released with it, when never read)
                return held
            # used up: closed, and another asked for
            self.keyleases.used_up(key_id, lease)
            lease = None
        assert isinstance(batch, Prefetch)
        step = self._reservation(state, limits, usd, tokens)
        batch.steps.append(step)
        if lease is None:
            self.keyleases.ask(key_id, limits, step.fixed, usd, tokens)
        return step

    def _reservation(self, state: KeyState, limits: Limits, usd: float,
                     tokens: int) -> _Reserve:
        """The ``reserve`` script's call, its keys and arguments packed: only the request's
        own (its id, and its estimate and the windows' spend as one argument: one format,
        :attr:`_Fixed.own`) each time; the keys,
        the lease and the windows' ends and limits once for the key's limits and windows.
        One object is the call, the step of a request's batch and, admitted, the handle
        its settle reads (:meth:`settle`)."""
        budgets = self.budgets
        now = budgets.clock.time()
        lease_s = self.settings().total_timeout + RESERVATION_SLACK
        current = self._current.get(state.key_id)
        if (current is not None and current[0] is state and current[1] is limits
                and current[2] <= now < current[3] and current[4] == lease_s):
            # the windows of the key's last reservation: none has ended (only then does
            # the ledger make a new one), nor its limits changed (a reload makes new ones)
            windows, fixed = current[5], current[6]
        else:
            windows = [budgets.window(state, limits, period, now) for period in limits.periods]
            # (the windows start at one time of day: the first one's start names them all)
            known = (state.key_id, limits, windows[0].start if windows else 0.0, lease_s)
            found = self._fixed.get(known)
            fixed = found if found is not None else self._pack_fixed(known, windows, lease_s)
            if len(self._current) >= BASES_KEPT:
                self._current.clear()
            self._current[state.key_id] = (
                state, limits, max((w.start for w in windows), default=now),
                min((w.end for w in windows), default=now), lease_s, windows, fixed)
        leases = self.leases  # (Leases.packed_member's, in line)
        reservation = b"%b%d\r\n" % (leases.head, next(leases.ids))
        own: list[float] = [ceil(usd * MICRO), tokens]  # (µUSD, rounded up)
        unsent = self.keyleases.unsent(state.key_id)
        if unsent is None:
            for w in windows:  # this ledger's spend, a floor: rounded down (%d truncates)
                own += ((w.base_usd + w.usd) * MICRO, w.base_tokens + w.tokens)
        else:  # without its leases' spend that Redis has not had yet
            for w in windows:
                own += ((w.base_usd + w.usd) * MICRO - unsent[0],
                        w.base_tokens + w.tokens - unsent[1])
        text = fixed.own % tuple(own)
        return _Reserve(self, fixed, reservation, b"%b%b$%d\r\n%b\r\n" % (
            fixed.args, reservation, len(text), text), windows, now)

    def _pack_fixed(self, known: tuple[str, Limits, float, float], windows: list[Window],
                    lease_s: float) -> _Fixed:
        """What of a reservation is the same for every request of a key in these windows:
        the keys packed, and their count; the arguments before the request's own packed
        (the lease, each window's end and limits), and the count of every argument; its
        step's part of the ``admit`` script's steps; the ``HDEL`` that drops a reservation
        and the ``settle`` command, each up to the request's own arguments."""
        if len(self._fixed) >= BASES_KEPT:
            self._fixed.clear()
        key_id, limits = known[0], known[1]
        reserved = self._key(key_id, "held")
        keys = [reserved.encode()]
        fixed: list[object] = [lease_s]
        for w in windows:
            limit_usd, limit_tokens = limits.usd.get(w.period), limits.tokens.get(w.period)
            keys.append(self._key(key_id, "spend", w.period, f"{w.start:.0f}").encode())
            fixed += (w.end, "" if limit_usd is None else round(limit_usd * MICRO),
                      "" if limit_tokens is None else int(limit_tokens))
        packed_keys, nargs = bulks(tuple(keys)), 3 + 3 * len(windows)
        slots = bulks((self.leases.slots_key(self._key(key_id)),))
        made = self._fixed[known] = _Fixed(
            packed_keys, len(keys), bulks(tuple(fixed)), nargs,
            f"reserve {len(keys)} {nargs}", b"*3\r\n" + bulks(("HDEL", reserved)),
            self.scripts.packed("settle", packed_keys, len(keys), b"", 2),
            self.scripts.packed("settle", packed_keys + slots, len(keys) + 1, b"", 3),
            b" ".join([b"%d"] * (2 + 2 * len(windows))))
        return made

    def _unreachable(self) -> None:
        """Redis cannot be reached for a reservation: the gateway's own ledger decides,
        unless ``budget_fail_closed`` is on.

        :raises BudgetUnavailable: it is on.
        """
        if self.settings().budget_fail_closed:
            raise BudgetUnavailable(
                "Budgets cannot be checked now: the state shared by the gateway's "
                "instances cannot be reached, and budget_fail_closed is on.",
                headers={"Retry-After": "1"})

    def settle(self, handle: object, usd: float, tokens: int, *,
               leave: str | None = None) -> None:
        if type(handle) is Held:  # admitted from a lease: settled with it (its slot too)
            if not self.keyleases.settle(handle, usd, tokens, leave is not None):
                assert leave is not None
                self.leave(leave)
            return
        assert isinstance(handle, _Reserve)
        if leave is not None and self.keyleases.leave(leave):
            leave = None  # a slot of its lease given back (any will do)
        spend = b"%d %d" % (round(usd * MICRO), tokens)  # (µUSD; %d truncates, as int())
        fixed = handle.fixed
        if leave is not None:  # the key's slot given back by the same script (leave's)
            known = self._entries.get(leave)
            members = self.leases.held.get(known[1] if known is not None else self._key(leave))
            if members:
                self.batch.later(b"%b%b$%d\r\n%b\r\n%b" % (
                    fixed.settle_leave, handle.reservation, len(spend), spend, members.pop()))
                return
        self.batch.later(b"%b%b$%d\r\n%b\r\n" % (
            fixed.settle, handle.reservation, len(spend), spend))


@dataclass(slots=True, frozen=True)  # (made once for a key's windows)
class _Fixed:
    """What of a key's reservation is packed once for its limits and windows (see
    :meth:`RedisLedger._pack_fixed`)."""

    keys: bytes
    nkeys: int
    args: bytes
    nargs: int
    #: its step's part of the ``admit`` script's first argument
    head: str
    #: ``HDEL`` of the reservations' hash, and ``settle``, up to the reservation's id
    hdel: bytes
    settle: bytes
    #: ``settle`` that gives back the key's slot too (its slots' key after the windows'),
    #: up to the reservation's id
    settle_leave: bytes
    #: the format of the request's own numbers, one argument (``%d %d``, and ``%d %d`` a
    #: window: its estimate in µUSD and tokens, each window's spend counted here)
    own: bytes


class _Entry(Take[bool]):
    """An API key's slot (``enter``) as a step of a request's batch."""

    __slots__ = ("limits",)

    def __init__(self, leases: Leases, packing: Packing, name: str, limits: Limits) -> None:
        # (Take.__init__'s)
        member = self.packed_member = b"%b%d\r\n" % (leases.head, next(leases.ids))
        self.keys, self.args, self.phase = packing[1], member + packing[4], BEFORE
        self.raw, self.ran, self.done = None, False, False
        self.leases, self.limit, self.concurrency = leases, name, limits.concurrency
        self.packing, self.limits = packing, limits

    def read(self, raw: object) -> bool:
        if raw == b"0":  # taken (as nearly always: no call)
            return True
        return False if raw is UNREACHABLE else _entered(slot_answer(raw), self.limits)


class _Reserve(Step[object | None]):
    """A reservation (``reserve``): its script's call, as a step of a request's batch or
    on its own (:meth:`RedisLedger.reserve`), and once admitted the handle its settle
    reads (no object more a request for either)."""

    name = "reserve"
    __slots__ = ("fixed", "head", "ledger", "nargs", "nkeys", "now", "reservation", "windows")

    def __init__(self, ledger: RedisLedger, fixed: _Fixed, reservation: bytes, args: bytes,
                 windows: list[Window], now: float) -> None:
        """
        :param reservation: its id, as a bulk string (packed once, for the reservation and
            its settle).
        :param args: the script's arguments, packed (the keys and the counts are the fixed
            part's).
        """
        # (Step.__init__'s, in line: a call fewer per step)
        self.keys, self.args, self.phase = fixed.keys, args, ROUTED
        self.raw, self.ran, self.done = None, False, False
        self.ledger, self.fixed, self.reservation = ledger, fixed, reservation
        self.windows, self.now = windows, now
        self.nkeys, self.nargs, self.head = fixed.nkeys, fixed.nargs, fixed.head

    def read(self, raw: object) -> _Reserve | None:
        """The ``reserve`` script's answer as :meth:`RedisLedger.reserve` returns it (or
        raises it): admitted, the reservation itself is the handle its settle reads."""
        if type(raw) is list and raw[0] == b"ok":  # admitted (the reply, as read)
            # every instance's spend, for the warning threshold (int() reads the reply's
            # bytes as they are)
            for w, shared_usd, shared_tokens in zip(self.windows, raw[1::2], raw[2::2],
                                                     strict=True):
                w.base_usd = max(w.base_usd, int(shared_usd) / MICRO - w.usd)
                w.base_tokens = max(w.base_tokens, int(shared_tokens) - w.tokens)
            return self
        if raw is UNREACHABLE:
            self.ledger._unreachable()
            return None
        assert isinstance(raw, list)
        found = [_text(v) for v in raw]  # refused
        w = self.windows[int(found[1]) - 1]
        unit, spent, reserved, estimate, limit = found[2], *map(float, found[3:7])
        if unit == "USD":  # (µUSD on the wire)
            spent, reserved, estimate, limit = (
                spent / MICRO, reserved / MICRO, estimate / MICRO, limit / MICRO)
        raise exceeded(w, self.now, unit, spent, reserved, estimate, limit)

    def undo(self, raw: object) -> None:  # admitted, and never read: dropped
        if isinstance(raw, list) and raw[0] == b"ok":
            self.ledger.batch.later(self.fixed.hdel + self.reservation)

    def forget(self) -> list[Write]:  # the answer was lost: dropped, if it was made
        return [self.fixed.hdel + self.reservation]


def _entered(found: float, limits: Limits) -> bool:
    """A key slot's answer as :meth:`RedisLedger.enter` returns it (or raises it)."""
    if found == TAKEN:
        return True
    if found == FULL:
        raise RateLimited(
            f"This API key already has {limits.concurrency} requests in flight across "
            f"the gateway's instances, its limit; retry when one has finished.",
            retry_after=BUSY_RETRY_AFTER, code="concurrency_limit_exceeded")
    raise RateLimited(f"This API key is limited to {limits.rpm} requests per minute.",
                      retry_after=found, code="rate_limit_exceeded")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
