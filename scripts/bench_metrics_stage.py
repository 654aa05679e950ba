#!/usr/bin/env python
"""Micro-benchmark: what the metrics stage costs one request, in one process and with workers.

Times ``MetricsStage.enter`` and ``MetricsRun.finished`` for a finished record
as the pipeline calls them (the record's labels already bound, as after the
first request of a kind), with nothing else around them. The ``workers`` row
runs in a child process with ``PROMETHEUS_MULTIPROC_DIR`` set, as ``serve
--workers N`` runs its workers: every increment then also writes the worker's
memory-mapped file.

    .venv/bin/python scripts/bench_metrics_stage.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

N = 200_000


def measure(multiprocess_dir: Path | None) -> tuple[float, float]:
    """Microseconds per request: (JSON answer, streamed answer)."""
    from omniroute.metrics.collector import Metrics
    from omniroute.metrics.stage import MetricsStage
    from omniroute.storage import RequestRecord

    stage = MetricsStage(Metrics(multiprocess_dir))
    record = RequestRecord(
        request_id="r", ts=0.0, endpoint="chat.completions", status=200, provider="up",
        model="gpt-4o-mini", latency_ms=350.0, ttfb_ms=120.0, prompt_tokens=120,
        completion_tokens=40, cached_tokens=64, reasoning_tokens=0, cost_usd=0.0012)
    results = []
    for stream in (False, True):
        ctx = SimpleNamespace(stream=stream, record=record)

        async def run(ctx: SimpleNamespace = ctx) -> float:
            enter, operation = stage.enter, None
            for _ in range(1000):  # warm up, bind the labels
                await enter(ctx, operation).finished(ctx)  # type: ignore[arg-type]
            started = time.perf_counter()
            for _ in range(N):
                await enter(ctx, operation).finished(ctx)  # type: ignore[arg-type]
            return (time.perf_counter() - started) / N * 1e6

        results.append(asyncio.run(run()))
    return results[0], results[1]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        json_us, stream_us = measure(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        print(f"{json_us:.2f} {stream_us:.2f}")
        return
    single = measure(None)
    with tempfile.TemporaryDirectory(prefix="omniroute-metrics-bench-") as tmp:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": tmp}
        out = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                             capture_output=True, text=True).stdout.split()
        workers = (float(out[0]), float(out[1]))
    print(f"metrics stage, per request ({N} requests, Python {sys.version.split()[0]})")
    print("| mode | JSON answer | streamed answer |")
    print("|---|---|---|")
    print(f"| one process | {single[0]:.2f} µs | {single[1]:.2f} µs |")
    print(f"| workers (multiprocess files) | {workers[0]:.2f} µs | {workers[1]:.2f} µs |")


if __name__ == "__main__":
    main()
