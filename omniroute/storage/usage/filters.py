"""What a usage read covers: the filter, its WHERE clauses, and times as text."""

from __future__ import annotations

import calendar
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from omniroute.storage import rollup

FAILED = rollup.FAILED
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
STATUS_CLASS = re.compile(r"^([1-5])xx$")
#: the times a query may name: the years 1970 to 9999 (what ``iso`` can write)
MIN_TIME, MAX_TIME = 0.0, 253402300799.0


class FilterError(ValueError):
    """A filter value that cannot be used; ``param`` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def parse_time(text: str, *, now: float) -> float:
    """A point in time as epoch seconds.

    Accepts epoch seconds (``1717000000``), an ISO 8601 date or date-time
    (``2024-05-29``, ``2024-05-29T10:00:00Z``; without a zone it is UTC), or a
    duration back from ``now`` (``90s``, ``15m``, ``24h``, ``7d``, ``2w``). The time
    must fall in the years 1970 to 9999.

    :raises ValueError: none of these, or out of that range.
    """
    ts = _parse_time(text, now)
    if not MIN_TIME <= ts <= MAX_TIME:  # also refuses nan
        raise ValueError(f"{text!r} is out of range: a time must fall in the years 1970 "
                         "to 9999")
    return ts


def _parse_time(text: str, now: float) -> float:
    value = text.strip()
    if not value:
        raise ValueError("an empty time")
    try:
        number = float(value)
    except ValueError:
        pass
    else:
        if math.isnan(number):
            raise ValueError(f"{text!r} is not a time")
        return number
    match = _DURATION.match(value.lower())
    if match:
        return now - float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"{text!r} is not a time: use epoch seconds, an ISO 8601 date "
                         "or date-time, or a duration such as 24h or 7d") from None
    if parsed.tzinfo is None:
        return float(calendar.timegm(parsed.timetuple())) + parsed.microsecond / 1e6
    return parsed.timestamp()


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (``2024-05-29T10:00:00Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Which records a read covers; every field is optional."""

    since: float | None = None  #: inclusive
    until: float | None = None  #: exclusive
    key: str | None = None
    model: str | None = None
    provider: str | None = None
    connection: str | None = None
    #: an HTTP status (``429``), a class (``5xx``), ``ok`` or ``error``
    status: str | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise FilterError("'from' must be before 'to'", "from")
        if self.status is not None:
            try:
                _status_clause(self.status)  # refuse a bad value when the filter is made
            except ValueError as exc:
                raise FilterError(str(exc), "status") from None

    def where(self, *, until: float | None = None, upper_inclusive: bool = False,
              rollup: bool = False) -> tuple[list[str], list[Any]]:
        """The WHERE clauses and their parameters.

        :param until: an upper time bound that replaces :attr:`until` (a page cursor's),
            so the index range has one upper bound.
        :param upper_inclusive: that bound includes its own time.
        :param rollup: the clauses for ``usage_rollup`` rows, without the time range
            (the caller bounds their buckets).
        """
        clauses: list[str] = []
        params: list[Any] = []
        # an equality on the key or the connection first: (column, ts) is an index
        for column, value in (("api_key_id", self.key), ("connection_id", self.connection),
                              ("model", self.model), ("provider", self.provider)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since is not None and not rollup:
            clauses.append("ts >= ?")
            params.append(self.since)
        upper = self.until if until is None else until
        if upper is not None and not rollup:
            clauses.append("ts <= ?" if upper_inclusive else "ts < ?")
            params.append(upper)
        if self.status is not None:
            clause, values = _status_clause(self.status, "failed" if rollup else FAILED)
            clauses.append(clause)
            params.extend(values)
        return clauses, params


def unfiltered(where: UsageFilter) -> bool:
    """Whether a read has no filter but its time range (``usage_dims`` can serve it)."""
    return (where.key is None and where.model is None and where.provider is None
            and where.connection is None and where.status is None)


def _status_clause(status: str, failed: str = FAILED) -> tuple[str, list[Any]]:
    value = status.strip().lower()
    if value in ("ok", "success"):
        return f"{failed} = 0", []
    if value in ("error", "failed"):
        return f"{failed} = 1", []
    # a failing status also names the failure itself (implied, so the same rows): the
    # request log's index of failed records (migration 10) then serves the read
    match = STATUS_CLASS.match(value)
    if match:
        low = int(match.group(1)) * 100
        return f"status >= ? AND status < ?{f' AND {failed} = 1' if low >= 400 else ''}", [
            low, low + 100]
    if value.isdigit() and 100 <= int(value) <= 599:
        return f"status = ?{f' AND {failed} = 1' if int(value) >= 400 else ''}", [int(value)]
    raise ValueError(f"status {status!r}: use an HTTP status (429), a class (5xx), "
                     "'ok' or 'error'")
