#!/usr/bin/env python
"""Micro-benchmark: what the response-cache stage costs one request, in one process.

Runs :class:`omniroute.cache.stage.CacheStage` as the pipeline calls it, on the
benchmark's usual OpenAI request, with nothing else around it (no HTTP, no
other stage), so the shared machine's noise does not drown microseconds:

* ``bypass``: ``enter`` for temperature 0.2 traffic in the default mode (what the
  cache adds to a request it cannot serve);
* ``hit``: ``enter`` + ``before`` for a stored temperature-0 request: decode,
  key, memory lookup, entry read, the answer encoded (JSON, or every frame of
  the replayed stream);
* ``miss``: ``enter`` + ``before`` + the answer kept + ``finished`` + the
  background writer's decode and store, for a new question each time.

The gateway's own per-request cost around it (HTTP, auth, the record) is in
``scripts/bench_cache.py``.

    .venv/bin/python scripts/bench_cache_stage.py
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fakes import REQUEST

from omniroute.auth.base import ANONYMOUS
from omniroute.cache.memory import MemoryCache
from omniroute.cache.service import ResponseCache
from omniroute.cache.stage import CacheStage
from omniroute.config import Settings
from omniroute.pipeline.context import RequestContext
from omniroute.plugins import load_plugins
from omniroute.registry import Registry
from omniroute.storage import RequestRecord

N = 20_000
ANSWER = (b'{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini",'
          b'"choices":[{"index":0,"message":{"role":"assistant","content":"The sea is wide '
          b'and deep, and it covers most of the planet."},"finish_reason":"stop"}],'
          b'"usage":{"prompt_tokens":24,"completion_tokens":16,"total_tokens":40}}')


class Chat:
    name = "chat"


def context(fmt: Any, body: dict[str, Any], stream: bool = False) -> RequestContext:
    record = RequestRecord(request_id="r", ts=0.0, endpoint="chat.completions")
    ctx = RequestContext(ANONYMOUS, fmt, record, {}, {}, body=body, model=body["model"],
                         stream=stream)
    return ctx


async def timed(fn: Any, n: int = N) -> float:
    """Microseconds per call: the median of 5 runs of ``n / 5``."""
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for i in range(n // 5):
            await fn(i)
        runs.append((time.perf_counter() - started) / (n // 5) * 1e6)
    return statistics.median(runs)


async def main() -> None:
    fmt = Registry(load_plugins()).formats["openai"]
    cache = ResponseCache([MemoryCache({"max_entries": 100_000, "max_bytes": 1 << 30})])
    await cache.start()
    settings = Settings()
    stage = CacheStage(cache, lambda: settings)
    op: Any = Chat()

    async def bypass(i: int) -> None:
        assert stage.enter(context(fmt, REQUEST), op) is None

    async def store(body: dict[str, Any]) -> None:
        ctx = context(fmt, body)
        run = stage.enter(ctx, op)
        assert run is not None and await run.before(ctx) is None
        ctx.record.status = 200
        await run.answer(ctx, ANSWER)
        await run.finished(ctx)

    deterministic = {**REQUEST, "temperature": 0}
    await store(deterministic)
    await cache.settled()

    async def hit(i: int) -> None:
        ctx = context(fmt, deterministic)
        run = stage.enter(ctx, op)
        assert run is not None
        reply = await run.before(ctx)
        assert reply is not None and reply.body

    async def hit_stream(i: int) -> None:
        ctx = context(fmt, {**deterministic, "stream": True}, stream=True)
        run = stage.enter(ctx, op)
        assert run is not None
        reply = await run.before(ctx)
        assert reply is not None and reply.frames is not None
        async for _ in reply.frames:
            pass


    questions = iter(range(10**9))

    async def miss(i: int) -> None:
        question = f"q {next(questions)}"
        await store({**deterministic, "messages": [{"role": "user", "content": question}]})
        await cache.settled()

    for _ in range(500):  # warm up
        await hit(0)
    rows = [("bypass: enter, temperature 0.2", await timed(bypass)),
            ("hit, JSON: enter + before (decode, key, lookup, encode)", await timed(hit)),
            ("hit, stream: the same + every replayed frame", await timed(hit_stream)),
            ("miss: lookup + keep + finished + background decode and store",
             await timed(miss))]
    await cache.close()
    print("| what the cache stage does (in process) | µs per request |")
    print("|---|---|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    asyncio.run(main())
