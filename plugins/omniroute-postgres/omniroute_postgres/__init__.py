"""Configuration and usage in PostgreSQL (the ``postgres`` plugin).

Installing it changes nothing until the gateway is configured with
``database_url = "postgresql://user@host:5432/omniroute"`` (``[server]`` in the TOML
file, or ``OMNIROUTE_DATABASE_URL``). Then the connections, keys, aliases, combos,
settings, prices, the request log and its totals, key spend, the audit log and stored
responses live in that database instead of the data directory's SQLite file, so every
instance pointed at it shares one configuration and one usage table. The schema is the
core's (:mod:`omniroute.storage.migrations`), translated where PostgreSQL reads SQL
differently (:mod:`.dialect`). See README.md and the project's docs/scaling.md.
"""

from __future__ import annotations

from collections.abc import Callable

from omniroute import DatabaseBackend, hookimpl

from omniroute_postgres.database import PostgresDatabase

__all__ = ["PostgresDatabase", "PostgresPlugin", "plugin"]


class PostgresPlugin:
    """The plugin's hook: one type, no connection until the configuration asks."""

    @hookimpl
    def register_database_backends(self, register: Callable[[type[DatabaseBackend]], None],
                                   ) -> None:
        register(PostgresDatabase)


#: the object the ``postgres`` entry point names
plugin = PostgresPlugin()
