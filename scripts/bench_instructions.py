#!/usr/bin/env python
"""Instructions per request, gateway against the bare forwarder, under callgrind.

Wall-clock CPU on a shared machine is noisy; instruction counts are not. This
starts, on 127.0.0.1: the fake OpenAI upstream of ``bench_fakes.py`` (plain),
then each server under test in turn under ``valgrind --tool=callgrind`` with
instrumentation off: the bare forwarder and the real gateway
(``python -m omniroute.cli serve --loop asyncio``, configured with ``providers
add`` as ``bench.py`` does). For every lane it sends ``--warmup`` requests,
switches instrumentation on (``callgrind_control -i on``), sends ``--requests``
more at ``--concurrency``, dumps the counters and switches it off again, so the
count holds the steady state only: no start-up, no warm-up, no shut-down.

    .venv/bin/python scripts/bench_instructions.py                       # json + instant
    .venv/bin/python scripts/bench_instructions.py --lanes json --concurrency 16
    .venv/bin/python scripts/bench_instructions.py --targets omniroute --keep /tmp/cg
    callgrind_annotate --inclusive=yes /tmp/cg/omniroute-json-c1.out | head -60

Reported: instructions per request (Ir) of each server and the ratio. The
server's threads (aiosqlite's writer) count too. ``--keep DIR`` keeps the
callgrind files for ``callgrind_annotate``. The hash seed is fixed so runs repeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from bench_fakes import DONE, HOST, INSTANT_REQUEST, REQUEST, forwarder_app, serve_app

SCRIPTS = Path(__file__).resolve().parent
LANES = {"json": (REQUEST, None), "instant": (INSTANT_REQUEST, DONE)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def callgrind(out: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            "--dump-instr=no", "--compress-strings=no"]


def wait_ready(proc: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not start:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.5)


def start_forwarder(tmp: Path, upstream: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = tmp / "forwarder.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [*callgrind(tmp / "forwarder.%p.out"), sys.executable, str(Path(__file__)),
             "--serve-forwarder", upstream, "--port", str(port)],
            env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(proc, f"http://{HOST}:{port}/", log)
    return proc, f"http://{HOST}:{port}"


def start_gateway(tmp: Path, upstream: str, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    data = tmp / "gateway-data"
    env = {k: v for k, v in env.items() if not k.startswith("OMNIROUTE_")}
    env["INITIAL_PASSWORD"] = "bench-password"
    cli = [sys.executable, "-m", "omniroute.cli", "--data-dir", str(data)]
    subprocess.run([*cli, "providers", "add", "--type", "openai", "--name", "bench", "--prefix",
                    "bench", "--base-url", f"{upstream}/v1", "--api-key", "sk-bench"],
                   check=True, env=env, capture_output=True)
    port = free_port()
    log = tmp / "gateway.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [*callgrind(tmp / "omniroute.%p.out"), *cli, "serve", "--port", str(port),
             "--log-level", "warning", "--loop", "asyncio"],
            env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    wait_ready(proc, f"http://{HOST}:{port}/api/monitoring/health", log)
    return proc, f"http://{HOST}:{port}"


async def send(url: str, body: dict[str, Any], tail: bytes | None, count: int, conc: int) -> None:
    """``count`` requests, ``conc`` at a time over keep-alive connections; all must succeed."""
    data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
    left = iter(range(count))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc),
                                     timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def worker() -> None:
            for _ in left:
                async with http.post(url, data=data, headers=headers) as resp:
                    answer = await resp.read()
                    if resp.status != 200 or (tail and not answer.endswith(tail)):
                        raise RuntimeError(f"{url}: {resp.status} {answer[:300]!r}")

        await asyncio.gather(*(worker() for _ in range(conc)))


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True,
                   timeout=120)


def measure(proc: subprocess.Popen, base: str, name: str, tmp: Path, args: argparse.Namespace,
            keep: Path | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for lane in args.lanes:
        body, tail = LANES[lane]
        for conc in args.concurrency:
            asyncio.run(send(base + "/v1/chat/completions", body, tail, args.warmup, conc))
            for old in tmp.glob(f"{name}.{proc.pid}.out*"):
                old.unlink()
            control(proc.pid, "-i", "on")
            control(proc.pid, "-z")
            asyncio.run(send(base + "/v1/chat/completions", body, tail, args.requests, conc))
            control(proc.pid, "-d")
            control(proc.pid, "-i", "off")
            dumps = sorted(tmp.glob(f"{name}.{proc.pid}.out.*"), key=lambda p: p.stat().st_mtime)
            text = dumps[-1].read_text()
            total = int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))
            out[f"{lane} c={conc}"] = total / args.requests
            if keep:
                shutil.copy(dumps[-1], keep / f"{name}-{lane}-c{conc}.out")
            print(f"  {name:<10} {lane:<8} c={conc:<3} {total / args.requests:12,.0f} Ir/request",
                  file=sys.stderr, flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="measured requests per cell (300)")
    p.add_argument("--warmup", type=int, default=100, help="requests before measuring (100)")
    p.add_argument("--concurrency", default="1,16", help="levels (1,16)")
    p.add_argument("--lanes", default="json,instant", help="json,instant")
    p.add_argument("--targets", default="forwarder,omniroute", help="forwarder,omniroute")
    p.add_argument("--keep", metavar="DIR", help="copy the callgrind files here")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--serve-forwarder", metavar="UPSTREAM", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_forwarder:  # the child under callgrind
        from aiohttp import web

        web.run_app(forwarder_app(args.serve_forwarder), host=HOST, port=args.port,
                    access_log=None, print=None)
        return 0
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.lanes = args.lanes.split(",")
    keep = Path(args.keep) if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONHASHSEED": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPTS.parent), str(SCRIPTS),
                                                       os.environ.get("PYTHONPATH")]))}
    ctx = multiprocessing.get_context("spawn")
    ports = ctx.Queue()
    upstream_proc = ctx.Process(target=serve_app, args=("upstream", None, "asyncio", ports),
                                daemon=True)
    upstream_proc.start()
    upstream = f"http://{HOST}:{ports.get(timeout=30)}"
    results: dict[str, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="omniroute-ir-") as tmpname:
            tmp = Path(tmpname)
            for name in args.targets.split(","):
                starter = start_forwarder if name == "forwarder" else start_gateway
                proc, base = starter(tmp, upstream, env)
                try:
                    results[name] = measure(proc, base, name, tmp, args, keep)
                finally:
                    proc.terminate()
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
    finally:
        upstream_proc.terminate()
        upstream_proc.join(5)
    print("| cell | " + " | ".join(f"{n} Ir/req" for n in results) + " | ratio |")
    print("|---|" + "---:|" * (len(results) + 1))
    for cell in next(iter(results.values())):
        values = [results[n][cell] for n in results]
        ratio = (f"{results['omniroute'][cell] / results['forwarder'][cell]:.2f}×"
                 if {"omniroute", "forwarder"} <= results.keys() else "")
        print(f"| {cell} | " + " | ".join(f"{v:,.0f}" for v in values) + f" | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
