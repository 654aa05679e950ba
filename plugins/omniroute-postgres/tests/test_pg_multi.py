"""Two gateway instances, one ``database_url``: one configuration, one usage table.

Each test starts real gateways (each with a data directory of its own, so nothing is
shared through the file system) on a fresh schema of the session's PostgreSQL database,
in front of the project's fake OpenAI upstream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from omniroute.testing import GatewayHarness
from pg_testkit import UPSTREAM_KEY, start_instances, until

pytestmark = pytest.mark.multi


def routable(gateways: list[GatewayHarness], model: str) -> bool:
    for gw in gateways:
        try:
            gw.catalog.router.resolve(model)
        except Exception:  # noqa: BLE001 - not yet: that instance's reload is under way
            return False
    return True


async def chat(gw: GatewayHarness, content: str, model: str = "up/gpt-4o-mini") -> int:
    resp = await gw.client.post("/v1/chat/completions", headers=gw.admin_headers, json={
        "model": model, "messages": [{"role": "user", "content": content}]})
    await resp.read()
    return resp.status


async def test_two_instances_share_one_configuration_and_one_usage_table(
        aiohttp_client: Any, tmp_path: Any, pg_url: str, upstream: Any) -> None:
    a, b = await start_instances(aiohttp_client, tmp_path, pg_url)
    # a connection and an alias made through one instance are live on the other
    await a.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                          "base_url": upstream.base_url, "api_key": UPSTREAM_KEY})
    resp = await a.client.post("/api/models/alias", headers=a.admin_headers,
                               json={"alias": "fast", "target": "up/gpt-4o-mini"})
    assert resp.status in (200, 201)
    await until(lambda: routable([a, b], "fast"), timeout=3.0)
    assert (await b.store.get_connection((await a.store.list_connections())[0].id)) is not None
    statuses = await asyncio.gather(*(chat(gw, f"q{i}", "fast")
                                      for i in range(10) for gw in (a, b)))
    assert statuses == [200] * 20
    await a.log.flush()
    await b.log.flush()
    rows = await a.store.db.fetchall(
        "SELECT request_id, model_requested, status FROM request_log ORDER BY id")
    assert len(rows) == 20 and len({r["request_id"] for r in rows}) == 20
    assert {r["model_requested"] for r in rows} == {"fast"}
    # both instances' records, in one table: the usage API of either counts all of them
    for gw in (a, b):
        resp = await gw.client.get("/api/usage/summary?from=1h", headers=gw.admin_headers)
        body = await resp.json()
        assert resp.status == 200, body
        assert body["totals"]["requests"] == 20
        assert body["totals"]["tokens_in"] > 0
    # the hourly totals were folded once per record, whichever instance wrote it
    total = await a.store.db.fetchone(
        "SELECT SUM(requests) FROM usage_rollup WHERE period = 3600")
    assert total[0] == 20


async def test_a_key_made_through_one_instance_is_accepted_by_the_other(
        aiohttp_client: Any, tmp_path: Any, pg_url: str, upstream: Any) -> None:
    a, b = await start_instances(aiohttp_client, tmp_path, pg_url)
    resp = await a.client.post("/api/keys", headers=a.admin_headers, json={"name": "team"})
    assert resp.status == 201, await resp.text()
    secret = (await resp.json())["key"]

    async def accepted() -> bool:
        got = await b.client.get("/v1/models", headers={"Authorization": f"Bearer {secret}"})
        await got.read()
        return got.status == 200

    await until(accepted, timeout=3.0)  # b reloads the keys on its next poll (1 s)


async def test_an_instance_stopped_under_load_loses_and_doubles_no_record(
        aiohttp_client: Any, tmp_path: Any, pg_url: str, upstream: Any) -> None:
    """One of two instances shuts down (what SIGTERM does: the app's cleanup, the request
    log flushed last) while requests are in flight on both: every answered request has
    exactly one record in the one table."""
    a, b = await start_instances(aiohttp_client, tmp_path, pg_url)
    await a.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                          "base_url": upstream.base_url, "api_key": UPSTREAM_KEY})
    await until(lambda: routable([a, b], "up/gpt-4o-mini"), timeout=3.0)
    upstream.latency = 0.5  # requests stay in flight while b stops

    async def one(gw: GatewayHarness, i: int) -> str | None:
        try:
            resp = await gw.client.post("/v1/chat/completions", headers=gw.admin_headers,
                                        json={"model": "up/gpt-4o-mini",
                                              "messages": [{"role": "user", "content": f"{i}"}]})
            await resp.read()
        except Exception:  # noqa: BLE001 - b went away under this request: no answer
            return None
        return resp.headers.get("X-OmniRoute-Request-Id") if resp.status == 200 else None

    calls = [asyncio.create_task(one(gw, i)) for i in range(20) for gw in (a, b)]
    await until(lambda: sum(r.path.endswith("/chat/completions")  # all 40 in flight
                            for r in upstream.requests) >= 40, timeout=10.0)
    # b's server shuts down as on SIGTERM: no new connections, the requests in flight
    # finish, then the app's cleanup closes the gateway (its request log flushed last)
    await b.client.server.close()
    answered = [rid for rid in await asyncio.gather(*calls) if rid is not None]
    await a.log.flush()
    b_prefix = b.gateway.new_request_id()[:12]
    assert len(answered) == 40, len(answered)  # b finished what it had begun
    assert sum(rid.startswith(b_prefix) for rid in answered) == 20
    rows = await a.store.db.fetchall("SELECT request_id FROM request_log")
    stored = [r["request_id"] for r in rows]
    assert len(stored) == len(set(stored))  # nothing twice
    assert set(answered) <= set(stored)  # nothing answered is missing, b's included
