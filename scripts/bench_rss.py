#!/usr/bin/env python
"""The gateway's resident memory before and after the benchmark's wrk cells, per variant.

Issue 7's memory target is read by ``bench.py`` once, after its whole run; this
script runs only the cells that touch one gateway (the JSON and instant lanes
driven by wrk against nginx, as ``bench.py --load wrk --upstream nginx`` does,
and the cross-format instant lane on ``/v1/messages``) on a fresh gateway of each
variant, ``--repeat`` times with the variants interleaved, and reads
``/proc/PID/smaps`` at the start, after each lane and a few seconds after the end:
the RSS, and where it is (glibc's main heap; anonymous mappings of exactly 1 MiB:
pymalloc's arenas that the kernel did not merge with a neighbour; other anonymous
memory: merged arenas, glibc's thread arenas, stacks; files). ``--dump`` adds the
allocators' own counts (pymalloc's, glibc's, SQLite's), ``--trace`` what lives on.

    .venv/bin/python scripts/bench_rss.py --repeat 3
    .venv/bin/python scripts/bench_rss.py --variant norec::request_log=false \\
        --variant base=/tmp/base --repeat 3 --duration 3

A variant is ``NAME[=SRC][::SETTING=VALUE,...]``: ``SRC`` a source tree run instead
of the installed omniroute (as ``bench.py --baseline``), the settings pinned through
the environment. ``this`` (the installed tree) is always measured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import TOOLS
from bench_fakes import (
    ANTHROPIC_INSTANT_REQUEST,
    ANTHROPIC_TAIL,
    CHAT,
    DONE,
    HOST,
    INSTANT_REQUEST,
    REQUEST,
)
from bench_nginx import SSE_ACCEPT, start_nginx
from bench_procs import (
    exit_with,
    free_port,
    gateway_env,
    omniroute,
    process_tree,
    running,
    serve_gateway,
)
from bench_wrk import wrk_cell

MESSAGES = "/v1/messages"
#: ``omniroute`` with two signals more: SIGUSR1 starts tracemalloc (what is allocated from
#: then on), SIGUSR2 writes to stderr (the gateway's log) pymalloc's and glibc's statistics,
#: the memory SQLite holds and, when tracing, what holds the most of what was allocated since
WRAPPER = """
import ctypes, signal, sys, tracemalloc
def start(*_):
    tracemalloc.start(4)
def dump(*_):
    sys.stderr.write("=== DUMP ===\\n"); sys.stderr.flush()
    sys._debugmallocstats()
    ctypes.CDLL("libc.so.6").malloc_stats()
    sqlite = ctypes.CDLL("libsqlite3.so.0")
    sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    sys.stderr.write(f"sqlite memory used {sqlite.sqlite3_memory_used()}\\n")
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        sys.stderr.write(f"traced {tracemalloc.get_traced_memory()}\\n")
        for stat in snap.statistics("filename")[:25]:
            sys.stderr.write(f"{stat.size / 1024:8.1f} KiB {stat.count:7d} {stat.traceback}\\n")
        for stat in snap.statistics("traceback")[:40]:
            sys.stderr.write(f"{stat.size / 1024:8.1f} KiB {stat.count:7d} "
                             + " <- ".join(f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}"
                                           for f in stat.traceback) + "\\n")
    sys.stderr.write("=== END ===\\n"); sys.stderr.flush()
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, dump)
from omniroute.cli import main
main()
"""


def smaps(pid: int) -> dict[str, float]:
    """MiB resident in ``pid``: in all and by kind of mapping."""
    out = {"rss": 0.0, "heap": 0.0, "arenas_1m": 0.0, "anon_other": 0.0, "files": 0.0,
           "n_1m": 0.0}
    size = 0
    kind = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if "-" in head[0] and not head[0].endswith(":"):
                start, end = (int(x, 16) for x in head[0].split("-"))
                size = end - start
                path = head[5] if len(head) > 5 else ""
                kind = ("heap" if path == "[heap]" else "files" if path.startswith("/")
                        else "arenas_1m" if size == 1 << 20 else "anon_other")
            elif head[0] == "Rss:":
                mib = int(head[1]) / 1024
                out["rss"] += mib
                out[kind] += mib
                if kind == "arenas_1m" and mib:
                    out["n_1m"] += 1
    return out


def cells(args: argparse.Namespace) -> list[tuple[str, str, dict[str, Any], str | None,
                                                  dict[str, str], int]]:
    """(lane, path, body, tail, headers, concurrency) as bench.py runs them on a gateway."""
    sse = {"Accept": SSE_ACCEPT}
    out = [("json", CHAT, REQUEST, None, {}, c) for c in (1, 16, 64)]
    out += [("instant", CHAT, INSTANT_REQUEST, DONE.decode(), sse, c) for c in (1, 64)]
    if not args.no_cross:
        out += [("cross", MESSAGES, ANTHROPIC_INSTANT_REQUEST, ANTHROPIC_TAIL, sse, c)
                for c in (1, 64)]
    return out


def one(args: argparse.Namespace, tmp: Path, up_port: int, upstream: list[int], name: str,
        src: str | None, settings: dict[str, str], run: Any, n: int) -> dict[str, Any]:
    data = tmp / f"{name}-{n}"
    data.mkdir()
    env = gateway_env("bench-password", settings)
    if src is not None:
        env["PYTHONPATH"] = src
    cli = [sys.executable, "-c", WRAPPER, "--data-dir", str(data)]
    omniroute(cli, env, "providers", "add", "--type", "openai", "--name", "bench",
              "--prefix", "bench", "--base-url", f"http://{HOST}:{up_port}/v1",
              "--api-key", "sk-bench", cwd=src)
    gateway, port = serve_gateway(cli, env, data / "gateway.log", "--log-level", "warning",
                                  "--loop", "uvloop", cwd=src, wait=180)
    run.gateways.append(gateway)
    pid = gateway.pid
    time.sleep(1.0)
    readings = {"start": smaps(pid)}
    if args.dump:
        dump(pid, data / "gateway.log", Path(args.dump) / f"{name}-{n}-start.txt")
    if args.trace:
        os.kill(pid, signal.SIGUSR1)
    for _ in range(args.rounds):
        for lane, path, body, tail, headers, conc in cells(args):
            wrk_cell(tmp, f"http://{HOST}:{port}{path}", body, conc, args.warmup,
                     args.duration, [pid], upstream, tail, headers)
            readings[lane] = smaps(pid)
    time.sleep(args.settle)
    readings["end"] = smaps(pid)
    if args.dump:
        dump(pid, data / "gateway.log", Path(args.dump) / f"{name}-{n}.txt")
    gateway.terminate()
    gateway.wait(30)
    return readings


def dump(pid: int, log: Path, to: Path) -> None:
    """The gateway's allocator statistics (the wrapper's SIGUSR2), from its log to ``to``."""
    done = len(log.read_text())
    os.kill(pid, signal.SIGUSR2)
    for _ in range(100):
        time.sleep(0.1)
        text = log.read_text()[done:]
        if "=== END ===" in text:
            to.write_text(text[text.index("=== DUMP ==="):text.index("=== END ===")])
            return


def parse_variant(text: str) -> tuple[str, str | None, dict[str, str]]:
    head, _, sets = text.partition("::")
    name, _, src = head.partition("=")
    settings = dict(s.split("=", 1) for s in sets.split(",") if s)
    return name, src or None, settings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", default=[], help="NAME[=SRC][::K=V,...]")
    p.add_argument("--repeat", type=int, default=3, help="fresh gateways per variant (3)")
    p.add_argument("--rounds", type=int, default=2, help="the cells' rounds per gateway (2)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=2.0, help="seconds before the last reading")
    p.add_argument("--no-cross", action="store_true", help="without the /v1/messages lane")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--dump", metavar="DIR", help="write each gateway's allocator statistics "
                   "at the end here")
    p.add_argument("--trace", action="store_true", help="tracemalloc from the first cell on "
                   "(with --dump: the lines holding the most; RSS readings then include it)")
    args = p.parse_args()
    variants = [("this", None, {})] + [parse_variant(v) for v in args.variant]
    subprocess.run(["bash", str(TOOLS)], check=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    with running("omniroute-rss-") as run:
        up_port = free_port()
        nginx = start_nginx(run.tmp / "nginx", up_port)
        run.gateways.append(nginx)
        upstream = process_tree(nginx.pid)
        for n in range(args.repeat):
            for name, src, settings in variants:
                r = one(args, run.tmp, up_port, upstream, name, src, settings, run, n)
                results[name].append(r)
                print(f"  {name:<12} #{n}: start {r['start']['rss']:.1f} end "
                      f"{r['end']['rss']:.1f} MiB (heap {r['end']['heap']:.1f}, "
                      f"1 MiB arenas {r['end']['arenas_1m']:.1f} in {r['end']['n_1m']:.0f}, "
                      f"other anon {r['end']['anon_other']:.1f}, files "
                      f"{r['end']['files']:.1f})", file=sys.stderr, flush=True)
    keys = ("rss", "heap", "arenas_1m", "anon_other", "files")
    print(f"| variant | reading | {' | '.join(keys)} |")
    print(f"|---|---|{'---|' * len(keys)}")
    for name, runs in results.items():
        for reading in runs[0]:
            values = [" ".join(f"{r[reading][k]:.1f}" for r in runs) for k in keys]
            med = statistics.median(r[reading]["rss"] for r in runs)
            print(f"| {name} | {reading} (median RSS {med:.1f}) | {' | '.join(values)} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    exit_with(main)
