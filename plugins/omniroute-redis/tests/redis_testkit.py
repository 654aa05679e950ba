"""Helpers of the redis plugin's tests: a fake upstream and several gateway instances.

(Named ``redis_testkit`` and not ``conftest`` helpers: the repository's own tests have a
``conftest``, and a test importing from it by name could get that one.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from omniroute.budgets import Limits
from omniroute.testing import GatewayHarness, make_test_config, start_harness

from omniroute_redis.batch import Batch
from omniroute_redis.link import Link
from omniroute_redis.scripts import Scripts

UPSTREAM_KEY = "sk-upstream-test"
#: scripts the instance runs on its own schedule, not for a request, and what a
#: connection sends once as it opens
BACKGROUND = {"merge", "renew", "SELECT", "AUTH"}
#: a price that makes a request of 20 tokens cost $0.005
PRICE = {"model": "up/m1", "input": 250, "output": 250}

#: one write on the request path's connection: the commands it carried, by name
#: (the ``writes`` fixture)
Write = list[tuple[str, ...]]


class FakeUpstream:
    """An OpenAI-compatible upstream that counts its calls and can be told to fail.

    Every answer reports 10 prompt and 10 completion tokens. ``fail_next`` answers
    that many calls with 429 and ``Retry-After: 30``; ``delay`` holds each answer.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.fail_next = 0
        self.delay = 0.0
        #: when set, a call without ``Authorization: Bearer <it>`` gets a 401
        self.required_key: str | None = None
        #: called at the start of every call (a test looks at the gateway meanwhile)
        self.on_call: Callable[[], None] | None = None
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_get("/v1/models", self.models)
        self.base_url = ""

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "m1", "object": "model", "owned_by": "fake"}]})

    async def chat(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        body = await request.json()
        if self.required_key and request.headers.get(
                "Authorization") != f"Bearer {self.required_key}":
            return web.json_response(
                {"error": {"message": "token expired", "type": "invalid_request_error",
                           "code": "invalid_api_key"}}, status=401)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.json_response(
                {"error": {"message": "slow down", "type": "rate_limit", "code": "rate_limit"}},
                status=429, headers={"Retry-After": "30"})
        if self.delay:
            await asyncio.sleep(self.delay)
        text = "echo: " + str(body["messages"][-1]["content"])
        if body.get("stream"):
            return await self.stream(request, body["model"], text)
        return web.json_response({
            "id": f"chatcmpl-{self.calls}", "object": "chat.completion", "created": 1,
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})


    async def stream(self, request: web.Request, model: str, text: str) -> web.StreamResponse:
        """The answer as OpenAI's stream: one chunk a word, the usage, ``[DONE]``."""
        import json

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": f"chatcmpl-{self.calls}", "object": "chat.completion.chunk",
                "created": 1, "model": model}
        words = text.split(" ")
        for i, word in enumerate(words):
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        end = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
        await resp.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        await resp.write_eof()
        return resp


class Instances:
    """Gateways sharing one data directory and one Redis, and a client spreading
    requests over them (round robin)."""

    def __init__(self, gateways: list[GatewayHarness]) -> None:
        self.gateways = gateways
        self._turn = itertools.cycle(range(len(gateways)))
        self.session = aiohttp.ClientSession()

    def __getitem__(self, i: int) -> GatewayHarness:
        return self.gateways[i]

    def next(self) -> GatewayHarness:
        return self.gateways[next(self._turn)]

    async def chat(self, content: str = "hi", *, model: str = "up/m1", key: str | None = None,
                   via: GatewayHarness | None = None, headers: dict[str, str] | None = None,
                   **extra: Any) -> tuple[int, Any, Any]:
        """One chat request through ``via`` (default: the next instance):
        ``(status, body, headers)``."""
        gw = via or self.next()
        headers = {"Authorization": f"Bearer {key or gw.admin_key}", **(headers or {})}
        async with self.session.post(
                gw.base_url + "/v1/chat/completions", headers=headers,
                json={"model": model, "messages": [{"role": "user", "content": content}],
                      **extra}) as resp:
            return resp.status, await resp.json(), resp.headers

    async def close(self) -> None:
        await self.session.close()


async def start_instances(aiohttp_client: Callable[..., Any], data_dir: Path, redis_url: str,
                          count: int = 3, plugins: Any = None, **settings: Any) -> Instances:
    """``count`` gateways on one data directory, each on its own port, sharing ``redis_url``
    (``plugins``: loaded plugins to give each, e.g. with a test provider type)."""
    gateways = []
    for _ in range(count):
        config = make_test_config(data_dir, **settings).replace(state_url=redis_url)
        gateways.append(await start_harness(aiohttp_client, config, plugins))
    return Instances(gateways)


async def until(check: Callable[[], Any], timeout: float, step: float = 0.002) -> float:
    """Wait until ``check()`` is true; the seconds it took (AssertionError past ``timeout``)."""
    start = time.monotonic()
    while True:
        if await check() if asyncio.iscoroutinefunction(check) else check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout}s")
        await asyncio.sleep(step)


async def add_connection(instances: Instances, upstream: FakeUpstream,
                         **settings: Any) -> dict[str, Any]:
    """A connection added through the first instance's API (others hear of it)."""
    return await instances[0].add_provider({
        "type": "openai", "name": "fake", "prefix": "up", "base_url": upstream.base_url,
        "api_key": UPSTREAM_KEY, **settings})


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may stop,
    pause and start again (the machine's shared Redis is never touched)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise AssertionError("redis-server is not installed (the test command needs it)")
        self.process = await asyncio.create_subprocess_exec(
            binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--protected-mode", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            async def up() -> bool:
                try:
                    return bool(await client.ping())
                except (OSError, aioredis.ConnectionError):
                    return False

            await until(up, timeout=10.0, step=0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        """Kill it (its data is gone: nothing is saved)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        self.process = None

    def pause(self) -> None:
        import signal

        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        import signal

        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def until_routable(instances: Instances, *models: str, timeout: float = 2.0) -> None:
    """Wait until every instance routes each of ``models`` (its reload is complete: the
    connections are known before the router is rebuilt)."""

    def routable() -> bool:
        for gw in instances.gateways:
            for model in models:
                try:
                    gw.catalog.router.resolve(model)
                except Exception:  # noqa: BLE001 - not yet: the reload is under way
                    return False
        return True

    await until(routable, timeout=timeout)


@contextlib.asynccontextmanager
async def priced_instance(aiohttp_client: Callable[..., Any], data_dir: Path, redis_url: str,
                          upstream: FakeUpstream, *, plugins: Any = None,
                          **settings: Any) -> AsyncIterator[Instances]:
    """One instance on ``redis_url`` (``settings``: its configuration) with a connection to
    ``upstream`` (rpm 1000, max_concurrency 50) whose model is priced (:data:`PRICE`),
    routable, its link to Redis open; closed on the way out."""
    made = await start_instances(aiohttp_client, data_dir, redis_url, count=1,
                                 plugins=plugins, **settings)
    try:
        await add_connection(made, upstream, rpm=1000, max_concurrency=50)
        await until_routable(made, "up/m1")
        resp = await made[0].client.put("/api/pricing", headers=made[0].admin_headers,
                                        json=PRICE)
        assert resp.status == 200, await resp.text()
        await made[0].gateway.shared.link.command("PING")  # the connection is open
        yield made
    finally:
        await made.close()


@contextlib.asynccontextmanager
async def batch_parts(redis_url: str, timeout: float) -> AsyncIterator[tuple[Link, Batch, Scripts]]:
    """A link to ``redis_url`` (``timeout``: its state_timeout), its scripts loaded, and
    a started batch writer on it; both closed on the way out."""
    link = Link(redis_url, timeout=lambda: timeout, prefix="t")
    scripts = Scripts()
    batch = Batch(link, scripts)
    batch.start()
    try:
        await link.command("PING")  # the connection is open
        await link.call(scripts.load)  # (another test may have flushed them)
        yield link, batch, scripts
    finally:
        await batch.close()
        await link.close()


def requests_part(log: list[Write]) -> list[Write]:
    """The writes made for requests (the background syncs and connections opening left
    out)."""
    kept = []
    for write in log:
        commands = [c for c in write if c[0] not in BACKGROUND]
        if commands:
            kept.append(commands)
    return kept


async def limited_key(instances: Instances, **limits: Any) -> tuple[str, str]:
    """A new API key with ``limits``: (its id, its secret)."""
    key, secret = await instances[0].store.create_key("team", set(),
                                                      limits=Limits.parse(limits))
    await instances[0].gateway.reload()
    return key.id, secret


def parsed_limits(limits: dict[str, Any]) -> Limits:
    """``limits`` as the gateway holds them (what :func:`limited_key` gives its key)."""
    parsed = Limits.parse(limits)
    assert parsed is not None
    return parsed


def connection_id(instances: Instances) -> str:
    """The id of the first instance's connection (the one :func:`add_connection` adds)."""
    return next(iter(instances[0].catalog.providers.values())).connection.id


async def count(client: aioredis.Redis, pattern: str) -> int:
    """Members of the sorted sets (or fields of the hashes) whose names match."""
    total = 0
    async for name in client.scan_iter(match=pattern):
        kind = (await client.type(name)).decode()
        total += await (client.zcard(name) if kind == "zset" else client.hlen(name))
    return total


class SlowProxy:
    """A TCP proxy in front of a Redis that holds each reply back :attr:`delay` seconds
    (read live: setting it to 0 lets what it holds go at once). Commands go through at
    once, so Redis runs them while their replies wait."""

    def __init__(self, redis_url: str) -> None:
        parts = urlsplit(redis_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._path = parts.path
        self.delay = 0.0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}{self._path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        loop = asyncio.get_running_loop()
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def commands() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def replies() -> None:
            while data := await up_reader.read(65536):
                held.put_nowait((loop.time(), data))
            held.put_nowait((loop.time(), b""))

        async def release() -> None:
            while True:
                came, data = await held.get()
                while loop.time() < came + self.delay:
                    await asyncio.sleep(0.005)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        tasks = [asyncio.ensure_future(t()) for t in (commands, replies, release)]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)
        for w in (writer, up_writer):
            w.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
