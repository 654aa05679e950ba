"""The dashboard's main path in Chromium: sign in, add a provider, create a key, build a
combo, see a request in the log and the chart; the CSRF token, the settings page, and the
CLI tools page configuring and restoring Claude Code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from fakes import openai_upstream

from dashboard_browser.support import (
    PASSWORD,
    open_tab,
    screenshot,
    show,
    sign_in,
)

pytestmark = pytest.mark.browser


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
