"""The gateway of the resilience end-to-end tests: the official openai SDK -> the gateway ->
several fake upstreams."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fakes.openai_upstream import FakeOpenAI

from resilience_e2e.support import KEY, MODELS


@pytest.fixture
async def gw(omniroute: Any, aiohttp_server: Any) -> Any:
    """The gateway, with ``gw.add(name, ...)`` adding a fake upstream as a connection."""

    async def add(name: str, *, prefix: str | None = None, fake: dict[str, Any] | None = None,
                  **connection: Any) -> FakeOpenAI:
        upstream = FakeOpenAI(api_key=KEY, models=MODELS, **(fake or {}))
        server = await aiohttp_server(upstream.app)
        view = await omniroute.add_provider({
            "type": "openai", "name": name, "prefix": prefix or name, "api_key": KEY,
            "base_url": str(server.make_url("/v1")), **connection})
        upstream.conn_id = view["id"]  # type: ignore[attr-defined]
        return upstream

    omniroute.add = add
    omniroute.sdk = openai.AsyncOpenAI(base_url=omniroute.base_url + "/v1", api_key="sk-client",
                                       max_retries=0, timeout=10)
    yield omniroute
    await omniroute.sdk.close()
