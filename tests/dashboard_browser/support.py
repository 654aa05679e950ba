"""What the dashboard's browser tests share: the pages and where their screenshots go, a
temporary home for the agent CLIs, and a tab that signs in, shows a page and saves its
screenshot (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PASSWORD = "test-password-123"
ARTIFACTS = Path(os.environ.get("OMNIROUTE_ARTIFACTS")
                 or Path(__file__).resolve().parents[2] / ".artifacts") / "dashboard"
VIEWS = {"overview": "Overview", "providers": "Providers and accounts", "keys": "API keys",
         "models": "Models", "usage": "Usage and cost", "requests": "Request log",
         "cache": "Response cache", "resilience": "Resilience", "settings": "Settings",
         "cli-tools": "CLI tools"}
WIDTHS = (1280, 390)


def tool_home(tmp_path: Path) -> dict[str, str]:
    """A home with Claude Code's settings and a ``claude`` on PATH that prints its version."""
    home, bin_dir = tmp_path / "home", tmp_path / "bin"
    (home / ".claude").mkdir(parents=True, exist_ok=True)
    (home / ".claude" / "settings.json").write_text('{"theme": "light"}\n')
    bin_dir.mkdir(exist_ok=True)
    claude = bin_dir / "claude"
    claude.write_text('#!/bin/sh\necho "2.1.0 (Claude Code)"\n')
    claude.chmod(0o755)
    return {"HOME": str(home), "PATH": str(bin_dir)}


class Tab:
    """A page, the uncaught script errors it raised, and what it (or a tab it opened)
    asked of a host other than this machine: refused, never sent."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.elsewhere: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    async def stay_local(self, route: Any) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            self.elsewhere.append(route.request.url)
            await route.abort()


async def open_tab(browser: Any, width: int = 1280, scheme: str = "light") -> Tab:
    context = await browser.new_context(viewport={"width": width, "height": 900},
                                        color_scheme=scheme)
    context.set_default_timeout(10_000)
    tab = Tab(await context.new_page())
    await context.route("**/*", tab.stay_local)
    return tab


async def sign_in(tab: Tab, base: str) -> None:
    page = tab.page
    await page.goto(f"{base}/dashboard")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form button[type=submit]")
    await page.wait_for_selector("[data-page=overview] h1")


async def show(tab: Tab, base: str, view: str) -> None:
    await tab.page.goto(f"{base}/dashboard/{view}")
    await tab.page.wait_for_selector(f"[data-page='{view}'] h1:text('{VIEWS[view]}')")


async def screenshot(tab: Tab, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await tab.page.wait_for_timeout(150)  # charts draw on the next frame
    await tab.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
