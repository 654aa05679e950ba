"""Idempotency: duplicates of a request share its one upstream call.

Sketch::

    keys = Idempotency(lambda: catalog.settings)      # on the app: appkeys.IDEMPOTENCY
    stages = default_stages(db, budgets, idempotency=IdempotencyStage(keys), ...)
    keys.stats()  # {"active_keys": 3, "window_ms": 5000}  (GET /api/cache/stats)

:mod:`~omniroute.idempotency.stage` is the pipeline stage (what a request with
``Idempotency-Key`` goes through), :mod:`~omniroute.idempotency.keys` the keys in
use and their window, :mod:`~omniroute.idempotency.answer` one shared answer (the
buffer a stream fans out from). See docs/caching.md.
"""

from omniroute.idempotency.answer import SharedAnswer
from omniroute.idempotency.keys import Idempotency
from omniroute.idempotency.stage import IDEMPOTENT_HEADER, IdempotencyStage

__all__ = ["IDEMPOTENT_HEADER", "Idempotency", "IdempotencyStage", "SharedAnswer"]
