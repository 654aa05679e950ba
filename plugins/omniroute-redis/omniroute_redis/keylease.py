"""An API key's limits leased to one instance: its requests admitted with no round trip.

A key far from its limits need not ask Redis for each request's slot, start and budget
reservation. When one of its requests goes the usual way (its steps in the request's
batch, :mod:`.prefetch`), a background task asks for a **lease** (the ``lease`` script,
one atomic step): up to :data:`WANT` requests' starts in the rolling minute, up to
:data:`SLOTS` of its concurrency slots, and :data:`WANT` times the request's estimate of
its budget, reserved, each at most 1/:data:`SHARE` of what is left of its limit, so a
lease shrinks as a limit nears and none is granted under two requests: near a limit
every request asks Redis, as before. Far from one, a lease makes the others stricter,
never looser: what it holds counts as taken in Redis (its starts, its slots, its whole
reservation) until it ends, so overspend stays at most what requests cost beyond their
estimates; what it did not use is taken from the others for at most :data:`LEASE_S`
seconds. (Its starts are scored at its grant until it ends, then at its close, which is
no earlier than its last admission: a lease whose requests outlive the minute lets
their starts go up to :data:`LEASE_S` seconds early.) For :data:`LEASE_S` seconds (or
to its budget windows' end) the key's requests are admitted from the lease, in process
(or until it is used up: the next request asks for another); then the lease closes,
and once its last request is over one write ends it
(``lease_end``, queued with the writes that follow answers): the starts it did not use
and its slots given back, the ones it used counted from its close, its
reservation dropped and the spend of its requests added. So other instances see a
lease's unused share for at most :data:`LEASE_S` seconds, and its spend within
:data:`LEASE_S` seconds of the request (later for a request still running then, whose
estimate stays reserved meanwhile).

Only keys whose limits leave room for it are leased (:meth:`KeyLeases.wanted`: no
concurrency under 2 × :data:`SHARE` slots, no rpm under 2 × :data:`SHARE`, no budget
under 2 × :data:`SHARE` estimates; the script sizes the rest), and no budget with
``budget_fail_closed`` on (each request is then checked in Redis, and refused while it
cannot be reached). A refused lease is not asked for again for :data:`LEASE_S` seconds.
While Redis cannot be reached a lease held keeps admitting until it closes; its end is
dropped with the other writes and what it held expires (its slots' lease, its
reservation's, the minute of its starts), and the spend it had is repaired from this
instance's own ledger at the next reservation (its floor).

A lease's requests spend locally first: the floor a reservation sends (this instance's
count of the key's spend) leaves out what its leases settled and Redis has not had yet
(:meth:`KeyLeases.unsent`: the spend of its leases not ended), or Redis would count it
twice when the lease ends.
"""

from __future__ import annotations

import asyncio
import time
from math import ceil
from typing import TYPE_CHECKING, Any

from omniroute.budgets import Limits

from omniroute_redis.link import Unanswered, Unreachable
from omniroute_redis.wire import ErrorReply, bulk, bulks

if TYPE_CHECKING:
    from collections.abc import Callable

    from omniroute_redis.leases import Leases
    from omniroute_redis.ledger import RedisLedger, _Fixed

#: seconds a lease admits requests
LEASE_S = 1.0
#: requests a lease admits at most, and its slots at most
WANT, SLOTS = 64, 16
#: a lease takes at most this part of what is left of each limit (1/SHARE)
SHARE = 8
#: micro-dollars a dollar (as the ledger's)
MICRO = 1_000_000
#: the keys whose last ask is kept (:attr:`KeyLeases.asked`)
KEYS_KEPT = 4096
#: seconds a lease's slots are held without a renewal (as a request's)
SLOT_LEASE = "30.0"


class Lease:
    """One lease of one key (see the module docstring)."""

    __slots__ = (
        "busy",
        "fixed",
        "granted",
        "key_id",
        "keys",
        "last",
        "left",
        "left_musd",
        "left_tokens",
        "limit",
        "limits",
        "name",
        "nkeys",
        "open",
        "owner",
        "pending",
        "requests",
        "slots",
        "spent_musd",
        "spent_tokens",
    )

    def __init__(self, owner: KeyLeases, key_id: str, limits: Limits, name: str, limit: str,
                 keys: bytes, nkeys: int, fixed: _Fixed | None, granted: int, slots: int,
                 musd: int, tokens: int) -> None:
        self.owner, self.key_id = owner, key_id
        self.limits, self.name, self.limit, self.keys, self.nkeys = (
            limits, name, limit, keys, nkeys)
        self.fixed, self.granted, self.slots = fixed, granted, slots
        self.left = granted  # requests it may still admit
        self.left_musd, self.left_tokens = musd * granted, tokens * granted
        self.busy = 0  # its slots in use
        self.pending = 0  # its reservations not settled
        self.open = True
        self.spent_musd = self.spent_tokens = self.requests = 0
        self.last = time.monotonic()

    def take(self) -> None:
        """A request admitted from it: one of its starts (and of its slots) taken."""
        self.left -= 1
        if self.slots:
            self.busy += 1

    def unused(self) -> None:
        """A start (and slot) it admitted was never used: back to it (ended, when it has
        closed and this was its last)."""
        self.left += 1
        if self.slots:
            self.busy -= 1
        if not self.open:
            self.owner.drained(self)


class Granted:
    """A key's slot (and start) admitted from its lease: a pending step already answered."""

    __slots__ = ("done", "lease")
    ran = True

    def __init__(self, lease: Lease) -> None:
        self.lease, self.done = lease, False

    def result(self) -> bool:
        self.done = True
        return True

    def release(self) -> None:  # never read: its start and slot back to the lease
        if not self.done:
            self.done = True
            self.lease.unused()


class Held:
    """A budget reservation admitted from a lease: the pending step and, read, the handle
    its settle reads."""

    __slots__ = ("done", "lease", "musd", "tokens")
    ran = True

    def __init__(self, lease: Lease, musd: int, tokens: int) -> None:
        self.lease, self.musd, self.tokens, self.done = lease, musd, tokens, False

    def result(self) -> Held:
        self.done = True
        return self

    def release(self) -> None:  # never read: back
        if not self.done:
            self.done = True
            lease = self.lease
            lease.left_musd += self.musd
            lease.left_tokens += self.tokens
            lease.pending -= 1
            if not lease.open:
                lease.owner.drained(lease)


class KeyLeases:
    """The leases this instance holds, by key id (the ledger asks it first), or by
    connection id (a connection's limits: :class:`~.leases.ConnectionSlots`, no budget).

    :param limit: the limit's name (its keys' prefix) of an id.
    :param ledger: the budgets' ledger, for a key's: its windows and ``budget_fail_closed``.
    """

    def __init__(self, leases: Leases, limit: Callable[[str], str],
                 ledger: RedisLedger | None = None) -> None:
        self.leases, self.limit, self.ledger = leases, limit, ledger
        #: a key's open lease
        self.live: dict[str, Lease] = {}
        #: a key's leases closed and not ended (requests of theirs still run)
        self.closing: dict[str, list[Lease]] = {}
        #: keys whose lease is being asked for, or was refused (until then, monotonic)
        self.asked: dict[str, float] = {}
        self.granted = self.refused = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @staticmethod
    def wanted(limits: Limits, usd: float, tokens: int) -> bool:
        """Whether ``limits`` leave room for a lease of requests of this estimate."""
        floor = SHARE * 2
        if limits.concurrency is not None and limits.concurrency < floor:
            return False
        if limits.rpm is not None and limits.rpm < floor:
            return False
        for limit in limits.usd.values():
            if limit < floor * usd:
                return False
        return all(limit >= floor * tokens for limit in limits.tokens.values())

    def ask(self, key_id: str, limits: Limits, fixed: _Fixed | None, usd: float,
            tokens: int) -> None:
        """Ask for a lease of key ``key_id`` in the background (once at a time; not again
        for :data:`LEASE_S` seconds after a refusal)."""
        now = time.monotonic()
        until = self.asked.get(key_id)
        if until is not None and now < until:
            return
        if not self.wanted(limits, usd, tokens) or (
                fixed is not None and self.ledger is not None
                and self.ledger.settings().budget_fail_closed):
            # (a budget that fails closed is checked in Redis by each request)
            self.asked[key_id] = now + LEASE_S
            return
        if len(self.asked) >= KEYS_KEPT:
            self.asked.clear()
        self.asked[key_id] = now + 60.0  # (asking: the answer resets it)
        task = asyncio.ensure_future(self._take(key_id, limits, fixed, usd, tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _take(self, key_id: str, limits: Limits, fixed: _Fixed | None, usd: float,
                    tokens: int) -> None:
        ledger, leases = self.ledger, self.leases
        scripts = leases.scripts
        limit = self.limit(key_id)
        slots, starts = leases._keys(limit)
        name = leases.member()
        musd = ceil(usd * MICRO)
        keys, nkeys = bulks((slots, starts)), 2
        args = bulks((name, WANT, "" if limits.concurrency is None else limits.concurrency,
                      "" if limits.rpm is None else limits.rpm, SHARE, SLOT_LEASE,
                      SLOTS if limits.concurrency is not None else 0, f"{musd} {tokens}"))
        nargs = 8
        if fixed is not None:
            keys, nkeys = keys + fixed.keys, nkeys + fixed.nkeys
            args, nargs = args + fixed.args, nargs + fixed.nargs - 2
        try:
            found = await scripts.send(leases.link, "lease",
                                       scripts.packed("lease", keys, nkeys, args, nargs))
        except Unanswered:  # it may have been granted: ended blindly once Redis answers
            leases.batch.give_back([self._end_command(keys, nkeys, name, 0, WANT, SLOTS,
                                                      0.0, b"")])
            self.asked[key_id] = time.monotonic() + LEASE_S
            return
        except Unreachable:
            self.asked[key_id] = time.monotonic() + LEASE_S
            return
        except ErrorReply as exc:  # (OOM, READONLY: what it took is unknown)
            leases.link.errored(exc)
            leases.batch.give_back([self._end_command(keys, nkeys, name, 0, WANT, SLOTS,
                                                      0.0, b"")])
            self.asked[key_id] = time.monotonic() + LEASE_S
            return
        granted, held = int(found[0]), int(found[1])
        if granted < 2:
            self.refused += 1
            self.asked[key_id] = time.monotonic() + LEASE_S
            return
        self.granted += 1
        self.asked.pop(key_id, None)
        lease = Lease(self, key_id, limits, name, limit, keys, nkeys, fixed, granted, held,
                      musd, tokens)
        if held:  # renewed with the slots held here
            leases.leased[limit] = leases.leased.get(limit, []) + [
                bulk(f"{name}:c{i}".encode()) for i in range(1, held + 1)]
        self.live[key_id] = lease
        delay = LEASE_S
        if fixed is not None and ledger is not None:  # not past its windows' end
            current = ledger._current.get(key_id)
            if current is not None:
                delay = min(delay, current[3] - ledger.budgets.clock.time())
        asyncio.get_running_loop().call_later(max(delay, 0.0), self._close, key_id, lease)

    def _close(self, key_id: str, lease: Lease) -> None:
        """It admits no more: ended now, or by the last of its requests."""
        if not lease.open:  # (used up before its time)
            return
        lease.open = False
        lease.last = time.monotonic()  # (its used starts are counted from here)
        if self.live.get(key_id) is lease:
            del self.live[key_id]
        if lease.busy or lease.pending:
            self.closing.setdefault(key_id, []).append(lease)
        else:
            self._end(lease)

    def used_up(self, key_id: str, lease: Lease) -> None:
        """Its requests, or its budget, are used up: closed before its time (the timer then
        finds it closed), and no wait to ask for the next."""
        if lease.open:
            self._close(key_id, lease)
            self.asked.pop(key_id, None)

    def drained(self, lease: Lease) -> None:
        """A request of a closed lease is over: ended when it was its last."""
        if not lease.open and not lease.busy and not lease.pending:
            key_id = lease.key_id
            waiting = self.closing.get(key_id)
            if waiting is not None and lease in waiting:
                waiting.remove(lease)
                if not waiting:
                    del self.closing[key_id]
                self._end(lease)

    def _end(self, lease: Lease) -> None:
        leases = self.leases
        if lease.slots:
            mine = {bulk(f"{lease.name}:c{i}".encode()) for i in range(1, lease.slots + 1)}
            left = [m for m in leases.leased.get(lease.limit, ()) if m not in mine]
            if left:
                leases.leased[lease.limit] = left
            else:
                leases.leased.pop(lease.limit, None)
        spend = b"%d %d %d" % (lease.spent_musd, lease.spent_tokens, lease.requests)
        leases.batch.add(self._end_command(
            lease.keys, lease.nkeys, lease.name, lease.granted - lease.left, lease.granted,
            lease.slots, time.monotonic() - lease.last, spend))

    def _end_command(self, keys: bytes, nkeys: int, name: str, used: int, granted: int,
                     slots: int, ago: float, spend: bytes) -> bytes:
        args = bulks((name, used, granted, slots, f"{ago:.3f}", spend))
        return self.leases.scripts.packed("lease_end", keys, nkeys, args, 6)

    def leave(self, key_id: str) -> bool:
        """A request of key ``key_id`` is over: one of a lease's slots given back, if one is
        in use (slots of one key are interchangeable); False: none is."""
        lease = self.live.get(key_id)
        if lease is not None and lease.busy:
            lease.busy -= 1
            return True
        for lease in self.closing.get(key_id, ()):
            if lease.busy:
                lease.busy -= 1
                self.drained(lease)
                return True
        return False

    def settle(self, held: Held, usd: float, tokens: int, leave: bool = False) -> bool:
        """A request admitted from a lease is over: its spend kept for the lease's end (and,
        ``leave``, its key's slot given back to that lease when it has one in use: slots of
        one key are interchangeable, as in :meth:`leave`). False: ``leave`` and no slot of
        that lease was in use (the caller gives the slot back)."""
        lease = held.lease
        musd = round(usd * MICRO)
        lease.left_musd += held.musd - musd
        lease.left_tokens += held.tokens - tokens
        lease.spent_musd += musd
        lease.spent_tokens += tokens
        lease.requests += 1
        lease.pending -= 1
        left = True
        if leave:
            if lease.busy:
                lease.busy -= 1
            else:
                left = False
        if not lease.open:
            self.drained(lease)
        return left

    def unsent(self, key_id: str) -> tuple[int, int] | None:
        """A key's spend (µUSD, tokens) settled here from its leases and not yet sent to
        Redis (theirs not ended: their end sends it): the floor a reservation sends (this
        instance's own count) leaves it out, or Redis would count it twice once the lease
        ends. None: no lease of the key is held. Asked by a reservation, the path near a
        limit: a lease's requests pay nothing for it."""
        lease = self.live.get(key_id)
        closing = self.closing.get(key_id)
        if lease is None and not closing:
            return None
        musd = tokens = 0
        for each in ([lease] if lease is not None else []) + (closing or []):
            musd += each.spent_musd
            tokens += each.spent_tokens
        return musd, tokens

    async def close(self) -> None:
        """Every lease ended now (shut-down): their requests are over."""
        for task in list(self._tasks):
            task.cancel()
        for key_id, lease in list(self.live.items()):
            self._close(key_id, lease)
        for waiting in list(self.closing.values()):
            for lease in waiting:
                self._end(lease)
        self.closing.clear()

    def health(self) -> dict[str, Any]:
        return {"leases_granted": self.granted, "leases_refused": self.refused,
                "leases_live": len(self.live)}
