"""SIGTERM under load: ``omniroute serve`` as users run it, 100 requests in flight.

The server stops accepting, lets the requests in flight finish within
``shutdown_grace``, ends the streams still open after it with their format's
error event, and writes every usage record before it exits: each request the
client saw complete is in the database.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from fakes.openai_upstream import FakeOpenAI

from omniroute.config import load_config
from omniroute.startup import open_store

OMNIROUTE_BIN = str(Path(sys.executable).parent / "omniroute")
SECRET = base64.urlsafe_b64encode(b"s" * 32).decode()
GRACE = 3.0
HI = [{"role": "user", "content": "hi there"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _admin_key(data: Path, env: dict[str, str]) -> str:
    """An admin key made in the data directory before the server starts."""
    store = await open_store(load_config(environ=env))
    try:
        _, secret = await store.create_key("admin", {"admin"})
    finally:
        await store.db.close()
    return secret


async def _started(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    seen = ""
    while "serving on" not in seen:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert line, seen
        seen += line
    return seen


async def _one(http: aiohttp.ClientSession, url: str, model: str, stream: bool
               ) -> dict[str, Any]:
    """One client request: its request id, and how it ended as the client saw it."""
    body = {"model": model, "messages": HI, "stream": stream}
    async with http.post(url, json=body) as resp:
        raw = await resp.read()  # raises if the connection broke before the end
        rid = resp.headers.get("X-OmniRoute-Request-Id")
        if not stream:
            return {"id": rid, "status": resp.status, "complete": resp.status == 200
                    and bool(orjson.loads(raw)["choices"])}
        events = [line[6:] for line in raw.decode().splitlines() if line.startswith("data: ")]
        ended = bool(events) and (events[-1] == "[DONE]" or b'"error"' in events[-1].encode())
        return {"id": rid, "status": resp.status, "complete": ended,
                "error": ended and events[-1] != "[DONE]"}


async def test_sigterm_under_100_concurrent_requests_loses_no_record(
        tmp_path: Path, aiohttp_server: Any) -> None:
    quick = FakeOpenAI(api_key="sk-up", chunks=5, delay=0.2)  # ~1 s: within the grace
    slow = FakeOpenAI(api_key="sk-up", chunks=60, delay=0.2)  # ~12 s: cut by the shutdown
    quick_url = str((await aiohttp_server(quick.app)).make_url("/v1"))
    slow_url = str((await aiohttp_server(slow.app)).make_url("/v1"))
    data, port = tmp_path / "data", _free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")},
           "OMNIROUTE_DATA_DIR": str(data), "OMNIROUTE_SECRET_KEY": SECRET,
           "OMNIROUTE_PORT": str(port), "OMNIROUTE_LOG_LEVEL": "warning",
           "OMNIROUTE_SHUTDOWN_GRACE": str(GRACE), "OMNIROUTE_HEDGE": "false",
           "INITIAL_PASSWORD": "test-password-123"}
    admin = {"Authorization": f"Bearer {await _admin_key(data, env)}"}
    proc = await asyncio.create_subprocess_exec(
        OMNIROUTE_BIN, "serve", env=env, stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        await _started(proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
            for prefix, url in (("quick", quick_url), ("slow", slow_url)):
                async with http.post(f"{base}/api/providers", headers=admin, json={
                        "type": "openai", "name": prefix, "prefix": prefix, "base_url": url,
                        "api_key": "sk-up"}) as resp:
                    assert resp.status == 201, await resp.text()
            chat = f"{base}/v1/chat/completions"
            plan = ([("quick/gpt-4o-mini", False)] * 40 + [("quick/gpt-4o-mini", True)] * 40
                    + [("slow/gpt-4o-mini", True)] * 20)
            tasks = [asyncio.create_task(_one(http, chat, model, stream))
                     for model, stream in plan]
            while len(quick.requests) + len(slow.requests) < len(plan):  # all in flight
                await asyncio.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            with pytest.raises(aiohttp.ClientConnectionError):  # no new connections
                async with http.get(f"{base}/api/monitoring/health"):
                    pass
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    seen = [r for r in results if isinstance(r, dict) and r["complete"]]
    assert len(seen) == len(plan), [r for r in results if not isinstance(r, dict)
                                    or not r["complete"]][:3]
    cut = [r for r in seen if r.get("error")]
    assert len(cut) == 20, "the slow streams end with the format's error event"
    with sqlite3.connect(data / "omniroute.sqlite3") as db:
        rows = dict(db.execute("SELECT request_id, status FROM request_log "
                               "WHERE endpoint = 'chat.completions'").fetchall())
        classes = dict(db.execute("SELECT request_id, error_class FROM request_log").fetchall())
    missing = [r["id"] for r in seen if r["id"] not in rows]
    assert not missing, f"{len(missing)} completed requests have no record"
    assert {rows[r["id"]] for r in cut} == {503}
    assert {classes[r["id"]] for r in cut} == {"ShuttingDown"}
    assert {rows[r["id"]] for r in seen if not r.get("error")} == {200}
