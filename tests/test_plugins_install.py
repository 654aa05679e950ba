"""``omniroute plugins install`` / ``uninstall``: pip in the gateway's own environment.

The slow test installs the example plugin for real, into a fresh virtual
environment of its own, so the suite's environment is never changed. That
environment sees the suite's packages (omniroute, aiohttp, pip, setuptools,
wheel) through a path file, except the example plugin itself; pip works offline
(no index, no build isolation).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import omniroute.cli as cli_module
import omniroute.cli.plugins as plugins_module
from omniroute.cli import cli

EXAMPLE = Path(__file__).resolve().parent.parent / "plugins" / "omniroute-example-provider"


# ----------------------------------------------------------------------------- the commands

class Recorder:
    """Stands in for ``subprocess.run``: records each command, answers with ``codes``."""

    def __init__(self, *codes: int) -> None:
        self.commands: list[list[str]] = []
        self.codes = list(codes)

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        return subprocess.CompletedProcess(command, self.codes.pop(0) if self.codes else 0)


@pytest.fixture
def pip(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    monkeypatch.setattr(plugins_module.subprocess, "run", recorder)
    return recorder


def test_install_passes_names_paths_and_editables_to_pip(pip: Recorder, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "plugins", "install",
                                      "omniroute-x", "./local", "-e", "../mine", "-U"])
    assert result.exit_code == 0, result.output
    install, listing = pip.commands
    assert install == [sys.executable, "-m", "pip", "install", "omniroute-x", "./local",
                       "-e", "../mine", "--upgrade"]
    assert listing == [sys.executable, "-m", "omniroute", "--data-dir", str(tmp_path),
                       "plugins"]


def test_uninstall_says_yes_for_the_user(pip: Recorder) -> None:
    result = CliRunner().invoke(cli, ["plugins", "uninstall", "omniroute-x", "omniroute-y"])
    assert result.exit_code == 0, result.output
    assert pip.commands[0] == [sys.executable, "-m", "pip", "uninstall", "-y", "omniroute-x",
                               "omniroute-y"]
    assert pip.commands[1][-1] == "plugins"


def test_a_pip_failure_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins_module.subprocess, "run", Recorder(1))
    result = CliRunner().invoke(cli, ["plugins", "install", "omniroute-nope"])
    assert result.exit_code == 1
    assert result.output == "Error: pip install failed (exit code 1)\n"


def test_install_needs_something_to_install(pip: Recorder) -> None:
    result = CliRunner().invoke(cli, ["plugins", "install"])
    assert result.exit_code == 2
    assert "name at least one package" in result.output
    assert pip.commands == []


@pytest.mark.parametrize(("args", "skips"), [
    (["plugins", "uninstall", "x"], True),
    (["plugins", "install", "-e", "."], True),
    (["--data-dir", "plugins", "plugins", "install", "x"], True),
    (["--config=c.toml", "plugins", "--json", "uninstall", "x"], True),
    (["plugins"], False),
    (["plugins", "--json"], False),
    (["providers", "list"], False),
    (["serve"], False),
])
def test_install_and_uninstall_load_no_plugin(args: list[str], skips: bool) -> None:
    assert cli_module._skips_plugins(args) is skips


# ----------------------------------------------------------------------------- for real

def _venv(tmp_path: Path) -> Path:
    """A fresh venv that sees the suite's packages except the example plugin; its python."""
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(tmp_path / "venv")], check=True, timeout=120)
    python = tmp_path / "venv" / "bin" / "python"
    suite = Path(sysconfig.get_paths()["purelib"])
    view = tmp_path / "suite-packages"
    view.mkdir()
    for entry in suite.iterdir():
        if "example_provider" not in entry.name:
            (view / entry.name).symlink_to(entry)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    own = subprocess.run([str(python), "-c", where], check=True, capture_output=True,
                         text=True, timeout=60).stdout.strip()
    # addsitedir also reads the suite's own path files (the editable omniroute)
    Path(own, "suite.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    return python


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "OMNIROUTE_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env.update(OMNIROUTE_DATA_DIR=str(tmp_path / "data"), PIP_CONFIG_FILE=os.devnull,
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1")
    return env


@pytest.mark.slow
def test_install_then_uninstall_a_plugin_even_once_it_is_broken(tmp_path: Path) -> None:
    python, env = _venv(tmp_path), _env(tmp_path)
    # a copy, so that building the distribution writes nothing into the repository
    plugin = tmp_path / "omniroute-example-provider"
    shutil.copytree(EXAMPLE, plugin, ignore=shutil.ignore_patterns(
        "*.egg-info", "__pycache__", "build", "tests"))

    def omniroute(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(python), "-m", "omniroute", *args], check=False, env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)

    def installed() -> dict[str, Any]:
        listing = omniroute("plugins", "--json")
        assert listing.returncode == 0, listing.stderr
        return {p["name"]: p for p in json.loads(listing.stdout)}

    assert "example-provider" not in installed()
    assert "openai" in installed()

    for args in (["-e", str(plugin)], [str(plugin)]):  # editable, then a regular install
        done = omniroute("plugins", "install", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "example-provider         ok       omniroute-example-provider 0.1.0" in done.stdout
        assert installed()["example-provider"]["registered"] == {"providers": ["example"]}
        if args[0] == "-e":
            done = omniroute("plugins", "uninstall", "omniroute-example-provider")
            assert done.returncode == 0, done.stdout + done.stderr
            assert "Successfully uninstalled omniroute-example-provider" in done.stdout
            assert "\nexample-provider " not in done.stdout  # the listing that follows
            assert "example-provider" not in installed()

    # A plugin that kills whoever imports it (as a native wheel built for another CPU
    # does) takes every other command down with it ...
    module = Path(subprocess.run(
        [str(python), "-c", "import omniroute_example_provider as m; print(m.__file__)"],
        env=env, check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    assert str(tmp_path / "venv") in str(module)
    module.write_text("import os\nos._exit(3)\n")
    assert omniroute("providers", "list").returncode == 3
    # ... but not uninstall, which imports no plugin
    done = omniroute("plugins", "uninstall", "omniroute-example-provider")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully uninstalled omniroute-example-provider" in done.stdout
    assert "example-provider" not in installed()
    assert omniroute("providers", "list").returncode == 0
