"""The ``redis`` shared-state backend: what ``state_url = "redis://..."`` makes.

One :class:`RedisBackend` (what the registered
:class:`~omniroute_redis.RedisShared` makes) per gateway owns the link (one client, bounded calls),
the scripts, the queue of writes that follow answers, the slot leases, and the
parts it hands the gateway: the resilience store (:mod:`.resilience`), the
budgets' shared ledger (:mod:`.ledger`), the idempotency keys (:mod:`.idempotency`),
the credential renewal locks (:mod:`.renewals`) and the config watcher
(:mod:`.watcher`). It runs three tasks: the resilience sync, the writes, and the
pub/sub listener (one connection, channels ``<prefix>:state``, ``<prefix>:idem``,
``<prefix>:renew`` and ``<prefix>:config``).

Redis away at start-up is not an error: the gateway serves with its own state
(degraded) and catches up when Redis answers. After every outage (the link's
probe answering again, or the subscription coming back) it resyncs: the scripts
are loaded again, every shared record is read, every local record merged, and
the configuration version checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from omniroute.budgets import Budgets
from omniroute.config import Settings
from omniroute.resilience import Clock
from omniroute.storage import DatabaseBackend

from omniroute_redis import RedisShared
from omniroute_redis.batch import Batch
from omniroute_redis.idempotency import RedisKeys
from omniroute_redis.leases import Leases
from omniroute_redis.ledger import RedisLedger
from omniroute_redis.link import Link, Unreachable, split_prefix
from omniroute_redis.prefetch import Prefetch
from omniroute_redis.renewals import RedisRenewals
from omniroute_redis.resilience import RedisState
from omniroute_redis.scripts import Scripts
from omniroute_redis.watcher import PubSubWatcher

log = logging.getLogger(__name__)

class NotSupported(RuntimeError):
    """``state_url`` names a Redis this backend cannot work with (a Cluster node)."""


class RedisBackend(RedisShared):
    """Resilience state, budgets and config notices shared through Redis."""

    def __init__(self, url: str, *, clock: Clock, settings: Callable[[], Settings]) -> None:
        super().__init__(url, clock=clock, settings=settings)
        client_url, prefix = split_prefix(url)
        #: this gateway among the instances (slot and reservation names carry it)
        self.instance = secrets.token_hex(6)
        self.link = Link(client_url, timeout=lambda: settings().state_timeout, prefix=prefix)
        self.scripts = Scripts()
        self.batch = Batch(self.link, self.scripts)
        self.leases = Leases(self.link, self.scripts, self.batch, self.instance)
        self.state = RedisState(self.link, self.scripts, self.batch, self.leases, clock,
                                settings)
        self.keys = RedisKeys(self.link, self.scripts, self.batch, settings)
        self.renewals = RedisRenewals(self.link, self.scripts, self.batch, self.instance)
        self.config_watcher: PubSubWatcher | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.resyncs = 0
        self._ledger: RedisLedger | None = None

    def resilience_state(self) -> RedisState:
        return self.state

    def ledger(self, budgets: Budgets) -> RedisLedger:
        self._ledger = RedisLedger(self.link, self.scripts, self.batch, self.leases, budgets,
                                   self.settings)
        return self._ledger

    def idempotency_keys(self) -> RedisKeys:
        return self.keys

    def request_batch(self) -> Prefetch:
        return Prefetch(self.link, self.scripts, self.state.slots, self.batch)

    def renewal_lock(self) -> RedisRenewals:
        return self.renewals

    def watcher(self, db: DatabaseBackend, *, reload: Callable[[], Awaitable[None]],
                loaded: Callable[[], int]) -> PubSubWatcher:
        self.config_watcher = PubSubWatcher(db, reload=reload, loaded=loaded, link=self.link)
        return self.config_watcher

    async def start(self) -> None:
        """Load the scripts and the shared records, start the tasks.

        :raises NotSupported: ``state_url`` names a node of a Redis Cluster.
        """
        try:
            await self.link.call(self.scripts.load, timeout=2.0)
            await self._not_a_cluster()
            await self.state.load()
        except Unreachable:
            pass  # serving with this instance's own state; the probe resyncs later
        self.link.on_recovery(self.resync)
        self.link.on_recovery(self.batch.recovered)  # the give-backs kept while away
        self.batch.start()
        handlers: dict[str, Callable[[bytes], None]] = {self.state.channel: self.state.message,
                                                        self.keys.channel: self.keys.heard,
                                                        self.renewals.channel:
                                                            self.renewals.heard}
        if self.config_watcher is not None:
            handlers[self.config_watcher.channel] = self.config_watcher.heard
        self._tasks = [
            asyncio.create_task(self.state.run(), name="omniroute-redis-sync"),
            asyncio.create_task(self.link.listen(handlers, self._subscribed),
                                name="omniroute-redis-listen"),
        ]

    async def _not_a_cluster(self) -> None:
        """Refuse a Redis Cluster node: a request's ``admit`` script touches its API key's,
        its connection's, its cache entry's and its idempotency key's keys at once, which
        Cluster allows only within one hash slot, and the request path's connection does
        not follow ``MOVED`` (see the project's docs/scaling.md)."""
        found = await self.link.call(lambda r: r.info("cluster"), timeout=2.0)
        if int(found.get("cluster_enabled", 0)):
            raise NotSupported(
                "state_url names a node of a Redis Cluster, which omniroute's shared state "
                "does not support: use one Redis server (a primary, with replicas and "
                "Sentinel or a managed failover for availability)")

    async def _subscribed(self, again: bool) -> None:
        if again:  # what was published while the subscription was gone was missed
            await self.resync()

    async def resync(self) -> None:
        """After an outage: scripts, every record both ways, the configuration."""
        self.resyncs += 1
        with contextlib.suppress(Unreachable):
            await self.link.call(self.scripts.load, timeout=2.0)
            await self.state.load()
            await self.state.sync(everything=True)
        if self.config_watcher is not None:
            await self.config_watcher.check()
            # a change this instance announced while the link was down was never heard:
            # say again which version is loaded here (an instance holding it already
            # only compares the number)
            self.config_watcher.announce(self.config_watcher.loaded_version())

    async def close(self) -> None:
        if self._ledger is not None:  # the leases ended, with the last writes
            await self._ledger.keyleases.close()
        await self.state.slots.keyleases.close()
        self.link.closing()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Unreachable):
            await self.state.sync()  # the last transitions
        await self.batch.close()
        await self.link.close()

    def health(self) -> dict[str, Any]:
        return {**super().health(), **self.link.health(), "instance": self.instance,
                "writes_dropped": self.batch.dropped,
                **(self._ledger.keyleases.health() if self._ledger is not None else {}),
                **{f"connection_{k}": v for k, v in self.state.slots.keyleases.health().items()}}
