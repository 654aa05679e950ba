"""Every dashboard page in Chromium: resetting a cooled account and clearing the cache,
require_login off, both widths and the dark theme, nothing loaded from another host, the
time to open."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import pytest
from fakes import openai_upstream

from dashboard_browser.support import (
    VIEWS,
    WIDTHS,
    open_tab,
    screenshot,
    show,
    sign_in,
)

pytestmark = pytest.mark.browser


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
