"""The writes that follow answers: sent from a callback, read from the last reply,
bounded by the link's watchdog; a task only where an await is needed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis_testkit import SlowProxy, batch_parts, until

from omniroute_redis.batch import Batch
from omniroute_redis.link import Link
from omniroute_redis.scripts import Scripts

TIMEOUT = 0.25


@pytest.fixture
async def parts(redis_url: str) -> AsyncIterator[tuple[Link, Batch, Scripts]]:
    async with batch_parts(redis_url, TIMEOUT) as made:
        yield made


async def test_the_writes_of_a_kick_go_in_one_pipeline_with_no_task_woken(
        parts: tuple[Link, Batch, Scripts], client: aioredis.Redis) -> None:
    link, batch, scripts = parts
    await client.zadd("t:z", {"a": 1, "b": 2, "c": 3})
    batch.add(("ZREM", "t:z", "a"), later=True)
    batch.add(scripts.command("session", ["t:s"], ["conn", 60_000, "t:chan", "m"]),
              later=True)
    assert batch.round_trips == 0
    batch.kick()
    batch.add(("ZREM", "t:z", "b"), later=True)  # in the same turn: it goes along
    assert not batch._wake.is_set()
    await until(lambda: batch.round_trips >= 1, timeout=1.0)
    await asyncio.sleep(0.02)  # (past LATER: nothing else goes)
    assert batch.round_trips == 1, batch.__dict__
    assert not batch._wake.is_set()  # the writer task was never needed
    assert batch.sent == 3 and batch.dropped == 0
    assert await client.zrange("t:z", 0, -1) == [b"c"]
    assert await client.get("t:s") == b"conn"
    # a script Redis forgot: the task loads it and sends the write again
    await client.script_flush()
    batch.add(scripts.command("session", ["t:s2"], ["conn2", 60_000, "t:chan", "m"]))
    await until(lambda: batch.sent == 4, timeout=2.0)
    assert await client.get("t:s2") == b"conn2"
    assert link.up


async def test_an_unanswered_pipeline_marks_the_link_down_and_keeps_its_undos(
        slow_redis: SlowProxy) -> None:
    async with batch_parts(slow_redis.url, TIMEOUT) as (link, batch, _):
        slow_redis.delay = 1.0  # replies come later than the timeout
        loop = asyncio.get_running_loop()
        began = loop.time()
        batch.add(("ZREM", "t:z", "a"))
        batch.give_back([("ZREM", "t:z", "b")])
        await until(lambda: not link.up, timeout=2.0)
        assert TIMEOUT - 0.05 <= loop.time() - began < TIMEOUT + 0.5  # the watchdog
        assert batch.dropped == 1 and batch.round_trips == 0
        assert batch._undos == [("ZREM", "t:z", "b")]  # sent again when Redis answers
        slow_redis.delay = 0.0
        await until(lambda: link.up, timeout=5.0)
        await batch.flush()
        assert batch._undos == [] and batch.round_trips == 1


async def test_writes_queued_ride_in_front_of_a_command_sent_before_them(
        parts: tuple[Link, Batch, Scripts], client: aioredis.Redis) -> None:
    link, batch, scripts = parts
    # a slot held by a request that is over, the limit one: the give-back goes in
    # the same write as the next take, first, so the take finds the slot free
    assert await scripts.call(link, "take", ["t:s", "t:r"], ["a", 1, "", 30]) == b"0"
    wire = link.ready()
    assert wire is not None
    written = wire.writes
    batch.add(("ZREM", "t:s", "a"), later=True)
    batch.kick()  # (its send is due in the next turn: the take below goes first)
    assert await scripts.call(link, "take", ["t:s", "t:r"], ["b", 1, "", 30],
                              riders=batch) == b"0"
    assert wire.writes == written + 1  # one write to the socket for both
    await until(lambda: batch.round_trips == 1, timeout=1.0)
    assert batch.sent == 1 and not batch._queue
    assert await client.zrange("t:s", 0, -1) == [b"b"]
