"""The management API's device and loopback sign-ins, for any service a plugin registers:
``start`` answers the device code (or the URL and the listener), ``poll`` says
pending until the user finishes, then stores the account; the CLI's device flow."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
from fakes.oauth_server import FakeOAuthServer

from omniroute import hookimpl
from omniroute.oauth import OAuthProvider, OAuthService
from omniroute.plugins import load_plugins
from omniroute.providers.base import Provider
from omniroute.providers.openai import OpenAIProvider
from omniroute.testing import GatewayHarness, make_test_config, start_harness

CLIENT = "dev-client"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def services(base: str, port: int) -> list[OAuthService]:
    common: dict[str, Any] = dict(provider_type="test-dev", client_id=CLIENT,
                                  token_url=f"{base}/oauth/token", token_encoding="form")
    return [
        OAuthService(name="test-device", flow="device", device_url=f"{base}/oauth/device/code",
                     scopes=("model.completion",), **common),
        OAuthService(name="test-loop", flow="loopback", authorize_url=f"{base}/oauth/authorize",
                     redirect_uri=f"http://localhost:{port}/auth/callback", **common),
    ]


class DevProvider(OAuthProvider, OpenAIProvider):
    type = "test-dev"
    presets: ClassVar[dict[str, Any]] = {}
    oauth = OAuthService(name="test-device", provider_type="test-dev", flow="device",
                         client_id=CLIENT, token_url="https://dev.invalid/token")


class DevPlugin:
    def __init__(self, found: list[OAuthService]) -> None:
        self.found = found

    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(DevProvider)

    @hookimpl
    def register_oauth_services(self, register: Callable[[OAuthService], None]) -> None:
        for service in self.found:
            register(service)


async def gateway(aiohttp_client: Any, tmp_path: Path, oauth: FakeOAuthServer,
                  port: int) -> GatewayHarness:
    plugins = load_plugins(extra=[("t-dev", DevPlugin(services(oauth.base_url, port)))])
    return await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"), plugins)


async def test_a_device_sign_in_through_the_api(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    oauth = FakeOAuthServer(client_id=CLIENT, encoding="form", device_interval=0.05)
    oauth.base_url = str((await aiohttp_server(oauth.app)).make_url("")).rstrip("/")
    gw = await gateway(aiohttp_client, tmp_path, oauth, free_port())
    h = gw.admin_headers
    resp = await gw.client.post("/api/oauth/test-device/start", headers=h,
                                json={"name": "box", "settings": {
                                    "base_url": "http://127.0.0.1:9/v1"}})
    assert resp.status == 200, await resp.text()
    started = await resp.json()
    assert started["flow"] == "device" and started["user_code"]
    assert started["verification_uri"] == f"{oauth.base_url}/activate"
    device = oauth.requests[-1].json
    assert device["scope"] == "model.completion" and device["code_challenge"]  # PKCE
    pending = await (await gw.client.post("/api/oauth/test-device/poll", headers=h,
                                          json={"state": started["state"]})).json()
    assert pending["status"] == "pending" and pending["expires_in"] > 0
    oauth.approve(started["user_code"])
    done: dict[str, Any] = {}
    for _ in range(100):
        resp = await gw.client.post("/api/oauth/test-device/poll", headers=h,
                                    json={"state": started["state"]})
        done = await resp.json()
        if done["status"] == "complete":
            assert resp.status == 201
            break
        await asyncio.sleep(0.03)
    assert done["connection"]["name"] == "box" and done["connection"]["type"] == "test-dev"
    stored = await gw.store.get_connection(done["connection"]["id"])
    assert stored is not None and oauth.is_valid(stored.credentials["access_token"])
    gone = await gw.client.post("/api/oauth/test-device/poll", headers=h,
                                json={"state": started["state"]})
    assert gone.status == 404
    no_url = await gw.client.post("/api/oauth/test-device/start", headers=h, json={})
    assert no_url.status == 400 and "base_url" in (await no_url.json())["error"]["message"]
    denied = await (await gw.client.post("/api/oauth/test-device/start", headers=h, json={
        "settings": {"base_url": "http://127.0.0.1:9/v1"}})).json()
    oauth.deny(denied["user_code"])
    await asyncio.sleep(0.1)
    refused = await gw.client.post("/api/oauth/test-device/poll", headers=h,
                                   json={"state": denied["state"]})
    assert refused.status == 403 and (await refused.json())["error"]["code"] == "access_denied"


async def test_a_loopback_sign_in_through_the_api_by_redirect_or_paste(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    port = free_port()
    oauth = FakeOAuthServer(client_id=CLIENT, encoding="form", mode="redirect",
                            redirect_uri=f"http://localhost:{port}/auth/callback")
    oauth.base_url = str((await aiohttp_server(oauth.app)).make_url("")).rstrip("/")
    gw = await gateway(aiohttp_client, tmp_path, oauth, port)
    h = gw.admin_headers
    settings = {"base_url": "http://127.0.0.1:9/v1"}
    started = await (await gw.client.post("/api/oauth/test-loop/start", headers=h,
                                          json={"settings": settings})).json()
    assert started["listening"] is True
    async with aiohttp.ClientSession() as http, http.get(started["url"]) as page:
        assert page.status == 200  # the browser came back to the gateway's listener
    resp = await gw.client.post("/api/oauth/test-loop/poll", headers=h,
                                json={"state": started["state"]})
    assert resp.status == 201, await resp.text()
    # a second sign-in whose redirect never reaches the listener: the address is pasted
    second = await (await gw.client.post("/api/oauth/test-loop/start", headers=h,
                                         json={"name": "pasted", "settings": settings})).json()
    async with aiohttp.ClientSession() as http, http.get(
            second["url"], allow_redirects=False) as page:
        address = page.headers["Location"]
    resp = await gw.client.post("/api/oauth/test-loop/complete", headers=h,
                                json={"code": address})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["connection"]["name"] == "pasted"
    assert len(await gw.store.list_connections()) == 2


async def test_pending_sign_ins_are_capped(
    aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path,
) -> None:
    from omniroute.appkeys import OAUTH_SIGN_INS

    oauth = FakeOAuthServer(client_id=CLIENT, encoding="form")
    oauth.base_url = str((await aiohttp_server(oauth.app)).make_url("")).rstrip("/")
    gw = await gateway(aiohttp_client, tmp_path, oauth, free_port())
    gw.client.app[OAUTH_SIGN_INS].max_pending = 2
    body = {"settings": {"base_url": "http://127.0.0.1:9/v1"}}
    answers = [await gw.client.post("/api/oauth/test-device/start", headers=gw.admin_headers,
                                    json=body) for _ in range(3)]
    assert [r.status for r in answers] == [200, 200, 429]
    assert "Retry-After" in answers[2].headers


async def test_a_device_sign_in_from_the_command_line(
    aiohttp_server: Any, tmp_path: Path,
) -> None:
    """``omniroute login`` of a plugin's device service, in a subprocess: the plugin is a
    module on PYTHONPATH registered through an entry point of a throwaway distribution."""
    oauth = FakeOAuthServer(client_id=CLIENT, encoding="form", device_interval=0.05)
    oauth.base_url = str((await aiohttp_server(oauth.app)).make_url("")).rstrip("/")
    site = tmp_path / "site"
    (site / "devplugin-0.dist-info").mkdir(parents=True)
    (site / "devplugin-0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: devplugin\nVersion: 0\n")
    (site / "devplugin-0.dist-info" / "entry_points.txt").write_text(
        "[omniroute]\ndevplugin = devplugin\n")
    (site / "devplugin.py").write_text(f'''
from omniroute import hookimpl
from omniroute.oauth import OAuthProvider, OAuthService
from omniroute.providers.openai import OpenAIProvider

SERVICE = OAuthService(name="test-device", provider_type="test-dev", flow="device",
                       client_id="{CLIENT}", token_url="{oauth.base_url}/oauth/token",
                       device_url="{oauth.base_url}/oauth/device/code")

class DevProvider(OAuthProvider, OpenAIProvider):
    type = "test-dev"
    presets = {{}}
    oauth = SERVICE

@hookimpl
def register_providers(register):
    register(DevProvider)

@hookimpl
def register_oauth_services(register):
    register(SERVICE)
''')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["OMNIROUTE_SECRET_KEY"] = base64.urlsafe_b64encode(b"k" * 32).decode()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "omniroute", "--data-dir", str(tmp_path / "data"), "login",
        "test-device", "--setting", "base_url=http://127.0.0.1:9/v1", "--timeout", "20",
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    user_code = ""
    async with asyncio.timeout(20):
        while not user_code:
            line = (await proc.stderr.readline()).decode()
            assert line, "the command ended before printing the code"
            if "enter the code" in line:
                user_code = line.rsplit(" ", 1)[1].strip()
    oauth.approve(user_code)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert "signed in: conn_" in out.decode() and "test-device (test-dev)" in out.decode()
