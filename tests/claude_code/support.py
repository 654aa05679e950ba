"""What the Claude subscription tests share: the gateway with Claude's fake authorization
server and Messages API (the ``claude`` fixture, in conftest.py, builds it), the requests it
saw, and Claude Code's credentials file."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
from click.testing import CliRunner, Result
from fakes.claude_code_upstream import FakeClaudeCode
from fakes.oauth_server import FakeOAuthServer

from omniroute.cli import cli
from omniroute.providers.claude_code import IDENTITY
from omniroute.testing import GatewayHarness

SECRET_KEY_B64 = base64.urlsafe_b64encode(b"k" * 32).decode()  # make_test_config's key
OMNIROUTE_BIN = str(Path(sys.executable).parent / "omniroute")
EMAIL = "dev@example.com"


class Claude:
    """A gateway, Claude's fake authorization server and its fake Messages API."""

    def __init__(self, gw: GatewayHarness, oauth: FakeOAuthServer, upstream: FakeClaudeCode,
                 upstream_url: str, data_dir: Path) -> None:
        self.gw, self.oauth, self.upstream = gw, oauth, upstream
        self.upstream_url, self.data_dir = upstream_url, data_dir
        #: where a connection of this test finds the fakes (every URL overridable)
        self.settings = {"oauth_authorize_url": f"{oauth.base_url}/oauth/authorize",
                         "oauth_token_url": f"{oauth.base_url}/v1/oauth/token",
                         "base_url": upstream_url}
        self.sdk = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="gateway-key",
                                            max_retries=0)

    def cli(self, *args: str, home: Path | None = None) -> Result:
        env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OMNIROUTE_")}
        env["OMNIROUTE_SECRET_KEY"] = SECRET_KEY_B64
        if home is not None:
            env["HOME"] = str(home)
        return CliRunner(env=env).invoke(cli, ["--data-dir", str(self.data_dir), *args])

    def setting_args(self) -> list[str]:
        return [arg for k, v in self.settings.items() for arg in ("--setting", f"{k}={v}")]

    async def user_signs_in(self, url: str) -> str:
        """What the user does with the URL: sign in; the page shows CODE#STATE."""
        async with aiohttp.ClientSession() as http, http.get(url) as page:
            assert page.status == 200, await page.text()
            return await page.text()

    async def reload(self) -> None:
        await self.gw.gateway.reload()

    async def ask(self, text: str = "hi", model: str = "claude/claude-haiku-4-5") -> str:
        msg = await self.sdk.messages.create(model=model, max_tokens=64, system=IDENTITY,
                                             messages=[{"role": "user", "content": text}])
        return msg.content[0].text  # type: ignore[union-attr]


def sent_messages(fake: FakeClaudeCode) -> list[Any]:
    return [r for r in fake.requests if r.path == "/v1/messages"]


def write_credentials(path: Path, pair: Any, **more: Any) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({"claudeAiOauth": {
        "accessToken": pair.access, "refreshToken": pair.refresh,
        "expiresAt": int(pair.expires_at * 1000), "scopes": ["user:inference", "user:profile"],
        "subscriptionType": "max", "rateLimitTier": "default_claude_max_20x", **more},
        "mcpOAuth": {"other": "left alone"}}, indent=2).encode()
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return data
