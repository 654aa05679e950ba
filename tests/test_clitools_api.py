"""``/api/cli-tools`` and ``omniroute connect`` against temporary home directories.

The real agent CLIs are not installed here, so the files written for the three
that speak a client API the official SDKs also speak (Claude Code: Anthropic,
Codex: Responses, Gemini CLI: Gemini) are used the way those CLIs use them: the
SDK is built from the written base URL, key and model, and asks the gateway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tomllib
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from click.testing import CliRunner
from fakes.openai_upstream import FakeOpenAI
from google import genai
from test_cli import SECRET_KEY_B64

from omniroute.cli import cli
from omniroute.clitools.files import parse_dotenv
from omniroute.startup import open_store
from omniroute.storage.audit import AuditLog
from omniroute.testing import make_test_config, start_harness

UPSTREAM_KEY = "sk-upstream-test"
MODEL = "up/gpt-4o-mini"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    (path / ".claude").mkdir(parents=True)
    (path / ".claude" / "settings.json").write_text('{"theme": "light"}\n')
    return path


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    path = tmp_path / "bin"
    path.mkdir()
    claude = path / "claude"
    claude.write_text('#!/bin/sh\necho "2.1.0 (Claude Code)"\n')
    claude.chmod(0o755)
    return path


@pytest.fixture
async def gw(aiohttp_client: Any, aiohttp_server: Any, tmp_path: Path, home: Path,
             bin_dir: Path) -> Any:
    fake = FakeOpenAI(api_key=UPSTREAM_KEY)
    server = await aiohttp_server(fake.app)
    config = make_test_config(tmp_path / "data").replace(
        tool_env={"HOME": str(home), "PATH": str(bin_dir)})
    harness = await start_harness(aiohttp_client, config)
    harness.fake = fake
    await harness.add_provider({"type": "openai", "name": "fake", "prefix": "up",
                                "base_url": str(server.make_url("/v1")),
                                "api_key": UPSTREAM_KEY})
    return harness


async def api(gw: Any, method: str, path: str, body: Any = None, *,
              headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await gw.client.request(method, path, json=body,
                                   headers=gw.admin_headers if headers is None else headers)
    return resp.status, await resp.json()


async def test_the_api_needs_an_admin(gw: Any) -> None:
    for method, path in (("GET", "/api/cli-tools"), ("POST", "/api/cli-tools"),
                         ("POST", "/api/cli-tools/claude-code/configure"),
                         ("POST", "/api/cli-tools/claude-code/restore"),
                         ("DELETE", "/api/cli-tools/x")):
        status, body = await api(gw, method, path, {}, headers={})
        assert status == 401 and body["error"]["code"] == "admin_required", (method, path)
        client_key = await gw.create_key("client")
        status, body = await api(gw, method, path, {},
                                 headers={"Authorization": f"Bearer {client_key}"})
        assert status == 403 and body["error"]["type"] == "permission_error", (method, path)


async def test_listing_custom_tools_and_the_summary(gw: Any, bin_dir: Path) -> None:
    status, listing = await api(gw, "GET", "/api/cli-tools")
    assert status == 200
    assert listing["summary"] == {"total": 9, "installed": 1, "notFound": 8, "builtIn": 9,
                                  "custom": 0}
    claude = listing["tools"][0]
    assert {k: claude[k] for k in ("id", "name", "binary", "version", "installed", "protocol",
                                   "isCustom")} == {
        "id": "claude-code", "name": "Claude Code", "binary": "claude", "version": "2.1.0",
        "installed": True, "protocol": "anthropic", "isCustom": False}
    assert [t["id"] for t in listing["tools"]] == [
        "claude-code", "codex", "gemini-cli", "opencode", "qwen-code", "aider", "goose", "cline",
        "continue"]
    assert {t["protocol"] for t in listing["tools"]} == {"anthropic", "responses", "gemini",
                                                         "openai"}

    mine = bin_dir / "mytool"
    mine.write_text("#!/bin/sh\necho mytool version 1.2.3\n")
    mine.chmod(0o755)
    status, row = await api(gw, "POST", "/api/cli-tools",
                            {"binary": "mytool", "name": "My Tool", "protocol": "openai"})
    assert status == 201 and row["id"] == "mytool" and row["version"] == "1.2.3"
    assert row["isCustom"] and row["installed"] and not row["configurable"]
    status, _ = await api(gw, "POST", "/api/cli-tools", {"binary": "other", "id": "away"})
    assert status == 201
    status, listing = await api(gw, "GET", "/api/cli-tools?refresh=true")
    assert listing["summary"] == {"total": 11, "installed": 2, "notFound": 9, "builtIn": 9,
                                  "custom": 2}
    status, body = await api(gw, "POST", "/api/cli-tools", {"binary": "mytool"})
    assert status == 400 and body["error"]["code"] == "duplicate_id"
    status, body = await api(gw, "POST", "/api/cli-tools", {"binary": "x", "protocol": "soap"})
    assert status == 400 and body["error"]["code"] == "invalid_cli_tool"
    assert "protocol" in body["error"]["message"]
    status, body = await api(gw, "POST", "/api/cli-tools/mytool/configure", {"model": MODEL})
    assert status == 400 and body["error"]["code"] == "not_configurable"
    assert "/v1" in body["error"]["message"] and MODEL in body["error"]["message"]
    status, body = await api(gw, "DELETE", "/api/cli-tools/claude-code")
    assert status == 400 and body["error"]["code"] == "not_custom"
    assert await api(gw, "DELETE", "/api/cli-tools/away") == (200, {"deleted": "away"})
    status, body = await api(gw, "DELETE", "/api/cli-tools/away")
    assert status == 404
    status, listing = await api(gw, "GET", "/api/cli-tools")
    assert listing["summary"]["custom"] == 1
    settings = await api(gw, "GET", "/api/settings")
    assert "_cli_tools" not in settings[1]["stored"]  # kept out of the runtime settings


async def test_configure_claude_code_then_use_it_like_claude_code(
        gw: Any, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    await gw.set_settings(require_api_key=True)
    caplog.set_level(logging.DEBUG)
    status, result = await api(gw, "POST", "/api/cli-tools/claude-code/configure",
                               {"model": MODEL, "newKey": True})
    assert status == 200, result
    settings = json.loads((home / ".claude" / "settings.json").read_text())
    env = settings["env"]
    secret = env["ANTHROPIC_AUTH_TOKEN"]
    assert settings["theme"] == "light"
    assert env["ANTHROPIC_BASE_URL"] == gw.base_url and env["ANTHROPIC_MODEL"] == MODEL
    assert result["keyCreated"] is True and result["keyId"].startswith("key_")
    assert result["key"] != secret and result["key"].startswith(secret[:4])
    assert secret not in json.dumps(result)  # never returned in full ...
    assert secret not in caplog.text  # ... nor logged
    stored = {k.id: k.name for k in await gw.store.list_keys()}
    assert stored[result["keyId"]] == "cli:claude-code"

    # what Claude Code does with that env: the Messages API at the root URL, bearer token
    client = anthropic.AsyncAnthropic(base_url=env["ANTHROPIC_BASE_URL"],
                                      auth_token=secret, api_key=None, max_retries=0)
    answer = await client.messages.create(model=env["ANTHROPIC_MODEL"], max_tokens=50,
                                          messages=HI)  # type: ignore[arg-type]
    assert answer.content[0].text == "Hello! You said: hi"  # type: ignore[union-attr]

    status, listing = await api(gw, "GET", "/api/cli-tools")
    assert listing["tools"][0]["configured"] is True and listing["tools"][0]["backups"] == 1
    status, undone = await api(gw, "POST", "/api/cli-tools/claude-code/restore")
    assert status == 200 and undone["remaining"] == 0
    assert (home / ".claude" / "settings.json").read_text() == '{"theme": "light"}\n'
    status, body = await api(gw, "POST", "/api/cli-tools/claude-code/restore", {"all": True})
    assert status == 404 and body["error"]["code"] == "no_backup"


async def test_codex_and_gemini_files_work_with_their_sdks(gw: Any, home: Path) -> None:
    key = await gw.create_key("tools")
    for tool in ("codex", "gemini-cli"):
        status, result = await api(gw, "POST", f"/api/cli-tools/{tool}/configure",
                                   {"model": MODEL, "key": key})
        assert status == 200, result
        assert result["key"] != key and result["keyCreated"] is False
    resp = await gw.client.get("/api/compliance/audit-log", headers=gw.admin_headers)
    audit = await resp.json()
    assert sum(e["action"] == "POST /api/cli-tools/{id}/configure" for e in audit["entries"]) == 2
    assert key not in json.dumps(audit)  # the request's key is redacted in the audit log

    codex = tomllib.loads((home / ".codex" / "config.toml").read_text())
    provider = codex["model_providers"][codex["model_provider"]]
    assert provider["wire_api"] == "responses"
    client = openai.AsyncOpenAI(base_url=provider["base_url"],
                                api_key=provider["experimental_bearer_token"], max_retries=0)
    reply = await client.responses.create(model=codex["model"], input="hi")
    assert reply.output_text == "Hello! You said: hi"

    env = parse_dotenv((home / ".gemini" / ".env").read_text())
    google = genai.Client(api_key=env["GEMINI_API_KEY"], http_options={
        "base_url": env["GOOGLE_GEMINI_BASE_URL"], "api_version": "v1beta"})
    answer = await google.aio.models.generate_content(model=env["GEMINI_MODEL"], contents="hi")
    assert answer.text == "Hello! You said: hi"


async def test_bad_input_gets_clear_errors(gw: Any, home: Path) -> None:
    key = await gw.create_key("tools")
    cases = [
        ("nope", {"model": MODEL}, 404, "unknown_cli_tool", "claude-code"),
        ("claude-code", {}, 400, "missing_model", "model"),
        ("claude-code", {"model": "has space"}, 400, "invalid_request", "model"),
        ("claude-code", {"model": MODEL, "key_id": "key_123"}, 400, "key_not_recoverable",
         "hashed"),
        ("claude-code", {"model": MODEL, "key": "sk-or-not-a-key-of-ours"}, 400,
         "invalid_api_key", "not an API key of this gateway"),
        ("claude-code", {"model": MODEL, "key": key, "new_key": True}, 400, "invalid_request",
         "not both"),
        ("claude-code", {"model": MODEL, "base_url": "ftp://x"}, 400, "invalid_request",
         "base_url"),
        ("claude-code", {"model": MODEL, "colour": "red"}, 400, "invalid_request", "colour"),
        ("cline", {"model": MODEL, "key": key}, 400, "not_configurable", "OpenAI Compatible"),
    ]
    for tool, body, status, code, words in cases:
        got, answer = await api(gw, "POST", f"/api/cli-tools/{tool}/configure", body)
        assert (got, answer["error"]["code"]) == (status, code), (tool, body, answer)
        assert words in answer["error"]["message"], answer
    await gw.set_settings(require_api_key=True)
    got, answer = await api(gw, "POST", "/api/cli-tools/codex/configure", {"model": MODEL})
    assert got == 400 and answer["error"]["code"] == "key_required"
    revoked = await gw.create_key("gone")
    key_id = next(k.id for k in await gw.store.list_keys() if k.name == "gone")
    await gw.store.revoke_key(key_id)
    got, answer = await api(gw, "POST", "/api/cli-tools/codex/configure",
                            {"model": MODEL, "key": revoked})
    assert got == 400 and "revoked" in answer["error"]["message"]
    (home / ".codex").mkdir()
    (home / ".codex" / "config.toml").write_text("model = [unclosed\n")
    got, answer = await api(gw, "POST", "/api/cli-tools/codex/configure",
                            {"model": MODEL, "key": key})
    assert got == 409 and answer["error"]["code"] == "config_unreadable"
    assert (home / ".codex" / "config.toml").read_text() == "model = [unclosed\n"
    # nothing of these left a change behind, nor a key made for nothing
    assert not (home / ".gemini").exists()
    assert not any(k.name.startswith("cli:") for k in await gw.store.list_keys())


async def test_a_model_the_gateway_does_not_know_is_a_warning(gw: Any, home: Path) -> None:
    key = await gw.create_key("tools")
    status, result = await api(gw, "POST", "/api/cli-tools/aider/configure",
                               {"model": "nowhere/model", "key": key})
    assert status == 200
    assert any("does not resolve 'nowhere/model'" in n for n in result["notes"])


# ---------------------------------------------------------------------- the command line


def connect(tmp_path: Path, home: Path, bin_dir: Path, *args: str) -> Any:
    runner = CliRunner(env={"HOME": str(home), "PATH": str(bin_dir),
                            "OMNIROUTE_SECRET_KEY": SECRET_KEY_B64, "OMNIROUTE_DATA_DIR": None,
                            "XDG_CONFIG_HOME": None, "CODEX_HOME": None,
                            "CLAUDE_CONFIG_DIR": None, "GEMINI_CLI_HOME": None,
                            "REQUIRE_API_KEY": None, "OMNIROUTE_REQUIRE_API_KEY": None,
                            "INITIAL_PASSWORD": None})
    return runner.invoke(cli, ["--data-dir", str(tmp_path / "data"), "connect", *args])


def test_connect_command(tmp_path: Path, home: Path, bin_dir: Path) -> None:
    result = connect(tmp_path, home, bin_dir, "--list", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert listing["summary"] == {"total": 9, "installed": 1, "notFound": 8, "builtIn": 9,
                                  "custom": 0}
    assert listing["tools"][0]["version"] == "2.1.0"

    result = connect(tmp_path, home, bin_dir, "claude-code", "--model", MODEL, "--new-key")
    assert result.exit_code == 0, result.output
    env = json.loads((home / ".claude" / "settings.json").read_text())["env"]
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:20128"  # this configuration's
    assert env["ANTHROPIC_MODEL"] == MODEL and env["ANTHROPIC_AUTH_TOKEN"].startswith("sk-or-")
    assert env["ANTHROPIC_AUTH_TOKEN"] not in result.output  # only the masked key is shown
    assert "undo: omniroute connect claude-code --undo" in result.output

    result = connect(tmp_path, home, bin_dir, "--list")
    assert "configured by omniroute" in result.output.splitlines()[0]
    result = connect(tmp_path, home, bin_dir, "claude-code", "--undo")
    assert result.exit_code == 0 and "1 change(s) undone" in result.output
    assert (home / ".claude" / "settings.json").read_text() == '{"theme": "light"}\n'

    result = connect(tmp_path, home, bin_dir, "--add", "mytool", "--name", "My Tool")
    assert result.exit_code == 0 and "not found on PATH" in result.output
    result = connect(tmp_path, home, bin_dir, "--list", "--json")
    assert json.loads(result.output)["summary"]["custom"] == 1
    result = connect(tmp_path, home, bin_dir, "--remove", "mytool")
    assert result.exit_code == 0, result.output

    for args, words in ((("nope", "--model", MODEL), "No CLI tool 'nope'"),
                        (("codex",), "A model is needed"),
                        (("codex", "--undo"), "Nothing to restore"),
                        (("--remove", "codex"), "not a custom tool"),
                        ((), "give a TOOL_ID")):
        result = connect(tmp_path, home, bin_dir, *args)
        assert result.exit_code != 0 and words in result.output, (args, result.output)

    # every change, and every refusal once the store was open, is on the audit record
    # with the action of the /api/cli-tools route that makes it (the key never)
    async def audit_page() -> list[dict[str, Any]]:
        store = await open_store(make_test_config(tmp_path / "data"))
        try:
            return (await AuditLog(store.db).page(limit=50))[0]
        finally:
            await store.db.close()

    page = asyncio.run(audit_page())
    assert [(e["action"], e["target"], e["status"]) for e in reversed(page)] == [
        ("POST /api/cli-tools/{id}/configure", "claude-code", 200),
        ("POST /api/cli-tools/{id}/restore", "claude-code", 200),
        ("POST /api/cli-tools", "mytool", 200),
        ("DELETE /api/cli-tools/{id}", "mytool", 200),
        ("POST /api/cli-tools/{id}/configure", "nope", 400),
        ("POST /api/cli-tools/{id}/configure", "codex", 400),
        ("POST /api/cli-tools/{id}/restore", "codex", 400),
        ("DELETE /api/cli-tools/{id}", "codex", 400)]
    assert all(e["actor"].startswith("cli:") and e["address"] == "local" for e in page)
    assert env["ANTHROPIC_AUTH_TOKEN"] not in json.dumps(page)



#: (tool id, binary, arguments of a one-shot prompt, extra environment): each real CLI
#: asked "say hi" once, headless, with the files omniroute wrote and nothing else
REAL_CLIS = [
    ("codex", "codex", ["exec", "--skip-git-repo-check"], {}),
    ("claude-code", "claude", ["-p"], {"CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                                       "DISABLE_AUTOUPDATER": "1"}),
    ("gemini-cli", "gemini", ["-p"], {"GEMINI_CLI_TRUST_WORKSPACE": "true"}),
    ("qwen-code", "qwen", ["-p"], {}),
    ("continue", "cn", ["-p"], {}),
]


@pytest.mark.parametrize(("tool_id", "binary", "args", "extra_env"), [
    pytest.param(*case, id=case[0], marks=pytest.mark.skipif(
        shutil.which(case[1]) is None,
        reason=f"{case[1]} is not installed here: the real CLI cannot be run (its files are "
               "checked field by field; scripts/agent-clis.sh installs it)"))
    for case in REAL_CLIS])
async def test_the_real_cli_runs_through_the_gateway(
        gw: Any, home: Path, tmp_path: Path, tool_id: str, binary: str, args: list[str],
        extra_env: dict[str, str]) -> None:
    key = await gw.create_key(tool_id)
    status, result = await api(gw, "POST", f"/api/cli-tools/{tool_id}/configure",
                               {"model": MODEL, "key": key})
    assert status == 200, result
    work = tmp_path / "work"
    work.mkdir()
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "NO_COLOR": "1", **extra_env}
    proc = await asyncio.create_subprocess_exec(
        binary, *args, "say hi", cwd=work, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, (out.decode(), err.decode())
    assert "Hello! You said:" in out.decode() + err.decode(), (out.decode(), err.decode())
    assert gw.fake.requests  # answered by the upstream, through the gateway
