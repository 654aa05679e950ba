"""What ``omniroute serve`` imports: no heavy module the configuration does not use.

Each of these costs the gateway resident memory for good (measured: genai-prices
with pydantic 15 MiB, numpy 11 MiB, cryptography 6.6 MiB, yaml and tomlkit 2 MiB,
prometheus-client 1 MiB, multiprocessing 0.4 MiB, zoneinfo 0.3 MiB).
The test runs the real start-up path (``prepare``, the price table's child process,
a worker with every installed plugin) in a child process, serves one chat
completion through it from an upstream speaking OpenAI's wire format, and lists
what was imported.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

#: module -> why the gateway must not import it while serving
HEAVY = {
    "pydantic": "genai-prices' prices come from the table in the data directory",
    "genai_prices": "imported only while the price_updates setting is on",
    "httpx": "genai-prices' updater's client",
    "yaml": "written only by `omniroute connect` (clitools)",
    "tomlkit": "written only by `omniroute connect` (clitools)",
    "numpy": "the semantic cache's embedder loads only when semantic_cache is on",
    "torch": "the semantic cache's model",
    "faiss": "the semantic cache's index",
    "asyncpg": "the postgres plugin connects only for a database_url",
    "opentelemetry.sdk": "the otel plugin traces only with an OTLP endpoint",
    # light, but for good in every gateway (measured RSS): imported where they are used
    "zoneinfo": "only a Code Assist quota's reset time needs it (0.3 MiB with sysconfig)",
    "multiprocessing": "the semantic cache's encoder process, and --workers' parent (0.4 MiB)",
    "prometheus_client": "one process counts in plain numbers until the first scrape "
                         "(1 MiB with the http.server, wsgiref and gzip it imports)",
    "frozenlist._frozenlist": "its C++ build maps libstdc++ (1.0 MiB); omniroute.lean "
                              "imports the pure-Python one",
    "omniroute_redis.backend": "the redis plugin's types import their implementation "
                               "when made (0.7 MiB with hiredis)",
    "omniroute_redis.cache": "the redis plugin's types import their implementation when made",
    "hiredis": "the redis plugin's wire protocol, imported with its backends",
    # omniroute's own code that serving never runs: imported by its command or route
    "omniroute.doctor": "`omniroute doctor` and POST /api/system/env/repair only",
    **{f"omniroute.cli.{name}": f"only `omniroute {name}` runs it (cli.LAZY_COMMANDS)"
       for name in ("admin", "budget", "cache", "combos", "connect", "doctor", "keys", "login",
                    "observe", "plugins", "providers", "usage")},
    "omniroute.cli.audit": "only the CLI's configuration commands write their audit entries",
    **{f"omniroute.web.{name}": "the management API's handlers load on their routes' first "
       "call (omniroute.web.routes)" for name in (
           "management", "budgets", "cache", "system", "resilience", "pricing", "telemetry",
           "clitools", "dashboard_api")},
    "omniroute.clitools": "only /api/cli-tools and `omniroute connect` edit the agent CLIs",
    "omniroute.settings_doc": "only GET /api/settings/schema and the docs describe settings",
}
if sys.platform == "linux":  # the vault's AES-GCM is OpenSSL's through _ssl (omniroute.aesgcm)
    HEAVY["cryptography"] = "the vault seals and opens credentials with _ssl's OpenSSL"

CHILD = textwrap.dedent('''
    import asyncio, json, sys, urllib.request

    import omniroute.cli  # what `python -m omniroute.cli serve` imports (first, as it does)

    from aiohttp import web
    from omniroute import server
    from omniroute.config import load_config

    data_dir, port, up_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = load_config(data_dir=data_dir, port=port, loop="asyncio")
    server.setup_logging("warning")
    asyncio.run(server.prepare(config))
    server.write_price_table(config)  # in a child process, as serve does
    USAGE = {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}

    async def answer(request):
        body = await request.json()
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": body["model"], "usage": USAGE,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hello"}}]})

    def ask():
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat/completions", method="POST",
            headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "up/gpt-4o-mini",
                             "messages": [{"role": "user", "content": "hi"}]}).encode())
        with urllib.request.urlopen(request, timeout=20) as resp:
            return json.load(resp)

    async def main():
        upstream = web.Application()
        upstream.router.add_post("/v1/chat/completions", answer)
        runner = web.AppRunner(upstream, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", up_port).start()
        stop = asyncio.Event()
        worker = asyncio.create_task(server.run_worker(config, stop=stop))
        try:
            for _ in range(200):  # bounded: 20 s
                try:
                    reply = await asyncio.to_thread(ask)
                    break
                except OSError:
                    if worker.done():
                        raise
                    await asyncio.sleep(0.1)
            else:
                raise TimeoutError("the gateway did not answer")
        finally:
            stop.set()
            await worker
            await runner.cleanup()
        return reply

    reply = asyncio.run(main())
    print(json.dumps({"reply": reply["choices"][0]["message"]["content"],
                      "modules": sorted(sys.modules)}))
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serving_imports_no_heavy_module_the_configuration_does_not_use(tmp_path: Path
                                                                         ) -> None:
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # this test run's omniroute
    env["INITIAL_PASSWORD"] = "memory-test-password"
    up_port, port = free_port(), free_port()
    cli = [sys.executable, "-m", "omniroute.cli", "--data-dir", str(data)]
    subprocess.run([*cli, "providers", "add", "--type", "openai", "--name", "up", "--prefix",
                    "up", "--base-url", f"http://127.0.0.1:{up_port}/v1",
                    "--api-key", "sk-up"], env=env, check=True, capture_output=True,
                   timeout=60)
    done = subprocess.run([sys.executable, "-c", CHILD, str(data), str(port), str(up_port)],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["reply"] == "hello"  # a request really went through
    loaded = set(out["modules"])
    assert "omniroute.pricing.table" in loaded and "omniroute.gateway" in loaded
    assert list(data.glob("genai-prices-*.json"))  # the child process wrote the table
    wrong = {name: why for name, why in HEAVY.items() if name in loaded}
    assert not wrong, f"serve imported modules it does not need: {wrong}"
