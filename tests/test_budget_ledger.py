"""The budget ledger on an injected clock: admission, windows resetting, reservations,
token limits, the warning, requests per minute, concurrency."""

from __future__ import annotations

import pytest
from budget_support import MemoryStore, clock_at, spend, started, ts

from omniroute.budgets import Limits
from omniroute.errors import BudgetExceeded, RateLimited


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
    assert err.details == {"period": "daily", "unit": "usd", "spent": 1.1, "limit": 1.0,
                           "reserved": 0.0, "resets_at": "2025-03-11T00:00:00Z"}
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
            assert err.details is not None and err.details["estimate"] == 0.3
            assert err.details["reserved"] == pytest.approx(0.9)
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
                                             "of 1000 tokens") as refused:
        budgets.reserve(slot, limits, 0.0, 5)
    assert refused.value.details == {"period": "daily", "unit": "tokens", "spent": 1010,
                                     "limit": 1000, "reserved": 0,
                                     "resets_at": "2025-03-11T00:00:00Z"}


async def test_the_warning_is_set_past_the_threshold_and_logged_once_a_window(caplog) -> None:
    clock = clock_at("2025-03-10T12:00:00")
    budgets = await started(MemoryStore(), clock)
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
    budgets.leave(slot)
    clock.advance(22 * 86400)  # 2025-04-01T12:00: a new month, a new window, one more line
    slot = budgets.enter("k", limits)
    assert budgets.reserve(slot, limits, 0, 0).warning is None
    budgets.leave(slot)
    with caplog.at_level("WARNING", logger="omniroute.budgets.ledger"):
        spend(budgets, limits, 6.0)
        spend(budgets, limits, 1.0)
    warnings = [r for r in caplog.records if "passed 50% of its monthly budget" in r.message]
    assert len(warnings) == 2


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
