"""The budget ledger's spend store: background writes, several workers, a failing store,
pruning, the database store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from budget_support import MemoryStore, clock_at, spend, started, ts

from omniroute.budgets import Limits, SqliteSpendStore
from omniroute.budgets.spend import Delta, Totals
from omniroute.errors import BudgetUnavailable
from omniroute.storage import Database, DatabaseBackend


async def test_spend_is_written_in_the_background_and_survives_a_restart() -> None:
    store, clock = MemoryStore(), clock_at("2025-03-10T12:00:00")
    budgets = await started(store, clock)
    limits = Limits.parse({"daily_usd": 5, "monthly_usd": 50})
    assert limits is not None
    spend(budgets, limits, 1.25, tokens=300)
    assert store.rows == {}  # nothing written on the request path
    await budgets.sync()
    day = ts("2025-03-10T00:00:00")
    assert store.rows[("k", "daily", day)] == (1.25, 300, 1)
    restarted = await started(store, clock)
    window_ = restarted.window(restarted.state("k"), limits, "monthly", clock.time())
    assert window_.spent_usd == 1.25 and window_.spent_requests == 1


async def test_two_workers_sum_their_spend() -> None:
    store, clock = MemoryStore(), clock_at("2025-03-10T12:00:00")
    one, two = await started(store, clock), await started(store, clock)
    limits = Limits.parse({"daily_usd": 5})
    assert limits is not None
    spend(one, limits, 1.0)
    spend(two, limits, 2.0)
    await one.sync()
    await two.sync()
    await one.sync()
    for budgets in (one, two):
        w = budgets.window(budgets.state("k"), limits, "daily", clock.time())
        assert w.spent_usd == 3.0


async def test_a_failing_store_fails_closed_and_loses_nothing() -> None:
    store, clock = MemoryStore(), clock_at("2025-03-10T23:59:00")
    budgets = await started(store, clock)
    limits = Limits.parse({"daily_usd": 5})
    assert limits is not None
    spend(budgets, limits, 1.0)
    store.failing = True
    with pytest.raises(OSError):
        await budgets.sync()
    slot = budgets.enter("k", limits)
    with pytest.raises(BudgetUnavailable) as refused:
        budgets.reserve(slot, limits, 0, 0)
    assert refused.value.status == 503
    clock.advance(120)  # the day ends while the store is down: its spend waits
    spend_rpm = Limits.parse({"rpm": 100})
    assert spend_rpm is not None
    budgets.leave(budgets.enter("k", spend_rpm))  # keys with no budget are not affected
    store.failing = False
    await budgets.sync()
    assert store.rows == {("k", "daily", ts("2025-03-10T00:00:00")): (1.0, 0, 1)}
    budgets.reserve(slot, limits, 0, 0)


async def test_spend_stored_before_the_read_back_failed_is_not_stored_again() -> None:
    """The database went away between the write and the read-back (a server, between two
    round trips): the next sync must not add the same spend a second time."""
    store, clock = MemoryStore(), clock_at("2025-03-10T12:00:00")
    budgets = await started(store, clock)
    limits = Limits.parse({"daily_usd": 5})
    assert limits is not None
    spend(budgets, limits, 1.0)
    real_load = store.load

    async def load_fails(since: float) -> Totals:
        raise OSError("connection lost")

    store.load = load_fails  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await budgets.sync()
    assert not budgets.healthy
    store.load = real_load  # type: ignore[method-assign]
    await budgets.sync()
    assert store.rows == {("k", "daily", ts("2025-03-10T00:00:00")): (1.0, 0, 1)}
    assert budgets.healthy


async def test_start_up_with_a_failing_store_refuses_budgeted_keys() -> None:
    store = MemoryStore()
    store.failing = True
    budgets = await started(store, clock_at("2025-03-10T12:00:00"))
    limits = Limits.parse({"daily_usd": 5})
    assert limits is not None
    with pytest.raises(BudgetUnavailable):
        budgets.reserve(budgets.enter("k", limits), limits, 0, 0)


async def test_the_sync_loop_prunes_old_windows_about_hourly() -> None:
    store, clock = MemoryStore(), clock_at("2025-06-10T12:00:00")
    now = clock.time()
    store.rows = {("k", "daily", ts("2025-04-01T00:00:00")): (1.0, 1, 1),  # 70 days old
                  ("k", "monthly", ts("2025-04-01T00:00:00")): (9.0, 9, 9),
                  ("k", "monthly", ts("2025-05-01T00:00:00")): (2.0, 2, 2)}  # kept: reports
    budgets = await started(store, clock)
    task = asyncio.create_task(budgets.run())

    async def ticks(seconds: float) -> None:
        for _ in range(int(seconds / budgets.interval)):
            while not clock.sleepers:  # the loop is parked on its next sleep
                await asyncio.sleep(0)
            clock.advance(budgets.interval)
        while not clock.sleepers:
            await asyncio.sleep(0)

    try:
        await ticks(1)
        assert store.prunes == [now + 1 - 63 * 86400]  # the first loop prunes
        assert list(store.rows) == [("k", "monthly", ts("2025-05-01T00:00:00"))]
        await ticks(3598)
        assert len(store.prunes) == 1  # not on every sync
        await ticks(2)
        assert len(store.prunes) == 2  # an hour later
    finally:
        task.cancel()


async def test_the_spend_read_back_uses_the_window_index(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")
    try:
        store = SqliteSpendStore(db)
        queries: list[tuple[str, tuple]] = []
        fetchall = db.fetchall

        async def spy(sql: str, params: tuple = ()) -> list:
            queries.append((sql, params))
            return await fetchall(sql, params)

        db.fetchall = spy  # type: ignore[method-assign]
        await store.load(0.0)
        ((sql, params),) = queries
        plan = " ".join(str(tuple(r)) for r in await fetchall(f"EXPLAIN QUERY PLAN {sql}",
                                                              params))
        assert "key_spend_window" in plan, plan
    finally:
        await db.close()


async def test_the_database_store_adds_to_rows(db: DatabaseBackend) -> None:
    store = SqliteSpendStore(db)
    await store.add([("k", "daily", 100.0, 1.5, 10, 1)], "b1")
    await store.add([("k", "daily", 100.0, 0.5, 5, 1), ("k", "monthly", 50.0, 2.0, 15, 2)],
                    "b2")
    assert await store.load(60.0) == {("k", "daily", 100.0): (2.0, 15, 2)}
    assert await store.prune(60.0) == 1
    assert len(await store.load(0)) == 1


async def test_the_database_store_writes_its_rows_in_one_order(
        db: DatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every instance adds to the rows in (key, period, window) order, whatever order the
    ledger made them in: two instances locking the same rows in opposite orders deadlock."""
    written: list[list[Any]] = []
    real = db.executemany

    async def recorded(sql: str, rows: Any) -> None:
        written.append([tuple(r) for r in rows])
        await real(sql, rows)

    monkeypatch.setattr(db, "executemany", recorded)
    deltas = [("k2", "daily", 100.0, 1.0, 1, 1), ("k1", "monthly", 0.0, 1.0, 1, 1),
              ("k1", "daily", 200.0, 1.0, 1, 1), ("k1", "daily", 100.0, 1.0, 1, 1)]
    await SqliteSpendStore(db).add(deltas, "b1")
    assert written == [sorted(deltas)]
    assert len(await SqliteSpendStore(db).load(0)) == 4


async def test_the_background_task_syncs_on_its_clock() -> None:
    store, clock = MemoryStore(), clock_at("2025-03-10T12:00:00")
    budgets = await started(store, clock)
    limits = Limits.parse({"daily_usd": 5})
    assert limits is not None
    task = asyncio.create_task(budgets.run())
    try:
        spend(budgets, limits, 0.5)
        await asyncio.sleep(0)
        clock.advance(budgets.interval)
        for _ in range(20):
            await asyncio.sleep(0)
            if store.rows:
                break
        assert list(store.rows.values()) == [(0.5, 0, 1)]
    finally:
        task.cancel()


async def test_spend_whose_write_landed_but_failed_is_written_again_as_it_was() -> None:
    """The store added the batch and the answer was lost (a server's commit landed, the
    connection dropped): the next sync writes the same batch again, under its id, so it
    counts once, and the spend settled meanwhile goes in a batch of its own."""
    store, clock = MemoryStore(), clock_at("2025-03-10T12:00:00")
    budgets = await started(store, clock)
    limits = Limits.parse({"daily_usd": 5})
    assert limits is not None
    first, second = budgets.enter("k", limits), budgets.enter("k", limits)
    held = [budgets.reserve(first, limits, 0, 0), budgets.reserve(second, limits, 0, 0)]
    budgets.settle(held[0], 1.0, 0)
    budgets.leave(first)
    real_add = store.add

    async def answer_lost(deltas: Sequence[Delta], batch: str) -> None:
        await real_add(deltas, batch)
        raise OSError("connection lost")

    store.add = answer_lost  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await budgets.sync()
    assert not budgets.healthy
    store.add = real_add  # type: ignore[method-assign]
    budgets.settle(held[1], 0.5, 0)  # a request in flight ends meanwhile
    budgets.leave(second)
    await budgets.sync()
    assert store.rows == {("k", "daily", ts("2025-03-10T00:00:00")): (1.5, 0, 2)}
    assert budgets.healthy and len(store.batches) == 3  # the first sync's load, and two
    w = budgets.window(budgets.state("k"), limits, "daily", clock.time())
    assert w.spent_usd == 1.5
