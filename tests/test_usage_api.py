"""The usage read API: summary, logs and per-connection usage over the request log."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from aiohttp import web

from omniroute.appkeys import USAGE
from omniroute.storage import RequestRecord
from omniroute.storage.usage import UsageFilter, UsageQueries, encode_cursor, parse_time

DAY = 86400.0
#: midnight UTC, 2024-05-01, and the records seeded around it
T0 = 1714521600.0


def record(i: int, ts: float, **fields: Any) -> RequestRecord:
    base: dict[str, Any] = dict(
        request_id=f"req-{i}", ts=ts, endpoint="chat", status=200, api_key_id="key_a",
        model_requested="up/gpt-4o-mini", provider="up", connection_id="conn_a",
        model="gpt-4o-mini", prompt_tokens=100, completion_tokens=10, cached_tokens=5,
        cache_write_tokens=1, reasoning_tokens=2, latency_ms=100.0, cost_usd=0.01,
        attempts=1, attempt_log=json.dumps([{"target": "conn_a", "failure": None,
                                             "status": 200, "ms": 90}]))
    base.update(fields)
    return RequestRecord(**base)


SEED = [
    # day 1: two on conn_a (key_a), one failure on conn_b (key_b, another model)
    record(1, T0 + 3600),
    record(2, T0 + 7200, stream=True),
    record(3, T0 + 7300, connection_id="conn_b", provider="other", model="m2",
           model_requested="other/m2", api_key_id="key_b", status=502, cost_usd=None,
           prompt_tokens=None, completion_tokens=None, cached_tokens=None,
           cache_write_tokens=None, reasoning_tokens=None, error="upstream 502",
           error_class="UpstreamError",
           attempt_log=json.dumps([{"target": "conn_b", "failure": "server", "status": 502,
                                    "ms": 12}, {"target": "conn_c", "failure": "timeout",
                                                "status": None, "ms": 30000}]),
           attempts=2),
    # day 2: a subscription connection (cost 0, list price 0.5), with bodies stored
    record(4, T0 + DAY + 60, connection_id="conn_sub", provider="claude", model="sonnet",
           cost_usd=0.0, list_cost_usd=0.5, request_body='{"messages": []}',
           response_body='{"ok": true}'),
    # day 3, no key
    record(5, T0 + 2 * DAY + 60, api_key_id=None, cost_usd=0.02),
]


async def seed(gw: Any, records: list[RequestRecord] = SEED) -> None:
    for r in records:
        gw.log.add(r)
    await gw.log.flush()


async def get(gw: Any, path: str, expect: int = 200, **params: Any) -> Any:
    resp = await gw.client.get(path, params={k: str(v) for k, v in params.items()},
                               headers=gw.admin_headers)
    body = await resp.json()
    assert resp.status == expect, body
    return body


def by(rows: list[dict[str, Any]], field: str) -> dict[Any, dict[str, Any]]:
    return {row[field]: row for row in rows}


# ----------------------------------------------------------------------------- summary

async def test_summary_totals_and_every_breakdown(gw: Any) -> None:
    await seed(gw)
    body = await get(gw, "/api/usage/summary", **{"from": T0, "to": T0 + 3 * DAY})
    totals = body["totals"]
    assert totals["requests"] == 5 and totals["errors"] == 1
    assert totals["tokens_in"] == 400 and totals["tokens_out"] == 40
    assert totals["cache_read_tokens"] == 20 and totals["cache_write_tokens"] == 4
    assert totals["reasoning_tokens"] == 8
    assert totals["cost_usd"] == pytest.approx(0.04)
    # list price: the subscription's 0.5 instead of its 0, the others' own cost
    assert totals["list_cost_usd"] == pytest.approx(0.54)
    assert totals["saved_usd"] == pytest.approx(0.5)
    assert totals["avg_latency_ms"] == 100.0
    assert body["from"] == "2024-05-01T00:00:00Z" and body["to"] == "2024-05-04T00:00:00Z"

    days = body["by_time"]
    assert [d["start"] for d in days] == ["2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z",
                                          "2024-05-03T00:00:00Z"]
    assert [d["requests"] for d in days] == [3, 1, 1]
    assert days[0]["errors"] == 1 and days[0]["ts"] == T0

    providers = by(body["by_provider"], "provider")
    assert set(providers) == {"up", "other", "claude"}
    assert providers["up"]["requests"] == 3 and providers["other"]["errors"] == 1
    models = by(body["by_model"], "model")
    assert models["gpt-4o-mini"]["tokens_in"] == 300 and models["m2"]["tokens_in"] == 0
    conns = by(body["by_connection"], "connection_id")
    assert conns["conn_sub"]["saved_usd"] == pytest.approx(0.5)
    assert conns["conn_a"]["connection_name"] is None  # not (or no longer) configured
    keys = by(body["by_key"], "key_id")
    assert keys["key_a"]["requests"] == 3 and keys[None]["requests"] == 1
    # largest cost first
    assert body["by_connection"][0]["connection_id"] == "conn_a"


async def test_summary_by_hour_and_time_filters(gw: Any) -> None:
    await seed(gw)
    body = await get(gw, "/api/usage/summary", bucket="hour",
                     **{"from": "2024-05-01", "to": "2024-05-01T02:00:00Z"})
    assert body["totals"]["requests"] == 1  # 'to' is exclusive: 02:00 is the next range
    assert [h["start"] for h in body["by_time"]] == ["2024-05-01T01:00:00Z"]
    body = await get(gw, "/api/usage/summary", bucket="hour",
                     **{"from": "2024-05-01T02:00:00+00:00", "to": T0 + DAY})
    assert [(h["start"], h["requests"]) for h in body["by_time"]] == [
        ("2024-05-01T02:00:00Z", 2)]
    # the filters of the log narrow a summary too; 'by' narrows the breakdowns
    body = await get(gw, "/api/usage/summary", key="key_a", by="model,key")
    assert set(body) >= {"by_model", "by_key", "totals"} and "by_time" not in body
    assert body["totals"]["requests"] == 3
    assert (await get(gw, "/api/usage/summary", status="error"))["totals"]["requests"] == 1


async def test_summary_names_configured_keys_and_connections(gw: Any) -> None:
    keys = await gw.store.list_keys()
    admin = next(k for k in keys if k.name == "test-admin")
    conn_id = gw.connection["id"]
    await seed(gw, [record(1, time.time() - 60, api_key_id=admin.id, connection_id=conn_id)])
    body = await get(gw, "/api/usage/summary", **{"from": "1h"})
    assert body["by_key"] == [{**body["by_key"][0], "key_id": admin.id,
                               "key_name": "test-admin"}]
    conn = body["by_connection"][0]
    assert (conn["connection_id"], conn["connection_name"], conn["prefix"]) == (
        conn_id, "fake", "up")


async def test_a_live_request_is_in_the_usage_at_once(gw: Any) -> None:
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-client",
                                max_retries=0, timeout=10)
    await client.chat.completions.create(model="up/gpt-4o-mini",
                                         messages=[{"role": "user", "content": "hi"}])
    # no flush by the test: the read API writes what is still buffered first
    body = await get(gw, "/api/usage/summary", **{"from": "5m"})
    assert body["totals"]["requests"] == 1
    assert body["by_model"][0]["model"] == "gpt-4o-mini"
    logs = (await get(gw, "/api/usage/logs"))["logs"]
    assert logs[0]["connection_id"] == gw.connection["id"] and logs[0]["status"] == 200


@pytest.mark.parametrize(("params", "param"), [
    ({"from": "yesterday-ish"}, "from"),
    ({"to": "2024-13-45"}, "to"),
    ({"from": "-5"}, "from"),
    ({"from": "nan"}, "from"),
    ({"from": "1e20"}, "from"),  # past the year 9999
    ({"from": "99999999999w"}, "from"),  # before 1970
    ({"to": "1e20"}, "to"),
    ({"from": "1969-12-31"}, "from"),
    ({"from": "2024-05-02", "to": "2024-05-01"}, "from"),
    ({"bucket": "week"}, "bucket"),
    ({"by": "colour"}, "by"),
    ({"status": "teapot"}, "status"),
])
async def test_summary_bad_input_is_a_clear_400(gw: Any, params: dict[str, str],
                                                param: str) -> None:
    body = await get(gw, "/api/usage/summary", expect=400, **params)
    assert body["error"]["param"] == param and body["error"]["message"]


# ----------------------------------------------------------------------------- logs

async def test_logs_page_with_a_cursor_through_every_record(gw: Any) -> None:
    records = [record(i, T0 + i * 10, model=f"m{i % 3}") for i in range(1, 124)]
    # two records at the same time: the id breaks the tie
    records.append(record(999, T0 + 50, model="m0"))
    await seed(gw, records)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 50}
        if cursor:
            params["cursor"] = cursor
        page = await get(gw, "/api/usage/logs", **params)
        seen += [r["request_id"] for r in page["logs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 124
    times = [r.ts for r in sorted(records, key=lambda r: -r.ts)]
    assert seen[0] == "req-123" and times[0] == T0 + 1230
    # a record that arrives while paging is not in a later page (it is newer than the cursor)
    first = await get(gw, "/api/usage/logs", limit=10)
    await seed(gw, [record(5000, T0 + 5000)])
    second = await get(gw, "/api/usage/logs", limit=10, cursor=first["next_cursor"])
    assert "req-5000" not in [r["request_id"] for r in second["logs"]]
    assert second["logs"][0]["request_id"] == "req-113"


async def test_logs_filters_and_record_shape(gw: Any) -> None:
    await seed(gw)
    ids = lambda page: [r["request_id"] for r in page["logs"]]  # noqa: E731
    assert ids(await get(gw, "/api/usage/logs", key="key_b")) == ["req-3"]
    assert ids(await get(gw, "/api/usage/logs", model="sonnet")) == ["req-4"]
    assert ids(await get(gw, "/api/usage/logs", provider="up")) == ["req-5", "req-2", "req-1"]
    assert ids(await get(gw, "/api/usage/logs", status="502")) == ["req-3"]
    assert ids(await get(gw, "/api/usage/logs", status="5xx")) == ["req-3"]
    assert ids(await get(gw, "/api/usage/logs", status="error")) == ["req-3"]
    assert "req-3" not in ids(await get(gw, "/api/usage/logs", status="ok"))
    assert ids(await get(gw, "/api/usage/logs", connection="conn_sub")) == ["req-4"]
    assert ids(await get(gw, "/api/usage/logs", **{"from": T0 + DAY, "to": T0 + 2 * DAY})) == [
        "req-4"]
    assert ids(await get(gw, "/api/usage/logs", key="key_a", **{"to": T0 + 7200})) == ["req-1"]

    failed = (await get(gw, "/api/usage/logs", key="key_b"))["logs"][0]
    assert failed["attempts"] == 2
    assert failed["attempt_log"] == [
        {"target": "conn_b", "failure": "server", "status": 502, "ms": 12},
        {"target": "conn_c", "failure": "timeout", "status": None, "ms": 30000}]
    assert failed["error_class"] == "UpstreamError" and failed["stream"] is False
    assert failed["time"] == "2024-05-01T02:01:40Z"
    assert "request_body" not in failed and "response_body" not in failed
    assert failed["has_bodies"] is False
    listed = (await get(gw, "/api/usage/logs", model="sonnet"))["logs"][0]
    assert listed["has_bodies"] is True and "request_body" not in listed  # only when asked
    with_bodies = (await get(gw, "/api/usage/logs", model="sonnet", bodies="true"))["logs"][0]
    assert with_bodies["request_body"] == '{"messages": []}'
    assert with_bodies["response_body"] == '{"ok": true}'
    assert with_bodies["list_cost_usd"] == 0.5 and with_bodies["cost_usd"] == 0.0
    streamed = (await get(gw, "/api/usage/logs", **{"from": T0 + 7200, "to": T0 + 7201}))
    assert streamed["logs"][0]["stream"] is True


@pytest.mark.parametrize(("params", "param"), [
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"cursor": "bmFuOjE"}, "cursor"),  # "nan:1"
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"from": "soon"}, "from"),
    ({"status": "999"}, "status"),
    ({"bodies": "maybe"}, "bodies"),
])
async def test_logs_bad_input_is_a_clear_400(gw: Any, params: dict[str, str],
                                             param: str) -> None:
    body = await get(gw, "/api/usage/logs", expect=400, **params)
    assert body["error"]["param"] == param


# ----------------------------------------------------------------------------- connection

async def test_connection_usage(gw: Any) -> None:
    conn_id = gw.connection["id"]
    now = time.time()
    await seed(gw, [record(1, now - 7200, connection_id=conn_id),
                    record(2, now - 60, connection_id=conn_id, model="gpt-4o",
                           api_key_id="key_b", cost_usd=0.5),
                    record(3, now - 60, connection_id="conn_other")])
    body = await get(gw, f"/api/usage/{conn_id}")
    assert body["connection"] == {"id": conn_id, "name": "fake", "prefix": "up",
                                  "type": "openai"}
    assert body["totals"]["requests"] == 2
    assert body["totals"]["cost_usd"] == pytest.approx(0.51)
    assert [m["model"] for m in body["by_model"]] == ["gpt-4o", "gpt-4o-mini"]
    assert {k["key_id"] for k in body["by_key"]} == {"key_a", "key_b"}
    assert "by_provider" not in body and "by_connection" not in body
    assert (await get(gw, f"/api/usage/{conn_id}", **{"from": "1h"}))["totals"]["requests"] == 1
    # a deleted connection keeps its history; an id with neither is a 404
    gone = await get(gw, "/api/usage/conn_other")
    assert gone["connection"] is None and gone["totals"]["requests"] == 1
    missing = await get(gw, "/api/usage/conn_never", expect=404)
    assert missing["error"]["code"] == "not_found"
    await get(gw, f"/api/usage/{conn_id}", expect=400, bucket="minute")


async def test_fixed_usage_routes_win_over_the_connection_route(tmp_path: Any) -> None:
    """``/api/usage/budget`` (the budgets API) is never taken for a connection id."""
    from omniroute.app import make_app
    from omniroute.testing import make_test_config

    app = make_app(make_test_config(tmp_path / "data"))
    budgets = [r for r in app.router.routes() if r.resource is not None
               and r.resource.canonical == "/api/usage/budget" and r.method == "GET"]
    assert [r.handler.__name__ for r in budgets] == ["get_budgets"]  # the budgets API's own
    for path, handler_name in (("/api/usage/budget", "get_budgets"),
                               ("/api/usage/summary", "usage_summary"),
                               ("/api/usage/logs", "usage_logs"),
                               ("/api/usage/conn_1", "connection_usage"),
                               ("/api/usage/budgetx", "connection_usage"),
                               ("/api/usage/my-logs", "connection_usage")):
        match = await app.router.resolve(_request(app, path))
        assert match.handler.__name__ == handler_name, path


def _request(app: web.Application, path: str) -> web.Request:
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request("GET", path, app=app)


# ----------------------------------------------------------------------------- the queries

class Recorder:
    """A database that remembers every query it runs."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.queries: list[tuple[str, list[Any]]] = []

    async def fetchall(self, sql: str, params: Any = ()) -> Any:
        self.queries.append((sql, list(params)))
        return await self.db.fetchall(sql, params)


async def test_every_query_uses_an_index_for_its_time_range(gw: Any) -> None:
    """With a few thousand rows present, each query the read API runs searches an index
    (ts, key+ts or the failed records') instead of scanning the table."""
    records = [record(i, T0 + i * 30, api_key_id=f"key_{i % 7}", connection_id=f"conn_{i % 5}",
                      model=f"m{i % 11}", status=200 if i % 13 else 503)
               for i in range(4000)]
    await seed(gw, records)
    recorder = Recorder(gw.client.app[USAGE].db)
    queries = UsageQueries(recorder)  # type: ignore[arg-type]
    since, until = T0 + 3600, T0 + 7200
    filters = [UsageFilter(since=since, until=until), UsageFilter(since=since),
               UsageFilter(until=until), UsageFilter(since=since, until=until, key="key_3"),
               UsageFilter(since=since, until=until, connection="conn_2"),
               UsageFilter(since=since, until=until, model="m3", provider="up", status="5xx")]
    for where in filters:
        await queries.summary(where)
        await queries.summary(where, bucket="hour", by=["model"])
        _rows, cursor = await queries.logs(where, limit=10)
        await queries.logs(where, cursor=cursor or encode_cursor(since + 1800, 10**9), limit=10)
        await queries.logs(where, cursor=encode_cursor(T0 + 999_999, 10**9), limit=10)
    plans = []
    rollup_plans = []
    for sql, params in recorder.queries:
        plan = " | ".join(row[3] for row in await gw.store.db.fetchall(
            f"EXPLAIN QUERY PLAN {sql}", params))
        if "FROM usage_rollup" in sql:  # whole hours and days: the rollup's own key
            rollup_plans.append(plan)
            assert "USING PRIMARY KEY (period=? AND start>? AND start<?)" in plan, (sql, plan)
            continue
        if "FROM usage_dims" in sql:  # ... or one dimension's totals
            rollup_plans.append(plan)
            assert "USING PRIMARY KEY (period=? AND dim=? AND start>? AND start<?)" in plan, (
                sql, plan)
            continue
        if "FROM request_log" not in sql:
            continue
        plans.append(plan)
        assert "USING INDEX request_log_" in plan, (sql, plan)
        assert "ts>?" in plan or "ts<?" in plan, (sql, plan)  # the range is in the index
        assert "SCAN request_log" not in plan, (sql, plan)
    assert any("request_log_key_ts" in p for p in plans)
    # a connection's page asks that dimension's hourly totals where its records lie
    # (migration 14 dropped its index), then reads those hours by time
    assert any("FROM usage_dims" in sql and "conn_2" in params
               for sql, params in recorder.queries)
    newest = sorted((r for r in records if r.connection_id == "conn_2"), key=lambda r: -r.ts)
    for where in (UsageFilter(connection="conn_2"),
                  UsageFilter(since=since, until=until, connection="conn_2")):
        seen, cursor = [], None
        for _ in range(3):
            page, cursor = await queries.logs(where, cursor=cursor, limit=50)
            seen += [row["request_id"] for row in page]
            if cursor is None:
                break
        assert seen == [r.request_id for r in newest
                        if (where.since or 0) <= r.ts < (where.until or 1e12)][:150]
    assert rollup_plans  # the whole hour from T0 + 3600 to T0 + 7200
    # and the results are right: 120 records an hour, 1/7 of them key_3's
    totals = (await queries.summary(filters[0]))["totals"]
    assert totals["requests"] == 120
    assert (await queries.summary(filters[3]))["totals"]["requests"] == len(
        [r for r in records if since <= r.ts < until and r.api_key_id == "key_3"])


def test_parse_time() -> None:
    now = 1_000_000_000.0
    assert parse_time("1714521600", now=now) == T0
    assert parse_time("1714521600.5", now=now) == T0 + 0.5
    assert parse_time("2024-05-01", now=now) == T0
    assert parse_time("2024-05-01T01:00:00Z", now=now) == T0 + 3600
    assert parse_time("2024-05-01T03:00:00+02:00", now=now) == T0 + 3600
    assert parse_time("2024-05-01 01:00", now=now) == T0 + 3600
    assert parse_time("24h", now=now) == now - DAY
    assert parse_time("7d", now=now) == now - 7 * DAY
    assert parse_time("90s", now=now) == now - 90
    assert parse_time("2w", now=now) == now - 14 * DAY
    for bad in ("", "tomorrow", "7 days", "-1", "inf", "1e999", "2024-02-30"):
        with pytest.raises(ValueError):
            parse_time(bad, now=now)
