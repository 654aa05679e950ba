"""Several omniroute instances as one, through Redis (the ``redis`` plugin).

Installing it changes nothing until the gateway is configured with
``state_url = "redis://host:6379/0"`` (``[server]`` in the TOML file, or
``OMNIROUTE_STATE_URL``). Then every instance pointed at the same Redis (and the
same database) shares:

* the resilience state: cooldowns, terminal states, breakers, the statistics
  the strategies read, sticky sessions, and exact per-connection limits
  (:mod:`.resilience`, :mod:`.leases`);
* per-key budgets and limits: slots, reservations and spend (:mod:`.ledger`);
* configuration changes, announced over pub/sub (:mod:`.watcher`);
* with ``cache_backends = "redis"`` (or ``"memory,redis"``), the exact response
  cache (:mod:`.cache`).

When Redis cannot be reached each instance goes on with its own state, says so
in ``/api/monitoring/health`` and ``/metrics``, and resyncs when it is back. See
README.md and the project's docs/scaling.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omniroute import CacheBackend, SharedState, hookimpl

__all__ = ["RedisCache", "RedisPlugin", "RedisShared", "plugin"]


class RedisShared(SharedState):
    """The ``redis`` state backend as registered; one made is a
    :class:`omniroute_redis.backend.RedisBackend`.

    The implementation (the link, the scripts, the wire protocol with hiredis) is
    imported when a gateway makes one: a gateway with this plugin installed and no
    ``state_url`` held 0.6-0.8 MiB more resident memory for it (RSS a second after
    start, 53.3 MiB against 52.5-52.7 with the plugin blocked).
    """

    name = "redis"
    schemes = ("redis", "rediss", "unix")

    def __new__(cls, *args: Any, **kwargs: Any) -> RedisShared:
        if cls is RedisShared:
            from omniroute_redis.backend import RedisBackend

            cls = RedisBackend
        return super().__new__(cls)


class RedisCache(CacheBackend):
    """Options: ``url`` (the gateway passes its ``state_url``), ``ttl`` seconds,
    ``max_entries``, ``prefix`` (default ``omniroute``). The cache backend ``redis``
    as registered; one made is a :class:`omniroute_redis.cache.RedisCacheBackend`
    (imported then, as :class:`RedisShared`'s)."""

    name = "redis"
    description = "Shared by every instance through Redis (state_url); survives restarts"

    def __new__(cls, *args: Any, **kwargs: Any) -> RedisCache:
        if cls is RedisCache:
            from omniroute_redis.cache import RedisCacheBackend

            cls = RedisCacheBackend
        return super().__new__(cls)


class RedisPlugin:
    """The plugin's hooks: two types, no instance until the configuration asks."""

    @hookimpl
    def register_state_backends(self, register: Callable[[type[SharedState]], None]) -> None:
        register(RedisShared)

    @hookimpl
    def register_cache_backends(self, register: Callable[[type[CacheBackend]], None]) -> None:
        register(RedisCache)


#: the object the ``redis`` entry point names
plugin = RedisPlugin()
