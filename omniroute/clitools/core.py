"""The agent CLIs on this machine, and pointing one of them at the gateway.

Usage (the API and ``omniroute connect`` both go through this)::

    tools = CliTools(Places(config.tool_env), Backups(config.data_dir / "cli-tools"),
                     extra=plugins.cli_tools())
    custom = await load_custom(store)
    listing = await tools.listing(custom)                  # GET /api/cli-tools
    tool = tools.find("claude-code", custom)
    result = await tools.configure(tool, Target(url, key, "openai/gpt-4.1"))
    undone = await tools.restore(tool)

Errors are the gateway's typed errors, so the API renders them and the CLI
prints their message: an unknown tool is a 404, a tool omniroute cannot write
(or bad input) a 400, an existing file that does not parse a 409 (nothing is
written then), nothing to restore a 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omniroute.clitools.backups import BackupBusy, Backups, private_mode, read_bytes
from omniroute.clitools.builtin import BUILTIN_TOOLS
from omniroute.clitools.detect import Detection, VersionProber, detect
from omniroute.clitools.files import missing_dirs, read_text, write_atomic
from omniroute.clitools.tool import CliTool, ConfigUnreadable, Edits, Places, Target
from omniroute.errors import GatewayError, InvalidRequest, NotFound

if TYPE_CHECKING:
    from omniroute.config import Config
    from omniroute.plugins import Plugins

log = logging.getLogger(__name__)


class CliTools:
    """The known tools (built-in, then the plugins'), their detection and their files.

    :param places: where the tools live (home, ``PATH``, their directory variables).
    :param backups: where replaced files are kept.
    :param extra: tools the plugins register; one whose id is taken is left out.
    :param prober: asks binaries for their version (default: one per ``CliTools``).
    """

    def __init__(self, places: Places, backups: Backups, *, extra: Sequence[CliTool] = (),
                 prober: VersionProber | None = None) -> None:
        self.places = places
        self.backups = backups
        self.prober = prober or VersionProber(dict(places.env))
        self.known: list[CliTool] = list(BUILTIN_TOOLS)
        for tool in extra:
            if any(t.id == tool.id for t in self.known):
                log.error("CLI tool %r from a plugin is left out: the id is taken", tool.id)
                continue
            self.known.append(tool)

    @classmethod
    def for_config(cls, config: Config, plugins: Plugins) -> CliTools:
        """The tools of the user omniroute runs as (``config.tool_env``), backups in the
        data directory, the plugins' tools after the built-in ones."""
        return cls(Places(config.tool_env), Backups(config.data_dir / "cli-tools" / "backups"),
                   extra=plugins.cli_tools(taken=[t.id for t in BUILTIN_TOOLS]))

    def tools(self, custom: Sequence[CliTool] = ()) -> list[CliTool]:
        """Every tool: the known ones, then the custom ones whose id is free."""
        taken = {t.id for t in self.known}
        return self.known + [t for t in custom if t.id not in taken]

    def find(self, tool_id: str, custom: Sequence[CliTool] = ()) -> CliTool:
        tools = self.tools(custom)
        for tool in tools:
            if tool.id == tool_id:
                return tool
        raise NotFound(f"No CLI tool {tool_id!r}; known: {', '.join(t.id for t in tools)}.",
                       code="unknown_cli_tool")

    # ------------------------------------------------------------------ detection

    async def listing(self, custom: Sequence[CliTool] = (), *,
                      refresh: bool = False) -> dict[str, Any]:
        """``GET /api/cli-tools``: each tool as found here, and the counts."""
        if refresh:
            self.prober.forget()
        tools = self.tools(custom)
        found = await detect(tools, self.places, self.prober)
        backups = await asyncio.to_thread(
            lambda: {t.id: len(self.backups.active(t.id)) for t in tools})
        rows = [self._row(d, backups[d.tool.id]) for d in found]
        installed = sum(1 for r in rows if r["installed"])
        custom_count = sum(1 for r in rows if r["isCustom"])
        return {"tools": rows, "summary": {
            "total": len(rows), "installed": installed, "notFound": len(rows) - installed,
            "builtIn": len(rows) - custom_count, "custom": custom_count}}

    async def describe(self, tool: CliTool) -> dict[str, Any]:
        """One tool as :meth:`listing` shows it."""
        found = (await detect([tool], self.places, self.prober))[0]
        backups = await asyncio.to_thread(lambda: len(self.backups.active(tool.id)))
        return self._row(found, backups)

    def _row(self, found: Detection, backups: int) -> dict[str, Any]:
        tool = found.tool
        return {
            "id": tool.id, "name": tool.name, "binary": tool.binary, "version": found.version,
            "installed": found.installed, "protocol": tool.protocol, "isCustom": tool.is_custom,
            "path": found.path, "detectedBy": found.detected_by,
            "configPaths": [str(p) for p in tool.config_paths(self.places)],
            "configFound": [str(p) for p in found.config_found],
            "configurable": tool.configure is not None,
            "configured": backups > 0, "backups": backups,
        }

    # ------------------------------------------------------------------ configure

    async def configure(self, tool: CliTool, target: Target,
                        notes: Sequence[str] = ()) -> dict[str, Any]:
        """Rewrite ``tool``'s own files to use ``target``, after backing them up.

        :param notes: what the caller wants the user told too (about the key, the model).
        """
        if tool.configure is None:
            manual = tool.manual or ""
            url = target.v1 if tool.protocol in ("openai", "responses") else target.base_url
            for name, value in (("{v1}", target.v1), ("{base}", target.base_url), ("{url}", url),
                                ("{model}", target.model), ("{protocol}", tool.protocol)):
                manual = manual.replace(name, value)
            raise InvalidRequest(f"omniroute cannot write {tool.name}'s settings. {manual}",
                                 code="not_configurable")
        edits, backup, changed = await self._run(
            "Nothing was changed.", self._apply, tool, target)
        return {
            "id": tool.id, "name": tool.name, "configured": True, "changed": changed,
            "backup": backup, "baseUrl": target.base_url, "model": target.model,
            "smallModel": target.small_model,
            "files": [str(p) for p in edits.files],
            "notes": [*notes, *edits.notes],
        }

    def _apply(self, tool: CliTool, target: Target) -> tuple[Edits, str | None, bool]:
        assert tool.configure is not None
        with self.backups.lock(tool.id):
            edits = tool.configure(self.places, target, read_text)
            before = {p: read_bytes(p) for p in edits.files}
            after = {p: text.encode() for p, text in edits.files.items()}
            if all(before[p] == after[p] for p in after):
                return edits, None, False  # already so: no backup to undo a no-op
            modes = {p: p.stat().st_mode & 0o7777 for p in after if before[p] is not None}
            created = {p: missing_dirs(p) for p in after}
            backup = self.backups.save(tool.id, before, after, created)
            written: list[Path] = []
            try:
                for path, data in after.items():
                    secret = path in edits.secret_files
                    write_atomic(path, data, private=secret,
                                 mode=private_mode(path) if secret else None)
                    written.append(path)
            except OSError:
                self._undo(written, before, modes, created)
                self.backups.drop(tool.id, backup)
                raise
            return edits, backup, True

    @staticmethod
    def _undo(written: list[Path], before: dict[Path, bytes | None], modes: dict[Path, int],
              created: dict[Path, list[Path]]) -> None:
        """Put back the files of a change that failed half-way."""
        for path in written:
            old = before[path]
            if old is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, old, mode=modes[path])
        for directories in created.values():
            for directory in reversed(directories):
                with contextlib.suppress(OSError):
                    directory.rmdir()

    # ------------------------------------------------------------------ restore

    async def restore(self, tool: CliTool, *, everything: bool = False) -> dict[str, Any]:
        """Undo the newest change omniroute made to ``tool``'s files (``everything``: all
        of them, back to how the files were before the first)."""
        restored, remaining = await self._run(
            "The backups are kept: try again.", self._restore, tool.id, everything)
        if not restored:
            raise NotFound(f"Nothing to restore: omniroute has no backup of {tool.name}'s "
                           "files (never configured, or restored already).", code="no_backup")
        return {"id": tool.id, "name": tool.name, "restored": restored, "remaining": remaining}

    def _restore(self, tool_id: str, everything: bool) -> tuple[list[dict[str, Any]], int]:
        with self.backups.lock(tool_id):
            restored = []
            while (undone := self.backups.restore(tool_id)) is not None:
                restored.append(undone)
                if not everything:
                    break
            return restored, len(self.backups.active(tool_id))

    @staticmethod
    async def _run(after_failure: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` in a thread, its failures as the gateway's typed errors.

        :param after_failure: what a failure to write leaves (said in the message).
        """
        try:
            return await asyncio.to_thread(fn, *args)
        except ConfigUnreadable as exc:
            raise GatewayError(f"{exc}. Nothing was written: fix the file (or move it away) "
                               "and try again.", status=409, type="invalid_request_error",
                               code="config_unreadable") from None
        except BackupBusy as exc:
            raise GatewayError(str(exc), status=409, type="invalid_request_error",
                               code="busy") from None
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise GatewayError(f"Writing{where} failed: {exc.strerror or exc}. {after_failure}",
                               code="write_failed") from None
