"""The dashboard in a real browser: Debian's Chromium driven by Playwright for Python.

Covers signing in, adding a provider (tested first), creating a key (shown once, then
only its prefix), building a combo (with the API's validation message shown beside the
step), a request sent through the gateway then seen in the request log (each attempt
and why it failed) and in the usage chart and its CSV, API errors shown in the page, a
state change without the CSRF token refused, subscription sign-in (device, paste and
loopback flows against fake OAuth servers), the CLI tools page in a temporary home
(configure and restore Claude Code), resilience reset and cache clearing, keyboard
use, the dark theme, and every page at 1280 and 390 px wide (no sideways scrolling).
Each page's screenshot is saved under ``.artifacts/dashboard/`` (``OMNIROUTE_ARTIFACTS``
overrides), at both widths. The ``chromium_path`` fixture (``tests/conftest.py``)
installs Chromium with apt-get when it is missing, or skips these tests saying what is
missing.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from fakes import openai_upstream

from omniroute.testing import GatewayHarness, make_test_config, start_harness

pytestmark = pytest.mark.browser

PASSWORD = "test-password-123"
ARTIFACTS = Path(os.environ.get("OMNIROUTE_ARTIFACTS")
                 or Path(__file__).resolve().parent.parent / ".artifacts") / "dashboard"
VIEWS = {"overview": "Overview", "providers": "Providers and accounts", "keys": "API keys",
         "models": "Models", "usage": "Usage and cost", "requests": "Request log",
         "cache": "Response cache", "resilience": "Resilience", "settings": "Settings",
         "cli-tools": "CLI tools"}
WIDTHS = (1280, 390)


@pytest.fixture
async def omniroute(aiohttp_client: Any, tmp_path: Path) -> GatewayHarness:
    """The gateway of these tests (``gw`` in conftest.py builds on it): the agent CLIs it
    finds and configures are those of a temporary home, never the machine's own."""
    return await start_harness(aiohttp_client, make_test_config(tmp_path / "omniroute").replace(
        tool_env=tool_home(tmp_path)))


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


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium_path)
        try:
            yield launched
        finally:
            await launched.close()


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


# ----------------------------------------------------------------------------- the main path

async def test_sign_in_provider_key_combo_request_log_and_chart(gw: Any, browser: Any) -> None:
    base = gw.base_url
    tab = await open_tab(browser)
    page = tab.page

    # a browser asking for / is sent to the dashboard, which asks for the password
    await page.goto(f"{base}/")
    assert page.url == f"{base}/dashboard"
    await page.fill("input[name=password]", "not-the-password")
    await page.click("form button[type=submit]")
    await page.wait_for_selector(".error-box:text('Wrong password.')")  # the API's own message
    await screenshot(tab, "login-1280")
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form button[type=submit]")
    await page.wait_for_selector("[data-page=overview] h1")
    assert "omniroute_session" not in await page.evaluate("document.cookie")  # HttpOnly

    # add a provider from the dialog: a bad prefix is refused in the API's words, then a
    # test of the connection, then the account in the table
    await show(tab, base, "providers")
    await page.click("button:text('Add provider')")
    dialog = page.locator("dialog")
    await dialog.locator("select[name=service]").select_option("type:openai")
    await dialog.locator("input[name=name]").fill("browser-added")
    await dialog.locator("input[name=prefix]").fill("bad/prefix")
    await dialog.locator("input[name=base_url]").fill(gw.fake.base_url)
    await dialog.locator("input[name=api_key]").fill("sk-upstream-test")
    await dialog.locator("button[type=submit]").click()
    await dialog.locator(".error-box:text('prefix must be')").wait_for()
    assert await dialog.locator("input[name=prefix]").get_attribute("aria-invalid") == "true"
    await dialog.locator("input[name=prefix]").fill("br")
    await dialog.locator("button:text('Test connection')").click()
    await dialog.locator(".success-box:text('It works')").wait_for()
    await dialog.locator("button[type=submit]").click()
    await page.wait_for_selector("dialog", state="detached")
    await page.wait_for_selector("td:has-text('browser-added')")
    assert any(c["name"] == "browser-added" and c["prefix"] == "br"
               for c in (await (await gw.client.get("/api/providers", headers=gw.admin_headers))
                         .json())["providers"])
    await screenshot(tab, "providers-added-1280")

    # create a key: shown once, then only its prefix
    await show(tab, base, "keys")
    await page.click("button:text('Create key')")
    await page.fill("dialog input[name=name]", "browser-key")
    await page.fill("dialog input[name=daily_usd]", "5")
    await page.click("dialog button[type=submit]")
    secret = (await page.locator("dialog code[data-secret]").inner_text()).strip()
    assert secret.startswith("sk-") and len(secret) > 30
    await screenshot(tab, "key-shown-once-1280")
    await page.click("dialog button:text('I stored it')")
    await page.wait_for_selector("dialog", state="detached")
    row = page.locator("tr", has_text="browser-key")
    prefix = (await row.locator("code[data-key-prefix]").inner_text()).rstrip("…")
    assert secret.startswith(prefix) and len(prefix) < len(secret) / 2
    assert secret not in await page.content()
    await page.reload()
    await page.wait_for_selector("td:has-text('browser-key')")
    assert secret not in await page.content()

    # build a combo: a step that does not resolve is refused beside that step; reorder
    await show(tab, base, "models")
    await page.click("button:text('New combo')")
    await page.fill("input[name=combo-name]", "duo")
    await page.fill("input[data-step='1']", "up/gpt-4o-mini")
    await page.fill("input[data-step='2']", "nowhere/model-x")
    await page.click("button:text('Create combo')")
    invalid = page.locator("li.step[aria-invalid=true]")
    await invalid.locator(".field-error:text('step 2')").wait_for()
    assert await invalid.get_attribute("data-index") == "2"
    await page.fill("input[data-step='2']", "up/gpt-4o")
    await page.click("button[aria-label='Move step 2 up']")
    assert await page.input_value("input[data-step='1']") == "up/gpt-4o"
    await page.click("button:text('Create combo')")
    await page.wait_for_selector("td code:text('duo')")
    combos = (await (await gw.client.get("/api/combos", headers=gw.admin_headers)).json())
    assert [c["steps"] for c in combos["combos"] if c["name"] == "duo"] == [
        ["up/gpt-4o", "up/gpt-4o-mini"]]
    await screenshot(tab, "combo-built-1280")

    # a request through the gateway with the new key, on the combo: its first step
    # fails upstream, the second answers
    gw.fake.script.append(openai_upstream.error(503, "the upstream is overloaded"))
    async with aiohttp.ClientSession() as http, http.post(
            f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {secret}"},
            json={"model": "duo", "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status == 200, await resp.text()

    # ... in the request log, with its attempt
    await show(tab, base, "requests")
    await page.wait_for_selector("td .cell-main:text('duo')")
    await page.click("td .cell-main:text('duo')")
    detail = page.locator("dialog")
    attempts = detail.locator("ol.attempts li")
    await attempts.first.wait_for()
    assert await attempts.count() == 2
    first, second = await attempts.nth(0).inner_text(), await attempts.nth(1).inner_text()
    assert "up/gpt-4o" in first and "503" in first and "the upstream is overloaded" in first
    assert "up/gpt-4o-mini" in second and "answered" in second
    await screenshot(tab, "request-detail-1280")
    await page.keyboard.press("Escape")
    await page.wait_for_selector("dialog", state="detached")

    # ... and in the usage chart (a line for its model) and table
    await show(tab, base, "usage")
    await page.wait_for_selector(".chart svg path.line")
    assert await page.locator("table td .cell-main:text-is('gpt-4o-mini')").count() == 1
    legend = await page.locator(".legend").inner_text()
    assert "gpt-4o-mini" in legend
    async with page.expect_download() as downloading:  # the table as CSV
        await page.click("button:text('Export table (CSV)')")
    download = await downloading.value
    assert download.suggested_filename == "omniroute-usage-by-model.csv"
    lines = Path(await download.path()).read_text().splitlines()
    assert lines[0].startswith("model,requests,errors,tokens_in,tokens_out,")
    assert [line.split(",")[:2] for line in lines[1:]] == [["gpt-4o-mini", "1"]]
    assert tab.errors == []


async def test_a_state_change_without_the_csrf_token_is_refused(gw: Any, browser: Any) -> None:
    tab = await open_tab(browser)
    await sign_in(tab, gw.base_url)
    script = """async ([withToken]) => {
        const session = await (await fetch('/api/auth/session')).json();
        const headers = {'Content-Type': 'application/json'};
        if (withToken) headers['X-CSRF-Token'] = session.csrf_token;
        const r = await fetch('/api/settings', {method: 'PATCH', headers,
                                                body: JSON.stringify({max_attempts: 3})});
        return [r.status, await r.json()];
    }"""
    status, body = await tab.page.evaluate(script, [False])
    assert status == 403 and body["error"]["code"] == "csrf_token_invalid"
    assert gw.catalog.settings.max_attempts != 3
    status, body = await tab.page.evaluate(script, [True])
    assert status == 200 and gw.catalog.settings.max_attempts == 3


async def test_the_settings_page_shows_every_setting_and_the_api_refusal(
        gw: Any, browser: Any) -> None:
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, gw.base_url)
    await show(tab, gw.base_url, "settings")
    names = await page.locator(".setting").evaluate_all("els => els.map(e => e.dataset.name)")
    assert set(names) == set(gw.catalog.settings.as_dict())
    hedge = page.locator(".setting[data-name=hedge_floor]")
    assert re.search(r"default 2\b", await hedge.inner_text())
    await page.fill("#setting-max_attempts", "0")
    await page.click("button:text('Save changes')")
    error = page.locator(".setting[data-name=max_attempts] .field-error")
    await error.wait_for()
    assert "max_attempts" in await error.inner_text()
    await page.fill("#setting-max_attempts", "4")
    await page.click("button:text('Save changes')")
    await page.wait_for_selector(".toast:text('Saved 1 setting')")
    assert gw.catalog.settings.max_attempts == 4


async def test_cli_tools_configure_and_restore_claude_code(gw: Any, browser: Any) -> None:
    """The CLI tools page against /api/cli-tools: the tool found in the (temporary) home,
    a refused key shown beside its field, Claude Code configured with a new key (its
    settings.json checked field by field), then restored byte for byte; a custom tool
    added, and what to set by hand for it."""
    settings = Path(gw.catalog.config.tool_env["HOME"]) / ".claude" / "settings.json"
    before = settings.read_bytes()
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, gw.base_url)
    await show(tab, gw.base_url, "cli-tools")
    row = page.locator("tr", has_text="Claude Code")
    await row.locator(".badge:text('installed')").wait_for()
    assert "2.1.0" in await row.inner_text()
    assert await page.locator("[data-unavailable]").count() == 0

    await row.locator("[data-configure=claude-code]").click()
    dialog = page.locator("dialog")
    await dialog.locator("input[name=model]").fill("up/gpt-4o-mini")
    await dialog.locator("label:text('Use a key I have')").click()
    await dialog.locator("input[name=key]").fill("sk-not-a-key-of-this-gateway")
    await dialog.locator("button[type=submit]").click()
    await dialog.locator(".field-error:has-text('key')").wait_for()
    assert await dialog.locator("input[name=key]").get_attribute("aria-invalid") == "true"
    assert settings.read_bytes() == before  # nothing written
    await dialog.locator("label:text('Create a new key')").click()
    await dialog.locator("button[type=submit]").click()
    done = dialog.locator("[data-configured=claude-code]")
    await done.wait_for()
    assert str(settings) in await done.inner_text()
    await screenshot(tab, "cli-tools-configured-1280")
    written = json.loads(settings.read_text())
    env = written["env"]
    assert written["theme"] == "light"  # the rest of the file kept
    assert env["ANTHROPIC_BASE_URL"] == gw.base_url and env["ANTHROPIC_MODEL"] == "up/gpt-4o-mini"
    assert env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] == "up/gpt-4o-mini"
    token = env["ANTHROPIC_AUTH_TOKEN"]
    assert token not in await page.content()  # shown masked only
    keys = (await (await gw.client.get("/api/keys", headers=gw.admin_headers)).json())["keys"]
    assert any(k["name"] == "cli:claude-code" and token.startswith(k["key_prefix"]) for k in keys)
    async with aiohttp.ClientSession() as http, http.post(  # the written key works
            f"{env['ANTHROPIC_BASE_URL']}/v1/messages",
            headers={"Authorization": f"Bearer {token}"},
            json={"model": env["ANTHROPIC_MODEL"], "max_tokens": 16,
                  "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status == 200, await resp.text()
    await page.keyboard.press("Escape")
    await page.wait_for_selector("dialog", state="detached")
    await row.locator(".badge:text('uses omniroute')").wait_for()

    await row.locator("[data-restore=claude-code]").click()
    await page.click("dialog button:text-is('Restore')")
    await page.wait_for_selector(".toast:has-text('1 file put back')")
    assert settings.read_bytes() == before
    await row.locator(".badge:text('not yet')").wait_for()

    # a custom tool: added from the page, then what to set by hand (nothing is written)
    await page.click("button:text('Add a custom tool')")
    await page.fill("dialog input[name=name]", "Wrapped Claude")
    await page.fill("dialog input[name=binary]", "bad name!")
    await page.click("dialog button[type=submit]")
    refusal = page.locator("dialog .error-box")
    await refusal.wait_for()
    assert "looked up on PATH" in await refusal.inner_text()  # the API's own words
    await page.fill("dialog input[name=binary]", "claude")
    await page.click("dialog button[type=submit]")
    await page.wait_for_selector("dialog", state="detached")
    custom = page.locator("tr", has_text="Wrapped Claude")
    await custom.locator(".badge:text('custom')").wait_for()
    await custom.locator("button:text('How to set up')").click()
    await page.fill("dialog input[name=model]", "up/gpt-4o-mini")
    await page.click("dialog button[type=submit]")
    note = page.locator("dialog [data-by-hand]")
    await note.wait_for()
    assert gw.base_url in await note.inner_text()
    assert tab.errors == []


# ----------------------------------------------------------------------------- sign-in

@pytest.fixture
async def oauth_gw(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path) -> Any:
    """A gateway whose sign-in services are the real Qwen (device flow) and Claude
    (paste flow) services with their endpoints on fake OAuth servers, and one whose
    device endpoint does not answer."""
    from dataclasses import replace

    from fakes.oauth_server import FakeOAuthServer

    from omniroute import hookimpl
    from omniroute.plugins import load_plugins
    from omniroute.providers.claude_code import CLAUDE
    from omniroute.providers.codex import SERVICE as CODEX
    from omniroute.providers.qwen import QWEN

    device = FakeOAuthServer(client_id=QWEN.client_id, encoding="form", device_interval=0.05)
    device.base_url = str((await aiohttp_server(device.app)).make_url("")).rstrip("/")
    paste = FakeOAuthServer(
        client_id=CLAUDE.client_id, redirect_uri=CLAUDE.redirect_uri, encoding="json",
        mode="paste", token_path="/v1/oauth/token", required_params={"code": "true"},
        state_in_token=True, prefix="sk-ant-oat01",
        token_extra={"account": {"uuid": "acc-1", "email_address": "dev@example.com"}})
    paste.base_url = str((await aiohttp_server(paste.app)).make_url("")).rstrip("/")
    with socket.socket() as closed:  # ports nothing listens on (the listener takes one)
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}"
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        callback = f"http://localhost:{free.getsockname()[1]}/auth/callback"
    loop = FakeOAuthServer(client_id=CODEX.client_id, encoding="form", mode="redirect",
                           redirect_uri=callback)
    loop.base_url = str((await aiohttp_server(loop.app)).make_url("")).rstrip("/")

    class Services:
        @hookimpl
        def register_oauth_services(self, register: Any) -> None:
            register(replace(QWEN, name="qwen-test", title="Qwen (test)",
                             device_url=f"{device.base_url}/oauth/device/code",
                             token_url=f"{device.base_url}/oauth/token"))
            register(replace(CLAUDE, name="claude-test", title="Claude (test)",
                             authorize_url=f"{paste.base_url}/oauth/authorize",
                             token_url=f"{paste.base_url}/v1/oauth/token"))
            register(replace(CODEX, name="codex-test", title="ChatGPT (test)",
                             authorize_url=f"{loop.base_url}/oauth/authorize",
                             token_url=f"{loop.base_url}/oauth/token", redirect_uri=callback))
            register(replace(QWEN, name="down-test", title="Down (test)",
                             device_url=f"{nowhere}/device", token_url=f"{nowhere}/token"))

    harness = await start_harness(
        aiohttp_client, make_test_config(tmp_path / "gw").replace(tool_env=tool_home(tmp_path)),
        load_plugins(extra=[("dashboard-oauth-test", Services())]))
    harness.device, harness.paste, harness.loop = device, paste, loop
    return harness


async def connections(gw: Any) -> list[dict[str, Any]]:
    resp = await gw.client.get("/api/providers", headers=gw.admin_headers)
    return list((await resp.json())["providers"])


async def test_a_device_sign_in_shows_the_code_and_finishes_by_polling(
        oauth_gw: Any, browser: Any) -> None:
    """At 390 px: the device code and the verification address in the dialog, done once
    the user approved (the page polls); a refusal shown in the dialog, then a new
    start; a service that cannot be reached shown in the card."""
    gw, fake = oauth_gw, oauth_gw.device
    tab = await open_tab(browser, 390)
    page = tab.page
    await sign_in(tab, gw.base_url)
    await show(tab, gw.base_url, "providers")
    await page.fill("input[name=account-name]", "qwen box")
    await page.click("button[data-service=qwen-test]")
    dialog = page.locator("dialog")
    code = (await dialog.locator("[data-user-code]").inner_text()).strip()
    assert code in fake.user_codes  # the code the service issued
    link = dialog.locator("a[data-verification]")
    assert await link.inner_text() == f"{fake.base_url}/activate"
    assert await link.get_attribute("href") == f"{fake.base_url}/activate?user_code={code}"
    await dialog.locator(":text('Waiting for the approval')").wait_for()
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1
    await screenshot(tab, "sign-in-device-390")
    fake.approve(code)
    await page.wait_for_selector("dialog", state="detached")
    await page.wait_for_selector(".toast:text('Signed in to Qwen (test) as qwen box.')")
    await page.wait_for_selector("td:has-text('qwen box')")
    [conn] = [c for c in await connections(gw) if c["name"] == "qwen box"]
    assert conn["type"] == "qwen" and conn["oauth"]["status"] == "active"
    stored = await gw.store.get_connection(conn["id"])
    assert fake.is_valid(stored.credentials["access_token"])

    # the user refuses: the API's error in the dialog, and a way to start again
    await page.fill("input[name=account-name]", "")
    await page.click("button[data-service=qwen-test]")
    refused = (await dialog.locator("[data-user-code]").inner_text()).strip()
    fake.deny(refused)
    error = dialog.locator(".error-box")
    await error.wait_for()
    assert "access_denied" in await error.inner_text()
    await dialog.locator("button:text('Start again')").click()
    await dialog.locator("[data-user-code]").wait_for()
    again = (await dialog.locator("[data-user-code]").inner_text()).strip()
    assert again != refused and again in fake.user_codes
    await page.keyboard.press("Escape")
    await page.wait_for_selector("dialog", state="detached")

    # a service that does not answer: the start's failure shown beside its button
    await page.click("button[data-service=down-test]")
    card = page.locator("section[aria-labelledby=oauth-head] .error-box")
    await card.wait_for()
    assert "Down (test)" in await card.inner_text()
    assert await page.locator("dialog").count() == 0
    assert tab.errors == [] and tab.elsewhere == []


async def test_a_paste_sign_in_opens_the_page_and_takes_the_pasted_code(
        oauth_gw: Any, browser: Any) -> None:
    """Claude's flow: the dialog links the authorization page (opened in a tab, which
    shows CODE#STATE), a wrong code is refused beside the field in the API's words, the
    right one stores the account under the name the service gave."""
    gw, fake = oauth_gw, oauth_gw.paste
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, gw.base_url)
    await show(tab, gw.base_url, "providers")
    await page.click("button[data-service=claude-test]")
    dialog = page.locator("dialog")
    link = dialog.locator("a[data-signin-url]")
    url = await link.get_attribute("href")
    assert url is not None and url.startswith(f"{fake.base_url}/oauth/authorize?")
    assert "code=true" in url and "code_challenge=" in url
    await screenshot(tab, "sign-in-paste-1280")
    async with page.context.expect_page() as opened:
        await link.click()
    service_page = await opened.value
    await service_page.wait_for_load_state()
    shown = (await service_page.inner_text("body")).strip()
    await service_page.close()
    code, _, state = shown.partition("#")
    assert code and state

    await dialog.locator("input[name=code]").fill(f"not-the-code#{state}")
    await dialog.locator("button:text('Finish sign-in')").click()
    error = dialog.locator(".field-error")
    await error.wait_for()
    assert "invalid_grant" in await error.inner_text()
    await dialog.locator("input[name=code]").fill(shown)
    await dialog.locator("button:text('Finish sign-in')").click()
    await page.wait_for_selector("dialog", state="detached")
    await page.wait_for_selector(".toast:text('Signed in to Claude (test) as dev@example.com.')")
    row = page.locator("tr", has_text="dev@example.com")
    await row.locator(".badge:text('signed in')").wait_for()
    [conn] = [c for c in await connections(gw) if c["name"] == "dev@example.com"]
    assert conn["type"] == "claude-code"

    # its refresh token is refused later: the account needs a new sign-in, and the row's
    # "Sign in again" renews that same account
    stored = await gw.store.get_connection(conn["id"])
    stored.credentials["sign_in_required"] = {"reason": "the refresh token was revoked"}
    await gw.store.save_connection(stored)
    await gw.gateway.reload()
    await page.reload()
    await row.locator(".badge:text('needs sign-in')").wait_for()
    # the built-in Claude service makes claude-code accounts too: one button each
    assert await row.locator("button:text('Sign in again:')").count() == 2
    await row.locator("button:text('Sign in again: Claude (test)')").click()
    async with page.context.expect_page() as opened:
        await dialog.locator("a[data-signin-url]").click()
    service_page = await opened.value
    await service_page.wait_for_load_state()
    pasted = (await service_page.inner_text("body")).strip()
    await service_page.close()
    await dialog.locator("input[name=code]").fill(pasted)
    await dialog.locator("button:text('Finish sign-in')").click()
    await page.wait_for_selector(
        ".toast:text('Signed in again to Claude (test) as dev@example.com.')")
    await row.locator(".badge:text('signed in')").wait_for()
    renewed = await gw.store.get_connection(conn["id"])  # the same account, new tokens
    assert "sign_in_required" not in renewed.credentials
    assert fake.is_valid(renewed.credentials["access_token"])
    assert len([c for c in await connections(gw) if c["type"] == "claude-code"]) == 1
    assert tab.errors == [] and tab.elsewhere == []


async def test_a_cooled_account_is_reset_and_the_cache_cleared(gw: Any, browser: Any) -> None:
    """Resilience: an account cooling down after a 429 is put back by its Reset button.
    Cache: a repeated deterministic request is seen as an entry with its hit, and
    'Clear the cache' empties it."""
    chat = f"{gw.base_url}/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    async with aiohttp.ClientSession() as http:
        for _ in range(2):  # the second answer comes from the cache
            async with http.post(chat, json={"model": "up/gpt-4o-mini", "temperature": 0,
                                             "messages": hi}) as resp:
                assert resp.status == 200
        gw.fake.script.append(openai_upstream.error(429, "slow down",
                                                    headers={"Retry-After": "300"}))
        async with http.post(chat, json={"model": "up/gpt-4o", "messages": hi}) as resp:
            assert resp.status == 429
    await gw.cache.settled()
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, gw.base_url)

    await show(tab, gw.base_url, "resilience")
    row = page.locator("tr", has_text="fake")
    await row.locator(":text('cooling until')").wait_for()
    await row.locator("button:text('Reset')").click()
    await page.wait_for_selector(".toast:text('Account reset.')")
    await row.locator(".badge:text-is('healthy')").wait_for()
    [live] = (await (await gw.client.get("/api/rate-limits", headers=gw.admin_headers))
              .json())["connections"]
    assert live["status"] == "healthy" and not live["cooling_until"]

    await show(tab, gw.base_url, "cache")
    entry = page.locator("tr", has_text="gpt-4o-mini")
    await entry.wait_for()
    assert "1" in await entry.locator("td.num").first.inner_text()  # its hit
    await page.click("button:text('Clear the cache')")
    await page.click("dialog button:text-is('Clear')")
    await page.wait_for_selector(".toast:text('The cache is empty.')")
    await page.wait_for_selector("td.empty:has-text('The cache is empty')")
    assert tab.errors == []


async def test_require_login_off_opens_the_dashboard_on_this_machine(
        gw: Any, browser: Any) -> None:
    await gw.set_settings(require_login=False)
    tab = await open_tab(browser)
    await tab.page.goto(f"{gw.base_url}/dashboard/keys")
    await tab.page.wait_for_selector("[data-page=keys] h1")
    assert await tab.page.locator("input[name=password]").count() == 0


@pytest.mark.parametrize("width", WIDTHS)
async def test_every_page_at_both_widths(gw: Any, browser: Any, width: int) -> None:
    """Each page renders with its data, fits the width (no sideways scrolling), raises
    no script error, and is saved as a screenshot; keyboard navigation and the dark
    theme work."""
    async with aiohttp.ClientSession() as http:  # something to show
        for model in ("up/gpt-4o-mini", "up/gpt-4o", "up/nope"):
            await http.post(f"{gw.base_url}/v1/chat/completions",
                            json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    tab = await open_tab(browser, width)
    page = tab.page
    await sign_in(tab, gw.base_url)
    for view in VIEWS:
        await show(tab, gw.base_url, view)
        await page.wait_for_load_state("networkidle")
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 1, f"{view} scrolls sideways by {overflow}px at {width}px"
        await screenshot(tab, f"{view}-{width}")
    # keyboard: the navigation is links; Enter on one opens its page
    await show(tab, gw.base_url, "overview")
    if width < 760:
        await page.focus("#nav-toggle")
        await page.keyboard.press("Enter")
    await page.focus("nav a[data-view=keys]")
    await page.keyboard.press("Enter")
    await page.wait_for_selector("[data-page=keys] h1")
    assert page.url.endswith("/dashboard/keys")
    # a dialog takes the focus and Escape closes it
    await page.click("button:text('Create key')")
    assert await page.evaluate("document.activeElement.name") == "name"
    await page.keyboard.press("Escape")
    await page.wait_for_selector("dialog", state="detached")
    # the theme toggle: system -> light -> dark, remembered across loads
    await page.click("#theme-toggle")
    await page.click("#theme-toggle")
    assert await page.get_attribute("html", "data-theme") == "dark"
    await show(tab, gw.base_url, "overview")
    assert await page.get_attribute("html", "data-theme") == "dark"
    await screenshot(tab, f"overview-dark-{width}")
    assert tab.errors == []


async def test_the_page_loads_nothing_from_another_host(gw: Any, browser: Any) -> None:
    tab = await open_tab(browser)
    requested: list[str] = []
    tab.page.on("request", lambda request: requested.append(request.url))
    await sign_in(tab, gw.base_url)
    for view in VIEWS:
        await show(tab, gw.base_url, view)
    others = [url for url in requested if not url.startswith(gw.base_url + "/")]
    assert others == [] and tab.elsewhere == []
    assert any(re.search(r"/dashboard/assets/js/pages/usage\.js$", u) for u in requested)


async def test_the_dashboard_opens_in_under_a_second(gw: Any, browser: Any) -> None:
    """From the navigation's start to the overview showing its numbers (signed in)."""
    tab = await open_tab(browser)
    await sign_in(tab, gw.base_url)
    timings = []
    for _ in range(3):
        await tab.page.goto(f"{gw.base_url}/dashboard/overview")
        await tab.page.wait_for_selector("[data-page=overview] .kpi .value")
        timings.append(await tab.page.evaluate("performance.now()"))
    assert min(timings) < 1000, timings


async def test_a_loopback_sign_in_closes_when_the_browser_comes_back(
        oauth_gw: Any, browser: Any) -> None:
    """Codex's flow: the authorization page (in a new tab) redirects to the gateway's
    listener on localhost, and the dialog, polling, closes with the account stored."""
    gw = oauth_gw
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, gw.base_url)
    await show(tab, gw.base_url, "providers")
    await page.fill("input[name=account-name]", "chatgpt")
    await page.click("button[data-service=codex-test]")
    dialog = page.locator("dialog")
    await dialog.locator(":text('closes by itself')").wait_for()
    async with page.context.expect_page() as opened:
        await dialog.locator("a[data-signin-url]").click()
    service_page = await opened.value
    await service_page.wait_for_load_state()
    assert "Signed in" in await service_page.inner_text("body")  # the listener's page
    await page.wait_for_selector("dialog", state="detached")
    await page.wait_for_selector(".toast:text('Signed in to ChatGPT (test) as chatgpt.')")
    [conn] = [c for c in await connections(gw) if c["name"] == "chatgpt"]
    assert conn["type"] == "codex"
    assert tab.errors == [] and tab.elsewhere == []
