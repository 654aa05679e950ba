"""Reading the request log: usage totals, breakdowns and paged records.

The request log (``request_log``, written by :mod:`omniroute.storage.requestlog`)
holds up to a million rows by default, so every read here is shaped for its
indexes: a time range uses ``request_log_ts``, a key ``request_log_key_ts``, a
failure ``request_log_failed_ts``; a model, a provider or a connection first asks the
hourly totals which hours hold its records.

The gateway reads through its own read-only connection
(:meth:`~omniroute.storage.backend.DatabaseBackend.open_reader`, SQLite's):
a summary over a month of a busy log takes seconds, and it must not hold up
the connection the request log, budgets and the management API write through.

Callers use :class:`UsageQueries` (``await UsageQueries(db).summary(UsageFilter(
since=...))``). The parts:

* :mod:`.filters` — which records a read covers (:class:`UsageFilter`), times as text;
* :mod:`.sums` — the sums a read adds up, their SQL per table and their public shape;
* :mod:`.summary` — totals and breakdowns, series over time, the last minutes;
* :mod:`.records` — one record, keyset pages of them, and their cursors.
"""

from omniroute.storage.backend import DatabaseBackend
from omniroute.storage.usage.filters import (
    MAX_TIME,
    MIN_TIME,
    FilterError,
    UsageFilter,
    iso,
    parse_time,
)
from omniroute.storage.usage.records import (
    MAX_PAGE,
    RecordReads,
    decode_cursor,
    encode_cursor,
    record_view,
)
from omniroute.storage.usage.summary import (
    DIMENSIONS,
    MAX_BUCKETS,
    SERIES_METRICS,
    SummaryReads,
)
from omniroute.storage.usage.sums import Bucket


class UsageQueries(SummaryReads, RecordReads):
    """Usage reads over one database connection (the gateway's reader, or the CLI's)."""

    def __init__(self, db: DatabaseBackend) -> None:
        self.db = db


__all__ = [
    "DIMENSIONS",
    "MAX_BUCKETS",
    "MAX_PAGE",
    "MAX_TIME",
    "MIN_TIME",
    "SERIES_METRICS",
    "Bucket",
    "FilterError",
    "UsageFilter",
    "UsageQueries",
    "decode_cursor",
    "encode_cursor",
    "iso",
    "parse_time",
    "record_view",
]
