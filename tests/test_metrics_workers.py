"""``GET /metrics`` with ``omniroute serve --workers 2``: every scrape sees both workers' requests.

The gateway runs as users run it (the ``omniroute`` command, two worker
processes sharing the port with SO_REUSEPORT), against a fake upstream served
by this test's event loop. Each request and each scrape opens its own
connection, so the kernel spreads them over both workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
from prometheus_client.parser import text_string_to_metric_families

OMNIROUTE_BIN = str(Path(sys.executable).parent / "omniroute")
PASSWORD = "test-password-123"
HI = [{"role": "user", "content": "hi there"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OMNIROUTE_") and k not in ("PROMETHEUS_MULTIPROC_DIR",
                                                          "REQUIRE_API_KEY")}
    return {**env, "INITIAL_PASSWORD": PASSWORD, "PYTHONUNBUFFERED": "1"}


async def _get(url: str, **kwargs: Any) -> tuple[int, str, dict[str, str]]:
    """One request on a connection of its own (so it may reach either worker)."""
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def _wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"serve exited {proc.returncode}: {log.read_text()}"
        try:
            if (await _get(base + "/api/monitoring/health"))[0] == 200:
                return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"no health answer: {log.read_text()}")


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


async def test_two_workers_one_exposition(tmp_path: Path, fake_openai: Any) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [OMNIROUTE_BIN, "--data-dir", str(tmp_path / "data"), "serve", "--port", str(port),
         "--workers", "2"], env=_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        await _wait_healthy(base, proc, log)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin:
            resp = await admin.post(base + "/api/auth/login", json={"password": PASSWORD})
            assert resp.status == 200, await resp.text()
            csrf = {"X-CSRF-Token": (await resp.json())["csrf_token"]}
            resp = await admin.post(base + "/api/providers", headers=csrf, json={
                "type": "openai", "name": "fake", "prefix": "up",
                "base_url": fake_openai.base_url, "api_key": "sk-upstream-test"})
            assert resp.status == 201, await resp.text()

        workers_seen = set()
        for i in range(16):  # half JSON, half streamed; each on a connection of its own
            async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="x",
                                          max_retries=0, timeout=20) as client:
                if i % 2:
                    stream = await client.chat.completions.with_raw_response.create(
                        model="up/gpt-4o-mini", messages=HI, stream=True)
                    [chunk async for chunk in stream.parse()]
                else:
                    stream = await client.chat.completions.with_raw_response.create(
                        model="up/gpt-4o-mini", messages=HI)
                    assert stream.parse().choices[0].message.content
            # a request id starts with its worker's own random prefix
            workers_seen.add(stream.headers["x-omniroute-request-id"][:12])
        assert len(workers_seen) == 2, "the kernel sent every request to one worker"

        chat = {"endpoint": "chat.completions", "provider": "up", "model": "gpt-4o-mini"}
        for _ in range(6):  # whichever worker answers, it reports both
            status, text, headers = await _get(base + "/metrics")
            assert status == 200, text
            assert headers["Content-Type"].startswith("text/plain")
            samples = _samples(text)

            def value(metric: str, /, **labels: str) -> float | None:
                return samples.get((metric, frozenset(labels.items())))  # noqa: B023

            assert value("omniroute_requests_total", **chat, status="200") == 16
            assert value("omniroute_request_duration_seconds_count", **chat) == 16
            assert value("omniroute_time_to_first_byte_seconds_count", **chat) == 16
            assert value("omniroute_tokens_total", provider="up", model="gpt-4o-mini",
                         type="output") > 0  # type: ignore[operator]
            assert value("omniroute_streams_in_flight") == 0
            assert value("omniroute_usage_records_dropped_total") == 0
            assert value("omniroute_breaker_state", provider="up") == 0

        # the latency summary reads the request log, which both workers write: any worker
        # answers for both (the other's records reach the database within its interval)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin:
            resp = await admin.post(base + "/api/auth/login", json={"password": PASSWORD})
            assert resp.status == 200
            for _ in range(50):
                resp = await admin.get(base + "/api/telemetry/summary")
                assert resp.status == 200, await resp.text()
                providers = (await resp.json())["providers"]
                if providers.get("up", {}).get("count") == 16:
                    break
                await asyncio.sleep(0.1)
            assert providers["up"]["count"] == 16
            assert set(providers["up"]) == {"p50", "p95", "p99", "count"}

        # the multiprocess directory is the run's own, and goes with it
        dirs = {env.split("=", 1)[1]
                for pid in _children(proc.pid)
                for env in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
                if env.startswith("PROMETHEUS_MULTIPROC_DIR=")}
        assert len(dirs) == 1
        (metrics_dir,) = dirs
        assert any(Path(metrics_dir).glob("counter_*.db"))
        assert oct(Path(metrics_dir).stat().st_mode & 0o777) == "0o700"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
    assert code == 0, log.read_text()
    assert not Path(metrics_dir).exists()
    assert "Traceback" not in log.read_text()
