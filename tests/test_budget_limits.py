"""Per-key budgets without a gateway: the limits model, and UTC windows with a reset time."""

from __future__ import annotations

import pytest
from budget_support import ts

from omniroute.budgets import Limits
from omniroute.budgets.limits import parse_expiry
from omniroute.budgets.view import budget_changes, merged_limits
from omniroute.budgets.windows import iso, window


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
