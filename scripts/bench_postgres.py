"""What usage records cost on PostgreSQL (``database_url``): the request log's writes.

Runs against the local PostgreSQL (``OMNIROUTE_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/postgres``) in a scratch database it drops
afterwards, and prints one JSON object:

* ``one_writer_<n>_s``: one ``RequestLog.flush`` of ``n`` complete records (the records,
  their hourly and daily totals and the keys' last use, in one transaction);
* ``two_writers_2x<n>_s``: two instances flushing ``n`` each at once (no lock between
  them: each folds the records its insert stored; they wait for each other only on the
  totals' rows both add to, here the same hour and group);
* ``small_flush_ms``: a flush of 10 records, what an instance pays every 0.5 s at a
  trickle (round trips, not rows).

Usage: ``PYTHONPATH=. python scripts/bench_postgres.py`` (the plugin installed, or
``plugins/omniroute-postgres`` on ``PYTHONPATH``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from omniroute_postgres import PostgresDatabase
from omniroute_postgres.testing import fresh_schema, scratch_database

from omniroute.storage import RequestLog, RequestRecord


def records(tag: str, n: int) -> list[RequestRecord]:
    now = time.time()
    return [RequestRecord(
        request_id=f"{tag}{i:012x}", ts=now, endpoint="chat.completions", status=200,
        api_key_id="key_bench", model_requested="bench/gpt-4o-mini", provider="bench",
        connection_id="conn_bench", model="gpt-4o-mini", stream=True, prompt_tokens=27,
        completion_tokens=20, cached_tokens=0, reasoning_tokens=0, latency_ms=2.5,
        ttfb_ms=1.2, attempts=1, client_format="openai", user_agent="bench/1.0",
        attempt_log='[{"target":"bench/gpt-4o-mini (bench)","failure":null,"status":200,'
                    '"ms":1.2}]', ttfc_ms=1.3, tokens_per_s=8000.0, cache_write_tokens=0)
        for i in range(n)]


async def flush(db: PostgresDatabase, tag: str, n: int) -> float:
    log = RequestLog(db, max_pending=n * 2)
    for record in records(tag, n):
        log.add(record)
    began = time.perf_counter()
    written = await log.flush()
    assert written == n, written
    return time.perf_counter() - began


async def run(server: str) -> dict[str, Any]:
    url = await fresh_schema(server)
    a, b = await PostgresDatabase.connect(url), await PostgresDatabase.connect(url)
    try:
        out: dict[str, Any] = {}
        for n in (1000, 10_000):
            out[f"one_writer_{n}_s"] = round(await flush(a, f"one{n}-", n), 3)
        began = time.perf_counter()
        await asyncio.gather(flush(a, "two-a-", 5000), flush(b, "two-b-", 5000))
        out["two_writers_2x5000_s"] = round(time.perf_counter() - began, 3)
        small = [await flush(a, f"small{i}-", 10) for i in range(20)]
        out["small_flush_ms"] = round(sum(small) / len(small) * 1000, 1)
        return out
    finally:
        await a.close()
        await b.close()


def main() -> None:
    with scratch_database() as server:
        print(json.dumps(asyncio.run(run(server))))


if __name__ == "__main__":
    main()
