"""Helpers of the postgres plugin's tests: gateways on one ``database_url``, and a TCP
proxy the tests cut to make the database unreachable.

(Named ``pg_testkit`` and not ``conftest`` helpers: the repository's own tests have a
``conftest``, and a test importing from it by name could get that one.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from omniroute.plugins import Plugins, load_plugins
from omniroute.testing import GatewayHarness, make_test_config, start_harness

import omniroute_postgres

UPSTREAM_KEY = "sk-upstream-test"
#: the wire message of asyncpg's ``COMMIT`` (a simple query: ``Q``, its length, the text)
COMMIT = b"Q\x00\x00\x00\x0cCOMMIT;\x00"


def plugins_with_postgres() -> Plugins:
    """The installed plugins, with this one (registered directly when its entry point is
    not installed, as in a source checkout run with PYTHONPATH)."""
    plugins = load_plugins()
    if "postgres" in plugins.database_backends:
        return plugins
    return load_plugins(extra=[("postgres", omniroute_postgres.plugin)])


async def start_instances(aiohttp_client: Callable[..., Any], base: Path, database_url: str,
                          count: int = 2, state_url: str | None = None,
                          **settings: Any) -> list[GatewayHarness]:
    """``count`` gateways, each with a data directory of its own (the same credentials
    key), all on ``database_url`` (and ``state_url`` when given)."""
    plugins = plugins_with_postgres()
    gateways = []
    for i in range(count):
        config = make_test_config(base / f"instance{i}", **settings).replace(
            database_url=database_url, state_url=state_url)
        gateways.append(await start_harness(aiohttp_client, config, plugins))
    return gateways


async def until(check: Callable[[], Any], timeout: float, step: float = 0.01) -> float:
    """Wait until ``check()`` is true; the seconds it took (AssertionError past ``timeout``)."""
    start = time.monotonic()
    while True:
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(step)


class Proxy:
    """A TCP proxy to the database that a test can cut (every connection through it is
    dropped, new ones are refused) and restore, standing in for a server that goes away;
    or pause (connections stay open and new ones are accepted, but nothing is passed
    on), standing in for a server that hangs or a network that drops packets; or lose
    the answer to one statement (:meth:`lose_answer_to`)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        #: the next statement holding these bytes loses its answer (None: none does)
        self._lose: bytes | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Refuse new connections and drop every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._pipes):
            writer.transport.abort()
        self._pipes.clear()

    async def restore(self) -> None:
        await self.start()  # on the same port

    def pause(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def lose_answer_to(self, marker: bytes) -> None:
        """The next statement whose message holds ``marker`` (:data:`COMMIT`) reaches the
        server, which runs it and answers; the answer is not passed on: the connection is
        dropped instead (a commit that landed, whose acknowledgement was lost)."""
        self._lose = marker

    async def close(self) -> None:
        self.resume()
        await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=5)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self._pipes |= {writer, up_writer}
        armed = asyncio.Event()  # a statement whose answer is lost went through here
        for src, dst, sends in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.create_task(self._pipe(src, dst, armed, sends=sends,
                                                  other=up_writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                    armed: asyncio.Event, *, sends: bool, other: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                await self._flowing.wait()
                if sends and self._lose is not None and self._lose in data:
                    self._lose = None
                    armed.set()
                elif not sends and armed.is_set():  # the server answered: the answer and
                    other.transport.abort()  # the connection are lost
                    self._pipes.discard(other)
                    break
                dst.write(data)
                await dst.drain()
        dst.transport.abort()
        self._pipes.discard(dst)


def through(url: str, proxy: Proxy, *, connect_timeout: float = 1,
            command_timeout: float = 2) -> str:
    """``url`` reaching the database through ``proxy``, with short waits."""
    parts = urlsplit(url)
    netloc = f"{parts.username}@127.0.0.1:{proxy.port}"
    query = f"{parts.query}&connect_timeout={connect_timeout:g}&command_timeout={command_timeout:g}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))
