"""Where spend is kept between restarts: the ``key_spend`` table.

One row per key, period and window start, holding the window's USD, tokens
and requests. Writers *add* to a row (``cost_usd = cost_usd + ?``), so several
worker processes sharing the database sum their spend; each one reads the
totals back on every sync. Each write is a batch with an id (minted by the ledger); the
ids applied are kept a day (``spend_batches``), and a batch whose id is there already adds
nothing: a write whose commit landed but whose acknowledgement was lost, tried again,
counts once. Only :class:`~omniroute.budgets.Budgets`' background
task writes here, never the request path; it also drops windows older than two
months about hourly (:meth:`SqliteSpendStore.prune`). Both the read-back and the
prune select on ``window_start``, by its index ``key_spend_window``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from omniroute.storage.backend import DatabaseBackend

#: seconds a batch id is kept (a retry comes within seconds; a day is room to spare)
BATCH_KEEP = 86400.0
#: (key id, period, window start) -> (USD, tokens, requests)
Totals = dict[tuple[str, str, float], tuple[float, int, int]]
#: one window's spend to add: (key id, period, window start, USD, tokens, requests)
Delta = tuple[str, str, float, float, int, int]


class SpendStore(Protocol):
    """The persistence :class:`~omniroute.budgets.Budgets` needs (a test may fail it)."""

    async def add(self, deltas: Sequence[Delta], batch: str) -> None:
        """Add each delta to its window's row, in one transaction, unless the batch
        ``batch`` was added already (a retry of a write whose answer was lost)."""

    async def load(self, since: float) -> Totals:
        """Every window that started at or after ``since``."""

    async def prune(self, before: float) -> int:
        """Drop the windows that started before ``before``; how many were dropped."""


class SqliteSpendStore:
    """:class:`SpendStore` on the gateway's database (SQLite, or ``database_url``'s)."""

    def __init__(self, db: DatabaseBackend) -> None:
        self.db = db

    async def add(self, deltas: Sequence[Delta], batch: str) -> None:
        if not deltas:
            return
        # every instance locks the rows it adds to in one order (the key's): two instances
        # adding to the same windows in their own orders could deadlock each other
        rows = sorted(deltas, key=lambda d: (d[0], d[1], d[2]))
        async with self.db.transaction():
            if not await self.db.execute(
                    "INSERT INTO spend_batches(id, applied_at) VALUES (?, ?)"
                    " ON CONFLICT(id) DO NOTHING", (batch, time.time())):
                return  # added by an earlier try, whose acknowledgement was lost
            await self.db.executemany(
                "INSERT INTO key_spend(key_id, period, window_start, cost_usd, tokens, requests)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(key_id, period, window_start) DO UPDATE SET"
                " cost_usd = key_spend.cost_usd + excluded.cost_usd,"
                " tokens = key_spend.tokens + excluded.tokens,"
                " requests = key_spend.requests + excluded.requests", rows)

    async def load(self, since: float) -> Totals:
        rows = await self.db.fetchall(
            "SELECT key_id, period, window_start, cost_usd, tokens, requests FROM key_spend"
            " WHERE window_start >= ?", (since,))
        return {(r["key_id"], r["period"], r["window_start"]):
                (r["cost_usd"], r["tokens"], r["requests"]) for r in rows}

    async def prune(self, before: float) -> int:
        """Drop windows that started before ``before`` (kept for reports until then), and
        the batch ids older than :data:`BATCH_KEEP`."""
        await self.db.execute("DELETE FROM spend_batches WHERE applied_at < ?",
                              (time.time() - BATCH_KEEP,))
        return await self.db.execute("DELETE FROM key_spend WHERE window_start < ?", (before,))
