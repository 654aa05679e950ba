"""Helpers for tests against a real PostgreSQL (this plugin's, and the core storage tests'
run on both backends).

A test session gets a database of its own, ``omniroute_test_<random>``, made on the
server of ``OMNIROUTE_TEST_POSTGRES_URL`` (default: the local one, user postgres) and
dropped at the end; each test gets a schema of its own in it (the URL carries its
``search_path``), so tests never see each other's rows::

    with scratch_database() as server:        # once per session
        url = await fresh_schema(server)     # once per test
        db = await PostgresDatabase.connect(url)
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import asyncpg

#: where the tests make their databases (its user may create databases)
SERVER_URL = os.environ.get("OMNIROUTE_TEST_POSTGRES_URL",
                            "postgresql://postgres@127.0.0.1:5432/postgres")
#: every wait of the helpers (seconds)
TIMEOUT = 10.0
#: the wait for ``DROP DATABASE``, which waits for a checkpoint: a session's database holds
#: thousands of files (a schema per test), and syncing them on a busy disk took 12 s
DROP_TIMEOUT = 60.0


def with_database(url: str, name: str) -> str:
    """``url`` naming the database ``name`` instead."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _admin(sql: str, url: str = SERVER_URL, timeout: float = TIMEOUT) -> None:
    conn = await asyncpg.connect(url, timeout=TIMEOUT)
    try:
        await conn.execute(sql, timeout=timeout)
    finally:
        await conn.close(timeout=TIMEOUT)


def _blocking(sql: str, url: str, timeout: float = TIMEOUT) -> None:
    """:func:`_admin` from synchronous code, in a thread of its own (a session fixture
    may be set up while a test's event loop runs)."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _admin(sql, url, timeout)).result(timeout=2 * TIMEOUT
                                                                    + timeout)


@contextmanager
def scratch_database(server: str = SERVER_URL) -> Iterator[str]:
    """A new, empty database for the session; its URL. Dropped afterwards (with the
    connections still open to it).

    :raises AssertionError: the server cannot be reached (the test command starts it:
        ``scripts/postgres-up.sh``).
    """
    name = f"omniroute_test_{secrets.token_hex(4)}"
    try:
        _blocking(f'CREATE DATABASE "{name}"', server)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise AssertionError(f"these tests need PostgreSQL at {server} (the test command "
                             f"starts it: scripts/postgres-up.sh): {exc}") from None
    try:
        yield with_database(server, name)
    finally:
        _blocking(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', server, DROP_TIMEOUT)


async def fresh_schema(database_url: str) -> str:
    """A new schema in the scratch database; the URL whose connections use it."""
    schema = f"t_{secrets.token_hex(5)}"
    await _admin(f'CREATE SCHEMA "{schema}"', database_url)
    return f"{database_url}?search_path={schema}"
