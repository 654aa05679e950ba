"""Fixtures of the matrix: a quick gateway, and ``cell``: one connection to one fake upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conformance.harness import Cell
from conformance.upstreams import UPSTREAMS
from omniroute.auth import admin
from omniroute.plugins import Plugins, load_plugins
from omniroute.testing import GatewayHarness, make_test_config, start_harness


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    """Entry points are scanned once for the whole matrix (it builds ~200 gateways)."""
    return load_plugins()


@pytest.fixture
async def gateway(aiohttp_client: Any, tmp_path: Path, plugins: Plugins,
                  monkeypatch: pytest.MonkeyPatch) -> GatewayHarness:
    """A gateway like the ``omniroute`` fixture's, built faster: the admin password is
    hashed with a cheap scrypt (the matrix never logs in with it)."""
    monkeypatch.setattr(admin, "_SCRYPT", {"n": 2, "r": 1, "p": 1})
    return await start_harness(aiohttp_client, make_test_config(tmp_path / "omniroute"), plugins)


@pytest.fixture
async def cell(request: Any, gateway: GatewayHarness, aiohttp_server: Any) -> Cell:
    """``request.param`` is ``(client name, upstream name)``."""
    client, upstream = request.param
    return await add_cell(gateway, aiohttp_server, client, upstream)


async def add_cell(gateway: GatewayHarness, aiohttp_server: Any, client: str,
                   upstream: str) -> Cell:
    """Start ``upstream``'s fake and connect the gateway to it."""
    up = UPSTREAMS[upstream]
    fake = up.make()
    server = await aiohttp_server(fake.app)
    await gateway.add_provider(up.spec(str(server.make_url("")).rstrip("/")))
    made = Cell(gateway, up, fake, client)
    made.sent = up.spy(fake)
    return made


def cells(clients: list[str], upstreams: list[str] | None = None) -> list[Any]:
    """Parameters for ``cell`` (indirect), with ids like ``anthropic-client-gemini-upstream``."""
    return [pytest.param((c, u), id=f"{c}-client-{u}-upstream")
            for c in clients for u in (upstreams or list(UPSTREAMS))]


async def packed_reasoning(gateway: GatewayHarness, aiohttp_server: Any, client: str) -> str:
    """The opaque value the gateway hands a ``client`` ("responses" or "gemini") for Claude's
    signed thinking (Responses ``encrypted_content``, Gemini ``thoughtSignature``), got from
    a real turn through a new Anthropic connection: what a conversation that went through
    Anthropic holds."""
    claude = await add_cell(gateway, aiohttp_server, client, "anthropic")
    claude.script(claude.up.module.reply(thinking="Let me think.", text="Hi."))
    if client == "responses":
        resp = await gateway.client.post("/v1/responses", json={
            "model": claude.model, "input": "hi", "store": False,
            "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "high"}})
        assert resp.status == 200, await resp.text()
        items = (await resp.json())["output"]
        return next(i["encrypted_content"] for i in items if i["type"] == "reasoning")
    resp = await gateway.client.post(
        f"/v1beta/models/{claude.model}:generateContent", json={
            "contents": [{"role": "user", "parts": [{"text": "hi"}]}],
            "generationConfig": {"thinkingConfig": {"includeThoughts": True,
                                                    "thinkingBudget": 2048}}})
    assert resp.status == 200, await resp.text()
    parts = (await resp.json())["candidates"][0]["content"]["parts"]
    return next(p["thoughtSignature"] for p in parts if p.get("thoughtSignature"))

