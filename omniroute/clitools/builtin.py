"""The agent CLIs omniroute knows: names, binaries, protocols, files and writers.

Plain data; a plugin adds tools of its own with the ``register_cli_tools`` hook
(:mod:`omniroute.hookspecs`), users add custom ones (:mod:`omniroute.clitools.custom`).
The built-ins are not an entry point: there is nothing to block or swap in a list
of names, and ``omniroute connect`` must keep working while a plugin is broken.
"""

from __future__ import annotations

from omniroute.clitools import writers as w
from omniroute.clitools.tool import CliTool

_CLINE_MANUAL = (
    "Cline keeps its provider settings in its own state store (the editor's secret "
    "storage, or the CLI's data directory), which has no documented file format. In "
    "Cline's settings (or `cline auth`) choose the 'OpenAI Compatible' provider, with "
    "the base URL {v1}, an omniroute API key and the model {model}.")

BUILTIN_TOOLS: tuple[CliTool, ...] = (
    CliTool(
        id="claude-code", name="Claude Code", binaries=("claude",), protocol="anthropic",
        config_paths=lambda p: [w.claude_dir(p) / "settings.json"],
        configure=w.configure_claude_code),
    CliTool(
        id="codex", name="Codex", binaries=("codex",), protocol="responses",
        config_paths=lambda p: [w.codex_dir(p) / "config.toml"],
        configure=w.configure_codex),
    CliTool(
        id="gemini-cli", name="Gemini CLI", binaries=("gemini",), protocol="gemini",
        config_paths=lambda p: [w.gemini_dir(p) / "settings.json", w.gemini_dir(p) / ".env"],
        configure=w.configure_gemini_cli),
    CliTool(
        id="opencode", name="OpenCode", binaries=("opencode",), protocol="openai",
        config_paths=lambda p: [w.opencode_dir(p) / "opencode.json",
                                w.opencode_dir(p) / "opencode.jsonc"],
        configure=w.configure_opencode),
    CliTool(
        id="qwen-code", name="Qwen Code", binaries=("qwen",), protocol="openai",
        config_paths=lambda p: [w.qwen_dir(p) / "settings.json"],
        configure=w.configure_qwen_code),
    CliTool(
        id="aider", name="Aider", binaries=("aider",), protocol="openai",
        config_paths=lambda p: [p.home / ".aider.conf.yml"],
        configure=w.configure_aider),
    CliTool(
        id="goose", name="Goose", binaries=("goose",), protocol="openai",
        config_paths=lambda p: [w.goose_dir(p) / "config.yaml"],
        configure=w.configure_goose),
    CliTool(
        id="cline", name="Cline", binaries=("cline",), protocol="openai",
        config_paths=lambda p: [p.home / ".cline"],
        manual=_CLINE_MANUAL, version_args=("version",)),
    CliTool(
        id="continue", name="Continue", binaries=("cn",), protocol="openai",
        config_paths=lambda p: [w.continue_dir(p) / "config.yaml",
                                w.continue_dir(p) / "config.json"],
        configure=w.configure_continue),
)
