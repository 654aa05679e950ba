"""Finding the tools on this machine: their binary on ``PATH``, their version, their files.

Most agent CLIs are npm packages: when the binary resolves into a package under
``node_modules``, the version is that package's ``package.json`` version, and no
process is started (a Node.js CLI can take seconds just to print its version).
Otherwise the version comes from running the binary (``--version``) as a
subprocess of the event loop, bounded by a timeout after which its whole process
group is killed. Answers are kept per binary file (path, size, modification
time) for a while, so a page refresh asks nothing again and a new install is
asked anew. Looking up ``PATH`` and the files runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omniroute.clitools.tool import CliTool, Places

#: seconds a binary may take to print its version (Gemini CLI 0.61 took 5-9 s on a busy
#: two-core machine; the tools are asked at once, and their answers kept)
VERSION_TIMEOUT = 10.0
#: seconds an answer is reused for the same binary file
VERSION_TTL = 600.0
#: characters of output read for a version (a version is on the first lines)
_MAX_OUTPUT = 4096

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_VERSION = re.compile(r"(?<![\w.])v?(\d+\.\d+(?:\.\d+)?(?:[-+][0-9A-Za-z][0-9A-Za-z.\-]*)?)")


def package_version(binary: str) -> str | None:
    """The version of the npm package ``binary`` resolves into, if it does (blocking)."""
    real = Path(os.path.realpath(binary))
    if "node_modules" not in real.parts:
        return None
    for folder in list(real.parents)[:4]:
        manifest = folder / "package.json"
        if manifest.is_file():
            try:
                data = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None  # unreadable: the binary is asked instead
            version = data.get("version") if isinstance(data, dict) else None
            return parse_version(version) if isinstance(version, str) else None
        if folder.name == "node_modules":
            break
    return None


def parse_version(output: str) -> str | None:
    """The first version number in ``output`` (``2.0.14``, ``0.1.0-beta.3``), else None."""
    match = _VERSION.search(_ANSI.sub("", output[:_MAX_OUTPUT]))
    return match.group(1) if match else None


@dataclass(frozen=True)
class Detection:
    """What was found of one tool."""

    tool: CliTool
    #: the binary's full path, None when none of its names is on ``PATH``
    path: str | None
    version: str | None
    #: the tool's configuration files (or directories) that exist
    config_found: tuple[Path, ...]

    @property
    def installed(self) -> bool:
        return self.path is not None or bool(self.config_found)

    @property
    def detected_by(self) -> str | None:
        if self.path is not None:
            return "binary"
        return "config" if self.config_found else None


class VersionProber:
    """Asks binaries for their version, each at most ``timeout`` seconds, and remembers.

    :param env: the environment the binaries run in (the tools' own: home, ``PATH``).
    :param clock: monotonic seconds (tests move it).
    """

    def __init__(self, env: dict[str, str], *, timeout: float = VERSION_TIMEOUT,
                 ttl: float = VERSION_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.env = env
        self.timeout = timeout
        self.ttl = ttl
        self.clock = clock
        self._answers: dict[tuple[str, int, int], tuple[float, str | None]] = {}
        self._asking: dict[tuple[str, int, int], asyncio.Task[str | None]] = {}

    def forget(self) -> None:
        """Drop the remembered answers (``?refresh=true``)."""
        self._answers.clear()

    async def version(self, path: str, args: Sequence[str]) -> str | None:
        """The version ``path`` prints, None when it prints none in time or fails.

        The question runs in a task of its own: callers asking the same binary at the
        same time share it, and one that gives up does not stop it (it is bounded).
        """
        try:
            info = os.stat(path)
        except OSError:
            return None
        key = (path, info.st_size, info.st_mtime_ns)
        known = self._answers.get(key)
        if known is not None and known[0] > self.clock():
            return known[1]
        task = self._asking.get(key)
        if task is None:
            task = self._asking[key] = asyncio.ensure_future(self._ask(path, args))
            task.add_done_callback(lambda done: self._answered(key, done))
        return await asyncio.shield(task)

    def _answered(self, key: tuple[str, int, int], task: asyncio.Task[str | None]) -> None:
        self._asking.pop(key, None)
        if not task.cancelled() and task.exception() is None:
            self._answers[key] = (self.clock() + self.ttl, task.result())

    async def _ask(self, path: str, args: Sequence[str]) -> str | None:
        known = await asyncio.to_thread(package_version, path)
        if known is not None:
            return known
        try:
            proc = await asyncio.create_subprocess_exec(
                path, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env={**self.env, "NO_COLOR": "1"},
                start_new_session=True)
        except OSError:
            return None
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            _kill_group(proc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 1.0)
            return None
        except asyncio.CancelledError:  # the loop is closing: leave nothing running
            _kill_group(proc)
            raise
        return parse_version(out.decode("utf-8", "replace"))


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the binary and whatever it started


def locate(tool: CliTool, places: Places) -> tuple[str | None, tuple[Path, ...]]:
    """The binary on ``PATH`` and the configuration paths that exist (blocking: a thread)."""
    path = next(filter(None, (shutil.which(name, path=places.path) for name in tool.binaries)),
                None)
    found = tuple(p for p in tool.config_paths(places) if p.exists())
    return path, found


async def detect(tools: Sequence[CliTool], places: Places,
                 prober: VersionProber) -> list[Detection]:
    """Every tool's detection, the versions asked all at once."""
    located = await asyncio.to_thread(lambda: [locate(tool, places) for tool in tools])

    async def one(tool: CliTool, path: str | None, found: tuple[Path, ...]) -> Detection:
        version = await prober.version(path, tool.version_args) if path else None
        return Detection(tool, path, version, found)

    return list(await asyncio.gather(*(one(t, p, f) for t, (p, f) in zip(tools, located,
                                                                       strict=True))))
