"""The benchmark's load client: its own process, so its CPU is not counted.

The parent sends it one cell at a time (:func:`client_main`); it measures the
cell and sends back the numbers. Server CPU comes from ``/proc/<pid>/stat``
(utime + stime) over the measured window, for the process under test only.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import statistics
import time
from typing import Any

import aiohttp
from bench_fakes import ANTHROPIC_REQUEST, REQUEST, settle_malloc
from bench_procs import cpu_ms

_TS = re.compile(r"<(\d+)>")


def pct(values: list[float], p: int) -> float | None:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    if not values:
        return None
    return ordered[min(len(ordered) - 1, max(0, -(-len(ordered) * p // 100) - 1))]


async def loop_cell(url: str, body: dict[str, Any], conc: int, warmup: float, duration: float,
                    pids: list[int], tail: str | None = None,
                    headers: dict[str, str] | None = None,
                    unique: bool = False) -> dict[str, Any]:
    """``conc`` closed-loop workers posting ``body``; what completes inside the window counts.

    :param tail: the text a whole answer ends with (an instant stream's ``[DONE]``);
        an answer that does not is an error.
    :param headers: sent with every request (an API key).
    :param unique: every request is a new one: its own ``Idempotency-Key``, and a
        number in place of ``{n}`` in the body (a response cache misses).
    """
    done: list[tuple[float, float]] = []
    errors = 0
    text = json.dumps(body)
    data = text.encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    numbers = itertools.count(1)
    cell = os.urandom(4).hex()  # another cell's requests are other requests
    end = tail.encode() if tail else None
    t0 = time.perf_counter() + warmup
    t1 = t0 + duration
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def worker() -> None:
            nonlocal errors
            while (begin := time.perf_counter()) < t1:
                sent, sent_headers = data, headers
                if unique:
                    n = f"{cell}-{next(numbers)}"
                    sent = text.replace("{n}", n).encode()
                    sent_headers = {**headers, "Idempotency-Key": f"bench-{n}"}
                try:
                    async with http.post(url, data=sent, headers=sent_headers) as resp:
                        answer = await resp.read()
                        ok = resp.status == 200 and (end is None or answer.endswith(end))
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


async def one_stream(http: aiohttp.ClientSession, url: str, delays: list[float]
                     ) -> tuple[float, float] | None:
    """One paced stream: (ms to the first content chunk, ms in total) or None.

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
    """``count`` paced streams, ``conc`` at a time, after one warm-up stream per connection."""
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


CELLS = {"loop": loop_cell, "stream": stream_cell}


def client_main(conn: Any) -> None:
    """Child process: run each cell the parent sends as ``(kind, kwargs)``; send back its result."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    settle_malloc()
    while (command := conn.recv()) is not None:
        kind, kwargs = command
        try:
            conn.send(asyncio.run(CELLS[kind](**kwargs)))
        except Exception as exc:  # noqa: BLE001 - the parent reports it
            conn.send({"error": f"{type(exc).__name__}: {exc}"})


def start_client(ctx: Any, procs: list[Any]) -> Any:
    """The load client in a process of its own (added to ``procs``): the connection to
    send it cells on (``None`` ends it)."""
    client, child_end = ctx.Pipe()
    procs.append(ctx.Process(target=client_main, args=(child_end,), daemon=True))
    procs[-1].start()
    return client
