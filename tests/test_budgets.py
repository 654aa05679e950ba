"""Per-key budgets and limits, without a gateway: the limits model, UTC windows with a reset
time, the ledger (admission, reservations, settling, sync, prune) on an injected clock, and
the stage's estimate."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from omniroute.auth.base import Principal
from omniroute.budgets import Budgets, Limits, SqliteSpendStore
from omniroute.budgets.limits import parse_expiry
from omniroute.budgets.spend import Delta, Totals
from omniroute.budgets.stage import BudgetRun, BudgetStage, output_cap
from omniroute.budgets.view import budget_changes, merged_limits
from omniroute.budgets.windows import iso, window
from omniroute.config import Settings
from omniroute.errors import BudgetExceeded, BudgetUnavailable, RateLimited
from omniroute.pipeline.context import RequestContext
from omniroute.pipeline.operation import Operation
from omniroute.resilience.clock import ManualClock
from omniroute.storage import Database, DatabaseBackend, RequestRecord


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def clock_at(text: str) -> ManualClock:
    return ManualClock(start=1000.0, wall=ts(text))


# ---------------------------------------------------------------------- the limits model

def test_limits_parse_validates_and_round_trips() -> None:
    limits = Limits.parse({"daily_usd": 5, "monthly_usd": 50.5, "daily_tokens": 1000,
                           "rpm": 60, "concurrency": 2, "models": ["openai/*", "claude-?"],
                           "warn_at": 0.9, "reset_time": "09:30"})
    assert limits is not None
    assert limits.usd == {"daily": 5.0, "monthly": 50.5} and limits.tokens == {"daily": 1000}
    assert limits.periods == ("daily", "monthly")
    assert limits.reset_minutes == 9 * 60 + 30 and limits.reset_time == "09:30"
    again = Limits.parse(limits.as_dict())
    assert again is not None and again.as_dict() == limits.as_dict()
    assert Limits.parse({}) is None
    assert Limits.parse({"warn_at": 0.5}) is None  # no limit at all: nothing to enforce


@pytest.mark.parametrize("data, message", [
    ({"daily_usd": -1}, "must not be negative"),
    ({"daily_usd": "5"}, "must be a number"),
    ({"daily_tokens": 1.5}, "whole number"),
    ({"rpm": 0}, "at least 1"),
    ({"hourly_usd": 1}, "unknown limit hourly_usd"),
    ({"daily_usd": 1, "warn_at": 1.5}, "warn_at"),
    ({"daily_usd": 1, "reset_time": "25:00"}, "HH:MM"),
    ({"models": [1]}, "models must be a list"),
])
def test_limits_parse_refuses_what_cannot_be_used(data: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits.parse(data)


def test_allowed_models_are_glob_patterns() -> None:
    limits = Limits.parse({"models": ["openai/*", "claude-3-?aiku", "gpt-4o"]})
    assert limits is not None
    assert limits.allows("openai/gpt-4o-mini") and limits.allows("claude-3-haiku")
    assert limits.allows("gpt-4o")
    assert not limits.allows("gpt-4o-mini") and not limits.allows("anthropic/claude")
    assert Limits.parse({"rpm": 5}).allows("anything")  # type: ignore[union-attr]


def test_expiry_accepts_epoch_iso_and_durations() -> None:
    now = ts("2025-03-01T00:00:00")
    assert parse_expiry(1_800_000_000, now) == 1_800_000_000.0
    assert parse_expiry("2025-03-31", now) == ts("2025-03-31T00:00:00")
    assert parse_expiry("2025-03-31T18:00:00+02:00", now) == ts("2025-03-31T16:00:00")
    assert parse_expiry("30d", now) == now + 30 * 86400
    assert parse_expiry("12h", now) == now + 12 * 3600
    assert parse_expiry(None, now) is None and parse_expiry("", now) is None
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_expiry("next tuesday", now)
    assert parse_expiry("9999-12-31T23:59:59Z", now) == ts("9999-12-31T23:59:59")
    assert parse_expiry(0, now) == 0.0


@pytest.mark.parametrize("value", [
    1e20, -1, float("inf"), float("nan"), "99999999999d", "1" + "0" * 400 + "w",
    "1969-12-31", "0001-01-01T00:00:00Z", "9999-12-31T23:00:00-05:00",
])
def test_expiry_must_fall_between_1970_and_9999(value: object) -> None:
    with pytest.raises(ValueError, match="between 1970-01-01 and 9999-12-31T23:59:59Z"):
        parse_expiry(value, ts("2025-03-01T00:00:00"))


def test_the_seeds_budget_shape_and_the_richer_one() -> None:
    assert budget_changes({"keyId": "key-123", "limit": 50.00, "period": "monthly"}) == (
        "key-123", {"monthly_usd": 50.0})
    key, changes = budget_changes({"apiKeyId": "k", "dailyLimitUsd": 5, "weekly": 20,
                                   "monthlyLimitUsd": None, "warningThreshold": 90,
                                   "resetTime": "06:00", "dailyTokens": 1000})
    assert key == "k"
    assert changes == {"daily_usd": 5, "weekly_usd": 20, "monthly_usd": None, "warn_at": 0.9,
                       "reset_time": "06:00", "daily_tokens": 1000}
    limits = merged_limits(Limits.parse({"monthly_usd": 50, "rpm": 3}), changes)
    assert limits is not None and limits.usd == {"daily": 5.0, "weekly": 20.0}
    assert limits.rpm == 3 and limits.warn_at == 0.9
    with pytest.raises(ValueError, match="period must be one of"):
        budget_changes({"keyId": "k", "limit": 5, "period": "yearly"})
    with pytest.raises(ValueError, match="Name the key"):
        budget_changes({"limit": 5})


# ---------------------------------------------------------------------- windows

def test_daily_windows_are_utc_days_from_the_reset_time() -> None:
    now = ts("2025-03-10T15:20:00")
    assert window("daily", now) == (ts("2025-03-10T00:00:00"), ts("2025-03-11T00:00:00"))
    assert window("daily", now, 16 * 60) == (ts("2025-03-09T16:00:00"),
                                             ts("2025-03-10T16:00:00"))
    assert window("daily", now, 9 * 60) == (ts("2025-03-10T09:00:00"),
                                            ts("2025-03-11T09:00:00"))
    start, _ = window("daily", ts("2025-03-10T09:00:00"), 9 * 60)  # the boundary itself
    assert start == ts("2025-03-10T09:00:00")


def test_weekly_windows_start_on_monday() -> None:
    # 2025-03-10 is a Monday
    assert window("weekly", ts("2025-03-16T23:59:59")) == (ts("2025-03-10T00:00:00"),
                                                           ts("2025-03-17T00:00:00"))
    assert window("weekly", ts("2025-03-10T00:00:00"))[0] == ts("2025-03-10T00:00:00")
    # before Monday's reset time it is still the week before
    assert window("weekly", ts("2025-03-10T05:00:00"), 6 * 60)[0] == ts("2025-03-03T06:00:00")


def test_monthly_windows_follow_the_calendar() -> None:
    assert window("monthly", ts("2025-02-14T12:00:00")) == (ts("2025-02-01T00:00:00"),
                                                            ts("2025-03-01T00:00:00"))
    assert window("monthly", ts("2024-12-31T23:00:00")) == (ts("2024-12-01T00:00:00"),
                                                            ts("2025-01-01T00:00:00"))
    assert window("monthly", ts("2025-03-01T01:00:00"), 120)[0] == ts("2025-02-01T02:00:00")
    assert iso(ts("2025-03-01T02:00:00")) == "2025-03-01T02:00:00Z"


# ---------------------------------------------------------------------- the ledger

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


async def test_a_spent_budget_refuses_until_the_window_resets() -> None:
    clock = clock_at("2025-03-10T22:00:00")
    budgets = await started(MemoryStore(), clock)
    limits = Limits.parse({"daily_usd": 1.0})
    assert limits is not None
    spend(budgets, limits, 0.6)
    spend(budgets, limits, 0.5)  # admitted at 0.6: the spend may pass the limit by one request
    slot = budgets.enter("k", limits)
    with pytest.raises(BudgetExceeded) as refused:
        budgets.reserve(slot, limits, 0.0, 0)
    budgets.leave(slot)
    err = refused.value
    assert err.status == 429 and err.code == "budget_exceeded"
    assert "daily budget" in err.message and "$1.10 of $1.00" in err.message
    assert "resets at 2025-03-11T00:00:00Z" in err.message
    assert err.headers["Retry-After"] == str(2 * 3600)
    clock.advance(2 * 3600)  # midnight UTC: a new day
    spend(budgets, limits, 0.2)
    view = budgets.window(budgets.state("k"), limits, "daily", clock.time())
    assert view.spent_usd == pytest.approx(0.2) and view.start == ts("2025-03-11T00:00:00")


async def test_the_reset_time_moves_every_window() -> None:
    clock = clock_at("2025-03-10T08:00:00")
    budgets = await started(MemoryStore(), clock)
    limits = Limits.parse({"daily_usd": 1.0, "reset_time": "09:00"})
    assert limits is not None
    spend(budgets, limits, 1.0)
    slot = budgets.enter("k", limits)
    with pytest.raises(BudgetExceeded) as refused:
        budgets.reserve(slot, limits, 0.0, 0)
    assert refused.value.headers["Retry-After"] == "3600"
    clock.advance(3600)  # 09:00 UTC
    budgets.reserve(slot, limits, 0.0, 0)


async def test_week_and_month_windows_outlast_the_day() -> None:
    clock = clock_at("2025-03-30T12:00:00")  # a Sunday, the month's second-to-last day
    budgets = await started(MemoryStore(), clock)
    limits = Limits.parse({"daily_usd": 10, "weekly_usd": 3, "monthly_usd": 100})
    assert limits is not None
    spend(budgets, limits, 3.0)
    clock.advance(86400)  # Monday 31st: a new day and a new week, the same month
    spend(budgets, limits, 2.0)
    state = budgets.state("k")
    now = clock.time()
    assert budgets.window(state, limits, "daily", now).spent_usd == 2.0
    assert budgets.window(state, limits, "weekly", now).spent_usd == 2.0
    assert budgets.window(state, limits, "monthly", now).spent_usd == 5.0
    clock.advance(86400)  # April
    assert budgets.window(state, limits, "monthly", clock.time()).spent_usd == 0.0


async def test_reservations_bound_concurrent_overspend() -> None:
    budgets = await started(MemoryStore(), clock_at("2025-03-10T12:00:00"))
    limits = Limits.parse({"daily_usd": 1.0})
    assert limits is not None
    held = []
    for _ in range(10):  # ten requests arrive together, each reserving 0.3
        slot = budgets.enter("k", limits)
        try:
            held.append((slot, budgets.reserve(slot, limits, 0.3, 100)))
        except BudgetExceeded as err:
            assert "reserved by requests in flight" in err.message
            assert "this request may use up to $0.30" in err.message
            assert err.headers["Retry-After"] == "1"  # in-flight requests may free it soon
            budgets.leave(slot)
    assert len(held) == 3  # 0.3 + 0.3 + 0.3 fit in 1.0; a fourth would not
    for slot, reservation in held:
        budgets.settle(reservation, 0.3, 100)
        budgets.leave(slot)
    state = budgets.state("k")
    assert state.reserved_usd == 0 and state.reserved_tokens == 0 and state.in_flight == 0
    assert state.held == 0
    spent = budgets.window(state, limits, "daily", budgets.clock.time()).spent_usd
    assert spent == pytest.approx(0.9)  # within the limit: every estimate covered its cost


async def test_one_request_may_run_alone_while_under_the_limit() -> None:
    budgets = await started(MemoryStore(), clock_at("2025-03-10T12:00:00"))
    limits = Limits.parse({"daily_usd": 1.0, "daily_tokens": 1000})
    assert limits is not None
    spend(budgets, limits, 0.9, tokens=900)
    first = budgets.enter("k", limits)
    held = budgets.reserve(first, limits, 0.3, 300)  # does not fit, but runs alone
    second = budgets.enter("k", limits)
    with pytest.raises(BudgetExceeded) as busy:  # another is in flight: it must fit
        budgets.reserve(second, limits, 0.01, 10)
    assert busy.value.headers["Retry-After"] == "1"
    budgets.settle(held, 0.3, 300)
    budgets.leave(first)
    with pytest.raises(BudgetExceeded) as spent:  # now used up, alone or not
        budgets.reserve(second, limits, 0.0, 0)
    assert "is used up: spent $1.20 of $1.00" in spent.value.message
    assert int(spent.value.headers["Retry-After"]) == 12 * 3600


async def test_token_limits_count_prompt_and_completion() -> None:
    budgets = await started(MemoryStore(), clock_at("2025-03-10T12:00:00"))
    limits = Limits.parse({"daily_tokens": 1000})
    assert limits is not None
    spend(budgets, limits, 0.0, tokens=990)
    spend(budgets, limits, 0.0, tokens=20)  # admitted with 10 left; its real use is counted
    slot = budgets.enter("k", limits)
    with pytest.raises(BudgetExceeded, match="daily token limit is used up: spent 1010 tokens "
                                             "of 1000 tokens"):
        budgets.reserve(slot, limits, 0.0, 5)


async def test_the_warning_is_set_past_the_threshold_and_logged_once(caplog) -> None:
    budgets = await started(MemoryStore(), clock_at("2025-03-10T12:00:00"))
    limits = Limits.parse({"monthly_usd": 10.0, "warn_at": 0.5})
    assert limits is not None
    slot = budgets.enter("k", limits)
    assert budgets.reserve(slot, limits, 0, 0).warning is None
    with caplog.at_level("WARNING", logger="omniroute.budgets.ledger"):
        spend(budgets, limits, 4.0)
        spend(budgets, limits, 2.0)  # passes 50% here
        spend(budgets, limits, 1.0)
    warnings = [r for r in caplog.records if "passed 50% of its monthly budget" in r.message]
    assert len(warnings) == 1
    warning = budgets.reserve(slot, limits, 0, 0).warning
    assert warning == "monthly $7.00 of $10.00 (70%), resets 2025-04-01T00:00:00Z"


async def test_requests_per_minute_roll_over() -> None:
    clock = clock_at("2025-03-10T12:00:00")
    budgets = await started(MemoryStore(), clock)
    limits = Limits.parse({"rpm": 2})
    assert limits is not None
    budgets.leave(budgets.enter("k", limits))
    clock.advance(20)
    budgets.leave(budgets.enter("k", limits))
    with pytest.raises(RateLimited) as refused:
        budgets.enter("k", limits)
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.headers["Retry-After"] == "40"
    clock.advance(40)
    budgets.leave(budgets.enter("k", limits))


async def test_concurrency_counts_requests_in_flight() -> None:
    budgets = await started(MemoryStore(), clock_at("2025-03-10T12:00:00"))
    limits = Limits.parse({"concurrency": 2})
    assert limits is not None
    a, _ = budgets.enter("k", limits), budgets.enter("k", limits)
    with pytest.raises(RateLimited) as refused:
        budgets.enter("k", limits)
    assert refused.value.code == "concurrency_limit_exceeded"
    assert refused.value.headers["Retry-After"] == "1"
    budgets.leave(a)
    budgets.enter("k", limits)


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


# ---------------------------------------------------------------------- the stage's estimate

class _Undecodable:
    """A client format the estimate must not use: decoding for an estimate costs too much."""

    name = "openai"

    def decode_request(self, request: object) -> object:
        raise AssertionError("the budget estimate decoded the request")


class _Images(Operation):
    """An operation that generates output and is not named "chat"."""

    name, capability, generates = "images", "images", True


class _Embed(Operation):
    name, capability = "embed", "embeddings"


def _estimate(operation_type: type[Operation], body: dict, body_bytes: int) -> tuple[int, int]:
    fmt = _Undecodable()
    operation = operation_type(fmt, "x")  # type: ignore[arg-type]
    stage = BudgetStage(Budgets(MemoryStore(), clock_at("2025-03-10T12:00:00")),
                        settings=Settings, prices=None)  # type: ignore[arg-type]
    limits = Limits.parse({"daily_usd": 1})
    run = BudgetRun(stage, limits, "k", operation)  # type: ignore[arg-type]
    ctx = RequestContext(Principal("api_key", "k", limits=limits), fmt,  # type: ignore[arg-type]
                         RequestRecord("r", 0.0, "x"), {}, {}, body=body, body_bytes=body_bytes)
    return run.estimate(ctx)


def test_the_estimate_reads_the_body_size_and_the_output_cap() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 1000}]}
    assert _estimate(_Images, {**body, "max_tokens": 50}, 401) == (101, 50)  # 401 / 4, up
    assert _estimate(_Images, body, 400) == (100, Settings().budget_output_tokens)
    assert _estimate(_Embed, {**body, "max_tokens": 50}, 40) == (10, 0)  # nothing generated


@pytest.mark.parametrize("body, cap", [
    ({"max_completion_tokens": 7, "max_tokens": 9}, 7),  # OpenAI chat
    ({"max_tokens": 9}, 9),  # Anthropic, older OpenAI
    ({"max_output_tokens": 11}, 11),  # Responses
    ({"generationConfig": {"maxOutputTokens": 12}}, 12),  # Gemini
    ({"generation_config": {"max_output_tokens": 13}}, 13),
    ({"options": {"num_predict": 14}}, 14),  # Ollama
    ({"options": {"num_predict": -1}}, None),  # Ollama's "no limit"
    ({"max_tokens": "lots", "generationConfig": []}, None),
    ({}, None),
])
def test_the_output_cap_of_each_client_format(body: dict, cap: int | None) -> None:
    assert output_cap(body) == cap


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
