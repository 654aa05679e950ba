"""The ``claude`` fixture: a gateway, Claude's fake authorization server and its fake
Messages API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fakes.claude_code_upstream import FakeClaudeCode
from fakes.oauth_server import FakeOAuthServer

from claude_code.support import EMAIL, Claude
from omniroute.providers.claude_code import CLAUDE
from omniroute.testing import make_test_config, start_harness


@pytest.fixture
async def claude(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> AsyncIterator[Claude]:
    oauth = FakeOAuthServer(
        client_id=CLAUDE.client_id, redirect_uri=CLAUDE.redirect_uri, encoding="json",
        mode="paste", authorize_path="/oauth/authorize", token_path="/v1/oauth/token",
        required_params={"code": "true"}, state_in_token=True, prefix="sk-ant-oat01",
        token_extra={"account": {"uuid": "acc-1", "email_address": EMAIL},
                     "organization": {"uuid": "org-1", "name": "Dev"}})
    oauth.base_url = str((await aiohttp_server(oauth.app)).make_url("")).rstrip("/")
    upstream = FakeClaudeCode(oauth.is_valid)
    upstream_url = str((await aiohttp_server(upstream.app)).make_url("")).rstrip("/")
    data_dir = tmp_path / "gw"
    gw = await start_harness(aiohttp_client, make_test_config(data_dir))
    world = Claude(gw, oauth, upstream, upstream_url, data_dir)
    yield world
    await world.sdk.close()
