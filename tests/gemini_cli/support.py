"""What the ``gemini-cli`` tests share: the fake Google (sign-in and Code Assist API), an
account signed in through the loopback, a gateway holding accounts, gemini-cli's
credentials file (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from fakes.code_assist_upstream import FakeCodeAssist, GoogleOAuthServer

from omniroute.oauth import SignIn, TokenClient, save_account
from omniroute.providers.gemini_cli import GEMINI
from omniroute.testing import GatewayHarness, make_test_config, start_harness

MODEL = "gemini-2.5-flash"


@dataclass
class Google:
    """The fake Google sign-in and Code Assist API, and settings that point at them."""

    oauth: GoogleOAuthServer
    assist: FakeCodeAssist
    api: str

    def settings(self, **more: Any) -> dict[str, Any]:
        base = self.oauth.base_url
        return {"oauth_authorize_url": f"{base}/o/oauth2/v2/auth",
                "oauth_token_url": f"{base}/token",
                "oauth_userinfo_url": f"{base}/oauth2/v2/userinfo",
                "base_url": self.api, **more}

    def calls(self, method: str) -> list[Any]:
        return [r for r in self.assist.requests if r.path.endswith(f":{method}")]

    def tokens_seen(self) -> list[str]:
        return [r.headers["authorization"].removeprefix("Bearer ")
                for r in self.assist.requests if "Content" in r.path]


async def make_google(aiohttp_server: Any, kind: str = "free") -> Google:
    oauth = GoogleOAuthServer()
    oauth.base_url = str((await aiohttp_server(oauth.app)).make_url("")).rstrip("/")
    assist = FakeCodeAssist(oauth, kind=kind)
    api = str((await aiohttp_server(assist.app)).make_url("/v1internal"))
    return Google(oauth, assist, api)


async def signed_in(google: Google, http: aiohttp.ClientSession, **settings: Any) -> Any:
    """An account through the loopback sign-in, the browser played by ``http``."""
    signin = SignIn(GEMINI, TokenClient(http), google.settings(**settings))
    view = await signin.start()
    try:
        async with http.get(view["url"]) as page:  # Google redirects to the listener
            assert page.status == 200 and "Signed in" in await page.text()
        tokens = await signin.poll()
        assert tokens is not None
        return await signin.account(tokens)
    finally:
        await signin.close()


async def gateway_with(aiohttp_client: Any, tmp_path: Path, google: Google, *accounts: Any,
                       **settings: Any) -> GatewayHarness:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw", **settings))
    for i, account in enumerate(accounts):
        conn, _ = await save_account(gw.registry.plugins, gw.store, GEMINI, account,
                                     name=f"google-{i}", settings=google.settings())
        conn.priority = i
        await gw.store.save_connection(conn)
    await gw.gateway.reload()
    return gw


def creds_file(tmp_path: Path, pair: Any, expiry_ms: float) -> Path:
    path = tmp_path / "home" / ".gemini" / "oauth_creds.json"
    path.parent.mkdir(parents=True)
    path.write_text(orjson.dumps({
        "access_token": pair.access, "refresh_token": pair.refresh,
        "scope": " ".join(GEMINI.scopes) + " openid", "token_type": "Bearer",
        "id_token": "eyJhbGciOiJSUzI1NiJ9.e30.sig", "expiry_date": expiry_ms},
        option=orjson.OPT_INDENT_2).decode())
    os.chmod(path, 0o600)
    return path

