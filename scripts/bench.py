#!/usr/bin/env python
"""Benchmark omniroute against a direct call and a bare aiohttp forwarder.

One run starts, on 127.0.0.1 only and each in its own process: a fake OpenAI
upstream (streams of 20 chunks 10 ms apart, each chunk carrying its wall-clock
send time ``ts`` in ns); a bare forwarder (one shared ClientSession, bodies and
streams passed through: the speed limit of an aiohttp gateway); the real gateway
(``python -m omniroute.cli serve``, configured with its CLI); and a load client
(aiohttp, keep-alive pool), so the client's CPU does not count. Server CPU comes
from /proc/<pid>/stat (utime + stime) over the measured window, for the process
under test only (its whole process tree with --workers).

    .venv/bin/python scripts/bench.py --quick              # smoke test, ~25 s
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
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

HOST = "127.0.0.1"
#: targets measured on streams only: an Anthropic client through the gateway,
#: translated to the OpenAI upstream (the cross-format lane)
STREAM_ONLY = ("omniroute-anthropic",)
STREAM_CHUNKS, CHUNK_INTERVAL = 20, 0.010
CLK_TCK = os.sysconf("SC_CLK_TCK")
REQUEST = {"model": "bench/gpt-4o-mini", "temperature": 0.2, "max_tokens": 64, "messages": [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Give me one sentence about the sea."}]}
USAGE = {"prompt_tokens": 27, "completion_tokens": 20, "total_tokens": 47,
         "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
COMPLETION = json.dumps({
    "id": "chatcmpl-bench0001", "object": "chat.completion", "created": 1735689600,
    "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench", "service_tier": "default",
    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
        "role": "assistant", "refusal": None,
        "content": "The sea covers most of the planet and still keeps most of its secrets."}}],
    "usage": USAGE}).encode()
MODELS = json.dumps({"object": "list", "data": [
    {"id": m, "object": "model", "created": 1735689600, "owned_by": "bench"}
    for m in ("gpt-4o-mini", "gpt-4o")]}).encode()
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


# ------------------------------------------------------------------ fake upstream

def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


async def upstream_chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": "chatcmpl-bench0002", "object": "chat.completion.chunk", "created": 1735689600,
            "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_bench"}
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    for i in range(STREAM_CHUNKS):
        if i:
            await asyncio.sleep(CHUNK_INTERVAL)
        ts = time.time_ns()  # also in the text, so it survives translation to other formats
        delta = ({"role": "assistant", "content": f"<{ts}>"} if i == 0
                 else {"content": f" <{ts}>"})
        finish = "stop" if i == STREAM_CHUNKS - 1 else None
        chunk = {**base, "ts": ts, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage:
            chunk["usage"] = None
        await resp.write(sse(chunk))  # one write per event
    if usage:
        await resp.write(sse({**base, "ts": time.time_ns(), "choices": [], "usage": USAGE}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def upstream_models(request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


def upstream_app(_: str | None) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream_chat)
    app.router.add_get("/v1/models", upstream_models)
    return app


# ------------------------------------------------------------------ bare forwarder

HTTP = web.AppKey("http", aiohttp.ClientSession)


def forwarder_app(upstream: str | None) -> web.Application:
    async def session_ctx(app: web.Application) -> Any:
        app[HTTP] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[HTTP].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app[HTTP].post(f"{upstream}{request.path}", data=body,
                                          headers={"Content-Type": "application/json"}) as up:
            if up.content_type != "text/event-stream":
                return web.Response(body=await up.read(), status=up.status,
                                    content_type=up.content_type)
            resp = web.StreamResponse(status=up.status, headers=SSE_HEADERS)
            await resp.prepare(request)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", forward)
    return app


def settle_malloc() -> None:
    """Free one large block so glibc raises its mmap threshold, as it does in any grown app.

    Otherwise every asyncio socket read (a 256 KiB buffer) costs mmap + mremap +
    munmap in a fresh process: ~0.1 ms of CPU per read here, which would make the
    small bench processes slower than the gateway for a reason that is not theirs.
    """
    bytearray(1 << 20)  # allocated with mmap, freed at once


def serve_app(factory: str, arg: str | None, ports: Any) -> None:
    """Child process: serve ``factory(arg)`` on a free port and report the port."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    settle_malloc()

    async def serve() -> None:
        runner = web.AppRunner(globals()[factory](arg), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0, backlog=1024).start()
        ports.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(serve())


# ------------------------------------------------------------------ /proc

def stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()  # fields from 3 (state) on


def cpu_ms(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            fields = stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return ticks * 1000 / CLK_TCK


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


# ------------------------------------------------------------------ load client

def pct(values: list[float], p: int) -> float | None:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not values:
        return None
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * p // 100) - 1))]


async def json_cell(url: str, conc: int, warmup: float, duration: float, pids: list[int]
                    ) -> dict[str, Any]:
    """``conc`` closed-loop workers; what completes inside the window is counted."""
    done: list[tuple[float, float]] = []
    errors = 0
    data, headers = json.dumps(REQUEST).encode(), {"Content-Type": "application/json"}
    t0 = time.perf_counter() + warmup
    t1 = t0 + duration
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def worker() -> None:
            nonlocal errors
            while (begin := time.perf_counter()) < t1:
                try:
                    async with http.post(url, data=data, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                if ok:
                    done.append((begin, time.perf_counter()))
                else:
                    errors += 1

        tasks = [asyncio.create_task(worker()) for _ in range(conc)]
        await asyncio.sleep(t0 - time.perf_counter())
        cpu0, w0 = cpu_ms(pids), time.perf_counter()
        await asyncio.sleep(t1 - time.perf_counter())
        cpu1, w1 = cpu_ms(pids), time.perf_counter()
        await asyncio.gather(*tasks)
    lat = [(end - begin) * 1000 for begin, end in done if w0 <= end <= w1]
    return {"requests": len(lat), "errors": errors, "rps": len(lat) / (w1 - w0),
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "cpu_ms_per_req": (cpu1 - cpu0) / len(lat) if lat else None}


ANTHROPIC_REQUEST = {"model": REQUEST["model"], "max_tokens": 64, "stream": True,
                     "system": REQUEST["messages"][0]["content"],
                     "messages": [REQUEST["messages"][1]]}
_TS = re.compile(r"<(\d+)>")


async def one_stream(http: aiohttp.ClientSession, url: str, delays: list[float]
                     ) -> tuple[float, float] | None:
    """One streamed request: (ms to the first content chunk, ms in total) or None.

    OpenAI chunks carry the upstream's send time in ``ts``; on ``/v1/messages``
    (an Anthropic client, translated from the OpenAI upstream) it is read from
    the text of each ``text_delta``.
    """
    anthropic = url.endswith("/v1/messages")
    body = (ANTHROPIC_REQUEST if anthropic
            else {**REQUEST, "stream": True, "stream_options": {"include_usage": True}})
    begin, ttfb, buf = time.perf_counter(), None, b""
    async with http.post(url, json=body) as resp:
        if resp.status != 200:
            return None
        async for data in resp.content.iter_any():
            now_ns, now = time.time_ns(), time.perf_counter()
            *events, buf = (buf + data).split(b"\n\n")
            for event in events:
                start = event.find(b"data: {")
                if start < 0:
                    continue
                chunk = json.loads(event[start + 6:])
                if anthropic:
                    text = (chunk.get("delta") or {}).get("text")
                    sent = [int(t) for t in _TS.findall(text or "")]
                else:
                    sent = [chunk["ts"]]
                    if not chunk["choices"]:
                        sent = [] if ttfb is None else sent
                for ts in sent:
                    delays.append((now_ns - ts) / 1e6)
                    if ttfb is None:
                        ttfb = (now - begin) * 1000
    return None if ttfb is None else (ttfb, (time.perf_counter() - begin) * 1000)


async def stream_cell(url: str, conc: int, count: int, pids: list[int]) -> dict[str, Any]:
    """``count`` streams, ``conc`` at a time, after one warm-up stream per connection."""
    delays: list[float] = []
    results: list[tuple[float, float] | None] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc),
                                     timeout=aiohttp.ClientTimeout(total=60)) as http:
        await asyncio.gather(*(one_stream(http, url, []) for _ in range(conc)))
        queue = iter(range(count))

        async def worker() -> None:
            for _ in queue:
                try:
                    results.append(await one_stream(http, url, delays))
                except (TimeoutError, aiohttp.ClientError, ValueError, KeyError):
                    results.append(None)

        cpu0 = cpu_ms(pids)
        await asyncio.gather(*(worker() for _ in range(conc)))
        cpu1 = cpu_ms(pids)
    ok = [r for r in results if r is not None]
    ttfb, total = [r[0] for r in ok], [r[1] for r in ok]
    return {"streams": len(ok), "errors": len(results) - len(ok),
            "ttfb_p50_ms": pct(ttfb, 50), "ttfb_p99_ms": pct(ttfb, 99),
            "total_p50_ms": pct(total, 50), "total_p99_ms": pct(total, 99),
            "chunk_p50_ms": pct(delays, 50), "chunk_p99_ms": pct(delays, 99),
            "cpu_ms_per_stream": (cpu1 - cpu0) / len(ok) if ok else None}


def client_main(conn: Any) -> None:
    """Child process: run each cell the parent sends; send back its result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settle_malloc()
    while (command := conn.recv()) is not None:
        kind, kwargs = command
        try:
            conn.send(asyncio.run((json_cell if kind == "json" else stream_cell)(**kwargs)))
        except Exception as exc:  # noqa: BLE001 - the parent reports it
            conn.send({"error": f"{type(exc).__name__}: {exc}"})


# ------------------------------------------------------------------ processes

def start_app(ctx: Any, factory: str, arg: str | None, procs: list[Any]) -> tuple[Any, int]:
    ports = ctx.Queue()
    procs.append(ctx.Process(target=serve_app, args=(factory, arg, ports), daemon=True))
    procs[-1].start()
    return procs[-1], ports.get(timeout=30)


def start_gateway(data_dir: str, upstream_port: int, workers: int) -> tuple[subprocess.Popen, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["INITIAL_PASSWORD"] = "bench-password"
    cli = [sys.executable, "-m", "omniroute.cli", "--data-dir", data_dir]
    added = subprocess.run([*cli, "providers", "add", "--type", "openai", "--name", "bench",
                            "--prefix", "bench", "--base-url",
                            f"http://{HOST}:{upstream_port}/v1", "--api-key", "sk-bench"],
                           check=False, env=env, capture_output=True, text=True)
    if added.returncode:
        raise RuntimeError(f"`omniroute providers add` failed:\n{added.stdout}{added.stderr}")
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    log_path = Path(data_dir) / "gateway.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*cli, "serve", "--port", str(port), "--log-level", "warning",
                                 "--workers", str(workers)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
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


def stop_all(gateway: subprocess.Popen | None, procs: list[Any]) -> None:
    if gateway is not None and gateway.poll() is None:
        os.killpg(gateway.pid, signal.SIGTERM)  # the gateway and its workers
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


def measure(args: argparse.Namespace, targets: dict[str, tuple[str, list[int]]], client: Any
            ) -> dict[str, Any]:
    """Each cell for every target back to back (so they share the machine's mood), × rounds."""
    plan = [*(("json", c) for c in args.concurrency),
            *(("stream", c) for c in args.stream_concurrency)]
    raw: dict[str, Any] = {"json": {}, "stream": {}}
    for rnd in range(1, args.rounds + 1):
        for kind, conc in plan:
            for name, (url, pids) in targets.items():
                if kind == "json" and name in STREAM_ONLY:
                    continue
                kwargs: dict[str, Any] = {"url": url, "conc": conc, "pids": pids}
                if kind == "json":
                    kwargs.update(warmup=args.warmup, duration=args.duration)
                else:
                    kwargs.update(count=max(args.streams, 4 * conc))
                client.send((kind, kwargs))
                cell = client.recv()
                if "error" in cell or not cell.get("requests", cell.get("streams")):
                    raise RuntimeError(f"{name} {kind} c={conc} failed: {cell}")
                raw[kind].setdefault(name, {}).setdefault(conc, []).append(cell)
                shown = (f"{cell['rps']:6.0f} req/s, p50 {cell['p50_ms']:.2f} ms" if kind == "json"
                         else f"chunk delay p50 {cell['chunk_p50_ms']:.2f} ms")
                print(f"  round {rnd} {kind:<6} c={conc:<3} {name:<10} {shown}",
                      file=sys.stderr, flush=True)
    return {**{kind: {name: {conc: median_cell(cells) for conc, cells in by_conc.items()}
                      for name, by_conc in by_name.items()} for kind, by_name in raw.items()},
            "raw": raw}


# ------------------------------------------------------------------ report

def fmt(value: float | None, digits: int = 2, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def ratio(results: dict, kind: str, conc: int | None, key: str) -> float | None:
    cells = results[kind]
    a = cells.get("omniroute", {}).get(conc, {}).get(key)
    b = cells.get("forwarder", {}).get(conc, {}).get(key)
    return a / b if a is not None and b else None


def table(results: dict, kind: str, columns: list[tuple]) -> list[str]:
    """A column is (title, digits, key, ...): several keys are shown as ``a / b``."""
    out = ["| target | conc. | " + " | ".join(c[0] for c in columns) + " |",
           "|---|---:|" + "---:|" * len(columns)]
    for name, cells in results[kind].items():
        for conc, cell in cells.items():
            row = [" / ".join(fmt(cell[key], digits) for key in keys)
                   for _, digits, *keys in columns]
            out.append(f"| {name} | {conc} | " + " | ".join(row) + " |")
    return out


def summarize(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    low, high = min(args.concurrency), max(args.concurrency)
    slow = min(args.stream_concurrency, default=None)
    p50 = {n: c.get(low, {}).get("p50_ms") for n, c in results["json"].items()}
    return {
        "added_p50_ms": {n: p50[n] - p50["direct"] for n in ("forwarder", "omniroute")
                         if p50.get(n) is not None and p50.get("direct") is not None},
        "cpu_ratio": {c: ratio(results, "json", c, "cpu_ms_per_req") for c in args.concurrency},
        "stream_cpu_ratio": {c: ratio(results, "stream", c, "cpu_ms_per_stream")
                             for c in args.stream_concurrency},
        "throughput_ratio": ratio(results, "json", high, "rps"),
        "chunk_p50_ms": {n: c.get(slow, {}).get("chunk_p50_ms")
                         for n, c in results["stream"].items()},
        "rss_mib": results["rss_mib"], "foreign_cpu": results["foreign_cpu"],
        **cross_format(args, results)}


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
    frames += [sse({**base, "choices": [], "usage": USAGE}), b"data: [DONE]\n\n"]

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


def cross_format(args: argparse.Namespace, results: dict[str, Any]) -> dict[str, Any]:
    """Anthropic client → OpenAI upstream against OpenAI → OpenAI, at the lowest stream conc."""
    slow = min(args.stream_concurrency, default=None)
    cells = {n: results["stream"].get(n, {}).get(slow, {}) for n in
             ("direct", "omniroute", "omniroute-anthropic")}
    if not all(cells.values()):
        return {}
    direct = cells["direct"]["chunk_p50_ms"]
    same = cells["omniroute"]["chunk_p50_ms"] - direct
    cross = cells["omniroute-anthropic"]["chunk_p50_ms"] - direct
    cpu_same = cells["omniroute"]["cpu_ms_per_stream"]
    cpu_cross = cells["omniroute-anthropic"]["cpu_ms_per_stream"]
    return {"cross_added_chunk_ms": cross, "same_added_chunk_ms": same,
            "cross_ratio": cross / same if same > 0 else None,
            "cross_extra_cpu_ms_per_stream": cpu_cross - cpu_same
            if cpu_cross is not None and cpu_same is not None else None,
            **translation_cost()}


def report(args: argparse.Namespace, results: dict[str, Any], s: dict[str, Any]) -> str:
    low, high = min(args.concurrency), max(args.concurrency)
    slow = min(args.stream_concurrency, default=None)
    worst_cpu = max((v for v in s["cpu_ratio"].values() if v is not None), default=None)
    tput = s["throughput_ratio"]
    out = [
        "## omniroute benchmark", "",
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, aiohttp "
        f"{aiohttp.__version__}; JSON cells {args.duration:g} s after {args.warmup:g} s warm-up; "
        f"median of {args.rounds} round(s); omniroute workers: {args.workers}. Load client, "
        "upstream and server share the machine; CPU is that of the server under test only "
        f"(for direct: the fake upstream). Other processes used {s['foreign_cpu']:.0%} of a CPU "
        "meanwhile" + (": **the numbers are unreliable**." if s["foreign_cpu"] > 0.1 else "."), "",
        "### JSON (`POST /v1/chat/completions`)", "",
        *table(results, "json", [("req/s", 0, "rps"), ("p50 ms", 2, "p50_ms"),
                                 ("p99 ms", 2, "p99_ms"), ("CPU ms/req", 3, "cpu_ms_per_req"),
                                 ("errors", 0, "errors")]), "",
        (f"### Streams ({STREAM_CHUNKS} chunks {CHUNK_INTERVAL * 1000:g} ms apart; chunk delay "
         "= client receive time − upstream send time)"), "",
        *table(results, "stream", [
            ("streams", 0, "streams"), ("TTFB p50 / p99 ms", 2, "ttfb_p50_ms", "ttfb_p99_ms"),
            ("total p50 / p99 ms", 1, "total_p50_ms", "total_p99_ms"),
            ("chunk delay p50 / p99 ms", 2, "chunk_p50_ms", "chunk_p99_ms"),
            ("CPU ms/stream", 2, "cpu_ms_per_stream"), ("errors", 0, "errors")]), "",
        "### Summary", "",
        f"- p50 latency added to direct at c={low}: "
        + ", ".join(f"{n} +{v:.2f} ms" for n, v in s["added_p50_ms"].items()),
        "- CPU per request, omniroute / forwarder: "
        + ", ".join(f"c={c} {fmt(v, 2, '×')}" for c, v in s["cpu_ratio"].items()) + "; per stream: "
        + ", ".join(f"c={c} {fmt(v, 2, '×')}" for c, v in s["stream_cpu_ratio"].items()),
        f"- throughput omniroute / forwarder at c={high}: "
        + ("n/a" if tput is None else f"{tput:.0%}"),
        f"- chunk delay p50 at stream c={slow}: "
        + ", ".join(f"{n} {fmt(v, 2, ' ms')}" for n, v in s["chunk_p50_ms"].items()),
        "- resident memory (VmRSS) after the run: "
        + ", ".join(f"{n} {v:.1f} MiB" for n, v in s["rss_mib"].items()),
        *([f"- cross-format stream (Anthropic client → OpenAI upstream) at c={slow}: chunk delay "
           f"added to direct p50 {s['cross_added_chunk_ms']:.2f} ms against "
           f"{s['same_added_chunk_ms']:.2f} ms same-format; extra server CPU "
           f"{fmt(s['cross_extra_cpu_ms_per_stream'], 2)} ms per stream (request translation "
           "and Anthropic's extra events included)",
           f"- per-chunk stream translation, in-process: "
           f"{s['translated_us_per_chunk']:.1f} µs per chunk (OpenAI → canonical → Anthropic) "
           f"against {s['passthrough_us_per_chunk']:.1f} µs on the pass-through lane (usage and "
           "error read on the side)"] if "cross_ratio" in s else []), "",
        "### Targets", ""]
    checks = [
        (f"p50 added latency at c={low} < 1 ms", s["added_p50_ms"].get("omniroute"),
         lambda v: v < 1, "{:.2f} ms"),
        ("CPU per request ≤ 1.5× forwarder (worst concurrency)", worst_cpu,
         lambda v: v <= 1.5, "{:.2f}×"),
        (f"throughput at c={high} ≥ 60% of forwarder", tput, lambda v: v >= 0.6, "{:.0%}"),
        (f"streamed chunk delivered within 1 ms of leaving the upstream (p50, c={slow})",
         s["chunk_p50_ms"].get("omniroute"), lambda v: v < 1, "{:.2f} ms"),
        ("cross-format added chunk latency ≤ 1.5× same-format (p50)", s.get("cross_ratio"),
         lambda v: v <= 1.5, "{:.2f}×")]
    for label, value, passes, form in checks:
        state = "n/a" if value is None else "PASS" if passes(value) else "FAIL"
        shown = "n/a" if value is None else form.format(value)
        out.append(f"- [{'x' if state == 'PASS' else ' '}] {label}: {shown} — {state}")
    return "\n".join(out)


# ------------------------------------------------------------------ main

def parse_args() -> argparse.Namespace:
    def levels(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds per JSON cell (5)")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per JSON cell (1)")
    p.add_argument("--concurrency", type=levels, default=[1, 16, 64], help="JSON (1,16,64)")
    p.add_argument("--stream-concurrency", type=levels, default=[1, 16], help="streams (1,16)")
    p.add_argument("--streams", type=int, default=25, help="streams per cell, at least 4×conc.")
    p.add_argument("--rounds", type=int, default=1, help="repeat every cell; report the median")
    p.add_argument("--workers", type=int, default=1, help="omniroute worker processes")
    p.add_argument("--targets", default="direct,forwarder,omniroute,omniroute-anthropic",
                   help="what to measure")
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args()
    if args.quick:
        args.duration, args.warmup, args.streams, args.rounds = 1.0, 0.3, 4, 1
    args.targets = args.targets.split(",")
    return args


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    gateway: subprocess.Popen | None = None
    with tempfile.TemporaryDirectory(prefix="omniroute-bench-") as data_dir:
        try:
            upstream, up_port = start_app(ctx, "upstream_app", None, procs)
            forwarder, fw_port = start_app(ctx, "forwarder_app", f"http://{HOST}:{up_port}", procs)
            gateway, gw_port = start_gateway(data_dir, up_port, args.workers)
            client, child_end = ctx.Pipe()
            procs.append(ctx.Process(target=client_main, args=(child_end,), daemon=True))
            procs[-1].start()
            path = "/v1/chat/completions"
            targets = {name: target for name, target in {
                "direct": (f"http://{HOST}:{up_port}{path}", [upstream.pid]),
                "forwarder": (f"http://{HOST}:{fw_port}{path}", [forwarder.pid]),
                "omniroute": (f"http://{HOST}:{gw_port}{path}", process_tree(gateway.pid)),
                "omniroute-anthropic": (f"http://{HOST}:{gw_port}/v1/messages",
                                        process_tree(gateway.pid)),
            }.items() if name in args.targets}
            ours, busy, began = cpu_ms(process_tree(os.getpid())), busy_ms(), time.monotonic()
            results = measure(args, targets, client)
            others = busy_ms() - busy - (cpu_ms(process_tree(os.getpid())) - ours)
            results["foreign_cpu"] = max(0.0, others / 1000 / (time.monotonic() - began))
            results["rss_mib"] = {"omniroute": rss_mib(process_tree(gateway.pid)),
                                  "forwarder": rss_mib([forwarder.pid])}
            results["summary"] = summarize(args, results)
            print(report(args, results, results["summary"]))
            if args.json:
                Path(args.json).write_text(json.dumps({"args": vars(args), **results}, indent=2))
            return 0
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            stop_all(gateway, procs)


if __name__ == "__main__":
    sys.exit(main())
