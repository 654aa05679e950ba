"""``GET /api/telemetry/summary``: the seed's shape, nearest-rank percentiles, the window."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from storage_support import statements

from omniroute.storage import DatabaseBackend, RequestLog, RequestRecord
from omniroute.storage.telemetry import latency_percentiles
from omniroute.testing import make_test_config, start_harness

HI = [{"role": "user", "content": "hi there"}]
SEED_KEYS = {"p50", "p95", "p99", "count"}


def record(i: int, provider: str | None, model: str | None, latency: float | None, *,
           status: int = 200, age: float = 1.0) -> RequestRecord:
    return RequestRecord(request_id=f"r{i}", ts=time.time() - age, endpoint="chat.completions",
                         status=status, provider=provider, model=model, latency_ms=latency)


def nearest_rank(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


async def summary(h: Any, query: str = "") -> dict[str, Any]:
    resp = await h.client.get("/api/telemetry/summary" + query, headers=h.admin_headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def test_shape_and_percentiles(omniroute: Any) -> None:
    log = omniroute.log
    shuffled = [(i * 37) % 100 + 1 for i in range(100)]  # 1..100 ms, out of order
    for i, ms in enumerate(shuffled):
        log.add(record(i, "a", "m1" if i % 2 else "m2", float(ms)))
    log.add(record(200, "b", "m1", 7.25))
    # not counted: a failure, a record outside the window, one no provider served,
    # one without a measured latency
    log.add(record(201, "b", "m1", 9000.0, status=500))
    log.add(record(202, "b", "m1", 9000.0, age=7200))
    log.add(record(203, None, None, 9000.0, status=400))
    log.add(record(204, "b", "m1", None))
    body = await summary(omniroute)
    assert set(body) == {"providers", "models", "window_s", "unit"}
    assert body["window_s"] == 3600 and body["unit"] == "ms"
    assert body["providers"] == {
        "a": {"p50": 50.0, "p95": 95.0, "p99": 99.0, "count": 100},
        "b": {"p50": 7.2, "p95": 7.2, "p99": 7.2, "count": 1},  # rounded to 0.1 ms
    }
    odd = [float(ms) for i, ms in enumerate(shuffled) if i % 2]
    even = [float(ms) for i, ms in enumerate(shuffled) if not i % 2]
    assert body["models"]["a/m1"] == {f"p{p}": nearest_rank(odd, p) for p in (50, 95, 99)} | {
        "count": 50}
    assert body["models"]["a/m2"] == {f"p{p}": nearest_rank(even, p) for p in (50, 95, 99)} | {
        "count": 50}
    assert body["models"]["b/m1"]["count"] == 1
    assert all(set(v) == SEED_KEYS for part in ("providers", "models")
               for v in body[part].values())


async def test_the_window(omniroute: Any) -> None:
    omniroute.log.add(record(1, "a", "m", 10.0, age=30))
    omniroute.log.add(record(2, "a", "m", 20.0, age=600))
    assert (await summary(omniroute))["providers"]["a"]["count"] == 2
    narrow = await summary(omniroute, "?window=60")
    assert narrow["window_s"] == 60
    assert narrow["providers"] == {"a": {"p50": 10.0, "p95": 10.0, "p99": 10.0, "count": 1}}
    await omniroute.set_settings(telemetry_window=120)  # the setting, for every call
    assert (await summary(omniroute))["providers"]["a"]["count"] == 1
    assert await summary(omniroute, "?window=0.001") == {
        "providers": {}, "models": {}, "window_s": 0.001, "unit": "ms"}


@pytest.mark.parametrize("window", ["0", "-5", "abc", "inf", "nan", "", "9999999"])
async def test_a_bad_window_is_refused(omniroute: Any, window: str) -> None:
    resp = await omniroute.client.get(f"/api/telemetry/summary?window={window}",
                                      headers=omniroute.admin_headers)
    assert resp.status == 400
    err = (await resp.json())["error"]
    assert err["param"] == "window" and "seconds" in err["message"]


async def test_real_requests_and_admin_only(aiohttp_client: Any, tmp_path: Path,
                                            fake_openai: Any) -> None:
    h = await start_harness(aiohttp_client, make_test_config(tmp_path, require_api_key=True))
    await h.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                          "base_url": fake_openai.base_url, "api_key": "sk-upstream-test"})
    key = await h.create_key("client")
    async with openai.AsyncOpenAI(base_url=h.base_url + "/v1", api_key=key,
                                  max_retries=0) as client:
        for stream in (False, True, False):
            answer = await client.chat.completions.create(model="up/gpt-4o-mini",
                                                          messages=HI, stream=stream)
            if stream:
                [chunk async for chunk in answer]  # type: ignore[union-attr]
    body = await summary(h)  # the records of the last moments are written first
    up = body["providers"]["up"]
    assert up["count"] == 3 and 0 < up["p50"] <= up["p95"] <= up["p99"]
    assert body["models"]["up/gpt-4o-mini"] == up
    assert (await h.client.get("/api/telemetry/summary")).status == 401
    resp = await h.client.get("/api/telemetry/summary",
                              headers={"Authorization": f"Bearer {key}"})
    assert resp.status == 403


async def test_percentiles_are_read_through_the_read_only_connection(
        omniroute: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window functions never hold up the connection the request log writes through."""
    from omniroute.appkeys import USAGE
    writer, reader = omniroute.log.db, omniroute.client.app[USAGE].db
    assert writer is not reader  # a file database: the reader is its own connection
    omniroute.log.add(record(1, "a", "m1", 5.0))
    seen = statements(monkeypatch, writer, "fetchall")
    body = await summary(omniroute)
    assert body["providers"]["a"]["count"] == 1  # the flushed record is seen by the reader
    assert not [sql for sql in seen if "ROW_NUMBER" in sql]


async def test_percentiles_on_every_backend(db: DatabaseBackend) -> None:
    """The window-function query itself, on SQLite and on PostgreSQL alike."""
    log = RequestLog(db)
    for i in range(1, 21):
        log.add(record(i, "a", "m1", float(i)))
    log.add(record(30, "a", "m1", 5000.0, status=502))  # failures are not counted
    log.add(record(31, "b", "m2", 3.0, age=7200))  # nor what is outside the window
    await log.flush()
    since = time.time() - 3600
    values = [float(i) for i in range(1, 21)]
    want = {f"p{p}": nearest_rank(values, p) for p in (50, 95, 99)} | {"count": 20}
    assert await latency_percentiles(db, since) == {"a": want}
    assert await latency_percentiles(db, since, by_model=True) == {"a/m1": want}
