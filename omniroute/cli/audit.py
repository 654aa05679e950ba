"""The audit entries of the CLI's configuration commands.

A command that changes state writes its entry into the same table a running
gateway pages (``GET /api/compliance/audit-log``), before it exits: it has no
background writer, so :meth:`~omniroute.storage.audit.AuditLog.record` writes it
at once. Each entry is like the HTTP route's that makes the same change, so a
filter finds both: the same action (``POST /api/keys``; ``cli <command>`` where no
route matches), the target's id, the change (the state before and after, read
with the same snapshots, redacted alike; else the command's options, as a request
body is), the status the route would answer; the actor is ``cli:<OS user>`` and
the address ``local``::

    async with open_cli_store(config) as store:
        async with audited(store, "DELETE /api/keys/{id}", "key", key_id) as change:
            if not await store.revoke_key(key_id):
                change.status = 404
                raise click.ClickException(...)

A command that fails leaves an entry too (its status 400, or what it set, and its
options); when the entry of a change cannot be written, the command fails, saying
that the change was made.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import click

from omniroute.storage.audit import AuditEntry, AuditLog, change_of, request_diff
from omniroute.storage.snapshots import SNAPSHOTS, only_member
from omniroute.storage.store import Store

log = logging.getLogger(__name__)

#: the address of an entry made on this machine by the CLI
LOCAL = "local"


def cli_actor() -> str:
    """``cli:<the OS user>`` (its uid when it has no name)."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no login name, no passwd entry
        name = str(os.getuid())
    return f"cli:{name}"


@dataclass
class CliChange:
    """What a command's block may settle while it runs: the action (create or replace
    known only once the store was read), the target (a creation's new id), the status
    (a refusal's), the options kept when no snapshot shows the change."""

    action: str
    target: str | None = None
    status: int = 200
    request: Any = None


@asynccontextmanager
async def audited(store: Store, action: str, snapshot: str | None = None,
                  target: str | None = None, *, status: int = 200,
                  request: Any = None) -> AsyncIterator[CliChange]:
    """Write the audit entry of the change made in the block (see the module).

    :param snapshot: the kind of state changed (:data:`~omniroute.storage.snapshots.SNAPSHOTS`).
    :param status: the status of a success (201 for a creation, as the route answers).
    :param request: the command's options, stored (redacted) when no snapshot shows
        the change, or when it failed.
    """
    change = CliChange(action, target, status, request)
    shot = SNAPSHOTS[snapshot] if snapshot is not None else None
    started = time.time()
    read, before = True, None  # nothing to read yet: a creation
    if shot is not None and shot.readable(target):
        read, before = await shot.read(store, target)
    try:
        yield change
    except BaseException as exc:
        if change.status < 400:
            change.status = 400 if isinstance(exc, click.ClickException) else 500
        try:
            await _write(store, started, change, request_diff(change.request))
        except Exception:  # the command's own error is the one to see
            log.exception("the audit entry of this refused command could not be written")
        raise
    diff = request_diff(change.request)
    if shot is not None and read and shot.readable(change.target):
        read, after = await shot.read(store, change.target)
        if read:
            diff = change_of(before, after, by_id=shot.by_id)
            if shot.table and change.target is None:
                change.target = only_member(before, after)
    try:
        await _write(store, started, change, diff)
    except Exception as exc:  # noqa: BLE001 - said, with the cause: the change stays made
        raise click.ClickException(f"the change was made, but its audit entry could not be "
                                   f"written: {exc}") from None


async def _write(store: Store, started: float, change: CliChange, diff: str | None) -> None:
    await AuditLog(store.db).record(AuditEntry(
        ts=started, actor=cli_actor(), action=change.action, target=change.target, diff=diff,
        address=LOCAL, status=change.status))
