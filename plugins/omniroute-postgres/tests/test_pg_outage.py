"""PostgreSQL away: requests keep flowing on the loaded configuration, usage records wait
in the request log's bounded buffer, and land once (no loss, no duplicate) when it is back.

The database is reached through a TCP proxy the test cuts (open connections dropped, new
ones refused) and restores, so the machine's PostgreSQL service is never stopped.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from omniroute.storage import RequestRecord
from pg_testkit import COMMIT, UPSTREAM_KEY, Proxy, start_instances, through, until

from omniroute_postgres import PostgresDatabase

pytestmark = pytest.mark.multi


async def chat(gw: Any, content: str) -> int:
    resp = await gw.client.post("/v1/chat/completions", headers=gw.admin_headers, json={
        "model": "up/gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
    await resp.read()
    return resp.status


async def test_requests_flow_and_records_wait_while_the_database_is_away(
        aiohttp_client: Any, tmp_path: Any, pg_url: str, proxy: Proxy, upstream: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    url = through(pg_url, proxy)
    a, b = await start_instances(aiohttp_client, tmp_path, url)
    await a.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                          "base_url": upstream.base_url, "api_key": UPSTREAM_KEY})
    await b.gateway.watcher.check()
    assert [await chat(gw, "before") for gw in (a, b)] == [200, 200]
    for gw in (a, b):
        await gw.log.flush()

    await proxy.cut()
    started = time.monotonic()
    statuses = [await chat(gw, f"during {i}") for i in range(5) for gw in (a, b)]
    assert statuses == [200] * 10  # the cached configuration serves them
    assert time.monotonic() - started < 10  # and no request waited on the database
    for gw in (a, b):
        assert await gw.log.flush() == 0  # bounded: the write fails within its timeouts
        assert gw.log.pending == 5 and gw.log.dropped == 0
    resp = await a.client.get("/api/monitoring/health")
    health = await resp.json()
    assert resp.status == 200 and health["status"] == "degraded"  # serving, not down
    # the kind only: the public health answer names no host, user or database
    assert health["database"] == {"ok": False, "backend": "postgres"}

    await proxy.restore()
    for gw in (a, b):  # the background writer tries again by itself (every 0.5 s)
        await until(lambda gw=gw: gw.log.written == 6, timeout=10.0)
        assert gw.log.pending == 0 and gw.log.dropped == 0
    direct = await PostgresDatabase.connect(pg_url)
    try:
        rows = await direct.fetchall("SELECT request_id, status FROM request_log")
        assert len(rows) == 12 and len({r["request_id"] for r in rows}) == 12
        assert {r["status"] for r in rows} == {200}
        total = await direct.fetchone(
            "SELECT SUM(requests) FROM usage_rollup WHERE period = 3600")
        assert total[0] == 12
    finally:
        await direct.close()


async def test_a_database_that_hangs_holds_nothing_up_for_longer_than_its_timeouts(
        pg_url: str, proxy: Proxy) -> None:
    """Connections open, packets unanswered: each write gives up within the URL's
    timeouts (command 2 s, connect 1 s), the records are kept, and written once it
    answers again."""
    from omniroute.storage import RequestLog

    db = await PostgresDatabase.connect(through(pg_url, proxy))
    try:
        log = RequestLog(db)
        log.add(RequestRecord(request_id="hung-0", ts=1000.0, endpoint="chat", status=200))
        assert await log.flush() == 1
        proxy.pause()
        log.add(RequestRecord(request_id="hung-1", ts=1001.0, endpoint="chat", status=200))
        for _ in range(2):  # the pooled connection hangs, then a new one cannot connect
            began = time.monotonic()
            assert await log.flush() == 0
            assert time.monotonic() - began < 6.0
            assert log.pending == 1 and log.dropped == 0
        began = time.monotonic()
        assert await db.check() is False
        assert time.monotonic() - began < 1.8  # its own bound (1 s), not command_timeout
        proxy.resume()

        async def written() -> bool:
            return await log.flush() == 1

        await until(written, timeout=15.0)  # once the proxy passes packets again
        row = await db.fetchone("SELECT COUNT(*) FROM request_log")
        assert row[0] == 2
    finally:
        proxy.resume()
        await db.close()


async def test_a_batch_whose_commit_was_not_acknowledged_is_not_stored_twice(
        pg_url: str, proxy: Proxy) -> None:
    """The database committed, the answer was lost: the retried batch adds nothing."""
    from omniroute.storage import RequestLog

    db = await PostgresDatabase.connect(through(pg_url, proxy))
    try:
        log = RequestLog(db)
        records = [RequestRecord(request_id=f"once-{i}", ts=1000.0 + i, endpoint="chat",
                                 status=200, prompt_tokens=1) for i in range(3)]
        for record in records:
            log.add(record)
        assert await log.flush() == 3
        for record in records:  # as _requeue puts back a batch it believes lost
            log.add(record)
        assert await log.flush() == 3
        row = await db.fetchone("SELECT COUNT(*), SUM(prompt_tokens) FROM request_log")
        assert tuple(row) == (3, 3)
        total = await db.fetchone("SELECT SUM(requests) FROM usage_rollup WHERE period = 3600")
        assert total[0] == 3  # the totals count each record once too
    finally:
        await db.close()


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the machine's Redis (database 12; started by the
    test command), its keys deleted afterwards (the redis plugin's tests flush database
    13, never this)."""
    prefix = f"pgtest{secrets.token_hex(4)}"
    yield prefix
    try:
        import redis.asyncio as aioredis
    except ImportError:  # not installed: nothing was written there
        return
    client = aioredis.Redis.from_url("redis://127.0.0.1:6379/12", socket_timeout=5)
    try:
        names = [name async for name in client.scan_iter(match=f"{prefix}:*")]
        if names:
            await client.delete(*names)
    finally:
        await client.aclose()


@pytest.mark.parametrize("with_redis", [False, True], ids=["alone", "with-redis"])
async def test_keys_with_a_budget_while_the_database_is_away(
        aiohttp_client: Any, tmp_path: Any, pg_url: str, proxy: Proxy, upstream: Any,
        with_redis: bool, redis_prefix: str) -> None:
    """Alone, an instance cannot see the others' spend while the database is away: a key
    with a budget is refused (503, as when SQLite fails). With ``state_url`` the spend is
    shared through Redis, which admits it: every request flows."""
    settings: dict[str, Any] = {}
    state_url = None
    if with_redis:
        pytest.importorskip("omniroute_redis")
        state_url = f"redis://127.0.0.1:6379/12?prefix={redis_prefix}"
    a, b = await start_instances(aiohttp_client, tmp_path, through(pg_url, proxy),
                                 state_url=state_url, **settings)
    await a.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                          "base_url": upstream.base_url, "api_key": UPSTREAM_KEY})
    resp = await a.client.post("/api/keys", headers=a.admin_headers,
                               json={"name": "team", "limits": {"daily_usd": 100}})
    assert resp.status == 201, await resp.text()
    secret = (await resp.json())["key"]
    for gw in (a, b):
        await gw.gateway.watcher.check()

    async def chat_as_team(gw: Any) -> int:
        got = await gw.client.post("/v1/chat/completions",
                                   headers={"Authorization": f"Bearer {secret}"},
                                   json={"model": "up/gpt-4o-mini",
                                         "messages": [{"role": "user", "content": "hi"}]})
        await got.read()
        return got.status

    assert [await chat_as_team(gw) for gw in (a, b)] == [200, 200]
    await proxy.cut()
    for gw in (a, b):  # each instance's next sync of the spend fails
        await until(lambda gw=gw: not gw.gateway.budgets.healthy, timeout=10.0)
    statuses = [await chat_as_team(gw) for gw in (a, b) for _ in range(3)]
    assert statuses == ([200] * 6 if with_redis else [503] * 6), statuses
    await proxy.restore()
    for gw in (a, b):
        await until(lambda gw=gw: gw.gateway.budgets.healthy, timeout=10.0)
        assert await chat_as_team(gw) == 200


async def test_audit_entries_and_budget_spend_whose_commit_was_not_acknowledged_count_once(
        pg_url: str, proxy: Proxy) -> None:
    """The server commits, the answer is lost (the connection drops): the audit log keeps
    its entries and writes them again, the budgets write their batch again; neither is
    stored twice (migration 11: an entry's uid, a batch's id)."""
    from omniroute.budgets import Budgets, Limits, SqliteSpendStore
    from omniroute.resilience.clock import ManualClock
    from omniroute.storage.audit import AuditEntry, AuditLog

    db = await PostgresDatabase.connect(through(pg_url, proxy))
    try:
        audit = AuditLog(db)
        for i in range(3):
            audit.add(AuditEntry(ts=1000.0 + i, actor="admin_session",
                                 action="POST /api/keys", target=f"k{i}", status=201))
        proxy.lose_answer_to(COMMIT)
        assert await audit.flush() == 0  # as far as it knows, nothing was stored
        assert audit.pending == 3 and audit.dropped == 0
        assert await audit.flush() == 3
        rows = await db.fetchall("SELECT target FROM audit_log ORDER BY ts")
        assert [r["target"] for r in rows] == ["k0", "k1", "k2"]

        clock = ManualClock(wall=1_741_600_000.0)
        budgets = Budgets(SqliteSpendStore(db), clock)
        await budgets.sync()
        limits = Limits.parse({"daily_usd": 100})
        assert limits is not None

        first, second = budgets.enter("k", limits), budgets.enter("k", limits)
        held = [budgets.reserve(first, limits, 0, 0), budgets.reserve(second, limits, 0, 0)]
        budgets.settle(held[0], 1.5, 10)
        budgets.leave(first)
        proxy.lose_answer_to(COMMIT)
        with pytest.raises(db.unavailable):
            await budgets.sync()
        assert not budgets.healthy
        budgets.settle(held[1], 0.25, 10)  # ends while the first batch waits for its retry
        budgets.leave(second)
        await budgets.sync()
        assert budgets.healthy
        row = await db.fetchone("SELECT cost_usd, tokens, requests FROM key_spend "
                                "WHERE key_id = 'k' AND period = 'daily'")
        assert tuple(row) == (1.75, 20, 2)
        window = budgets.window(budgets.state("k"), limits, "daily", clock.time())
        assert window.spent_usd == 1.75
    finally:
        await db.close()


async def test_a_stored_response_read_waits_a_bounded_time_on_a_hung_database(
        aiohttp_client: Any, tmp_path: Any, pg_url: str, proxy: Proxy, upstream: Any) -> None:
    """A request naming a ``previous_response_id`` (and ``GET /v1/responses/{id}``) while
    the database hangs: answered 503 in OpenAI's error shape within the read's 2 s bound,
    not after ``command_timeout`` (30 s here), and not as the unknown id's 400/404."""
    parts = urlsplit(pg_url)
    url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}",
                                    query=f"{parts.query}&connect_timeout=1"))
    (gw,) = await start_instances(aiohttp_client, tmp_path, url, count=1)
    await gw.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                           "base_url": upstream.base_url, "api_key": UPSTREAM_KEY})

    async def respond(**body: Any) -> tuple[int, dict[str, Any], Any]:
        resp = await gw.client.post("/v1/responses", headers=gw.admin_headers,
                                    json={"model": "up/gpt-4o-mini", **body})
        return resp.status, await resp.json(), resp.headers

    status, first, _ = await respond(input="hello")
    assert status == 200, first
    status, unknown, _ = await respond(input="again", previous_response_id="resp_nope")
    assert status == 400 and unknown["error"]["code"] == "previous_response_not_found"

    proxy.pause()  # connections stay open, nothing comes back
    try:
        began = time.monotonic()
        status, body, headers = await respond(input="and on",
                                              previous_response_id=first["id"])
        waited = time.monotonic() - began
        assert status == 503, body
        assert body["error"]["type"] == "server_error"
        assert body["error"]["code"] == "stored_responses_unavailable"
        assert headers["Retry-After"] == "1"
        assert waited < 4.0, waited  # the read's bound (2 s), not command_timeout (30 s)
        began = time.monotonic()
        resp = await gw.client.get(f"/v1/responses/{first['id']}", headers=gw.admin_headers)
        got = await resp.json()
        assert resp.status == 503 and got["error"]["code"] == "stored_responses_unavailable"
        assert time.monotonic() - began < 4.0
    finally:
        proxy.resume()

    async def continued() -> bool:
        status, _, _ = await respond(input="and on", previous_response_id=first["id"])
        return status == 200

    await until(continued, timeout=35.0)  # once the database answers again
