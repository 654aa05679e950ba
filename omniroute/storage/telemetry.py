"""Latency percentiles over a sliding window of the request log.

The summary is computed from the ``request_log`` table, not from memory:
every worker writes there, so any worker answers for all of them; it survives
restarts; and it costs the request path nothing. SQLite does the work in one
statement per grouping (window functions over the ``ts`` index), so only one
row per provider or model leaves the database.

Percentiles are nearest-rank: ``pN`` is the smallest latency at least N% of
the window's requests did not exceed (the ``ceil(N * count / 100)``-th).
Counted are the requests a provider answered (status 200-399) with a measured
latency; a key whose records are not stored, or a gateway with the request
log turned off, is not in it.
"""

from __future__ import annotations

from typing import Any

from omniroute.storage.backend import DatabaseBackend

PERCENTILES = (50, 95, 99)

_SQL = """
WITH w AS (
    SELECT {key} AS k, latency_ms AS v,
           ROW_NUMBER() OVER (PARTITION BY {key} ORDER BY latency_ms) AS rn,
           COUNT(*) OVER (PARTITION BY {key}) AS n
    FROM request_log
    WHERE ts >= ? AND provider IS NOT NULL AND {extra} latency_ms IS NOT NULL
      AND status >= 200 AND status < 400
)
SELECT k, n, {ranks}
FROM w GROUP BY k, n ORDER BY k
"""
_RANKS = ", ".join(f"MAX(CASE WHEN rn = ({p} * n + 99) / 100 THEN v END) AS p{p}"
                   for p in PERCENTILES)
_BY_PROVIDER = _SQL.format(key="provider", extra="", ranks=_RANKS)
_BY_MODEL = _SQL.format(key="provider || '/' || model", extra="model IS NOT NULL AND",
                        ranks=_RANKS)


async def latency_percentiles(db: DatabaseBackend, since: float, *,
                              by_model: bool = False) -> dict[str, dict[str, Any]]:
    """``{name: {"p50", "p95", "p99", "count"}}`` (milliseconds) of requests since ``since``.

    :param since: the window's start, epoch seconds.
    :param by_model: group by ``provider/model`` instead of provider prefix.
    """
    rows = await db.fetchall(_BY_MODEL if by_model else _BY_PROVIDER, (since,))
    return {
        row["k"]: {**{f"p{p}": round(row[f"p{p}"], 1) for p in PERCENTILES},
                   "count": row["n"]}
        for row in rows
    }
