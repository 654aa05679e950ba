"""The benchmark's servers: a fake OpenAI upstream and a bare aiohttp forwarder.

Each runs in its own process (:func:`serve_app`), on 127.0.0.1 only.

The upstream speaks OpenAI: JSON chat answers, embeddings, and streams of 20
``chat.completion.chunk`` events (plus a usage chunk and ``[DONE]``), each
carrying its wall-clock send time in ``ts`` (and in its text, as ``<ns>``, so
it survives translation). A *paced* stream sends one event every 10 ms, one
write each; an *instant* stream (a model name ending in ``-instant``) sends
them all in one write, the way a fast upstream's buffered answer arrives.

The forwarder is the speed limit of an aiohttp gateway: one pooled
ClientSession, bodies passed through, streams relayed with ``iter_any`` (one
write per socket read).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import aiohttp
from aiohttp import web

HOST = "127.0.0.1"
CHAT = "/v1/chat/completions"
STREAM_CHUNKS, CHUNK_INTERVAL = 20, 0.010
INSTANT_SUFFIX = "-instant"
DONE = b"data: [DONE]\n\n"
REQUEST = {"model": "bench/gpt-4o-mini", "temperature": 0.2, "max_tokens": 64, "messages": [
    {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
    {"role": "user", "content": "Give me one sentence about the sea."}]}
#: a stream the upstream writes in one go (include_usage: the gateway adds nothing to hide)
INSTANT_REQUEST = {**REQUEST, "model": REQUEST["model"] + INSTANT_SUFFIX, "stream": True,
                   "stream_options": {"include_usage": True}}
EMBED_REQUEST = {"model": "bench/text-embedding-3-small",
                 "input": "The sea covers most of the planet."}
ANTHROPIC_REQUEST = {"model": REQUEST["model"], "max_tokens": 64, "stream": True,
                     "system": REQUEST["messages"][0]["content"],
                     "messages": [REQUEST["messages"][1]]}
#: the cross-format lane on instant streams (``--load wrk``): what an Anthropic answer ends with
ANTHROPIC_INSTANT_REQUEST = {**ANTHROPIC_REQUEST, "model": REQUEST["model"] + INSTANT_SUFFIX}
ANTHROPIC_TAIL = '"message_stop"}'
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
#: 256 dimensions, as text-embedding-3-small gives with ``dimensions: 256``
EMBEDDING = json.dumps({
    "object": "list", "model": "text-embedding-3-small",
    "data": [{"object": "embedding", "index": 0,
              "embedding": [round(((i * 7919) % 2000 - 1000) / 31623, 8) for i in range(256)]}],
    "usage": {"prompt_tokens": 8, "total_tokens": 8}}).encode()
MODELS = json.dumps({"object": "list", "data": [
    {"id": m, "object": "model", "created": 1735689600, "owned_by": "bench"}
    for m in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")]}).encode()
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
CHUNK_BASE = {"id": "chatcmpl-bench0002", "object": "chat.completion.chunk",
              "created": 1735689600, "model": "gpt-4o-mini-2024-07-18",
              "system_fingerprint": "fp_bench"}


# ------------------------------------------------------------------ fake upstream

def sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunk_frame(i: int, usage: bool) -> bytes:
    """Content chunk ``i`` of a stream, stamped now."""
    ts = time.time_ns()  # also in the text, so it survives translation to other formats
    delta = {"role": "assistant", "content": f"<{ts}>"} if i == 0 else {"content": f" <{ts}>"}
    finish = "stop" if i == STREAM_CHUNKS - 1 else None
    chunk = {**CHUNK_BASE, "ts": ts, "choices": [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage:
        chunk["usage"] = None
    return sse(chunk)


def usage_frame() -> bytes:
    return sse({**CHUNK_BASE, "ts": time.time_ns(), "choices": [], "usage": USAGE})


async def upstream_chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.Response(body=COMPLETION, content_type="application/json")
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    if str(body.get("model", "")).endswith(INSTANT_SUFFIX):  # the whole stream in one write
        frames = [chunk_frame(i, usage) for i in range(STREAM_CHUNKS)]
        await resp.write(b"".join([*frames, *([usage_frame()] if usage else []), DONE]))
    else:
        for i in range(STREAM_CHUNKS):
            if i:
                await asyncio.sleep(CHUNK_INTERVAL)
            await resp.write(chunk_frame(i, usage))  # one write per event
        if usage:
            await resp.write(usage_frame())
        await resp.write(DONE)
    await resp.write_eof()
    return resp


async def upstream_embeddings(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=EMBEDDING, content_type="application/json")


async def upstream_models(request: web.Request) -> web.Response:
    return web.Response(body=MODELS, content_type="application/json")


def upstream_app(_: str | None) -> web.Application:
    app = web.Application()
    app.router.add_post(CHAT, upstream_chat)
    app.router.add_post("/v1/embeddings", upstream_embeddings)
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
        # Accept passed on: the nginx upstream (bench_nginx.py) picks the stream by it
        headers = {"Content-Type": "application/json",
                   "Accept": request.headers.get("Accept", "*/*")}
        async with request.app[HTTP].post(f"{upstream}{request.path}", data=body,
                                          headers=headers) as up:
            if up.content_type != "text/event-stream":
                return web.Response(body=await up.read(), status=up.status,
                                    content_type=up.content_type)
            resp = web.StreamResponse(status=up.status, headers=SSE_HEADERS)
            try:
                await resp.prepare(request)
                async for chunk in up.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except ConnectionResetError:  # the client left (wrk, at the end of a run)
                pass  # nothing left to answer; not a traceback per connection
            return resp

    app = web.Application()
    app.cleanup_ctx.append(session_ctx)
    app.router.add_post(CHAT, forward)
    app.router.add_post("/v1/embeddings", forward)
    return app


# ------------------------------------------------------------------ process

def settle_malloc() -> None:
    """Free one large block so glibc raises its mmap threshold, as it does in any grown app.

    Otherwise every asyncio socket read (a 256 KiB buffer) costs mmap + mremap +
    munmap in a fresh process: ~0.1 ms of CPU per read here, which would make the
    small bench processes slower than the gateway for a reason that is not theirs.
    """
    bytearray(1 << 20)  # allocated with mmap, freed at once


FACTORIES = {"upstream": upstream_app, "forwarder": forwarder_app}


def serve_app(factory: str, arg: str | None, loop: str, ports: Any) -> None:
    """Child process: serve ``FACTORIES[factory](arg)`` on a free port, report the port.

    :param loop: ``asyncio`` or ``uvloop``, the event loop to serve on.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    settle_malloc()

    async def serve() -> None:
        runner = web.AppRunner(FACTORIES[factory](arg), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, HOST, 0, backlog=1024).start()
        ports.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve())
    else:
        asyncio.run(serve())
