"""Fixtures of the redis plugin's tests: the real Redis (a dedicated database, flushed
for each test), a fake upstream, and three gateway instances sharing both."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis_testkit import FakeUpstream, Instances, RedisServer, free_port, start_instances

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
    """Three instances with one connection to the fake upstream (prefix ``up``)."""
    made = await start_instances(aiohttp_client, tmp_path / "omniroute", redis_url)
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
