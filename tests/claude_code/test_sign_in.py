"""Signing in to a Claude subscription by the API and by the CLI, and importing Claude
Code's credentials file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from claude_code.support import (
    EMAIL,
    OMNIROUTE_BIN,
    SECRET_KEY_B64,
    Claude,
    write_credentials,
)
from omniroute.providers.claude_code import (
    CLAUDE,
)


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
    resp = await claude.gw.client.get("/api/compliance/audit-log", headers=claude.gw.admin_headers,
                                      params={"action": "cli login"})
    (entry,) = (await resp.json())["entries"]
    assert (entry["target"], entry["status"], entry["address"]) == (stored.id, 201, "local")
    assert entry["actor"].startswith("cli:") and entry["diff"]["request"]["name"] == "cli"
    assert stored.credentials["access_token"] not in json.dumps(entry)


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
    # each import is on the audit record the gateway pages, no token in it
    resp = await claude.gw.client.get("/api/compliance/audit-log", headers=claude.gw.admin_headers,
                                      params={"action": "cli providers import"})
    audit = await resp.json()
    ids = {c.id for c in await claude.gw.store.list_connections()}
    assert {e["target"] for e in audit["entries"]} == ids
    assert [(e["status"], e["actor"][:4], e["address"]) for e in audit["entries"]] == [
        (201, "cli:", "local")] * 2
    assert pair.access not in json.dumps(audit) and str(pair.refresh) not in json.dumps(audit)


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
