"""The configuration and usage in PostgreSQL: the ``database_url`` backend, over asyncpg.

One pool of connections per gateway. A statement outside a transaction takes a
connection for itself; ``async with db.transaction():`` holds one for the block, and
the task's statements inside it run there (a context variable carries it). The core's
SQL is translated once per statement text (:mod:`omniroute_postgres.dialect`).

Every wait is bounded: connecting (``connect_timeout``, 5 s), taking a connection
from the pool (the same), and each statement (``command_timeout``, 30 s). A server
that cannot be reached fails the call with one of :attr:`PostgresDatabase.unavailable`
(the request log keeps its records and writes them when the server is back). Options
ride on the URL's query: ``?connect_timeout=5&command_timeout=30&pool_size=10``;
every other query parameter is asyncpg's (``sslmode``, or a server setting such as
``search_path``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from omniroute import DatabaseBackend
from omniroute.config import ConfigError, redact_url
from omniroute.storage.backend import Row, StorageError
from omniroute.storage.migrations import MIGRATIONS

from omniroute_postgres.dialect import staged, translate

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

#: the URL's own options (the rest are asyncpg's) and their defaults
OPTIONS = {"connect_timeout": 5.0, "command_timeout": 30.0, "pool_size": 10.0}
#: a migration (a backfill over a large request log) may take this long per statement
MIGRATION_TIMEOUT = 600.0
#: the advisory lock key of migrations (any constant: one per database)
_MIGRATION_LOCK = 0x6F6D6E69  # "omni"
#: what every connection sets on the server (a setting the URL names wins): a transaction
#: left open by a client that hangs is ended after a minute, and the connection of a
#: client that died (a crashed host: no FIN) is found dead in about a minute, so neither
#: holds its locks (the request log writer's) for hours
SERVER_SETTINGS = {"idle_in_transaction_session_timeout": "60s", "tcp_keepalives_idle": "30",
                   "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}


def _number(text: str) -> int | float:
    """A ``numeric`` (``SUM`` of integers) as SQLite returns it: int when whole."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def server_settings(dsn: str) -> dict[str, str]:
    """:data:`SERVER_SETTINGS` but those the URL's query sets itself (asyncpg's own
    ``server_settings`` argument would override the URL's)."""
    named = {name for name, _ in parse_qsl(urlsplit(dsn).query, keep_blank_values=True)}
    return {k: v for k, v in SERVER_SETTINGS.items() if k not in named}


def split_url(url: str) -> tuple[str, dict[str, float]]:
    """``url`` without the options of :data:`OPTIONS`, and those options.

    :raises ConfigError: an option that is not a positive number.
    """
    parts = urlsplit(url)
    options = dict(OPTIONS)
    rest = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in options:
            try:
                options[name] = float(value)
            except ValueError:
                options[name] = -1.0
            if options[name] <= 0:
                raise ConfigError(f"database_url {redact_url(url)!r}: {name} must be a "
                                  f"positive number, got {value!r}")
        else:
            rest.append((name, value))
    return urlunsplit(parts._replace(query=urlencode(rest))), options


class PostgresDatabase(DatabaseBackend):
    """The ``database_url = "postgresql://..."`` backend (see the module docstring)."""

    name = "postgres"
    schemes = ("postgresql", "postgres")
    remote = True
    #: the server is away, refuses connections for now, or a wait ran out: try again later
    #: (asyncpg's errors join these when it is imported, see :func:`_asyncpg`)
    unavailable: ClassVar[tuple[type[BaseException], ...]] = (OSError, TimeoutError)
    integrity: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, pool: asyncpg.Pool, url: str, options: dict[str, float]) -> None:
        self.pool = pool
        self.where = redact_url(url)
        self.acquire_timeout = options["connect_timeout"]
        self.command_timeout = options["command_timeout"]
        #: the connection of the transaction this task is in (None: not in one)
        self._held: ContextVar[asyncpg.Connection | None] = ContextVar(
            f"omniroute-postgres-{id(self)}", default=None)

    @classmethod
    async def connect(cls, url: str, *, migrations: Sequence[Sequence[str]] | None = None,
                      ) -> PostgresDatabase:
        dsn, options = split_url(url)
        asyncpg = _asyncpg()
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=int(options["pool_size"]),
                timeout=options["connect_timeout"], command_timeout=options["command_timeout"],
                server_settings=server_settings(dsn), init=_init_connection)
        except (*cls.unavailable, asyncpg.PostgresError) as exc:
            raise ConfigError(f"cannot use the database {redact_url(url)}: "
                              f"{type(exc).__name__}: {exc}") from None
        db = cls(pool, url, options)
        try:
            await db.migrate(MIGRATIONS if migrations is None else migrations)
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        """Close the pool; connections still busy past ``command_timeout`` are dropped."""
        try:
            async with asyncio.timeout(self.command_timeout):
                await self.pool.close()
        except Exception as exc:  # noqa: BLE001 - logged; a pool that will not close is torn down
            log.warning("closing the database pool failed (%s: %s); terminating it",
                        type(exc).__name__, exc)
            self.pool.terminate()

    # ------------------------------------------------------------------ migrations

    async def schema_version(self) -> int:
        """The migrations applied (kept in the ``omniroute_schema`` table)."""
        exists = await self.fetchone("SELECT to_regclass('omniroute_schema') IS NOT NULL")
        if not (exists and exists[0]):
            return 0
        row = await self.fetchone("SELECT version FROM omniroute_schema")
        return int(row[0]) if row else 0

    async def migrate(self, migrations: Sequence[Sequence[str]]) -> None:
        """Apply the migrations not applied yet, each in a transaction; instances starting
        together take turns (an advisory lock), and each migration is applied once."""
        async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK,
                               timeout=MIGRATION_TIMEOUT)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS omniroute_schema (version BIGINT NOT NULL)")
                current = await conn.fetchval("SELECT version FROM omniroute_schema")
                if current is None:
                    await conn.execute("INSERT INTO omniroute_schema(version) VALUES (0)")
                    current = 0
                if current > len(migrations):
                    raise StorageError(
                        f"database {self.where} has schema v{current}, newer than this "
                        f"omniroute knows (v{len(migrations)}): upgrade omniroute")
                for version in range(current, len(migrations)):
                    async with conn.transaction():
                        for statement in migrations[version]:
                            await conn.execute(translate(statement), timeout=MIGRATION_TIMEOUT)
                        await conn.execute("UPDATE omniroute_schema SET version = $1",
                                           version + 1)
                    log.info("database %s migrated to schema v%d", self.where, version + 1)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)

    # ------------------------------------------------------------------ statements

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        if self._held.get() is not None:
            raise RuntimeError("a transaction is already open in this task")
        async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
            token = self._held.set(conn)
            try:
                async with conn.transaction():
                    yield conn
            finally:
                self._held.reset(token)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        conn = self._held.get()
        if conn is None:  # outside a transaction each statement stands alone anyway
            yield
            return
        async with conn.transaction():  # nested: a savepoint
            yield

    async def insert_new(self, sql: str, rows: Sequence[Sequence[Any]], *, table: str,
                         into: str, columns: Sequence[str], tally: bool = False) -> bool:
        """The batch is copied (``COPY``, binary) into a scratch table of the insert's
        columns, then one statement inserts it (:func:`omniroute_postgres.dialect.staged`),
        and its ``RETURNING`` copies the rows the server stored, and only those, into
        ``into``. No lock: writers of other instances store and copy their own rows
        meanwhile. (``COPY`` rather than the statement over arrays of values: asyncpg
        checks every array element's type, 4.5 µs a record, more than the insert.)"""
        conn = self._held.get()
        if conn is None:
            raise RuntimeError("insert_new() is for inside a transaction")
        if not rows:
            return False
        plan = staged(translate(sql), f"{table}_stage", into, tuple(columns))
        await conn.execute(plan.create)
        try:
            await conn.copy_records_to_table(
                plan.stage, records=[tuple(map(_storable, row)) for row in rows],
                columns=plan.columns)
        except _asyncpg().DataError as exc:
            raise _without_values(exc) from None
        await conn.execute(plan.insert)
        return False  # copied: the fold runs in the server, not in the gateway's CPU

    async def _run(self, method: str, sql: str, params: Iterable[Any]) -> Any:
        query, args = translate(sql), tuple(map(_storable, params))
        try:
            conn = self._held.get()
            if conn is not None:
                return await getattr(conn, method)(query, *args)
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                return await getattr(conn, method)(query, *args)
        except _asyncpg().DataError as exc:
            raise _without_values(exc) from None

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Row]:
        return list(await self._run("fetch", sql, params))

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Row | None:
        return await self._run("fetchrow", sql, params)

    async def execute(self, sql: str, params: Iterable[Any] = ()) -> int:
        status: str = await self._run("execute", sql, params)
        count = status.rsplit(" ", 1)[-1]  # "UPDATE 3", "INSERT 0 1", "CREATE TABLE"
        return int(count) if count.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Iterable[Any]]) -> None:
        args = [tuple(map(_storable, row)) for row in rows]
        if args:
            await self._run("executemany", sql, (args,))

    # ------------------------------------------------------------------ config version

    async def bump_config_version(self) -> int:
        row = await self.fetchone(
            "INSERT INTO meta(key, value) VALUES('config_version', '1') "
            "ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT)"
            " RETURNING value")
        return int(row[0]) if row else 0


def _asyncpg() -> ModuleType:
    """asyncpg, imported when a database is first connected (1.75 MiB of resident memory
    that a gateway on SQLite, with this plugin installed, never needs); its errors join
    :attr:`PostgresDatabase.unavailable` and ``integrity`` then."""
    import asyncpg

    if PostgresDatabase.integrity == ():
        PostgresDatabase.unavailable = (
            OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.InsufficientResourcesError,
            asyncpg.exceptions.TransactionRollbackError,
            asyncpg.exceptions.LockNotAvailableError)
        PostgresDatabase.integrity = (asyncpg.IntegrityConstraintViolationError,)
    return asyncpg


def _storable(value: Any) -> Any:
    """``value`` as PostgreSQL's text takes it: U+0000 (which it refuses: a client's model
    name with a NUL would lose its usage record) becomes U+FFFD; anything else as it is."""
    if value.__class__ is str and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


class ValueRefused(ValueError):
    """A value the database cannot store (too large, a NUL in text); says which
    argument and why, never the value (it may be a request body)."""


_ARGUMENT = re.compile(r"^invalid input for query argument (\$\d+): .*?(\([^()]*\))?$", re.S)


def _without_values(exc: asyncpg.DataError) -> Exception:
    """asyncpg names a refused argument with its value: keep the reason only."""
    match = _ARGUMENT.match(str(exc))
    if match is None:
        return exc  # the server's own message: it does not quote parameters
    reason = (match.group(2) or "(refused)").strip("()")
    return ValueRefused(f"query argument {match.group(1)}: {reason}")


async def _init_connection(conn: asyncpg.Connection) -> None:
    """Each new connection: sums of integers (``numeric``) read as SQLite's would be."""
    await conn.set_type_codec("numeric", encoder=str, decoder=_number, schema="pg_catalog",
                              format="text")
