#!/usr/bin/env python
"""Benchmark omniroute against a direct call and a bare aiohttp forwarder.

One run starts, on 127.0.0.1 only and each in its own process: the fake OpenAI
upstream and the bare forwarder (``bench_fakes.py``), the real gateway
(``python -m omniroute.cli serve``, configured with its CLI) on each event loop
asked for, and the load client (``bench_client.py``), so the client's CPU does
not count. Every cell runs for every target back to back, so they share the
machine's mood; the report compares omniroute with the forwarder on the same
event loop and checks the targets.

This file is the list of targets and lanes, the measuring loop and the report's
layout; the parts it imports: ``bench_procs.py`` (the processes), ``bench_report.py``
(the tables, summary and targets), ``bench_cross.py`` (the cross-format lane) and
``bench_usage.py`` (``--usage``), ``bench_wrk.py`` (``--load wrk``: wrk drives the
closed-loop cells) and ``bench_nginx.py`` (``--upstream nginx``: nginx serves the JSON,
instant-stream and embeddings answers).

    .venv/bin/python scripts/bench.py --quick              # smoke test, ~1 min
    .venv/bin/python scripts/bench.py --rounds 3 --json out.json
    .venv/bin/python scripts/bench.py --load wrk --upstream nginx --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_client import median_cell, start_client
from bench_cross import CROSS, cross_format
from bench_fakes import (
    ANTHROPIC_INSTANT_REQUEST,
    ANTHROPIC_TAIL,
    CHAT,
    CHUNK_INTERVAL,
    DONE,
    EMBED_REQUEST,
    HOST,
    INSTANT_REQUEST,
    REQUEST,
    STREAM_CHUNKS,
)
from bench_nginx import SSE_ACCEPT, start_nginx
from bench_procs import (
    busy_ms,
    cpu_ms,
    exit_with,
    free_port,
    process_tree,
    rss_mib,
    running,
    start_app,
    start_gateway,
)
from bench_report import (
    LOOP_COLUMNS,
    STREAM_COLUMNS,
    Check,
    checks,
    label,
    summary,
    table,
)
from bench_usage import FULL_SETTINGS, FULL_TABLE, NO_RECORDS, PREFILL_ROWS, comparisons, flush_cost
from bench_wrk import reaped_cpu_ms, wrk_cell

MESSAGES, EMBEDDINGS = "/v1/messages", "/v1/embeddings"
TOOLS = Path(__file__).with_name("bench-tools.sh")


@dataclass
class Target:
    """One server under test."""

    name: str
    kind: str  # direct, forwarder, omniroute
    base: str  # http://host:port
    pids: list[int]
    loop: str = "asyncio"
    workers: int = 1
    path: str = CHAT  # overrides the lane's path (the cross-format target)
    compare: bool = False  # the --compare-workers gateway: JSON at the top concurrency only


@dataclass
class Lane:
    """A kind of request, measured at several concurrencies on a set of targets."""

    name: str
    title: str
    cell: str  # bench_client.CELLS key
    path: str
    levels: list[int]
    request: dict[str, Any] | None = None
    tail: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: the body and tail for the cross-format target, where the lane runs on it
    cross: tuple[dict[str, Any], str] | None = None
    #: which targets it runs on, and at which concurrency (default: every one, every level)
    runs_on: Callable[[Target, int], bool] = field(default=lambda t, c: not t.compare
                                                   and t.name != CROSS)


# ------------------------------------------------------------------ measuring

def lanes(args: argparse.Namespace) -> list[Lane]:
    high = max(args.concurrency)
    # nginx answers one path with the stream or the JSON by Accept (bench_nginx.py)
    stream_headers = {"Accept": SSE_ACCEPT} if args.upstream == "nginx" else {}
    # with wrk, the cross-format lane is an instant one: paced streams stay on Python
    cross_instant = args.load == "wrk"
    every = {
        "json": Lane("json", "JSON (`POST /v1/chat/completions`)", "loop", CHAT,
                     args.concurrency, REQUEST,
                     runs_on=lambda t, c: t.name != CROSS and (not t.compare or c == high)),
        "instant": Lane("instant", f"Instant streams ({STREAM_CHUNKS} chunks + usage + [DONE] in "
                        "one upstream write; closed loop)", "loop", CHAT,
                        args.instant_concurrency, INSTANT_REQUEST, DONE.decode(),
                        stream_headers,
                        (ANTHROPIC_INSTANT_REQUEST, ANTHROPIC_TAIL) if cross_instant else None,
                        runs_on=lambda t, c: not t.compare and (cross_instant
                                                                or t.name != CROSS)),
        "paced": Lane("paced", f"Paced streams ({STREAM_CHUNKS} chunks {CHUNK_INTERVAL * 1000:g} "
                      "ms apart; chunk delay = client receive time − upstream send time)",
                      "stream", CHAT, args.stream_concurrency,
                      runs_on=lambda t, c: not t.compare),
        "embed": Lane("embed", "Embeddings (`POST /v1/embeddings`, 256 dimensions)", "loop",
                      EMBEDDINGS, args.embed_concurrency, EMBED_REQUEST),
    }
    return [every[name] for name in args.lanes]


def measure(args: argparse.Namespace, targets: list[Target], client: Any, client_pid: int,
            tmp: Path, upstream: list[int]) -> dict[str, Any]:
    """Each cell for every target back to back, × rounds; also what the machine did meanwhile.

    :param client: the Python load client's connection (None: every cell is wrk's), and
        its process.
    :param upstream: the upstream's processes (their CPU during each cell).
    """
    raw: dict[str, Any] = {}
    own = process_tree(os.getpid())
    for rnd in range(1, args.rounds + 1):
        for lane in lanes(args):
            for conc in lane.levels:
                for target in targets:
                    if not lane.runs_on(target, conc):
                        continue
                    kwargs: dict[str, Any] = {"url": target.base + (
                        target.path if target.path != CHAT else lane.path),
                        "conc": conc, "pids": target.pids}
                    if lane.cell == "loop":
                        body, tail = (lane.cross if lane.cross and target.name == CROSS
                                      else (lane.request, lane.tail))
                        kwargs.update(body=body, tail=tail, warmup=args.warmup,
                                      duration=args.duration, headers=lane.headers)
                    else:
                        kwargs.update(count=max(args.streams, 4 * conc))
                    wrk = args.load == "wrk" and lane.cell == "loop"
                    busy0, ours0, began = busy_ms(), cpu_ms(own), time.monotonic()
                    reaped0 = reaped_cpu_ms()  # wrk's runs (warm-up too), once they end
                    if wrk:
                        try:
                            cell = wrk_cell(tmp, upstream=upstream, **kwargs)
                        except RuntimeError as exc:
                            cell = {"error": str(exc)}
                    else:
                        load0, up0 = cpu_ms([client_pid]), cpu_ms(upstream)
                        client.send((lane.cell, kwargs))
                        cell = client.recv()
                        spent = time.monotonic() - began
                        # over the whole cell, warm-up included (wrk's: the measured run)
                        cell["load_cpus"] = (cpu_ms([client_pid]) - load0) / 1000 / spent
                        cell["upstream_cpus"] = ((cpu_ms(upstream) - up0) / 1000 / spent
                                                 if target.kind != "direct" else None)
                    wall = time.monotonic() - began
                    if "error" in cell or not cell.get("requests", cell.get("streams")):
                        raise RuntimeError(f"{target.name} {lane.name} c={conc} failed: {cell}")
                    busy = (busy_ms() - busy0) / 1000 / wall
                    # wrk has exited: its CPU is not in our tree's any more, but it was ours
                    load = (reaped_cpu_ms() - reaped0) / 1000 / wall
                    cell["machine_cpus"] = busy  # CPUs the whole machine kept busy
                    cell["foreign_cpus"] = max(0.0, busy - load
                                               - (cpu_ms(own) - ours0) / 1000 / wall)
                    raw.setdefault(lane.name, {}).setdefault(target.name, {}).setdefault(
                        conc, []).append(cell)
                    shown = (f"{cell['rps']:6.0f}/s, p50 {cell['p50_ms']:.2f} ms, "
                             f"CPU {cell['cpu_ms_per_req']:.3f} ms" if lane.cell == "loop"
                             else f"TTFB p50 {cell['ttfb_p50_ms']:.2f} ms, "
                             f"chunk p50 {cell['chunk_p50_ms']:.2f} ms")
                    print(f"  round {rnd} {lane.name:<7} c={conc:<3} {target.name:<20} {shown}",
                          file=sys.stderr, flush=True)
    return {**{lane: {name: {conc: median_cell(cells) for conc, cells in by_conc.items()}
                      for name, by_conc in by_name.items()} for lane, by_name in raw.items()},
            "raw": raw}


# ------------------------------------------------------------------ report

def tools_line(args: argparse.Namespace) -> str:
    """Who made the load and who answered it, and what they were allowed."""
    load = ("wrk (1 thread, a Lua script posting the same bodies; paced streams: the Python "
            "client)" if args.load == "wrk" else "the Python client (bench_client.py)")
    upstream = ("nginx (1 worker, fixed answers; paced streams: the Python fake)"
                if args.upstream == "nginx" else "the Python fake (bench_fakes.py)")
    return (f"Load: {load}; upstream: {upstream}. No process is pinned to a CPU: with two "
            "CPUs a pinned load generator or upstream would take a whole CPU from the gateway "
            "and from `--workers 2`; `load CPUs` and `upstream CPUs` say what they took.")


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    load = os.getloadavg()
    out = [
        "## omniroute benchmark", "",
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp "
        f"{aiohttp.__version__}; loops: {', '.join(args.loops)}; load average after the run "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; closed-loop cells {args.duration:g} s "
        f"after {args.warmup:g} s warm-up; median of {args.rounds} round(s). Load client, "
        "upstream and server share the machine; CPU is that of the server under test only "
        "(for direct: the fake upstream); `busy CPUs` is the whole machine during the cell. "
        f"Other processes used {results['foreign_cpu']:.2f} CPUs on average meanwhile"
        + (": **the numbers are unreliable**." if results["foreign_cpu"] > 0.1 else "."), "",
        tools_line(args), ""]
    for lane in lanes(args):
        if lane.name in results:
            out += [f"### {lane.title}", "",
                    *table(results[lane.name],
                           STREAM_COLUMNS if lane.cell == "stream" else LOOP_COLUMNS), ""]
    out += ["### Summary", "", *summary(args, results), ""]
    for loop in args.loops:
        out += [f"### Targets ({loop}: {label('omniroute', loop)} against "
                f"{label('forwarder', loop)})", "",
                *(c.line() for c in checks(args, results, loop)), ""]
    if args.usage:
        recording = label("omniroute", args.loops[0])
        levels = {"json": args.concurrency, "instant": args.instant_concurrency,
                  "embed": args.embed_concurrency}
        out += [f"### Targets (usage records: {recording} against {NO_RECORDS} and "
                f"{FULL_TABLE})", "",
                *(Check(text, value, lambda v, limit=limit: v <= limit,
                        "{:.2f}" + unit).line()
                  for text, value, limit, unit in comparisons(
                      results, recording, {k: v for k, v in levels.items() if k in args.lanes})),
                ""]
    return "\n".join(out)


# ------------------------------------------------------------------ main

def parse_args() -> argparse.Namespace:
    def levels(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per closed-loop cell (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per cell (1)")
    p.add_argument("--concurrency", type=levels, default=[1, 16, 64], help="JSON (1,16,64)")
    p.add_argument("--instant-concurrency", type=levels, default=[1, 64],
                   help="instant streams (1,64)")
    p.add_argument("--stream-concurrency", type=levels, default=[1, 16],
                   help="paced streams (1,16)")
    p.add_argument("--embed-concurrency", type=levels, default=[16], help="embeddings (16)")
    p.add_argument("--streams", type=int, default=25, help="paced streams per cell, ≥ 4×conc.")
    p.add_argument("--rounds", type=int, default=1, help="repeat every cell; report the median")
    p.add_argument("--workers", type=int, default=1, help="omniroute worker processes (1)")
    p.add_argument("--compare-workers", type=int, default=2, metavar="N",
                   help="also run a gateway with N workers, JSON at the top concurrency, on the "
                        "first loop (2; 0 = off)")
    p.add_argument("--loop", default="both", choices=["asyncio", "uvloop", "both"],
                   help="event loop of the forwarder and the gateway; both: side by side, "
                        "uvloop first (both)")
    p.add_argument("--lanes", help="what to measure (json,instant,paced,embed; with "
                   "--upstream nginx: json,instant,embed)")
    p.add_argument("--load", default="python", choices=["python", "wrk"],
                   help="load generator of the closed-loop lanes: the Python client, or wrk "
                        "with one thread (python)")
    p.add_argument("--upstream", default="python", choices=["python", "nginx"],
                   help="mock upstream: the Python fake, or nginx with one worker serving the "
                        "same answers (no paced lane) (python)")
    p.add_argument("--baseline", metavar="SRC",
                   help="also run the gateway of another source tree (e.g. `git archive main` "
                        "unpacked), on its default loop, as target `baseline`")
    p.add_argument("--usage", action="store_true",
                   help="also measure usage records: gateways with records off "
                        f"({NO_RECORDS}) and with 1,000,000 rows in the log ({FULL_TABLE}) on "
                        "the first loop, and one flush of 10,000 records")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    if args.quick:
        args.duration, args.warmup, args.streams, args.rounds = 1.0, 0.3, 4, 1
    if args.lanes is None:
        args.lanes = "json,instant,embed" if args.upstream == "nginx" else \
            "json,instant,paced,embed"
    args.lanes = args.lanes.split(",")
    if args.upstream == "nginx" and "paced" in args.lanes:
        p.error("nginx cannot pace a stream: run the paced lane with --upstream python")
    args.loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    return args


def main() -> int:
    args = parse_args()
    if args.load == "wrk" or args.upstream == "nginx":
        subprocess.run(["bash", str(TOOLS)], check=True)  # installs wrk, nginx when missing
    with running("omniroute-bench-") as run:
        if args.upstream == "nginx":
            up_port = free_port()
            nginx = start_nginx(run.tmp / "nginx", up_port)
            run.gateways.append(nginx)  # stopped with its process group, as a gateway is
            upstream_pids = process_tree(nginx.pid)
        else:
            upstream, up_port = start_app(run.ctx, "upstream", None, "asyncio", run.procs)
            upstream_pids = [upstream.pid]
        targets = [Target("direct", "direct", f"http://{HOST}:{up_port}", upstream_pids)]
        plan = [(loop, args.workers, False) for loop in args.loops]
        if args.compare_workers > 1 and "json" in args.lanes:
            plan.append((args.loops[0], args.compare_workers, True))
        for loop, workers, compare in plan:
            if not compare:
                fw, fw_port = start_app(run.ctx, "forwarder", f"http://{HOST}:{up_port}",
                                        loop, run.procs)
                targets.append(Target(label("forwarder", loop), "forwarder",
                                      f"http://{HOST}:{fw_port}", [fw.pid], loop))
            gateway, port = start_gateway(run.tmp / f"{loop}-{workers}", up_port, workers,
                                          loop)
            run.gateways.append(gateway)
            name = label("omniroute", loop, workers if compare else 1)
            targets.append(Target(name, "omniroute", f"http://{HOST}:{port}",
                                  process_tree(gateway.pid), loop, workers, compare=compare))
            if loop == args.loops[0] and not compare:
                targets.append(Target(CROSS, "omniroute", f"http://{HOST}:{port}",
                                      targets[-1].pids, loop, path=MESSAGES))
        if args.usage:
            for name, settings, rows in ((NO_RECORDS, {"request_log": "false"}, 0),
                                         (FULL_TABLE, FULL_SETTINGS, PREFILL_ROWS)):
                gateway, port = start_gateway(run.tmp / name, up_port, args.workers,
                                              args.loops[0], settings=settings, rows=rows)
                run.gateways.append(gateway)
                targets.append(Target(name, "omniroute", f"http://{HOST}:{port}",
                                      process_tree(gateway.pid), args.loops[0]))
        if args.baseline:
            # on the first loop, as the gateway it is compared with
            gateway, port = start_gateway(run.tmp / "baseline", up_port, args.workers,
                                          args.loops[0], args.baseline)
            run.gateways.append(gateway)
            targets.append(Target("baseline", "omniroute", f"http://{HOST}:{port}",
                                  process_tree(gateway.pid), args.loops[0]))
        python_cells = args.load == "python" or "paced" in args.lanes
        client = start_client(run.ctx, run.procs) if python_cells else None
        client_pid = run.procs[-1].pid if client else 0
        own = process_tree(os.getpid())
        ours, busy, began = cpu_ms(own), busy_ms(), time.monotonic()
        reaped = reaped_cpu_ms()  # wrk's runs, once they end
        results = measure(args, targets, client, client_pid, run.tmp, upstream_pids)
        others = busy_ms() - busy - (cpu_ms(own) - ours) - (reaped_cpu_ms() - reaped)
        results["foreign_cpu"] = max(0.0, others / 1000 / (time.monotonic() - began))
        results["rss_mib"] = {t.name: rss_mib(t.pids) for t in targets
                              if t.kind != "direct" and t.name != CROSS}
        if "paced" in args.lanes:
            results["cross"] = cross_format(args, results)
        if args.usage:
            results["usage_flush"] = flush_cost()
        print(report(args, results))
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), **results}, indent=2))
        return 0


if __name__ == "__main__":
    exit_with(main)
