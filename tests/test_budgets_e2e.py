"""Per-key budgets and limits on the running gateway, driven by the official SDKs.

Prices come from the gateway's price book, with an operator override that makes every
token cost ``PER_TOKEN`` (``flat_price``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import ollama
import openai
import orjson
import pytest
from fakes.openai_upstream import FakeOpenAI
from google import genai
from google.genai import errors as genai_errors

from omniroute.appkeys import BUDGETS
from omniroute.budgets.stage import WARNING_HEADER

HI = [{"role": "user", "content": "hi there"}]
MODEL = "up/gpt-4o-mini"
#: what the test price book charges for one token, in and out
PER_TOKEN = 0.001


async def flat_price(gw: Any, connection_id: str) -> None:
    """Every token of the connection costs ``PER_TOKEN`` (an operator's price override)."""
    per_million = PER_TOKEN * 1_000_000
    resp = await gw.client.put("/api/pricing", headers=gw.admin_headers, json={
        "model": "*", "connection": connection_id, "input": per_million,
        "output": per_million})
    assert resp.status == 200, await resp.text()


@pytest.fixture
async def priced(gw: Any) -> Any:
    await flat_price(gw, gw.connection["id"])
    gw.budgets = gw.client.app[BUDGETS]
    return gw


async def new_key(gw: Any, **fields: Any) -> tuple[str, str]:
    """A key made through the management API: (its id, its secret)."""
    resp = await gw.client.post("/api/keys", json={"name": "limited", **fields},
                                headers=gw.admin_headers)
    body = await resp.json()
    assert resp.status == 201, body
    return body["id"], body["key"]


def oai(gw: Any, secret: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=secret, max_retries=0,
                              timeout=10)


# ---------------------------------------------------------------------- budgets

async def test_an_exhausted_budget_is_a_429_in_every_client_format(priced: Any) -> None:
    gw = priced
    _, secret = await new_key(gw, limits={"daily_usd": 0.001})
    first = await oai(gw, secret).chat.completions.with_raw_response.create(
        model=MODEL, messages=HI, max_tokens=20)
    assert first.http_response.status_code == 200

    with pytest.raises(openai.RateLimitError) as caught:
        await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)
    err = caught.value
    assert err.code == "budget_exceeded"
    assert "daily budget is used up: spent $0.0" in err.message and "of $0.00" in err.message
    assert "resets at " in err.message
    retry = int(err.response.headers["Retry-After"])
    assert 0 < retry <= 86400
    # what a program reads beside the message, in each format's own place for it
    details = err.body["details"]  # type: ignore[index]
    assert details["period"] == "daily" and details["unit"] == "usd"
    assert details["limit"] == 0.001 and details["spent"] > details["limit"]
    assert details["reserved"] == 0 and details["resets_at"].endswith("T00:00:00Z")

    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key=secret, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as a_caught:
        await client.messages.create(model=MODEL, max_tokens=20, messages=HI)
    assert a_caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert "Budget exceeded" in a_caught.value.message
    assert a_caught.value.response.headers["Retry-After"]
    assert a_caught.value.body["error"]["details"] == details  # type: ignore[index]

    google = genai.Client(api_key=secret, http_options={"base_url": gw.base_url,
                                                        "api_version": "v1beta"})
    with pytest.raises(genai_errors.ClientError) as g_caught:
        await google.aio.models.generate_content(model=MODEL, contents="hi")
    assert g_caught.value.code == 429 and g_caught.value.status == "RESOURCE_EXHAUSTED"
    assert "Budget exceeded" in (g_caught.value.message or "")
    info = g_caught.value.details["error"]["details"][0]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "BUDGET_EXCEEDED" and info["domain"] == "omniroute"
    assert info["metadata"] == {k: str(v) for k, v in details.items()}

    local = ollama.AsyncClient(host=gw.base_url, headers={"Authorization": f"Bearer {secret}"})
    with pytest.raises(ollama.ResponseError) as o_caught:
        await local.chat(model=MODEL, messages=HI)
    assert o_caught.value.status_code == 429 and "Budget exceeded" in o_caught.value.error
    resp = await gw.client.post("/api/chat", json={"model": MODEL, "messages": HI},
                                headers={"Authorization": f"Bearer {secret}"})
    body = await resp.json()
    assert resp.status == 429 and list(body) == ["error"] and isinstance(body["error"], str)


async def test_an_exhausted_token_limit_is_a_429_with_what_was_used(gw: Any) -> None:
    """Token limits need no price: the upstream's counts are what is spent."""
    _, secret = await new_key(gw, limits={"daily_tokens": 5})
    first = await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)
    used = first.usage.prompt_tokens + first.usage.completion_tokens  # type: ignore[union-attr]
    assert used > 5  # admitted alone while under the limit; its real use is counted
    with pytest.raises(openai.RateLimitError) as caught:
        await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)
    err = caught.value
    assert err.code == "budget_exceeded"
    assert f"daily token limit is used up: spent {used} tokens of 5 tokens" in err.message
    assert 0 < int(err.response.headers["Retry-After"]) <= 86400


def estimate_usd(body: bytes, max_tokens: int) -> float:
    """What the gateway reserves for a chat request: its body's bytes / 4 (rounded up) as
    input tokens and ``max_tokens`` as output, each at ``PER_TOKEN``."""
    return (-(-len(body) // 4) + max_tokens) * PER_TOKEN


async def test_overspend_is_bounded_under_50_concurrent_requests(
        omniroute: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(api_key="sk-up", latency=1.0)  # every request is in flight together
    server = await aiohttp_server(fake.app)
    conn = await omniroute.add_provider({"type": "openai", "name": "slow", "prefix": "up",
                                         "base_url": str(server.make_url("/v1")),
                                         "api_key": "sk-up"})
    await flat_price(omniroute, conn["id"])
    limit = 0.5
    key_id, secret = await new_key(omniroute, limits={"daily_usd": limit})
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    body = orjson.dumps({"model": MODEL, "messages": HI, "max_tokens": 40})
    estimate = estimate_usd(body, 40)

    async def one() -> tuple[int, dict[str, Any]]:
        resp = await omniroute.client.post("/v1/chat/completions", headers=headers, data=body)
        return resp.status, await resp.json()

    results = await asyncio.gather(*(one() for _ in range(50)))
    served = [b for s, b in results if s == 200]
    refused = [b for s, b in results if s == 429]
    assert len(served) + len(refused) == 50 and served and refused
    assert {b["error"]["code"] for b in refused} == {"budget_exceeded"}
    costs = [(b["usage"]["prompt_tokens"] + b["usage"]["completion_tokens"]) * PER_TOKEN
             for b in served]
    budgets = omniroute.client.app[BUDGETS]
    state = budgets.state(key_id)
    spent = sum(w.spent_usd for w in state.windows.values())
    assert spent == pytest.approx(sum(costs))
    # The bound the design gives (one process): a request is admitted while the spend is
    # under the limit and the reservations in flight plus its estimate fit in the limit,
    # or while it is alone; so the spend passes the limit by at most one request admitted
    # alone, plus what requests cost beyond their estimates.
    beyond = sum(max(0.0, cost - estimate) for cost in costs)
    assert spent <= limit + max(costs) + beyond + 1e-9
    # ... and while requests are in flight together, their estimates fit in the limit: at
    # most limit / estimate of them are admitted before one has finished (with 1 s of
    # upstream latency, none has when the others are admitted)
    assert len(served) <= limit // estimate + 1e-9
    assert state.reserved_usd == pytest.approx(0) and state.in_flight == 0 and state.held == 0
    assert len(fake.requests) == len(served)  # a refused request never reached the upstream


async def test_the_reservation_comes_from_the_body_size_and_an_unknown_cost_charges_it(
        omniroute: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(api_key="sk-up", latency=0.5, models=["unpriced-model"])
    server = await aiohttp_server(fake.app)
    conn = await omniroute.add_provider({"type": "openai", "name": "slow", "prefix": "up",
                                         "base_url": str(server.make_url("/v1")),
                                         "api_key": "sk-up"})
    price = {"model": "unpriced-model", "connection": conn["id"]}
    resp = await omniroute.client.put("/api/pricing", headers=omniroute.admin_headers, json={
        **price, "input": PER_TOKEN * 1e6, "output": PER_TOKEN * 1e6})
    assert resp.status == 200, await resp.text()
    key_id, secret = await new_key(omniroute, limits={"daily_usd": 10, "daily_tokens": 10**6})
    body = orjson.dumps({"model": "up/unpriced-model", "max_tokens": 33,
                         "messages": [{"role": "user", "content": "count me " * 50}]})
    request = asyncio.ensure_future(omniroute.client.post(
        "/v1/chat/completions", data=body, headers={
            "Authorization": f"Bearer {secret}", "Content-Type": "application/json"}))
    state = omniroute.client.app[BUDGETS].state(key_id)
    async with asyncio.timeout(5):
        while not state.reserved_tokens:  # admitted: its reservation is set aside
            await asyncio.sleep(0.01)
    assert state.reserved_tokens == -(-len(body) // 4) + 33
    assert state.reserved_usd == pytest.approx(estimate_usd(body, 33))
    # the price goes away while the request is upstream: its cost cannot be known
    resp = await omniroute.client.delete("/api/pricing", headers=omniroute.admin_headers,
                                         params=price)
    assert resp.status == 200, await resp.text()
    answer = await request
    assert answer.status == 200 and "X-OmniRoute-Response-Cost" not in answer.headers
    daily = state.windows["daily"]
    assert daily.spent_usd == pytest.approx(estimate_usd(body, 33))  # charged its estimate
    usage = (await answer.json())["usage"]
    assert daily.spent_tokens == usage["prompt_tokens"] + usage["completion_tokens"]
    assert state.in_flight == 0 and state.reserved_usd == 0


async def test_unpriced_models_are_refused_to_keys_with_a_usd_budget(gw: Any) -> None:
    gw.fake.models.append("unpriced-model")
    _, secret = await new_key(gw, limits={"daily_usd": 5})
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await oai(gw, secret).chat.completions.create(model="up/unpriced-model", messages=HI)
    assert caught.value.code == "model_unpriced"
    assert "No price is known for model 'up/unpriced-model'" in caught.value.message
    assert "PUT /api/pricing" in caught.value.message
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key=secret, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as a_caught:
        await client.messages.create(model="up/unpriced-model", max_tokens=20, messages=HI)
    assert a_caught.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert "PUT /api/pricing" in a_caught.value.message
    assert gw.fake.requests == []  # refused before dispatch

    # a route keeps its priced targets: the unpriced step of a combo is left out
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers, json={
        "name": "mixed", "steps": ["up/unpriced-model", "up/gpt-4o-mini"]})
    assert resp.status == 201, await resp.text()
    reply = await oai(gw, secret).chat.completions.create(model="mixed", messages=HI)
    assert reply.model == "gpt-4o-mini"
    assert [r.json["model"] for r in gw.fake.requests] == ["gpt-4o-mini"]

    # keys without a USD budget are not affected; a price makes the model usable
    _, tokens_only = await new_key(gw, limits={"daily_tokens": 10**6})
    reply = await oai(gw, tokens_only).chat.completions.create(model="up/unpriced-model",
                                                               messages=HI)
    assert reply.choices[0].message.content
    resp = await gw.client.put("/api/pricing", headers=gw.admin_headers, json={
        "model": "up/unpriced-model", "input": 1.0, "output": 2.0})
    assert resp.status == 200, await resp.text()
    reply = await oai(gw, secret).chat.completions.create(model="up/unpriced-model",
                                                          messages=HI)
    assert reply.choices[0].message.content


async def test_spend_survives_a_restart(priced: Any, aiohttp_client: Any, tmp_path) -> None:
    gw = priced
    key_id, secret = await new_key(gw, limits={"monthly_usd": 10})
    await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)
    budgets = gw.budgets
    spent = budgets.state(key_id).windows["monthly"].spent_usd
    assert spent > 0
    await budgets.sync()
    from omniroute.budgets import Budgets, SqliteSpendStore
    from omniroute.resilience.clock import SystemClock
    again = Budgets(SqliteSpendStore(gw.gateway.db), SystemClock())
    await again.start()
    key = await gw.store.get_key(key_id)
    window = again.window(again.state(key_id), key.limits, "monthly", again.clock.time())
    assert window.spent_usd == pytest.approx(spent) and window.spent_requests == 1


async def test_the_warning_header_appears_past_the_threshold(priced: Any) -> None:
    gw = priced
    key_id, secret = await new_key(gw, limits={"daily_usd": 1.0, "warn_at": 0.5})
    client = oai(gw, secret)
    first = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HI)
    assert WARNING_HEADER not in first.headers
    state = gw.budgets.state(key_id)
    state.windows["daily"].usd += 0.6  # as if earlier requests had spent it
    second = await client.chat.completions.with_raw_response.create(model=MODEL, messages=HI)
    warning = second.headers[WARNING_HEADER]
    assert warning.startswith("daily $0.6") and "of $1.00 (6" in warning
    stream = await client.chat.completions.with_raw_response.create(
        model=MODEL, messages=HI, stream=True)
    assert stream.headers[WARNING_HEADER].startswith("daily $0.6")
    async for _ in stream.parse():
        pass


async def test_a_failing_budget_store_fails_closed(priced: Any) -> None:
    gw = priced
    _, secret = await new_key(gw, limits={"daily_usd": 5})
    _, free = await new_key(gw, limits={"rpm": 100})
    gw.budgets.healthy = False  # as after a failed sync
    with pytest.raises(openai.InternalServerError) as caught:
        await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)
    assert caught.value.status_code == 503
    assert caught.value.code == "budget_unavailable"
    assert caught.value.response.headers["Retry-After"]
    # keys without a budget do not depend on the store
    reply = await oai(gw, free).chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content
    await gw.budgets.sync()
    reply = await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content


# ---------------------------------------------------------------------- other limits

async def test_allowed_models_refuse_others_with_403(gw: Any) -> None:
    _, secret = await new_key(gw, limits={"models": ["up/gpt-4o*"]})
    reply = await oai(gw, secret).chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    assert reply.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError) as caught:
        await oai(gw, secret).chat.completions.create(model="up/o3", messages=HI)
    assert caught.value.code == "model_not_allowed"
    assert "may not use model 'up/o3'" in caught.value.message
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key=secret, max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError) as a_caught:
        await client.messages.create(model="up/o3", max_tokens=20, messages=HI)
    assert a_caught.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
    assert len(gw.fake.requests) == 1  # the refused ones never reached the upstream


async def test_allowed_models_match_the_resolved_prefix_and_model(gw: Any) -> None:
    resp = await gw.client.post("/api/models/alias", json={"alias": "fast", "target": MODEL},
                                headers=gw.admin_headers)
    assert resp.status == 200
    _, secret = await new_key(gw, limits={"models": ["up/*"]})
    reply = await oai(gw, secret).chat.completions.create(model="fast", messages=HI)
    assert reply.model == "gpt-4o-mini"  # the alias resolves to an allowed prefix/model
    _, named = await new_key(gw, limits={"models": ["fast"]})
    reply = await oai(gw, named).chat.completions.create(model="fast", messages=HI)
    assert reply.choices[0].message.content  # the requested name itself is allowed
    with pytest.raises(openai.PermissionDeniedError):
        await oai(gw, named).chat.completions.create(model=MODEL, messages=HI)


async def test_an_expired_key_is_refused_like_a_revoked_one(gw: Any) -> None:
    await gw.set_settings(require_api_key=True)
    _, secret = await new_key(gw, expires_at="2020-01-01T00:00:00Z")
    with pytest.raises(openai.AuthenticationError) as caught:
        await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)
    assert caught.value.status_code == 401
    assert "expired at 2020-01-01T00:00:00Z" in caught.value.message
    client = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key=secret, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await client.messages.create(model=MODEL, max_tokens=20, messages=HI)
    key_id, fresh = await new_key(gw, expires_at="30d")
    assert (await oai(gw, fresh).chat.completions.create(model=MODEL, messages=HI)).choices
    resp = await gw.client.patch(f"/api/keys/{key_id}", json={"expires_at": 1},
                                 headers=gw.admin_headers)
    assert resp.status == 200 and (await resp.json())["expires_at"] == 1
    with pytest.raises(openai.AuthenticationError):  # at once, on the running server
        await oai(gw, fresh).chat.completions.create(model=MODEL, messages=HI)


async def test_an_expiry_outside_1970_to_9999_is_a_400(gw: Any) -> None:
    for value in (1e20, "999999999999d", "0001-01-01"):
        resp = await gw.client.post("/api/keys", json={"name": "far", "expires_at": value},
                                    headers=gw.admin_headers)
        body = await resp.json()
        assert resp.status == 400, body
        assert "between 1970-01-01 and 9999-12-31T23:59:59Z" in body["error"]["message"]
    key_id, _ = await new_key(gw, expires_at="9999-12-31")
    resp = await gw.client.patch(f"/api/keys/{key_id}", json={"expires_at": 1e20},
                                 headers=gw.admin_headers)
    assert resp.status == 400
    resp = await gw.client.get("/api/usage/budget", headers=gw.admin_headers)
    assert resp.status == 200
    entry = next(b for b in (await resp.json())["budgets"] if b["keyId"] == key_id)
    assert entry["expiresAt"] == "9999-12-31T00:00:00Z"


async def test_requests_per_minute(gw: Any) -> None:
    _, secret = await new_key(gw, limits={"rpm": 2})
    client = oai(gw, secret)
    for _ in range(2):
        await client.chat.completions.create(model=MODEL, messages=HI)
    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(model=MODEL, messages=HI)
    assert caught.value.code == "rate_limit_exceeded"
    assert 0 < int(caught.value.response.headers["Retry-After"]) <= 60


async def test_concurrent_requests_limit(omniroute: Any, aiohttp_server: Any) -> None:
    fake = FakeOpenAI(api_key="sk-up", latency=0.3)
    server = await aiohttp_server(fake.app)
    await omniroute.add_provider({"type": "openai", "name": "slow", "prefix": "up",
                                  "base_url": str(server.make_url("/v1")), "api_key": "sk-up"})
    _, secret = await new_key(omniroute, limits={"concurrency": 2})
    headers = {"Authorization": f"Bearer {secret}"}

    async def one() -> Any:
        resp = await omniroute.client.post("/v1/chat/completions", headers=headers,
                                           json={"model": MODEL, "messages": HI})
        return resp.status, resp.headers.get("Retry-After"), await resp.json()

    results = await asyncio.gather(*(one() for _ in range(5)))
    assert sorted(s for s, _, _ in results) == [200, 200, 429, 429, 429]
    refused = [(retry, body) for s, retry, body in results if s == 429]
    assert all(retry == "1" and body["error"]["code"] == "concurrency_limit_exceeded"
               for retry, body in refused)
    status, _, _ = await one()  # the slots were given back
    assert status == 200


async def test_keys_without_limits_take_no_part(gw: Any) -> None:
    _, secret = await new_key(gw)
    reply = await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content
    assert gw.client.app[BUDGETS].keys == {}


# ---------------------------------------------------------------------- management API

async def test_the_seeds_budget_api(priced: Any) -> None:
    gw = priced
    key_id, secret = await new_key(gw)
    resp = await gw.client.post("/api/usage/budget", headers=gw.admin_headers,
                                json={"keyId": key_id, "limit": 50.00, "period": "monthly"})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["keyId"] == key_id and body["limit"] == 50.0 and body["period"] == "monthly"
    assert body["spend"] == 0 and body["remaining"] == 50.0 and body["reset"].endswith("Z")
    await oai(gw, secret).chat.completions.create(model=MODEL, messages=HI)  # live at once

    resp = await gw.client.get("/api/usage/budget", headers=gw.admin_headers)
    listed = await resp.json()
    entry = next(b for b in listed["budgets"] if b["keyId"] == key_id)
    for field in ("spend", "limit", "period", "remaining", "reset"):
        assert field in entry
    assert 0 < entry["spend"] < 50 and entry["remaining"] == pytest.approx(50 - entry["spend"])
    assert entry["budgetCheck"]["allowed"] is True
    admin = next(b for b in listed["budgets"] if b["name"] == "test-admin")
    assert admin["limit"] is None and admin["spend"] is None

    resp = await gw.client.post("/api/usage/budget", headers=gw.admin_headers, json={
        "keyId": "limited", "daily": 5, "weekly": 20, "monthly": 60,
        "warningThreshold": 0.9, "resetTime": "06:30"})  # the richer shape, the key by name
    body = await resp.json()
    assert resp.status == 200, body
    assert [w["period"] for w in body["windows"]] == ["daily", "weekly", "monthly"]
    assert body["period"] == "daily" and body["limit"] == 5
    assert body["warningThreshold"] == 0.9 and body["resetTime"] == "06:30"
    assert body["dailyLimitUsd"] == 5 and body["monthlyLimitUsd"] == 60
    one = await gw.client.get(f"/api/usage/budget?apiKeyId={key_id}", headers=gw.admin_headers)
    assert (await one.json())["weeklyLimitUsd"] == 20


@pytest.mark.parametrize("body, message", [
    ({"limit": 5}, "Name the key"),
    ({"keyId": "limited", "limit": -1, "period": "daily"}, "must not be negative"),
    ({"keyId": "limited", "limit": 5, "period": "hourly"}, "period must be one of"),
])
async def test_bad_budget_requests_are_400s(gw: Any, body: dict, message: str) -> None:
    await new_key(gw)
    resp = await gw.client.post("/api/usage/budget", json=body, headers=gw.admin_headers)
    error = (await resp.json())["error"]
    assert resp.status == 400 and message in error["message"]
    assert error["code"] == "invalid_budget"


async def test_budget_routes_need_an_admin(gw: Any) -> None:
    _, secret = await new_key(gw)
    for method, path in (("GET", "/api/usage/budget"), ("POST", "/api/usage/budget"),
                         ("GET", "/api/keys/x"), ("PATCH", "/api/keys/x")):
        resp = await gw.client.request(method, path, json={},
                                       headers={"Authorization": f"Bearer {secret}"})
        assert resp.status == 403, (method, path)
        resp = await gw.client.request(method, path, json={})
        assert resp.status == 401, (method, path)


async def test_key_routes_set_and_show_every_limit(gw: Any) -> None:
    key_id, _ = await new_key(gw, limits={"rpm": 5, "models": ["up/*"]}, log_usage=False)
    resp = await gw.client.get(f"/api/keys/{key_id}", headers=gw.admin_headers)
    shown = await resp.json()
    assert shown["limits"] == {"rpm": 5, "models": ["up/*"]} and shown["log_usage"] is False
    resp = await gw.client.patch(f"/api/keys/{key_id}", headers=gw.admin_headers, json={
        "limits": {"rpm": None, "concurrency": 3, "daily_tokens": 1000}, "log_usage": True})
    shown = await resp.json()
    assert resp.status == 200, shown
    assert shown["limits"] == {"daily_tokens": 1000, "warn_at": 0.8, "reset_time": "00:00",
                               "concurrency": 3, "models": ["up/*"]}
    principal = gw.auth_schemes["api-key"].keys._by_hash
    limits = next(p.limits for k, p in principal.values() if k.id == key_id)
    assert limits.concurrency == 3 and limits.rpm is None  # the running index has it
    resp = await gw.client.patch(f"/api/keys/{key_id}", headers=gw.admin_headers,
                                 json={"limits": {"rpm": "many"}})
    assert resp.status == 400 and "rpm must be a number" in (await resp.json())["error"]["message"]
    resp = await gw.client.patch(f"/api/keys/{key_id}", headers=gw.admin_headers,
                                 json={"name": "x"})
    assert resp.status == 400
    resp = await gw.client.get("/api/keys/key_nope", headers=gw.admin_headers)
    assert resp.status == 404
