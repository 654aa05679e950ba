"""Fixtures of the redis plugin's tests: the real Redis (a dedicated database, flushed
for each test), a fake upstream, and three gateway instances sharing both."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis_testkit import (
    FakeUpstream,
    Instances,
    RedisServer,
    SlowProxy,
    Write,
    free_port,
    start_instances,
)

from omniroute_redis.scripts import Scripts
from omniroute_redis.wire import Wire, _parse

#: database 13 of the machine's Redis (the test command starts redis-server when it is down)
REDIS_URL = os.environ.get("OMNIROUTE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


@pytest.fixture
def redis_url() -> Any:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.flushdb()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(f"these tests need Redis at {REDIS_URL} (the test command starts "
                    f"redis-server; .ci/run): {exc}")
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
async def upstream(aiohttp_server: Any) -> FakeUpstream:
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1"))
    return fake


@pytest.fixture
async def trio(aiohttp_client: Any, tmp_path: Path, redis_url: str,
               upstream: FakeUpstream) -> AsyncIterator[Instances]:
    """Three instances with one connection to the fake upstream (prefix ``up``).

    Their ``state_timeout`` is 2 s, not the default 0.25: these tests check that the
    instances act as one, and on a loaded machine (three gateways in one process beside
    the rest of the suite) a Redis reply once came after 0.25 s, the instances fell back
    to their own counters as designed, and a global budget test saw six requests served
    where four may be. The fallback itself is tested with instances of its own
    (test_outage's, with the timeouts they name)."""
    made = await start_instances(aiohttp_client, tmp_path / "omniroute", redis_url,
                                 state_timeout=2.0)
    yield made
    await made.close()



@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A redis-server of this test's own (to stop and start under load)."""
    server = RedisServer(free_port())
    await server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.resume()
        await server.stop()


@pytest.fixture
async def slow_redis(redis_url: str) -> AsyncIterator[SlowProxy]:
    """A proxy in front of the test's Redis whose replies the test can hold back."""
    proxy = SlowProxy(redis_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's Redis."""
    made = aioredis.Redis.from_url(redis_url)
    try:
        yield made
    finally:
        await made.aclose()


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Write]]:
    """Every write of every :class:`Wire`: per command its name (a script's name), and
    for the ``admit`` script the names of its steps."""
    names = {sha: name for name, sha in Scripts().sha.items()}
    log: list[Write] = []

    def described(command: tuple[Any, ...] | bytes) -> tuple[str, ...]:
        if isinstance(command, bytes):  # packed already: one whole command, no more
            parsed, end = _parse(command, 0)
            assert end == len(command), f"{len(command) - end} bytes after the command"
            args = tuple(a.decode() for a in parsed)
        else:
            args = command
        if args[0] != "EVALSHA":
            return (str(args[0]),)
        name, nkeys = names[args[1]], int(args[2])
        if name != "admit":
            return (name,)
        head = args[3 + nkeys]
        return (name, *(head.decode() if isinstance(head, bytes) else head).split()[::3])

    send, send_many = Wire.send_packed, Wire.send_many

    def logged_send(self: Wire, data: bytes) -> Any:  # (Wire.send packs, then comes here)
        log.append([described(data)])
        return send(self, data)

    def logged_send_many(self: Wire, commands: list[Any]) -> Any:
        log.append([described(c) for c in commands])
        return send_many(self, commands)

    monkeypatch.setattr(Wire, "send_packed", logged_send)
    monkeypatch.setattr(Wire, "send_many", logged_send_many)
    send_group = Wire.send_group

    def logged_send_group(self: Wire, commands: list[Any], then: Any = None) -> Any:
        log.append([described(c) for c in [*commands, *([then] if then else [])]])
        return send_group(self, commands, then)

    monkeypatch.setattr(Wire, "send_group", logged_send_group)
    send_writes = Wire.send_writes

    def logged_send_writes(self: Wire, commands: list[Any], then: Any) -> Any:
        log.append([described(c) for c in commands])
        return send_writes(self, commands, then)

    monkeypatch.setattr(Wire, "send_writes", logged_send_writes)
    yield log


@pytest.fixture
def no_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key or connection is leased (``omniroute_redis.keylease``): for the tests of
    the requests that ask Redis themselves, the path of every request near its limits
    (a lease would take their steps out of the batch, and add its own to Redis)."""
    from omniroute_redis.keylease import KeyLeases

    monkeypatch.setattr(KeyLeases, "ask", lambda *args: None)
