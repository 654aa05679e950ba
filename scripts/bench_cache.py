#!/usr/bin/env python
"""What the exact response cache costs and saves, beside the bare forwarder.

Starts (each in its own process, on 127.0.0.1) the fake OpenAI upstream, the bare
aiohttp forwarder and two gateways: one with the cache off (``cache_mode=off``)
and one with the default (``deterministic``: temperature 0 only). Every cell runs
for every target back to back, ``--rounds`` times (the median is reported):

* ``miss``: the benchmark's usual request (temperature 0.2) on both gateways: the
  cost of the cache for traffic it cannot serve (≤ 3 % CPU per request);
* ``hit``: the same request at temperature 0 on the caching gateway (every request
  after the first is a hit), JSON and an instant stream replayed in the client's
  format; against the forwarder's round trip (an exact hit must cost less CPU) and
  the direct call to the upstream (what a hit adds to latency, < 0.3 ms).

    .venv/bin/python scripts/bench_cache.py --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from bench_client import start_client
from bench_fakes import CHAT, DONE, HOST, INSTANT_REQUEST, REQUEST
from bench_procs import process_tree, running, start_app, start_gateway

HIT_REQUEST = {**REQUEST, "temperature": 0}
HIT_STREAM = {**INSTANT_REQUEST, "temperature": 0}


def cells(targets: dict[str, tuple[str, list[int]]]) -> list[tuple[str, str, dict, str | None]]:
    """(row, target, body, tail) of every measured cell."""
    return [
        ("direct: upstream", "direct", REQUEST, None),
        ("forwarder round trip", "forwarder", REQUEST, None),
        ("omniroute, cache off (t=0.2)", "off", REQUEST, None),
        ("omniroute, cache on (t=0.2: bypass)", "on", REQUEST, None),
        ("omniroute, exact hit (JSON)", "on", HIT_REQUEST, None),
        ("omniroute, exact hit (stream)", "on", HIT_STREAM, DONE.decode()),
    ]


def run(args: argparse.Namespace) -> dict[str, dict[int, dict[str, float]]]:
    results: dict[str, dict[int, list[dict[str, Any]]]] = {}
    with running("omniroute-bench-cache-") as started:
        upstream, up_port = start_app(started.ctx, "upstream", None, "asyncio", started.procs)
        fw, fw_port = start_app(started.ctx, "forwarder", f"http://{HOST}:{up_port}", "asyncio",
                                started.procs)
        targets = {"direct": (f"http://{HOST}:{up_port}", [upstream.pid]),
                   "forwarder": (f"http://{HOST}:{fw_port}", [fw.pid])}
        for name, mode in (("off", "off"), ("on", "deterministic")):
            gateway, port = start_gateway(started.tmp / name, up_port, 1, "asyncio",
                                          settings={"cache_mode": mode})
            started.gateways.append(gateway)
            targets[name] = (f"http://{HOST}:{port}", process_tree(gateway.pid))
        client = start_client(started.ctx, started.procs)
        for rnd in range(1, args.rounds + 1):
            for conc in args.concurrency:
                for row, target, body, tail in cells(targets):
                    base, pids = targets[target]
                    client.send(("loop", {"url": base + CHAT, "body": body, "conc": conc,
                                          "pids": pids, "tail": tail,
                                          "warmup": args.warmup,
                                          "duration": args.duration}))
                    cell = client.recv()
                    if "error" in cell or not cell.get("requests"):
                        raise RuntimeError(f"{row} c={conc} failed: {cell}")
                    results.setdefault(row, {}).setdefault(conc, []).append(cell)
                    print(f"  round {rnd} c={conc:<3} {row:<38} {cell['rps']:6.0f}/s "
                          f"p50 {cell['p50_ms']:.3f} ms CPU {cell['cpu_ms_per_req']:.3f} ms",
                          file=sys.stderr, flush=True)
    return {row: {conc: {k: statistics.median(c[k] for c in runs)
                         for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req")}
                  for conc, runs in by_conc.items()} for row, by_conc in results.items()}


def report(args: argparse.Namespace, results: dict[str, dict[int, dict[str, float]]]) -> str:
    lines = ["| lane | c | req/s | p50 ms | p99 ms | CPU ms/req |", "|---|---|---|---|---|---|"]
    for row, by_conc in results.items():
        for conc, cell in by_conc.items():
            lines.append(f"| {row} | {conc} | {cell['rps']:.0f} | {cell['p50_ms']:.3f} | "
                         f"{cell['p99_ms']:.3f} | {cell['cpu_ms_per_req']:.3f} |")
    lines.append("")
    for conc in args.concurrency:
        def get(row: str, key: str, c: int = conc) -> float:
            return results[row][c][key]

        hit_cpu, fw_cpu = get("omniroute, exact hit (JSON)", "cpu_ms_per_req"), get(
            "forwarder round trip", "cpu_ms_per_req")
        added = get("omniroute, exact hit (JSON)", "p50_ms") - get("direct: upstream", "p50_ms")
        off, on = get("omniroute, cache off (t=0.2)", "cpu_ms_per_req"), get(
            "omniroute, cache on (t=0.2: bypass)", "cpu_ms_per_req")
        lines += [
            f"c={conc}: exact hit CPU {hit_cpu:.3f} ms vs forwarder round trip {fw_cpu:.3f} ms "
            f"({'PASS' if hit_cpu < fw_cpu else 'FAIL'}: less)",
            f"c={conc}: exact hit p50 − direct upstream p50 = {added:+.3f} ms "
            f"({'PASS' if added < 0.3 else 'FAIL'}: < 0.3 ms)",
            f"c={conc}: cache on vs off, temperature 0.2 traffic: {on:.3f} vs {off:.3f} ms CPU "
            f"({(on / off - 1) * 100:+.1f} %; {'PASS' if on <= off * 1.03 else 'FAIL'}: ≤ 3 %)",
        ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per cell (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (1)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 16], help="closed-loop workers per cell (1,16)")
    p.add_argument("--rounds", type=int, default=3, help="repeat every cell; report the median")
    args = p.parse_args()
    print(report(args, run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
