"""The benchmark's cross-format lane: an Anthropic client on the OpenAI upstream.

:func:`cross_format` compares, at the lowest paced-stream concurrency, the chunk
latency the gateway adds when it translates (``omniroute-anthropic``) with what it
adds on the same format; :func:`translation_cost` measures in-process the CPU per
chunk of OpenAI -> canonical -> Anthropic against the pass-through lane's side reading.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench_fakes import ANTHROPIC_REQUEST, DONE, REQUEST, STREAM_CHUNKS, USAGE, sse
from bench_report import CROSS, get, label

__all__ = ["CROSS", "cross_format", "translation_cost"]


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
