"""Shared fixtures: a fake OpenAI upstream and a gateway pointed at it."""

from __future__ import annotations

from typing import Any

import pytest
from fakes.openai_upstream import FakeOpenAI

UPSTREAM_KEY = "sk-upstream-test"


@pytest.fixture
async def fake_openai(aiohttp_server: Any) -> FakeOpenAI:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


@pytest.fixture
async def gw(omniroute: Any, fake_openai: FakeOpenAI) -> Any:
    """The gateway with one OpenAI-compatible connection, prefix ``up``."""
    omniroute.connection = await omniroute.add_provider({
        "type": "openai", "name": "fake", "prefix": "up",
        "base_url": fake_openai.base_url, "api_key": UPSTREAM_KEY,
    })
    omniroute.fake = fake_openai
    return omniroute
