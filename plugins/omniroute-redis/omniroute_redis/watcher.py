"""Configuration changes announced over Redis pub/sub (a :class:`~omniroute.watch.ConfigWatcher`).

The SQLite default polls the database's config version every second. With
Redis, the instance that changed the configuration (a management API write)
publishes the version it loaded (:meth:`PubSubWatcher.announce`), and every
other instance checks the database at once when it hears a version it has not
loaded: a change is live everywhere within milliseconds. The poll stays as a
safety net for writes nobody announces (the ``omniroute`` command line, an
instance that cannot reach Redis), every :data:`SAFETY_POLL` seconds, and an
instance that lost its subscription checks once it is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from omniroute.storage import DatabaseBackend
from omniroute.watch import VersionPoll

from omniroute_redis.link import Link

log = logging.getLogger(__name__)

#: seconds between two polls of the database's config version (changes nobody announced)
SAFETY_POLL = 30.0


class PubSubWatcher(VersionPoll):
    """The version poll, told of changes over pub/sub (see the module docstring)."""

    def __init__(self, db: DatabaseBackend, *, reload: Callable[[], Awaitable[None]],
                 loaded: Callable[[], int], link: Link, interval: float = SAFETY_POLL) -> None:
        super().__init__(db, reload=reload, loaded=loaded, interval=interval)
        self.link = link
        self.channel = link.key("config")
        self.loaded_version = loaded
        self._checks: set[asyncio.Task[Any]] = set()
        self.heard_count = 0

    def announce(self, version: int) -> None:
        self.link.publish(self.channel, str(version))

    def heard(self, data: bytes) -> None:
        """A version another instance loaded: check now unless it is ours already."""
        try:
            version = int(data)
        except ValueError:
            log.warning("ignoring a malformed config notice on %s", self.channel)
            return
        self.heard_count += 1
        if version != self.loaded_version():
            task = asyncio.ensure_future(self.check())
            self._checks.add(task)
            task.add_done_callback(self._checks.discard)
