"""Configuration changes made elsewhere: the seam that tells a gateway to reload.

The configuration (connections, keys, aliases, combos, settings) lives in the
database, and other processes change it too: the CLI, other workers, other
instances. A :class:`ConfigWatcher` notices such changes and calls the
gateway's reload. It is asked in two ways:

* :meth:`ConfigWatcher.run` watches in the background, for changes nothing asks
  about (a revoked key, a removed connection, new settings). The SQLite default,
  :class:`VersionPoll`, reads the database's config version every second; a
  shared store would subscribe to its change notices instead.
* :meth:`ConfigWatcher.check` checks at once. A lookup that misses where a
  write made elsewhere a moment ago may be the reason (an unknown API key, an
  unknown model name or provider prefix) calls it before refusing, through
  :func:`after_check`, so a key created with ``omniroute keys create`` works on
  its very first request. Concurrent misses share one check.
* :meth:`ConfigWatcher.announce` is told when this process loaded a new version
  (a management API write, or a change it noticed): a watcher shared between
  instances (``state_url``) publishes it, so the others reload at once instead of
  at their next poll. The SQLite default has nobody to tell.

Usage sketch::

    watcher = VersionPoll(db, reload=gateway.reload, loaded=lambda: gateway.version)
    spawn(watcher.run())                      # cancelled at shutdown
    route = await after_check(watcher, lambda: router.resolve(model), ModelNotFound)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from omniroute.storage import DatabaseBackend

log = logging.getLogger(__name__)

T = TypeVar("T")

POLL_SECONDS = 1.0


class ConfigWatcher(Protocol):
    """Notices configuration changes made elsewhere and reloads."""

    async def run(self) -> None:
        """Watch until cancelled, reloading after each change."""

    async def check(self) -> bool:
        """Look for a change now and reload if there is one.

        :returns: whether the configuration was reloaded. Errors are logged, not
            raised (the previous configuration stays), and give ``False``.
        """

    def announce(self, version: int) -> None:
        """This process just loaded configuration ``version``; tell the other instances
        (must not block or raise)."""


class VersionPoll:
    """The SQLite default: the database's config version, polled and read on demand.

    Every configuration write bumps the version (:meth:`DatabaseBackend.bump_config_version`),
    whichever process makes it. A check is one indexed read; when the version
    differs from the loaded one, the gateway reloads.

    Checks are coalesced: callers that arrive before a check has read the
    version share it; one that arrives later waits for the next, which starts
    when the current one ends, so no caller trusts a read made before it asked.
    """

    def __init__(self, db: DatabaseBackend, *, reload: Callable[[], Awaitable[None]],
                 loaded: Callable[[], int], interval: float = POLL_SECONDS) -> None:
        """
        :param db: the database to watch.
        :param reload: reloads the configuration (and records the version it loaded).
        :param loaded: the version of the configuration in use.
        :param interval: seconds between two background polls.
        """
        self._db = db
        self._reload = reload
        self._loaded = loaded
        self.interval = interval
        self._running: asyncio.Task[bool] | None = None
        self._queued: asyncio.Task[bool] | None = None
        #: the last check failed (logged once, not at every poll)
        self._failing = False

    async def run(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.check()
        finally:  # the gateway is closing: no check may outlive the database
            for task in (self._queued, self._running):
                if task is not None:
                    task.cancel()

    def announce(self, version: int) -> None:
        """Nothing to do: every process polls the version itself."""

    async def check(self) -> bool:
        queued = self._queued
        if queued is None:
            queued = self._queued = asyncio.create_task(self._check_after(self._running),
                                                        name="omniroute-config-check")
        # shielded: a caller that goes away (a client disconnect) does not cancel the
        # check the others wait for
        return await asyncio.shield(queued)

    async def _check_after(self, previous: asyncio.Task[bool] | None) -> bool:
        if previous is not None:
            await asyncio.wait([previous])
        self._running, self._queued = self._queued, None
        try:
            if await self._db.config_version() == self._loaded():
                self._failing = False
                return False
            await self._reload()
            self._failing = False
            return True
        except Exception as exc:
            if not self._failing:  # once until a check succeeds (a database away for long)
                log.exception("configuration reload failed; keeping the previous one")
            else:
                log.debug("configuration check failed again: %s", exc)
            self._failing = True
            return False
        finally:
            self._running = None


async def after_check(watcher: ConfigWatcher, lookup: Callable[[], T],
                      *misses: type[Exception]) -> T:
    """``lookup()``, tried once more when it misses and a check finds a change.

    :param watcher: asked to check when ``lookup`` misses.
    :param lookup: a synchronous lookup in the loaded configuration.
    :param misses: the exceptions that mean "not found" (others pass at once).
    :raises: the miss itself when nothing changed, or when the reloaded
        configuration misses too.
    """
    try:
        return lookup()
    except misses:
        if not await watcher.check():
            raise
    return lookup()
