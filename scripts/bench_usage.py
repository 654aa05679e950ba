"""The benchmark's usage-record part (``bench.py --usage``): what records cost.

* Two more gateways join the run, on the first loop, measured in the same
  interleaved cells as the others: ``omniroute-norec`` with the ``request_log``
  setting off (no usage records at all), and ``omniroute-1m`` whose request log
  holds 1,000,000 rows before it starts (:func:`prefill`, one ``executemany``).
  The plain ``omniroute`` gateway records every request into a table that starts
  empty. So one run gives records on / off, and a full table / an empty one.
  ``omniroute-1m`` runs with ``usage_max_rows`` at twice the rows it holds: at the
  default bound (1,000,000) its table would sit at the bound, and the background
  retention (first a minute after the start, then every ten) would delete in one
  measured cell the rows written since the start. That deleting is what any
  gateway at its row bound pays, whatever the bound, not what a large table costs:
  it is timed apart (:func:`flush_cost`'s ``prune_s``).
* :func:`flush_cost`: in-process, the time :meth:`RequestLog.flush` takes to write
  10,000 complete records, into an empty table and into one with 1,000,000 rows;
  and the time :meth:`RequestLog.prune` then takes to delete the 20,000 rows over a
  1,000,000-row bound (in its small batches, with their pauses).

Targets: records add at most 5 % CPU per request; 1,000,000 rows change nothing
(within 5 %); 10,000 records are written within 2 s.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_report import get

#: the gateways this module adds (names in the report)
NO_RECORDS, FULL_TABLE = "omniroute-norec", "omniroute-1m"
PREFILL_ROWS = 1_000_000
#: omniroute-1m's settings: a row bound its table stays under during the run
FULL_SETTINGS = {"usage_max_rows": str(2 * PREFILL_ROWS)}
FLUSH_RECORDS = 10_000
CPU = "cpu_ms_per_req"
_COLUMNS = ("request_id", "ts", "api_key_id", "endpoint", "model_requested", "provider",
            "connection_id", "model", "stream", "status", "prompt_tokens", "completion_tokens",
            "latency_ms", "ttfb_ms", "attempts", "client_format", "user_agent", "attempt_log",
            "ttfc_ms", "tokens_per_s")


def _rows(n: int, start_ts: float) -> Any:
    tries = '[{"target":"bench/gpt-4o-mini (bench)","failure":null,"status":200,"ms":1.2}]'
    for i in range(n):
        yield (f"prefill{i:012x}", start_ts + i * 0.001, "key_bench", "chat.completions",
               "bench/gpt-4o-mini", "bench", "conn_bench", "gpt-4o-mini", i % 2, 200, 27, 20,
               2.5, 1.2, 1, "openai", "bench/1.0", tries, 1.3, 8000.0)


def prefill(db_path: Path, rows: int = PREFILL_ROWS) -> float:
    """Put ``rows`` recent records into the database's request log; the seconds it took."""
    began = time.perf_counter()
    with sqlite3.connect(db_path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executemany(
            f"INSERT INTO request_log({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in _COLUMNS)})",
            _rows(rows, time.time() - rows * 0.001))
    return time.perf_counter() - began


def sample_records(tag: str, n: int) -> list[Any]:
    """``n`` complete request records (``RequestRecord``), ids from ``tag``."""
    from omniroute.storage import RequestRecord

    now = time.time()
    return [RequestRecord(
        request_id=f"{tag}{i:012x}", ts=now, endpoint="chat.completions", status=200,
        api_key_id="key_bench", model_requested="bench/gpt-4o-mini", provider="bench",
        connection_id="conn_bench", model="gpt-4o-mini", stream=True, prompt_tokens=27,
        completion_tokens=20, cached_tokens=0, reasoning_tokens=0, latency_ms=2.5,
        ttfb_ms=1.2, attempts=1, client_format="openai", user_agent="bench/1.0",
        attempt_log='[{"target":"bench/gpt-4o-mini (bench)","failure":null,'
                    '"status":200,"ms":1.2}]', ttfc_ms=1.3, tokens_per_s=8000.0,
        cache_write_tokens=0) for i in range(n)]


async def timed_flush(db: Any, tag: str, n: int) -> float:
    """Seconds one ``RequestLog.flush`` of :func:`sample_records` ``(tag, n)`` takes into ``db``."""
    from omniroute.storage import RequestLog

    log = RequestLog(db, max_pending=n * 2)
    for record in sample_records(tag, n):
        log.add(record)
    began = time.perf_counter()
    written = await log.flush()
    took = time.perf_counter() - began
    assert written == n, written
    return took


async def timed_prune(db: Any, max_rows: int) -> tuple[float, int]:
    """Seconds one ``RequestLog.prune`` takes to bring the request log down to
    ``max_rows`` rows (age retention off, so only the row bound deletes), and the rows
    it deleted."""
    from omniroute.storage import RequestLog

    log = RequestLog(db)
    log.retention_days, log.max_rows = 0.0, max_rows
    over = (await db.fetchone("SELECT count(*) FROM request_log"))[0] - max_rows
    began = time.perf_counter()
    removed = await log.prune()
    took = time.perf_counter() - began
    assert removed == over, (removed, over)
    return took, removed


def flush_cost(records: int = FLUSH_RECORDS, rows: int = PREFILL_ROWS) -> dict[str, float]:
    """Seconds one ``RequestLog.flush`` of ``records`` complete records takes, into an empty
    request log and into one already holding ``rows``."""
    from omniroute.storage import Database

    async def run() -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="omniroute-bench-flush-") as tmp:
            path = Path(tmp) / "omniroute.sqlite3"
            db = await Database.open(path)
            try:
                empty = await timed_flush(db, "empty", records)
                filled = prefill(path, rows)
                full = await timed_flush(db, "full", records)
                pruned, over = await timed_prune(db, rows)
            finally:
                await db.close()
        return {"records": records, "empty_s": empty, "full_s": full, "rows": rows,
                "prefill_s": filled, "prune_s": pruned, "pruned": over}

    return asyncio.run(run())


def comparisons(results: dict[str, Any], recording: str, levels: dict[str, list[int]]
                ) -> list[tuple[str, float | None, float, str]]:
    """``(label, value, limit, unit)`` of each usage target; ``recording`` is the gateway
    that keeps records into an empty table (``omniroute`` or ``omniroute+uv``)."""
    out: list[tuple[str, float | None, float, str]] = []
    for lane, concs in levels.items():
        for conc in concs:
            on = get(results, lane, recording, conc, CPU)
            off = get(results, lane, NO_RECORDS, conc, CPU)
            full = get(results, lane, FULL_TABLE, conc, CPU)
            if on is None or off is None or full is None:
                continue
            out.append((f"{lane} c={conc}: CPU per request, records on / off", on / off, 1.05,
                        "×"))
            out.append((f"{lane} c={conc}: CPU per request, 1,000,000 rows / empty table",
                        full / on, 1.05, "×"))
    pooled = _pooled(results.get("raw", {}), recording, levels)
    if pooled is not None:
        out.append(("every cell and round: CPU per request, records on / off (geometric mean "
                    f"of {pooled[1]} interleaved pairs)", pooled[0], 1.05, "×"))
    flush = results.get("usage_flush", {})
    for key, what in (("empty_s", "an empty table"), ("full_s", "a 1,000,000-row table")):
        if key in flush:
            out.append((f"{flush['records']:,} records written into {what}", flush[key], 2.0,
                        " s"))
    return out


def _pooled(raw: dict[str, Any], recording: str, levels: dict[str, list[int]]
            ) -> tuple[float, int] | None:
    """Records on / off over every lane, concurrency and round: the geometric mean of the
    ratios of the pairs measured back to back in one round (a cell's own spread on two
    shared CPUs, 10-20 % between runs, is larger than the effect; the pooled ratio's is
    not). None: no pair measured."""
    logs: list[float] = []
    for lane, concs in levels.items():
        for conc in concs:
            on, off = (_rounds(raw, lane, name, conc) for name in (recording, NO_RECORDS))
            logs += [math.log(a[CPU] / b[CPU]) for a, b in zip(on, off, strict=False)
                     if a.get(CPU) and b.get(CPU)]
    return (math.exp(sum(logs) / len(logs)), len(logs)) if logs else None


def _rounds(raw: dict[str, Any], lane: str, name: str, conc: int) -> list[dict[str, Any]]:
    """A cell's rounds (keyed by the level, or by its text once read back from JSON)."""
    by_conc = raw.get(lane, {}).get(name, {})
    return by_conc.get(conc) or by_conc.get(str(conc)) or []
