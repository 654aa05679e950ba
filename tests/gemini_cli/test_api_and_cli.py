"""Signing in to ``gemini-cli`` through the management API and the command line, and the
fake's own strictness."""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import openai
import orjson
from click.testing import CliRunner

from gemini_cli.support import MODEL, Google, creds_file, make_google
from omniroute.cli import cli
from omniroute.providers.code_assist import (
    envelope,
)
from omniroute.testing import make_test_config, start_harness

SECRET_KEY_B64 = base64.urlsafe_b64encode(b"k" * 32).decode()  # make_test_config's key
OMNIROUTE_BIN = str(Path(sys.executable).parent / "omniroute")


def cli_env(home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["OMNIROUTE_SECRET_KEY"] = SECRET_KEY_B64
    if home is not None:
        env["HOME"] = str(home)
    return env


def setting_args(settings: dict[str, Any]) -> list[str]:
    return [arg for k, v in settings.items()
            for arg in ("--setting", f"{k}={orjson.dumps(v).decode()}"
                        if isinstance(v, bool) else f"{k}={v}")]


async def test_sign_in_through_the_management_api(
    aiohttp_client: Any, google: Google, tmp_path: Path,
) -> None:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"))
    h = gw.admin_headers
    services = await (await gw.client.get("/api/oauth/services", headers=h)).json()
    gemini = next(s for s in services["services"] if s["name"] == "gemini")
    assert (gemini["flow"], gemini["provider_type"], gemini["import_source"]) == (
        "loopback", "gemini-cli", "gemini-cli")
    resp = await gw.client.post("/api/oauth/gemini/start", headers=h,
                                json={"settings": google.settings()})
    assert resp.status == 200, await resp.text()
    started = await resp.json()
    assert started["listening"] is True and urlsplit(started["redirect_uri"]).port
    async with aiohttp.ClientSession() as http, http.get(started["url"]) as page:
        assert page.status == 200  # the browser came back to the gateway's listener
    resp = await gw.client.post("/api/oauth/gemini/poll", headers=h,
                                json={"state": started["state"]})
    assert resp.status == 201, await resp.text()
    connection = (await resp.json())["connection"]
    assert connection["name"] == "someone@example.com" and connection["type"] == "gemini-cli"
    stored = await gw.store.get_connection(connection["id"])
    assert stored is not None
    assert stored.credentials["extra"]["project"] == google.assist.managed_project
    await gw.gateway.reload()
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        answer = await oai.chat.completions.create(
            model=f"gemini-cli/{MODEL}", messages=[{"role": "user", "content": "api"}])
    assert answer.choices[0].message.content == "Hello! You said: api"
    # an ineligible account: the sign-in fails with Google's reason, nothing is stored
    google.assist.kind = "ineligible"
    started = await (await gw.client.post("/api/oauth/gemini/start", headers=h,
                                          json={"settings": google.settings()})).json()
    async with aiohttp.ClientSession() as http, http.get(started["url"]) as page:
        assert page.status == 200
    refused = await gw.client.post("/api/oauth/gemini/poll", headers=h,
                                   json={"state": started["state"]})
    assert refused.status == 403
    assert "not eligible" in (await refused.json())["error"]["message"]
    assert len(await gw.store.list_connections()) == 1


async def test_login_without_a_browser_and_import_on_the_command_line(
    aiohttp_server: Any, tmp_path: Path,
) -> None:
    google = await make_google(aiohttp_server, kind="standard")  # no onboarding wait
    settings = google.settings(no_browser=True, project="my-gcp-project")
    data_dir = tmp_path / "gw"
    proc = await asyncio.create_subprocess_exec(
        OMNIROUTE_BIN, "--data-dir", str(data_dir), "login", "gemini", "--name", "cli",
        *setting_args(settings), "--timeout", "30", env=cli_env(),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    url, prompt = "", b""
    async with asyncio.timeout(20):
        while not url:
            line = await proc.stderr.readline()
            assert line, "the command ended before printing the URL"
            if line.startswith(b"http"):
                url = line.decode().strip()
        prompt = await proc.stderr.read(len(b"Paste the code the page shows:"))
    assert prompt == b"Paste the code the page shows:"
    assert "redirect_uri=https%3A%2F%2Fcodeassist.google.com%2Fauthcode" in url
    async with aiohttp.ClientSession() as http, http.get(url, allow_redirects=False) as page:
        code = parse_qs(urlsplit(page.headers["Location"]).query)["code"][0]
    proc.stdin.write(code.encode() + b"\n")
    await proc.stdin.drain()
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert "signed in: conn_" in out.decode() and "cli (gemini-cli) prefix gemini-cli/" in (
        out.decode())

    # an import from gemini-cli's file at its default place (HOME), read only
    pair = google.oauth.issue()
    path = creds_file(tmp_path, pair, (time.time() + 3000) * 1000)
    before = path.read_bytes()
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OMNIROUTE_")}
    env.update(OMNIROUTE_SECRET_KEY=SECRET_KEY_B64, HOME=str(tmp_path / "home"))
    result = await asyncio.to_thread(CliRunner(env=env).invoke, cli, [
        "--data-dir", str(data_dir), "providers", "import", "gemini-cli",
        *setting_args(google.settings(project="my-gcp-project"))])
    assert result.exit_code == 0, result.output
    assert "imported: conn_" in result.output and "(gemini-cli)" in result.output
    assert path.read_bytes() == before
    assert pair.access not in result.output and str(pair.refresh) not in result.output


async def test_the_fake_refuses_what_code_assist_would(
    google: Google, http: aiohttp.ClientSession,
) -> None:
    """The fake's own strictness, so the tests above prove something."""
    pair = google.oauth.issue()
    google.assist.onboarded = "free-tier"
    good = envelope(MODEL, google.assist.managed_project,
                    {"contents": [{"role": "user", "parts": [{"text": "x"}]}]})
    url = f"{google.api}:generateContent"

    async def status(body: Any, token: str = pair.access, **headers: str) -> int:
        sent = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                **headers}
        async with http.post(url, data=orjson.dumps(body), headers=sent) as resp:
            return resp.status

    assert await status(good) == 200
    assert await status(good, token="ya29-unknown") == 401
    assert await status(good, **{"Content-Type": "text/plain"}) == 400
    assert await status(good["request"]) == 400  # no envelope
    assert await status({**good, "extra": 1}) == 400
    assert await status({**good, "project": "someone-elses"}) == 403
    assert await status({**good, "model": f"models/{MODEL}"}) == 404
    assert await status({**good, "request": {"contents": []}}) == 400
