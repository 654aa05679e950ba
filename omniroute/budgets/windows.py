"""Budget windows: UTC days, ISO weeks (from Monday) and calendar months.

Every window starts at the key's reset time of day (minutes after midnight
UTC): with ``reset_minutes=9*60`` the daily window runs from 09:00 UTC to
09:00 UTC the next day, the weekly one from Monday 09:00, the monthly one
from the 1st at 09:00. Pure functions of a wall-clock time, so tests move
an injected clock across the boundaries.
"""

from __future__ import annotations

from datetime import UTC, datetime

DAY = 86400.0
#: 1970-01-01 was a Thursday: days since the epoch + 3, mod 7, is 0 on a Monday
_MONDAY_SHIFT = 3


def window(period: str, now: float, reset_minutes: int = 0) -> tuple[float, float]:
    """``(start, end)`` in epoch seconds of the ``period`` window holding ``now``."""
    offset = reset_minutes * 60.0
    shifted = now - offset  # a window starting at the reset time is a plain one, shifted
    if period == "daily":
        start = (shifted // DAY) * DAY
        return start + offset, start + DAY + offset
    if period == "weekly":
        day = shifted // DAY
        start = (day - (day + _MONDAY_SHIFT) % 7) * DAY
        return start + offset, start + 7 * DAY + offset
    if period == "monthly":
        moment = datetime.fromtimestamp(shifted, UTC)
        first = datetime(moment.year, moment.month, 1, tzinfo=UTC)
        following = (datetime(moment.year + 1, 1, 1, tzinfo=UTC) if moment.month == 12
                     else datetime(moment.year, moment.month + 1, 1, tzinfo=UTC))
        return first.timestamp() + offset, following.timestamp() + offset
    raise ValueError(f"unknown budget period {period!r} (daily, weekly, monthly)")


def iso(ts: float) -> str:
    """An RFC 3339 UTC time, to the second (``2025-07-01T00:00:00Z``)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
