"""Writes made by another process are seen at once: the config watcher's check on a miss.

"Another process" is a second :class:`Store` on the same database file, as the
CLI opens it. No test here sleeps: a new key or connection must work on the
very first request, not after the once-a-second poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from omniroute.storage import Connection, Database, Store
from omniroute.testing import make_test_config, start_harness
from omniroute.vault import Vault
from omniroute.watch import VersionPoll, after_check

UPSTREAM_KEY = "sk-upstream-test"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def gw(aiohttp_client: Any, tmp_path: Path) -> Any:
    config = make_test_config(tmp_path / "omniroute", require_api_key=True)
    h = await start_harness(aiohttp_client, config)
    h.gateway.watcher.interval = 3600  # the background poll must not be what finds the write
    await h.gateway.reload()  # the harness wrote its admin key without one
    return h


@pytest.fixture
async def elsewhere(gw: Any) -> AsyncIterator[Store]:
    """Another process's view of the gateway's database (as the CLI opens it)."""
    db = await Database.open(gw.gateway.config.db_path)
    try:
        yield Store(db, Vault(b"k" * 32))  # make_test_config's key
    finally:
        await db.close()


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_a_key_created_elsewhere_works_on_its_first_request(gw: Any,
                                                                  elsewhere: Store) -> None:
    _, secret = await elsewhere.create_key("from-another-process")
    resp = await gw.client.get("/v1/models", headers=_bearer(secret))
    assert resp.status == 200, await resp.text()

    _, admin = await elsewhere.create_key("ops", {"admin"})
    resp = await gw.client.get("/api/settings", headers=_bearer(admin))
    assert resp.status == 200, await resp.text()
    resp = await gw.client.get("/v1/models", headers={"x-api-key": admin})
    assert resp.status == 200


async def test_a_wrong_key_is_still_refused_after_one_check(gw: Any) -> None:
    reads = _count_version_reads(gw)
    resp = await gw.client.get("/v1/models", headers=_bearer("sk-or-wrong"))
    assert resp.status == 401
    assert (await resp.json())["error"]["code"] == "invalid_api_key"
    assert reads == [1]
    resp = await gw.client.get("/api/settings", headers=_bearer("sk-or-wrong"))
    assert resp.status == 401 and reads == [2]


async def test_keys_are_not_checked_when_they_are_optional(gw: Any) -> None:
    """With require_api_key off, a wrong key is ignored: no database read per request."""
    await gw.set_settings(require_api_key=False)
    gw.catalog.settings.require_api_key = False
    reads = _count_version_reads(gw)
    for _ in range(3):
        resp = await gw.client.get("/v1/models", headers=_bearer("sk-anything"))
        assert resp.status == 200
    assert reads == [0]


async def test_concurrent_misses_share_one_check(gw: Any, elsewhere: Store) -> None:
    reads = _count_version_reads(gw)
    _, secret = await elsewhere.create_key("burst")
    answers = await asyncio.gather(*(
        gw.client.get("/v1/models", headers=_bearer(secret)) for _ in range(20)))
    assert [r.status for r in answers] == [200] * 20
    assert 1 <= reads[0] <= 2, reads  # one check, at most one more queued behind it


async def test_a_provider_added_elsewhere_is_routed_by_its_prefix_at_once(
        gw: Any, elsewhere: Store, fake_openai: Any) -> None:
    key = gw.admin_key
    await elsewhere.save_connection(Connection(
        "conn_fresh", "openai", "fresh", "fresh",
        {"base_url": fake_openai.base_url}, {"api_key": UPSTREAM_KEY}))
    body = {"model": "fresh/gpt-4o-mini", "messages": HI}
    resp = await gw.client.post("/v1/chat/completions", json=body, headers=_bearer(key))
    assert resp.status == 200, await resp.text()
    assert resp.headers["X-OmniRoute-Provider"] == "fresh"

    await elsewhere.save_connection(Connection(
        "conn_pinned", "openai", "pinned", "pinned",
        {"base_url": fake_openai.base_url}, {"api_key": UPSTREAM_KEY}))
    resp = await gw.client.post("/v1/providers/pinned/chat/completions",
                                json={"model": "gpt-4o-mini", "messages": HI},
                                headers=_bearer(key))
    assert resp.status == 200, await resp.text()

    await elsewhere.save_connection(Connection(
        "conn_embed", "openai", "embed", "embed",
        {"base_url": fake_openai.base_url}, {"api_key": UPSTREAM_KEY}))
    resp = await gw.client.post("/v1/embeddings", headers=_bearer(key),
                                json={"model": "embed/text-embedding-3-small", "input": "hi"})
    assert resp.status == 200, await resp.text()

    await elsewhere.save_connection(Connection(
        "conn_count", "openai", "count", "count",
        {"base_url": fake_openai.base_url}, {"api_key": UPSTREAM_KEY}))
    resp = await gw.client.post("/v1/messages/count_tokens", headers=_bearer(key),
                                json={"model": "count/gpt-4o-mini", "messages": HI})
    assert resp.status == 200, await resp.text()


async def test_an_unknown_model_is_still_refused(gw: Any) -> None:
    reads = _count_version_reads(gw)
    resp = await gw.client.post("/v1/chat/completions", headers=_bearer(gw.admin_key),
                                json={"model": "nope/x", "messages": HI})
    assert resp.status == 400
    assert (await resp.json())["error"]["code"] == "model_not_found"
    assert reads == [1]


def _count_version_reads(gw: Any) -> list[int]:
    """Count the gateway's config version reads (one cell, so tests can watch it)."""
    db = gw.gateway.db
    real = db.config_version
    count = [0]

    async def counting() -> int:
        count[0] += 1
        return await real()

    db.config_version = counting
    return count


# ----------------------------------------------------------------------------- VersionPoll


class FakeVersions:
    """A database whose config version the test moves, and whose reads it can hold."""

    def __init__(self) -> None:
        self.version = 1
        self.reads = 0
        self.hold: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def config_version(self) -> int:
        self.reads += 1
        seen = self.version
        self.reading.set()
        if self.hold is not None:
            await self.hold.wait()
        return seen


def _poll(db: FakeVersions, reloads: list[int], loaded: list[int]) -> VersionPoll:
    async def reload() -> None:
        reloads.append(db.version)
        loaded[0] = db.version

    return VersionPoll(db, reload=reload, loaded=lambda: loaded[0])  # type: ignore[arg-type]


async def test_a_check_reloads_only_when_the_version_moved() -> None:
    db, reloads, loaded = FakeVersions(), [], [1]
    poll = _poll(db, reloads, loaded)
    assert await poll.check() is False
    db.version = 2
    assert await poll.check() is True
    assert await poll.check() is False
    assert reloads == [2] and db.reads == 3


async def test_a_caller_after_the_read_waits_for_a_fresh_one() -> None:
    """A check that read the version before a write cannot answer a miss that came after."""
    db, reloads, loaded = FakeVersions(), [], [1]
    poll = _poll(db, reloads, loaded)
    db.hold = asyncio.Event()
    first = asyncio.create_task(poll.check())
    sharing = asyncio.create_task(poll.check())  # before the read: shares it
    await asyncio.wait_for(db.reading.wait(), 1)
    db.version = 2  # a write lands while the first read is on its way
    later = [asyncio.create_task(poll.check()) for _ in range(5)]  # after the read started
    db.hold.set()
    assert await first is False and await sharing is False
    assert [await t for t in later] == [True] * 5
    assert db.reads == 2 and reloads == [2]


async def test_a_caller_that_leaves_does_not_cancel_the_shared_check() -> None:
    db, reloads, loaded = FakeVersions(), [], [1]
    poll = _poll(db, reloads, loaded)
    db.version, db.hold = 2, asyncio.Event()
    leaving = asyncio.create_task(poll.check())
    staying = asyncio.create_task(poll.check())
    await asyncio.wait_for(db.reading.wait(), 1)
    leaving.cancel()
    db.hold.set()
    assert await staying is True and reloads == [2]
    with pytest.raises(asyncio.CancelledError):
        await leaving


async def test_a_failing_reload_keeps_the_configuration_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    db = FakeVersions()
    db.version = 2

    async def broken() -> None:
        raise RuntimeError("disk on fire")

    poll = VersionPoll(db, reload=broken, loaded=lambda: 1)  # type: ignore[arg-type]
    assert await poll.check() is False
    assert "configuration reload failed" in caplog.text and "disk on fire" in caplog.text


async def test_the_background_poll_reloads_and_stops_cleanly() -> None:
    db, reloads, loaded = FakeVersions(), [], [1]
    poll = _poll(db, reloads, loaded)
    poll.interval = 0.01
    runner = asyncio.create_task(poll.run())
    db.version = 2
    async with asyncio.timeout(2):
        while not reloads:
            await asyncio.sleep(0.01)
    db.hold = asyncio.Event()  # a check in flight when the gateway closes
    db.version = 3
    db.reading.clear()
    await asyncio.wait_for(db.reading.wait(), 1)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks()
            if t.get_name() == "omniroute-config-check" and not t.done()]
    assert left == []  # no check outlives the gateway's database


async def test_after_check_passes_other_errors_and_misses_twice() -> None:
    db, reloads, loaded = FakeVersions(), [], [1]
    poll = _poll(db, reloads, loaded)
    tries = iter([KeyError("a"), "found"])

    def lookup() -> str:
        value = next(tries)
        if isinstance(value, Exception):
            raise value
        return value

    db.version = 2
    assert await after_check(poll, lookup, KeyError) == "found"
    with pytest.raises(KeyError):  # nothing changed: the miss stands, one read
        await after_check(poll, lambda: {}["x"], KeyError)
    with pytest.raises(ValueError):  # not a miss: no check at all
        await after_check(poll, lambda: int("x"), KeyError)
    assert db.reads == 2
