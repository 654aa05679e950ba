"""What the budget tests share: wall times written as ISO text, a clock at one, and a spend
store in memory that can be told to fail, with the ledger started on it."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from omniroute.budgets import Budgets, Limits
from omniroute.budgets.spend import Delta, Totals
from omniroute.resilience.clock import ManualClock


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def clock_at(text: str) -> ManualClock:
    return ManualClock(start=1000.0, wall=ts(text))


class MemoryStore:
    """A SpendStore in memory that can be told to fail."""

    def __init__(self) -> None:
        self.rows: Totals = {}
        self.failing = False
        self.writes = 0
        self.prunes: list[float] = []
        #: the batches added (a batch is added once, as SqliteSpendStore does)
        self.batches: set[str] = set()

    async def add(self, deltas: Sequence[Delta], batch: str) -> None:
        if self.failing:
            raise OSError("disk I/O error")
        self.writes += 1
        if batch in self.batches:
            return
        self.batches.add(batch)
        for key, period, start, usd, tokens, requests in deltas:
            old = self.rows.get((key, period, start), (0.0, 0, 0))
            self.rows[(key, period, start)] = (old[0] + usd, old[1] + tokens, old[2] + requests)

    async def load(self, since: float) -> Totals:
        if self.failing:
            raise OSError("disk I/O error")
        return {k: v for k, v in self.rows.items() if k[2] >= since}

    async def prune(self, before: float) -> int:
        self.prunes.append(before)
        old = [k for k in self.rows if k[2] < before]
        for k in old:
            del self.rows[k]
        return len(old)


async def started(store: MemoryStore, clock: ManualClock) -> Budgets:
    budgets = Budgets(store, clock)
    await budgets.start()
    return budgets


def spend(budgets: Budgets, limits: Limits, usd: float, tokens: int = 0,
          reserve: float = 0.0) -> None:
    """One whole request: enter, reserve, settle, leave."""
    slot = budgets.enter("k", limits)
    held = budgets.reserve(slot, limits, reserve, 0)
    budgets.settle(held, usd, tokens)
    budgets.leave(slot)
