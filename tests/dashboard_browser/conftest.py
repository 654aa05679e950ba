"""Fixtures of the dashboard's browser tests: the gateway, its agent CLIs those of a
temporary home, and Chromium (``chromium_path`` in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dashboard_browser.support import tool_home
from omniroute.testing import GatewayHarness, make_test_config, start_harness


@pytest.fixture
async def omniroute(aiohttp_client: Any, tmp_path: Path) -> GatewayHarness:
    """The gateway of these tests (``gw`` in conftest.py builds on it): the agent CLIs it
    finds and configures are those of a temporary home, never the machine's own."""
    return await start_harness(aiohttp_client, make_test_config(tmp_path / "omniroute").replace(
        tool_env=tool_home(tmp_path)))


@pytest.fixture
async def browser(chromium_path: str) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        launched = await pw.chromium.launch(executable_path=chromium_path)
        try:
            yield launched
        finally:
            await launched.close()
