"""The database seam: what the storage modules ask of a database, and who serves a URL.

Without ``database_url`` the gateway keeps its configuration and usage in the
embedded SQLite file of its data directory (:class:`omniroute.storage.Database`,
unchanged). With it, the backend type registered for the URL's scheme
(``register_database_backends``; ``plugins/omniroute-postgres`` for
``postgresql://``) opens the database, so several instances share one
configuration and one usage table::

    cls = database_backend(plugins.database_backends, url)
    db = await cls.connect(url)              # migrated, like the SQLite file
    async with db.transaction():
        await db.execute("UPDATE ... WHERE id = ?", (conn_id,))
    rows = await db.fetchall("SELECT ... WHERE ts >= ?", (since,))

The SQL the core writes is one dialect for both: ``?`` placeholders, upserts with
``ON CONFLICT ... DO UPDATE`` (columns qualified by their table), integers and
reals. What a backend cannot take as it is, it translates itself, narrowly and
explicitly (``omniroute_postgres.dialect``: ``?`` to ``$n``, ``IS ?``,
``CAST(x AS INTEGER)``'s rounding, column types in DDL). Rows are read by
column name or position, and ``dict(row)`` gives every column.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ClassVar

from omniroute.config import backend_for_url

log = logging.getLogger(__name__)

#: a result row: ``row["column"]``, ``row[0]``, ``dict(row)`` (sqlite3.Row, asyncpg.Record)
Row = Any


class StorageError(Exception):
    """The database cannot be used as it is (e.g. a schema from a newer release)."""


class DatabaseBackend:
    """What the storage modules use: statements, transactions, migrations, the
    configuration version. The SQLite default and every ``database_url`` type
    (``register_database_backends``) subclass it.

    A backend's waits are bounded: a database that cannot be reached fails the
    call with one of :attr:`unavailable` within its timeouts, so the buffered
    writers (:mod:`omniroute.storage.buffered`) keep their rows for a retry.
    """

    #: the type's name (``omniroute plugins`` lists it)
    name: ClassVar[str]
    #: the ``database_url`` schemes it serves (``postgresql``, ``postgres``)
    schemes: ClassVar[tuple[str, ...]] = ()
    #: errors meaning "the database cannot be reached or used just now": what was being
    #: written is kept and tried again, never dropped as a bad row
    unavailable: ClassVar[tuple[type[BaseException], ...]] = ()
    #: a database server (not a file of this host): while it is away the gateway serves
    #: on the configuration it loaded, degraded rather than down
    remote: ClassVar[bool] = False
    #: errors meaning a constraint refused the statement (a unique name already taken)
    integrity: ClassVar[tuple[type[BaseException], ...]] = ()
    #: a temporary table made in a committed transaction is there in the next ones (one
    #: connection: SQLite); False: it is made again in each (a pool's connections differ)
    keeps_temp_tables: ClassVar[bool] = False

    #: where the database is, for messages (a path, or a URL without its password)
    where: str = ""
    #: :meth:`check`'s bound (seconds): a health poll must not wait a statement's timeout
    check_timeout: float = 1.0

    @classmethod
    async def connect(cls, url: str, *, migrations: Sequence[Sequence[str]] | None = None,
                      ) -> DatabaseBackend:
        """Open the database at ``url`` and bring it to the latest schema.

        :param migrations: the schema (default :data:`omniroute.storage.migrations.MIGRATIONS`).
        :raises StorageError: its schema is newer than this omniroute knows.
        :raises ConfigError: it cannot be reached or used (the message says why).
        """
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def schema_version(self) -> int:
        """The number of migrations applied."""
        raise NotImplementedError

    async def migrate(self, migrations: Sequence[Sequence[str]]) -> None:
        """Apply the migrations this database has not seen, each in a transaction; several
        processes migrating at once apply each migration once."""
        raise NotImplementedError

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """``async with db.transaction():`` the statements of this task in the block run in
        one transaction, committed at its end and rolled back when it raises."""
        raise NotImplementedError

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        raise NotImplementedError

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        raise NotImplementedError

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        """Run one statement; return the number of rows it changed."""
        raise NotImplementedError

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        raise NotImplementedError

    async def executemany_each(self, work: Sequence[tuple[str, Sequence[Sequence[Any]]]],
                               ) -> list[int]:
        """:meth:`executemany` of each ``(sql, rows)`` in order (a backend may run them in
        one go: SQLite, in one turn of its thread); the rows each changed where the
        backend can tell (SQLite), else the rows each was given."""
        counts = []
        for sql, rows in work:
            await self.executemany(sql, rows)
            counts.append(len(rows))
        return counts

    async def executemany_at_commit(
            self, work: Sequence[tuple[str, Sequence[Sequence[Any]]]]) -> None:
        """Inside a transaction: :meth:`executemany` of each ``(sql, rows)``, in order with
        the block's other statements, their changes not counted. A backend may keep them
        for the transaction's COMMIT and run them with it in one go (SQLite: in one turn
        of its thread); a failure then raises at the end of the ``async with
        db.transaction()`` block, and the transaction is rolled back."""
        await self.executemany_each(work)

    async def insert_new(self, sql: str, rows: Sequence[Sequence[Any]], *, table: str,
                         into: str, columns: Sequence[str], tally: bool = False) -> bool:
        """Inside a transaction: run ``sql``, an ``INSERT INTO table(...) VALUES (?, ...)
        ON CONFLICT (...) DO NOTHING``, once per row of ``rows`` (as :meth:`executemany`),
        and copy ``columns`` of each row it stored, and of no other row, into ``into``
        (a table of the caller's with those columns). A row the conflict skipped (stored
        by an earlier try of the same batch) is not copied, nor is a row another writer
        stores meanwhile, so what the caller adds up from ``into`` is this transaction's
        own. (SQLite: its write transactions exclude each other, so the rows past the
        largest id are this one's; a server: ``RETURNING``.)

        :param tally: the caller can add the rows up itself (it has them): when every
            row was stored, a backend that knows it cheaply copies nothing and returns
            True (SQLite, whose adding up in SQL costs the gateway's own CPU). False: the
            stored rows were copied into ``into``."""
        raise NotImplementedError

    async def prepare(self, *, inserts: Sequence[str] = (),
                      many: Sequence[tuple[str, int]] = ()) -> None:
        """At start-up, have ready the statements a writer's first flush would otherwise
        prepare on its data path: each of ``inserts`` (an ``INSERT ... VALUES (?, ...)``)
        as :meth:`insert_new` runs it, and each ``(sql, n)`` of ``many`` as
        :meth:`executemany_at_commit` runs ``sql`` over ``n`` rows. Nothing is written. A
        backend may do nothing (the default)."""

    def savepoint(self) -> AbstractAsyncContextManager[Any]:
        """Inside a transaction: a statement in this block that fails is undone alone, and
        the transaction goes on (a backend whose failed statement spoils the whole
        transaction rolls back to a savepoint; SQLite undoes the statement by itself)."""
        return _nothing()

    async def open_reader(self) -> DatabaseBackend | None:
        """A second handle for long reads (a month's usage summary) that must not hold up
        the writers; None: read through this one (it serves concurrent reads itself).
        The caller closes what it is given."""
        return None

    async def check(self) -> bool:
        """True when the database answers a query within :attr:`check_timeout`."""
        try:
            async with asyncio.timeout(self.check_timeout):
                await self.fetchone("SELECT 1")
        except Exception as exc:  # noqa: BLE001 - logged: one line a health poll, no trace
            log.warning("database check failed: %s: %s", type(exc).__name__, exc)
            return False
        return True

    # ------------------------------------------------------------------ config version
    # Every change to configuration (connections, keys, aliases, combos, settings)
    # bumps this counter, so other workers and instances know to reload.

    async def config_version(self) -> int:
        row = await self.fetchone("SELECT value FROM meta WHERE key = 'config_version'")
        return int(row[0]) if row else 0

    async def bump_config_version(self) -> int:
        raise NotImplementedError



@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


def database_backend(types: Mapping[str, type[DatabaseBackend]], url: str,
                     ) -> type[DatabaseBackend]:
    """The registered backend type serving ``url``'s scheme.

    :raises ConfigError: no loaded plugin serves it (install ``omniroute-postgres``).
    """
    found: type[DatabaseBackend] = backend_for_url(
        types.values(), url, setting="database_url", kind="database",
        hint="for postgresql:// install the omniroute-postgres plugin")
    return found
