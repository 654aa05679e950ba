"""Prices: genai-prices read into rates, the price book's sources, costs of real requests,
and ``/api/pricing``."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import openai
import pytest
from conftest import UPSTREAM_KEY
from fakes.openai_upstream import reply
from genai_prices import Usage, data_snapshot

from omniroute.pricing import Override, PriceBook, flat, from_model_price
from omniroute.providers.base import Provider
from omniroute.routing import Target
from omniroute.storage import RequestRecord
from omniroute.storage.store import Connection

HI = [{"role": "user", "content": "hi"}]


# ----------------------------------------------------------------------------- rates


def _every_text_price() -> list[tuple[str, Any]]:
    now = datetime.now(tz=UTC)
    found = []
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            prices = model.get_prices(now)
            if getattr(prices, "input_mtok", None) is not None:
                found.append((f"{provider.id}/{model.id}", prices))
    return found


def test_a_rate_prices_exactly_as_genai_prices_across_its_whole_database() -> None:
    rng = random.Random(7)
    checked = tiered = 0
    for name, prices in _every_text_price():
        rate = from_model_price(prices, source=name)
        assert rate is not None, name
        tiered += len(rate.bands) > 1
        for _ in range(6):
            inp = rng.choice([0, 1, 17, 999, 120_000, 199_999, 200_001, 250_000, 1_500_000])
            read = rng.randint(0, inp // 2)
            write = rng.randint(0, (inp - read) // 3)
            out = rng.choice([0, 1, 55, 4096, 70_000])
            image = rng.choice([0, out])  # an image generation's output is its images
            expected = prices.calc_price(Usage(input_tokens=inp, output_tokens=out,
                                               cache_read_tokens=read,
                                               cache_write_tokens=write,
                                               output_image_tokens=image))["total_price"]
            got = rate.cost(inp, out, read, write, image)
            assert got == pytest.approx(float(expected), rel=1e-9, abs=1e-12), (name, inp, out)
            checked += 1
    assert checked > 2000 and tiered > 5  # the database is big, and has tiers


def test_a_tier_applies_to_every_token_once_input_passes_its_start() -> None:
    snapshot = data_snapshot.get_snapshot()
    _, info = snapshot.find_provider_model("gemini-2.5-pro", None, "google", None)
    rate = from_model_price(info.get_prices(datetime.now(tz=UTC)))
    assert rate is not None and [b.above for b in rate.bands] == [0, 200_000]
    assert rate.cost(200_000, 0) == pytest.approx(200_000 * 1.25e-6)
    assert rate.cost(200_001, 0) == pytest.approx(200_001 * 2.5e-6)


def test_a_flat_rate_charges_cache_reads_and_writes_at_their_own_prices() -> None:
    rate = flat(3.0, 15.0, cache_read=0.3, cache_write=3.75)
    # 1000 input tokens of which 600 read from cache and 100 written to it
    assert rate.cost(1000, 200, 600, 100) == pytest.approx(
        (300 * 3.0 + 600 * 0.3 + 100 * 3.75 + 200 * 15.0) / 1e6)
    assert flat(2.0, 8.0).cost(1000, 0, 1000) == pytest.approx(1000 * 2e-6)  # no cache price
    assert rate.per_million() == pytest.approx(
        {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75})


# ----------------------------------------------------------------------------- the price book


class Typed(Provider):
    type = "typed"
    price_provider = "openai"

    async def chat(self, call: Any) -> Any:  # pragma: no cover - never called
        raise NotImplementedError


class Local(Typed):
    priced = False


class Subscription(Typed):
    auth_kind = "oauth"
    price_provider = "anthropic"


def target(model: str, cls: type[Provider] = Typed, cid: str = "c1", prefix: str = "up",
           **settings: Any) -> Target:
    conn = Connection(id=cid, type=cls.type, name=cid, prefix=prefix, settings=settings)
    return Target(conn, cls(conn, None), model)  # type: ignore[arg-type]


def genai(model: str, provider: str, inp: int, out: int, read: int = 0) -> float:
    from genai_prices import calc_price

    usage = Usage(input_tokens=inp, output_tokens=out, cache_read_tokens=read)
    return float(calc_price(usage, model, provider_id=provider).total_price)


def test_the_book_prices_by_the_provider_type_the_base_url_and_the_setting() -> None:
    book = PriceBook()
    assert book.estimate_usd(target("gpt-4o"), 1000, 100) == pytest.approx(
        genai("gpt-4o", "openai", 1000, 100))
    # an OpenAI-compatible connection to OpenRouter is priced as OpenRouter prices
    router = target("anthropic/claude-sonnet-4", cid="c2", base_url="https://openrouter.ai/api/v1")
    rate = book.rate(router)
    assert rate is not None and rate.source.startswith("genai-prices:openrouter/")
    # the connection's price_provider setting names a provider explicitly
    deep = target("deepseek-chat", cid="c3", price_provider="deepseek")
    assert book.rate(deep).source.startswith("genai-prices:deepseek/")  # type: ignore[union-attr]
    # a model its provider does not list is found by name alone
    assert book.rate(target("claude-3-5-haiku-latest", cid="c4")) is not None
    assert book.rate(target("my-own-finetune", cid="c5")) is None
    assert book.rate(target("gpt-4o", Local, cid="c6")).cost(10**6, 10**6) == 0.0  # type: ignore[union-attr]


def test_overrides_win_most_specific_first() -> None:
    t = target("gpt-4o", cid="acct", prefix="up")
    other = target("gpt-4o", cid="other", prefix="up")
    book = PriceBook([Override("gpt-4o", 1.0, 1.0),
                      Override("up/gpt-4o", 2.0, 2.0),
                      Override("*", 3.0, 3.0, scope="acct")])
    assert book.rate(t).source == "override:acct/*"  # type: ignore[union-attr]
    assert book.rate(other).source == "override:*/up/gpt-4o"  # type: ignore[union-attr]
    book.replace([Override("gpt-4o", 1.0, 1.0), Override("gpt-4o", 4.0, 4.0, scope="acct")])
    assert book.rate(t).source == "override:acct/gpt-4o"  # type: ignore[union-attr]
    assert book.estimate_usd(t, 10**6, 0) == pytest.approx(4.0)
    assert book.estimate_usd(other, 10**6, 0) == pytest.approx(1.0)
    book.replace([])
    assert book.rate(t).source.startswith("genai-prices:openai/")  # type: ignore[union-attr]


def test_charge_fills_the_record_and_a_subscription_costs_nothing_but_shows_its_list_price(
) -> None:
    book = PriceBook()
    record = RequestRecord("r1", 0.0, "chat.completions", prompt_tokens=2000,
                           completion_tokens=300, cached_tokens=1500)
    book.charge(record, target("gpt-4o"))
    assert record.cost_usd == pytest.approx(genai("gpt-4o", "openai", 2000, 300, 1500))
    assert record.list_cost_usd is None
    sub = RequestRecord("r2", 0.0, "messages", prompt_tokens=2000, completion_tokens=300)
    book.charge(sub, target("claude-sonnet-4-5", Subscription, cid="s"))
    assert sub.cost_usd == 0.0
    assert sub.list_cost_usd == pytest.approx(genai("claude-sonnet-4-5", "anthropic", 2000, 300))
    assert book.estimate_usd(target("claude-sonnet-4-5", Subscription, cid="s"), 10, 10) == 0.0
    nothing = RequestRecord("r3", 0.0, "chat.completions")
    book.charge(nothing, target("gpt-4o"))
    book.charge(record, None)
    assert nothing.cost_usd is None


def test_a_subscription_costs_nothing_even_unpriced_and_its_list_price_is_a_paid_one(
) -> None:
    book = PriceBook()
    # Copilot's own price list counts its included models at no price: the list price
    # of a subscription's tokens is the model's paid price, found by its name
    copilot = target("gpt-4.1", Subscription, cid="cop",
                     base_url="https://api.githubcopilot.com")
    rate = book.rate(copilot)
    assert rate is not None and rate.source == "genai-prices:openai/gpt-4.1"
    record = RequestRecord("r1", 0.0, "chat.completions", prompt_tokens=1000,
                           completion_tokens=100)
    book.charge(record, copilot)
    assert record.cost_usd == 0.0
    assert record.list_cost_usd == pytest.approx(genai("gpt-4.1", "openai", 1000, 100))
    # a priced model of the same list keeps that price; an API key keeps the list's own
    paid = book.rate(target("claude-sonnet-4", Subscription, cid="cop2",
                            base_url="https://api.githubcopilot.com"))
    assert paid is not None and paid.source.startswith("genai-prices:github-copilot/")
    keyed = book.rate(target("gpt-4.1", cid="key", base_url="https://api.githubcopilot.com"))
    assert keyed is not None and keyed.free and keyed.source.startswith(
        "genai-prices:github-copilot/")
    # a model no source prices: still 0 for a subscription, with no list price
    unknown = RequestRecord("r2", 0.0, "chat.completions", prompt_tokens=10,
                            completion_tokens=5)
    book.charge(unknown, target("qwen3-coder-plus", Subscription, cid="q"))
    assert (unknown.cost_usd, unknown.list_cost_usd) == (0.0, None)
    untold = RequestRecord("r3", 0.0, "chat.completions")  # no tokens reported
    book.charge(untold, target("claude-sonnet-4-5", Subscription, cid="s"))
    assert (untold.cost_usd, untold.list_cost_usd) == (0.0, None)


async def subscription_charges(gw: Any, conn_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The last request's charge in the request log, and the connection's usage summary
    (``/api/usage/summary``): what a subscription's request is shown to cost."""
    await gw.log.flush()
    row = await gw.store.db.fetchone(
        "SELECT cost_usd, list_cost_usd, prompt_tokens FROM request_log "
        "WHERE connection_id = ? ORDER BY id DESC LIMIT 1", (conn_id,))
    assert row is not None
    resp = await gw.client.get("/api/usage/summary", headers=gw.admin_headers)
    summary = await resp.json()
    assert resp.status == 200, summary
    (usage,) = [c for c in summary["by_connection"] if c["connection_id"] == conn_id]
    return dict(row), usage


def test_the_book_looks_a_target_up_once() -> None:
    book = PriceBook()
    t = target("gpt-4o")
    first = book.rate(t)
    assert book.rate(t) is first
    assert book.rate(target("nope-model", cid="x")) is None
    book.forget()  # the gateway does this on changes and every few hours (dated prices)
    again = book.rate(t)
    assert again is not first and again == first


# ----------------------------------------------------------------------------- real requests


def sdk(gw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-x", max_retries=0,
                              timeout=10)


async def records(gw: Any) -> list[dict[str, Any]]:
    await gw.log.flush()
    return list(reversed(await gw.log.recent()))


async def test_a_request_records_its_cost_json_and_streamed(gw: Any) -> None:
    usage = {"prompt_tokens": 1200, "completion_tokens": 80,
             "prompt_tokens_details": {"cached_tokens": 1000}}
    gw.fake.script += [reply(text="hello", usage=usage), reply(text="hello", chunks=3, usage=usage)]
    async with sdk(gw) as client:
        await client.chat.completions.create(model="up/gpt-4o", messages=HI)
        stream = await client.chat.completions.create(
            model="up/gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True})
        async for _ in stream:
            pass
    expected = genai("gpt-4o", "openai", 1200, 80, 1000)
    costs = [r["cost_usd"] for r in await records(gw)]
    assert costs == [pytest.approx(expected), pytest.approx(expected)]


async def test_an_override_prices_the_next_request(gw: Any) -> None:
    gw.fake.models.append("my-model")  # a model genai-prices has never heard of
    resp = await gw.client.put("/api/pricing", headers=gw.admin_headers, json={
        "model": "my-model", "input": 1.5, "output": 6, "connection": gw.connection["id"]})
    assert resp.status == 200, await resp.text()
    view = await resp.json()
    assert view["overrides"] == [{"connection": gw.connection["id"], "model": "my-model",
                                  "input": 1.5, "output": 6.0, "cache_read": None,
                                  "cache_write": None, "image": None, "per_second": None,
                                  "per_character": None}]
    assert view["source"].startswith("genai-prices ")
    gw.fake.script.append(reply(text="x", usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    async with sdk(gw) as client:
        await client.chat.completions.create(model="up/my-model", messages=HI)
    assert (await records(gw))[-1]["cost_usd"] == pytest.approx((1000 * 1.5 + 500 * 6) / 1e6)

    looked = await (await gw.client.get("/api/pricing?model=up/my-model",
                                        headers=gw.admin_headers)).json()
    assert looked["targets"][0]["source"] == f"override:{gw.connection['id']}/my-model"
    assert looked["targets"][0]["per_million"]["output"] == pytest.approx(6.0)

    resp = await gw.client.delete(f"/api/pricing?model=my-model&connection={gw.connection['id']}",
                                  headers=gw.admin_headers)
    assert resp.status == 200 and (await resp.json())["overrides"] == []
    gw.fake.script.append(reply(text="x", usage={"prompt_tokens": 1000, "completion_tokens": 500}))
    async with sdk(gw) as client:
        await client.chat.completions.create(model="up/my-model", messages=HI)
    assert (await records(gw))[-1]["cost_usd"] is None  # genai-prices does not know it
    resp = await gw.client.delete("/api/pricing?model=my-model", headers=gw.admin_headers)
    assert resp.status == 404


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "input": -1, "output": 1}, "input"),
    ({"model": "m", "input": 1}, "output"),
    ({"model": "m", "input": "1", "output": 1}, "input"),
    ({"model": "", "input": 1, "output": 1}, "model"),
    ({"model": "*", "input": 1, "output": 1}, "model"),
    ({"model": "m", "input": 1, "output": 1, "cache_read": True}, "cache_read"),
    ({"model": "m", "image": -0.04}, "image"),
    ({"model": "m", "image": "0.04"}, "image"),
])
async def test_a_bad_price_is_refused_with_the_field_named(gw: Any, body: dict[str, Any],
                                                           param: str) -> None:
    resp = await gw.client.put("/api/pricing", headers=gw.admin_headers, json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param


async def test_pricing_needs_an_admin_and_a_known_connection(gw: Any) -> None:
    key = await gw.create_key("client")
    resp = await gw.client.get("/api/pricing", headers={"Authorization": f"Bearer {key}"})
    assert resp.status in (401, 403)
    resp = await gw.client.put("/api/pricing", headers=gw.admin_headers, json={
        "model": "m", "input": 1, "output": 1, "connection": "conn_nope"})
    assert resp.status == 404
    resp = await gw.client.put("/api/pricing", headers=gw.admin_headers, json={
        "model": "m", "input": 1, "output": 1, "extra": 1})
    assert resp.status == 400


async def test_cost_optimized_orders_by_overrides_too(gw: Any, aiohttp_server: Any) -> None:
    from fakes.openai_upstream import FakeOpenAI

    second = FakeOpenAI(api_key=UPSTREAM_KEY)
    server = await aiohttp_server(second.app)
    await gw.add_provider({"type": "openai", "name": "b", "prefix": "b",
                           "base_url": str(server.make_url("/v1")), "api_key": UPSTREAM_KEY})
    resp = await gw.client.post("/api/combos", headers=gw.admin_headers, json={
        "name": "pool", "strategy": "cost-optimized", "steps": ["up/gpt-4o-mini", "b/gpt-4o"]})
    assert resp.status in (200, 201), await resp.text()
    async with sdk(gw) as client:
        first = await client.chat.completions.with_raw_response.create(model="pool", messages=HI)
        assert first.headers["X-OmniRoute-Provider"] == "up"  # gpt-4o-mini is cheaper
        resp = await gw.client.put("/api/pricing", headers=gw.admin_headers,
                                   json={"model": "b/gpt-4o", "input": 0.01, "output": 0.01})
        assert resp.status == 200, await resp.text()
        second_call = await client.chat.completions.with_raw_response.create(
            model="pool", messages=[{"role": "user", "content": "another conversation"}])
        assert second_call.headers["X-OmniRoute-Provider"] == "b"


async def test_prices_are_fetched_only_when_updates_are_on(gw: Any, aiohttp_server: Any,
                                                         monkeypatch: Any) -> None:
    import asyncio

    from aiohttp import web

    from omniroute import gateway

    fetched: list[str] = []
    payload = [{"id": "openai", "name": "OpenAI", "api_pattern": r"https://api\.openai\.com",
                "models": [{"id": "gpt-4o", "match": {"equals": "gpt-4o"},
                            "prices": {"input_mtok": 5, "output_mtok": 20}}]}]

    async def data(request: web.Request) -> web.Response:
        fetched.append(request.path)
        return web.json_response(payload)

    app = web.Application()
    app.router.add_get("/data.json", data)
    server = await aiohttp_server(app)
    monkeypatch.setattr(gateway, "PRICES_CHECK_EVERY", 0.05)
    usage = {"prompt_tokens": 1000, "completion_tokens": 1000}

    async def cost() -> float:
        gw.fake.script.append(reply(text="x", usage=usage))
        async with sdk(gw) as client:
            await client.chat.completions.create(model="up/gpt-4o", messages=HI)
        return (await records(gw))[-1]["cost_usd"]  # type: ignore[no-any-return]

    listed = await cost()
    assert listed == pytest.approx(genai("gpt-4o", "openai", 1000, 1000))
    await gw.set_settings(price_update_url=str(server.make_url("/data.json")))
    await asyncio.sleep(0.3)
    assert fetched == []  # off by default: nothing is fetched
    try:
        await gw.set_settings(price_updates=True)
        for _ in range(100):
            if await cost() != listed:
                break
            await asyncio.sleep(0.05)
        assert fetched and await cost() == pytest.approx((1000 * 5 + 1000 * 20) / 1e6)
    finally:
        await gw.set_settings(price_updates=False)
        data_snapshot.set_custom_snapshot(None)


def test_a_cost_is_never_negative_and_a_subscription_sorts_first() -> None:
    rate = flat(2.0, 8.0, cache_read=0.2)
    # an upstream that reports more cache reads than input tokens
    assert rate.cost(100, 0, 500) == pytest.approx(100 * 0.2e-6)
    assert rate.cost(0, 0, 10, 10) == 0.0
    book = PriceBook()
    assert book.blended(target("claude-sonnet-4-5", Subscription, cid="s")) == 0.0
    assert book.blended(target("gpt-4o")) == pytest.approx((3 * 2.5 + 10) / 4)


def test_the_memo_is_bounded_when_clients_make_up_models(monkeypatch: Any) -> None:
    from omniroute.pricing import book as book_module

    monkeypatch.setattr(book_module, "MAX_RATES", 8)
    book = PriceBook()
    for i in range(20):
        book.rate(target(f"made-up-{i}", cid="c"))
    assert len(book._rates) <= 8
    assert book.rate(target("gpt-4o")) is not None


@pytest.mark.parametrize(("provider_type", "model", "genai_provider"), [
    ("openai", "gpt-4.1-mini", "openai"),
    ("openai-responses", "gpt-5-mini", "openai"),
    ("anthropic", "claude-sonnet-4-5", "anthropic"),
    ("gemini", "gemini-2.5-flash", "google"),
    ("ollama", "llama3.2", None),
])
def test_each_provider_type_is_priced_by_its_own_service(
        provider_type: str, model: str, genai_provider: str | None) -> None:
    from omniroute.plugins import load_plugins
    from omniroute.registry import Registry

    cls = Registry(load_plugins()).provider_type(provider_type)
    conn = Connection(id=f"c-{provider_type}", type=provider_type, name="x", prefix="p")
    book = PriceBook()
    record = RequestRecord("r", 0.0, "x", prompt_tokens=5000, completion_tokens=700,
                           cached_tokens=3000, cache_write_tokens=1000)
    book.charge(record, Target(conn, cls.__new__(cls), model))
    if genai_provider is None:
        assert record.cost_usd == 0.0  # a local server
        return
    from genai_prices import calc_price

    usage = Usage(input_tokens=5000, output_tokens=700, cache_read_tokens=3000,
                  cache_write_tokens=1000)
    expected = calc_price(usage, model, provider_id=genai_provider).total_price
    assert record.cost_usd == pytest.approx(float(expected), rel=1e-9)
