"""Agent CLIs (Claude Code, Codex, Gemini CLI, ...): found on this machine, pointed at omniroute.

* :mod:`~omniroute.clitools.tool` — what a tool is (:class:`CliTool`), where things are
  (:class:`Places`) and what it is pointed at (:class:`Target`);
* :mod:`~omniroute.clitools.builtin` — the tools omniroute knows, as data;
  :mod:`~omniroute.clitools.writers` — how each one's own files are rewritten;
  :mod:`~omniroute.clitools.files` — their formats (JSON, TOML, YAML, dotenv);
* :mod:`~omniroute.clitools.detect` — binaries on ``PATH``, versions (bounded, cached);
* :mod:`~omniroute.clitools.backups` — a backup before every write, and restore;
* :mod:`~omniroute.clitools.custom` — the user's own tools, kept in the database;
* :mod:`~omniroute.clitools.core` — :class:`CliTools`, the facade the API and the CLI use;
  :mod:`~omniroute.clitools.connect` — one configure request: its input and its key.

See docs/cli-tools.md.
"""

from __future__ import annotations

from omniroute.clitools.backups import Backups
from omniroute.clitools.connect import ConnectRequest, connect, gateway_url
from omniroute.clitools.core import CliTools
from omniroute.clitools.custom import load_custom
from omniroute.clitools.detect import VersionProber
from omniroute.clitools.tool import CliTool, ConfigUnreadable, Edits, Places, Reader, Target

__all__ = [
    "Backups",
    "CliTool",
    "CliTools",
    "ConfigUnreadable",
    "ConnectRequest",
    "Edits",
    "Places",
    "Reader",
    "Target",
    "VersionProber",
    "connect",
    "gateway_url",
    "load_custom",
]
