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

from omniroute import CacheBackend, SharedState, hookimpl

from omniroute_redis.backend import RedisShared
from omniroute_redis.cache import RedisCache

__all__ = ["RedisCache", "RedisPlugin", "RedisShared", "plugin"]


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
