"""Fixtures of the ``gemini-cli`` tests: quick Code Assist polls, the fake Google, an HTTP
session playing the browser."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gemini_cli.support import Google, make_google
from omniroute.providers import code_assist


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(code_assist, "POLL_INTERVAL", 0.01)  # gemini-cli waits 5 s


@pytest.fixture
async def google(aiohttp_server: Any) -> Google:
    return await make_google(aiohttp_server)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
