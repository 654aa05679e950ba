#!/usr/bin/env python
"""Benchmark omniroute against a direct call and a bare aiohttp forwarder.

One run starts, on 127.0.0.1 only and each in its own process: the fake OpenAI
upstream and the bare forwarder (``bench_fakes.py``), the real gateway
(``python -m omniroute.cli serve``, configured with its CLI) on each event loop
asked for, and the load client (``bench_client.py``), so the client's CPU does
not count. Every cell runs for every target back to back, so they share the
machine's mood; the report compares omniroute with the forwarder on the same
event loop and checks the targets.

    .venv/bin/python scripts/bench.py --quick              # smoke test, ~1 min
    .venv/bin/python scripts/bench.py --rounds 3 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from bench_client import client_main, cpu_ms, stat_fields
from bench_fakes import (
    ANTHROPIC_REQUEST,
    CHUNK_INTERVAL,
    DONE,
    EMBED_REQUEST,
    HOST,
    INSTANT_REQUEST,
    REQUEST,
    STREAM_CHUNKS,
    USAGE,
    serve_app,
    sse,
)
from bench_usage import FULL_TABLE, NO_RECORDS, comparisons, flush_cost, prefill

CLK_TCK = os.sysconf("SC_CLK_TCK")
CHAT, MESSAGES, EMBEDDINGS = "/v1/chat/completions", "/v1/messages", "/v1/embeddings"
#: the cross-format lane's target: an Anthropic client translated to the OpenAI upstream
CROSS = "omniroute-anthropic"


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
    #: which targets it runs on, and at which concurrency (default: every one, every level)
    runs_on: Callable[[Target, int], bool] = field(default=lambda t, c: not t.compare
                                                   and t.name != CROSS)


def label(kind: str, loop: str, workers: int = 1) -> str:
    return kind + ("+uv" if loop == "uvloop" else "") + (f"-w{workers}" if workers > 1 else "")


# ------------------------------------------------------------------ /proc

def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            children.setdefault(int(stat_fields(int(entry))[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    return tree


def busy_ms() -> float:
    """CPU time used by the whole machine so far (user + nice + system)."""
    with open("/proc/stat") as f:
        user, nice, system = (int(x) for x in f.readline().split()[1:4])
    return (user + nice + system) * 1000 / CLK_TCK


def rss_mib(pids: list[int]) -> float:
    kib = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kib += sum(int(line.split()[1]) for line in status.splitlines()
                   if line.startswith("VmRSS:"))
    return kib / 1024


# ------------------------------------------------------------------ processes

def start_app(ctx: Any, factory: str, arg: str | None, loop: str, procs: list[Any]
              ) -> tuple[Any, int]:
    ports = ctx.Queue()
    procs.append(ctx.Process(target=serve_app, args=(factory, arg, loop, ports), daemon=True))
    procs[-1].start()
    return procs[-1], ports.get(timeout=30)


def start_gateway(data_dir: Path, upstream_port: int, workers: int, loop: str | None,
                  source: str | None = None, *, settings: dict[str, str] | None = None,
                  rows: int = 0) -> tuple[subprocess.Popen, int]:
    """The gateway, configured with its CLI; ``source``: run that source tree's omniroute
    (first on PYTHONPATH) instead of the installed one, on its default loop (``loop`` None).

    :param settings: runtime settings pinned through the environment (``request_log``).
    :param rows: records put in its request log before it starts.
    """
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["INITIAL_PASSWORD"] = "bench-password"
    env.update({f"OMNIROUTE_{name.upper()}": value for name, value in (settings or {}).items()})
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    cli = [sys.executable, "-m", "omniroute.cli", "--data-dir", str(data_dir)]
    added = subprocess.run([*cli, "providers", "add", "--type", "openai", "--name", "bench",
                            "--prefix", "bench", "--base-url", f"http://{HOST}:{upstream_port}/v1",
                            "--api-key", "sk-bench"],
                           check=False, env=env, capture_output=True, text=True, cwd=source)
    if added.returncode:
        raise RuntimeError(f"`omniroute providers add` failed:\n{added.stdout}{added.stderr}")
    if rows:
        took = prefill(data_dir / "omniroute.sqlite3", rows)
        print(f"  {rows:,} records put in the request log in {took:.1f} s", file=sys.stderr)
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    log_path = data_dir / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*cli, "serve", "--port", str(port), "--log-level", "warning",
                                 "--workers", str(workers),
                                 *(["--loop", loop] if loop else [])],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=source)  # cwd comes first on sys.path
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the gateway did not start:\n{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/api/monitoring/health",
                                        timeout=1) as resp:
                # with workers: the parent, N workers (and a resource tracker)
                if resp.status == 200 and (workers == 1 or len(process_tree(proc.pid)) > workers):
                    break
        except OSError:
            pass
        time.sleep(0.1)
    if workers > 1:
        time.sleep(1.0)  # let every worker finish starting
    return proc, port


def stop_all(gateways: list[subprocess.Popen], procs: list[Any]) -> None:
    for gateway in gateways:
        if gateway.poll() is None:
            os.killpg(gateway.pid, signal.SIGTERM)  # the gateway and its workers
    for gateway in gateways:
        try:
            gateway.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(gateway.pid, signal.SIGKILL)
            gateway.wait()
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()


# ------------------------------------------------------------------ measuring

def lanes(args: argparse.Namespace) -> list[Lane]:
    high = max(args.concurrency)
    every = {
        "json": Lane("json", "JSON (`POST /v1/chat/completions`)", "loop", CHAT,
                     args.concurrency, REQUEST,
                     runs_on=lambda t, c: t.name != CROSS and (not t.compare or c == high)),
        "instant": Lane("instant", f"Instant streams ({STREAM_CHUNKS} chunks + usage + [DONE] in "
                        "one upstream write; closed loop)", "loop", CHAT,
                        args.instant_concurrency, INSTANT_REQUEST, DONE.decode()),
        "paced": Lane("paced", f"Paced streams ({STREAM_CHUNKS} chunks {CHUNK_INTERVAL * 1000:g} "
                      "ms apart; chunk delay = client receive time − upstream send time)",
                      "stream", CHAT, args.stream_concurrency,
                      runs_on=lambda t, c: not t.compare),
        "embed": Lane("embed", "Embeddings (`POST /v1/embeddings`, 256 dimensions)", "loop",
                      EMBEDDINGS, args.embed_concurrency, EMBED_REQUEST),
    }
    return [every[name] for name in args.lanes]


def median_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one cell: counts add up, every other number is the median."""
    out: dict[str, Any] = {}
    for key in cells[0]:
        values = [c[key] for c in cells if c[key] is not None]
        if key in ("requests", "streams", "errors"):
            out[key] = sum(values)
        else:
            out[key] = statistics.median(values) if values else None
    return out


def measure(args: argparse.Namespace, targets: list[Target], client: Any) -> dict[str, Any]:
    """Each cell for every target back to back, × rounds; also what the machine did meanwhile."""
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
                        kwargs.update(body=lane.request, tail=lane.tail, warmup=args.warmup,
                                      duration=args.duration)
                    else:
                        kwargs.update(count=max(args.streams, 4 * conc))
                    busy0, ours0, began = busy_ms(), cpu_ms(own), time.monotonic()
                    client.send((lane.cell, kwargs))
                    cell = client.recv()
                    wall = time.monotonic() - began
                    if "error" in cell or not cell.get("requests", cell.get("streams")):
                        raise RuntimeError(f"{target.name} {lane.name} c={conc} failed: {cell}")
                    busy = (busy_ms() - busy0) / 1000 / wall
                    cell["machine_cpus"] = busy  # CPUs the whole machine kept busy
                    cell["foreign_cpus"] = max(0.0, busy - (cpu_ms(own) - ours0) / 1000 / wall)
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


def translation_cost(streams: int = 2000) -> dict[str, float]:
    """In-process CPU per chunk: OpenAI frames -> canonical -> Anthropic frames, against
    the pass-through lane's side reading (usage and errors) of the same frames."""
    from omniroute.formats.base import ClientRequest
    from omniroute.plugins import load_plugins

    formats = load_plugins().formats
    openai_fmt, anthropic_fmt = formats["openai"](), formats["anthropic"]()
    request = anthropic_fmt.decode_request(
        ClientRequest(ANTHROPIC_REQUEST, REQUEST["model"], True))
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "system_fingerprint": "fp_bench"}
    frames = [sse({**base, "choices": [{"index": 0, "delta": {"content": f" <{i}>"},
                                        "logprobs": None,
                                        "finish_reason": "stop" if i == STREAM_CHUNKS - 1
                                        else None}]}) for i in range(STREAM_CHUNKS)]
    frames += [sse({**base, "choices": [], "usage": USAGE}), DONE]

    async def upstream() -> Any:
        for frame in frames:
            yield frame

    async def translated() -> None:
        async for _ in anthropic_fmt.encode_stream(openai_fmt.decode_stream(upstream()),
                                                   request):
            pass

    async def passed() -> None:
        async for frame in upstream():
            openai_fmt.usage_from_frame(frame)
            openai_fmt.error_from_frame(frame)

    async def per_chunk(lane: Any) -> float:
        await lane()
        began = time.process_time()
        for _ in range(streams):
            await lane()
        return (time.process_time() - began) / streams / STREAM_CHUNKS * 1e6

    async def both() -> dict[str, float]:
        return {"translated_us_per_chunk": await per_chunk(translated),
                "passthrough_us_per_chunk": await per_chunk(passed)}

    return asyncio.run(both())


# ------------------------------------------------------------------ report

def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def get(results: dict, lane: str, name: str, conc: int | None, key: str) -> float | None:
    value = results.get(lane, {}).get(name, {}).get(conc, {}).get(key)
    return value if isinstance(value, (int, float)) else None


def over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def table(cells: dict[str, dict[int, dict]], columns: list[tuple]) -> list[str]:
    """A column is (title, digits, key, ...): several keys are shown as ``a / b``."""
    out = ["| target | conc. | " + " | ".join(c[0] for c in columns) + " |",
           "|---|---:|" + "---:|" * len(columns)]
    for name, by_conc in cells.items():
        for conc, cell in by_conc.items():
            row = [" / ".join(fmt(cell.get(key), digits) for key in keys)
                   for _, digits, *keys in columns]
            out.append(f"| {name} | {conc} | " + " | ".join(row) + " |")
    return out


LOOP_COLUMNS = [("req/s", 0, "rps"), ("p50 ms", 2, "p50_ms"), ("p99 ms", 2, "p99_ms"),
                ("CPU ms/req", 3, "cpu_ms_per_req"), ("errors", 0, "errors"),
                ("busy CPUs", 2, "machine_cpus")]
STREAM_COLUMNS = [("streams", 0, "streams"), ("TTFB p50 / p99 ms", 2, "ttfb_p50_ms", "ttfb_p99_ms"),
                  ("total p50 / p99 ms", 1, "total_p50_ms", "total_p99_ms"),
                  ("chunk delay p50 / p99 ms", 2, "chunk_p50_ms", "chunk_p99_ms"),
                  ("CPU ms/stream", 2, "cpu_ms_per_stream"), ("errors", 0, "errors")]


@dataclass
class Check:
    label: str
    value: float | None
    passes: Callable[[float], bool]
    form: str

    def line(self) -> str:
        state = "n/a" if self.value is None else "PASS" if self.passes(self.value) else "FAIL"
        shown = "n/a" if self.value is None else self.form.format(self.value)
        return f"- [{'x' if state == 'PASS' else ' '}] {self.label}: {shown} — {state}"


def checks(args: argparse.Namespace, results: dict[str, Any], loop: str) -> list[Check]:
    """The targets of issue 7 (and the earlier ones): omniroute against the forwarder on
    ``loop``."""
    ours, fwd = label("omniroute", loop), label("forwarder", loop)
    high, slow = max(args.concurrency), min(args.stream_concurrency, default=None)
    out = []
    for c in args.concurrency:
        out.append(Check(f"JSON CPU per request at c={c} ≤ 1.25× forwarder", over(
            get(results, "json", ours, c, "cpu_ms_per_req"),
            get(results, "json", fwd, c, "cpu_ms_per_req")), lambda v: v <= 1.25, "{:.2f}×"))
    out.append(Check(f"JSON throughput at c={high} ≥ 75% of forwarder", over(
        get(results, "json", ours, high, "rps"), get(results, "json", fwd, high, "rps")),
        lambda v: v >= 0.75, "{:.0%}"))
    for c in args.instant_concurrency if "instant" in args.lanes else []:
        out.append(Check(f"instant stream CPU per stream at c={c} ≤ 1.5× forwarder", over(
            get(results, "instant", ours, c, "cpu_ms_per_req"),
            get(results, "instant", fwd, c, "cpu_ms_per_req")), lambda v: v <= 1.5, "{:.2f}×"))
    ttfb = [get(results, "paced", n, slow, "ttfb_p50_ms") for n in (ours, fwd)]
    out.append(Check(f"paced stream TTFB p50 at c={slow} within 0.3 ms of forwarder",
                     None if None in ttfb else ttfb[0] - ttfb[1],  # type: ignore[operator]
                     lambda v: v <= 0.3, "{:+.2f} ms"))
    out.append(Check("RSS after the run ≤ 60 MiB", results["rss_mib"].get(ours),
                     lambda v: v <= 60, "{:.1f} MiB"))
    if loop == args.loops[0] and args.compare_workers > 1:
        n = args.compare_workers
        out.append(Check(f"--workers {n} JSON throughput at c={high} ≥ 1.7× one worker's", over(
            get(results, "json", label("omniroute", loop, n), high, "rps"),
            get(results, "json", ours, high, "rps")), lambda v: v >= 1.7, "{:.2f}×"))
    low = min(args.concurrency)
    p50 = [get(results, "json", n, low, "p50_ms") for n in (ours, "direct")]
    out.append(Check(f"p50 latency added to direct at c={low} < 1 ms",
                     None if None in p50 else p50[0] - p50[1],  # type: ignore[operator]
                     lambda v: v < 1, "{:.2f} ms"))
    out.append(Check(f"paced chunk delivered within 1 ms of leaving the upstream (p50, c={slow})",
                     get(results, "paced", ours, slow, "chunk_p50_ms"), lambda v: v < 1,
                     "{:.2f} ms"))
    if loop == args.loops[0]:
        out.append(Check("cross-format added chunk latency ≤ 1.5× same-format (p50)",
                         results.get("cross", {}).get("ratio"), lambda v: v <= 1.5, "{:.2f}×"))
    return out


def cross_format(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """Anthropic client → OpenAI upstream against OpenAI → OpenAI, at the lowest stream conc."""
    slow = min(args.stream_concurrency, default=None)
    same_name = label("omniroute", args.loops[0])
    direct = get(results, "paced", "direct", slow, "chunk_p50_ms")
    same = get(results, "paced", same_name, slow, "chunk_p50_ms")
    cross = get(results, "paced", CROSS, slow, "chunk_p50_ms")
    if None in (direct, same, cross):
        return {}
    assert direct is not None and same is not None and cross is not None
    cpu_same = get(results, "paced", same_name, slow, "cpu_ms_per_stream")
    cpu_cross = get(results, "paced", CROSS, slow, "cpu_ms_per_stream")
    return {"added_ms": cross - direct, "same_added_ms": same - direct,
            "ratio": (cross - direct) / (same - direct) if same > direct else None,
            "extra_cpu_ms_per_stream": cpu_cross - cpu_same
            if cpu_cross is not None and cpu_same is not None else None,
            **translation_cost()}


def summary(args: argparse.Namespace, results: dict[str, Any]) -> list[str]:
    high, slow = max(args.concurrency), min(args.stream_concurrency, default=None)
    out = []
    for loop in args.loops:
        ours, fwd = label("omniroute", loop), label("forwarder", loop)
        parts = []
        for lane, key, levels in (("json", "cpu_ms_per_req", args.concurrency),
                                  ("instant", "cpu_ms_per_req", args.instant_concurrency),
                                  ("embed", "cpu_ms_per_req", args.embed_concurrency),
                                  ("paced", "cpu_ms_per_stream", args.stream_concurrency)):
            if lane in results:
                parts.append(f"{lane} " + ", ".join(
                    f"c={c} {fmt(over(get(results, lane, ours, c, key), get(results, lane, fwd, c, key)), 2, '×')}"  # noqa: E501
                    for c in levels))
        out.append(f"- {loop}: CPU per request, {ours} / {fwd}: " + "; ".join(parts))
        tput = [f"{lane} c={c} {fmt(over(get(results, lane, ours, c, 'rps'), get(results, lane, fwd, c, 'rps')), 2, '×')}"  # noqa: E501
                for lane, c in (("json", high), ("instant", max(args.instant_concurrency)),
                                ("embed", max(args.embed_concurrency))) if lane in results]
        out.append(f"- {loop}: throughput, {ours} / {fwd}: " + ", ".join(tput))
        ttfb = [get(results, "paced", n, slow, "ttfb_p50_ms") for n in ("direct", fwd, ours)]
        out.append(f"- {loop}: paced TTFB p50 at c={slow}: direct {fmt(ttfb[0])} ms, {fwd} "
                   f"{fmt(ttfb[1])} ms, {ours} {fmt(ttfb[2])} ms")
    if len(args.loops) > 1:
        uv, aio = label("omniroute", "uvloop"), label("omniroute", "asyncio")
        parts = [f"{lane} c={c} CPU {fmt(over(get(results, lane, uv, c, 'cpu_ms_per_req'), get(results, lane, aio, c, 'cpu_ms_per_req')), 2, '×')}"  # noqa: E501
                 f" req/s {fmt(over(get(results, lane, uv, c, 'rps'), get(results, lane, aio, c, 'rps')), 2, '×')}"  # noqa: E501
                 for lane, levels in (("json", args.concurrency),
                                      ("instant", args.instant_concurrency))
                 if lane in results for c in levels]
        out.append("- uvloop / asyncio, omniroute: " + "; ".join(parts))
    if args.baseline:
        parts = [f"{lane} c={c} CPU {fmt(over(get(results, lane, 'omniroute', c, key), get(results, lane, 'baseline', c, key)), 2, '×')}"  # noqa: E501
                 for lane, key, levels in (
                     ("json", "cpu_ms_per_req", args.concurrency),
                     ("instant", "cpu_ms_per_req", args.instant_concurrency),
                     ("embed", "cpu_ms_per_req", args.embed_concurrency),
                     ("paced", "cpu_ms_per_stream", args.stream_concurrency))
                 if lane in results for c in levels]
        out.append(f"- omniroute (asyncio) / baseline ({args.baseline}): " + "; ".join(parts))
    flush = results.get("usage_flush")
    if flush:
        out.append(f"- usage records: one flush of {flush['records']:,} records took "
                   f"{flush['empty_s']:.2f} s into an empty table, {flush['full_s']:.2f} s into "
                   f"one holding {flush['rows']:,} rows (put there in {flush['prefill_s']:.1f} s)")
    if args.compare_workers > 1:
        n = args.compare_workers
        name = label("omniroute", args.loops[0], n)
        cell = results.get("json", {}).get(name, {}).get(high, {})
        one = results.get("json", {}).get(label("omniroute", args.loops[0]), {}).get(high, {})
        if cell and one:
            out.append(
                f"- --workers {n} at c={high}: {cell['rps']:.0f} req/s against {one['rps']:.0f} "
                f"({over(cell['rps'], one['rps']):.2f}×); {os.cpu_count()} CPUs, the machine kept "
                f"{cell['machine_cpus']:.2f} busy during that cell, {cell['foreign_cpus']:.2f} of "
                f"them other processes' (the load client and upstream are ours), so "
                f"{max(0.0, (os.cpu_count() or 1) - cell['foreign_cpus']):.2f} CPUs were free "
                "for the benchmark")
    out.append("- resident memory (VmRSS) after the run: "
               + ", ".join(f"{n} {v:.1f} MiB" for n, v in results["rss_mib"].items()))
    cross = results.get("cross", {})
    if cross:
        out += [f"- cross-format paced stream (Anthropic client → OpenAI upstream) at c={slow}: "
                f"chunk delay added to direct p50 {cross['added_ms']:.2f} ms against "
                f"{cross['same_added_ms']:.2f} ms same-format; extra server CPU "
                f"{fmt(cross['extra_cpu_ms_per_stream'])} ms per stream",
                f"- per-chunk stream translation, in-process: "
                f"{cross['translated_us_per_chunk']:.1f} µs per chunk (OpenAI → canonical → "
                f"Anthropic) against {cross['passthrough_us_per_chunk']:.1f} µs on the "
                "pass-through lane (usage and errors read on the side)"]
    return out


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
        + (": **the numbers are unreliable**." if results["foreign_cpu"] > 0.1 else "."), ""]
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
    p.add_argument("--lanes", default="json,instant,paced,embed",
                   help="what to measure (json,instant,paced,embed)")
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
    args.lanes = args.lanes.split(",")
    args.loops = ["uvloop", "asyncio"] if args.loop == "both" else [args.loop]
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    gateways: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="omniroute-bench-") as tmp:
        try:
            upstream, up_port = start_app(ctx, "upstream", None, "asyncio", procs)
            targets = [Target("direct", "direct", f"http://{HOST}:{up_port}", [upstream.pid])]
            plan = [(loop, args.workers, False) for loop in args.loops]
            if args.compare_workers > 1 and "json" in args.lanes:
                plan.append((args.loops[0], args.compare_workers, True))
            for loop, workers, compare in plan:
                if not compare:
                    fw, fw_port = start_app(ctx, "forwarder", f"http://{HOST}:{up_port}", loop,
                                            procs)
                    targets.append(Target(label("forwarder", loop), "forwarder",
                                          f"http://{HOST}:{fw_port}", [fw.pid], loop))
                gateway, port = start_gateway(Path(tmp) / f"{loop}-{workers}", up_port, workers,
                                              loop)
                gateways.append(gateway)
                name = label("omniroute", loop, workers if compare else 1)
                targets.append(Target(name, "omniroute", f"http://{HOST}:{port}",
                                      process_tree(gateway.pid), loop, workers, compare=compare))
                if loop == args.loops[0] and not compare:
                    targets.append(Target(CROSS, "omniroute", f"http://{HOST}:{port}",
                                          targets[-1].pids, loop, path=MESSAGES))
            if args.usage:
                for name, settings, rows in ((NO_RECORDS, {"request_log": "false"}, 0),
                                             (FULL_TABLE, None, 1_000_000)):
                    gateway, port = start_gateway(Path(tmp) / name, up_port, args.workers,
                                                  args.loops[0], settings=settings, rows=rows)
                    gateways.append(gateway)
                    targets.append(Target(name, "omniroute", f"http://{HOST}:{port}",
                                          process_tree(gateway.pid), args.loops[0]))
            if args.baseline:
                gateway, port = start_gateway(Path(tmp) / "baseline", up_port, args.workers,
                                              None, args.baseline)
                gateways.append(gateway)
                targets.append(Target("baseline", "omniroute", f"http://{HOST}:{port}",
                                      process_tree(gateway.pid), "asyncio"))
            client, child_end = ctx.Pipe()
            procs.append(ctx.Process(target=client_main, args=(child_end,), daemon=True))
            procs[-1].start()
            own = process_tree(os.getpid())
            ours, busy, began = cpu_ms(own), busy_ms(), time.monotonic()
            results = measure(args, targets, client)
            others = busy_ms() - busy - (cpu_ms(own) - ours)
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
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all(gateways, procs)


if __name__ == "__main__":
    sys.exit(main())
