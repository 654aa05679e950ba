"""What a CLI tool is: its names, the API it speaks, its files, and how it is pointed at us.

A :class:`CliTool` is data: the built-in ones are listed in
:mod:`omniroute.clitools.builtin`, a plugin adds its own with the
``register_cli_tools`` hook, and the user adds custom ones (detected only).
Writing a tool's configuration is a pure function (:data:`Configure`): it gets
the current text of the files it asked for and returns their new text, so
nothing is written until every file parsed, and tests need no disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: the client APIs a tool may speak (the gateway serves each of them)
Protocol = Literal["anthropic", "openai", "responses", "gemini"]
PROTOCOLS: tuple[str, ...] = ("anthropic", "openai", "responses", "gemini")


@dataclass(frozen=True)
class Places:
    """Where things are on this machine: the home, ``PATH`` and the variables that move
    the tools' directories (:data:`omniroute.config.TOOL_ENV_VARS`)."""

    env: Mapping[str, str]

    @property
    def home(self) -> Path:
        return Path(self.env["HOME"])

    @property
    def path(self) -> str:
        return self.env.get("PATH", os.defpath)

    def dir(self, variable: str, default: Path) -> Path:
        """``$variable`` when it is set, else ``default``."""
        value = self.env.get(variable)
        return Path(value).expanduser() if value else default

    @property
    def config_home(self) -> Path:
        """XDG's configuration home: ``$XDG_CONFIG_HOME`` or ``~/.config``."""
        return self.dir("XDG_CONFIG_HOME", self.home / ".config")


@dataclass(frozen=True)
class Target:
    """What a tool is pointed at: the gateway, the key it sends and the model it asks for."""

    #: the gateway's root URL, without a path (``http://127.0.0.1:20128``)
    base_url: str
    key: str
    model: str
    #: a smaller model for the tool's background work, where it has one
    small_model: str | None = None

    @property
    def v1(self) -> str:
        """The OpenAI-style base (``<root>/v1``) most tools take."""
        return f"{self.base_url}/v1"


class ConfigUnreadable(ValueError):
    """A tool's existing file cannot be parsed: nothing is written."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path


#: the current text of a file, None when it does not exist
Reader = Callable[[Path], str | None]


@dataclass(frozen=True)
class Edits:
    """A configuration change: each file's new text, and what the user should know."""

    files: dict[Path, str]
    notes: tuple[str, ...] = ()
    #: the files holding the key (written owner-only when they are new)
    secret_files: frozenset[Path] = frozenset()


#: ``configure(places, target, read)``: the tool's files rewritten to use ``target``
Configure = Callable[[Places, Target, Reader], Edits]


@dataclass(frozen=True)
class CliTool:
    """One agent CLI omniroute can find and (when ``configure`` is set) point at itself."""

    id: str
    name: str
    #: executable names looked up on ``PATH``, first found wins
    binaries: tuple[str, ...]
    protocol: str
    #: the files (or directories) that show the tool is set up here, and that
    #: ``configure`` may write; a function of where things are
    config_paths: Callable[[Places], list[Path]] = field(default=lambda _places: [])
    configure: Configure | None = None
    #: why it cannot be configured, and what to do instead (when ``configure`` is None)
    manual: str | None = None
    #: the arguments that make it print its version
    version_args: tuple[str, ...] = ("--version",)
    is_custom: bool = False

    def __post_init__(self) -> None:
        if not self.id or not all(c.isalnum() or c in "-_." for c in self.id):
            raise ValueError(f"a CLI tool id is letters, digits, '-', '_' or '.': {self.id!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"{self.id}: protocol must be one of {', '.join(PROTOCOLS)}, "
                             f"got {self.protocol!r}")
        if not self.binaries:
            raise ValueError(f"{self.id}: at least one binary name is needed")

    @property
    def binary(self) -> str:
        """The name it is usually run by."""
        return self.binaries[0]
