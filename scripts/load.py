#!/usr/bin/env python
"""Load test: many concurrent streams through a combo whose targets misbehave.

Starts, on 127.0.0.1 only and each in its own process: three fake OpenAI
upstreams (``fast``; ``flaky``, which answers HTTP 500 to a random 30 % of
requests; ``slow``, whose 20 chunks come 50 ms apart instead of 10 ms), and
the real gateway (``python -m omniroute.cli serve``) with one connection per
upstream and a combo over the three. Then it runs ``--streams`` (500) streams
at once through the combo, ``--runs`` (2) times, and reports per run: streams
completed, client-visible errors, how each stream was served (which upstream,
after how many fallback attempts), latency, and the gateway's resident memory,
asyncio tasks and upstream connections before and after, so a leak shows as
growth from one run to the next.

    .venv/bin/python scripts/load.py                     # 2 runs of 500 streams
    .venv/bin/python scripts/load.py --strategy round-robin --streams 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import pct
from bench_fakes import HOST, SSE_HEADERS, USAGE, settle_malloc, sse
from bench_procs import gateway_env, omniroute, process_tree, rss_mib, serve_gateway, stop_all

CHUNKS = 20
PASSWORD = "load-password-123"


# ------------------------------------------------------------------ fake upstreams

def upstream_app(name: str, fail_rate: float, chunk_delay: float, seed: int) -> web.Application:
    rng = random.Random(seed)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if rng.random() < fail_rate:
            return web.json_response({"error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error", "param": None, "code": None}}, status=500)
        base = {"id": f"chatcmpl-{name}", "object": "chat.completion.chunk",
                "created": 1735689600, "model": body["model"]}
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        for i in range(CHUNKS):
            if i:
                await asyncio.sleep(chunk_delay)
            delta = {"role": "assistant", "content": name} if i == 0 else {"content": f" w{i}"}
            finish = "stop" if i == CHUNKS - 1 else None
            await resp.write(sse({**base, "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(sse({**base, "choices": [], "usage": USAGE}))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "gpt-4o-mini", "object": "model", "created": 1735689600, "owned_by": name}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


def serve_upstream(spec: tuple[str, float, float, int], ports: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settle_malloc()

    async def serve() -> None:
        runner = web.AppRunner(upstream_app(*spec), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0, backlog=2048).start()
        ports.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(serve())


# ------------------------------------------------------------------ the gateway

def start_gateway(data_dir: str, upstreams: dict[str, int], strategy: str
                  ) -> tuple[subprocess.Popen, int]:
    env = gateway_env(PASSWORD)
    cli = [sys.executable, "-m", "omniroute.cli", "--data-dir", data_dir]
    for name, port in upstreams.items():
        omniroute(cli, env, "providers", "add", "--type", "openai", "--name", name,
                  "--prefix", name, "--base-url", f"http://{HOST}:{port}/v1",
                  "--api-key", f"sk-{name}")
    omniroute(cli, env, "combos", "add", "load", "--strategy", strategy,
              *(f"{name}/gpt-4o-mini" for name in ("flaky", "slow", "fast")))
    return serve_gateway(cli, env, Path(data_dir) / "gateway.log", "--log-level", "error")


def runtime(port: int) -> dict[str, Any]:
    """The gateway's own view: asyncio tasks and upstream connections."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/api/monitoring/health", timeout=5) as r:
        return json.load(r).get("runtime", {})


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


# ------------------------------------------------------------------ the load

async def one_stream(http: aiohttp.ClientSession, url: str, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    # a conversation of its own: identical ones would share a sticky session
    body = {"model": "load", "stream": True,
            "messages": [{"role": "user", "content": f"hi, this is stream {n}"}]}
    try:
        async with http.post(url, json=body) as resp:
            raw = await resp.read()
            text = raw.decode()
            ok = (resp.status == 200 and text.rstrip().endswith("data: [DONE]")
                  and '"error"' not in text and text.count("data: {") == CHUNKS)
            return {"ok": ok, "status": resp.status,
                    "provider": resp.headers.get("X-OmniRoute-Provider", "?"),
                    "attempts": int(resp.headers.get("X-OmniRoute-Fallback-Attempts", -1)) + 1,
                    "ms": (time.perf_counter() - started) * 1000,
                    "detail": "" if ok else text[:300]}
    except (TimeoutError, aiohttp.ClientError) as exc:
        return {"ok": False, "status": 0, "provider": "-", "attempts": 0,
                "ms": (time.perf_counter() - started) * 1000, "detail": repr(exc)}


async def run_once(url: str, streams: int, timeout: float) -> list[dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        return await asyncio.gather(*(one_stream(http, url, n) for n in range(streams)))


def snapshot(gateway: subprocess.Popen, port: int) -> dict[str, Any]:
    pids = process_tree(gateway.pid)
    return {"rss_mib": round(rss_mib(pids), 1), "sockets": open_sockets(gateway.pid),
            **runtime(port)}


def report_run(n: int, results: list[dict[str, Any]], before: dict, after: dict,
               seconds: float) -> str:
    ok = sum(r["ok"] for r in results)
    served = Counter(r["provider"] for r in results if r["ok"])
    attempts = Counter(r["attempts"] for r in results if r["ok"])
    ms = [r["ms"] for r in results]
    lines = [
        f"| {n} | {len(results)} | {ok} | {len(results) - ok} | "
        f"{', '.join(f'{k} {v}' for k, v in sorted(served.items()))} | "
        f"{', '.join(f'{k}: {v}' for k, v in sorted(attempts.items()))} | "
        f"{pct(ms, 50):.0f} / {pct(ms, 99):.0f} | {seconds:.1f} | "
        f"{before['rss_mib']} → {after['rss_mib']} | {before.get('tasks', '?')} → "
        f"{after.get('tasks', '?')} | {before['sockets']} → {after['sockets']} |"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--strategy", default="priority")
    parser.add_argument("--fail-rate", type=float, default=0.3)
    parser.add_argument("--slow-delay", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    gateway: subprocess.Popen | None = None
    with tempfile.TemporaryDirectory(prefix="omniroute-load-") as data_dir:
        try:
            ports: dict[str, int] = {}
            specs = {"fast": (0.0, 0.01), "flaky": (args.fail_rate, 0.01),
                     "slow": (0.0, args.slow_delay)}
            for seed, (name, (fail, delay)) in enumerate(specs.items()):
                queue = ctx.Queue()
                procs.append(ctx.Process(target=serve_upstream,
                                         args=((name, fail, delay, seed), queue), daemon=True))
                procs[-1].start()
                ports[name] = queue.get(timeout=30)
            gateway, port = start_gateway(data_dir, ports, args.strategy)
            url = f"http://{HOST}:{port}/v1/chat/completions"
            asyncio.run(run_once(url, 5, args.timeout))  # warm-up: pools, caches
            time.sleep(0.5)
            print(f"{args.runs} runs of {args.streams} concurrent streams through combo "
                  f"'load' ({args.strategy}: flaky {args.fail_rate:.0%} HTTP 500, slow "
                  f"{args.slow_delay * 1000:.0f} ms/chunk, fast)\n")
            print("| run | streams | ok | client errors | served by | attempts | "
                  "latency p50 / p99 ms | wall s | RSS MiB | asyncio tasks | sockets |")
            print("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|")
            failures = 0
            for n in range(1, args.runs + 1):
                before = snapshot(gateway, port)
                began = time.monotonic()
                results = asyncio.run(run_once(url, args.streams, args.timeout))
                seconds = time.monotonic() - began
                time.sleep(1.0)  # let finished handlers and the request log settle
                after = snapshot(gateway, port)
                print(report_run(n, results, before, after, seconds), flush=True)
                bad = [r for r in results if not r["ok"]]
                failures += len(bad)
                for r in bad[:3]:
                    print(f"    error: status {r['status']}: {r['detail']}", file=sys.stderr)
            final = snapshot(gateway, port)
            print(f"\nafter all runs: {json.dumps(final)}")
            return 1 if failures else 0
        except KeyboardInterrupt:
            return 130
        finally:
            stop_all([gateway] if gateway is not None else [], procs, grace=15)


if __name__ == "__main__":
    sys.exit(main())
