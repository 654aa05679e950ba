"""The agent CLIs' files, written against temporary home directories and read back.

Each tool's configuration is parsed back (JSON, TOML, YAML, dotenv) and checked
field by field; the user's other settings must survive, and a restore must give
back the exact bytes (and modes) that were there before.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
import tomllib
from pathlib import Path

import pytest
import yaml

from omniroute.clitools import Backups, CliTools, Places, Target, VersionProber
from omniroute.clitools.custom import custom_tool
from omniroute.clitools.detect import parse_version
from omniroute.clitools.files import (
    load_json,
    parse_dotenv,
    set_dotenv,
    set_yaml_keys,
    strip_json_comments,
)
from omniroute.errors import GatewayError, NotFound

SLEEP = shutil.which("sleep")  # the fake binaries run with the test's PATH only
KEY = "sk-or-test-0123456789abcdefghij"
TARGET = Target("http://127.0.0.1:20128", KEY, "up/gpt-4.1")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def tools_in(home: Path, tmp_path: Path, **env: str) -> CliTools:
    places = Places({"HOME": str(home), "PATH": str(tmp_path / "bin"), **env})
    return CliTools(places, Backups(tmp_path / "data" / "backups"))


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


# ---------------------------------------------------------------------- formats


def test_json_comments_and_trailing_commas_are_read() -> None:
    text = '{\n  // a comment\n  "url": "http://x//y", /* block, with a comma */\n' \
           '  "list": [1, 2,],\n  "s": "a,]",\n}\n'
    assert json.loads(strip_json_comments(text)) == {"url": "http://x//y", "list": [1, 2],
                                                     "s": "a,]"}
    data, lossy = load_json(Path("x.json"), text)
    assert lossy and data["url"] == "http://x//y"
    assert load_json(Path("x.json"), '{"a": 1}') == ({"a": 1}, False)
    assert load_json(Path("x.json"), None) == ({}, False)


def test_yaml_keys_are_replaced_in_place_keeping_comments() -> None:
    text = "# my aider settings\nmodel: gpt-4o  # old\ndark-mode: true\nread:\n  - a.md\n" \
           "  - b.md\n# end\n"
    edited, whole = set_yaml_keys(Path("a.yml"), text, {"model": "openai/x", "read": "c.md",
                                                         "new-key": "v"})
    assert not whole
    assert edited.startswith("# my aider settings\n") and "# end\n" in edited
    assert yaml.safe_load(edited) == {"model": "openai/x", "dark-mode": True, "read": "c.md",
                                      "new-key": "v"}
    # a key written twice: only a rewrite says it once
    edited, whole = set_yaml_keys(Path("a.yml"), "a: 1\na: 2\n", {"a": 3})
    assert whole and yaml.safe_load(edited) == {"a": 3}


def test_dotenv_lines_are_replaced_and_others_kept() -> None:
    text = "# gemini\nexport GEMINI_API_KEY=old\nOTHER=\"keep me\"\nGEMINI_API_KEY=dup\n"
    edited = set_dotenv(text, {"GEMINI_API_KEY": KEY, "GEMINI_MODEL": "a b#c"})
    assert edited.splitlines()[:3] == ["# gemini", f"export GEMINI_API_KEY={KEY}",
                                       'OTHER="keep me"']
    assert parse_dotenv(edited) == {"GEMINI_API_KEY": KEY, "OTHER": "keep me",
                                    "GEMINI_MODEL": "a b#c"}


def test_version_parsing() -> None:
    assert parse_version("2.0.14 (Claude Code)\n") == "2.0.14"
    assert parse_version("\x1b[1mcodex-cli 0.46.0\x1b[0m") == "0.46.0"
    assert parse_version("aider v0.86.1-dev") == "0.86.1-dev"
    assert parse_version("no version here") is None


# ---------------------------------------------------------------------- each tool's files


async def test_claude_code_settings_env(home: Path, tmp_path: Path) -> None:
    settings = write(home / ".claude" / "settings.json", json.dumps({
        "theme": "dark", "permissions": {"allow": ["Bash(ls)"]},
        "env": {"FOO": "1", "ANTHROPIC_API_KEY": "sk-ant-old"}}))
    tools = tools_in(home, tmp_path)
    result = await tools.configure(tools.find("claude-code"),
                                   Target(TARGET.base_url, KEY, "up/big", "up/small"))
    data = json.loads(settings.read_text())
    assert data["theme"] == "dark" and data["permissions"] == {"allow": ["Bash(ls)"]}
    assert data["env"] == {"FOO": "1", "ANTHROPIC_BASE_URL": "http://127.0.0.1:20128",
                           "ANTHROPIC_AUTH_TOKEN": KEY, "ANTHROPIC_MODEL": "up/big",
                           "ANTHROPIC_DEFAULT_HAIKU_MODEL": "up/small"}
    assert any("ANTHROPIC_API_KEY was removed" in n for n in result["notes"])
    assert result["files"] == [str(settings)] and result["changed"]


async def test_claude_config_dir_variable_moves_the_file(home: Path, tmp_path: Path) -> None:
    tools = tools_in(home, tmp_path, CLAUDE_CONFIG_DIR=str(tmp_path / "cc"))
    await tools.configure(tools.find("claude-code"), TARGET)
    assert json.loads((tmp_path / "cc" / "settings.json").read_text())["env"][
        "ANTHROPIC_MODEL"] == "up/gpt-4.1"
    assert not (home / ".claude").exists()


async def test_codex_config_toml_keeps_comments_and_other_tables(home: Path,
                                                                 tmp_path: Path) -> None:
    original = ('# my codex\nmodel = "o3"  # favourite\napproval_policy = "on-request"\n\n'
                '[model_providers.other]\nname = "Other"\nbase_url = "https://x/v1"\n\n'
                '[mcp_servers.docs]\ncommand = "docs-mcp"\n')
    config = write(home / ".codex" / "config.toml", original)
    tools = tools_in(home, tmp_path)
    await tools.configure(tools.find("codex"), TARGET)
    text = config.read_text()
    assert text.startswith("# my codex\n") and "# favourite" in text
    data = tomllib.loads(text)
    assert data["model"] == "up/gpt-4.1" and data["model_provider"] == "omniroute"
    assert data["approval_policy"] == "on-request"
    assert data["model_providers"]["omniroute"] == {
        "name": "omniroute", "base_url": "http://127.0.0.1:20128/v1", "wire_api": "responses",
        "experimental_bearer_token": KEY}
    assert data["model_providers"]["other"] == {"name": "Other", "base_url": "https://x/v1"}
    assert data["mcp_servers"] == {"docs": {"command": "docs-mcp"}}


async def test_codex_home_and_profile_note(home: Path, tmp_path: Path) -> None:
    codex_home = tmp_path / "codex-home"
    write(codex_home / "config.toml", 'profile = "fast"\n[profiles.fast]\nmodel = "x"\n')
    tools = tools_in(home, tmp_path, CODEX_HOME=str(codex_home))
    result = await tools.configure(tools.find("codex"), TARGET)
    assert any("profile 'fast'" in n for n in result["notes"])
    assert tomllib.loads((codex_home / "config.toml").read_text())["profiles"] == {
        "fast": {"model": "x"}}


async def test_gemini_cli_settings_and_env(home: Path, tmp_path: Path) -> None:
    settings = write(home / ".gemini" / "settings.json",
                     '{\n  // ui\n  "ui": {"theme": "GitHub"},\n  "security": {"folderTrust": '
                     '{"enabled": true}},\n}\n')
    env = write(home / ".gemini" / ".env", "DEBUG=1\nGEMINI_API_KEY=old\n")
    tools = tools_in(home, tmp_path)
    result = await tools.configure(tools.find("gemini-cli"), TARGET)
    data = json.loads(settings.read_text())
    assert data["ui"] == {"theme": "GitHub"}
    assert data["security"] == {"folderTrust": {"enabled": True},
                                "auth": {"selectedType": "gemini-api-key"}}
    assert data["model"] == {"name": "up/gpt-4.1"}
    assert parse_dotenv(env.read_text()) == {
        "DEBUG": "1", "GEMINI_API_KEY": KEY, "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:20128",
        "GEMINI_MODEL": "up/gpt-4.1"}
    assert any("comments" in n for n in result["notes"])  # JSONC read, plain JSON written


async def test_opencode_provider(home: Path, tmp_path: Path) -> None:
    path = write(home / ".config" / "opencode" / "opencode.jsonc", json.dumps({
        "theme": "tokyonight",
        "provider": {"ollama": {"npm": "@ai-sdk/openai-compatible",
                                "options": {"baseURL": "http://localhost:11434/v1"}},
                     "omniroute": {"models": {"older": {"name": "older"}}}}}))
    tools = tools_in(home, tmp_path)
    await tools.configure(tools.find("opencode"),
                          Target(TARGET.base_url, KEY, "up/gpt-4.1", "up/mini"))
    assert not (home / ".config" / "opencode" / "opencode.json").exists()  # the .jsonc it had
    data = json.loads(path.read_text())
    assert data["theme"] == "tokyonight" and "ollama" in data["provider"]
    assert data["provider"]["omniroute"] == {
        "models": {"older": {"name": "older"}, "up/gpt-4.1": {"name": "up/gpt-4.1"},
                   "up/mini": {"name": "up/mini"}},
        "npm": "@ai-sdk/openai-compatible", "name": "omniroute",
        "options": {"baseURL": "http://127.0.0.1:20128/v1", "apiKey": KEY}}
    assert data["model"] == "omniroute/up/gpt-4.1" and data["small_model"] == "omniroute/up/mini"
    assert next(iter(data)) == "$schema"  # where OpenCode itself puts it


@pytest.mark.skipif(shutil.which("opencode") is None, reason="OpenCode is not installed here: "
                    "its own parser cannot be asked (the file is checked field by field above)")
async def test_opencode_own_parser_accepts_the_file(home: Path, tmp_path: Path) -> None:
    tools = tools_in(home, tmp_path)
    await tools.configure(tools.find("opencode"), TARGET)
    work = tmp_path / "work"
    work.mkdir()
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        "opencode", "debug", "config", cwd=work, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    resolved = json.loads(out)
    assert resolved["model"] == "omniroute/up/gpt-4.1"
    provider = resolved["provider"]["omniroute"]
    assert provider["npm"] == "@ai-sdk/openai-compatible"
    assert provider["options"]["baseURL"] == "http://127.0.0.1:20128/v1"
    assert "up/gpt-4.1" in provider["models"]


async def test_opencode_new_file_honours_xdg(home: Path, tmp_path: Path) -> None:
    tools = tools_in(home, tmp_path, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    await tools.configure(tools.find("opencode"), TARGET)
    data = json.loads((tmp_path / "xdg" / "opencode" / "opencode.json").read_text())
    assert data["$schema"] == "https://opencode.ai/config.json"
    assert data["model"] == "omniroute/up/gpt-4.1"


async def test_qwen_code_model_provider(home: Path, tmp_path: Path) -> None:
    theirs = {"id": "qwen3-coder-plus", "name": "Qwen3 Coder",
              "baseUrl": "https://dashscope.aliyuncs.com/compatible-mode/v1",
              "envKey": "DASHSCOPE_API_KEY"}
    path = write(home / ".qwen" / "settings.json", json.dumps({
        "modelProviders": {"openai": [theirs]}, "env": {"DASHSCOPE_API_KEY": "sk-ds"},
        "general": {"vimMode": True}}))
    tools = tools_in(home, tmp_path)
    await tools.configure(tools.find("qwen-code"), TARGET)
    await tools.configure(tools.find("qwen-code"), Target(TARGET.base_url, KEY, "up/other"))
    data = json.loads(path.read_text())
    assert data["modelProviders"]["openai"] == [
        {"id": "up/other", "name": "up/other (omniroute)", "baseUrl": "http://127.0.0.1:20128/v1",
         "envKey": "OMNIROUTE_API_KEY"}, theirs]  # the first one of ours was replaced
    assert data["env"] == {"DASHSCOPE_API_KEY": "sk-ds", "OMNIROUTE_API_KEY": KEY}
    assert data["security"] == {"auth": {"selectedType": "openai"}}
    assert data["model"] == {"name": "up/other"} and data["general"] == {"vimMode": True}


async def test_aider_conf_keeps_comments(home: Path, tmp_path: Path) -> None:
    path = write(home / ".aider.conf.yml",
                 "## aider settings\n#model: gpt-4o\ndark-mode: true\nauto-commits: false\n")
    tools = tools_in(home, tmp_path)
    await tools.configure(tools.find("aider"), Target(TARGET.base_url, KEY, "up/big", "up/small"))
    text = path.read_text()
    assert text.startswith("## aider settings\n#model: gpt-4o\n")
    assert yaml.safe_load(text) == {
        "dark-mode": True, "auto-commits": False, "openai-api-base": "http://127.0.0.1:20128/v1",
        "openai-api-key": KEY, "model": "openai/up/big", "weak-model": "openai/up/small"}


async def test_goose_config_and_secrets(home: Path, tmp_path: Path) -> None:
    config = write(home / ".config" / "goose" / "config.yaml",
                   "GOOSE_PROVIDER: anthropic\nGOOSE_MODEL: claude\nextensions:\n  developer:\n"
                   "    enabled: true\n    type: builtin\n")
    tools = tools_in(home, tmp_path)
    result = await tools.configure(tools.find("goose"), TARGET)
    assert yaml.safe_load(config.read_text()) == {
        "GOOSE_PROVIDER": "openai", "GOOSE_MODEL": "up/gpt-4.1",
        "extensions": {"developer": {"enabled": True, "type": "builtin"}},
        "OPENAI_HOST": "http://127.0.0.1:20128", "OPENAI_BASE_PATH": "v1/chat/completions"}
    secrets = home / ".config" / "goose" / "secrets.yaml"
    assert yaml.safe_load(secrets.read_text()) == {"OPENAI_API_KEY": KEY}
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o600  # a new file holding a key
    assert stat.S_IMODE(config.stat().st_mode) == 0o644  # the config holds none: unchanged
    assert any("keyring" in n for n in result["notes"])


async def test_continue_yaml_and_legacy_json(home: Path, tmp_path: Path) -> None:
    theirs = {"name": "Local", "provider": "ollama", "model": "qwen2.5-coder"}
    path = write(home / ".continue" / "config.yaml", yaml.safe_dump(
        {"name": "Mine", "version": "0.0.1", "schema": "v1", "models": [theirs],
         "rules": ["be brief"]}))
    tools = tools_in(home, tmp_path)
    await tools.configure(tools.find("continue"), TARGET)
    data = yaml.safe_load(path.read_text())
    assert data["name"] == "Mine" and data["rules"] == ["be brief"]
    assert data["models"] == [{"name": "up/gpt-4.1 (omniroute)", "provider": "openai",
                               "model": "up/gpt-4.1", "apiBase": "http://127.0.0.1:20128/v1",
                               "apiKey": KEY, "roles": ["chat", "edit", "apply"]}, theirs]
    # a setup on config.json alone is edited there (a new config.yaml would hide it)
    legacy_home = tmp_path / "legacy"
    legacy = write(legacy_home / ".continue" / "config.json",
                   json.dumps({"models": [{"title": "GPT", "provider": "openai"}]}))
    tools = tools_in(legacy_home, tmp_path)
    await tools.configure(tools.find("continue"), TARGET)
    assert not (legacy_home / ".continue" / "config.yaml").exists()
    assert [m["title"] for m in json.loads(legacy.read_text())["models"]] == [
        "up/gpt-4.1 (omniroute)", "GPT"]


# ---------------------------------------------------------------------- backups and restore


async def test_restore_gives_back_the_exact_bytes_and_mode(home: Path, tmp_path: Path) -> None:
    original = '{"theme":"dark",   "env": {"FOO": "1"}}'  # not as json.dumps would write it
    settings = write(home / ".claude" / "settings.json", original, 0o644)
    tools = tools_in(home, tmp_path)
    tool = tools.find("claude-code")
    await tools.configure(tool, TARGET)
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600  # it holds the key now
    undone = await tools.restore(tool)
    assert settings.read_text() == original
    assert stat.S_IMODE(settings.stat().st_mode) == 0o644
    assert undone["restored"][0]["files"] == [{"path": str(settings), "action": "restored",
                                               "changedSince": False, "keptAt": None}]
    assert undone["remaining"] == 0
    with pytest.raises(NotFound) as err:
        await tools.restore(tool)
    assert err.value.code == "no_backup"


async def test_restore_removes_created_files_and_directories(home: Path, tmp_path: Path) -> None:
    tools = tools_in(home, tmp_path)
    tool = tools.find("gemini-cli")
    await tools.configure(tool, TARGET)
    assert (home / ".gemini" / ".env").exists()
    await tools.restore(tool)
    assert list(home.iterdir()) == []  # .gemini was omniroute's: gone with its files


async def test_restore_all_and_step_by_step(home: Path, tmp_path: Path) -> None:
    original = 'model = "o3"\n'
    config = write(home / ".codex" / "config.toml", original)
    tools = tools_in(home, tmp_path)
    tool = tools.find("codex")
    for model in ("a/one", "a/two", "a/three"):
        await tools.configure(tool, Target(TARGET.base_url, KEY, model))
    assert (await tools.listing())["tools"][1]["backups"] == 3
    undone = await tools.restore(tool)  # the last change only
    assert tomllib.loads(config.read_text())["model"] == "a/two" and undone["remaining"] == 2
    undone = await tools.restore(tool, everything=True)
    assert config.read_text() == original and undone["remaining"] == 0
    assert len(undone["restored"]) == 2


async def test_a_file_changed_since_is_restored_and_its_change_kept(home: Path,
                                                                    tmp_path: Path) -> None:
    aider = write(home / ".aider.conf.yml", "dark-mode: true\n")
    tools = tools_in(home, tmp_path)
    tool = tools.find("aider")
    await tools.configure(tool, TARGET)
    aider.write_text(aider.read_text() + "auto-commits: false\n")  # the user edits it since
    undone = await tools.restore(tool)
    assert aider.read_text() == "dark-mode: true\n"
    entry = undone["restored"][0]["files"][0]
    assert entry["changedSince"] is True
    assert "auto-commits: false" in Path(entry["keptAt"]).read_text()


async def test_same_configuration_again_changes_nothing(home: Path, tmp_path: Path) -> None:
    tools = tools_in(home, tmp_path)
    tool = tools.find("claude-code")
    first = await tools.configure(tool, TARGET)
    again = await tools.configure(tool, TARGET)
    assert first["changed"] and first["backup"]
    assert not again["changed"] and again["backup"] is None
    assert len(tools.backups.active("claude-code")) == 1


async def test_an_unreadable_file_is_never_overwritten(home: Path, tmp_path: Path) -> None:
    broken = write(home / ".claude" / "settings.json", '{"env": {"A": 1')
    tools = tools_in(home, tmp_path)
    with pytest.raises(GatewayError) as err:
        await tools.configure(tools.find("claude-code"), TARGET)
    assert err.value.status == 409 and err.value.code == "config_unreadable"
    assert str(broken) in err.value.message
    assert broken.read_text() == '{"env": {"A": 1'
    assert tools.backups.active("claude-code") == []


async def test_a_symlinked_config_is_written_through(home: Path, tmp_path: Path) -> None:
    dotfiles = write(tmp_path / "dotfiles" / "aider.yml", "dark-mode: true\n")
    (home / ".aider.conf.yml").symlink_to(dotfiles)
    tools = tools_in(home, tmp_path)
    await tools.configure(tools.find("aider"), TARGET)
    assert (home / ".aider.conf.yml").is_symlink()
    assert yaml.safe_load(dotfiles.read_text())["openai-api-key"] == KEY
    await tools.restore(tools.find("aider"))
    assert (home / ".aider.conf.yml").is_symlink()
    assert dotfiles.read_text() == "dark-mode: true\n"


async def test_a_failed_write_leaves_everything_as_it_was(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omniroute.clitools import core

    settings = write(home / ".gemini" / "settings.json", '{"ui": {}}')
    real_write = core.write_atomic

    def failing(path: Path, data: bytes, **kw: object) -> None:
        if path.name == ".env":  # the second file: the first is written by then
            raise OSError(28, "No space left on device", str(path))
        real_write(path, data, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(core, "write_atomic", failing)
    tools = tools_in(home, tmp_path)
    with pytest.raises(GatewayError) as err:
        await tools.configure(tools.find("gemini-cli"), TARGET)
    assert err.value.code == "write_failed" and "No space left" in err.value.message
    assert settings.read_text() == '{"ui": {}}'
    assert not (home / ".gemini" / ".env").exists()
    assert tools.backups.active("gemini-cli") == []


# ---------------------------------------------------------------------- detection


def fake_binary(bin_dir: Path, name: str, script: str) -> Path:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


async def test_detection_by_binary_config_and_the_summary(home: Path, tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    fake_binary(tmp_path / "bin", "claude", f'echo x >> "{calls}"\necho "2.0.14 (Claude Code)"\n')
    write(home / ".continue" / "config.yaml", "name: x\n")  # the editor extension, no binary
    tools = tools_in(home, tmp_path)
    listing = await tools.listing([custom_tool({"binary": "claude", "id": "claude-again"}),
                                   custom_tool({"binary": "nothere"})])
    rows = {r["id"]: r for r in listing["tools"]}
    assert rows["claude-code"] | {"configPaths": None} == {
        "id": "claude-code", "name": "Claude Code", "binary": "claude", "version": "2.0.14",
        "installed": True, "protocol": "anthropic", "isCustom": False,
        "path": str(tmp_path / "bin" / "claude"), "detectedBy": "binary", "configPaths": None,
        "configFound": [], "configurable": True, "configured": False, "backups": 0}
    assert rows["continue"]["installed"] and rows["continue"]["detectedBy"] == "config"
    assert rows["continue"]["version"] is None
    assert rows["codex"]["installed"] is False and rows["codex"]["detectedBy"] is None
    assert rows["claude-again"]["isCustom"] and rows["claude-again"]["version"] == "2.0.14"
    assert not rows["claude-again"]["configurable"]
    assert listing["summary"] == {"total": 11, "installed": 3, "notFound": 8, "builtIn": 9,
                                  "custom": 2}
    # the answer for one binary file is asked once, and kept
    assert calls.read_text().count("x") == 1
    await tools.listing()
    assert calls.read_text().count("x") == 1
    await tools.listing(refresh=True)
    assert calls.read_text().count("x") == 2


async def test_an_npm_installed_cli_is_not_run_for_its_version(tmp_path: Path) -> None:
    package = tmp_path / "lib" / "node_modules" / "@acme" / "agent"
    (package / "bin").mkdir(parents=True)
    (package / "package.json").write_text('{"name": "@acme/agent", "version": "1.2.3"}')
    script = fake_binary(package / "bin", "agent.js", 'echo "9.9.9"\n')
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "agent").symlink_to(script)  # as npm links a package's bin
    prober = VersionProber({"PATH": str(tmp_path / "bin")})
    assert await prober.version(str(tmp_path / "bin" / "agent"), ["--version"]) == "1.2.3"
    plain = fake_binary(tmp_path / "bin", "plain", 'echo "4.5.6"\n')  # not a package: run
    assert await prober.version(str(plain), ["--version"]) == "4.5.6"


async def test_an_answer_is_kept_for_its_ttl(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    binary = fake_binary(tmp_path / "bin", "goose", f'echo x >> "{calls}"\necho "1.9.0"\n')
    now = [0.0]
    prober = VersionProber({"PATH": str(tmp_path / "bin")}, ttl=60.0, clock=lambda: now[0])
    for moment in (0.0, 59.0, 61.0):
        now[0] = moment
        assert await prober.version(str(binary), ["--version"]) == "1.9.0"
    assert calls.read_text().count("x") == 2  # asked at 0 and again once 60 s had passed


async def test_a_changed_binary_is_asked_again(tmp_path: Path) -> None:
    binary = fake_binary(tmp_path / "bin", "gemini", 'echo "0.1.0"\n')
    prober = VersionProber({"PATH": str(tmp_path / "bin")})
    assert await prober.version(str(binary), ["--version"]) == "0.1.0"
    binary.write_text('#!/bin/sh\necho "gemini 0.20.1"\n')  # an upgrade: size and time change
    os.utime(binary, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert await prober.version(str(binary), ["--version"]) == "0.20.1"


async def test_a_hanging_version_is_bounded(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    hang = fake_binary(tmp_path / "bin", "codex",
                       f'echo $$ >> "{pid_file}"\n{SLEEP} 30 &\necho $! >> "{pid_file}"\nwait\n')
    prober = VersionProber({"PATH": str(tmp_path / "bin")}, timeout=0.5)
    started = time.monotonic()
    results = await asyncio.gather(prober.version(str(hang), ["--version"]),
                                   prober.version(str(hang), ["--version"]))
    assert results == [None, None]
    assert 0.45 <= time.monotonic() - started < 3.0  # it hung until the timeout, no longer
    pids = [int(line) for line in pid_file.read_text().split()]
    assert len(pids) == 2  # both callers shared one run: the script and its sleep
    deadline = time.monotonic() + 2.0  # a SIGKILL lands at once; allow for a busy machine
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert not any(alive(pid) for pid in pids)  # both killed: the whole process group


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_listing_does_not_block_the_event_loop(home: Path, tmp_path: Path) -> None:
    fake_binary(tmp_path / "bin", "aider", f"{SLEEP} 0.5\necho aider 0.86.0\n")
    tools = tools_in(home, tmp_path)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.ensure_future(tick())
    started = time.monotonic()
    try:
        listing = await tools.listing()
    finally:
        ticker.cancel()
    assert time.monotonic() - started >= 0.45  # aider took its half second to answer ...
    assert next(r for r in listing["tools"] if r["id"] == "aider")["version"] == "0.86.0"
    assert ticks > 20  # ... and the loop kept running meanwhile


def test_custom_tool_specs() -> None:
    tool = custom_tool({"binary": "mytool", "name": "My Tool", "protocol": "anthropic",
                        "configPaths": ["~/.mytool/config.json"]})
    assert (tool.id, tool.name, tool.binary, tool.protocol, tool.is_custom) == (
        "mytool", "My Tool", "mytool", "anthropic", True)
    assert tool.config_paths(Places({"HOME": "/h"})) == [Path("/h/.mytool/config.json")]
    for bad, why in (({"binary": "a b"}, "binary"), ({"binary": "x", "protocol": "soap"},
                                                      "protocol"),
                     ({"binary": "x", "id": "Bad Id"}, "id"), ({"binary": "x", "colour": 1},
                                                               "unknown")):
        with pytest.raises(ValueError, match=why):
            custom_tool(bad)
