"""What the audit log shows of the state a management action changes: its snapshots.

A route of the management API names the kind of state it changes (its tag's
``snapshot``: :func:`omniroute.web.tags.tag_route`); a CLI command names it too
(:mod:`omniroute.cli.audit`). The audit layer reads that state before the change
and after it, each time with one store read, and stores what differs
(:func:`omniroute.storage.audit.change_of`). Two shapes:

* **One object by id** (``connection``, ``key``, ``combo``): the id is the route's
  path parameter, or the id of what a creation made. A missing object is ``None``.
* **A table** (``aliases``, ``settings``, ``pricing``, ``budgets``): the whole of it,
  name to member, for the routes that name their target in the body. A change to one
  member makes that member's name the entry's target (:func:`only_member`).

A snapshot holds what the store holds, credentials in clear (decrypted in memory,
as the gateway holds them): the change is computed on them, so a rotated key whose
masked form is unchanged is still a change, and redacted before it is stored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from omniroute.storage.store import Store

log = logging.getLogger(__name__)

#: what a snapshot of a target reads (``target``: an id or name; None for a table)
Load = Callable[[Store, "str | None"], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """How one kind of managed state is read for the audit log."""

    #: one store read: the state, or None when there is no such object
    load: Load
    #: the state is a table (name -> member), read whole; else one object, read by id
    table: bool = False
    #: the table's members are named by id (a key's ``key_…`` is no secret's field name)
    by_id: bool = False

    def readable(self, target: str | None) -> bool:
        """Whether there is something to read: a table always, an object once its id is
        known (a creation's is known only after the change)."""
        return self.table or target is not None

    async def read(self, store: Store, target: str | None) -> tuple[bool, Any]:
        """``(True, state)``, or ``(False, None)`` when the read failed: logged, and the
        entry keeps the request instead. The audit trail never stops a change (a
        connection whose credentials no longer open can still be removed)."""
        try:
            return True, await self.load(store, target)
        except Exception as exc:  # noqa: BLE001 - logged; the entry says less, that is all
            log.warning("audit: reading the state of %s failed (%s: %s); the entry keeps the "
                        "request instead", target or "a table", type(exc).__name__, exc)
            return False, None


async def _connection(store: Store, target: str | None) -> Any:
    conn = await store.get_connection(target) if target else None
    if conn is None:
        return None
    view = conn.public()
    view["credentials"] = dict(conn.credentials)  # compared in clear, redacted when stored
    return view


async def _key(store: Store, target: str | None) -> Any:
    key = await store.get_key(target) if target else None
    return None if key is None else key.public()  # never its secret: only a hash is stored


async def _combo(store: Store, target: str | None) -> Any:
    combo = await store.get_combo(target) if target else None
    return None if combo is None else combo.public()


async def _aliases(store: Store, target: str | None) -> Any:
    return await store.list_aliases()


async def _settings(store: Store, target: str | None) -> Any:
    # a name starting with "_" is the gateway's own (the admin password's hash): never shown
    return {k: v for k, v in (await store.get_settings()).items() if not k.startswith("_")}


async def _pricing(store: Store, target: str | None) -> Any:
    table = {}
    for row in await store.list_price_overrides():
        scope, model = row.pop("scope"), row.pop("model")
        table[f"{model}@{scope}" if scope else model] = row
    return table


async def _budgets(store: Store, target: str | None) -> Any:
    return {key.id: key.public()["limits"] for key in await store.list_keys()}


#: the kinds of managed state, by the name a route's tag or a CLI command gives
SNAPSHOTS: Mapping[str, Snapshot] = {
    "connection": Snapshot(_connection),
    "key": Snapshot(_key),
    "combo": Snapshot(_combo),
    "aliases": Snapshot(_aliases, table=True),
    "settings": Snapshot(_settings, table=True),
    "pricing": Snapshot(_pricing, table=True),
    "budgets": Snapshot(_budgets, table=True, by_id=True),
}

_ABSENT = object()


def only_member(before: Any, after: Any) -> str | None:
    """The name of the one member of a table that changed, or None (none, or several)."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return None
    names = [name for name in before.keys() | after.keys()
             if before.get(name, _ABSENT) != after.get(name, _ABSENT)]
    return str(names[0]) if len(names) == 1 else None
