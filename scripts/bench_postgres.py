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

from bench_usage import timed_flush
from omniroute_postgres import PostgresDatabase
from omniroute_postgres.testing import fresh_schema, scratch_database


async def run(server: str) -> dict[str, Any]:
    url = await fresh_schema(server)
    a, b = await PostgresDatabase.connect(url), await PostgresDatabase.connect(url)
    try:
        out: dict[str, Any] = {}
        for n in (1000, 10_000):
            out[f"one_writer_{n}_s"] = round(await timed_flush(a, f"one{n}-", n), 3)
        began = time.perf_counter()
        await asyncio.gather(timed_flush(a, "two-a-", 5000), timed_flush(b, "two-b-", 5000))
        out["two_writers_2x5000_s"] = round(time.perf_counter() - began, 3)
        small = [await timed_flush(a, f"small{i}-", 10) for i in range(20)]
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
