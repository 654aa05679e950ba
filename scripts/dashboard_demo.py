"""A gateway with demo data, to look at the dashboard or to take its screenshots.

Starts, in one process on loopback, a fake OpenAI-compatible upstream and a gateway
on a temporary data directory; adds six accounts (all answered by the fake), keys, a
combo and an alias; writes ``--rows`` synthetic usage records over 30 days
(``tests/fakes/usage_rows.py``) and sends a few real requests through the gateway.

    .venv/bin/python scripts/dashboard_demo.py --serve            # then open the URL printed
    .venv/bin/python scripts/dashboard_demo.py --readme           # docs/img/dashboard.png
    .venv/bin/python scripts/dashboard_demo.py --screenshots DIR  # every page, 1280 and 390 px

Screenshots use Playwright with the system's Chromium (``/usr/bin/chromium``, Debian's
``chromium`` package), never a downloaded browser. Nothing here reaches another host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fakes.openai_upstream import FakeOpenAI  # noqa: E402
from fakes.usage_rows import CONNECTIONS, KEYS, MODELS, fill  # noqa: E402

from omniroute.app import make_app  # noqa: E402
from omniroute.config import Config  # noqa: E402

PASSWORD = "demo-password-123"
CHROMIUM = "/usr/bin/chromium"
PAGES = ["overview", "providers", "keys", "models", "usage", "requests", "cache", "resilience",
         "settings", "cli-tools"]
WIDTHS = (1280, 390)


async def start(data_dir: Path, rows: int) -> tuple[str, list[web.AppRunner]]:
    fake = FakeOpenAI(api_key="sk-demo-upstream", latency=0.02,
                      models=[model for model, *_ in MODELS])
    fake_runner = web.AppRunner(fake.app)
    await fake_runner.setup()
    fake_site = web.TCPSite(fake_runner, "127.0.0.1", 0)
    await fake_site.start()
    upstream = f"http://127.0.0.1:{fake_runner.addresses[0][1]}/v1"
    config = Config(data_dir=data_dir, port=0, initial_password=PASSWORD,
                    secret_key=b"d" * 32)
    runner = web.AppRunner(make_app(config))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.post("/api/auth/login", json={"password": PASSWORD}) as resp:
            csrf = {"X-CSRF-Token": (await resp.json())["csrf_token"]}
        ids: dict[str, str] = {}
        for conn_id, prefix, name, _ in CONNECTIONS:
            spec = {"type": "openai", "name": name, "prefix": prefix, "base_url": upstream,
                    "api_key": "sk-demo-upstream", "priority": 1 if name.endswith("home") else 0}
            if name == "openai-work":
                spec.update(max_concurrency=8, rpm=600)
            async with http.post("/api/providers", json=spec, headers=csrf) as resp:
                answer = await resp.json()
                assert resp.status == 201, answer
                ids[conn_id] = answer["id"]
        names = {"key_laptop": "laptop", "key_ci": "ci", "key_claude_code": "claude-code",
                 "key_codex": "codex", "key_team_a": "team-a", "key_team_b": "team-b",
                 "key_batch": "batch"}
        for key in KEYS:
            if key is None:
                continue
            body: dict[str, Any] = {"name": names[key]}
            if key == "key_ci":
                body["limits"] = {"daily_usd": 5, "monthly_usd": 50,
                                  "models": ["groq/*", "openai/gpt-4.1-mini"]}
            if key == "key_team_a":
                body.update(limits={"monthly_usd": 200, "rpm": 120}, expires_at="90d")
            async with http.post("/api/keys", json=body, headers=csrf) as resp:
                ids[key] = (await resp.json())["id"]
        await http.post("/api/combos", headers=csrf, json={
            "name": "coder", "strategy": "priority",
            "steps": ["anthropic/claude-sonnet-4-5", "openai/gpt-4.1",
                      "groq/llama-3.3-70b-versatile"]})
        await http.post("/api/combos", headers=csrf, json={
            "name": "cheap", "strategy": "cost-optimized",
            "steps": ["groq/qwen3-32b", "openai/gpt-4o-mini", "gemini/gemini-2.5-flash"]})
        await http.post("/api/models/alias", headers=csrf,
                        json={"alias": "fast", "target": "groq/llama-3.3-70b-versatile"})
        db_path = data_dir / "omniroute.sqlite3"
        took = fill(db_path, rows, ids=ids)
        print(f"{rows:,} usage records written in {took:.1f} s", file=sys.stderr)
        for model in ("coder", "openai/gpt-4.1-mini", "fast", "groq/qwen3-32b"):
            await http.post("/v1/chat/completions", json={
                "model": model, "messages": [{"role": "user", "content": "Hello there"}]})
    return base, [runner, fake_runner]


async def screenshots(base: str, out: Path, *, readme: Path | None) -> None:
    from playwright.async_api import async_playwright

    out.mkdir(parents=True, exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM)
        try:
            for width in WIDTHS:
                page = await browser.new_page(viewport={"width": width, "height": 860},
                                              color_scheme="light")
                await page.goto(f"{base}/dashboard")
                await page.fill("input[name=password]", PASSWORD)
                await page.click("button[type=submit]")
                for view in PAGES:
                    await page.goto(f"{base}/dashboard/{view}")
                    await page.wait_for_selector(f"[data-page='{view}'] > *")
                    await page.wait_for_timeout(400)
                    await page.screenshot(path=str(out / f"{view}-{width}.png"), full_page=True)
                if readme is not None and width == WIDTHS[0]:
                    await page.goto(f"{base}/dashboard/usage?range=7d&by=model&metric=cost_usd")
                    await page.wait_for_selector(".chart svg path.line")
                    await page.wait_for_timeout(400)
                    readme.parent.mkdir(parents=True, exist_ok=True)
                    await page.screenshot(path=str(readme))
                await page.close()
        finally:
            await browser.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="synthetic usage records")
    parser.add_argument("--serve", action="store_true", help="keep serving until Ctrl-C")
    parser.add_argument("--screenshots", type=Path, help="save every page's screenshot here")
    parser.add_argument("--readme", action="store_true", help="write docs/img/dashboard.png")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omniroute-demo-") as tmp:
        base, runners = await start(Path(tmp), args.rows)
        try:
            if args.screenshots or args.readme:
                await screenshots(base, args.screenshots or Path(tmp) / "shots",
                                  readme=ROOT / "docs/img/dashboard.png" if args.readme else None)
            if args.serve:
                print(f"{base}/dashboard  (password: {PASSWORD}); Ctrl-C to stop", flush=True)
                await asyncio.Event().wait()
        finally:
            for runner in runners:
                await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends --serve
        asyncio.run(main())
