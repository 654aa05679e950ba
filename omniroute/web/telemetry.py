"""``GET /api/telemetry/summary`` (admin): latency percentiles by provider and by model.

The seed's shape, ``{"providers": {"<prefix>": {"p50", "p95", "p99", "count"}}}``,
with a ``models`` key beside it in the same shape (``"<prefix>/<model>"``) and
the window it covers. The window is the ``telemetry_window`` setting (seconds,
default one hour), or ``?window=SECONDS`` for one call. It is read from the
request log (:mod:`omniroute.storage.telemetry` says why), after this worker's
pending records are written, so it is current here and at most one write
interval behind for other workers. The window functions run on the usage APIs'
read-only connection, never on the one the request log writes through.
"""

from __future__ import annotations

import time

from aiohttp import web

from omniroute.appkeys import CATALOG, REQUEST_LOG, USAGE
from omniroute.errors import InvalidRequest
from omniroute.storage.telemetry import latency_percentiles

#: the longest window one call may ask for (a week of records)
MAX_WINDOW = 7 * 24 * 3600.0


def _window(request: web.Request) -> float:
    given = request.query.get("window")
    if given is None:
        return request.app[CATALOG].settings.telemetry_window
    try:
        window = float(given)
    except ValueError:
        window = -1.0
    if not 0 < window <= MAX_WINDOW:  # also refuses nan and inf
        raise InvalidRequest(f"'window' must be a number of seconds, more than 0 and at most "
                             f"{MAX_WINDOW:.0f}; got {given!r}.", param="window")
    return window


async def telemetry_summary(request: web.Request) -> web.Response:
    window = _window(request)
    # this worker's records of the last moments count too (shielded: see flush)
    await request.app[REQUEST_LOG].flush()
    since = time.time() - window
    reader = request.app[USAGE].db  # the read-only connection: the writer's is not held up
    return web.json_response({
        "providers": await latency_percentiles(reader, since),
        "models": await latency_percentiles(reader, since, by_model=True),
        "window_s": window,
        "unit": "ms",
    })
