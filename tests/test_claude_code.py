"""Claude Pro/Max subscriptions end to end: sign-in by the CLI and by the API, import
from Claude Code's file, the ``claude-code`` provider's requests (bearer token, OAuth
beta, the Claude Code system line, pass-through with ``cache_control`` intact), renewal,
"needs sign-in", and no secret in logs or answers.

Everything runs against a fake authorization server (Claude's endpoints, JSON bodies,
``CODE#STATE`` page) and a fake Messages API that refuses what the real one refuses on
a subscription token (``fakes.claude_code_upstream``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from click.testing import CliRunner, Result
from fakes.anthropic_upstream import error
from fakes.claude_code_upstream import IDENTITY_START, FakeClaudeCode, usage_limit
from fakes.oauth_server import FakeOAuthServer
from test_cli import Cli, ok
from test_pricing import subscription_charges

from omniroute.cli import cli
from omniroute.providers.claude_code import (
    CLAUDE,
    IDENTITY,
    OAUTH_BETA,
    claude_usage,
    merged_betas,
    with_identity,
)
from omniroute.testing import GatewayHarness, make_test_config, start_harness

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


def sent_messages(fake: FakeClaudeCode) -> list[Any]:
    return [r for r in fake.requests if r.path == "/v1/messages"]


# ------------------------------------------------------------------ the request shape

def test_the_identity_is_prepended_only_when_missing() -> None:
    cached = {"type": "text", "text": "Project rules.", "cache_control": {"type": "ephemeral"}}
    mark = {"type": "text", "text": IDENTITY}
    assert with_identity({"m": 1}) == {"m": 1, "system": [mark]}
    assert with_identity({"system": ""}) == {"system": [mark]}
    assert with_identity({"system": "Be brief."}) == {
        "system": [mark, {"type": "text", "text": "Be brief."}]}
    assert with_identity({"system": [cached]}) == {"system": [mark, cached]}
    for present in ({"system": IDENTITY + "\nMore."},
                    {"system": [{"type": "text", "text": IDENTITY}, cached]},
                    {"system": [{"type": "text", "text": "x-anthropic-billing-header: v=1"},
                                {"type": "text", "text": IDENTITY[:-1] + ", running within "
                                 "the Claude Agent SDK."}]}):
        assert with_identity(present) is present  # untouched: the same object
    assert merged_betas(None) == OAUTH_BETA
    assert merged_betas("a, oauth-2025-04-20,b,a") == "oauth-2025-04-20,a,b"


async def test_a_claude_code_client_passes_through_with_cache_control_intact(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue()
    await claude.gw.add_provider({"type": "claude-code", "name": "max", "settings":
                                  claude.settings, "credentials": {
                                      "access_token": pair.access,
                                      "refresh_token": pair.refresh,
                                      "expires_at": pair.expires_at}})
    system = [{"type": "text", "text": IDENTITY, "cache_control": {"type": "ephemeral"}},
              {"type": "text", "text": "Long project instructions. " * 40,
               "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    messages = [{"role": "user", "content": [
        {"type": "text", "text": "Read this file.", "cache_control": {"type": "ephemeral"}}]}]
    betas = "claude-code-20250219,interleaved-thinking-2025-05-14"
    msg = await claude.sdk.messages.create(
        model="claude/claude-haiku-4-5", max_tokens=64, system=system,  # type: ignore[arg-type]
        messages=messages, extra_headers={"anthropic-beta": betas})  # type: ignore[arg-type]
    assert msg.content[0].text == "Hello! You said: Read this file."  # type: ignore[union-attr]
    up = sent_messages(claude.upstream)[-1]
    assert up.json == {"model": "claude-haiku-4-5", "max_tokens": 64, "system": system,
                       "messages": messages}  # as the client sent it
    assert up.headers["authorization"] == f"Bearer {pair.access}"
    assert "x-api-key" not in up.headers  # the client's gateway key never goes up
    assert up.headers["anthropic-beta"] == f"{OAUTH_BETA},{betas}"

    # a stream too: the upstream's events reach the client as they were
    async with claude.sdk.messages.stream(
            model="claude/claude-haiku-4-5", max_tokens=64, system=system,  # type: ignore[arg-type]
            messages=messages) as stream:
        text = "".join([t async for t in stream.text_stream])
    assert text == "Hello! You said: Read this file."
    assert sent_messages(claude.upstream)[-1].json["system"] == system


async def test_other_clients_get_the_identity_line_added(claude: Claude) -> None:
    pair = claude.oauth.issue()
    await claude.gw.add_provider({"type": "claude-code", "settings": claude.settings,
                                  "credentials": {"access_token": pair.access}})
    msg = await claude.sdk.messages.create(
        model="claude/claude-haiku-4-5", max_tokens=32, system="Be brief.",
        messages=[{"role": "user", "content": "hello"}])
    assert msg.content[0].text == "Hello! You said: hello"  # type: ignore[union-attr]
    assert sent_messages(claude.upstream)[-1].json["system"] == [
        {"type": "text", "text": IDENTITY}, {"type": "text", "text": "Be brief."}]
    async with openai.AsyncOpenAI(base_url=claude.gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as oai:
        reply = await oai.chat.completions.create(model="claude/claude-haiku-4-5", messages=[
            {"role": "user", "content": "from openai"}])
    assert reply.choices[0].message.content == "Hello! You said: from openai"
    system = sent_messages(claude.upstream)[-1].json["system"]
    assert system[0] == {"type": "text", "text": IDENTITY}
    counted = await claude.sdk.messages.count_tokens(
        model="claude/claude-haiku-4-5", messages=[{"role": "user", "content": "count me"}])
    assert counted.input_tokens > 0
    count_call = [r for r in claude.upstream.requests if r.path.endswith("count_tokens")][-1]
    assert count_call.json["system"][0]["text"].startswith(IDENTITY_START)


async def test_a_subscription_request_costs_nothing_and_records_its_list_price(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue()
    view = await claude.gw.add_provider({"type": "claude-code", "settings": claude.settings,
                                         "credentials": {"access_token": pair.access}})
    raw = await claude.sdk.messages.with_raw_response.create(
        model="claude/claude-haiku-4-5", max_tokens=32, system=IDENTITY,
        messages=[{"role": "user", "content": "price me"}])
    assert float(raw.headers["X-OmniRoute-Response-Cost"]) == 0.0
    row, usage = await subscription_charges(claude.gw, view["id"])
    assert row["cost_usd"] == 0.0 and row["list_cost_usd"] > 0
    assert usage["saved_usd"] == pytest.approx(row["list_cost_usd"])


# ------------------------------------------------------------------ sign-in by the API

async def test_sign_in_through_the_management_api(
    claude: Claude, caplog: pytest.LogCaptureFixture,
) -> None:
    gw = claude.gw
    services = await (await gw.client.get("/api/oauth/services",
                                          headers=gw.admin_headers)).json()
    assert {"name": "claude", "title": CLAUDE.title, "flow": "paste",
            "provider_type": "claude-code", "import_source": "claude-code"
            } in services["services"]
    assert (await gw.client.post("/api/oauth/claude/start")).status == 401  # admin only
    with caplog.at_level(logging.DEBUG):
        resp = await gw.client.post("/api/oauth/claude/start", headers=gw.admin_headers,
                                    json={"settings": claude.settings})
        assert resp.status == 200, await resp.text()
        started = await resp.json()
        assert started["flow"] == "paste" and started["url"].startswith(
            f"{claude.oauth.base_url}/oauth/authorize?code=true&client_id={CLAUDE.client_id}")
        pasted = await claude.user_signs_in(started["url"])
        assert pasted.endswith("#" + started["state"])
        wrong = await gw.client.post("/api/oauth/claude/complete", headers=gw.admin_headers,
                                     json={"code": pasted, "state": "not-this-one"})
        assert wrong.status == 404
        resp = await gw.client.post("/api/oauth/claude/complete", headers=gw.admin_headers,
                                    json={"code": pasted})  # CODE#STATE names its sign-in
        assert resp.status == 201, await resp.text()
        done = await resp.json()
        again = await gw.client.post("/api/oauth/claude/complete", headers=gw.admin_headers,
                                     json={"code": pasted})
        assert again.status == 404  # finished: forgotten
        assert await claude.ask("signed in") == "Hello! You said: signed in"
    conn = done["connection"]
    assert (done["created"], conn["type"], conn["name"], conn["prefix"]) == (
        True, "claude-code", EMAIL, "claude")
    assert conn["oauth"]["status"] == "active" and conn["oauth"]["account"] == EMAIL
    exchange = next(r for r in claude.oauth.requests if r.path == "/v1/oauth/token")
    assert exchange.headers["content-type"].startswith("application/json")
    assert set(exchange.json) == {"grant_type", "code", "state", "client_id", "redirect_uri",
                                  "code_verifier"}
    assert exchange.json["redirect_uri"] == "https://platform.claude.com/oauth/code/callback"
    stored = await gw.store.get_connection(conn["id"])
    assert stored is not None
    secrets = [stored.credentials["access_token"], stored.credentials["refresh_token"],
               pasted.split("#")[0], exchange.json["code_verifier"]]
    answers = json.dumps([started, done]) + await (await gw.client.get(
        "/api/providers", headers=gw.admin_headers)).text()
    audit = await (await gw.client.get("/api/compliance/audit-log",
                                       headers=gw.admin_headers)).text()
    for secret in secrets:
        assert secret not in caplog.text and secret not in answers and secret not in audit
    assert "/api/oauth/{service}/complete" in audit


async def test_a_second_sign_in_under_the_same_name_replaces_the_tokens(
    claude: Claude,
) -> None:
    gw = claude.gw

    async def sign_in() -> dict[str, Any]:
        started = await (await gw.client.post(
            "/api/oauth/claude/start", headers=gw.admin_headers,
            json={"name": "work", "settings": claude.settings})).json()
        pasted = await claude.user_signs_in(started["url"])
        resp = await gw.client.post("/api/oauth/claude/complete", headers=gw.admin_headers,
                                    json={"code": pasted, "state": started["state"]})
        assert resp.status in (200, 201), await resp.text()
        return dict(await resp.json())

    first, second = await sign_in(), await sign_in()
    assert (first["created"], second["created"]) == (True, False)
    assert first["connection"]["id"] == second["connection"]["id"]
    stored = await gw.store.get_connection(first["connection"]["id"])
    assert stored is not None and stored.name == "work"
    assert claude.oauth.is_valid(stored.credentials["access_token"])
    assert len(await gw.store.list_connections()) == 1


async def test_the_api_refuses_bad_sign_ins(claude: Claude) -> None:
    gw, h = claude.gw, claude.gw.admin_headers
    assert (await gw.client.post("/api/oauth/nope/start", headers=h)).status == 404
    bad = await gw.client.post("/api/oauth/claude/start", headers=h,
                               json={"settings": {"oauth_token_url": "ftp://x"}})
    assert bad.status == 400 and "oauth_token_url" in (await bad.json())["error"]["message"]
    assert (await gw.client.post("/api/oauth/claude/start", headers=h,
                                 json={"nme": "typo"})).status == 400
    started = await (await gw.client.post("/api/oauth/claude/start", headers=h,
                                          json={"settings": claude.settings})).json()
    refused = await gw.client.post("/api/oauth/claude/complete", headers=h,
                                   json={"code": "made-up#" + started["state"]})
    assert refused.status == 400 and (await refused.json())["error"]["code"] == "invalid_grant"
    poll = await gw.client.post("/api/oauth/claude/poll", headers=h,
                                json={"state": started["state"]})
    assert poll.status == 400  # a paste flow is not polled
    # the sign-in is still there after a refused code: the right one still works
    pasted = await claude.user_signs_in(started["url"])
    ok = await gw.client.post("/api/oauth/claude/complete", headers=h, json={"code": pasted})
    assert ok.status == 201


# ------------------------------------------------------------------ sign-in by the CLI

async def test_sign_in_through_the_command_line(claude: Claude) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["OMNIROUTE_SECRET_KEY"] = SECRET_KEY_B64
    proc = await asyncio.create_subprocess_exec(
        OMNIROUTE_BIN, "--data-dir", str(claude.data_dir), "login", "claude", "--name", "cli",
        *claude.setting_args(), "--timeout", "30", env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None and proc.stdout is not None
    url = ""
    async with asyncio.timeout(20):
        while not url:
            line = (await proc.stderr.readline()).decode()
            assert line, "the command ended before printing the URL"
            if line.startswith("http"):
                url = line.strip()
    pasted = await claude.user_signs_in(url)
    proc.stdin.write(pasted.encode() + b"\n")
    await proc.stdin.drain()
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert "signed in: conn_" in out.decode() and "cli (claude-code) prefix claude/" in (
        out.decode())
    await claude.reload()
    assert await claude.ask("from the cli") == "Hello! You said: from the cli"
    stored = next(c for c in await claude.gw.store.list_connections() if c.name == "cli")
    assert stored.settings["oauth_token_url"] == claude.settings["oauth_token_url"]
    for secret in (stored.credentials["access_token"], stored.credentials["refresh_token"]):
        assert secret.encode() not in out + err


async def test_the_command_line_waits_a_bounded_time(claude: Claude) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIROUTE_")}
    env["OMNIROUTE_SECRET_KEY"] = SECRET_KEY_B64
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        OMNIROUTE_BIN, "--data-dir", str(claude.data_dir), "login", "claude",
        *claude.setting_args(), "--timeout", "1", env=env, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)  # stdin stays open, silent
    assert proc.returncode == 1 and "no sign-in within 1s" in err.decode()
    assert time.monotonic() - started < 25
    assert await claude.gw.store.list_connections() == []
    bad = await asyncio.to_thread(claude.cli, "login", "claude", "--setting",
                                  "oauth_token_url=ftp://x")
    assert bad.exit_code == 1 and "oauth_token_url must be an http(s) URL" in bad.output
    unknown = await asyncio.to_thread(claude.cli, "login", "nosuch")
    assert unknown.exit_code == 1 and "known: claude" in unknown.output


# ------------------------------------------------------------------ import

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


async def test_import_from_claude_codes_file_leaves_it_unchanged(
    claude: Claude, tmp_path: Path,
) -> None:
    pair = claude.oauth.issue()
    home = tmp_path / "home"
    creds_file = home / ".claude" / ".credentials.json"
    original = write_credentials(creds_file, pair, refreshTokenExpiresAt=int(
        (time.time() + 30 * 86400) * 1000))
    before = creds_file.stat()
    result = await asyncio.to_thread(claude.cli, "providers", "import", "claude-code",
                                     *claude.setting_args(), home=home)  # the default path
    assert result.exit_code == 0, result.output
    assert "imported: conn_" in result.output and "claude (claude-code)" in result.output
    after = creds_file.stat()
    assert creds_file.read_bytes() == original
    assert (after.st_mtime_ns, after.st_mode, after.st_size) == (
        before.st_mtime_ns, before.st_mode, before.st_size)
    conn = (await claude.gw.store.list_connections())[0]
    creds = conn.credentials
    assert (creds["access_token"], creds["refresh_token"]) == (pair.access, pair.refresh)
    assert creds["expires_at"] == pytest.approx(int(pair.expires_at * 1000) / 1000)
    assert creds["scope"] == "user:inference user:profile"
    assert creds["extra"] == {"subscription_type": "max",
                              "rate_limit_tier": "default_claude_max_20x"}
    assert creds["refresh_expires_at"] > time.time() + 29 * 86400
    await claude.reload()
    assert await claude.ask("imported") == "Hello! You said: imported"

    listed = await asyncio.to_thread(claude.cli, "providers", "list")
    assert "claude-code" in listed.output and "token valid" in listed.output
    as_json = await asyncio.to_thread(claude.cli, "providers", "list", "--json")
    row = json.loads(as_json.output)[0]
    assert row["oauth"]["status"] == "active" and row["oauth"]["renewable"] is True
    assert pair.access not in as_json.output and str(pair.refresh) not in as_json.output
    # again, from a path given explicitly, under another name: a second account
    other = tmp_path / "elsewhere.json"
    write_credentials(other, claude.oauth.issue())
    result = await asyncio.to_thread(claude.cli, "providers", "import", "claude-code",
                                     "--path", str(other), "--name", "second")
    assert result.exit_code == 0, result.output
    assert len(await claude.gw.store.list_connections()) == 2


@pytest.mark.parametrize(("content", "message"), [
    (None, "cannot read"),
    (b"{not json", "not a JSON file"),
    (b'{"mcpOAuth": {}}', "no 'claudeAiOauth' credentials"),
    (b'{"claudeAiOauth": {"refreshToken": "r"}}', "holds no accessToken"),
])
def test_an_unusable_credentials_file_is_refused(
    claude: Claude, tmp_path: Path, content: bytes | None, message: str,
) -> None:
    path = tmp_path / "creds.json"
    if content is not None:
        path.write_bytes(content)
    result = claude.cli("providers", "import", "claude-code", "--path", str(path))
    assert result.exit_code == 1 and message in result.output
    unknown = claude.cli("providers", "import", "nosuch-cli")
    assert unknown.exit_code == 1 and "known: claude-code" in unknown.output


# ------------------------------------------------------------------ life cycle

async def test_an_expired_subscription_token_is_renewed_with_claudes_refresh_body(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue(lifetime=-60)
    view = await claude.gw.add_provider({
        "type": "claude-code", "settings": claude.settings, "credentials": {
            "access_token": pair.access, "refresh_token": pair.refresh,
            "expires_at": pair.expires_at}})
    assert await claude.ask("renew me") == "Hello! You said: renew me"
    refresh = next(r for r in claude.oauth.requests if r.json and
                   r.json.get("grant_type") == "refresh_token")
    assert refresh.json == {"grant_type": "refresh_token", "refresh_token": pair.refresh,
                            "client_id": CLAUDE.client_id}
    stored = await claude.gw.store.get_connection(view["id"])
    assert stored is not None and stored.credentials["access_token"] != pair.access
    assert claude.oauth.refresh_calls == 1


async def test_a_revoked_claude_account_needs_sign_in_and_the_next_one_serves(
    claude: Claude, caplog: pytest.LogCaptureFixture,
) -> None:
    dead = claude.oauth.issue(lifetime=-1)
    claude.oauth.revoke(dead.refresh)
    live = claude.oauth.issue()
    for name, pair, priority in (("dead", dead, 0), ("live", live, 1)):
        await claude.gw.add_provider({
            "type": "claude-code", "name": name, "priority": priority,
            "settings": claude.settings, "credentials": {
                "access_token": pair.access, "refresh_token": pair.refresh,
                "expires_at": pair.expires_at}})
    with caplog.at_level(logging.INFO):
        raw = await claude.sdk.messages.with_raw_response.create(
            model="claude/claude-haiku-4-5", max_tokens=16, system=IDENTITY,
            messages=[{"role": "user", "content": "who serves"}])
    assert raw.headers["X-OmniRoute-Provider"] == "claude"
    assert [r.headers["authorization"] for r in sent_messages(claude.upstream)] == [
        f"Bearer {live.access}"]
    listed = await asyncio.to_thread(claude.cli, "providers", "list")
    dead_line = next(line for line in listed.output.splitlines() if " dead " in line)
    assert "NEEDS SIGN-IN" in dead_line and "invalid_grant" in dead_line
    assert "NEEDS SIGN-IN" not in next(line for line in listed.output.splitlines()
                                       if " live " in line)
    limits = await (await claude.gw.client.get("/api/rate-limits",
                                               headers=claude.gw.admin_headers)).json()
    assert {r["name"]: r["terminal_reason"] for r in limits["connections"]} == {
        "dead": "needs_sign_in", "live": None}
    for secret in (dead.access, dead.refresh, live.access, live.refresh):
        assert str(secret) not in caplog.text and str(secret) not in listed.output
    # signing in again under its name brings it back
    started = await (await claude.gw.client.post(
        "/api/oauth/claude/start", headers=claude.gw.admin_headers,
        json={"name": "dead", "settings": claude.settings})).json()
    pasted = await claude.user_signs_in(started["url"])
    resp = await claude.gw.client.post("/api/oauth/claude/complete",
                                       headers=claude.gw.admin_headers, json={"code": pasted})
    assert resp.status == 200 and (await resp.json())["connection"]["oauth"]["status"] == (
        "active")
    limits = await (await claude.gw.client.get("/api/rate-limits",
                                               headers=claude.gw.admin_headers)).json()
    assert {r["name"]: r["terminal_reason"] for r in limits["connections"]}["dead"] is None
    await claude.ask("back")
    assert sent_messages(claude.upstream)[-1].headers["authorization"] != f"Bearer {live.access}"


async def test_twenty_claude_code_requests_on_a_lapsed_token_make_one_renewal(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue(lifetime=-1)
    await claude.gw.add_provider({"type": "claude-code", "settings": claude.settings,
                                  "credentials": {"access_token": pair.access,
                                                  "refresh_token": pair.refresh,
                                                  "expires_at": pair.expires_at}})
    claude.oauth.refresh_gate = asyncio.Event()
    asked = [asyncio.create_task(claude.ask(f"q{i}")) for i in range(20)]
    for _ in range(300):
        if claude.oauth.refresh_calls:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    claude.oauth.refresh_gate.set()
    assert await asyncio.gather(*asked) == [f"Hello! You said: q{i}" for i in range(20)]
    assert claude.oauth.refresh_calls == 1
    tokens = {r.headers["authorization"] for r in sent_messages(claude.upstream)}
    assert len(tokens) == 1 and f"Bearer {pair.access}" not in tokens


# ------------------------------------------------------------------ the quota

def test_the_unified_headers_become_windows_and_a_verdict() -> None:
    usage = claude_usage({
        "Anthropic-Ratelimit-Unified-Status": "allowed_warning",
        "anthropic-ratelimit-unified-reset": "1785518400",
        "anthropic-ratelimit-unified-representative-claim": "seven_day",
        "anthropic-ratelimit-unified-5h-status": "allowed",
        "anthropic-ratelimit-unified-5h-utilization": "0.21",
        "anthropic-ratelimit-unified-5h-reset": "1785000000",
        "anthropic-ratelimit-unified-7d_sonnet-utilization": "1.01",  # can pass 1
        "anthropic-ratelimit-unified-5h-surpassed-threshold": "0.75",  # not a window field
        "anthropic-ratelimit-unified-fallback-percentage": "0.5",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
        "anthropic-ratelimit-requests-remaining": "10",  # the API-key family: not ours
    })
    assert usage is not None
    windows = {w.name: w for w in usage.windows}
    assert set(windows) == {"5h", "7d_sonnet", "overage"}
    assert windows["5h"].used_percent == 21.0 and windows["5h"].window_minutes == 300
    assert windows["5h"].resets_at == 1785000000.0 and windows["5h"].status == "allowed"
    assert windows["7d_sonnet"].used_percent == 101.0
    assert windows["7d_sonnet"].window_minutes == 10080
    assert (usage.status, usage.binding, usage.resets_at) == (
        "allowed_warning", "7d", 1785518400.0)
    assert usage.notes == {"fallback-percentage": "0.5",
                           "overage-disabled-reason": "org_level_disabled"}
    assert not usage.spent(200)  # the service said: allowed
    assert usage.spent(429)  # a 429 with these headers is the subscription's limit
    assert claude_usage({"retry-after": "3"}) is None  # without them: a mere rate limit


def test_a_refusal_is_read_from_the_status_or_the_rejected_window() -> None:
    said = claude_usage({"anthropic-ratelimit-unified-status": "rejected",
                         "anthropic-ratelimit-unified-representative-claim": "five_hour",
                         "anthropic-ratelimit-unified-5h-reset": "2026-01-01T05:00:00Z"})
    assert said is not None and said.spent(200) and said.binding == "5h"
    assert said.reset() == 1767243600.0  # the binding window's (no overall reset said)
    assert said.reason() == "the 5-hour limit was reached"
    # no overall status: a 429 is the quota; the latest reset of its rejected windows
    bare = claude_usage({"anthropic-ratelimit-unified-5h-status": "rejected",
                         "anthropic-ratelimit-unified-5h-reset": "100",
                         "anthropic-ratelimit-unified-7d-status": "rejected",
                         "anthropic-ratelimit-unified-7d-reset": "900"})
    assert bare is not None and bare.spent(429) and not bare.spent(200)
    assert bare.reset() == 900.0 and bare.reason() == "the 5-hour limit was reached"


async def test_the_subscriptions_quota_is_read_and_a_rejection_rests_the_account(
    claude: Claude,
) -> None:
    first, second = claude.oauth.issue(), claude.oauth.issue()
    views = [await claude.gw.add_provider({
        "type": "claude-code", "name": name, "priority": priority,
        "settings": claude.settings, "credentials": {"access_token": pair.access}})
        for name, pair, priority in (("first", first, 0), ("second", second, 1))]
    gw = claude.gw

    def by_whom() -> list[str]:
        who = {f"Bearer {first.access}": "first", f"Bearer {second.access}": "second"}
        return [who[r.headers["authorization"]] for r in sent_messages(claude.upstream)]

    async def quota_of(conn_id: str) -> dict[str, Any]:
        limits = await (await gw.client.get("/api/rate-limits",
                                            headers=gw.admin_headers)).json()
        row = next(r for r in limits["connections"] if r["id"] == conn_id)
        return {**row["quota"], "cooldown_left": row["cooldown_left"]}

    assert await claude.ask("one") == "Hello! You said: one"
    quota = await quota_of(views[0]["id"])
    windows = {w["name"]: w for w in quota["windows"]}
    assert windows["5h"]["used_percent"] == 21.0 and windows["7d"]["used_percent"] == 5.0
    assert windows["5h"]["resets_at"] == pytest.approx(time.time() + 3 * 3600, abs=5)
    assert (quota["status"], quota["binding"], quota["exhausted"]) == ("allowed", "5h", False)
    assert quota["notes"]["overage-disabled-reason"] == "org_level_disabled"

    # the 5-hour window is spent until 3 s from now (its retry-after says only 1 s)
    claude.upstream.script.append(usage_limit("5h", resets_in=3))
    assert await claude.ask("two") == "Hello! You said: two"
    assert by_whom() == ["first", "first", "second"]  # the next target, no retry
    quota = await quota_of(views[0]["id"])
    assert quota["exhausted"] is True and quota["status"] == "rejected"
    assert quota["reason"] == "the 5-hour limit was reached"
    assert quota["resets_at"] == pytest.approx(time.time() + 3, abs=1.5)
    assert quota["cooldown_left"] > 1.5  # the rest is the window's, not retry-after's
    live = ok(await Cli(claude.data_dir).in_thread(
        "rate-limits", "--url", gw.base_url, "--admin-key", gw.admin_key)).output
    assert re.search(r"quota: 5h 100% used rejected resets in \d s \(binding\); 7d 30% "
                     r"used resets in 4\.0 days; overage rejected; RESTING \d s \(the "
                     r"5-hour limit was reached\)", live), live

    # not asked again before the reset: not after an operator's reset of the cooldowns,
    # nor after an edit of the connection rebuilt its provider
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    assert await claude.ask("three") == "Hello! You said: three"
    old = gw.catalog.providers[views[0]["id"]]
    resp = await gw.client.put(f"/api/providers/{views[0]['id']}", json={"rpm": 1000},
                               headers=gw.admin_headers)
    assert resp.status == 200 and gw.catalog.providers[views[0]["id"]] is not old
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    assert await claude.ask("four") == "Hello! You said: four"
    assert by_whom() == ["first", "first", "second", "second", "second"]
    # (the refusals' cooldowns end with the rest, their Retry-After rounded up a second)
    await asyncio.sleep(max(0.0, quota["resets_at"] - time.time()) + 1.2)
    assert await claude.ask("five") == "Hello! You said: five"  # the reset passed
    assert by_whom()[-1] == "first"
    assert (await quota_of(views[0]["id"]))["exhausted"] is False


async def test_a_streamed_request_moves_on_when_the_week_is_spent(claude: Claude) -> None:
    first, second = claude.oauth.issue(), claude.oauth.issue()
    ids = [(await claude.gw.add_provider({
        "type": "claude-code", "name": name, "priority": priority,
        "settings": claude.settings, "credentials": {"access_token": pair.access}}))["id"]
        for name, pair, priority in (("first", first, 0), ("second", second, 1))]
    claude.upstream.script.append(usage_limit("7d", resets_in=600))
    async with claude.sdk.messages.stream(
            model="claude/claude-haiku-4-5", max_tokens=64, system=IDENTITY,
            messages=[{"role": "user", "content": "streamed"}]) as stream:
        text = await stream.get_final_text()
    assert text == "Hello! You said: streamed"
    assert [r.headers["authorization"] for r in sent_messages(claude.upstream)] == [
        f"Bearer {first.access}", f"Bearer {second.access}"]
    quota = claude.gw.catalog.providers[ids[0]].quota_view()
    assert quota is not None and quota["exhausted"] and quota["binding"] == "7d"
    assert quota["reason"] == "the weekly limit was reached"
    assert quota["resets_at"] == pytest.approx(time.time() + 600, abs=5)
    rows = {r["id"]: r for r in claude.gw.resilience.snapshot(
        claude.gw.catalog.connections.values())["connections"]}
    assert 590 <= rows[ids[0]]["cooldown_left"] <= 601


async def test_a_429_without_a_reset_rests_its_retry_after_and_without_headers_is_a_throttle(
    claude: Claude,
) -> None:
    pair = claude.oauth.issue()
    view = await claude.gw.add_provider({"type": "claude-code", "settings": claude.settings,
                                         "credentials": {"access_token": pair.access}})
    provider = claude.gw.catalog.providers[view["id"]]
    claude.upstream.send_usage = False
    claude.upstream.script.append(error(429, "Rate limited", "rate_limit_error",
                                        headers={"retry-after": "7"}))  # no unified headers
    with pytest.raises(anthropic.RateLimitError):
        await claude.ask("throttled")
    assert provider.quota.resting() is None  # a rate limit: the cooldown is enough
    await claude.gw.client.post("/api/resilience/reset", headers=claude.gw.admin_headers)
    claude.upstream.script.append(error(429, "Usage limit", "rate_limit_error", headers={
        "retry-after": "120", "anthropic-ratelimit-unified-5h-utilization": "1.0"}))
    with pytest.raises(anthropic.RateLimitError) as caught:
        await claude.ask("spent")
    assert provider.quota.resting() == pytest.approx(120, abs=3)
    assert int(caught.value.response.headers["retry-after"]) == pytest.approx(120, abs=3)
