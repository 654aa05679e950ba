"""``GET /metrics``: real requests through the gateway, read with prometheus-client's parser."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
from fakes.openai_upstream import error, hang_mid_stream
from prometheus_client.parser import text_string_to_metric_families

from omniroute.metrics import collector
from omniroute.metrics.collector import OTHER, Metrics
from omniroute.metrics.stage import MetricsStage
from omniroute.storage import RequestRecord
from omniroute.testing import make_test_config, start_harness

HI = [{"role": "user", "content": "hi there"}]
UPSTREAM_KEY = "sk-upstream-test"


def sdk(gw: Any, key: str = "sk-x") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=key, max_retries=0,
                              timeout=10)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of the exposition by (name, labels), read with prometheus-client's parser."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


async def scrape(gw: Any, headers: dict[str, str] | None = None) -> Samples:
    resp = await gw.client.get("/metrics", headers=headers or {})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse(await resp.text())


CHAT = {"endpoint": "chat.completions", "provider": "up", "model": "gpt-4o-mini"}


async def test_json_and_streamed_requests_are_counted(gw: Any) -> None:
    async with sdk(gw) as client:
        await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
        stream = await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                                      stream=True)
        [chunk async for chunk in stream]
    await gw.log.flush()
    records = (await (await gw.client.get("/api/requests", headers=gw.admin_headers)).json())
    records = records["requests"]
    assert len(records) == 2
    samples = await scrape(gw)
    assert value(samples, "omniroute_requests_total", **CHAT, status="200") == 2
    assert value(samples, "omniroute_request_duration_seconds_count", **CHAT) == 2
    assert value(samples, "omniroute_time_to_first_byte_seconds_count", **CHAT) == 2
    total = value(samples, "omniroute_request_duration_seconds_sum", **CHAT)
    assert total == pytest.approx(sum(r["latency_ms"] for r in records) / 1000, rel=1e-6)
    # every bucket holds what is below it: +Inf holds all
    assert value(samples, "omniroute_request_duration_seconds_bucket", **CHAT, le="+Inf") == 2
    # tokens as the usage records hold them (the fake's usage, read by the gateway)
    model = {"provider": "up", "model": "gpt-4o-mini"}
    assert value(samples, "omniroute_tokens_total", **model, type="input") == sum(
        r["prompt_tokens"] for r in records) > 0
    assert value(samples, "omniroute_tokens_total", **model, type="output") == sum(
        r["completion_tokens"] for r in records) > 0
    assert value(samples, "omniroute_streams_in_flight") == 0
    # the cost is what the price book charged each record; no cache hit (that series
    # exists at 0: its children are bound with the request's labels)
    assert all(r["cost_usd"] for r in records)
    assert value(samples, "omniroute_cost_usd_total", **model) == pytest.approx(
        sum(r["cost_usd"] for r in records), rel=1e-9)
    assert value(samples, "omniroute_cache_hits_total", **CHAT) == 0
    assert value(samples, "omniroute_breaker_state", provider="up") == 0
    conn = {"connection": gw.connection["id"], "name": "fake", "provider": "up"}
    assert value(samples, "omniroute_connection_cooldown_seconds", **conn) == 0
    assert value(samples, "omniroute_connection_terminal", **conn) == 0
    assert value(samples, "omniroute_usage_records_pending") == 0
    assert value(samples, "omniroute_usage_records_dropped_total") == 0


async def test_failures_are_counted_by_status_and_open_the_breaker(
        aiohttp_client: Any, tmp_path: Path, fake_openai: Any) -> None:
    h = await start_harness(aiohttp_client, make_test_config(
        tmp_path, breaker_threshold=1, wait_for_cooldown_max=0))
    conn = await h.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                                 "base_url": fake_openai.base_url, "api_key": UPSTREAM_KEY})
    async with sdk(h) as client:
        await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
        fake_openai.script.append(error(400, "bad request from the fake"))  # the client's own
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
        fake_openai.script.append(error(500))  # the provider's: cooldown, breaker opens
        with pytest.raises(openai.APIStatusError) as failed:
            await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                                 stream=True)
        assert failed.value.status_code == 500  # the only target's own answer
        with pytest.raises(openai.RateLimitError):  # every target rests now
            await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
        with pytest.raises(openai.BadRequestError):  # never reached a provider
            await client.chat.completions.create(model="nowhere/x", messages=HI)
    samples = await scrape(h)
    for status, count in (("200", 1), ("400", 1), ("500", 1)):
        assert value(samples, "omniroute_requests_total", **CHAT, status=status) == count
    assert value(samples, "omniroute_requests_total", endpoint="chat.completions",
                 provider="", model="", status="400") == 1  # the unknown model
    assert value(samples, "omniroute_breaker_state", provider="up") == 2  # open
    labels = {"connection": conn["id"], "name": "fake", "provider": "up"}
    assert value(samples, "omniroute_connection_cooldown_seconds", **labels) > 0  # type: ignore[operator]
    assert value(samples, "omniroute_streams_in_flight") == 0
    # the resting target's 429 came before any provider was tried
    assert value(samples, "omniroute_requests_total", endpoint="chat.completions",
                 provider="", model="", status="429") == 1


async def test_a_stream_is_in_flight_until_it_ends(gw: Any) -> None:
    gw.fake.script.append(hang_mid_stream(after_chunks=2, seconds=1.0))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                                      stream=True)
        first = await anext(aiter(stream))
        assert first.choices[0].delta.role == "assistant"
        samples = await scrape(gw)
        assert value(samples, "omniroute_streams_in_flight") == 1
        rest = [chunk async for chunk in stream]
        assert rest
    assert value(await scrape(gw), "omniroute_streams_in_flight") == 0


async def test_a_client_that_leaves_mid_stream_counts_as_499(gw: Any) -> None:
    gw.fake.script.append(hang_mid_stream(after_chunks=2, seconds=5.0))
    async with sdk(gw) as client:
        stream = await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI,
                                                      stream=True)
        await anext(aiter(stream))
        await stream.close()
    for _ in range(100):  # the gateway notices the disconnect on its side
        samples = await scrape(gw)
        if value(samples, "omniroute_streams_in_flight") == 0:
            break
        await asyncio.sleep(0.05)
    assert value(samples, "omniroute_streams_in_flight") == 0
    assert value(samples, "omniroute_requests_total", **CHAT, status="499") == 1


async def test_usage_record_backlog_and_drops(gw: Any) -> None:
    gw.log.dropped = 3  # what the request log counts when its bound was passed
    samples = await scrape(gw)
    assert value(samples, "omniroute_usage_records_dropped_total") == 3
    gw.log.dropped = 5
    gw.log.add(RequestRecord(request_id="r1", ts=0.0, endpoint="chat.completions"))
    samples = await scrape(gw)
    assert value(samples, "omniroute_usage_records_dropped_total") == 5  # a counter: 3 + 2
    assert value(samples, "omniroute_usage_records_pending") == 1


async def test_no_secret_reaches_the_exposition(aiohttp_client: Any, tmp_path: Path,
                                                fake_openai: Any) -> None:
    h = await start_harness(aiohttp_client, make_test_config(tmp_path, require_api_key=True))
    await h.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                          "base_url": fake_openai.base_url, "api_key": UPSTREAM_KEY})
    key = await h.create_key("client")
    async with sdk(h, key) as client:
        await client.chat.completions.create(model="up/gpt-4o-mini", messages=HI)
    resp = await h.client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    text = await resp.text()
    assert "omniroute_requests_total" in text
    for secret in (UPSTREAM_KEY, key, h.admin_key, "hi there"):
        assert secret not in text


@pytest.mark.parametrize(("access", "require_key", "anonymous", "client", "admin"), [
    ("key", True, 401, 200, 200),     # the default: like the client API
    ("key", False, 200, 200, 200),    # ... which is open without require_api_key
    ("admin", False, 401, 403, 200),  # an admin only, whatever require_api_key says
    ("public", True, 200, 200, 200),  # anyone, whatever require_api_key says
])
async def test_the_access_setting(aiohttp_client: Any, tmp_path: Path, access: str,
                                  require_key: bool, anonymous: int, client: int,
                                  admin: int) -> None:
    h = await start_harness(aiohttp_client, make_test_config(
        tmp_path, metrics_access=access, require_api_key=require_key))
    key = await h.create_key("client")
    for headers, status in (({}, anonymous), ({"Authorization": f"Bearer {key}"}, client),
                            (h.admin_headers, admin)):
        resp = await h.client.get("/metrics", headers=headers)
        assert resp.status == status, (headers, await resp.text())
        if status != 200:  # refused in the gateway's error shape, saying nothing of metrics
            assert "omniroute_" not in await resp.text()
            assert (await resp.json())["error"]["code"]


async def test_the_access_setting_changes_while_running(gw: Any) -> None:
    assert (await gw.client.get("/metrics")).status == 200
    await gw.set_settings(metrics_access="admin")
    assert (await gw.client.get("/metrics")).status == 401
    assert (await gw.client.get("/metrics", headers=gw.admin_headers)).status == 200
    resp = await gw.client.patch("/api/settings", json={"metrics_access": "everyone"},
                                 headers=gw.admin_headers)
    assert resp.status == 400
    assert "metrics_access" in (await resp.json())["error"]["message"]


async def test_openmetrics_when_the_scraper_asks(gw: Any) -> None:
    resp = await gw.client.get("/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await resp.text()).rstrip().endswith("# EOF")


def test_cost_cache_hits_and_every_token_type() -> None:
    metrics = Metrics()
    record = RequestRecord(
        request_id="r", ts=0.0, endpoint="messages", status=200, provider="an",
        model="claude", latency_ms=120.0, ttfb_ms=20.0, prompt_tokens=10,
        completion_tokens=5, cached_tokens=4, cache_write_tokens=3, reasoning_tokens=2,
        cost_usd=0.25, cache_hit=True)
    metrics.observe(record)
    metrics.observe(record)
    free = RequestRecord(request_id="s", ts=0.0, endpoint="messages", status=200,
                         provider="an", model="claude", cost_usd=0.0)
    metrics.observe(free)
    samples, _ = metrics.render(None)
    got = parse(samples.decode())
    model = {"provider": "an", "model": "claude"}
    assert value(got, "omniroute_cost_usd_total", **model) == pytest.approx(0.5)
    assert value(got, "omniroute_cache_hits_total", endpoint="messages", **model) == 2
    for kind, count in (("input", 20), ("output", 10), ("cache_read", 8),
                        ("cache_write", 6), ("reasoning", 4)):
        assert value(got, "omniroute_tokens_total", **model, type=kind) == count
    assert value(got, "omniroute_requests_total", endpoint="messages", **model,
                 status="200") == 3
    # the record without latency counts as a request but not in the histograms
    assert value(got, "omniroute_request_duration_seconds_count", endpoint="messages",
                 **model) == 2
    assert value(got, "omniroute_time_to_first_byte_seconds_bucket", endpoint="messages",
                 **model, le="0.025") == 2


def test_histograms_match_prometheus_clients_own_observe() -> None:
    """The per-request path bisects for the bucket: every bound (and past the last) lands
    where ``Histogram.observe`` puts it, sum included."""
    ours, theirs = Metrics(), Metrics()
    latencies = [0.0, 0.001, *collector.BUCKETS, 0.0251, 7.5, 299.9, 301.0, 4000.0]
    for i, seconds in enumerate(latencies):
        ours.observe(RequestRecord(request_id=f"r{i}", ts=0.0, endpoint="chat", status=200,
                                   provider="p", model="m", latency_ms=seconds * 1000))
        theirs.latency.labels("chat", "p", "m").observe(seconds)
    mine = {(s.name, s.labels.get("le")): s.value
            for f in text_string_to_metric_families(ours.render(None)[0].decode())
            for s in f.samples if s.name.startswith("omniroute_request_duration_seconds")
            and not s.name.endswith("_created")}
    reference = {(s.name, s.labels.get("le")): s.value
                 for f in text_string_to_metric_families(theirs.render(None)[0].decode())
                 for s in f.samples if s.name.startswith("omniroute_request_duration_seconds")
                 and not s.name.endswith("_created")}
    assert mine == reference
    assert mine[("omniroute_request_duration_seconds_bucket", "+Inf")] == len(latencies)


def test_models_past_the_bound_count_as_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(collector, "MAX_MODELS", 3)
    metrics = Metrics()
    for i in range(10):  # a client sending made-up model names
        metrics.observe(RequestRecord(request_id=str(i), ts=0.0, endpoint="chat.completions",
                                      status=404, provider="up", model=f"junk-{i}"))
    metrics.observe(RequestRecord(request_id="x", ts=0.0, endpoint="chat.completions",
                                  status=200, provider="up", model="junk-1"))
    got = parse(metrics.render(None)[0].decode())
    models = {dict(labels).get("model") for name, labels in got
              if name == "omniroute_requests_total"}
    assert models == {"junk-0", "junk-1", "junk-2", OTHER}
    assert value(got, "omniroute_requests_total", endpoint="chat.completions", provider="up",
                 model=OTHER, status="404") == 7
    assert value(got, "omniroute_requests_total", endpoint="chat.completions", provider="up",
                 model="junk-1", status="200") == 1
    assert len(metrics._bound) == 5  # three models, their overflow, one more status


def test_the_stage_keeps_no_per_request_state() -> None:
    metrics = Metrics()
    stage = MetricsStage(metrics)
    assert stage.name == "metrics"

    class Ctx:
        stream = True

    run = stage.enter(Ctx(), None)  # type: ignore[arg-type]
    assert run is stage.enter(Ctx(), None)  # type: ignore[arg-type]  # one shared run
    assert metrics.streams_in_flight() == 2  # two streams entered, none finished
    metrics.settle()  # one process: the gauge is set at a scrape
    assert metrics.streams._value.get() == 2


def test_one_process_makes_the_families_at_the_first_scrape() -> None:
    """Counting needs no prometheus-client object (the gateway imports it at the first
    scrape); the scrape then shows what was counted before it."""
    metrics = Metrics()
    stage = MetricsStage(metrics)

    class Ctx:
        stream = True
        record = RequestRecord(request_id="r", ts=0.0, endpoint="chat", status=200,
                               provider="p", model="m", latency_ms=120.0, prompt_tokens=5)

    stage.enter(Ctx(), None).finished(Ctx())  # type: ignore[arg-type]
    assert "registry" not in vars(metrics) and "requests" not in vars(metrics)
    got = parse(metrics.render(None)[0].decode())
    assert "registry" in vars(metrics)
    assert value(got, "omniroute_requests_total", endpoint="chat", provider="p", model="m",
                 status="200") == 1
    assert value(got, "omniroute_tokens_total", provider="p", model="m", type="input") == 5
    assert value(got, "omniroute_request_duration_seconds_sum", endpoint="chat",
                 provider="p", model="m") == pytest.approx(0.12)
    assert value(got, "omniroute_streams_in_flight") == 0


def test_a_histogram_kept_elsewhere_gets_the_tallys_buckets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Should prometheus-client keep a histogram's values where the bisection cannot add
    to them, a scrape gives ``observe`` each tallied observation in its own bucket."""
    def kept_elsewhere(self: Any, histogram: Any) -> None:
        self.observe, self.add_sum, self.buckets = histogram.observe, (lambda _: None), ()

    monkeypatch.setattr(collector._Observer, "__init__", kept_elsewhere)
    metrics = Metrics()
    for i, seconds in enumerate([0.01, 0.2, 0.2, 400.0]):
        metrics.observe(RequestRecord(request_id=f"r{i}", ts=0.0, endpoint="chat", status=200,
                                      provider="p", model="m", latency_ms=seconds * 1000))
    got = parse(metrics.render(None)[0].decode())
    labels = {"endpoint": "chat", "provider": "p", "model": "m"}
    name = "omniroute_request_duration_seconds"
    assert value(got, f"{name}_bucket", **labels, le="0.025") == 1
    assert value(got, f"{name}_bucket", **labels, le="0.25") == 3
    assert value(got, f"{name}_bucket", **labels, le="300.0") == 3
    assert value(got, f"{name}_bucket", **labels, le="+Inf") == 4
    assert value(got, f"{name}_count", **labels) == 4
    metrics.observe(RequestRecord(request_id="r9", ts=0.0, endpoint="chat", status=200,
                                  provider="p", model="m", latency_ms=20.0))
    got = parse(metrics.render(None)[0].decode())  # the tally starts over after a scrape
    assert value(got, f"{name}_bucket", **labels, le="0.025") == 2
    assert value(got, f"{name}_count", **labels) == 5
