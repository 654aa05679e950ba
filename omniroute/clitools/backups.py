"""Backups of the tools' files, taken before omniroute writes them, and their restore.

Each configuration change of a tool is one backup (a stack per tool), in the data
directory: ``<root>/<tool id>/<UTC time>/manifest.json`` and each replaced file's
bytes (directory 0700, files 0600: they may hold keys). A restore takes the newest
backup: a file that existed gets its bytes and mode back, one that did not is
removed, with the directories omniroute created for it when they are empty. A
file changed since omniroute wrote it is still restored, and its changed content
is kept in the backup, which is renamed ``<time>.restored`` (the last few are kept).

A lock file per tool keeps two writers (the gateway and ``omniroute connect``, or
two requests) from interleaving; waiting for it is bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from omniroute.clitools.files import write_atomic

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; one writer at a time is up to the user
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
RESTORED = ".restored"
#: restored backups kept per tool (older ones are deleted)
KEEP_RESTORED = 10
#: seconds a writer waits for another one working on the same tool
LOCK_TIMEOUT = 5.0


class BackupBusy(RuntimeError):
    """Another writer holds the tool's lock past :data:`LOCK_TIMEOUT`."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


class Backups:
    """The backups of every tool under ``root`` (``<data dir>/cli-tools/backups``).

    :param clock: wall-clock seconds, which name the backups (tests fix it).
    """

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.clock = clock

    def _dir(self, tool_id: str) -> Path:
        return self.root / tool_id

    def active(self, tool_id: str) -> list[Path]:
        """The backups not yet restored, oldest first."""
        folder = self._dir(tool_id)
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir()
                      if p.is_dir() and not p.name.endswith(RESTORED) and (p / MANIFEST).exists())

    @contextlib.contextmanager
    def lock(self, tool_id: str) -> Iterator[None]:
        """Hold the tool's lock (blocking, at most :data:`LOCK_TIMEOUT`: call in a thread)."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)  # backups may hold keys
        folder = self._dir(tool_id)
        folder.mkdir(exist_ok=True, mode=0o700)
        if fcntl is None:
            yield
            return
        with open(folder / ".lock", "a") as handle:
            deadline = time.monotonic() + LOCK_TIMEOUT
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise BackupBusy(f"another omniroute is changing {tool_id}'s files; "
                                         "try again") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def save(self, tool_id: str, before: dict[Path, bytes | None], after: dict[Path, bytes],
             created_dirs: dict[Path, list[Path]]) -> str:
        """Record ``before`` (None: no such file) and what will be written; returns the
        backup's name. Call it before writing, with the tool's lock held."""
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        folder = self._dir(tool_id) / stamp
        n = 1
        while folder.exists() or (folder.parent / (folder.name + RESTORED)).exists():
            n += 1
            folder = self._dir(tool_id) / f"{stamp}-{n}"
        folder.mkdir(parents=True, mode=0o700)
        files: list[dict[str, Any]] = []
        for i, (path, old) in enumerate(before.items()):
            entry: dict[str, Any] = {"path": str(path), "existed": old is not None,
                                     "written": sha256(after[path]),
                                     "created_dirs": [str(d) for d in created_dirs.get(path, [])]}
            if old is not None:
                entry["saved"] = f"{i}.orig"
                entry["mode"] = path.stat().st_mode & 0o7777
                write_atomic(folder / entry["saved"], old, mode=0o600)
            files.append(entry)
        manifest = {"tool": tool_id, "created": self.clock(), "files": files}
        write_atomic(folder / MANIFEST, json.dumps(manifest, indent=2).encode(), mode=0o600)
        return folder.name

    def drop(self, tool_id: str, name: str) -> None:
        """Delete backup ``name`` (its change was never written)."""
        _remove_tree(self._dir(tool_id) / name)

    def restore(self, tool_id: str) -> dict[str, Any] | None:
        """Undo the newest change; None when there is none. Call with the lock held."""
        backups = self.active(tool_id)
        if not backups:
            return None
        folder = backups[-1]
        done = folder.parent / (folder.name + RESTORED)  # where it is kept afterwards
        manifest = json.loads((folder / MANIFEST).read_text())
        results = []
        for i, entry in enumerate(manifest["files"]):
            path = Path(entry["path"])
            current = read_bytes(path)
            changed = current is None or sha256(current) != entry["written"]
            kept = None
            if changed and current is not None:  # the user's later edits are not lost
                kept = folder / f"{i}.changed"
                write_atomic(kept, current, mode=0o600)
            if entry["existed"]:
                write_atomic(path, (folder / entry["saved"]).read_bytes(), mode=entry["mode"])
                action = "restored"
            else:
                path.unlink(missing_ok=True)
                for directory in reversed(entry["created_dirs"]):
                    with contextlib.suppress(OSError):  # not empty (or gone): it stays
                        Path(directory).rmdir()
                action = "removed"
            results.append({"path": str(path), "action": action, "changedSince": changed,
                            "keptAt": str(done / kept.name) if kept else None})
        folder.rename(done)
        self._prune(tool_id)
        return {"backup": folder.name, "files": results}

    def _prune(self, tool_id: str) -> None:
        done = sorted(p for p in self._dir(tool_id).iterdir() if p.name.endswith(RESTORED))
        for old in done[:-KEEP_RESTORED]:
            _remove_tree(old)


def _remove_tree(folder: Path) -> None:
    if not folder.exists():
        return
    for item in folder.iterdir():
        item.unlink()
    folder.rmdir()


def private_mode(path: Path) -> int | None:
    """The mode ``path`` should take to hold a key: its own without group and other bits;
    None when it has none of those (or does not exist)."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return None
    return mode & ~0o077 if mode & 0o077 else None
