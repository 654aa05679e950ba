"""The resilience state store shared through Redis (a :class:`~omniroute.resilience.StateStore`).

The resilience modules read and change a local view, synchronously, exactly as
with the in-memory default (:mod:`omniroute.resilience.state` says why). This
store keeps that view in step with Redis:

* a **transition** (``changed()``: a failure charged, a streak or a rest ended,
  a breaker opened, closed or took a trial) wakes the sync task at once: it
  sends the change as one atomic ``merge`` per record (:mod:`.records`), gets
  the shared record back, and Redis publishes it to every instance, which
  applies it in place (a cooldown set by one is honoured by all within
  milliseconds);
* every :data:`SYNC_EVERY` seconds the sync task sends the counters that moved
  (requests, successes, latency) the same way, without publishing, gets every
  record back, and renews the leases of the slots held here;
* a connection's limits are taken atomically in Redis (:attr:`slots`, see
  :mod:`.leases`), the one round trip a request may wait for before dispatch;
* a sticky session bound here (new, or moved to another connection) is written
  and published by the writes that follow the answer; others learn it.

So the request path itself never waits on Redis, except to take a limited
connection's slot. When Redis cannot be reached the local view goes on alone;
when it is back, one full sync merges what each instance did meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson
from omniroute.config import Settings
from omniroute.resilience import BreakerState, Clock, ConnectionStats, LimitState
from omniroute.resilience.state import Table

from omniroute_redis import records
from omniroute_redis.batch import Batch
from omniroute_redis.leases import ConnectionSlots, Leases
from omniroute_redis.link import Link, Unreachable
from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import NoScript

log = logging.getLogger(__name__)

#: seconds between two syncs of the counters (and of every record, and lease renewals)
SYNC_EVERY = 1.0
#: seconds a shared record lives after its last change (a connection long gone)
RECORD_TTL = 7 * 86400
#: records read at once when loading every record (start-up, resync), and the bound
LOAD_BATCH = 500
LOAD_TIMEOUT = 5.0

Key = tuple[str, str]


class SessionTable(OrderedDict[str, tuple[str, float]]):
    """The sessions table: an ordered dict that tells when a session is bound anew
    (new, or to another connection); a renewed TTL on the same connection is silent."""

    def __init__(self, bound: Callable[[str, tuple[str, float]], None]) -> None:
        super().__init__()
        self._bound = bound

    def __setitem__(self, key: str, value: tuple[str, float]) -> None:
        old = self.get(key)
        super().__setitem__(key, value)
        if old is None or old[0] != value[0]:
            self._bound(key, value)

    def learn(self, key: str, value: tuple[str, float]) -> None:
        """Another instance bound it: keep it here without telling anyone."""
        OrderedDict.__setitem__(self, key, value)
        self.move_to_end(key)


class RedisState:
    """The local view and its sync with Redis (see the module docstring)."""

    def __init__(self, link: Link, scripts: Scripts, batch: Batch, leases: Leases,
                 clock: Clock, settings: Callable[[], Settings]) -> None:
        self.link = link
        self.scripts = scripts
        self.batch = batch
        self.leases = leases
        self.clock = clock
        self.settings = settings
        self.connections: dict[str, ConnectionStats] = {}
        self.breakers: dict[str, BreakerState] = {}
        self.limits: dict[str, LimitState] = {}
        self.sessions = SessionTable(self._session_bound)
        self.slots = ConnectionSlots(leases)
        self.channel = link.key("state")
        #: the shared record each local one was last merged with (local times)
        self._base: dict[Key, records.Snap] = {}
        #: the shared record's revision last applied (older messages are stale)
        self._rev: dict[Key, int] = {}
        #: records with a transition not sent yet, and those being sent now
        self._urgent: set[Key] = set()
        self._sending: set[Key] = set()
        #: messages about records being sent, applied after the answer
        self._held: list[tuple[Key, records.Snap]] = []
        self._wake = asyncio.Event()
        self.syncs = self.published_applied = 0

    # ------------------------------------------------------------------ the StateStore

    def changed(self, table: Table, key: str) -> None:
        if table in ("connections", "breakers"):
            self._urgent.add((table, key))
            self._wake.set()

    def _offset(self) -> float:
        return self.clock.time() - self.clock.monotonic()

    # ------------------------------------------------------------------ sync

    async def run(self) -> None:
        """The sync task: at once after a transition, else every :data:`SYNC_EVERY` s."""
        loop = asyncio.get_running_loop()
        due = loop.time() + SYNC_EVERY
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - loop.time())):
                    await self._wake.wait()
            self._wake.clear()
            periodic = loop.time() >= due
            if periodic:
                due = loop.time() + SYNC_EVERY
            if not self.link.up:
                continue
            try:
                await self.sync(everything=periodic)
                if periodic:
                    await self.leases.renew()
            except Unreachable:
                continue
            except Exception:
                log.exception("syncing the resilience state with redis failed")

    async def sync(self, *, everything: bool = False) -> None:
        """Send the transitions (and with ``everything``, every record), apply the answers.

        :raises Unreachable: Redis cannot be reached (the transitions wait for the next).
        """
        keys = set(self._urgent)
        if everything:
            keys |= {("connections", k) for k in self.connections}
            keys |= {("breakers", k) for k in self.breakers}
        if not keys:
            return
        urgent, self._urgent = self._urgent, set()
        offset = self._offset()
        sends: list[tuple[Key, records.Snap | None, str, bool]] = []
        for key in keys:
            table, name = key
            record: Any = getattr(self, table).get(name)
            if record is None:
                sends.append((key, None, orjson.dumps({"delete": True}).decode(), False))
                continue
            base = self._base.get(key)
            if table == "connections":
                snap = records.connection_snap(record)
                op, loud = records.connection_op(snap, base, offset)
            else:
                snap = records.breaker_snap(record, base["gen"] if base else 0)
                op, loud = records.breaker_op(snap, base, offset)
            if "add" not in op and "set" not in op and "max" not in op and "ewma" not in op \
                    and base is not None and not everything:
                continue  # nothing changed since the last merge
            sends.append((key, snap, orjson.dumps(op).decode(), loud))
        if not sends:
            return
        stale = self._stale_trials()
        self._sending = {key for key, _, _, _ in sends}

        merges = [self.scripts.command("merge", [self.link.key("rs", table, name)],
                                       [op, table, name, self.channel if loud else "",
                                        RECORD_TTL, stale])
                  for (table, name), _, op, loud in sends]
        try:
            results = await self.link.commands(merges)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScript)]
            if missing:  # a restarted Redis forgot the script: those merges did not run
                again = [merges[i] for i in missing]
                await self.scripts.reload_for(self.link, again)
                for i, result in zip(missing, await self.link.commands(again), strict=True):
                    results[i] = result
        except Unreachable:
            self._urgent |= urgent  # sent again once Redis is back
            raise
        finally:
            self._sending = set()
        self.syncs += 1
        offset = self._offset()
        for (key, sent, _, _), result in zip(sends, results, strict=True):
            if isinstance(result, Exception):
                log.error("merging %s %s in redis failed: %s", *key, result)
                continue
            if result is None or sent is None:
                continue
            self._apply(key, orjson.loads(result), sent, offset)
        held, self._held = self._held, []
        for key, g in held:
            self._heard(key, g)

    def _stale_trials(self) -> float:
        """Seconds after which a half-open trial slot is given back in Redis: its instance
        may have died, and a breaker whose every trial slot is held admits nobody. Two
        reset periods: a trial still running then lets one more through, which is the
        lesser harm."""
        s = self.settings()
        return 2 * max(s.breaker_reset, s.breaker_reset_oauth)

    def _apply(self, key: Key, g: records.Snap, ref: records.Snap | None, offset: float) -> None:
        """Apply shared record ``g``, keeping local changes since ``ref`` (None: the base)."""
        rev = int(g.get("rev") or 0)
        if rev <= self._rev.get(key, 0):
            return
        self._rev[key] = rev
        table, name = key
        keep = key in self._urgent
        if ref is None:
            ref = self._base.get(key)
        if table == "connections":
            stats = self.connections.get(name)
            if stats is None:
                stats = self.connections[name] = ConnectionStats(name)
            self._base[key] = records.apply_connection(stats, g, ref, keep=keep, offset=offset)
        else:
            state = self.breakers.get(name)
            if state is None:
                state = self.breakers[name] = BreakerState()
            self._base[key] = records.apply_breaker(state, g, ref, keep=keep, offset=offset)

    # ------------------------------------------------------------------ messages

    def message(self, data: bytes) -> None:
        """A record or a session another instance (or this one) published."""
        try:
            found = orjson.loads(data)
            table, name = found["t"], found["k"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.warning("ignoring a malformed message on %s", self.channel)
            return
        if table == "sessions":
            expires = self.clock.monotonic() + float(found["ttl"]) / 1000
            self.sessions.learn(name, (str(found["c"]), expires))
            return
        if table not in ("connections", "breakers") or "r" not in found:
            return
        self._heard((table, name), found["r"])

    def _heard(self, key: Key, g: records.Snap) -> None:
        if key in self._sending:  # our own merge is under way: after its answer
            self._held.append((key, g))
            return
        self.published_applied += 1
        self._apply(key, g, None, self._offset())

    # ------------------------------------------------------------------ sessions

    def _session_bound(self, session: str, value: tuple[str, float]) -> None:
        connection_id, expires = value
        ttl_ms = max(1, int((expires - self.clock.monotonic()) * 1000))
        message = orjson.dumps({"t": "sessions", "k": session, "c": connection_id,
                                "ttl": ttl_ms})
        key = self.link.key("sess", session)
        self.batch.later(self.scripts.command("session", [key],
                                              [connection_id, ttl_ms, self.channel, message]))

    # ------------------------------------------------------------------ loading

    async def load(self) -> None:
        """Read every shared record into the local view (start-up, and after an outage).

        :raises Unreachable: Redis cannot be reached.
        """
        pattern = self.link.key("rs", "*")
        prefix = len(self.link.key("rs", ""))

        async def run(client: Any) -> list[tuple[str, bytes | None]]:
            names = [n async for n in client.scan_iter(match=pattern, count=LOAD_BATCH)]
            values: list[bytes | None] = []
            for i in range(0, len(names), LOAD_BATCH):
                values += await client.mget(names[i:i + LOAD_BATCH])
            return [(n.decode() if isinstance(n, bytes) else n, v)
                    for n, v in zip(names, values, strict=True)]

        offset = self._offset()
        for name, value in await self.link.call(run, timeout=LOAD_TIMEOUT):
            table, _, key = name[prefix:].partition(":")
            if value is None or table not in ("connections", "breakers"):
                continue
            self._apply((table, key), orjson.loads(value), None, offset)

