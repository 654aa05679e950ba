#!/usr/bin/env python
"""What SQLite holds in memory for the request log's writer, in-process.

Opens the gateway's database (:meth:`Database.open`) in a scratch directory, writes
``--flushes`` flushes of ``--batch`` records each through :class:`RequestLog` (the
records a served JSON request makes), and prints after each few flushes SQLite's own
counters: the memory it has allocated in the whole process
(``sqlite3_memory_used`` and its high-water mark), and the writer's connection's page
cache, prepared statements and schema (``sqlite3_db_status``), with the process's RSS.

    .venv/bin/python scripts/bench_sqlite_memory.py --batch 1000 --flushes 60
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import tempfile
import time
from pathlib import Path
from typing import Any

from omniroute.storage import Database, RequestLog, RequestRecord

SQLITE = ctypes.CDLL("libsqlite3.so.0")
SQLITE.sqlite3_memory_used.restype = ctypes.c_int64
SQLITE.sqlite3_memory_highwater.restype = ctypes.c_int64
SQLITE.sqlite3_memory_highwater.argtypes = [ctypes.c_int]
SQLITE.sqlite3_db_status.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                     ctypes.POINTER(ctypes.c_int),
                                     ctypes.POINTER(ctypes.c_int), ctypes.c_int]
SQLITE.sqlite3_next_stmt.restype = ctypes.c_void_p
SQLITE.sqlite3_next_stmt.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
SQLITE.sqlite3_sql.restype = ctypes.c_char_p
SQLITE.sqlite3_sql.argtypes = [ctypes.c_void_p]
SQLITE.sqlite3_stmt_status.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
#: sqlite3_stmt_status: the bytes a prepared statement holds
STMTSTATUS_MEMUSED = 99
#: sqlite3_db_status ops
CACHE_USED, SCHEMA_USED, STMT_USED = 1, 2, 3


def handle(conn: Any) -> int:
    """The ``sqlite3 *`` of a Python ``sqlite3.Connection`` (its first field)."""
    return ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value or 0


def db_status(conn: Any, op: int) -> int:
    cur, high = ctypes.c_int(), ctypes.c_int()
    SQLITE.sqlite3_db_status(handle(conn), op, ctypes.byref(cur), ctypes.byref(high), 0)
    return cur.value


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def record(n: int) -> RequestRecord:
    return RequestRecord(
        request_id=f"1f2e3d4c5b6a-{n}", ts=time.time(), endpoint="chat.completions",
        status=200, model_requested="bench/gpt-4o-mini", provider="bench",
        connection_id="conn_0123456789ab", model="gpt-4o-mini", prompt_tokens=27,
        completion_tokens=20, cached_tokens=0, reasoning_tokens=0,
        latency_ms=2.5 + n % 7 / 10, ttfb_ms=1.2 + n % 5 / 10, attempts=1,
        client_format="openai", user_agent="wrk",
        attempt_log='[{"target":"bench/gpt-4o-mini (bench)","failure":null,'
                    f'"status":200,"ms":{1 + n % 9 / 10}}}]',
        ttfc_ms=1.3 + n % 3 / 10, tokens_per_s=8000.0 + n % 11, cost_usd=0.0000123)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--flushes", type=int, default=60)
    p.add_argument("--every", type=int, default=10, help="print every so many flushes")
    p.add_argument("--statements", type=int, default=15, help="the largest statements kept")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="omniroute-sqlite-mem-") as tmp:
        db = await Database.open(Path(tmp) / "omniroute.sqlite3")
        log = RequestLog(db, max_pending=10 * args.batch)
        conn = db.conn._conn
        print("flushes  sqlite_used  sqlite_high  cache  stmts  schema   RSS (MiB)")
        n = 0
        for flush in range(1, args.flushes + 1):
            for _ in range(args.batch):
                n += 1
                log.add(record(n))
            await log.flush()
            if flush % args.every == 0 or flush == 1:
                mib = 1 << 20
                print(f"{flush:7d}  {SQLITE.sqlite3_memory_used() / mib:11.2f}  "
                      f"{SQLITE.sqlite3_memory_highwater(0) / mib:11.2f}  "
                      f"{db_status(conn, CACHE_USED) / mib:5.2f}  "
                      f"{db_status(conn, STMT_USED) / mib:5.2f}  "
                      f"{db_status(conn, SCHEMA_USED) / mib:6.2f}  {rss_mib():8.1f}")
        stmt, kept = None, []
        while stmt := SQLITE.sqlite3_next_stmt(handle(conn), stmt):
            kept.append((SQLITE.sqlite3_stmt_status(stmt, STMTSTATUS_MEMUSED, 0),
                         SQLITE.sqlite3_sql(stmt).decode()))
        print(f"{len(kept)} prepared statements, {sum(k[0] for k in kept) / 1024:.0f} KiB:")
        for used, sql in sorted(kept, reverse=True)[:args.statements]:
            print(f"  {used / 1024:6.1f} KiB  {len(sql):6d} chars  {sql[:90]}")
        await db.close()


if __name__ == "__main__":
    asyncio.run(main())
