#!/usr/bin/env python
"""What sharing state through Redis costs a request: omniroute with and without ``state_url``.

One run starts, on 127.0.0.1 only and each in its own process (as ``bench.py``
does, whose pieces it reuses): the fake OpenAI upstream, a ``redis-server`` of
its own on a free port (the machine's shared Redis is left alone: other
traffic would blur the counts), and four gateways on one event loop:

* ``local``: the embedded default, no ``state_url``;
* ``redis``: ``state_url`` set: the resilience state is shared, nothing is awaited
  per request;
* ``local-lim``: no ``state_url``, the connection with ``rpm`` and ``max_concurrency``
  set (far above the load);
* ``redis-lim``: ``state_url`` and the same limits: each request takes its slot in
  Redis (one awaited round trip) and gives it back after the answer (queued);
* ``local-all``, ``redis-all``: every shared concern at once: the limited connection,
  an API key with ``rpm``, ``concurrency`` and a daily budget (far above the load),
  the response cache (``memory``; ``redis`` with ``state_url``) missing on every
  request, and a new ``Idempotency-Key`` on every request. With Redis, what the
  request needs before dispatch is one round trip, and what follows it one more.

JSON cells (``POST /v1/chat/completions``) run back to back for every target, in
closed loops at each concurrency. Reported per cell: requests/s, p50 / p99
latency, the gateway's CPU per request, and Redis's own CPU, commands and bytes
(in + out) per request, read from ``INFO`` before and after the cell. Then the
added latency and CPU of ``redis`` against ``local`` and of ``redis-lim`` against
``local-lim``, checked against the issue's targets (≤ 0.15 ms added at c=1, ≤ 15 %
added CPU per request).

    .venv/bin/python scripts/bench_redis.py --quick
    .venv/bin/python scripts/bench_redis.py --rounds 3 --json bench-redis.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_client import median_cell, start_client
from bench_fakes import HOST, REQUEST
from bench_procs import (
    busy_ms,
    cpu_ms,
    free_port,
    process_tree,
    start_app,
    start_gateway,
    stop_all,
)
from bench_report import fmt

LIMITS = {"rpm": 10_000_000, "max_concurrency": 100_000}
#: the API key of the ``-all`` targets: every limit set, none reached
KEY_LIMITS = {"rpm": 10_000_000, "concurrency": 100_000, "daily_usd": 1_000_000.0}
TARGETS = ("local", "redis", "local-lim", "redis-lim", "local-all", "redis-all")
#: the ``-all`` targets' request: each one's own (``{n}``, see ``bench_client.loop_cell``)
UNIQUE_REQUEST = {**REQUEST, "messages": [
    REQUEST["messages"][0], {"role": "user", "content": "Give me one sentence about the sea. {n}"}]}
#: seconds the idle gateways are watched before the cells (their own syncs' cost)
IDLE_WINDOW = 3.0


def start_redis(port: int) -> subprocess.Popen:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            info(port)
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not answer")


#: commands a client sends (the rest run inside the scripts, on the server). GET, HDEL
#: and PUBLISH are left out: the request path sends none of them, and its scripts run
#: them (counting them here counted a cache lookup's GET, a settle's HDEL and an
#: answer's PUBLISH twice); ZREM is in: the scripts run it only to drop expired cache
#: index rows
SENT = {"evalsha", "zrem", "mget", "scan", "script", "ping", "select", "hello", "subscribe",
        "client", "info"}


def info(port: int) -> dict[str, float]:
    """Redis's own counters: commands a client sent, every command run (scripts' included),
    network bytes in and out."""
    import redis

    client = redis.Redis(host=HOST, port=port, socket_timeout=5)
    try:
        calls = {name.removeprefix("cmdstat_"): stat["calls"]
                 for name, stat in client.info("commandstats").items()}
        stats = client.info("stats")
    finally:
        client.close()
    return {"sent": float(sum(n for name, n in calls.items() if name in SENT)),
            "commands": float(sum(calls.values())),
            "bytes": float(stats["total_net_input_bytes"] + stats["total_net_output_bytes"])}


def _admin(port: int) -> Any:
    """A management API caller signed in as the admin: ``call(method, path, body)`` (a
    change carries the session's ``X-CSRF-Token``, as the login answer gives it)."""
    def call(method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[Any, str]:
        req = urllib.request.Request(
            f"http://{HOST}:{port}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null"), resp.headers.get("Set-Cookie", "")

    login, cookie = call("POST", "/api/auth/login", {"password": "bench-password"})
    session = {"Cookie": cookie.split(";", 1)[0], "X-CSRF-Token": login["csrf_token"]}
    return lambda method, path, body=None: call(method, path, body, session)[0]


def limited_key(port: int) -> dict[str, str]:
    """An API key with ``KEY_LIMITS`` (and a price for the model, which a USD budget
    needs): the headers that send it."""
    call = _admin(port)
    call("PUT", "/api/pricing", {"model": REQUEST["model"], "input": 0.15, "output": 0.6})
    created = call("POST", "/api/keys", {"name": "bench", "limits": KEY_LIMITS})
    return {"Authorization": f"Bearer {created['key']}"}


def limit_connection(port: int) -> None:
    """Give the gateway's connection ``LIMITS`` through the management API."""
    call = _admin(port)
    providers = call("GET", "/api/providers")
    rows = providers["providers"] if isinstance(providers, dict) else providers
    cid = rows[0]["id"]
    call("PUT", f"/api/providers/{cid}", LIMITS)
    limits = call("GET", "/api/rate-limits")
    row = next(c for c in limits["connections"] if c["id"] == cid)
    if (row["limits"] or {}).get("rpm") != LIMITS["rpm"]:
        raise RuntimeError(f"the connection's limits did not take: {row}")


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    gateways: list[subprocess.Popen] = []
    redis_port = free_port()
    redis = start_redis(redis_port)
    redis_pids = [redis.pid]
    try:
        _, up_port = start_app(ctx, "upstream", None, args.loop, procs)
        targets: dict[str, tuple[str, list[int]]] = {}
        extra: dict[str, dict[str, Any]] = {}  # the -all targets' key and unique requests
        for name in args.targets:
            settings = ({"state_url": f"redis://{HOST}:{redis_port}/0"}
                        if name.startswith("redis") else {})
            if name.endswith("-all"):
                settings["cache_mode"] = "on"
                if name.startswith("redis"):
                    settings["cache_backends"] = "redis"
            gateway, port = start_gateway(tmp / name, up_port, 1, args.loop,
                                          settings=settings or None)
            gateways.append(gateway)
            if name.endswith(("-lim", "-all")):
                limit_connection(port)
            if name.endswith("-all"):
                extra[name] = {"headers": limited_key(port), "unique": True,
                               "body": UNIQUE_REQUEST}
            targets[name] = (f"http://{HOST}:{port}/v1/chat/completions",
                             process_tree(gateway.pid))
        client = start_client(ctx, procs)
        # what the idle gateways cost Redis (their syncs), taken off every cell's counts
        first, began = info(redis_port), time.monotonic()
        time.sleep(IDLE_WINDOW)
        idle = {k: (v - first[k]) / (time.monotonic() - began)
                for k, v in info(redis_port).items()}
        raw: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for rnd in range(1, args.rounds + 1):
            for conc in args.concurrency:
                for name, (url, pids) in targets.items():
                    before, rcpu, busy0, began = info(redis_port), cpu_ms(redis_pids), \
                        busy_ms(), time.monotonic()
                    client.send(("loop", {"url": url, "body": REQUEST, "conc": conc,
                                          "pids": pids, "warmup": args.warmup,
                                          "duration": args.duration, **extra.get(name, {})}))
                    cell = client.recv()
                    if "error" in cell or not cell.get("requests") or cell["errors"]:
                        raise RuntimeError(f"{name} c={conc} failed: {cell}")
                    after, wall = info(redis_port), time.monotonic() - began
                    # Redis counts the warm-up too: per request over everything it served
                    served = cell["requests"] + cell["rps"] * args.warmup
                    for counter, field in (("sent", "redis_sent_per_req"),
                                           ("commands", "redis_cmds_per_req"),
                                           ("bytes", "redis_bytes_per_req")):
                        cell[field] = max(0.0, after[counter] - before[counter]
                                          - idle[counter] * wall) / served
                    cell["redis_cpu_ms_per_req"] = (cpu_ms(redis_pids) - rcpu) / served
                    cell["machine_cpus"] = (busy_ms() - busy0) / 1000 / wall
                    raw.setdefault(name, {}).setdefault(conc, []).append(cell)
                    print(f"  round {rnd} c={conc:<3} {name:<10} {cell['rps']:6.0f}/s, p50 "
                          f"{cell['p50_ms']:.3f} ms, CPU {cell['cpu_ms_per_req']:.3f} ms, redis "
                          f"{cell['redis_cmds_per_req']:.2f} cmds {cell['redis_bytes_per_req']:.0f}"
                          " B", file=sys.stderr, flush=True)
        pair = (two_instances(args, ctx, procs, gateways, tmp, up_port, redis_port,
                              targets["redis-lim"], client)
                if "redis-lim" in targets else None)
        client.send(None)
        import uvloop

        costs = [uvloop.run(slot_cost(redis_port, args.slots)) for _ in range(args.rounds)]
        return {"cells": {name: {conc: median_cell(cells) for conc, cells in by.items()}
                          for name, by in raw.items()}, "pair": pair,
                "slot": {k: statistics.median(c[k] for c in costs) for k in costs[0]}}
    finally:
        stop_all(gateways, procs)
        redis.terminate()
        redis.wait(5)


def two_instances(args: argparse.Namespace, ctx: Any, procs: list[Any],
                  gateways: list[subprocess.Popen], tmp: Path, up_port: int, redis_port: int,
                  first: tuple[str, list[int]], client: Any) -> dict[str, float]:
    """Throughput at the top concurrency: ``redis-lim`` alone, then it and a second such
    gateway (same Redis, same limits) each taking half the load from its own client
    process, at once. Medians over the rounds."""
    gateway, port = start_gateway(tmp / "redis-lim-2", up_port, 1, args.loop,
                                  settings={"state_url": f"redis://{HOST}:{redis_port}/0"})
    gateways.append(gateway)
    limit_connection(port)
    second = (f"http://{HOST}:{port}/v1/chat/completions", process_tree(gateway.pid))
    other = start_client(ctx, procs)
    top = max(args.concurrency)

    def cell(url: str, pids: list[int], conc: int) -> dict[str, Any]:
        return {"url": url, "body": REQUEST, "conc": conc, "pids": pids,
                "warmup": args.warmup, "duration": args.duration}

    ones, twos = [], []
    for _ in range(args.rounds):
        client.send(("loop", cell(*first, top)))
        ones.append(client.recv()["rps"])
        client.send(("loop", cell(*first, top // 2)))
        other.send(("loop", cell(*second, top // 2)))
        a, b = client.recv(), other.recv()
        twos.append(a["rps"] + b["rps"])
        print(f"  two instances c={top}: one {ones[-1]:.0f}/s, two {twos[-1]:.0f}/s",
              file=sys.stderr, flush=True)
    other.send(None)
    return {"one_rps": statistics.median(ones), "two_rps": statistics.median(twos),
            "conc": float(top)}


async def slot_cost(port: int, count: int) -> dict[str, float]:
    """In one process, without HTTP: a limited connection's slot taken and given back
    ``count`` times in a row, from this process's own counters and from Redis's (the
    gateway's ``ConnectionSlots`` over the wire): CPU and wall µs per slot. CPU time is
    far steadier than a whole gateway's on a busy machine."""
    from omniroute_redis.batch import Batch
    from omniroute_redis.leases import ConnectionSlots, Leases
    from omniroute_redis.link import Link
    from omniroute_redis.scripts import Scripts

    from omniroute.resilience.clock import SystemClock
    from omniroute.resilience.limits import Limiter

    link = Link(f"redis://{HOST}:{port}/0", timeout=lambda: 1.0)
    scripts = Scripts()
    batch = Batch(link, scripts)
    batch.start()
    slots = ConnectionSlots(Leases(link, scripts, batch, "bench"))
    out: dict[str, float] = {}
    try:
        for name, shared in (("local", None), ("redis", slots)):
            limiter = Limiter("bench", clock=SystemClock(), max_concurrency=100_000,
                              rpm=10_000_000, queue_size=32, queue_timeout=5.0, shared=shared)
            for _ in range(200):  # warm up (the connection opens, the scripts load)
                async with limiter.acquire():
                    pass
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(count):
                async with limiter.acquire():
                    pass
            await batch.flush()
            out[f"{name}_cpu_us"] = (time.process_time() - cpu) / count * 1e6
            out[f"{name}_wall_us"] = (time.perf_counter() - wall) / count * 1e6
    finally:
        await batch.close()
        await link.close()
    return out


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    cells, slot = results["cells"], results["slot"]
    load = os.getloadavg()
    out = ["## omniroute with Redis state against in-process state", "",
           f"{os.cpu_count()} CPUs, loop {args.loop}; {args.duration:g} s cells after "
           f"{args.warmup:g} s warm-up, median of {args.rounds} round(s); load average after "
           f"the run {load[0]:.2f}. The gateway's CPU counts its process only; Redis's is its "
           "own server's, per request.", "",
           "| target | conc. | req/s | p50 ms | p99 ms | CPU ms/req | Redis commands sent / "
           "run per req | Redis bytes/req | Redis CPU ms/req | busy CPUs |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, by in cells.items():
        for conc, c in by.items():
            out.append(f"| {name} | {conc} | {fmt(c['rps'], 0)} | {fmt(c['p50_ms'], 3)} | "
                       f"{fmt(c['p99_ms'], 3)} | {fmt(c['cpu_ms_per_req'], 3)} | "
                       f"{fmt(c['redis_sent_per_req'], 2)} / {fmt(c['redis_cmds_per_req'], 2)} | "
                       f"{fmt(c['redis_bytes_per_req'], 0)} "
                       f"| {fmt(c['redis_cpu_ms_per_req'], 3)} | {fmt(c['machine_cpus'], 2)} |")
    out += ["", "### Added by Redis", ""]
    low = min(args.concurrency)
    pairs = [(shared, alone) for shared, alone in (("redis", "local"),
                                                   ("redis-lim", "local-lim"),
                                                   ("redis-all", "local-all"))
             if shared in cells and alone in cells]
    for shared, alone in pairs:
        for conc in args.concurrency:
            a, b = cells[shared][conc], cells[alone][conc]
            out.append(f"- {shared} against {alone}, c={conc}: p50 "
                       f"{a['p50_ms'] - b['p50_ms']:+.3f} ms, CPU per request "
                       f"{(a['cpu_ms_per_req'] / b['cpu_ms_per_req'] - 1) * 100:+.1f} %, "
                       f"throughput {a['rps'] / b['rps']:.2f}×")
        a, b = cells[shared][low], cells[alone][low]
        added = a["p50_ms"] - b["p50_ms"]
        cpu = a["cpu_ms_per_req"] / b["cpu_ms_per_req"] - 1
        out.append(f"- [{'x' if added <= 0.15 else ' '}] {shared}: added p50 at c={low} "
                   f"≤ 0.15 ms: {added:+.3f} ms — {'PASS' if added <= 0.15 else 'FAIL'}")
        worst = max(cells[shared][c]["cpu_ms_per_req"] / cells[alone][c]["cpu_ms_per_req"] - 1
                    for c in args.concurrency)
        out.append(f"- [{'x' if worst <= 0.15 else ' '}] {shared}: added CPU per request "
                   f"≤ 15 % at every concurrency: worst {worst * 100:+.1f} % (c={low}: "
                   f"{cpu * 100:+.1f} %) — {'PASS' if worst <= 0.15 else 'FAIL'}")
    out += ["", "### A slot taken and given back, in one process (no HTTP)", "",
            f"- this process's own counters: {slot['local_cpu_us']:.1f} µs CPU, "
            f"{slot['local_wall_us']:.1f} µs wall per slot",
            f"- Redis's (one round trip to take; the give-backs queued, and sent together "
            f"by the writer): {slot['redis_cpu_us']:.1f} µs CPU, "
            f"{slot['redis_wall_us']:.1f} µs wall per slot: "
            f"+{slot['redis_cpu_us'] - slot['local_cpu_us']:.1f} µs CPU, "
            f"+{(slot['redis_wall_us'] - slot['local_wall_us']) / 1000:.3f} ms latency at c=1"]
    pair = results["pair"]
    if pair is None:
        return "\n".join(out)
    out += ["", f"### Two instances against one (redis-lim, c={pair['conc']:.0f} in all)", "",
            f"- one: {pair['one_rps']:.0f} req/s; two (each half the load, from its own "
            f"client process): {pair['two_rps']:.0f} req/s: "
            f"{pair['two_rps'] / pair['one_rps']:.2f}× on {os.cpu_count()} CPUs shared with "
            "the load clients, the upstream and Redis"]
    return "\n".join(out)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (1)")
    p.add_argument("--concurrency", type=lambda t: [int(x) for x in t.split(",")],
                   default=[1, 16, 64], help="closed-loop levels (1,16,64)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every cell; report the median")
    p.add_argument("--loop", default="uvloop", choices=["asyncio", "uvloop"])
    p.add_argument("--slots", type=int, default=5000,
                   help="slots taken in a row for the in-process measure (5000)")
    p.add_argument("--targets", type=lambda t: t.split(","), default=list(TARGETS),
                   help=f"the gateways to compare (default {','.join(TARGETS)}; the report "
                   "compares each redis-X with its local-X)")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    if args.quick:
        args.duration, args.warmup, args.concurrency, args.slots = 1.5, 0.5, [1, 16], 1000
    return args


def main() -> int:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="omniroute-bench-redis-") as tmp:
        results = run(args, Path(tmp))
    print(report(args, results))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
