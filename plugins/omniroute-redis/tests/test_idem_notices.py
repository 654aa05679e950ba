"""An idempotency key's answer is published only when another request waits for it.

The scripts run against the real Redis; the channel is this test's own (pub/sub
channels are shared by every database of a server)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import redis.asyncio as aioredis

from omniroute_redis.scripts import Scripts


async def heard(pubsub: Any, wait: float = 0.2) -> list[bytes]:
    """The messages published on the test's channel within ``wait`` seconds."""
    out: list[bytes] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while (left := deadline - loop.time()) > 0:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
        if message is not None:
            out.append(message["data"])
    return out


async def test_answers_and_releases_are_published_only_to_waiters(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    scripts = Scripts()
    channel = f"test-idem-{secrets.token_hex(4)}"
    pubsub = client.pubsub()
    await pubsub.subscribe(channel)
    await heard(pubsub, 0.05)  # the subscription is in place

    async def claim(key: str, rid: str) -> str:
        found = await scripts.run(client, "idem_claim", [key], ["f00d", rid, 60_000])
        return found[0].decode()

    async def settle(key: str, rid: str) -> int:
        return int(await scripts.run(client, "idem_settle", [key], [
            rid, "done", 0, 200, "{}", "json", b'{"ok":1}', 60_000, channel]))

    async def release(key: str, rid: str) -> int:
        return int(await scripts.run(client, "idem_release", [key], [rid, channel]))

    try:
        # nobody asked again: settled quietly, and served from the hash afterwards
        assert await claim("k1", "r1") == "mine"
        assert await settle("k1", "r1") == 1
        assert await heard(pubsub) == []
        assert await claim("k1", "r2") == "done"
        # another request found it under way: the settle tells it
        assert await claim("k2", "r1") == "mine"
        assert await claim("k2", "r2") == "calling"
        assert await settle("k2", "r1") == 1
        assert await heard(pubsub) == [b"k2"]
        # a release: published when waited for, quiet otherwise
        assert await claim("k3", "r1") == "mine"
        assert await release("k3", "r1") == 1
        assert await heard(pubsub) == []
        assert await claim("k4", "r1") == "mine"
        assert await claim("k4", "r2") == "calling"
        assert await release("k4", "r2") == 0  # not its claim
        assert await release("k4", "r1") == 1
        assert await heard(pubsub) == [b"k4"]
        assert await claim("k4", "r2") == "mine"  # free again
    finally:
        await pubsub.aclose()
        await client.aclose()
