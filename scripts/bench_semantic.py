#!/usr/bin/env python
"""Benchmark the semantic cache layer (plugins/omniroute-semantic-cache) with the real model.

For each index size (1k, 10k, 100k entries in the request's scope) it fills the
layer's SQLite file with random unit vectors and 1 KB answers, starts a layer on
it (timing the faiss rebuild), and times ``await layer.lookup(key)`` from the
event loop for short prompts it has not seen (encoding, the worker-thread hop,
the trip to the encoder process, the search and the guards included): misses,
then paraphrase hits. It also reports the memory each entry costs (process RSS,
and the SQLite file), and the event loop's lag while the worker encodes back to
back (a 1 ms ticker).

The layer runs as the plugin runs it: the model in its own process, scopes of
20k entries and more as IVF indexes. ``--in-thread`` encodes in the worker
thread instead (as before the encoder process), ``--large-scope N`` moves the
IVF threshold (``--large-scope 1000000000``: exact scans only).

    .venv/bin/python scripts/bench_semantic.py                  # 1k, 10k, 100k
    .venv/bin/python scripts/bench_semantic.py --sizes 1000 --lookups 50
    .venv/bin/python scripts/bench_semantic.py --in-thread --large-scope 1000000000

Torch and faiss use one thread each, as in the gateway. The machine's load
average is printed with the results: on a shared 2-core box it moves them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from omniroute_semantic_cache.encoder import NICE, ProcessEmbedder
from omniroute_semantic_cache.index import LARGE_SCOPE
from omniroute_semantic_cache.layer import SemanticLayer
from omniroute_semantic_cache.minilm import MiniLMEmbedder
from omniroute_semantic_cache.store import EntryStore

from omniroute import CacheKey
from omniroute.config import Settings

COUNTRIES = ["France", "Germany", "Italy", "Spain", "Portugal", "Poland", "Austria", "Sweden",
             "Norway", "Finland", "Denmark", "Ireland", "Greece", "Hungary", "Romania",
             "Bulgaria", "Croatia", "Serbia", "Ukraine", "Belgium", "Netherlands", "Switzerland",
             "Japan", "China", "India", "Brazil", "Argentina", "Chile", "Peru", "Mexico",
             "Canada", "Egypt", "Kenya", "Nigeria", "Morocco", "Turkey", "Iran", "Iraq",
             "Vietnam", "Thailand"]
TOPICS = ["volcanoes", "tides", "rainbows", "glaciers", "earthquakes", "hurricanes", "deserts",
          "coral reefs", "auroras", "monsoons", "geysers", "tornadoes", "lightning", "comets",
          "eclipses", "fossils", "caves", "rivers", "clouds", "snowflakes"]
VERBS = ["form", "change over time", "affect people", "get studied", "start", "end", "move"]


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def key(prompt: str, scope: str = "bench-scope") -> CacheKey:
    return CacheKey(exact=f"{scope}:{prompt}", scope=scope, prompt=prompt, tenant="bench",
                    model="gpt-4o-mini", multi_turn=False, has_tools=False, has_media=False,
                    prompt_tokens=12)


def fill(path: Path, layer: SemanticLayer, n: int, dim: int, embedder: str) -> None:
    """``n`` rows in the bench key's scope: random unit vectors, 1 KB answers."""
    EntryStore(path, embedder).close()  # the schema
    rng = np.random.default_rng(7)
    scope = layer.scope(key("x"))
    now = time.time()
    entry = os.urandom(1024)
    with sqlite3.connect(path) as db:
        for start in range(0, n, 10_000):
            m = min(10_000, n - start)
            vecs = rng.standard_normal((m, dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            db.executemany(
                "INSERT INTO entries (scope, exact, prompt, embedder, vec, entry, bytes, created,"
                " expires, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(scope, f"filler-{start + i}", f"filler {start + i}", embedder,
                  vecs[i].tobytes(), entry, len(entry), now, now + 86400, now)
                 for i in range(m)])


async def timed_lookups(layer: SemanticLayer, prompts: list[str]) -> tuple[list[float], int]:
    times, hits = [], 0
    for prompt in prompts:
        started = time.perf_counter()
        hit = await layer.lookup(key(prompt))
        times.append((time.perf_counter() - started) * 1000)
        hits += hit is not None
    return times, hits


def miss_prompts(count: int, salt: int) -> list[str]:
    out = []
    for i in range(count):
        topic, verb = TOPICS[i % len(TOPICS)], VERBS[(i // len(TOPICS)) % len(VERBS)]
        out.append(f"In a few words, how do {topic} {verb} in region {salt}-{i}?")
    return out


async def loop_lag(layer: SemanticLayer | None,
                   seconds: float) -> tuple[list[float], int, float]:
    """Lag of a 1 ms ticker while lookups of fresh prompts encode back to back (None: with
    nothing else running, the machine's own noise), the lookups, and the CPU seconds this
    process spent meanwhile (every thread; not the encoder process's)."""
    lags: list[float] = []
    stop = time.perf_counter() + seconds
    encodes = 0
    cpu = time.process_time()

    async def tick() -> None:
        while time.perf_counter() < stop:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append((time.perf_counter() - before - 0.001) * 1000)

    async def encode() -> None:
        nonlocal encodes
        i = 0
        while layer is not None and time.perf_counter() < stop:
            await layer.lookup(key(f"What should a beginner learn first about topic {i}?"))
            i += 1
            encodes += 1

    await asyncio.gather(tick(), encode())
    return lags, encodes, time.process_time() - cpu


async def main(args: argparse.Namespace) -> None:
    settings = Settings(semantic_cache=True, semantic_cache_timeout=10.0,
                        semantic_cache_max_entries=max(args.sizes) + 10_000,
                        semantic_cache_max_bytes=2**40)
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    embedder = MiniLMEmbedder()
    import faiss  # imported before the RSS readings, so they count entries only

    del faiss
    idle_lag, _, idle_cpu = await loop_lag(None, args.lag_seconds)
    base_rss = rss_mb()
    started = time.perf_counter()
    await asyncio.to_thread(embedder.load)
    load_s = time.perf_counter() - started
    model_rss = rss_mb()
    workdir = Path(tempfile.mkdtemp(prefix="bench-semantic-"))

    # encoding alone, in this thread (no executor hop), for reference
    enc = []
    for prompt in miss_prompts(args.lookups, 999):
        t = time.perf_counter()
        embedder.encode([prompt])
        enc.append((time.perf_counter() - t) * 1000)

    rows: list[dict[str, Any]] = []
    lag: tuple[list[float], int, float] | None = None
    for n in args.sizes:
        path = workdir / f"semantic-{n}.sqlite3"
        layer = SemanticLayer(path, lambda: settings,
                              embedder if args.in_thread else MiniLMEmbedder(),
                              isolate=not args.in_thread, large_scope=args.large_scope)
        if isinstance(layer.embedder, ProcessEmbedder) and args.nice is not None:
            layer.embedder.nice = args.nice
        fill(path, layer, n, embedder.dim, embedder.name)
        before = rss_mb()
        assert await layer.ready(600), layer.error
        rebuild_s = layer.started_in["index"]  # the model's load (in its process) apart
        after = rss_mb()
        # paraphrase pairs stored for real (encoded), then asked in other words
        for country in COUNTRIES:
            await layer.store(key(f"What is the capital of {country}?"), b"capital", 3600)
        await timed_lookups(layer, miss_prompts(5, n))  # warm the path
        miss_ms, false_hits = await timed_lookups(layer, miss_prompts(args.lookups, n))
        hit_ms, hits = await timed_lookups(layer, [f"What is {c}'s capital?" for c in COUNTRIES])
        index, query = layer._index, embedder.encode(["What is the capital of Peru?"])[0]
        assert index is not None
        kind = index.kind(layer.scope(key("x")))
        search_ms = []
        for _ in range(50):  # the faiss search alone, in the worker thread
            t = time.perf_counter()
            await asyncio.wrap_future(layer._worker.submit(
                index.search, layer.scope(key("x")), query, 4))
            search_ms.append((time.perf_counter() - t) * 1000)
        if lag is None or n == args.sizes[-1]:
            lag = await loop_lag(layer, args.lag_seconds)
        rows.append({"n": n, "kind": kind, "miss": miss_ms, "hit": hit_ms, "hits": hits,
                     "search": search_ms,
                     "false_hits": false_hits, "rebuild_s": rebuild_s,
                     "rss_per_entry": (after - before) * 2**20 / n,
                     "file_per_entry": path.stat().st_size / n})
        await layer.close()
        path.unlink()

    load1, load5, _ = os.getloadavg()
    where = ("in the worker thread" if args.in_thread else
             f"in its own process (nice +{args.nice if args.nice is not None else NICE})")
    print(f"# semantic cache benchmark: MiniLM-L6-v2 ({embedder.name}) {where}, torch 1 "
          f"thread, faiss 1 thread, IVF from {args.large_scope:,} entries, python "
          f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, GIL switch "
          f"interval {sys.getswitchinterval() * 1000:g} ms, "
          f"load average {load1:.1f} / {load5:.1f}")
    print(f"model load {load_s:.1f} s (in a thread), RSS {base_rss:.0f} -> {model_rss:.0f} MB; "
          f"encode alone (short prompt, no hop): p50 {pct(enc, 50):.1f} ms, "
          f"p99 {pct(enc, 99):.1f} ms")
    print()
    print("| entries in scope | index | lookup miss p50 | miss p99 | lookup hit p50 | hit p99 | "
          "faiss search alone p50 | paraphrase hits | false hits | rebuild at start | "
          "RSS / entry | SQLite / entry |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']:,} | {r['kind']} | {pct(r['miss'], 50):.1f} ms | "
              f"{pct(r['miss'], 99):.1f} ms | "
              f"{pct(r['hit'], 50):.1f} ms | {pct(r['hit'], 99):.1f} ms | "
              f"{pct(r['search'], 50):.2f} ms | "
              f"{r['hits']}/{len(COUNTRIES)} | {r['false_hits']}/{args.lookups} | "
              f"{r['rebuild_s']:.2f} s | {r['rss_per_entry']:,.0f} B | "
              f"{r['file_per_entry']:,.0f} B |")
    assert lag is not None
    lags, encodes, cpu = lag
    print()
    print(f"event-loop lag while the worker encodes back to back ({encodes} lookups in "
          f"{args.lag_seconds:.0f} s, 1 ms ticker, {len(lags)} ticks): "
          f"p50 {pct(lags, 50):.2f} ms, p99 {pct(lags, 99):.2f} ms, max {max(lags):.2f} ms; "
          f"idle (no encoding, the machine's own noise): p50 {pct(idle_lag, 50):.2f} ms, "
          f"p99 {pct(idle_lag, 99):.2f} ms, max {max(idle_lag):.2f} ms")
    print(f"this process's CPU (all its threads, the ticker's included) per lookup while "
          f"encoding: {(cpu - idle_cpu) / max(1, encodes) * 1000:.2f} ms "
          f"(idle ticker alone: {idle_cpu:.2f} s, subtracted)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--lookups", type=int, default=200, help="misses timed per size")
    parser.add_argument("--lag-seconds", type=float, default=5.0)
    parser.add_argument("--in-thread", action="store_true",
                        help="encode in the layer's worker thread, not in its own process")
    parser.add_argument("--nice", type=int, default=None,
                        help="the encoder process's niceness (default: the plugin's)")
    parser.add_argument("--large-scope", type=int, default=LARGE_SCOPE,
                        help="entries from which a scope is an IVF index")
    parser.add_argument("--switch-interval", type=float, default=0.0,
                        help="sys.setswitchinterval (seconds) to try; default: Python's 5 ms")
    asyncio.run(main(parser.parse_args()))
