"""One credential renewal per connection across instances (a
:class:`~omniroute.credentials.RenewalLock`).

A subscription account's refresh token may be single-use: if two instances renew
it at once, one of them spends a token the other already rotated, and the grant
may be revoked. So the instance whose request hits the 401 first takes the
connection's lock (``SET <prefix>:renew:<connection> <instance> NX PX``, for the
renewal's bound); the others wait until it is released (its name published on
``<prefix>:renew``, or every :data:`POLL` seconds), then take up the credentials
it stored (:meth:`~omniroute.providers.base.Provider.adopt_credentials`). A holder
that dies leaves its lock to expire with the renewal's bound. While Redis cannot
be reached, each instance renews on its own, as without sharing.
"""

from __future__ import annotations

import asyncio
import contextlib

from omniroute_redis.batch import Batch
from omniroute_redis.link import Link, Unreachable
from omniroute_redis.scripts import Scripts

#: seconds between two looks at a lock another instance holds (a missed notice costs this)
POLL = 0.1


class RedisRenewals:
    """The renewal locks of one gateway (see the module docstring)."""

    def __init__(self, link: Link, scripts: Scripts, batch: Batch, instance: str) -> None:
        self.link = link
        self.scripts = scripts
        self.batch = batch
        self.instance = instance
        self.channel = link.key("renew")
        self._released: dict[str, asyncio.Event] = {}
        self.held = self.waited = 0

    def _key(self, connection_id: str) -> str:
        return self.link.key("renew", connection_id)

    async def hold(self, connection_id: str, seconds: float) -> bool | None:
        try:
            taken = await self.link.command("SET", self._key(connection_id), self.instance,
                                            "NX", "PX", int(seconds * 1000))
        except Unreachable:
            return None
        if taken is not None:
            self.held += 1
            return True
        self.waited += 1
        return False

    async def wait(self, connection_id: str, seconds: float) -> None:
        key = self._key(connection_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            released = self._released.setdefault(key, asyncio.Event())
            try:
                if not await self.link.command("EXISTS", key):
                    return
            except Unreachable:
                return
            left = deadline - loop.time()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, POLL)):
                    await released.wait()

    def release(self, connection_id: str) -> None:
        self.batch.add(self.scripts.command("renew_release", [self._key(connection_id)],
                                            [self.instance, self.channel]))

    def heard(self, data: bytes) -> None:
        """A renewal was released somewhere: its waiters here look again."""
        key = data.decode() if isinstance(data, bytes) else str(data)
        event = self._released.pop(key, None)
        if event is not None:
            event.set()
