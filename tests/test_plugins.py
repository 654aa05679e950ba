"""Plugin loading: each entry point in isolation, block/allow lists, reporting."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from aiohttp import web
from click.testing import CliRunner

from omniroute.app import make_app
from omniroute.cli import cli, register_plugin_commands
from omniroute.config import ConfigError, load_config
from omniroute.plugins import load_plugins
from omniroute.providers.openai import OpenAIProvider
from omniroute.storage import Database, Store
from omniroute.storage.store import Connection
from omniroute.testing import make_test_config
from omniroute.vault import Vault
from omniroute.version import __version__

BUILTINS = {"openai", "memory-cache", "api-key", "admin-session"}
SAMPLES = {
    "good": "plugin_samples.good",
    "broken-import": "plugin_samples.broken_import",
    "misspelled": "plugin_samples.misspelled",
    "raising": "plugin_samples.raising",
    "duplicate": "plugin_samples.duplicate",
}
_ENV_VARS = ("OMNIROUTE_CONFIG", "OMNIROUTE_DATA_DIR", "OMNIROUTE_DISABLE_PLUGINS",
             "OMNIROUTE_PLUGINS", "OMNIROUTE_SECRET_KEY", "INITIAL_PASSWORD")


def ep(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name, value, group="omniroute")


def real_entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group="omniroute"))


def with_samples(*names: str) -> list[importlib.metadata.EntryPoint]:
    return real_entry_points() + [ep(n, SAMPLES[n]) for n in names or SAMPLES]


def runner(**env: str) -> CliRunner:
    """A CliRunner whose environment holds no omniroute variable but ``env``."""
    return CliRunner(env={**{v: None for v in _ENV_VARS}, **env})  # type: ignore[dict-item]


# ---------------------------------------------------------------------- isolation


def test_good_plugins_load_and_each_bad_one_is_isolated() -> None:
    plugins = load_plugins(entry_points=with_samples)
    infos = {i.name: i for i in plugins.infos}

    good = infos["good"]
    assert good.error is None and not good.blocked
    assert good.registered == {"providers": ["sample"], "cache_backends": ["sample-cache"]}
    assert plugins.providers["sample"].__module__ == "plugin_samples.good"

    assert infos["broken-import"].error is not None
    assert infos["broken-import"].error.startswith("import failed: ImportError")
    assert "omniroute_sample_missing_dependency" in infos["broken-import"].error

    assert infos["misspelled"].error == "unknown hook(s): register_provider"
    assert "misspelled" not in plugins.providers

    assert "RuntimeError" in (infos["raising"].error or "")
    assert "sample plugin exploded" in (infos["raising"].error or "")
    assert "half-registered" not in plugins.providers  # registered, then raised: skipped
    assert infos["raising"].registered == {}

    assert infos["duplicate"].error == "providers type 'openai' is already registered"
    assert plugins.providers["openai"] is OpenAIProvider  # the built-in is not shadowed
    assert "duplicate-side" not in plugins.providers  # the plugin is skipped as a whole
    assert infos["duplicate"].registered == {}

    # the built-ins are unaffected by all of that
    for name in BUILTINS:
        assert infos[name].error is None, infos[name]
    assert {"openai", "sample"} <= set(plugins.providers)
    assert {"memory", "sample-cache"} <= set(plugins.cache_backends)
    assert {"api-key", "admin-session"} <= set(plugins.auth_schemes)


def test_a_failed_plugin_runs_none_of_its_other_hooks(tmp_path: Path) -> None:
    plugins = load_plugins(entry_points=lambda: with_samples("raising", "good"))
    assert plugins.info("raising").error  # type: ignore[union-attr]
    assert plugins.pm.get_plugin("raising") is None
    app = make_app(make_test_config(tmp_path), plugins)
    paths = {r.resource.canonical for r in app.router.routes() if r.resource is not None}
    assert "/raising-plugin-route" not in paths  # its configure_app did not run
    assert "/api/auth/login" in paths  # the built-in admin-session's did

    @click.group()
    def group() -> None:
        pass

    register_plugin_commands(group, plugins)  # raising's register_commands would fail this
    assert "sample-hello" in group.commands


def test_a_plugin_whose_command_registration_raises_breaks_no_other_command() -> None:
    plugins = load_plugins(entry_points=lambda: [
        ep("bad-command", "plugin_samples.bad_command"), ep("good", SAMPLES["good"])])

    @click.group()
    def group() -> None:
        pass

    register_plugin_commands(group, plugins)
    assert plugins.info("good").error is None  # type: ignore[union-attr]
    assert "RuntimeError" in (plugins.info("bad-command").error or "")  # type: ignore[union-attr]
    result = CliRunner().invoke(group, ["sample-hello"])
    assert result.exit_code == 0 and result.output == "hello from sample\n"


def test_failure_for_names_the_broken_plugin() -> None:
    plugins = load_plugins(entry_points=lambda: [ep("broken-import", SAMPLES["broken-import"])])
    message = plugins.failure_for("providers", "sample")
    assert message.startswith("no provider type 'sample' is registered")
    assert "plugin 'broken-import' failed: import failed: ImportError" in message


# ---------------------------------------------------------------------- block / allow


def test_blocked_plugins_register_nothing() -> None:
    plugins = load_plugins(entry_points=lambda: with_samples("good"), blocked=["good", "openai"])
    for name in ("good", "openai"):
        info = plugins.info(name)
        assert info is not None and info.blocked and info.error is None
        assert info.registered == {} and info.hooks == []
        assert plugins.pm.is_blocked(name)
    assert "sample" not in plugins.providers
    assert "openai" not in plugins.providers
    assert "memory" in plugins.cache_backends  # not blocked
    assert "no provider type 'openai' is registered (plugin 'openai' is blocked" in (
        plugins.failure_for("providers", "openai"))


def test_allowed_loads_only_those() -> None:
    plugins = load_plugins(entry_points=with_samples, allowed=["good", "api-key"])
    loaded = {i.name for i in plugins.infos if not i.blocked}
    assert loaded == {"good", "api-key"}
    assert set(plugins.providers) == {"sample"}
    assert set(plugins.auth_schemes) == {"api-key"}
    # a broken plugin that is not allowed is never even imported
    assert plugins.info("broken-import").error is None  # type: ignore[union-attr]
    assert plugins.info("broken-import").blocked  # type: ignore[union-attr]


def test_real_entry_points_include_the_builtins() -> None:
    plugins = load_plugins()
    infos = {i.name: i for i in plugins.infos}
    assert set(infos) >= BUILTINS
    expected = {
        "openai": {"providers": ["openai"]},
        "memory-cache": {"cache_backends": ["memory"]},
        "api-key": {"auth_schemes": ["api-key"]},
        "admin-session": {"auth_schemes": ["admin-session"]},
    }
    for name, registered in expected.items():
        info = infos[name]
        assert info.distribution == "omniroute"
        assert info.version == __version__
        assert info.error is None and not info.blocked
        assert info.registered == registered
    assert "configure_app" in infos["admin-session"].hooks
    assert infos["openai"].module == "omniroute.providers.openai"
    # built-ins are loaded first, so a third-party type can never shadow them
    names = [i.name for i in plugins.infos]
    builtins = {i.name for i in plugins.infos if i.distribution == "omniroute"}
    assert builtins >= BUILTINS
    assert set(names[: len(builtins)]) == builtins
    assert "example-provider" in names[len(builtins):]  # the third-party example comes after


def test_environment_reaches_config(tmp_path: Path) -> None:
    config = load_config(environ={"OMNIROUTE_DATA_DIR": str(tmp_path),
                                  "OMNIROUTE_DISABLE_PLUGINS": "memory-cache, good ,",
                                  "OMNIROUTE_PLUGINS": "openai,memory-cache,api-key"})
    assert config.disabled_plugins == ("memory-cache", "good")
    assert config.allowed_plugins == ("openai", "memory-cache", "api-key")
    plugins = load_plugins(entry_points=with_samples, blocked=config.disabled_plugins,
                           allowed=config.allowed_plugins)
    assert {i.name for i in plugins.infos if not i.blocked} == {"openai", "api-key"}

    default = load_config(environ={"OMNIROUTE_DATA_DIR": str(tmp_path)})
    assert default.disabled_plugins == () and default.allowed_plugins is None

    (tmp_path / "omniroute.toml").write_text(
        '[plugins]\ndisabled = ["good"]\nallowed = ["openai", "good"]\n')
    from_toml = load_config(environ={"OMNIROUTE_DATA_DIR": str(tmp_path)})
    assert from_toml.disabled_plugins == ("good",)
    assert from_toml.allowed_plugins == ("openai", "good")
    # the environment wins over the file
    env_wins = load_config(environ={"OMNIROUTE_DATA_DIR": str(tmp_path),
                                    "OMNIROUTE_DISABLE_PLUGINS": "openai"})
    assert env_wins.disabled_plugins == ("openai",)


# ---------------------------------------------------------------------- fatal only when needed


async def _save_connection(data_dir: Path, conn: Connection) -> None:
    db = await Database.open(data_dir / "omniroute.sqlite3")
    try:
        await Store(db, Vault(b"k" * 32)).save_connection(conn)
    finally:
        await db.close()


async def test_gateway_refuses_to_start_without_a_needed_provider_type(tmp_path: Path) -> None:
    conn = Connection("conn_needs", "openai", "needs-openai", "up",
                      {"base_url": "http://127.0.0.1:9/v1"})
    await _save_connection(tmp_path, conn)
    config = make_test_config(tmp_path)

    runner = web.AppRunner(make_app(config, load_plugins(blocked=["openai"])))
    with pytest.raises(ConfigError) as info:
        await runner.setup()
    await runner.cleanup()
    message = str(info.value)
    assert "'needs-openai' (conn_needs) cannot be used" in message
    assert "no provider type 'openai' is registered" in message
    assert "plugin 'openai' is blocked" in message
    assert "omniroute providers remove conn_needs" in message

    # a broken plugin is named in the message too
    broken = load_plugins(entry_points=lambda: [ep("openai", SAMPLES["broken-import"])])
    runner = web.AppRunner(make_app(config, broken))
    with pytest.raises(ConfigError, match=r"plugin 'openai' failed: import failed: ImportError"):
        await runner.setup()
    await runner.cleanup()

    # an inactive connection of a missing type does not stop the gateway
    conn.active = False
    await _save_connection(tmp_path, conn)
    runner = web.AppRunner(make_app(config, load_plugins(blocked=["openai"])))
    await runner.setup()
    await runner.cleanup()


def test_serve_refuses_but_plugins_command_works(tmp_path: Path) -> None:
    """The same broken setup through the real command line (subprocesses)."""
    import asyncio

    asyncio.run(_save_connection(tmp_path, Connection(
        "conn_needs", "openai", "needs-openai", "up", {"base_url": "http://127.0.0.1:9/v1"})))
    env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
    env.update(OMNIROUTE_DISABLE_PLUGINS="openai", INITIAL_PASSWORD="test-password-123",
               OMNIROUTE_SECRET_KEY=base64.urlsafe_b64encode(b"k" * 32).decode())
    base = [sys.executable, "-m", "omniroute.cli", "--data-dir", str(tmp_path)]
    serve = subprocess.run([*base, "serve", "--port", "0"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert serve.returncode == 2  # a start-up input that cannot be used
    assert "Traceback" not in serve.stderr
    assert "'needs-openai' (conn_needs) cannot be used" in serve.stderr
    assert "plugin 'openai' is blocked" in serve.stderr
    # with workers, each finds it; the line is printed once and all of them stop
    serve = subprocess.run([*base, "serve", "--port", "0", "--workers", "2"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2 and "Traceback" not in serve.stderr
    assert serve.stderr.count("cannot be used") == 1, serve.stderr

    listing = subprocess.run([*base, "plugins", "--json"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    infos = {i["name"]: i for i in json.loads(listing.stdout)}
    assert infos["openai"]["blocked"] is True
    assert infos["api-key"]["registered"] == {"auth_schemes": ["api-key"]}


def test_plugins_command_json(tmp_path: Path) -> None:
    result = runner().invoke(cli, ["--data-dir", str(tmp_path), "plugins", "--json"])
    assert result.exit_code == 0, result.output
    infos = {i["name"]: i for i in json.loads(result.output)}
    assert set(infos) >= BUILTINS
    for info in infos.values():
        assert set(info) >= {"name", "module", "distribution", "version", "registered", "error",
                             "blocked", "hooks"}
    assert infos["openai"]["version"] == __version__
    assert infos["openai"]["distribution"] == "omniroute"
    assert infos["openai"]["registered"] == {"providers": ["openai"]}
    assert infos["memory-cache"]["registered"] == {"cache_backends": ["memory"]}

    blocked = runner(OMNIROUTE_DISABLE_PLUGINS="memory-cache").invoke(
        cli, ["--data-dir", str(tmp_path), "plugins", "--json"])
    infos = {i["name"]: i for i in json.loads(blocked.output)}
    assert infos["memory-cache"]["blocked"] is True
    assert infos["memory-cache"]["registered"] == {}

    text = runner().invoke(cli, ["--data-dir", str(tmp_path), "plugins"])
    assert text.exit_code == 0
    assert f"openai                   ok       omniroute {__version__}" in text.output
    assert "    providers: openai" in text.output


def test_plugins_command_reports_errors(monkeypatch: Any, tmp_path: Path) -> None:
    import omniroute.cli.common as cli_module

    real = cli_module.load_plugins

    def with_broken(**kwargs: Any) -> Any:
        return real(entry_points=lambda: with_samples("broken-import", "good"), **kwargs)

    monkeypatch.setattr(cli_module, "load_plugins", with_broken)
    result = runner().invoke(cli, ["--data-dir", str(tmp_path), "plugins"])
    assert result.exit_code == 0, result.output
    assert "broken-import            ERROR" in result.output
    assert "    error: import failed: ImportError" in result.output
    assert "good                     ok" in result.output
