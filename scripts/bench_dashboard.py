#!/usr/bin/env python
"""Does serving the dashboard cost the ``/v1`` data path anything? Measured.

One gateway (``python -m omniroute.cli serve``, as ``bench.py`` starts it) in front of
the benchmark's fake OpenAI upstream, and ``bench_client``'s closed-loop JSON cell on
``POST /v1/chat/completions`` in its own process. Each round measures the cell twice,
in alternating order: with nobody looking at the dashboard, and with ``--viewers``
signed-in dashboard sessions (each its own process, started and signed in before the
first round) polling what the open pages poll (the overview, the request log,
resilience, rate limits, sessions) every ``--every`` seconds, as the browser does (5 s). The
report gives the medians of both, the difference, and how fast the dashboard's own
calls answered meanwhile. Everything listens on 127.0.0.1.

    .venv/bin/python scripts/bench_dashboard.py                  # 1 viewer, 5 s, 5 rounds
    .venv/bin/python scripts/bench_dashboard.py --viewers 10 --every 1   # far more than real
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from typing import Any

import aiohttp
from bench_client import pct, start_client
from bench_fakes import CHAT, HOST, REQUEST
from bench_procs import busy_ms, exit_with, process_tree, running, start_app, start_gateway

#: what the dashboard's pages poll while open (overview, request log, resilience)
POLLS = ("/api/dashboard/overview", "/api/usage/logs?from=24h&limit=50", "/api/resilience",
         "/api/rate-limits", "/api/sessions")
PAGE = ("/dashboard", "/dashboard/assets/js/app.js", "/dashboard/assets/css/dashboard.css",
        "/dashboard/assets/js/pages/overview.js")


async def view(base: str, every: float, active: Any, quit_: Any, results: Any) -> None:
    """One signed-in dashboard session, started before the measuring (its start-up is
    not counted): the page once, then, while ``active`` is set, the polls every
    ``every`` s; after each active stretch it reports its calls' timings."""
    jar = aiohttp.CookieJar(unsafe=True)  # the session cookie of an IP address
    async with aiohttp.ClientSession(base, cookie_jar=jar,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.post("/api/auth/login", json={"password": "bench-password"}) as resp:
            if resp.status != 200:
                results.put({"error": f"login answered {resp.status}: {await resp.text()}"})
                return
        for path in PAGE:
            async with http.get(path) as resp:
                await resp.read()
        results.put({"ready": True})
        while not quit_.is_set():
            if not active.is_set():
                await asyncio.sleep(0.02)
                continue
            timings: dict[str, list[float]] = {}
            errors = 0
            while active.is_set():
                began = time.perf_counter()
                for path in POLLS:
                    start = time.perf_counter()
                    async with http.get(path) as resp:
                        await resp.read()
                        errors += resp.status != 200
                    timings.setdefault(path, []).append((time.perf_counter() - start) * 1000)
                while active.is_set() and time.perf_counter() - began < every:
                    await asyncio.sleep(0.02)
            results.put({"timings": timings, "errors": errors})


def viewer_main(base: str, every: float, active: Any, quit_: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(view(base, every, active, quit_, results))


def measure(args: argparse.Namespace, ctx: Any, base: str, pids: list[int], client: Any
            ) -> dict[str, Any]:
    cells: dict[str, list[dict[str, Any]]] = {"alone": [], "viewed": []}
    dashboard: dict[str, list[float]] = {}
    dashboard_errors = 0
    active, quit_, results = ctx.Event(), ctx.Event(), ctx.Queue()
    viewers = [ctx.Process(target=viewer_main, args=(base, args.every, active, quit_, results),
                           daemon=True) for _ in range(args.viewers)]
    for proc in viewers:
        proc.start()
    for _ in viewers:
        ready = results.get(timeout=60)
        if "error" in ready:
            raise RuntimeError(f"a dashboard viewer failed: {ready['error']}")
    try:
        for rnd in range(args.rounds):
            for mode in (("alone", "viewed") if rnd % 2 == 0 else ("viewed", "alone")):
                if mode == "viewed":
                    active.set()
                client.send(("loop", {"url": base + CHAT, "body": REQUEST,
                                      "conc": args.concurrency, "warmup": args.warmup,
                                      "duration": args.duration, "pids": pids}))
                cell = client.recv()
                if mode == "viewed":
                    active.clear()
                    for _ in viewers:
                        answer = results.get(timeout=60)
                        for path, times in answer["timings"].items():
                            dashboard.setdefault(path, []).extend(times)
                        dashboard_errors += answer["errors"]
                if "error" in cell or not cell.get("requests"):
                    raise RuntimeError(f"the /v1 cell failed: {cell}")
                cells[mode].append(cell)
                print(f"  round {rnd + 1} {mode:<6} {cell['rps']:6.0f}/s  "
                      f"p50 {cell['p50_ms']:.2f} ms  p99 {cell['p99_ms']:.2f} ms  "
                      f"CPU {cell['cpu_ms_per_req']:.3f} ms/req", file=sys.stderr, flush=True)
    finally:
        quit_.set()
        for proc in viewers:
            proc.join(10)
    return {"cells": cells, "dashboard": dashboard, "dashboard_errors": dashboard_errors}


def report(args: argparse.Namespace, measured: dict[str, Any], machine_cpus: float) -> str:
    def med(mode: str, key: str) -> float:
        return float(statistics.median(c[key] for c in measured["cells"][mode]))

    lines = [f"/v1 JSON at concurrency {args.concurrency}, {args.rounds} rounds of "
             f"{args.duration:g} s each way; {args.viewers} dashboard viewer(s) polling "
             f"{len(POLLS)} calls every {args.every:g} s; {os.cpu_count()} CPUs, "
             f"{machine_cpus:.2f} busy on average", "",
             "| | nobody on the dashboard | dashboard open | difference |", "|---|---|---|---|"]
    for key, title, digits in (("rps", "requests/s", 0), ("p50_ms", "p50 ms", 2),
                               ("p99_ms", "p99 ms", 2), ("cpu_ms_per_req", "CPU ms/request", 3)):
        alone, viewed = med("alone", key), med("viewed", key)
        lines.append(f"| {title} | {alone:.{digits}f} | {viewed:.{digits}f} | "
                     f"{(viewed - alone) / alone * 100:+.1f} % |")
    lines += ["", f"The dashboard's own calls meanwhile ({measured['dashboard_errors']} not "
              "200):", "", "| call | calls | p50 ms | max ms |", "|---|---|---|---|"]
    for path, times in measured["dashboard"].items():
        lines.append(f"| `{path}` | {len(times)} | {pct(times, 50):.1f} | {max(times):.1f} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="rounds, each measuring both (5)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (1)")
    p.add_argument("--concurrency", type=int, default=16, help="/v1 requests in flight (16)")
    p.add_argument("--viewers", type=int, default=1, help="dashboard sessions (1)")
    p.add_argument("--every", type=float, default=5.0, help="seconds between polls (5)")
    args = p.parse_args()
    with running("omniroute-bench-dashboard-") as run:
        _, up_port = start_app(run.ctx, "upstream", None, "asyncio", run.procs)
        gateway, port = start_gateway(run.tmp / "gw", up_port, 1, "asyncio")
        run.gateways.append(gateway)
        client = start_client(run.ctx, run.procs)
        busy, began = busy_ms(), time.monotonic()
        measured = measure(args, run.ctx, f"http://{HOST}:{port}",
                           process_tree(gateway.pid), client)
        machine = (busy_ms() - busy) / 1000 / (time.monotonic() - began)
        print(report(args, measured, machine))
        return 0


if __name__ == "__main__":
    exit_with(main)
