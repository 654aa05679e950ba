"""Subscription sign-in in the dashboard: the device, paste and loopback flows against fake
OAuth servers."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from dashboard_browser.support import (
    open_tab,
    screenshot,
    show,
    sign_in,
    tool_home,
)
from omniroute.testing import make_test_config, start_harness

pytestmark = pytest.mark.browser


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
